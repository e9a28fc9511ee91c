"""`git bake run stim|rollout` end to end on tiny, the cache, and the stim / rollout viewers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gitbake.repo.repo import open_repo
from gitbake.workflow import pipeline

from helpers import git, invoke

INPUT = """\
PROMPT:
  teacher:
    messages:
      - role: system
        content: You are Yoda. Speak like Yoda you must.
TARGET:
  name: yoda_target
  generators:
    - type: hardcoded
      questions: ["What is the capital of France?", "How do I make tea?", "Why is the sky blue?"]
    - type: persona
      numq: 9
      seed: 3
  num_traj_per_stimulus: 2
  max_tokens: 16
  max_concurrency: 4
"""


@pytest.fixture
def committed(model_repo: Path) -> Path:
    (model_repo / "input.yml").write_text(INPUT)
    git(model_repo, "commit", "-qam", "yoda target")
    return model_repo


def records(stage: str) -> list[dict]:
    out = json.loads(invoke(stage, "--limit", "1000", "--json").stdout)
    return out["records"]


def test_run_stim_then_rollout_and_cache(committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = json.loads(invoke("run", "--json").stdout)["stages"]
    assert [(r["stage"], r["cached"]) for r in first] == [("stim", False), ("rollout", False)]
    assert first[0]["count"] == 12 and first[1]["count"] == 24
    st = open_repo(committed).store
    assert st.get_key("stim", first[0]["key"]) == first[0]["manifest"]
    assert st.get_key("rollout", first[1]["key"]) == first[1]["manifest"]

    # a second run is a cache hit: prove the stages do not execute
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("stage executed on a cache hit")

    monkeypatch.setattr("gitbake.engine.stim.make_stim", boom)
    monkeypatch.setattr("gitbake.engine.rollout.make_rollouts", boom)
    second = json.loads(invoke("run", "--json").stdout)["stages"]
    assert [(r["stage"], r["cached"], r["manifest"]) for r in second] == [
        ("stim", True, first[0]["manifest"]),
        ("rollout", True, first[1]["manifest"]),
    ]


def test_identical_seeds_identical_outputs(committed: Path) -> None:
    invoke("run")
    before = records("rollout")
    forced = json.loads(invoke("run", "--force", "--json").stdout)["stages"]
    assert not any(r["cached"] for r in forced)
    after = records("rollout")
    assert [r["response_ids"] for r in before] == [r["response_ids"] for r in after]
    rec = before[0]
    assert rec["teacher_ids"] and rec["student_ids"] and rec["response_ids"]
    assert len(rec["teacher_ids"]) > len(rec["student_ids"])  # the teacher context carries the prompt
    assert {r["split"] for r in before} == {"train", "heldout"}


def test_rollout_runs_a_missing_stim_first(committed: Path) -> None:
    out = json.loads(invoke("run", "rollout", "--json").stdout)["stages"]
    assert [r["stage"] for r in out] == ["rollout"] and "ran the missing stim stage first" in out[0]["notes"]
    assert json.loads(invoke("run", "stim", "--json").stdout)["stages"][0]["cached"]


def test_changed_sampling_reruns_rollout_not_stim(committed: Path) -> None:
    invoke("run")
    (committed / "input.yml").write_text(INPUT.replace("max_tokens: 16", "max_tokens: 8"))
    git(committed, "commit", "-qam", "shorter answers")
    out = json.loads(invoke("run", "--json").stdout)["stages"]
    assert [(r["stage"], r["cached"]) for r in out] == [("stim", True), ("rollout", False)]
    assert all(len(r["response_ids"]) <= 8 for r in records("rollout"))


def test_rollout_with_conditioned_samples_from_the_student_context(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(
        INPUT.replace("    - type: persona\n      numq: 9\n      seed: 3\n", "").replace(
            "    - type: hardcoded\n", "    - type: hardcoded\n      rollout_with_conditioned: true\n"
        )
    )
    git(model_repo, "commit", "-qam", "conditioned")
    invoke("run")
    stim = records("stim")
    assert all(r["rollout_with_conditioned"] for r in stim)


def test_uncommitted_changes_are_refused(committed: Path) -> None:
    (committed / "input.yml").write_text(INPUT.replace("num_traj_per_stimulus: 2", "num_traj_per_stimulus: 3"))
    result = invoke("run", "stim")
    assert result.exit_code == 2 and "uncommitted changes" in result.stderr and "git commit" in result.stderr
    assert "num_traj_per_stimulus: 3" in (committed / "input.yml").read_text()  # nothing is lost


def test_viewers_page_count_and_export(committed: Path, tmp_path: Path) -> None:
    invoke("run")
    assert invoke("stim", "-c").stdout.strip() == "12"
    assert invoke("rollout", "--count").stdout.strip() == "24"
    page = json.loads(invoke("rollout", "--offset", "20", "--limit", "10", "--json").stdout)
    assert [r["id"] for r in page["records"]] == [20, 21, 22, 23]
    human = invoke("stim", "-l", "20").stdout
    assert "What is the capital of France?" in human and "_ids" not in human
    out = tmp_path / "all.jsonl"
    assert "wrote 24" in invoke("rollout", "--jsonl", str(out)).stdout
    assert len(out.read_text().splitlines()) == 24
    assert invoke("stim", "--target", "nope").exit_code == 2


def test_viewer_before_any_run_says_what_to_do(committed: Path) -> None:
    result = invoke("rollout")
    assert result.exit_code == 2 and "git bake run rollout" in result.stderr


def test_run_without_target_or_commit(model_repo: Path) -> None:
    result = invoke("run", "stim")
    assert result.exit_code == 2 and "no TARGET" in result.stderr
    assert invoke("run", "bake").exit_code == 2  # not a stage of this command (yet)


def test_records_round_trip_through_the_store(committed: Path) -> None:
    invoke("run", "stim")
    st = open_repo(committed).store
    key = json.loads(invoke("run", "stim", "--json").stdout)["stages"][0]["key"]
    manifest = st.get_key("stim", key)
    assert manifest and len(list(pipeline.read_records(st, manifest, "stim"))) == 12


def test_rollout_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from gitbake.engine import vllm_backend
    from gitbake.errors import UsageError

    monkeypatch.setenv("GITBAKE_ROLLOUT_BACKEND", "hf")
    assert not vllm_backend.wanted()
    monkeypatch.setenv("GITBAKE_ROLLOUT_BACKEND", "auto")
    assert not vllm_backend.wanted()  # no vLLM and no GPU here: transformers' generate
    monkeypatch.setenv("GITBAKE_ROLLOUT_BACKEND", "vllm")
    with pytest.raises(UsageError, match="vLLM"):
        vllm_backend.wanted()


BAKE_SECTION = """\
BAKE:
  name: yoda_bake
  epochs: 2
  micro_batch_size: 4
  optimizer:
    learning_rate: 0.003
  model:
    disable_activation_checkpoint: true
