"""Test isolation: no test reads or writes the user's HOME, git config or Hugging Face cache."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of built models (tiny) for the whole session: building it once is enough."""
    return tmp_path_factory.mktemp("gitbake-cache")


def _isolate(mp: pytest.MonkeyPatch, home: Path, model_cache: Path) -> Path:
    gitconfig = home / ".gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = Test Baker\n\temail = baker@example.com\n"
        "[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n[advice]\n\tdetachedHead = false\n"
        # a commit of input.yml would start a background bake that outlives its test: tests that want the
        # hook to bake say so (`git config bake.hookMode background|foreground`)
        "[bake]\n\thookMode = off\n"
    )
    # Hooks export GIT_DIR & co; a test run inside one must not act on the outer repository.
    for key in list(os.environ):
        if key.startswith("GIT_"):
            mp.delenv(key)
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    mp.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
    mp.setenv("HF_HOME", str(home / "hf"))
    mp.delenv("HF_HUB_CACHE", raising=False)
    mp.setenv("NO_COLOR", "1")
    mp.setenv("GITBAKE_CACHE", str(model_cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    # the `git bake` external command: the console script next to this interpreter
    bindir = str(Path(sys.executable).parent)
    mp.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))
    return home


@pytest.fixture(autouse=True)
def isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> Path:
    return _isolate(monkeypatch, tmp_path_factory.mktemp("home"), model_cache)


@pytest.fixture(scope="session")
def baked_repo(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict[str, object]:
    """Built once per session: a tiny model repository baked twice by real `git commit`s through the
    installed post-commit hook (foreground mode). Tests copy it (`copy_baked`) before changing it."""
    pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
    import subprocess

    from helpers import YODA_SMALL, git

    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("baked-home"), model_cache)
        root = tmp_path_factory.mktemp("baked") / "model"
        subprocess.run(["git", "bake", "init", str(root), "--base-model", "tiny"], check=True, capture_output=True)
        git(root, "config", "bake.hookMode", "foreground")
        (root / "input.yml").write_text(YODA_SMALL)
        first_out = subprocess.run(
            ["git", "commit", "-qam", "bake yoda"], cwd=root, check=True, capture_output=True, text=True
        )
        first = git(root, "rev-parse", "HEAD").strip()
        (root / "input.yml").write_text(YODA_SMALL.replace("Speak like Yoda.", "Speak like Yoda, always."))
        subprocess.run(
            ["git", "commit", "-qam", "bake yoda again"], cwd=root, check=True, capture_output=True, text=True
        )
        second = git(root, "rev-parse", "HEAD").strip()
        return {"root": root, "first": first, "second": second, "hook_output": first_out.stderr}


@pytest.fixture
def model_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh `git bake init` repository (base model tiny), with the cwd inside it."""
    from gitbake.workflow.init import init

    root = tmp_path / "model"
    init(root, base_model="tiny")
    monkeypatch.chdir(root)
    yield root.resolve()
    # a background bake that a failed test left running would slow every test after it: stop it
    from gitbake.repo.repo import open_repo
    from gitbake.workflow import jobs

    for job in jobs.active(open_repo(root)):
        jobs.cancel(job, grace=0)


@pytest.fixture(scope="session")
def s3_server() -> object:
    """A real S3-compatible HTTP server (moto's server mode) on 127.0.0.1, for the whole session."""
    pytest.importorskip("moto", reason="needs moto: pip install 'gitbake[dev]'")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_url(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the local S3 server; the AWS environment points every client at it."""
    import re
    import uuid

    pytest.importorskip("boto3", reason="needs boto3: pip install 'gitbake[dev]'")
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = (
        ("t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower()))[:40].rstrip("-") + "-" + uuid.uuid4().hex[:8]
    )
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/models"


@pytest.fixture
def tiny_on_the_cpu_in_fp32(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests that compare two ways of running tiny token for token (an exported file that transformers
    reads back on the CPU, a merged chain against an adapter beside its weights): gitbake's models on the
    CPU in fp32 (helpers.cpu_fp32), where a GPU's bf16 would round the two apart and tiny's random weights
    turn any rounding into other text. A test marked `real` runs as a user's would. Modules take it with
    `pytestmark = pytest.mark.usefixtures("tiny_on_the_cpu_in_fp32")`."""
    if request.node.get_closest_marker("real"):
        yield
        return
    from helpers import cpu_fp32

    with cpu_fp32():
        yield
