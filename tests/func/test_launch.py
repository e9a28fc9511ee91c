"""Data-parallel bakes under a real launcher: `torchrun --nproc_per_node 2` starts two CPU processes (gloo)
from a real `git commit` (the hook) or `git bake run`; one bake commit, a clean store, every rank's output
prefixed; a rank killed mid-bake stores and commits nothing, and a retry works."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import YODA_SMALL, bake_git, bake_here, git

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")

# --standalone: a rendezvous on a free port, so tests running side by side (pytest -n) never meet on
# torchrun's default port
TORCHRUN = f"{Path(sys.executable).parent / 'torchrun'} --standalone --nproc_per_node 2"
FOUR = YODA_SMALL.replace(
    '["What is the capital of France?", "How do I make tea?"]',
    '["What is the capital of France?", "How do I make tea?", "Why is the sky blue?", "Tell me a joke."]',
)


@pytest.fixture(autouse=True)
def cpu_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks on the CPU (gloo), on a machine with a GPU too: two ranks on one GPU are refused
    (tests/unit/test_parallel.py)."""
    monkeypatch.setenv("GITBAKE_DEVICE", "cpu")


# rank 1 dies (SIGKILL, as the OOM killer would) once it has joined the process group: mid-bake
KILLER = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    if os.environ.get("GITBAKE_LAUNCHED") and os.environ.get("RANK") == "1":
        def watch():
            while True:
                try:  # torch may be half imported: then its functions are not there yet
                    dist = sys.modules.get("torch.distributed")
                    if dist is not None and dist.is_available() and dist.is_initialized():
                        os.kill(os.getpid(), signal.SIGKILL)
                except Exception:
                    pass
                time.sleep(0.02)
        threading.Thread(target=watch, daemon=True).start()
    """
)


def bake_commits(root: Path) -> list[str]:
    return [s for s in git(root, "log", "--format=%s").splitlines() if s.startswith("bake: ")]


def test_a_killed_rank_stores_nothing_then_a_commit_bakes_under_torchrun(model_repo: Path, tmp_path: Path) -> None:
    """A rank SIGKILLed mid-bake: the bake fails naming it, nothing is stored or committed, the store is
    clean. Then, with bake.launcher configured, a real `git commit` fires the hook, which bakes under
    torchrun: every rank's output prefixed, one bake commit, a clean store, an adapter that loads."""
    import os

    (model_repo / "input.yml").write_text(FOUR)
    git(model_repo, "commit", "-qam", "bake yoda")
    head = git(model_repo, "rev-parse", "HEAD").strip()
    hooks = tmp_path / "site"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(hooks)}
    killed = subprocess.run(
        ["git", "bake", "run", "--launcher", TORCHRUN], cwd=model_repo, env=env, capture_output=True, text=True
    )
    assert killed.returncode != 0
    assert "rank 1 was killed by signal 9" in killed.stderr, killed.stderr[-3000:]
    assert "nothing was stored" in killed.stderr
    assert git(model_repo, "rev-parse", "HEAD").strip() == head and not bake_commits(model_repo)
    assert (model_repo / "input.yml").read_text() == FOUR
    fsck = bake_git(model_repo, "store", "fsck")
    assert fsck.returncode == 0 and "store OK" in fsck.stdout
    status = json.loads(bake_git(model_repo, "status", "--json").stdout)
    assert {s["stage"]: s["state"] for s in status["stages"]}["bake"] == "missing"

    git(model_repo, "config", "bake.launcher", TORCHRUN)
    git(model_repo, "config", "bake.hookMode", "foreground")
    (model_repo / "input.yml").write_text(FOUR.replace("Speak like Yoda.", "Speak like Yoda, always."))
    out = subprocess.run(["git", "commit", "-qam", "bake yoda again"], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[rank 0]" in out.stderr and "[rank 1]" in out.stderr and "starting the bake under" in out.stderr
    assert len(bake_commits(model_repo)) == 1
    fsck = bake_git(model_repo, "store", "fsck")
    assert fsck.returncode == 0 and "store OK" in fsck.stdout
    shown = json.loads(bake_git(model_repo, "show", "--json").stdout)
    assert len(shown["adapters"]) == 1 and all(shown["local"].values())
    ev = bake_here(model_repo, "eval", "--json")  # the 2-rank adapter loads from the store, and its eval runs
    assert ev.exit_code == 0 and json.loads(ev.stdout)["gap_closed"] is not None, ev.stderr


def test_bad_launchers_say_what_to_do(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(FOUR)
    git(model_repo, "commit", "-qam", "bake yoda")
    missing = bake_git(model_repo, "run", "--launcher", "no-such-launcher --nproc_per_node 2")
    assert missing.returncode == 2 and "`no-such-launcher` is not installed" in missing.stderr
    unparsable = bake_git(model_repo, "run", "--launcher", "torchrun 'unclosed")
    assert unparsable.returncode == 2 and "cannot be parsed" in unparsable.stderr
    detached = bake_git(model_repo, "run", "--detach", "--launcher", TORCHRUN)
    assert detached.returncode == 2 and "git config bake.launcher" in detached.stderr


FAKE_LAUNCHER = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    # a stand-in launcher: what torchrun's rank 0 would leave for the starting process, then an exit
    where = pathlib.Path(os.environ["GITBAKE_RANK_DIR"])
    assert sys.argv[1:4] == ["-m", "gitbake", "run"] and "--at" in sys.argv, sys.argv
    (where / "progress.json").write_text(json.dumps({"label": "bake b", "done": 3, "total": 6, "unit": "step",
                                                     "rate": 1.0, "eta_s": 3.0, "time": time.time()}))
    print("[rank 0] step 3 of 6", flush=True)
    if os.environ.get("FAIL"):
        (where / "rank-1.error").write_text("UsageError: rank 1 ran out of patience")
        sys.exit(1)
    (where / "report.json").write_text(json.dumps({"stages": [], "notes": ["from rank 0"], "commit": None}))
    """
)


def test_the_launch_relays_progress_and_names_a_failing_rank(model_repo: Path, tmp_path: Path) -> None:
    import io
    import os

    from gitbake.repo.repo import open_repo
    from gitbake.reporter import Reporter
    from gitbake.workflow import launch

    script = tmp_path / "fake_launcher.py"
    script.write_text(FAKE_LAUNCHER)
    seen: list[dict[str, object]] = []
    log = io.StringIO()
    repo = open_repo(model_repo)
    done = launch.run_bake(
        repo, f"{sys.executable} {script}", False, "a" * 40, "refs/heads/main", Reporter(log, sink=seen.append)
    )
    assert done.report == {"stages": [], "notes": ["from rank 0"], "commit": None}
    assert seen and seen[-1]["done"] == 3  # rank 0's progress reached the job's status sink
    assert "[rank 0] step 3 of 6" in log.getvalue()
    os.environ["FAIL"] = "1"
    try:
        with pytest.raises(launch.LaunchFailed, match="rank 1 failed: UsageError: rank 1 ran out of patience"):
            launch.run_bake(repo, f"{sys.executable} {script}", False, "a" * 40, None, Reporter(io.StringIO()))
    finally:
        del os.environ["FAIL"]
