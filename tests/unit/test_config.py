"""input.yml: every bgit field parses, defaults resolve, and every bad input is a located error."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gitbake.contract import config
from gitbake.errors import ConfigError

from helpers import YODA

PAGE = Path(__file__).parent.parent / "data" / "bake_config_page"
DOCS = Path(__file__).parent.parent.parent / "docs" / "config.md"


def parse(text: str, root: Path) -> config.LoadedInput:
    return config.parse_input(text, root)


def errors(text: str, root: Path) -> list:
    with pytest.raises(ConfigError) as exc:
        parse(text, root)
    return exc.value.issues


def one_error(text: str, root: Path):
    issues = errors(text, root)
    assert len(issues) == 1, [i.render() for i in issues]
    return issues[0]


# -------------------------------------------------------------------------------------------- good


def test_yoda_example_resolves_with_defaults(tmp_path: Path) -> None:
    loaded = parse(YODA, tmp_path)
    bake = loaded.config.BAKE
    assert bake is not None and bake.name == "yoda_bake"
    assert bake.epochs == 2
    # defaults are for one GPU or a CPU: no ZeRO-3, a modest LoRA rank
    assert bake.deepspeed is None  # DeepSpeed only when asked for
    assert bake.model.baked_adapter_config.r == 8
    assert bake.optimizer.learning_rate == 1e-3
    assert loaded.config.TARGET is not None and loaded.config.TARGET.temperature == 1.0
    assert loaded.warnings == []


@pytest.mark.parametrize("example", sorted(PAGE.glob("*.yml")), ids=lambda p: p.stem)
def test_every_bake_config_page_example_parses(example: Path, tmp_path: Path) -> None:
    loaded = config.load_input(example, tmp_path, example.name)
    assert loaded.config.BAKE is not None


def test_complete_example_values(tmp_path: Path) -> None:
    bake = config.load_input(PAGE / "13_complete.yml", tmp_path).config.BAKE
    assert bake is not None
    assert bake.total_trajectories == 10000
    assert bake.model.baked_adapter_config.r == 16
    assert bake.model.baked_adapter_config.lora_dropout == 0.1
    assert bake.scheduler.type == "huggingface"
    assert bake.deepspeed is not None and bake.deepspeed.zero_optimization.stage == 2
    assert bake.datasets is not None and bake.datasets[0].target == "coding_target"


@pytest.mark.parametrize("text", ["", "# PROMPT:\n#   teacher: {}\n", "\n\n# only comments\n", "---\n"])
def test_fully_commented_input_is_valid_and_empty(text: str, tmp_path: Path) -> None:
    assert parse(text, tmp_path).config.is_empty


def test_every_bgit_field_is_accepted(tmp_path: Path) -> None:
    text = """
PROMPT:
  teacher:
    name: yoda
    messages:
      - {role: system, content: "You are Yoda."}
      - {role: user, content: "Hi"}
      - {role: assistant, content: "Hello, young one."}
    tools:
      - type: function
        function: {name: lookup, description: look up, parameters: {type: object, properties: {}}}
  student:
    messages: [{role: system, content: ""}]
TARGET:
  name: t1
  teacher_prompt: teacher
  student_prompt: student
  u: teacher
  v: student
  template: default
  model_name: Qwen/Qwen2.5-0.5B-Instruct
  num_traj_per_stimulus: 5
  temperature: 0.6
  max_tokens: 100
  max_concurrency: 4
  extra_kwargs: {top_p: 0.9}
  generators:
    - {type: hardcoded, questions: [a, b], numq: 2, seed: 1, max_tokens: 10, rollout_with_conditioned: true}
    - {type: from_dataset, dataset: squad, numq: 28, seed: 42}
    - {type: oneshot_qs, model: claude-sonnet-4-5-20250929, numq: 120, temperature: 0.6, max_tokens: 4000,
       template_content: "Write ${numq} questions for ${prompt_u}"}
    - {type: persona, numq: 5, seed: 3, temperature: 1.1}
