"""Background bake jobs with real processes: a commit starts one, the user keeps working, a job is killed
or cancelled mid-bake, a second job queues."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gitbake.errors import GitbakeError
from gitbake.repo.repo import open_repo
from gitbake.workflow import jobs

from helpers import YODA_SMALL, bake_git, bake_here, git


def commit_input(root: Path, text: str, msg: str) -> subprocess.CompletedProcess[str]:
    (root / "input.yml").write_text(text)
    return subprocess.run(["git", "commit", "-qam", msg], cwd=root, capture_output=True, text=True)


def wait_for(pred: object, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_user_keeps_working_while_a_bake_runs(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "background")
    repo = open_repo(model_repo)
    with jobs.job_lock(repo):  # another bake holds the repository: the new job queues behind it
        out = commit_input(model_repo, YODA_SMALL, "yoda")
        assert out.returncode == 0
        job = jobs.active(repo)[0]
        wait_for(lambda: jobs.load(job.path).pid is not None and jobs.load(job.path).state == "queued")
        status = json.loads(bake_git(model_repo, "status", "--json").stdout)
        assert status["jobs"][0]["state"] == "queued"
        # the user commits other work meanwhile
        (model_repo / "notes.md").write_text("my notes\n")
        git(model_repo, "add", "notes.md")
        git(model_repo, "commit", "-qm", "notes")
    done = jobs.wait(job, timeout=300)
    assert done.state == "done", done.error
    # the branch had moved: nothing of the user's is touched, the result waits under refs/bake/
    assert git(model_repo, "log", "--format=%s", "-1").strip() == "notes"
    assert (model_repo / "input.yml").read_text() == YODA_SMALL
    pending = done.result["commit"]["pending"]
    assert pending.startswith("refs/bake/main/")
    assert "git bake fetch" in bake_git(model_repo, "status").stdout
    fetched = bake_git(model_repo, "fetch")
    assert fetched.returncode == 0, fetched.stderr
    assert git(model_repo, "log", "--format=%s", "-3").splitlines()[1:] == ["notes", "yoda"]
    assert git(model_repo, "status", "--porcelain") == "" and (model_repo / "notes.md").exists()
    assert "# PROMPT:" in (model_repo / "input.yml").read_text()
    assert git(model_repo, "for-each-ref", "refs/bake/") == ""
    assert json.loads((model_repo / ".bake/model/model.json").read_text())["adapters"]


def test_killed_job_leaves_a_consistent_repository_and_a_retry_works(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "off")
    slow = YODA_SMALL.replace("epochs: 1", "epochs: 400")
    commit_input(model_repo, slow, "slow yoda")
    head = git(model_repo, "rev-parse", "HEAD")
    job = json.loads(bake_git(model_repo, "run", "--detach", "--json").stdout)
    path = Path(job["dir"])
    # training has begun (the teacher's pass over the trajectories, which comes first, counts batches)
    wait_for(
        lambda: '"unit": "step"' in ((path / "progress.json").read_text() if (path / "progress.json").exists() else "")
    )
    # mid-bake: status shows the stage running, with its progress and ETA
    rows = {r["stage"]: r for r in json.loads(bake_git(model_repo, "status", "--json").stdout)["stages"]}
    assert rows["rollout"]["state"] == "cached" and rows["bake"]["state"] == "running"
    assert rows["bake"]["progress"]["total"] == 400 and "eta_s" in rows["bake"]["progress"]
    assert "ETA" in bake_git(model_repo, "status").stdout
    os.killpg(jobs.load(path).pid, signal.SIGKILL)
    wait_for(lambda: jobs.load(path).state == "died", 30)
    assert "died" in bake_git(model_repo, "status").stdout
    assert git(model_repo, "rev-parse", "HEAD") == head and git(model_repo, "status", "--porcelain") == ""
    assert (model_repo / "input.yml").read_text() == slow
    assert git(model_repo, "for-each-ref", "refs/bake/") == ""
    bake_key = json.loads(bake_git(model_repo, "validate", "--json").stdout)["bake"]["key"]
    assert open_repo(model_repo).store.get_key("bake", bake_key) is None
    # a retry (here a smaller one) works
    commit_input(model_repo, YODA_SMALL, "smaller")
    retry = bake_here(model_repo, "run")  # in this process: the retry's code is the same
    assert retry.exit_code == 0, retry.stderr
    assert git(model_repo, "status", "--porcelain") == "" and git(model_repo, "log", "--format=%s", "-1").startswith(
        "bake: "
    )


def test_cancel_stops_cleanly(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "off")
    commit_input(model_repo, YODA_SMALL.replace("epochs: 1", "epochs: 400"), "slow")
    started = json.loads(bake_git(model_repo, "run", "--detach", "--json").stdout)
    path = Path(started["dir"])
    wait_for(lambda: jobs.load(path).state == "running")
    out = bake_git(model_repo, "jobs", "cancel")
    assert out.returncode == 0 and "cancelled" in out.stdout
    assert jobs.load(path).state == "cancelled"
    assert (
        git(model_repo, "log", "--format=%s", "-1").strip() == "slow" and git(model_repo, "status", "--porcelain") == ""
    )
    assert bake_git(model_repo, "jobs", "wait", started["id"]).returncode == 1  # it did not finish


def test_detach_refuses_uncommitted_input(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL)
    out = bake_git(model_repo, "run", "--detach")
    assert out.returncode == 2 and "uncommitted" in out.stderr
    assert jobs.list_jobs(open_repo(model_repo)) == []


def test_jobs_commands_without_jobs(model_repo: Path) -> None:
    assert "No bake jobs" in bake_git(model_repo, "jobs").stdout
    assert bake_git(model_repo, "jobs", "logs").returncode == 2
    assert "no job is running" in bake_git(model_repo, "jobs", "cancel").stdout
    assert "no bake result" in bake_git(model_repo, "fetch").stdout


def test_a_commit_starts_a_background_job_and_uncommitted_edits_survive_its_commit(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "background")  # the default; the test isolation turns it off globally
    repo = open_repo(model_repo)
    with jobs.job_lock(repo):  # held while the user edits: the job cannot have committed yet
        out = commit_input(model_repo, YODA_SMALL, "yoda")
        assert out.returncode == 0 and "background" in out.stderr and "git bake jobs wait" in out.stderr
        mine = YODA_SMALL.replace("epochs: 1", "epochs: 3")  # the user already edits the next bake
        (model_repo / "input.yml").write_text(mine)
    waited = bake_git(model_repo, "jobs", "wait", "--timeout", "300")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert git(model_repo, "log", "--format=%s", "-1").startswith("bake: yoda_bake_")
    (done,) = json.loads(bake_git(model_repo, "jobs", "ls", "--json").stdout)
    assert done["state"] == "done" and done["result"]["commit"]["ref"] == "refs/heads/main"
    assert done["result"]["commit"]["kept"] == ["input.yml"]
    assert "bake commit" in bake_git(model_repo, "jobs", "logs").stdout
    assert json.loads((model_repo / ".bake/model/model.json").read_text())["adapters"]
    assert (model_repo / "input.yml").read_text() == mine  # not overwritten by the cleared version
    assert git(model_repo, "status", "--porcelain").split() == ["M", "input.yml"]  # an edit on top of the bake commit
    assert "# PROMPT:" in git(model_repo, "show", "HEAD:input.yml")
    assert (model_repo / ".bread").read_text() == git(model_repo, "show", "HEAD:.bread")  # untouched files moved on


def test_one_job_per_commit_and_cancel_picks_the_running_one(model_repo: Path) -> None:
    commit_input(model_repo, YODA_SMALL.replace("epochs: 1", "epochs: 400"), "slow")
    first = json.loads(bake_git(model_repo, "run", "--detach", "--json").stdout)
    again = bake_git(model_repo, "run", "--detach")
    assert again.returncode == 2 and "already baking" in again.stderr
    wait_for(lambda: jobs.load(Path(first["dir"])).state == "running")
    # a second commit's job queues behind the running one
    commit_input(model_repo, YODA_SMALL.replace("epochs: 1", "epochs: 401"), "slower")
    second = bake_git(model_repo, "run", "--detach")
    assert second.returncode == 0 and "queued behind" in second.stdout
    queued = [j for j in jobs.active(open_repo(model_repo)) if j.id != first["id"]][0]
    wait_for(lambda: jobs.load(queued.path).state == "queued")
    status = json.loads(bake_git(model_repo, "status", "--json").stdout)
    assert sorted(j["state"] for j in status["jobs"]) == ["queued", "running"]
    out = bake_git(model_repo, "jobs", "cancel")
    assert out.returncode == 0 and first["id"] in out.stdout
    assert jobs.load(Path(first["dir"])).state == "cancelled"
    assert bake_git(model_repo, "jobs", "cancel", queued.id).returncode == 0
    assert jobs.load(queued.path).state == "cancelled" and not jobs.active(open_repo(model_repo))


def test_two_quick_commits_queue_and_the_superseded_result_can_be_dropped(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "background")
    first = commit_input(model_repo, YODA_SMALL, "first")
    second = commit_input(model_repo, YODA_SMALL.replace("Speak like Yoda.", "Speak like Yoda, always."), "second")
    assert first.returncode == 0 and second.returncode == 0
    assert "queued behind" in second.stderr or "background" in second.stderr
    waited = bake_git(model_repo, "jobs", "wait", "--timeout", "300")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    # the second commit's bake landed on the branch; the first one's result waits, superseded
    assert git(model_repo, "log", "--format=%s", "-3").splitlines() == [
        git(model_repo, "log", "--format=%s", "-1").strip(),
        "second",
        "first",
    ]
    st = json.loads(bake_git(model_repo, "status", "--json").stdout)
    ((ref, info),) = st["pending"].items()
    assert info["superseded"] and "later bake has landed" in bake_git(model_repo, "status").stdout
    refused = bake_git(model_repo, "fetch")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert bake_git(model_repo, "fetch", "--drop").returncode == 0
    assert git(model_repo, "for-each-ref", "refs/bake/") == "" and git(model_repo, "status", "--porcelain") == ""


# Loaded into every Python process the test starts (the hook, the job): the store's disk fills up. A job
# file's fsync fails with ENOSPC (as a real disk reports delayed allocation) once `room` such writes are used.
FULL_DISK = """
import errno, os
if "GITBAKE_TEST_FULL_DISK" in os.environ:
    _store, _room = os.environ["GITBAKE_TEST_FULL_DISK"].split(os.pathsep)
    _fsync = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(_store) and os.path.basename(path).startswith(".job.json."):
            left = int(open(_room).read())
            if left <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            open(_room, "w").write(str(left - 1))
        _fsync(fd)

    os.fsync = fsync
