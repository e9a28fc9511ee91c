"""Background bake jobs: `<store>/jobs/<id>/` holds `job.json` (state), `progress.json` and `log`.

A job is a detached process (its own session, so closing the terminal or the hook's exit does not stop
it) that runs `workflow.run_and_commit` on the commit that triggered it. One job per repository runs
at a time: a second one waits on the repository's job lock, shown as `queued`. The job itself writes
its final state; a job whose process died without doing so (killed, machine rebooted, or unable to write
its state on a full disk) is reported as `died`, and since nothing user-visible changes before a bake
succeeds, a retry is all it takes.

Whether a job's process lives is not read from `job.json` (which a full disk may keep from being written)
but from a lock: `start` takes `alive` before it spawns the process, which inherits it and holds it until
it exits, so a job is never `queued` or `running` without a process behind it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.contract.keys import digest_bytes
from gitbake.errors import GitbakeError, UsageError
from gitbake.fsutil import write_atomic
from gitbake.repo.repo import ModelRepo
from gitbake.reporter import Reporter

JOB_FILE = "job.json"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log"
ALIVE_FILE = "alive"  # locked by the job's process for as long as it runs
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


def start(
    repo: ModelRepo, trigger: str, branch: str | None, stages: list[str] | None = None, force: bool = False
) -> Job:
    """Start a detached job for the input.yml committed at `trigger` (queued behind a running one).

    A job that cannot be started (no room to record it, no process) leaves no record: the error says why."""
    same = [j for j in active(repo) if j.trigger == trigger]
    if same:
        raise UsageError(
            f"job {same[0].id} is already baking {trigger[:12]} ({same[0].state})",
            "wait for it (`git bake jobs wait`) or cancel it (`git bake jobs cancel`)",
        )
    jid = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = jobs_dir(repo) / jid
    job = Job(jid, str(repo.root), trigger, branch, stages, force, dir=str(d))
    try:
        d.mkdir(parents=True)
        # `alive` is locked before job.json exists, so there is no moment when the job is recorded and
        # nothing holds it; the process inherits the lock and holds it until it exits
        fd = os.open(d / ALIVE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            job.save()
            job.pid = _spawn(repo, job, fd)
        finally:
            os.close(fd)  # ours only: the process's copy keeps the lock
    except OSError as exc:
        shutil.rmtree(d, ignore_errors=True)  # deleting needs no room: a half-made job is never left queued
        raise GitbakeError(
            f"could not start a bake job in {jobs_dir(repo)}: {exc.strerror or exc}",
            "free space on the store's disk (`git bake store gc`), then run `git bake run`",
        ) from None
    # the job process records its own pid and state from here on: one writer of job.json at a time
    return job


def _spawn(repo: ModelRepo, job: Job, alive_fd: int) -> int:
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gitbake.workflow.jobs", str(job.path)],
            cwd=repo.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**git.clean_env(), "PYTHONUNBUFFERED": "1"},
            pass_fds=(alive_fd,),
        )
    return proc.pid


def load(d: Path) -> Job:
    data = json.loads((d / JOB_FILE).read_text())
    job = Job(**{k: v for k, v in data.items() if k in Job.__dataclass_fields__ and k != "dir"}, dir=str(d))
    if job.active and not _running(job):
        job.state = "died"
        why = _last_error(job.log_path)
        job.error = job.error or (
            "the job's process ended without recording a result"
            + (f" ({why})" if why else " (killed?)")
            + "; input.yml is intact: run `git bake run`"
        )
    return job


def _running(job: Job) -> bool:
    """Whether the job's process still lives: it holds the job's `alive` lock (a job made before that
    lock existed is judged by its pid)."""
    try:
        fd = os.open(job.path / ALIVE_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return job.pid is not None and _alive(job.pid)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops our shared lock, if we got it
    return False


def _last_error(log: Path) -> str | None:
    """The last `error:` line of a job's log: why a job that could not record its end ended."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    return next((ln.removeprefix("error: ").strip() for ln in reversed(lines) if ln.startswith("error: ")), None)


def _alive(pid: int) -> bool:
    from gitbake.store.locks import pid_alive  # one definition of "still running" (bake leases use it too)

    return pid_alive(pid)


def job_lock(repo: ModelRepo) -> Any:
    """One bake job per repository at a time; the next one waits here (state `queued`)."""
    from gitbake.store.locks import FileLock

    return FileLock(
        repo.store.locks / f"job-{digest_bytes(str(repo.root).encode())[:16]}", timeout=7 * 86400, what="bake job"
    )


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
        raise UsageError(
            "no bake jobs in this repository yet", "a commit of input.yml starts one; or run `git bake run --detach`"
        )
    if jid is None:
        return all_jobs[0]
    matches = [j for j in all_jobs if j.id == jid or j.id.startswith(jid) or j.id.endswith(jid)]
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else 'more than one'} job matches `{jid}`", "see `git bake jobs ls`")
    return matches[0]