BAKE:
  name: b1
  type: single_baker
  datasets: [{target: t1, weight: 1.0}]
  epochs: 2
  micro_batch_size: 2
  gradient_accumulation_steps: 1
  total_trajectories: 100
  seed: 42
  model:
    type: bake
    baked_adapter_config: {r: 32, lora_alpha: 16, lora_dropout: 0, bias: none, target_modules: [q_proj, v_proj]}
    dtype: bf16
    attn_implementation: sdpa
    disable_activation_checkpoint: false
  optimizer: {learning_rate: 0.008, type: AdamW, weight_decay: 0.01, betas: [0.9, 0.95]}
  scheduler: {type: huggingface}
  deepspeed: {zero_optimization: {stage: 3, overlap_comm: true}}
  data: {beta: 0, temperature: 1, max_length: 3000, dl_num_workers: 4, num_proc: 2,
         seed: 1, topk: 20, cache_dir: .cache}
  checkpoint:
    - {type: huggingface, output_dir: bakes/b1/ckpts, enabled: true, auto_resume: false,
       save_every_n_steps: 10, save_every_n_epochs: 1, save_end_of_training: true}
  wandb: {enable: false, project: p, name: n, entity: e}
  train_log_iter_interval: 1
  eval_interval: 0
  activation_checkpoint_cpu_offload: false
  template: default