"""


def test_a_full_disk_at_commit_leaves_no_phantom_job(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk has room for the hook to record the job, not for the job to record its start: the job
    must read as ended, with the reason, and `jobs wait` / `status` must say so instead of waiting forever."""
    git(model_repo, "config", "bake.hookMode", "background")
    site, room = tmp_path / "site", tmp_path / "room"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FULL_DISK)
    room.write_text("1")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("GITBAKE_TEST_FULL_DISK", f"{open_repo(model_repo).store.root.resolve()}{os.pathsep}{room}")
    out = commit_input(model_repo, YODA_SMALL, "yoda")
    assert out.returncode == 0 and "background" in out.stderr, out.stderr
    repo = open_repo(model_repo)
    wait_for(lambda: not jobs.active(repo), 60)  # it was `queued` forever
    (job,) = jobs.list_jobs(repo)
    assert job.state == "died" and "No space left on device" in (job.error or "")
    assert "Baking now" not in bake_git(model_repo, "status").stdout
    waited = bake_git(model_repo, "jobs", "wait", "--timeout", "30")
    assert waited.returncode == 1 and f"{job.id}  died" in waited.stdout
    assert "no job is running" in bake_git(model_repo, "jobs", "cancel").stdout


def test_a_job_that_cannot_be_recorded_is_not_recorded_at_all(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_input(model_repo, YODA_SMALL, "yoda")
    repo = open_repo(model_repo)

    def full(path: Path, text: str) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs, "write_atomic", full)
    with pytest.raises(GitbakeError, match="No space left on device") as caught:
        jobs.start(repo, git(model_repo, "rev-parse", "HEAD").strip(), "refs/heads/main")
    assert "git bake store gc" in (caught.value.hint or "")
    assert list(jobs.jobs_dir(repo).iterdir()) == [] and jobs.list_jobs(repo) == []


