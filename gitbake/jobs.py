"""Background bake jobs: `<store>/jobs/<id>/` holds `job.json` (state), `progress.json` and `log`.

A job is a detached process (its own session, so closing the terminal or the hook's exit does not stop
it) that runs `workflow.run_and_commit` on the commit that triggered it. One job per repository runs
at a time: a second one waits on the repository's job lock, shown as `queued`. The job itself writes
its final state; a job whose process died without doing so (killed, machine rebooted) is reported as
`died`, and since nothing user-visible changes before a bake succeeds, a retry is all it takes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.errors import GitbakeError, UsageError
from gitbake.fsutil import write_atomic
from gitbake.keys import digest_bytes
from gitbake.repo import ModelRepo

JOB_FILE = "job.json"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log"
FINAL = ("done", "failed", "cancelled", "died")


@dataclass
class Job:
    id: str
    root: str
    trigger: str
    branch: str | None
    stages: list[str] | None = None
    force: bool = False
    state: str = "queued"  # queued | running | done | failed | cancelled | died
    pid: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    dir: str = ""

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["progress"] = self.progress()
        return out

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "dir"}
        write_atomic(self.path / JOB_FILE, json.dumps(data, indent=2) + "\n")

    def progress(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def active(self) -> bool:
        return self.state not in FINAL


def jobs_dir(repo: ModelRepo) -> Path:
    return repo.store.root / "jobs"


def start(repo: ModelRepo, trigger: str, branch: str | None, stages: list[str] | None = None, force: bool = False) -> Job:
    """Start a detached job for the input.yml committed at `trigger` (queued behind a running one)."""
    same = [j for j in active(repo) if j.trigger == trigger]
    if same:
        raise UsageError(f"job {same[0].id} is already baking {trigger[:12]} ({same[0].state})",
                         "wait for it (`git bake jobs wait`) or cancel it (`git bake jobs cancel`)")
    jid = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = jobs_dir(repo) / jid
    d.mkdir(parents=True)
    job = Job(jid, str(repo.root), trigger, branch, stages, force, dir=str(d))
    job.save()
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gitbake.jobs", str(d)],
            cwd=repo.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**git.clean_env(), "PYTHONUNBUFFERED": "1"},
        )
    job.pid = proc.pid
    # the job rewrites job.json itself; only record the pid if it has not started yet
    current = load(d)
    if current.pid is None:
        current.pid = proc.pid
        current.save()
    return current


def load(d: Path) -> Job:
    data = json.loads((d / JOB_FILE).read_text())
    job = Job(**{k: v for k, v in data.items() if k in Job.__dataclass_fields__ and k != "dir"}, dir=str(d))
    if job.active and job.pid is not None and not _alive(job.pid):
        job.state = "died"
        job.error = job.error or "the job's process ended without recording a result (killed?); input.yml is intact: run `git bake run`"
    return job


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child not yet reaped by its parent is a zombie: not alive
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return True


def job_lock(repo: ModelRepo) -> Any:
    """One bake job per repository at a time; the next one waits here (state `queued`)."""
    from gitbake.locks import FileLock

    return FileLock(repo.store.locks / f"job-{digest_bytes(str(repo.root).encode())[:16]}", timeout=7 * 86400, what="bake job")


def list_jobs(repo: ModelRepo) -> list[Job]:
    """This repository's jobs, newest first."""
    d = jobs_dir(repo)
    out = []
    for sub in sorted(d.iterdir(), reverse=True) if d.is_dir() else []:
        if (sub / JOB_FILE).is_file():
            try:
                job = load(sub)
            except (OSError, ValueError, TypeError):
                continue
            if Path(job.root) == repo.root:
                out.append(job)
    return out


def find(repo: ModelRepo, jid: str | None) -> Job:
    all_jobs = list_jobs(repo)
    if not all_jobs:
        raise UsageError("no bake jobs in this repository yet", "a commit of input.yml starts one; or run `git bake run --detach`")
    if jid is None:
        return all_jobs[0]
    matches = [j for j in all_jobs if j.id == jid or j.id.startswith(jid) or j.id.endswith(jid)]
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else 'more than one'} job matches `{jid}`", "see `git bake jobs ls`")
    return matches[0]


def active(repo: ModelRepo) -> list[Job]:
    return [j for j in list_jobs(repo) if j.active]


def wait(job: Job, timeout: float | None = None, poll: float = 0.2) -> Job:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = load(job.path)
        if not job.active:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise GitbakeError(f"job {job.id} is still {job.state} after {timeout:.0f}s", "wait longer, or `git bake jobs cancel`")
        time.sleep(poll)


def cancel(job: Job, grace: float = 10.0) -> Job:
    """Interrupt the job (as Ctrl-C would: the bake stops cleanly and stores nothing), then make sure."""
    if not job.active or job.pid is None:
        return job
    for sig, wait_s in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(job.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait_s
        while time.monotonic() < end and _alive(job.pid):
            time.sleep(0.1)
        if not _alive(job.pid):
            break
    job = load(job.path)
    if job.state not in ("done", "failed", "cancelled"):
        job.state, job.finished = "cancelled", time.time()
        job.error = "cancelled"
        job.save()
    return job


# ------------------------------------------------------------------------------ the job process


def _run(d: Path) -> int:
    from gitbake import progress
    from gitbake.repo import open_repo
    from gitbake.workflow import run_and_commit

    job = load(d)
    job.pid = os.getpid()
    job.save()
    repo = open_repo(Path(job.root))
    lock = job_lock(repo)

    stopped: list[int] = []

    def on_stop(signum: int, frame: Any) -> None:
        # remembered: a library may wrap the KeyboardInterrupt (transformers turns one raised during a lazy
        # import into ModuleNotFoundError), and a cancelled job must not be reported as a failed one
        stopped.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    last = [0.0]

    def publish(p: dict[str, Any]) -> None:
        if time.monotonic() - last[0] > 1.0 or p["done"] >= p["total"]:
            last[0] = time.monotonic()
            write_atomic(d / PROGRESS_FILE, json.dumps(p) + "\n")

    progress.SINK = publish
    code = 0
    try:
        with lock:
            job.state, job.started = "running", time.time()
            job.save()
            print(f"job {job.id}: baking input.yml of {job.trigger[:12]} on {job.branch or 'a detached HEAD'}", flush=True)
            report = run_and_commit(repo, job.stages, job.force, rev=job.trigger, branch_ref=job.branch,
                                    say=lambda m: print(m, flush=True))
            job.state, job.result = "done", report.as_json()
            for line in report.outcome():
                print(line, flush=True)
    except KeyboardInterrupt:
        job.state, job.error, code = "cancelled", "cancelled; nothing was stored or committed", 130
    except GitbakeError as exc:
        job.state, job.error, code = "failed", exc.render(), exc.exit_code
        print(f"error: {exc.render()}", flush=True)
    except Exception as exc:  # recorded, with the traceback in the log
        import traceback

        traceback.print_exc()
        job.state, job.error, code = "failed", f"{type(exc).__name__}: {exc}", 1
    finally:
        if stopped and job.state != "done":
            job.state, job.error, code = "cancelled", "cancelled; nothing was stored or committed", 130
        job.finished = time.time()
        job.save()
    return code


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