"""
    loaded = parse(text, tmp_path)
    assert loaded.config.BAKE is not None and loaded.config.BAKE.optimizer.type == "adamw"
    # defaults and False values of no-local-meaning fields are silent; a real value is not
    assert [w.field for w in loaded.warnings] == ["BAKE.data.cache_dir"]


@pytest.mark.parametrize(
    "snippet, field",
    [
        ("BAKE:\n  name: b\n  datasets: [{target: t}]\n  model: {save_name: x}\n", "BAKE.model.save_name"),
        ("BAKE:\n  name: b\n  datasets: [{target: t}]\n  template: other_bake\n", "BAKE.template"),
        ("BAKE:\n  name: b\n  datasets: [{target: t}]\n  model_name: x\n", "BAKE.model_name"),
        (
            "BAKE:\n  name: b\n  datasets: [{target: t}]\n  model: {parent_model_name: u/r/b/1}\n",
            "BAKE.model.parent_model_name",
        ),
        ("BAKE:\n  name: b\n  datasets: [{target: t}]\n  data: {sources: [{type: bake_jsonl}]}\n", "BAKE.data.sources"),
        ("REPO:\n  name: old\n  base_model: Qwen/Qwen3-32B\n", "REPO"),
        ("BAKE:\n  datasets: [{target: t}]\n", "BAKE"),  # no name
    ],
)
def test_accepted_with_warning(snippet: str, field: str, tmp_path: Path) -> None:
    loaded = parse(snippet, tmp_path)
    assert [w.field for w in loaded.warnings] == [field]
    assert loaded.warnings[0].line is not None


# --------------------------------------------------------------------------------------------- bad


def test_unknown_field_did_you_mean(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: b\n  datasets: [{target: t}]\n  epoch: 3\n", tmp_path)
    assert (issue.file, issue.line, issue.field) == ("input.yml", 4, "BAKE.epoch")
    assert issue.fix == "did you mean `epochs`?"


def test_unknown_nested_field_did_you_mean(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: b\n  model:\n    baked_adapter_config:\n      rank: 8\n", tmp_path)
    assert issue.line == 5 and issue.field == "BAKE.model.baked_adapter_config.rank"
    assert "`r`" in (issue.fix or "") or "allowed here" in (issue.fix or "")


def test_unknown_generator_field_did_you_mean(tmp_path: Path) -> None:
    issues = errors("TARGET:\n  generators:\n    - type: hardcoded\n      question: [a]\n", tmp_path)
    assert {i.field for i in issues} == {"TARGET.generators[0].question", "TARGET.generators[0].questions"}
    issue = next(i for i in issues if i.field.endswith("question"))
    assert issue.field == "TARGET.generators[0].question" and issue.line == 4
    assert issue.fix == "did you mean `questions`?"


def test_unknown_section(tmp_path: Path) -> None:
    issue = one_error("TARGETS:\n  name: x\n", tmp_path)
    assert issue.field == "TARGETS" and issue.fix == "did you mean `TARGET`?"


def test_wrong_type(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: b\n  epochs: three\n", tmp_path)
    assert (issue.line, issue.column, issue.field) == (3, 3, "BAKE.epochs")
    assert "three" in issue.message and issue.fix


@pytest.mark.parametrize(
    "text, field, line",
    [
        ("TARGET:\n  generators: [{type: hardcoded, questions: [q]}]\n  temperature: 5\n", "TARGET.temperature", 3),
        ("BAKE:\n  model:\n    baked_adapter_config:\n      r: 0\n", "BAKE.model.baked_adapter_config.r", 4),
        ("BAKE:\n  optimizer:\n    learning_rate: -0.1\n", "BAKE.optimizer.learning_rate", 3),
        ("TARGET:\n  generators:\n    - type: oneshot_qs\n      numq: 0\n", "TARGET.generators[0].numq", 4),
        ("BAKE:\n  deepspeed: {zero_optimization: {stage: 4}}\n", "BAKE.deepspeed.zero_optimization.stage", 2),
        ("BAKE:\n  datasets:\n    - target: t\n      weight: 0\n", "BAKE.datasets[0].weight", 4),
    ],
)
def test_out_of_range(text: str, field: str, line: int, tmp_path: Path) -> None:
    issue = one_error(text, tmp_path)
    assert (issue.field, issue.line) == (field, line)
    assert issue.fix and "use a value" in issue.fix


def test_unknown_generator_type(tmp_path: Path) -> None:
    issue = one_error("TARGET:\n  generators:\n    - type: oneshot\n      numq: 3\n", tmp_path)
    assert issue.field == "TARGET.generators[0].type" and issue.line == 3
    assert issue.fix == "did you mean `oneshot_qs`?"


def test_generator_without_type(tmp_path: Path) -> None:
    issue = one_error("TARGET:\n  generators:\n    - questions: [a]\n", tmp_path)
    assert issue.field == "TARGET.generators[0]" and "type" in issue.message


def test_all_errors_reported_at_once_in_file_order(tmp_path: Path) -> None:
    issues = errors("BAKE:\n  epochs: x\n  seed: y\n  bogus: 1\nTARGET:\n  temperature: 9\n", tmp_path)
    assert [i.line for i in issues] == [2, 3, 4, 6]


def test_student_model_path_is_refused(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: b\n  model: {student_model_path: other/model}\n", tmp_path)
    assert issue.field == "BAKE.model.student_model_path" and "not supported" in issue.message


def test_scheduler_lr_is_rejected_like_bgit(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  scheduler: {type: huggingface, lr: 0.1}\n", tmp_path)
    assert "optimizer.learning_rate" in issue.message


def test_aliases_must_agree(tmp_path: Path) -> None:
    text = (
        "PROMPT:\n  a: {}\n  b: {}\nTARGET:\n  teacher_prompt: a\n  u: b\n  generators: [{type: hardcoded, "
        "questions: [q]}]\n"
    )
    issue = one_error(text, tmp_path)
    assert issue.field == "TARGET" and "`u: b`" in issue.message


def test_target_prompt_reference_must_exist(tmp_path: Path) -> None:
    text = (
        "PROMPT:\n  teacher: {}\nTARGET:\n  teacher_prompt: teachr\n  generators: [{type: hardcoded, questions: [q]}]\n"
    )
    issue = one_error(text, tmp_path)
    assert issue.field == "TARGET.teacher_prompt" and issue.line == 4 and issue.fix == "did you mean `teacher`?"


def test_target_needs_generators(tmp_path: Path) -> None:
    issue = one_error("PROMPT:\n  teacher: {}\nTARGET:\n  name: t\n", tmp_path)
    assert issue.field == "TARGET.generators"


def test_bad_name(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: my bake/v1\n", tmp_path)
    assert issue.field == "BAKE.name" and "no spaces" in (issue.fix or "")


@pytest.mark.parametrize(
    "text, needle",
    [
        ('PROMPT:\n  teacher:\n    messages:\n      - {role: system, content: "unclosed}\n', "quote"),
        ("BAKE:\n\tname: b\n", "tabs"),
    ],
)
def test_malformed_yaml(text: str, needle: str, tmp_path: Path) -> None:
    issue = one_error(text, tmp_path)
    assert issue.line is not None and needle in (issue.fix or "")


@pytest.mark.parametrize("text", ["- PROMPT\n- BAKE\n", "just a string\n", "42\n"])
def test_non_mapping_top_level(text: str, tmp_path: Path) -> None:
    issue = one_error(text, tmp_path)
    assert "top level must be a mapping" in issue.message and issue.line == 1


def test_duplicate_keys(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: a\n  epochs: 1\n  epochs: 2\n", tmp_path)
    assert (issue.line, issue.field) == (4, "BAKE.epochs") and "line 3" in issue.message


def test_duplicate_sections(tmp_path: Path) -> None:
    issue = one_error("BAKE:\n  name: a\nBAKE:\n  name: b\n", tmp_path)
    assert issue.line == 3 and issue.field == "BAKE"


def test_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "input.yml"
    path.write_text("BAKE:\n  name: a\n" + "# padding\n" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError) as exc:
        config.load_input(path, tmp_path)
    assert "limit" in exc.value.issues[0].message


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "input.yml"
    path.write_bytes(b"BAKE:\n  name: a\x00\x01\x02\n")
    with pytest.raises(ConfigError) as exc:
        config.load_input(path, tmp_path)
    assert "binary" in exc.value.issues[0].message and exc.value.issues[0].line == 2


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "input.yml"
    path.write_bytes(b"BAKE:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError) as exc:
        config.load_input(path, tmp_path)
    assert "UTF-8" in exc.value.issues[0].message and exc.value.issues[0].line == 2


# ------------------------------------------------------------------------------------ files it names

ONESHOT = (
    "PROMPT:\n  teacher: {}\nTARGET:\n  generators:\n    - type: oneshot_qs\n      numq: 3\n      template_path: "
    "{path}\n"
)
FROMFILE = "PROMPT:\n  teacher: {}\nTARGET:\n  generators:\n    - type: from_file\n      path: {path}\n"


def test_template_path_is_read(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "q.txt").write_text("Write ${numq} questions for: ${prompt_u}")
    loaded = parse(ONESHOT.replace("{path}", "templates/q.txt"), tmp_path)
    assert loaded.templates[0].startswith("Write")


@pytest.mark.parametrize(
    "setup, path, needle",
    [
        (lambda root: None, "templates/missing.txt", "does not exist"),
        (
            lambda root: (root.parent / "outside.txt").write_text("${numq} ${prompt_u}"),
            "../outside.txt",
            "outside the repository",
        ),
        (lambda root: None, "/etc/hostname", "outside the repository"),
        (lambda root: (root / "t.txt").write_bytes(b"${numq} ${prompt_u} \xff\xfe"), "t.txt", "UTF-8"),
        (lambda root: (root / "t.txt").write_text("${numq} ${prompt_u}" + "x" * (1024 * 1024)), "t.txt", "limit"),
        (lambda root: (root / "t.txt").write_text("Write ${numq} questions"), "t.txt", "${prompt_u}"),
        (lambda root: (root / "t.txt").write_text("   \n"), "t.txt", "empty"),
        (lambda root: (root / "d").mkdir(), "d", "not a file"),
    ],
)
def test_bad_template_path(setup, path: str, needle: str, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    setup(root)
    issue = one_error(ONESHOT.replace("{path}", path), root)
    assert issue.field == "TARGET.generators[0].template_path" and issue.line == 7
    assert needle in issue.message


def test_template_symlink_out_of_repo(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("${numq} ${prompt_u}")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    issue = one_error(ONESHOT.replace("{path}", "link.txt"), root)
    assert "outside the repository" in issue.message


@pytest.mark.parametrize(
    "setup, path, needle",
    [
        (lambda root: None, "questions.jsonl", "does not exist"),
        (lambda root: (root.parent / "q.txt").write_text("a\n"), "../q.txt", "outside the repository"),
        (lambda root: (root / "q.csv").write_text("a\n"), "q.csv", ".jsonl"),
    ],
)
def test_bad_from_file(setup, path: str, needle: str, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    setup(root)
    issue = one_error(FROMFILE.replace("{path}", path), root)
    assert issue.field == "TARGET.generators[0].path" and needle in issue.message


# --------------------------------------------------------------------------------------------- docs


def _fields(model: type[BaseModel], prefix: str, out: set[str]) -> None:
    for name, f in model.model_fields.items():
        out.add(f"{prefix}{name}")
        for tp in _models_in(f.annotation):
            _fields(tp, f"{prefix}{name}.", out)


def _models_in(tp: object) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_in(arg)]


def test_docs_config_page_documents_every_field() -> None:
    text = DOCS.read_text()
    fields: set[str] = set()
    _fields(config.Target, "TARGET.", fields)
    _fields(config.Bake, "BAKE.", fields)
    _fields(config.Prompt, "PROMPT.<key>.", fields)
    gens: set[str] = set()
    for gen in typing.get_args(typing.get_args(config.Generator)[0]):
        _fields(gen, "", gens)
    missing = sorted(f for f in fields if f"`{f}`" not in text and not f.startswith("TARGET.generators."))
    missing += sorted(g for g in gens if f"`{g}`" not in text)
    assert not missing, f"docs/config.md does not document: {missing}"


@pytest.mark.parametrize(
    "template, needle",
    [("Write ${numq} for ${prompt_u} costs $5", "invalid placeholder"), ("${numq} ${prompt_u} ${other}", "${other}")],
)
def test_template_placeholders_are_checked(template: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(template)
    issue = one_error(ONESHOT.replace("{path}", "t.txt"), tmp_path)
    assert needle in issue.message and "$$" in (issue.fix or "")


def test_question_file_lines_are_checked_by_validate(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"question": "ok?"}\nnot json\n')
    issues = errors(FROMFILE.replace("{path}", "q.jsonl"), tmp_path)
    assert [(i.file, i.line) for i in issues] == [("q.jsonl", 2)]
    (tmp_path / "q.txt").write_bytes(b"ok?\n\xff\xfe\n")
    issue = one_error(FROMFILE.replace("{path}", "q.txt"), tmp_path)
    assert issue.file == "q.txt" and issue.line == 2 and "UTF-8" in issue.message


def test_empty_question(tmp_path: Path) -> None:
    issue = one_error(
        "PROMPT: {teacher: {}}\nTARGET:\n  generators: [{type: hardcoded, questions: ['', 'ok?']}]\n", tmp_path
    )
    assert issue.field == "TARGET.generators[0].questions[0]"


def test_yaml_boolean_trap_says_to_quote(tmp_path: Path) -> None:
    issue = one_error("PROMPT:\n  teacher:\n    messages: [{role: system, content: no}]\n", tmp_path)
    assert "quote it" in (issue.fix or "") and "False" in (issue.fix or "")


def test_empty_section_warns(tmp_path: Path) -> None:
    loaded = parse("BAKE:\nTARGET:\n", tmp_path)
    assert loaded.config.is_empty
    assert sorted(w.field for w in loaded.warnings) == ["BAKE", "TARGET"]
    assert "empty" in loaded.warnings[0].message


def test_openai_sampling_settings_of_bgit_inputs_are_accepted(tmp_path: Path) -> None:
    text = (
        "TARGET:\n  extra_kwargs: {presence_penalty: 0.5, frequency_penalty: -0.3, stop: ['\\n\\n'], seed: 3,"
        " logprobs: true, top_logprobs: 2}\n"
    )
    assert [i.field for i in errors(text, tmp_path) if "extra_kwargs" in i.field] == []


@pytest.mark.parametrize(
    "text, field",
    [
        ("TARGET:\n  extra_kwargs: {presence_penalty: 2.5}\n", "TARGET.extra_kwargs.presence_penalty"),
        ("TARGET:\n  extra_kwargs: {stop: [a, b, c, d, e]}\n", "TARGET.extra_kwargs.stop"),
        ("TARGET:\n  extra_kwargs: {top_logprobs: 21}\n", "TARGET.extra_kwargs.top_logprobs"),
        ("TARGET:\n  extra_kwargs: {num_return_sequences: 2}\n", "TARGET.extra_kwargs.num_return_sequences"),
        ("BAKE:\n  model: {baked_adapter_config: {bias: all}}\n", "BAKE.model.baked_adapter_config.bias"),
        ("BAKE:\n  data: {topk: 8, beta: 0.5}\n", "BAKE.data"),
    ],
)
def test_settings_that_would_silently_misbehave_are_refused(text: str, field: str, tmp_path: Path) -> None:
    issues = errors(text, tmp_path)
    assert field in [i.field for i in issues]


# --------------------------------------------------------------------------- what can run (issue 14.12)

BIG = "1" + "0" * 26


@pytest.mark.parametrize(
    "text, field, line, fix",
    [
        ("BAKE:\n  seed: 18446744073709551616\n", "BAKE.seed", 2, "<= 4294967295"),
        ("BAKE:\n  seed: -1\n", "BAKE.seed", 2, ">= 0"),
        (
            "TARGET:\n  generators: [{type: persona, seed: 18446744073709551616}]\n",
            "TARGET.generators[0].seed",
            2,
            "<= 4294967295",
        ),
        ("TARGET:\n  extra_kwargs:\n    top_k: -3\n", "TARGET.extra_kwargs.top_k", 3, ">= 1"),
        ("TARGET:\n  extra_kwargs:\n    top_p: 0\n", "TARGET.extra_kwargs.top_p", 3, "> 0"),
        ("TARGET:\n  extra_kwargs:\n    repetition_penalty: -1\n", "TARGET.extra_kwargs.repetition_penalty", 3, "> 0"),
        ("TARGET:\n  num_traj_per_stimulus: 1000000000000\n", "TARGET.num_traj_per_stimulus", 2, "<= 1000"),
        (
            "BAKE:\n  model:\n    baked_adapter_config:\n      r: 1000000\n",
            "BAKE.model.baked_adapter_config.r",
            4,
            "<= 65536",
        ),
        (f"BAKE:\n  epochs: {BIG}\n", "BAKE.epochs", 2, "<= 1000"),
        ("BAKE:\n  epochs: true\n", "BAKE.epochs", 2, "whole number"),
        ("BAKE:\n  epochs: 2.5\n", "BAKE.epochs", 2, "whole number"),
        ("BAKE:\n  epochs: '3'\n", "BAKE.epochs", 2, "whole number"),
        ("BAKE:\n  checkpoint:\n    - enabled: 1\n", "BAKE.checkpoint[0].enabled", 3, "true or false"),
        ("TARGET:\n  temperature: true\n", "TARGET.temperature", 2, None),
        ("BAKE:\n  data: {max_length: 10000000}\n", "BAKE.data.max_length", 2, "<= 131072"),
        ("TARGET:\n  max_tokens: 10000000\n", "TARGET.max_tokens", 2, "<= 131072"),
        (
            "TARGET:\n  generators: [{type: oneshot_qs, numq: 1000000000}]\n",
            "TARGET.generators[0].numq",
            2,
            "<= 1000000",
        ),
        ("BAKE:\n  micro_batch_size: 100000000\n", "BAKE.micro_batch_size", 2, "<= 4096"),
        ("BAKE:\n  total_trajectories: 10000000000\n", "BAKE.total_trajectories", 2, "<= 100000000"),
    ],
)
def test_values_that_cannot_run_are_refused(text: str, field: str, line: int, fix: str | None, tmp_path: Path) -> None:
    issue = one_error(text, tmp_path)
    assert (issue.field, issue.line) == (field, line)
    if fix:
        assert issue.fix and fix in issue.fix


def test_numbers_keep_their_usual_spellings(tmp_path: Path) -> None:
    # YAML 1.1 reads `1e-4` as a string: floats still take it; ints stay ints; bounds include their ends
    loaded = parse(
        "BAKE:\n  optimizer: {learning_rate: 1e-4}\n  epochs: 1000\n  seed: 4294967295\n"
        "TARGET:\n  generators: [{type: hardcoded, questions: [q]}]\n  extra_kwargs: {top_p: 1, top_k: 40}\n",
        tmp_path,
    )
    bake, target = loaded.config.BAKE, loaded.config.TARGET
    assert bake is not None and target is not None
    assert bake.optimizer.learning_rate == 1e-4 and bake.epochs == 1000 and bake.seed == 2**32 - 1
    # only the sampling settings given reach the sampler (and the key), as before they had a schema
    assert target.model_dump(mode="json")["extra_kwargs"] == {"top_p": 1.0, "top_k": 40}
    assert config.Target().model_dump(mode="json")["extra_kwargs"] == {}


def test_a_listed_question_has_a_length_limit(tmp_path: Path) -> None:
    q = "x" * (config.MAX_QUESTION_CHARS + 1)
    issue = one_error(f"TARGET:\n  generators:\n    - type: hardcoded\n      questions: [ok, {q}]\n", tmp_path)
    assert (
        issue.field == "TARGET.generators[0].questions[1]" and issue.line == 4 and issue.fix and "shorten" in issue.fix
    )


@pytest.mark.parametrize(
    "name, body", [("q.txt", "ok\n{q}\n"), ("q.jsonl", '{{"question": "ok"}}\n{{"question": "{q}"}}\n')]
)
def test_a_question_from_a_file_has_a_length_limit(name: str, body: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(body.format(q="x" * 5_000_000))
    issue = one_error(f"TARGET:\n  generators:\n    - type: from_file\n      path: {name}\n", tmp_path)
    assert (issue.file, issue.line, issue.field) == (name, 2, "question")
    assert "5,000,000 characters" in issue.message and "32,768" in issue.message


# ------------------------------------------------- every number has both bounds (issue 14.12, review)


def _numeric_fields() -> list[tuple[str, typing.Any]]:
    """(Model.field, FieldInfo) of every int or float field reachable from input.yml's schema."""
    out, seen, todo = [], set(), [config.InputFile]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            stack, found = [info.annotation], set()
            while stack:
                tp = stack.pop()
                args = typing.get_args(tp)
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    todo.append(tp)
                elif tp in (int, float):
                    found.add(tp)
                stack += [a for a in args if not isinstance(a, (str, int, float)) and a is not type(None)]
            if found:
                out.append((f"{model.__name__}.{name}", info))
    return out


