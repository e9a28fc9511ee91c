"""Nothing in gitbake unpickles (issue 14, case 6): a store can be shared, and pickle runs code.

The scan reads the package's syntax trees: a `torch.load` must say `weights_only=True`, and no module may
import pickle, dill, joblib or cloudpickle, or call numpy's loaders with `allow_pickle=True`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gitbake

FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def offences(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            found += [
                f"{name}:{node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{name}:{node.lineno}: from {node.module} import ...")
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("torch")
            and any(a.name == "load" for a in node.names)
        ):
            found.append(f"{name}:{node.lineno}: from {node.module} import load (unscannable: call torch.load)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            kw = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "load" and ast.unparse(node.func.value) in ("torch", "torch.serialization"):
                safe = kw.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{name}:{node.lineno}: torch.load without weights_only=True")
            allow = kw.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{name}:{node.lineno}: allow_pickle")
    return found


def test_the_scan_finds_each_kind_of_unpickling() -> None:
    bad = (
        "import pickle\nimport torch\nfrom dill import loads\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\nfrom torch import load\ntorch.serialization.load(p)\n"
    )
    assert len(offences(bad, "bad.py")) == 7
    assert offences("import torch\ntorch.load(p, weights_only=True)\n", "ok.py") == []


def test_no_module_of_gitbake_unpickles() -> None:
    package = Path(gitbake.__file__).parent
    found = [
        o
        for f in sorted(package.rglob("*.py"))
        for o in offences(f.read_text(encoding="utf-8"), str(f.relative_to(package)))
    ]
    assert found == []