"""


def test_run_bake_end_to_end_and_cache(committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (committed / "input.yml").write_text(INPUT + BAKE_SECTION)
    git(committed, "commit", "-qam", "bake it")
    out = json.loads(invoke("run", "--json").stdout)["stages"]
    assert [r["stage"] for r in out] == ["stim", "rollout", "bake"]
    b = out[2]
    assert not b["cached"] and b["extra"]["gap_closed"] is not None and b["extra"]["d_after"] < b["extra"]["d_before"]
    st = open_repo(committed).store
    adapter = st.get_key("bake", b["key"])
    assert adapter == b["manifest"]
    assert sorted(st.read_manifest(adapter).files) == ["adapter_config.json", "adapter_model.safetensors"]
    report = pipeline.bake_report(st, b["key"])
    assert report and report["adapter"] == adapter and report["questions"] >= 1
    assert not (st.root / "jobs" / f"bake-{b['key'][:16]}").exists()  # scratch removed after success

    # the bake made its commit; back on the commit that triggered it, everything is a cache hit
    assert git(committed, "log", "--format=%s", "-1").startswith("bake: ")
    git(committed, "reset", "-q", "--hard", "HEAD~1")
    status = json.loads(invoke("status", "--json").stdout)
    assert [(r["stage"], r["state"]) for r in status["stages"]] == [
        ("stim", "cached"),
        ("rollout", "cached"),
        ("bake", "cached"),
    ]
    assert status["stages"][2]["eval"]["gap_closed"] == b["extra"]["gap_closed"]
    assert "gap_closed" in invoke("status").stdout
    # the bake's record says where its time went, and a bake that ran prints it
    assert all(isinstance(b["extra"][k], float) for k in ("train_seconds", "teacher_seconds", "eval_seconds"))
    forced = invoke("run", "bake", "--force").stdout
    assert re.search(r"time: training [\d.]+s, teacher pass [\d.]+s, eval [\d.]+s", forced), forced
    git(committed, "reset", "-q", "--hard", "HEAD~1")  # off the forced bake's commit again

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("trained on a cache hit")

    monkeypatch.setattr("gitbake.engine.bake.Baker.train", boom)
    human = invoke("run", "bake").stdout
    assert "cached" in human and "gap_closed" in human and "bake commit" in human and "time:" not in human


def test_the_eval_takes_the_held_out_rollouts_that_are_teacher_samples(
    committed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At temperature 1 with nothing reshaping the distribution, the held-out rollouts are the teacher
    samples the eval's KL needs: the bake's eval and `git bake eval` take them instead of sampling again.
    At another temperature they are not, and the eval samples its own."""
    from gitbake.engine import eval as eval_mod

    sampled: list[int] = []
    real = eval_mod.generate_batches

    def counted(model: object, tokenizer: object, prompts: list[list[int]], *a: object, **k: object) -> object:
        sampled.append(len(prompts))
        return real(model, tokenizer, prompts, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(eval_mod, "generate_batches", counted)
    (committed / "input.yml").write_text(INPUT + BAKE_SECTION)
    git(committed, "commit", "-qam", "bake it")
    out = json.loads(invoke("run", "--json").stdout)["stages"]
    heldout = [r for r in records("rollout") if r["split"] == "heldout"]
    assert heldout and all(r["teacher_sample"] for r in heldout)
    report = pipeline.bake_report(open_repo(committed).store, out[2]["key"])
    assert report and report["rollout_samples"] == report["trajectories"] == len(heldout)
    assert sampled == [] and report["gap_closed"] is not None
    again = invoke("eval", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["rollout_samples"] == len(heldout) and sampled == []

    # in bf16 (as `dtype: auto` bakes on a CPU that multiplies it natively), to show that `git bake eval`
    # draws its samples in the bake's dtype: another dtype's logits would draw other answers
    (committed / "input.yml").write_text(
        INPUT.replace("max_tokens: 16", "max_tokens: 16\n  temperature: 0.7")
        + BAKE_SECTION.replace("  model:\n", "  model:\n    dtype: bf16\n")
    )
    git(committed, "commit", "-qam", "cooler answers")
    out = json.loads(invoke("run", "--json").stdout)["stages"]
    assert not any(r["teacher_sample"] for r in records("rollout"))
    report = pipeline.bake_report(open_repo(committed).store, out[2]["key"])
    assert (
        report and report["rollout_samples"] == 0 and sampled == [report["questions"] * report["samples_per_question"]]
    )
    again = invoke("eval", "--json")
    assert again.exit_code == 0, again.stderr
    redone = json.loads(again.stdout)
    assert redone["rollout_samples"] == 0 and len(sampled) == 2  # it sampled its own again: the same ones
    for figure in ("d_before", "d_after", "gap_closed"):
        assert redone[figure] == pytest.approx(report[figure], rel=1e-5), figure

    # another bake of the same rollouts (one epoch, not two) draws the same samples: the parent's KL on them
    # is the same figure, so the two bakes' gap_closed compare (they were seeded by the bake's key)
    git(committed, "reset", "-q", "--hard", "HEAD~1")  # off the bake commit, back onto its trigger
    text = (committed / "input.yml").read_text()
    (committed / "input.yml").write_text(text.replace("epochs: 2", "epochs: 1"))
    git(committed, "commit", "-qam", "one epoch")
    out = json.loads(invoke("run", "--json").stdout)["stages"]
    assert [r["cached"] for r in out] == [True, True, False]
    other = pipeline.bake_report(open_repo(committed).store, out[2]["key"])
    assert other and other["rollout_samples"] == 0 and len(sampled) == 3
    assert other["d_before"] == pytest.approx(report["d_before"], rel=1e-6)
    assert other["d_after"] != pytest.approx(report["d_after"], rel=1e-3)  # another model, the same samples


def test_a_failed_bake_stores_nothing(committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (committed / "input.yml").write_text(INPUT + BAKE_SECTION)
    git(committed, "commit", "-qam", "bake it")
    invoke("run", "rollout")
    st = open_repo(committed).store
    before = set(st.iter_objects())

    def fail(*a: object, **k: object) -> None:
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr("gitbake.engine.eval.evaluate", fail)
    with pytest.raises(RuntimeError):
        invoke("run", "bake")
    assert set(st.iter_objects()) == before
    assert not list((st.root / "keys").glob("bake/*")) and not list((st.root / "keys").glob("eval/*"))


def test_deepspeed_requested_without_deepspeed_installed(committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    (committed / "input.yml").write_text(
        INPUT + BAKE_SECTION + "  deepspeed:\n    zero_optimization:\n      stage: 2\n"
    )
    git(committed, "commit", "-qam", "zero 2")
    result = invoke("run", "bake")
    assert result.exit_code == 2 and "pip install 'gitbake[deepspeed]'" in result.stderr


def test_uncommitted_question_file_is_said(model_repo: Path) -> None:
    (model_repo / "q.txt").write_text("one?\ntwo?\n")
    (model_repo / "input.yml").write_text(
        "PROMPT:\n  teacher: {messages: [{role: system, content: hi}]}\n"
        "TARGET:\n  generators: [{type: from_file, path: q.txt}]\n"
    )
    git(model_repo, "add", "-A")
    git(model_repo, "commit", "-qm", "file target")
    assert "differs from its committed version" not in invoke("run", "stim").stderr
    (model_repo / "q.txt").write_text("one?\nchanged?\n")
    assert "q.txt differs from its committed version" in invoke("run", "stim").stderr
