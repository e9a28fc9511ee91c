"""The layers of docs/architecture.md, enforced on the import graph: each layer imports only itself and the
layers below it, wherever the import stands (module level, inside a function, under TYPE_CHECKING).

base (errors, progress, reporter, git, fsutil, destination) < contract < engine < store < repo < workflow < use < cli
(with `__main__`, the entry point).
Nothing imports cli; the per-library rules (click only in cli/, dulwich only in git.py, the ML stack only in
engine/ and use/) are in test_layering.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).parent.parent.parent / "gitbake"
LAYERS = ("base", "contract", "engine", "store", "repo", "workflow", "use", "cli")


def layer_of(module: str, package: str = "gitbake") -> str:
    """`gitbake.repo.plan` -> `repo`; a top-level module (`gitbake.git`) is the base, except `__main__`, the
    program's entry point (`python -m gitbake`, `git-bake`), which stands with the CLI it starts."""
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2:
        raise ValueError(module)
    if parts[1] == "__main__":
        return "cli"
    return parts[1] if parts[1] in LAYERS else "base"


def module_name(path: Path, root: Path, package: str) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import of `package`'s own modules in the file at `path`."""
    me = module_name(path, root, package)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == package]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")[: len(me.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package:
                continue
            # `from gitbake import contract` / `from gitbake.repo import plan`: the names may be modules
            out += [
                (node.lineno, f"{target}.{a.name}") if target.count(".") < 2 else (node.lineno, target)
                for a in node.names
            ]
    return out


def violations(root: Path, package: str) -> list[str]:
    """Every import in the package at `root` that goes up a layer, or into cli from outside it."""
    found = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root, package)
        mine = layer_of(me, package) if me != package else "base"
        for line, target in imported(path, root, package):
            theirs = layer_of(target, package) if target != package else "base"
            where = f"{path.relative_to(root).as_posix()}:{line}"
            if theirs == "cli" and mine != "cli":
                found.append(f"{where}: {me} imports {target}: nothing imports the CLI")
            elif LAYERS.index(theirs) > LAYERS.index(mine):
                found.append(f"{where}: {me} ({mine}) imports {target} ({theirs}), a higher layer")
    return found


def test_no_layer_imports_a_higher_one() -> None:
    assert violations(PKG, "gitbake") == []


def test_every_folder_is_a_layer() -> None:
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), folders - set(LAYERS)


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "gitbake" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "gitbake"


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"contract/config.py": "def f():\n    from gitbake.repo.plan import build\n"}, "contract/config.py:2"),
        ({"store/objects.py": "from gitbake.workflow import jobs\n"}, "store/objects.py:1"),
        ({"repo/plan.py": "from ..workflow.status import validate\n"}, "repo/plan.py:1"),
        ({"errors.py": "import gitbake.contract.config\n"}, "errors.py:1"),
        ({"use/chat.py": "from gitbake.cli.main import cli\n"}, "use/chat.py:1"),
        ({"engine/bake.py": "from gitbake import store\n"}, "engine/bake.py:1"),
    ],
    ids=["inside a function", "store->workflow", "relative", "base->contract", "into cli", "engine->store"],
)
def test_the_check_fails_on_a_package_that_imports_upwards(
    files: dict[str, str], expected: str, tmp_path: Path
) -> None:
    root = _package(tmp_path, {"__init__.py": "", **{f"{d}/__init__.py": "" for d in LAYERS[1:]}, **files})
    found = violations(root, "gitbake")
    assert len(found) == 1 and found[0].startswith(expected), found


def test_the_check_allows_imports_downwards_and_sideways(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            **{f"{d}/__init__.py": "" for d in LAYERS[1:]},
            "cli/main.py": "from gitbake.use import chat\nfrom gitbake import errors\n",
            "repo/plan.py": "from gitbake.repo import lineage\nfrom gitbake.store.objects import Store\nfrom . import "
            "history\n",
            "contract/keys.py": "from gitbake.errors import UsageError\n",
        },
    )
    assert violations(root, "gitbake") == []