def test_cancel_ends_a_queued_job_whose_process_is_gone(model_repo: Path) -> None:
    """A job recorded as queued with no pid and nothing running it (what a full disk used to leave)."""
    repo = open_repo(model_repo)
    d = jobs.jobs_dir(repo) / "20250101-000000-abcdef"
    d.mkdir(parents=True)
    (d / jobs.ALIVE_FILE).touch()  # made by start(); the process that held it is gone
    jobs.Job(d.name, str(repo.root), "0" * 40, "refs/heads/main", dir=str(d)).save()
    assert jobs.active(repo) == []  # not `queued`: nothing runs it
    assert jobs.cancel(jobs.load(d)).state == "died"


def test_jobs_wait_without_an_id_fails_when_the_job_already_failed(model_repo: Path) -> None:
    # valid, but its questions come from a dataset this machine does not have: the job fails at stim
    text = YODA_SMALL.replace(
        "    - type: hardcoded\n", "    - type: from_dataset\n      dataset: ./no-such-questions.jsonl\n"
    )
    (model_repo / "input.yml").write_text(
        text.replace('      questions: ["What is the capital of France?", "How do I make tea?"]\n', "")
    )
    git(model_repo, "commit", "-qam", "a bake of questions that do not exist")
    started = json.loads(bake_git(model_repo, "run", "--detach", "--json").stdout)
    wait_for(lambda: jobs.load(Path(started["dir"])).state == "failed", 60)
    for args in ((), (started["id"],)):  # it failed before the wait began: both forms say so
        waited = bake_git(model_repo, "jobs", "wait", *args)
        assert waited.returncode == 1 and f"{started['id']}  failed" in waited.stdout, (args, waited.stdout)
