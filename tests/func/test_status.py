"""`git bake status` / `validate`: what would run, names and keys, against .bread."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gitbake.contract import bread
from gitbake.workflow.init import template_input

from helpers import YODA, git, invoke, record_bake

PAGE = Path(__file__).parent.parent / "data" / "bake_config_page"


def test_fresh_repo_has_nothing_to_run(model_repo: Path) -> None:
    result = invoke("status")
    assert result.exit_code == 0
    assert "Nothing to run" in result.stdout and "Commented out: PROMPT, TARGET, BAKE" in result.stdout
    data = json.loads(invoke("status", "--json").stdout)
    assert data["would_run"] == [] and data["commented_out"] == ["PROMPT", "TARGET", "BAKE"]
    assert data["base_model"] == "tiny" and data["branch"] == "main"


def test_uncommented_example_would_run_everything(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(re.sub(r"(?m)^# ", "", template_input()))
    data = json.loads(invoke("status", "--json").stdout)
    assert data["would_run"] == ["stim", "rollout", "bake"]
    kinds = {(c["kind"], c["ref"]): c for c in data["changes"]}
    assert set(kinds) == {
        ("prompt", "teacher"),
        ("prompt", "student"),
        ("target", "french_target"),
        ("bake", "french_bake"),
    }
    assert all(c["state"] == "new" for c in data["changes"])
    t = kinds[("target", "french_target")]
    assert t["name"] == "french_target_" + t["key"][:12] and len(t["key"]) == 64
    human = invoke("status").stdout
    assert "stim -> rollout -> bake" in human and t["name"] in human and "implied: empty student prompt" in human


def test_changed_and_unchanged_against_bread(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    first = {c["ref"]: c for c in json.loads(invoke("status", "--json").stdout)["changes"]}
    # record the prompts and target as a bake would, then edit only the bake
    b = bread.read(model_repo)
    assert b is not None
    b.set_prompts(
        {
            "teacher": bread.Named(first["teacher"]["key"], first["teacher"]["name"]),
            "student": bread.Named(first["student"]["key"], first["student"]["name"]),
        }
    )
    b.sections["TARGET"] = {"hash": first["yoda_target"]["key"], "target_name": first["yoda_target"]["name"]}
    b.sections["BAKE"] = {"hash": first["yoda_bake"]["key"], "bake_name": first["yoda_bake"]["name"]}
    bread.write(model_repo, b)
    states = {c["ref"]: c["state"] for c in json.loads(invoke("status", "--json").stdout)["changes"]}
    assert set(states.values()) == {"unchanged"}
    (model_repo / "input.yml").write_text(YODA.replace("epochs: 2", "epochs: 4"))
    states = {c["ref"]: c["state"] for c in json.loads(invoke("status", "--json").stdout)["changes"]}
    assert states == {
        "teacher": "unchanged",
        "student": "unchanged",
        "yoda_target": "unchanged",
        "yoda_bake": "changed",
    }


def test_status_does_not_write(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    before = {p: (model_repo / p).read_bytes() for p in (".bread", "recipe.yml", "input.yml")}
    invoke("status")
    invoke("validate")
    assert {p: (model_repo / p).read_bytes() for p in before} == before


def test_validate_prints_resolved_defaults(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    result = invoke("validate")
    assert result.exit_code == 0
    assert "learning_rate: 0.001" in result.stdout and "deepspeed: null" in result.stdout
    assert "yoda_bake_" in result.stdout
    data = json.loads(invoke("validate", "--json").stdout)
    assert data["valid"] and data["bake"]["config"]["micro_batch_size"] == 4


def test_bad_input_exit_2_names_file_line_field_and_changes_nothing(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text("BAKE:\n  name: b\n  epochs: three\n")
    before = {p: (model_repo / p).read_bytes() for p in (".bread", "recipe.yml", "input.yml")}
    for cmd in ("validate", "status"):
        result = invoke(cmd)
        assert result.exit_code == 2
        assert "input.yml:3:3: BAKE.epochs" in result.stderr and "fix:" in result.stderr
    assert {p: (model_repo / p).read_bytes() for p in before} == before


@pytest.mark.parametrize(
    "example, missing",
    [("13_complete.yml", "coding_target"), ("14_minimal.yml", "main_target"), ("02_datasets.yml", "coding_target")],
)
def test_validate_names_a_target_defined_nowhere(example: str, missing: str, model_repo: Path) -> None:
    (model_repo / "input.yml").write_text((PAGE / example).read_text())
    result = invoke("validate")
    assert result.exit_code == 2
    assert f"no target named `{missing}` in input.yml or in the lineage" in result.stderr
    assert re.search(r"input\.yml:\d+:\d+: BAKE\.datasets\[0\]\.target", result.stderr)


def test_sequential_example_second_bake_uses_the_lineage_target(model_repo: Path) -> None:
    first = (PAGE / "15_sequential_first.yml").read_text()
    with_target = YODA.split("BAKE:")[0].replace("yoda_target", "main_target") + first.split("# Creates")[0].replace(
        "# First bake\n", ""
    )
    (model_repo / "input.yml").write_text(with_target)
    plan = json.loads(invoke("validate", "--json").stdout)
    target = plan["target"]
    assert plan["bake"]["datasets"][0]["name"] == target["name"]
    # the first bake is recorded (as the bake commit will do), then the second version of input.yml has
    # only a BAKE section naming the target by its plain name
    record_bake(model_repo, target["name"], target["key"], target["config"])
    (model_repo / "input.yml").write_text((PAGE / "16_sequential_second.yml").read_text())
    second = json.loads(invoke("validate", "--json").stdout)
    ds = second["bake"]["datasets"][0]
    assert ds["name"] == target["name"] and ds["key"] == target["key"] and ds["source"] == "lineage"
    assert second["stages"] == ["bake"]


def test_did_you_mean_for_a_misspelt_lineage_target(model_repo: Path) -> None:
    record_bake(model_repo, "main_target_0123456789ab", "a" * 64)
    (model_repo / "input.yml").write_text("BAKE:\n  name: b\n  datasets:\n    - target: main_targt\n")
    result = invoke("validate")
    assert result.exit_code == 2 and "did you mean `main_target`?" in result.stderr


def test_bake_without_datasets_or_target(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text((PAGE / "03_epochs.yml").read_text())
    result = invoke("validate")
    assert result.exit_code == 2 and "BAKE has no `datasets`" in result.stderr


def test_not_a_repo_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("status")
    assert result.exit_code == 3 and "git bake init" in result.stderr
    git(tmp_path, "init", "-q")
    result = invoke("status")
    assert result.exit_code == 3 and "no .bread" in result.stderr


def test_status_in_a_subdirectory(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (model_repo / "templates").mkdir()
    monkeypatch.chdir(model_repo / "templates")
    assert invoke("status").exit_code == 0


def test_target_template_inherits_an_earlier_target(model_repo: Path) -> None:
    old_config = {
        "name": "base_target",
        "generators": [{"type": "hardcoded", "questions": ["q1?", "q2?"]}],
        "num_traj_per_stimulus": 3,
        "temperature": 0.7,
        "max_tokens": 64,
    }
    record_bake(model_repo, "base_target_aaaaaaaaaaaa", "a" * 64, old_config)
    (model_repo / "input.yml").write_text(
        "PROMPT:\n  teacher:\n    messages: [{role: system, content: hi}]\n"
        "TARGET:\n  name: derived\n  template: base_target\n  temperature: 1.2\n"
    )
    t = json.loads(invoke("validate", "--json").stdout)["target"]
    assert t["config"]["generators"][0]["questions"] == ["q1?", "q2?"] and t["config"]["num_traj_per_stimulus"] == 3
    assert t["config"]["temperature"] == 1.2 and t["plain"] == "derived"
    (model_repo / "input.yml").write_text("PROMPT:\n  teacher: {}\nTARGET:\n  template: nowhere\n")
    result = invoke("validate")
    assert result.exit_code == 2 and "TARGET.template" in result.stderr and "nowhere" in result.stderr


# ------------------------------------------------- what cannot run fails cleanly everywhere (issue 14.9, 14.12)

BOMB = "x" * 100_000
# name -> (input.yml, extra files, the file:line the error names, what else it names)
CANNOT_RUN = {
    "seed 2^64": (YODA + "  seed: 18446744073709551616\n", {}, "input.yml:19", "BAKE.seed"),
    "top_k -3": (
        YODA.replace("  max_tokens: 32\n", "  max_tokens: 32\n  extra_kwargs: {top_k: -3}\n"),
        {},
        "input.yml:13",
        "TARGET.extra_kwargs.top_k",
    ),
    "num_traj 1e12": (
        YODA.replace("num_traj_per_stimulus: 2", "num_traj_per_stimulus: 1000000000000"),
        {},
        "input.yml:11",
        "TARGET.num_traj_per_stimulus",
    ),
    "LoRA r 1e6": (
        YODA + "  model: {baked_adapter_config: {r: 1000000}}\n",
        {},
        "input.yml:19",
        "BAKE.model.baked_adapter_config.r",
    ),
    "LoRA r wider than tiny": (
        YODA + "  model: {baked_adapter_config: {r: 512}}\n",
        {},
        "input.yml:19",
        "BAKE.model.baked_adapter_config.r",
    ),
    "5 MB question from_file": (
        YODA.replace(
            '- type: hardcoded\n      questions: ["What is the capital of France?", "How do I make tea?"]',
            "- type: from_file\n      path: questions.txt",
        ),
        {"questions.txt": "x" * 5_000_000 + "\n"},
        "questions.txt:1",
        "question",
    ),
    "epochs 1e26": (YODA.replace("epochs: 2", "epochs: 1" + "0" * 26), {}, "input.yml:18", "BAKE.epochs"),
    "epochs true": (YODA.replace("epochs: 2", "epochs: true"), {}, "input.yml:18", "BAKE.epochs"),
    "weeks of work": (
        YODA.replace(
            '- type: hardcoded\n      questions: ["What is the capital of France?", "How do I make tea?"]',
            "- type: oneshot_qs\n      numq: 1000000",
        )
        .replace("num_traj_per_stimulus: 2", "num_traj_per_stimulus: 1000")
        .replace("epochs: 2", "epochs: 1000"),
        {},
        "input.yml:18",
        "BAKE.epochs",
    ),
    "string bomb": (
        YODA.replace("content: You are Yoda. Speak like Yoda.", f"content: &big {BOMB}").replace(
            '["What is the capital of France?", "How do I make tea?"]', "[" + ", ".join(["*big"] * 100) + "]"
        ),
        {},
        "input.yml:5",
        "`&big`",
    ),
}


@pytest.mark.parametrize("case", list(CANNOT_RUN))
def test_what_cannot_run_is_refused_by_validate_commit_and_run(case: str, model_repo: Path) -> None:
    """Each value used to pass `validate` and fail later in the job with a traceback, some only after
    questions and answers were generated. Now validate, status, the pre-commit hook (a real `git commit`)
    and `run` all refuse it, before any work, with exit 2 and the file, line and field."""
    import subprocess

    from helpers import bake_here

    text, files, where, what = CANNOT_RUN[case]
    (model_repo / "input.yml").write_text(text)
    for name, body in files.items():
        (model_repo / name).write_text(body)
    for cmd in ("validate", "status"):
        result = bake_here(model_repo, cmd)
        assert result.exit_code == 2 and where in result.stderr and what in result.stderr, (cmd, result.stderr)
        assert "Traceback" not in result.stderr
    git(model_repo, "add", "-A")
    head = git(model_repo, "rev-parse", "HEAD")
    out = subprocess.run(["git", "commit", "-q", "-m", case], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 1 and where in out.stderr and what in out.stderr and "Traceback" not in out.stderr, (
        out.stderr
    )
    assert git(model_repo, "rev-parse", "HEAD") == head  # the hook stopped it
    # committed anyway (the post-commit hook is off in tests): `run` refuses it before any stage starts
    git(model_repo, "commit", "-q", "--no-verify", "-m", case)
    for args in (["run"], ["run", "--detach"]):  # a background job is refused up front too, not in its log
        result = bake_here(model_repo, *args)
        assert result.exit_code == 2 and where in result.stderr and what in result.stderr, (args, result.stderr)
    assert not list((model_repo / ".git" / "bake").rglob("stim.jsonl"))
    assert not list((model_repo / ".git" / "bake").glob("jobs/*/job.json"))


def test_the_work_estimate_says_how_long(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(CANNOT_RUN["weeks of work"][0])
    result = invoke("validate")
    assert result.exit_code == 2
    assert (
        "the bake would train on about 3.2e+13 tokens (1,000,000,000 trajectories x 1,000 epochs x up to 32 tokens)"
        in result.stderr
    )
    assert (
        re.search(r"about [\d.,]+ (days|years) even on a large GPU", result.stderr)
        and "fix: lower epochs" in result.stderr
    )


def test_lora_rank_is_checked_against_a_model_directory_s_width(model_repo: Path) -> None:
    model = model_repo / "models" / "small"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps({"hidden_size": 64, "vocab_size": 100, "max_position_embeddings": 128})
    )
    b = bread.read(model_repo)
    assert b is not None
    b.set("REPO", "base_model", "./models/small")
    bread.write(model_repo, b)
    (model_repo / "input.yml").write_text(YODA + "  model: {baked_adapter_config: {r: 128}}\n")
    result = invoke("status")
    assert (
        result.exit_code == 2
        and "input.yml:19" in result.stderr
        and "hidden size 64" in result.stderr
        and "<= 64" in result.stderr
    )
    (model_repo / "input.yml").write_text(YODA + "  model: {baked_adapter_config: {r: 64}}\n")
    assert invoke("status").exit_code == 0


def test_tiny_shape_matches_the_engine() -> None:
    from gitbake.engine import tiny
    from gitbake.repo.limits import TINY_SHAPE

    assert TINY_SHAPE == {k: tiny.CONFIG[k] for k in TINY_SHAPE}


# ------------------------------------- a model validate could not measure is checked once loaded (review)

NOT_MEASURABLE = {
    "LoRA r wider than the model": (
        YODA + "  model: {baked_adapter_config: {r: 512}}\n",
        "input.yml:19",
        "BAKE.model.baked_adapter_config.r",
    ),
    "topk past the vocabulary": (YODA + "  data: {topk: 1000}\n", "input.yml:19", "BAKE.data.topk"),
    "max_tokens past the context": (
        YODA.replace("max_tokens: 32", "max_tokens: 4096"),
        "input.yml:12",
        "TARGET.max_tokens",
    ),
}


@pytest.mark.parametrize("case", list(NOT_MEASURABLE))
def test_run_checks_the_loaded_model_before_any_stage(
    case: str, model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub model not downloaded yet has no config.json here, so validate cannot check the values that
    depend on it; `run` used to go ahead and fail midway through the job. It now loads the model first and
    refuses, exit 2 with the line and field, before any stage runs."""
    from gitbake.repo import limits

    from helpers import bake_here

    monkeypatch.setattr(limits, "_model_config", lambda base_model, root: None)  # as a hub model not in the cache
    text, where, what = NOT_MEASURABLE[case]
    (model_repo / "input.yml").write_text(text)
    assert bake_here(model_repo, "validate").exit_code == 0  # nothing to measure it against yet
    git(model_repo, "commit", "-qam", case, "--no-verify")
    result = bake_here(model_repo, "run")
    assert result.exit_code == 2 and where in result.stderr and what in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list((model_repo / ".git" / "bake").rglob("stim.jsonl"))  # no stage did any work


