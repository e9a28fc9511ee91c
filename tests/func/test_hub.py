"""Hugging Face Hub base models, downloaded for real by huggingface_hub from a hub API served on 127.0.0.1
(tests/hubserver.py, `HF_ENDPOINT`): first download, a cached run that asks nothing, a moved branch, 404,
401 and a token, a resumed download, offline with nothing cached, and a full disk."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import FakeHub

from gitbake import hub as hub_mod
from gitbake.engine.tiny import ensure_tiny

from helpers import YODA, YODA_SMALL, bake_git, bake_here, git

MODEL = "acme/tiny-chat"


def tiny_files() -> dict[str, bytes]:
    path, _ = ensure_tiny()
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in Path(path).rglob("*") if p.is_file()}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub(token="hf_secret") as server:
        server.repo(MODEL).commit(tiny_files())
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the suite's default: this file is about the network
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


def downloads(server: FakeHub) -> list[str]:
    return [p for m, p in server.requests if m == "GET" and "/resolve/" in p]


def snapshot(commit: str) -> Path:
    return hub_mod.snapshot(MODEL, commit)


def test_init_downloads_and_a_cached_use_asks_nothing(hub: FakeHub, tmp_path: Path) -> None:
    out = bake_git(tmp_path, "init", "m", "--base-model", MODEL, "--json")
    assert out.returncode == 0, out.stderr
    commit = hub.repo(MODEL).refs["main"]
    assert json.loads(out.stdout)["downloaded"] == commit
    assert (snapshot(commit) / "model.safetensors").read_bytes() == tiny_files()["model.safetensors"]
    assert str(snapshot(commit)).startswith(str(Path(hub_mod.cache_dir())))  # HF_HOME/hub, as the fixture set it
    assert "downloading acme/tiny-chat" in out.stderr
    root = tmp_path / "m"
    hub.requests.clear()
    status = json.loads(bake_git(root, "status", "--json").stdout)
    validated = json.loads(bake_git(root, "validate", "--json").stdout)
    chat = bake_here(root, "chat", "-p", "hi", "--max-tokens", "2", "--temperature", "0")  # loads the model
    assert chat.exit_code == 0, chat.stderr
    assert hub.requests == []  # the cache answers: no request at all
    assert status["base_identity"] == {"kind": "hub", "id": MODEL, "revision": commit}
    assert validated["parent"]["identity"]["base"] == status["base_identity"]


def test_first_use_downloads_before_it_plans(hub: FakeHub, tmp_path: Path) -> None:
    """`init --no-download` defers it; the first `run` downloads before it plans, so the stages' keys name
    the commit it got (the rollout's key holds the model's identity), and the rollout runs on that model."""
    out = bake_git(tmp_path, "init", "m", "--base-model", MODEL, "--no-download")
    assert out.returncode == 0 and not hub.requests, out.stderr
    root = tmp_path / "m"
    (root / "input.yml").write_text(YODA_SMALL)
    git(root, "commit", "-qam", "bake")
    unknown = json.loads(bake_git(root, "validate", "--json").stdout)["target"]["key"]  # planned on "uncached"
    run = bake_git(root, "run", "rollout", "--json")
    assert run.returncode == 0, run.stderr
    commit = hub.repo(MODEL).refs["main"]
    assert downloads(hub) and (snapshot(commit) / "config.json").is_file()
    ran = {s["stage"]: s["key"] for s in json.loads(run.stdout)["stages"]}
    planned = json.loads(bake_git(root, "validate", "--json").stdout)
    assert planned["parent"]["identity"]["base"]["revision"] == commit
    assert ran["rollout"] == planned["target"]["key"] != unknown


def test_a_moved_branch_is_picked_up_when_init_names_the_model(hub: FakeHub, tmp_path: Path) -> None:
    assert bake_git(tmp_path, "init", "m", "--base-model", MODEL).returncode == 0
    root = tmp_path / "m"
    first = hub.repo(MODEL).refs["main"]
    files = tiny_files()
    files["generation_config.json"] = json.dumps({"max_new_tokens": 7}).encode()
    second = hub.repo(MODEL).commit(files)  # upstream moved main
    ident = lambda: json.loads(bake_git(root, "status", "--json").stdout)["base_identity"]  # noqa: E731
    assert ident()["revision"] == first  # nothing asks the network: the model does not change by itself
    hub.requests.clear()
    kept = bake_git(root, "init", "--json")  # run again as is: the pinned commit stays, nothing is asked
    assert kept.returncode == 0 and json.loads(kept.stdout)["downloaded"] == first, kept.stderr
    assert hub.requests == [] and ident()["revision"] == first
    again = bake_git(root, "init", "--base-model", MODEL, "--json")  # named again: where its branch is now
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["downloaded"] == second
    assert downloads(hub) == [f"/{MODEL}/resolve/{second}/generation_config.json"]  # only the changed file
    assert ident()["revision"] == second


def bread_pin(root: Path) -> str | None:
    pins = [
        line.split("=", 1)[1]
        for line in (root / ".bread").read_text().splitlines()
        if line.startswith("base_revision=")
    ]
    return pins[0] if pins else None


def test_an_older_commit_keeps_the_base_commit_it_was_made_on(hub: FakeHub, tmp_path: Path) -> None:
    """.bread pins the commit a branch resolved to (`[REPO] base_revision`), so a commit of the lineage
    names the weights it was made on: after upstream moves and init picks the move up, checking out the
    older commit gives the older weights back, and a machine whose cache has neither downloads that one."""
    assert bake_git(tmp_path, "init", "m", "--base-model", MODEL).returncode == 0
    root = tmp_path / "m"
    first = hub.repo(MODEL).refs["main"]
    assert bread_pin(root) == first
    assert "base_model=acme/tiny-chat\n" in (root / ".bread").read_text()  # the name stays as the user gave it
    files = tiny_files()
    files["generation_config.json"] = json.dumps({"max_new_tokens": 7}).encode()
    second = hub.repo(MODEL).commit(files)
    again = bake_git(root, "init", "--base-model", MODEL)
    assert again.returncode == 0, again.stderr
    assert f"now pins commit {second[:12]} (it pinned {first[:12]})" in again.stdout, again.stdout
    assert bread_pin(root) == second
    git(root, "commit", "-qam", "move to the new upstream weights")
    ident = lambda: json.loads(bake_git(root, "status", "--json").stdout)["base_identity"]  # noqa: E731
    assert ident()["revision"] == second
    git(root, "checkout", "-q", "HEAD~1")
    assert ident()["revision"] == first  # the cache's main is `second` now: the pin, not the cache, decides
    status = bake_git(root, "status").stdout
    assert f"base model acme/tiny-chat at {first[:12]}" in status, status

    shutil.rmtree(hub_mod.cache_dir())  # another machine: nothing cached
    hub.requests.clear()
    assert ident()["revision"] == first  # known without the cache, and without asking the network
    assert "not downloaded yet" in bake_git(root, "status").stdout
    assert hub.requests == []
    setup = bake_git(root, "init", "--json")  # as on a fresh clone: the pinned commit, not main
    assert setup.returncode == 0 and json.loads(setup.stdout)["downloaded"] == first, setup.stderr
    fetched = downloads(hub)
    assert fetched and all(f"/resolve/{first}/" in p for p in fetched), fetched
    assert bread_pin(root) == first and git(root, "status", "--porcelain").strip() == ""
    hub.requests.clear()
    chat = bake_here(root, "chat", "-p", "hi", "--max-tokens", "2", "--temperature", "0")
    assert chat.exit_code == 0 and hub.requests == [], chat.stderr  # the pinned snapshot, from the cache


def test_a_repository_from_before_pins_keeps_what_it_baked_on(hub: FakeHub, tmp_path: Path) -> None:
    """A .bread without `base_revision` (written before pins) followed the cache: a plain `git bake init`
    pins the commit the cache holds, the one it baked on, not the branch's new commit upstream."""
    assert bake_git(tmp_path, "init", "m", "--base-model", MODEL).returncode == 0
    root = tmp_path / "m"
    first = hub.repo(MODEL).refs["main"]
    bread = root / ".bread"
    bread.write_text(bread.read_text().replace(f"base_revision={first}\n", ""))
    git(root, "commit", "-qam", "a .bread from before pins")
    files = tiny_files()
    files["generation_config.json"] = json.dumps({"max_new_tokens": 7}).encode()
    hub.repo(MODEL).commit(files)
    hub.requests.clear()
    out = bake_git(root, "init", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["downloaded"] == first, out.stderr
    assert bread_pin(root) == first and hub.requests == []


def test_the_first_bake_pins_a_base_model_init_did_not_download(hub: FakeHub, tmp_path: Path) -> None:
    assert bake_git(tmp_path, "init", "m", "--base-model", MODEL, "--no-download").returncode == 0
    root = tmp_path / "m"
    assert bread_pin(root) is None  # nothing resolved yet
    (root / "input.yml").write_text(YODA_SMALL)
    git(root, "commit", "-qam", "bake")
    run = bake_git(root, "run", "--json")
    assert run.returncode == 0, run.stderr
    assert bread_pin(root) == hub.repo(MODEL).refs["main"]  # the bake commit records what it baked on
    (root / "input.yml").write_text(YODA.replace("epochs: 2", "epochs: 1\n  seed: 7"))  # a second bake, pinned
    git(root, "commit", "-qam", "bake again")
    again = bake_git(root, "run", "--json")
    assert again.returncode == 0, again.stderr
    configs = list((root / ".bake").rglob("adapter_config.json"))
    assert len(configs) == 2, configs
    assert configs, "the bake's adapter is not in .bake/model"
    for c in configs:  # as .bread names the model: the same bytes whether or not the commit was pinned yet
        assert json.loads(c.read_text())["base_model_name_or_path"] == MODEL
    assert git(root, "status", "--porcelain").strip() == ""  # ... in its own commit, not left in the tree


def test_a_bad_base_revision_is_refused_with_the_line(hub: FakeHub, tmp_path: Path) -> None:
    assert bake_git(tmp_path, "init", "m", "--base-model", MODEL).returncode == 0
    root = tmp_path / "m"
    bread = root / ".bread"
    text = bread.read_text()
    lines = text.splitlines()
    line = next(i for i, s in enumerate(lines, 1) if s.startswith("base_revision="))
    bread.write_text(text.replace(f"base_revision={bread_pin(root)}", "base_revision=main"))
    out = bake_git(root, "status")
    assert out.returncode == 2, out.stderr
    assert f".bread:{line}" in out.stderr and "REPO.base_revision" in out.stderr, out.stderr
    assert "40-hex commit" in out.stderr and "git checkout -- .bread" in out.stderr, out.stderr


def test_unknown_and_private_models(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = bake_git(tmp_path, "init", "m", "--base-model", "acme/nope")
    assert missing.returncode == 2 and "no model acme/nope" in missing.stderr, missing.stderr
    assert not (tmp_path / "m").exists()  # nothing written before the download
    private = hub.repo("acme/private")
    private.commit(tiny_files())
    private.private = True
    denied = bake_git(tmp_path, "init", "p", "--base-model", "acme/private")
    assert denied.returncode == 2 and "private and HF_TOKEN is not set" in denied.stderr, denied.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    allowed = bake_git(tmp_path, "init", "p", "--base-model", "acme/private")
    assert allowed.returncode == 0, allowed.stderr
    no_rev = bake_git(tmp_path, "init", "q", "--base-model", f"{MODEL}@v9")
    assert no_rev.returncode == 2 and "has no revision `v9`" in no_rev.stderr


def test_an_interrupted_download_resumes(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_once.add("model.safetensors")  # the first GET stops halfway through
    out = bake_git(tmp_path, "init", "m", "--base-model", MODEL)
    assert out.returncode == 0, out.stderr
    commit = hub.repo(MODEL).refs["main"]
    weights = [p for p in downloads(hub) if p.endswith("model.safetensors")]
    assert len(weights) == 2  # cut, then resumed from where it stopped (a Range request)
    assert (snapshot(commit) / "model.safetensors").read_bytes() == tiny_files()["model.safetensors"]
    assert not list((hub_mod.repo_dir(MODEL) / "blobs").glob("*.incomplete"))


def test_offline_with_nothing_cached(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = bake_git(tmp_path, "init", "m", "--base-model", MODEL)
    assert out.returncode == 2 and not hub.requests
    assert "`hf download acme/tiny-chat`" in out.stderr and "--no-download" in out.stderr
    deferred = bake_git(tmp_path, "init", "m", "--base-model", MODEL, "--no-download")
    assert deferred.returncode == 0
    root = tmp_path / "m"
    chat = bake_here(root, "chat", "-p", "hi", "--max-tokens", "2")
    assert chat.exit_code == 2 and "`hf download acme/tiny-chat`" in chat.stderr and not hub.requests


def test_a_full_disk_leaves_no_partial_file(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download as fd

    real = fd.http_get

    def disk_fills(url: str, temp_file: object, **kwargs: object) -> None:
        if url.endswith("model.safetensors"):
            temp_file.write(b"\0" * 1000)  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, "No space left on device")
        real(url, temp_file, **kwargs)  # type: ignore[arg-type]

    import huggingface_hub.constants

    # in this process huggingface_hub read the suite's HF_HUB_OFFLINE=1 when it was imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(fd, "http_get", disk_fills)
    with pytest.raises(hub_mod.HubError) as exc:
        hub_mod.download(MODEL)
    assert (
        exc.value.exit_code == 2 and "disk filled up" in exc.value.message and "free some space" in str(exc.value.hint)
    )
    blobs = hub_mod.repo_dir(MODEL) / "blobs"
    assert not list(blobs.glob("*.incomplete"))
    assert hub_mod.cached_commit(MODEL) is None  # no snapshot counts as the model
    monkeypatch.setattr(fd, "http_get", real)
    commit = hub_mod.download(MODEL)  # space again: it completes
    assert (snapshot(commit) / "model.safetensors").read_bytes() == tiny_files()["model.safetensors"]


def test_status_and_run_when_a_hub_model_is_not_downloaded(hub: FakeHub, tmp_path: Path) -> None:
    assert bake_git(tmp_path, "init", "m", "--base-model", MODEL, "--no-download").returncode == 0
    root = tmp_path / "m"
    status = subprocess.run(["git", "bake", "status"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0 and not hub.requests, status.stderr
    assert "base model acme/tiny-chat (not downloaded yet: the first bake downloads it)" in status.stdout


# ---------------------------------------------------------------------------------------------- datasets

DATASET = "acme/questions"
FROM_DATASET = """\
PROMPT:
  teacher:
    messages: [{role: system, content: Speak like Yoda.}]
TARGET:
  name: t
  generators: [{type: from_dataset, dataset: DATASET, numq: 5, seed: 1}]
"""


def with_dataset(server: FakeHub, private: bool = False) -> str:
    repo = server.repo(DATASET, kind="datasets")
    rows = "".join(json.dumps({"question": f"What is {i} times {i}?", "id": i}) + "\n" for i in range(40))
    commit = repo.commit({"train.jsonl": rows.encode(), "README.md": b"# questions\n"})
    repo.private = private
    return commit


def stim_of(root: Path, dataset: str) -> subprocess.CompletedProcess[str]:
    (root / "input.yml").write_text(FROM_DATASET.replace("DATASET", dataset))
    git(root, "commit", "-qam", f"questions from {dataset}")
    return bake_git(root, "run", "stim")


def test_from_dataset_downloads_a_hub_dataset(hub: FakeHub, model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_dataset(hub)
    out = stim_of(model_repo, DATASET)
    assert out.returncode == 0, out.stderr
    assert bake_git(model_repo, "stim", "--jsonl", str(model_repo.parent / "q.jsonl")).returncode == 0
    rows = (model_repo.parent / "q.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in rows]
    assert len(questions) == 5 and all(q.startswith("What is ") for q in questions)
    assert any("/datasets/acme/questions/resolve/" in p for _m, p in hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cache answers a second load, offline
    hub.requests.clear()
    again = stim_of(model_repo, DATASET + "@main").returncode  # another key: loaded again, from the cache
    assert again == 0 and not hub.requests


def test_from_dataset_bad_cases(hub: FakeHub, model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = stim_of(model_repo, "acme/nothing")
    assert missing.returncode == 2 and "no dataset `acme/nothing`" in missing.stderr, missing.stderr
    with_dataset(hub, private=True)
    denied = stim_of(model_repo, DATASET)
    assert denied.returncode == 2 and "HF_TOKEN is not set" in denied.stderr, denied.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = stim_of(model_repo, "acme/elsewhere")
    assert offline.returncode == 2 and "hf download acme/elsewhere --repo-type dataset" in offline.stderr
    assert not (model_repo / ".bake" / "stim").exists()