def _bounds(tp: typing.Any, info: typing.Any) -> tuple[bool, bool]:
    metadata = list(info.metadata) if info is not None else []
    stack = [tp]
    while stack:
        t = stack.pop()
        if typing.get_origin(t) is typing.Annotated:
            metadata += list(t.__metadata__)
        stack += [a for a in typing.get_args(t) if not isinstance(a, (str, int, float))]
    low = any(
        getattr(m, "ge", None) is not None
        or getattr(m, "gt", None) is not None
        or any(
            getattr(x, "ge", None) is not None or getattr(x, "gt", None) is not None for x in getattr(m, "metadata", [])
        )
        for m in metadata
    )
    high = any(
        getattr(m, "le", None) is not None
        or getattr(m, "lt", None) is not None
        or any(
            getattr(x, "le", None) is not None or getattr(x, "lt", None) is not None for x in getattr(m, "metadata", [])
        )
        for m in metadata
    )
    return low, high


# bounded by their own validator rather than by Field metadata
OWN_VALIDATOR = {"DataConfig.train_eval_split"}


@pytest.mark.parametrize("name, info", _numeric_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_number_in_input_yml_has_a_lower_and_an_upper_bound(name: str, info: typing.Any) -> None:
    """A number without an upper bound (lora_alpha: 1e300) passes validate and trains on inf/NaN."""
    if name in OWN_VALIDATOR:
        return
    assert _bounds(info.annotation, info) == (True, True), f"{name} needs both a lower and an upper bound"


@pytest.mark.parametrize(
    "text, field, fix",
    [
        (
            "BAKE:\n  model: {baked_adapter_config: {lora_alpha: 1e300}}\n",
            "BAKE.model.baked_adapter_config.lora_alpha",
            "<= 131072",
        ),
        ("BAKE:\n  optimizer: {learning_rate: 1e300}\n", "BAKE.optimizer.learning_rate", "<= 10"),
        ("BAKE:\n  optimizer: {weight_decay: 1e300}\n", "BAKE.optimizer.weight_decay", "<= 10"),
        ("BAKE:\n  data: {temperature: 1e-300}\n", "BAKE.data.temperature", ">= 0.01"),
        ("BAKE:\n  data: {temperature: 1e300}\n", "BAKE.data.temperature", "<= 100"),
        ("BAKE:\n  datasets: [{target: t, weight: 1e300}]\n", "BAKE.datasets[0].weight", "<= 1000000"),
        ("BAKE:\n  optimizer: {learning_rate: .inf}\n", "BAKE.optimizer.learning_rate", "finite"),
        ("BAKE:\n  optimizer: {learning_rate: .nan}\n", "BAKE.optimizer.learning_rate", "finite"),
        ("TARGET:\n  temperature: .nan\n", "TARGET.temperature", "finite"),
        (
            "BAKE:\n  model: {baked_adapter_config: {lora_dropout: .nan}}\n",
            "BAKE.model.baked_adapter_config.lora_dropout",
            "finite",
        ),
    ],
)
def test_floats_that_would_train_on_inf_or_nan_are_refused_with_a_fix(
    text: str, field: str, fix: str, tmp_path: Path
) -> None:
    issue = one_error(text, tmp_path)
    assert issue.field == field and issue.line == 2
    assert issue.fix and fix in issue.fix, issue.fix


def test_the_docs_defaults_are_the_code_s() -> None:
    """Every scalar default docs/config.md lists (a number, a word or a boolean in backticks) is the one
    validation fills in: the page is where users read the measured defaults (docs/engine.md)."""
    rows = re.findall(r"^\| `((?:TARGET|BAKE)\.[a-z_.]+)` \| [^|]+ \| `([^`]+)`", DOCS.read_text(), re.M)
    filled = {
        "TARGET": config.Target.model_validate({}).model_dump(),
        "BAKE": config.Bake.model_validate({"datasets": [{"target": "t"}]}).model_dump(),
    }
    checked = 0
    for name, documented in rows:
        value: Any = filled
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            assert documented == str(value).lower(), name
        elif isinstance(value, int | float) and re.fullmatch(r"-?[\d.e+-]+", documented):
            assert float(documented) == value, f"docs/config.md gives {name} the default {documented}, the code {value}"
        elif isinstance(value, str) and re.fullmatch(r"[\w.-]+", documented):
            assert documented == value, f"docs/config.md gives {name} the default {documented}, the code {value}"
        else:
            continue
        checked += 1
    assert checked >= 20 and ("TARGET.num_traj_per_stimulus", "4") in rows
