"""`git bake init`: make a directory, a git repository or a bgit repository a gitbake model repository.

Safe to re-run: files the user or bgit wrote are kept (only our additions are made), and a second run
changes nothing. bgit repositories keep their history; their `keepTheirs` merge setting (which, being
`true`, actually keeps *ours*: bgit.md §3.4) is replaced by a driver that really takes the incoming side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gitbake import git, hub
from gitbake.contract import bread as bread_mod
from gitbake.contract import identity
from gitbake.contract import recipe as recipe_mod
from gitbake.contract.config import INPUT_FILE, NAME_PATTERN
from gitbake.errors import UsageError
from gitbake.fsutil import write_atomic
from gitbake.reporter import Reporter

MERGE_DRIVER = "bake-theirs"
# The incoming side's version is the merge result: a model's lineage files cannot be merged line by line,
# so a merge adopts the incoming lineage (docs/workflow.md); a rebase that would replay a bake onto a base with
# other bakes stops instead (gitbake/workflow/mergedriver.py).
MERGE_DRIVER_CMD = "git bake merge-driver lineage %O %A %B %P"
INPUT_DRIVER = "bake-input"
INPUT_DRIVER_CMD = "git bake merge-driver input %O %A %B"
LINEAGE_FILES = (bread_mod.BREAD_FILE, recipe_mod.RECIPE_FILE)
IGNORE_LINE = ".bake/"
BGIT_DEFAULT_BASE = "Qwen/Qwen3-32B"  # the Bread API's default when `bgit init` passes none


@dataclass
class InitReport:
    root: Path
    name: str
    base_model: str
    created_repo: bool = False
    bgit_repo: bool = False
    written: list[str] = field(default_factory=list)
    committed: str | None = None
    notes: list[str] = field(default_factory=list)
    downloaded: str | None = None  # a hub base model: the commit now in the local cache

    def as_json(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "name": self.name,
            "base_model": self.base_model,
            "created_repo": self.created_repo,
            "bgit_repo": self.bgit_repo,
            "written": self.written,
            "committed": self.committed,
            "notes": self.notes,
            "downloaded": self.downloaded,
        }


def template_input() -> str:
    return resources.files("gitbake").joinpath("resources/templates/input.yml").read_text(encoding="utf-8")


def init(
    directory: Path,
    base_model: str | None = None,
    name: str | None = None,
    download: bool = True,
    reporter: Reporter | None = None,
) -> InitReport:
    """Make `directory` a model repository. A hub base model is downloaded first (`download`), so a bad id
    or a missing token stops init before it writes anything; run again, init refreshes it (a moved branch
    brings its new commit)."""
    directory = directory.expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory", "give a new or existing directory")
    existing_root = git.find_root(directory)
    if existing_root is not None and existing_root != directory.resolve():
        raise UsageError(
            f"{directory} is inside the git repository {existing_root}",
            f"run `git bake init` in {existing_root} itself, or give a directory outside it",
        )
    created = existing_root is None
    if base_model is not None:
        base_model = _normalise_base_model(base_model, directory)
    if name is not None and not re.match(NAME_PATTERN, name):
        raise UsageError(
            f"--name `{name}` is not a valid name", "use letters, digits, `.`, `_` and `-` (no spaces or `/`)"
        )

    old_bread = bread_mod.read(directory) if directory.exists() else None
    old_recipe = recipe_mod.read(directory) if directory.exists() else None
    is_bgit = old_bread is not None and old_bread.base_model is None
    base = _choose_base(base_model, old_bread, old_recipe)
    repo_name = (old_bread.repo_name if old_bread else None) or name or _default_name(directory)
    downloaded = None
    old_pin = _base_revision(base, directory, None, old_bread)  # .bread's pin for this same model, if any
    if download and identity.classify(base, directory) == "hub":
        repo_id, _, ref = base.partition("@")
        # run as is, init keeps what the repository bakes on: the pinned commit, or (a repository from before
        # pins) the one the cache holds; naming the model again picks up where its branch is now
        try:
            if base_model is None:
                downloaded = hub.ensure(repo_id, old_pin or ref or "main", reporter)
            else:
                downloaded = hub.download(repo_id, ref or "main", reporter)
        except hub.HubError as exc:
            raise hub.HubError(exc.message, f"{exc.hint}; or `git bake init --no-download` to defer it") from None

    if created:
        git.init(directory)
    root = directory.resolve()
    report = InitReport(root, repo_name, base, created_repo=created, bgit_repo=is_bgit, downloaded=downloaded)

    # .bread: keep everything there, add what is missing.
    b = old_bread or bread_mod.Bread()
    if b.repo_name is None:
        b.set("REPO", "name", repo_name)
    b.set("REPO", "base_model", base)
    pin = _base_revision(base, directory, downloaded, old_bread)
    b.set("REPO", "base_revision", pin)
    if old_pin is not None and pin is not None and old_pin != pin:
        report.notes.append(
            f"{base} moved upstream: .bread now pins commit {pin[:12]} (it pinned {old_pin[:12]}); commit .bread "
            f"to bake on it. The commits made so far keep {old_pin[:12]}: checking one out loads the weights it "
            "was baked on"
        )
    if old_bread is None:
        b.sections.setdefault("PARENT_MODEL", {})["adapters"] = "[]"
    if bread_mod.write(root, b):
        report.written.append(bread_mod.BREAD_FILE)
    if b.is_foreign_parent:
        report.notes.append(
            f"PARENT_MODEL `{b.parent_model_name}` was baked in Bread's cloud and is not on this machine: "
            f"the lineage restarts from the base model {base} (use --base-model to choose another)."
        )

    if old_recipe is None:
        recipe_mod.write(root, recipe_mod.new(base))
        report.written.append(recipe_mod.RECIPE_FILE)

    if not (root / INPUT_FILE).exists():
        write_atomic(root / INPUT_FILE, template_input())
        report.written.append(INPUT_FILE)

    if _ensure_lines(root / ".gitignore", [IGNORE_LINE]):
        report.written.append(".gitignore")
    if _write_gitattributes(root):
        report.written.append(".gitattributes")

    if git.config_unset_section(root, "merge.keepTheirs"):
        report.notes.append(
            "replaced bgit's `keepTheirs` merge setting, which kept the current side, with one that takes the incoming "
            "lineage"
        )
    git.config_set(root, f"merge.{MERGE_DRIVER}.name", "gitbake: take the incoming model lineage")
    git.config_set(root, f"merge.{MERGE_DRIVER}.driver", MERGE_DRIVER_CMD)
    git.config_set(
        root, f"merge.{INPUT_DRIVER}.name", "gitbake: input.yml as text, or the incoming one when both are cleared"
    )
    git.config_set(root, f"merge.{INPUT_DRIVER}.driver", INPUT_DRIVER_CMD)
    from gitbake.workflow import hooks

    report.notes += hooks.install(root)

    if name is not None and name != repo_name:
        report.notes.append(
            f"kept the name `{repo_name}` recorded in .bread (--name {name} applies to new repositories)"
        )
    if old_recipe is not None and old_recipe.base_model != base and not old_recipe.adapters:
        old_recipe.base_model = base  # no bakes yet: the lineage may still change its base model
        if recipe_mod.write(root, old_recipe):
            report.written.append(recipe_mod.RECIPE_FILE)
    # a repository without commits (new, or a first commit that failed, e.g. no git identity) gets one
    if created or not git.has_commits(root):
        git.add(root, sorted(set(report.written) | {f for f in _OURS if (root / f).exists()}))
        report.committed = git.commit(root, f"Initialise model repository {repo_name} (git bake init)", no_verify=True)
    elif report.written:
        git.add(root, report.written)
    if b.parent_adapters:  # a clone of a baked repository: bring its model back, or say how
        from gitbake.repo.repo import open_repo
        from gitbake.workflow.run import refresh_model

        state = refresh_model(open_repo(root))
        if state.state == "missing":
            report.notes.append(
                f"the model of HEAD needs {len(state.missing)} object(s) that are not here: run `git bake pull`"
            )
    return report


_OURS = (bread_mod.BREAD_FILE, recipe_mod.RECIPE_FILE, INPUT_FILE, ".gitignore", ".gitattributes")


def _normalise_base_model(base_model: str, directory: Path) -> str:
    """Check `--base-model`; a directory is recorded relative to the repository when it lies inside it
    (so clones find it), else as an absolute path. Relative paths are taken from where the user runs init."""
    if not base_model.strip():
        raise UsageError("--base-model is empty", "use `--base-model tiny`, a Hugging Face id, or a model directory")
    as_path = (Path.cwd() / Path(base_model).expanduser()).resolve()
    gguf = as_path if as_path.suffix.lower() == identity.GGUF_SUFFIX else None
    looks_like_path = base_model.startswith((".", "/", "~")) or as_path.is_dir() or gguf is not None
    if looks_like_path:
        if as_path.is_dir():
            gguf = identity.gguf_in(as_path)
        elif gguf is None or not gguf.is_file():
            what = "GGUF file" if gguf is not None else ("file" if as_path.is_file() else "directory")
            raise UsageError(
                f"--base-model {what} `{base_model}` "
                + ("is not a model directory" if as_path.is_file() else "does not exist"),
                "give the path of a saved model directory, a .gguf file, or a directory holding one .gguf",
            )
        if gguf is not None:
            from gitbake.engine.ggufin import inspect  # the gguf package, no torch: a bad file is refused now

            inspect(gguf)
        try:
            return as_path.relative_to(directory.resolve()).as_posix()
        except ValueError:
            return str(as_path)
    if identity.classify(base_model, None) == "unknown":
        raise UsageError(
            f"--base-model `{base_model}` is not `tiny`, a Hugging Face id (org/name) or an existing directory",
            "use `--base-model tiny` for the built-in offline model",
        )
    return base_model


def _base_revision(base: str, directory: Path, downloaded: str | None, old: bread_mod.Bread | None) -> str | None:
    """`[REPO] base_revision`: for a Hugging Face id that names a branch or tag (or nothing: `main`), the
    commit init downloaded; with --no-download, the pin .bread already had for the same model (none: the
    first bake pins the commit it bakes on)."""
    if identity.classify(base, directory) != "hub" or hub.COMMIT.fullmatch(base.partition("@")[2]):
        return None
    if downloaded is not None:
        return downloaded
    return old.base_revision if old is not None and old.base_model == base else None


def _choose_base(requested: str | None, old: bread_mod.Bread | None, old_recipe: recipe_mod.Recipe | None) -> str:
    if old is not None and old.base_model is not None:
        if requested is not None and requested != old.base_model:
            has_bakes = bool(old.parent_adapters) or bool(old_recipe and old_recipe.adapters)
            if has_bakes:
                raise UsageError(
                    f"this repository's models are baked on {old.base_model}; --base-model {requested} would orphan "
                    "them",
                    "start a new repository for another base model (`git bake init NEW_DIR --base-model ...`)",
                )
            return requested
        return old.base_model
    if requested is not None:
        return requested
    if old is not None:  # a bgit repository: the base model lives in the recipe, or is the cloud's default
        recipe_base = old.get("RECIPE", "base_model") or (old_recipe.base_model if old_recipe else None)
        return recipe_base or BGIT_DEFAULT_BASE
    return identity.TINY


def _default_name(directory: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", directory.name).lstrip(".-_") or "model"
    return name


def _ensure_lines(path: Path, lines: list[str]) -> bool:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in lines if line not in present and line.rstrip("/") not in present]
    if not missing:
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    write_atomic(path, text + "".join(line + "\n" for line in missing))
    return True


def _write_gitattributes(root: Path) -> bool:
    path = root / ".gitattributes"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    out, seen = [], set()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in LINEAGE_FILES and any(p.startswith("merge=") for p in parts[1:]):
            parts = [parts[0]] + [f"merge={MERGE_DRIVER}" if p.startswith("merge=") else p for p in parts[1:]]
            seen.add(parts[0])
            out.append(" ".join(parts))
        else:
            out.append(line)
    for f in LINEAGE_FILES:
        if f not in seen:
            out.append(f"{f} merge={MERGE_DRIVER}")
    if not any(line.split()[:1] == [INPUT_FILE] for line in out):
        out.append(f"{INPUT_FILE} merge={INPUT_DRIVER}")
    return write_atomic(path, "\n".join(out) + "\n")