def active(repo: ModelRepo) -> list[Job]:
    return [j for j in list_jobs(repo) if j.active]


def unsettled(repo: ModelRepo) -> list[Job]:
    """What `jobs wait` without an id answers for: every running or queued job, and every job that ended
    without success since the newest successful one (a failure stays news until a later job succeeds),
    so a job that failed or died before the wait began still makes it fail."""
    found = list_jobs(repo)  # newest first
    newest_done = next((i for i, j in enumerate(found) if j.state == "done"), len(found))
    return [j for i, j in enumerate(found) if j.active or i < newest_done]


def wait(job: Job, timeout: float | None = None, poll: float = 0.2) -> Job:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = load(job.path)
        if not job.active:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise GitbakeError(
                f"job {job.id} is still {job.state} after {timeout:.0f}s", "wait longer, or `git bake jobs cancel`"
            )
        time.sleep(poll)


def cancel(job: Job, grace: float = 10.0) -> Job:
    """Interrupt the job (as Ctrl-C would: the bake stops cleanly and stores nothing), then make sure.
    A queued or running job always ends: its process is stopped, and a job with none is over already."""
    if not job.active:
        return job
    pid = job.pid if job.pid is not None else _started_pid(job)
    if pid is not None:
        _stop(job, pid, grace)
    job = load(job.path)
    if job.state not in ("done", "failed", "cancelled"):
        job.state, job.finished = "cancelled", time.time()
        job.error = "cancelled"
        try:
            job.save()
        except OSError:
            pass  # no room to record it (a full disk): the process is gone, so it reads as ended all the same
    return job


def cancel_job(repo: ModelRepo, job_id: str | None = None) -> Job | None:
    """`git bake jobs cancel [JOB_ID]`: stop JOB_ID, or by default the running job, else the newest queued
    one. None when no job is running or queued."""
    live = active(repo)  # newest first
    job = find(repo, job_id) if job_id else next(iter(sorted(live, key=lambda j: j.state != "running")), None)
    return cancel(job) if job is not None else None


def _stop(job: Job, pid: int, grace: float) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the job's process group, until its process is gone."""
    for sig, wait_s in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait_s
        while time.monotonic() < end and _running(job):
            time.sleep(0.1)
        if not _running(job):
            return


def _started_pid(job: Job, timeout: float = 10.0) -> int | None:
    """The pid of a job whose process is starting: it records it first thing, or exits (then: None)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and _running(job):
        pid = load(job.path).pid
        if pid is not None:
            return pid
        time.sleep(0.1)
    return None


# ------------------------------------------------------------------------------ the job process


def _run(d: Path) -> int:
    try:
        job = load(d)
        job.pid = os.getpid()
        job.save()
    except (OSError, ValueError) as exc:
        # nothing can be recorded (a full disk): say why in the log; the job reads as died with this reason
        print(f"error: could not record the job's start in {d}: {exc}", flush=True)
        return 1
    code = 1
    try:
        code = _bake(job)
    finally:
        try:
            job.save()
        except OSError as exc:
            print(f"error: could not record the job's end ({job.state}) in {d}: {exc}", flush=True)
            code = code or 1
    return code


def _bake(job: Job) -> int:
    """Wait for the repository's turn, bake, and leave the outcome in `job` (the caller saves it)."""
    from gitbake.repo.repo import open_repo
    from gitbake.workflow.run import run_and_commit

    d = job.path
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
            try:
                write_atomic(d / PROGRESS_FILE, json.dumps(p) + "\n")
            except OSError:
                pass  # progress is a courtesy: a full disk must not fail the bake for it

    # the job's log is its stdout: messages and progress go there, and progress is also published for status
    reporter = Reporter(sys.stdout, sink=publish)
    code = 0
    try:
        repo = open_repo(Path(job.root))
        with job_lock(repo):
            job.state, job.started = "running", time.time()
            job.save()
            reporter.say(f"job {job.id}: baking input.yml of {job.trigger[:12]} on {job.branch or 'a detached HEAD'}")
            from gitbake.workflow.launch import configured

            report = run_and_commit(
                repo,
                job.stages,
                job.force,
                rev=job.trigger,
                branch_ref=job.branch,
                reporter=reporter,
                launcher=configured(repo, None),
            )
            job.state, job.result = "done", report.as_json()
            for line in report.outcome():
                reporter.say(line)
    except KeyboardInterrupt:
        job.state, job.error, code = "cancelled", "cancelled; nothing was stored or committed", 130
    except GitbakeError as exc:
        job.state, job.error, code = "failed", exc.render(), exc.exit_code
        reporter.say(f"error: {exc.render()}")
    except Exception as exc:  # recorded, with the traceback in the log
        import traceback

        traceback.print_exc()
        job.state, job.error, code = "failed", f"{type(exc).__name__}: {exc}", 1
    finally:
        if stopped and job.state != "done":
            job.state, job.error, code = "cancelled", "cancelled; nothing was stored or committed", 130
        job.finished = time.time()
    return code


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