def test_the_work_bound_uses_the_real_parameter_count_once_known(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the model's size the bound is 10^11 tokens: 3.2e10 passes, though it is years for 8B."""
    from gitbake.errors import ConfigError
    from gitbake.repo import limits
    from gitbake.repo.repo import open_repo

    monkeypatch.setattr(limits, "_model_config", lambda base_model, root: None)
    text = YODA.replace(
        '- type: hardcoded\n      questions: ["What is the capital of France?", "How do I make tea?"]',
        "- type: oneshot_qs\n      numq: 1000000",
    ).replace("epochs: 2", "epochs: 1000")
    (model_repo / "input.yml").write_text(text)
    assert invoke("validate").exit_code == 0
    repo = open_repo(model_repo)
    loaded = repo.load_input()
    plan = repo.plan(loaded)
    eight_b = limits.shape_from_config(
        {"hidden_size": 4096, "vocab_size": 128256, "max_position_embeddings": 8192}, 8_000_000_000
    )
    with pytest.raises(ConfigError) as err:
        limits.check(loaded, plan, model_repo, eight_b, None)
    assert "the bake would train on about 6.4e+10 tokens" in err.value.render() and "years" in err.value.render()


# ------------------------------------------------------- a prompt too long for the model (review)

LONG_PROMPT = YODA.replace("content: You are Yoda. Speak like Yoda.", "content: '" + "You are Yoda. " * 1500 + "'")


def test_a_prompt_longer_than_the_context_is_refused_by_validate_and_the_hook(model_repo: Path) -> None:
    """'You are Yoda. ' x 1500 is 21,000 tokens for tiny (byte-level, context 2,048): it used to pass, and
    `run` spent minutes on the rollout before failing with a hint to raise data.max_length."""
    import subprocess

    (model_repo / "input.yml").write_text(LONG_PROMPT)
    result = invoke("validate")
    assert result.exit_code == 2 and "input.yml:3" in result.stderr and "PROMPT.teacher.messages" in result.stderr, (
        result.stderr
    )
    assert (
        "21,000 tokens" in result.stderr
        and "context (2,048 tokens)" in result.stderr
        and "shorten the prompt" in result.stderr
    )
    git(model_repo, "add", "input.yml")
    out = subprocess.run(["git", "commit", "-qm", "long"], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 1 and "PROMPT.teacher.messages" in out.stderr


def test_a_prompt_that_leaves_no_room_in_data_max_length_is_refused(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(
        YODA.replace("content: You are Yoda. Speak like Yoda.", "content: " + "y" * 1100)
    )
    result = invoke("validate")
    assert (
        result.exit_code == 2
        and "PROMPT.teacher.messages" in result.stderr
        and "data.max_length 1,024" in result.stderr
    )
    assert "raise BAKE.data.max_length above 1,130" in result.stderr  # the prompt and the longest question
    (model_repo / "input.yml").write_text(
        YODA.replace("content: You are Yoda. Speak like Yoda.", "content: " + "y" * 1100)
        + "  data: {max_length: 1200}\n"
    )
    assert invoke("validate").exit_code == 0


def test_the_bake_names_a_too_long_prompt_as_the_cause() -> None:
    from gitbake.contract.config import Bake

    pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
    from gitbake.engine.bake import Baker, Trajectory
    from gitbake.engine.models import load
    from gitbake.errors import UsageError

    cfg = Bake.model_validate({"data": {"max_length": 16}})
    m = load("tiny")
    baker = Baker(m.model, m.tokenizer, cfg, "tiny")
    with pytest.raises(UsageError) as err:
        baker.train([Trajectory([1] * 40, [1] * 30, [5, 6], 0)], Path("unused"))
    assert "shortest prompt with its question is 40 tokens" in err.value.render()
    assert "shorten the prompt, or raise BAKE.data.max_length above 40" in err.value.render()
