"""Keys: what does not change a result never changes a key; everything that does, does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitbake.contract import config, keys
from gitbake.repo.plan import Plan, build

DOCS = Path(__file__).parent.parent.parent / "docs" / "config.md"

BASE: dict[str, Any] = {
    "PROMPT": {"teacher": {"messages": [{"role": "system", "content": "You are Yoda."}]}},
    "TARGET": {
        "name": "t",
        "generators": [
            {"type": "hardcoded", "questions": ["a?", "b?"]},
            {"type": "from_dataset", "dataset": "squad", "numq": 5, "seed": 1},
        ],
        "num_traj_per_stimulus": 2,
        "temperature": 1.0,
    },
    "BAKE": {"name": "b", "datasets": [{"target": "t", "weight": 1.0}], "epochs": 2},
}


def plan_of(data: dict[str, Any], root: Path, text: str | None = None) -> Plan:
    loaded = config.parse_input(text if text is not None else yaml.safe_dump(data), root)
    return build(loaded, root, None, None)


def all_keys(p: Plan) -> tuple[str, ...]:
    assert p.target and p.bake
    return (p.prompts["teacher"].key, p.target.stim_key, p.target.key, p.bake.key)


def test_canonical_json_is_order_and_whitespace_free() -> None:
    assert keys.canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'.encode()


def test_display_name_and_split() -> None:
    k = keys.key_of({"x": 1})
    assert keys.display_name("yoda", k) == f"yoda_{k[:12]}"
    assert keys.split_name(f"yoda_{k[:12]}") == ("yoda", k[:12])
    assert keys.split_name("metacognitive_thinking_v1_0.01_372f9448560bf8b1") == (
        "metacognitive_thinking_v1_0.01",
        "372f9448560bf8b1",
    )
    assert keys.split_name("plain") is None


def _reorder(obj: Any, rnd: st.DataObject) -> Any:
    if isinstance(obj, dict):
        items = list(obj.items())
        items = rnd.draw(st.permutations(items))
        return {k: _reorder(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [_reorder(v, rnd) for v in obj]
    return obj


@settings(max_examples=25, deadline=None)
@given(st.data(), st.sampled_from(["block", "flow"]), st.integers(0, 3))
def test_key_order_style_and_comments_do_not_change_keys(
    tmp_path_factory: Any, data: st.DataObject, style: str, comments: int
) -> None:
    root = tmp_path_factory.mktemp("k")
    reference = all_keys(plan_of(BASE, root))
    shuffled = _reorder(BASE, data)
    # generator order does not matter either
    shuffled["TARGET"]["generators"] = data.draw(st.permutations(shuffled["TARGET"]["generators"]))
    text = yaml.safe_dump(
        shuffled,
        sort_keys=False,
        default_flow_style=(style == "flow"),
        indent=data.draw(st.sampled_from([2, 4])),
        width=10**9,
    )  # no folded scalar: a comment line may go between any two lines
    lines = text.splitlines()
    for i in range(comments):
        lines.insert(min(len(lines), i * 3), "# a comment")
    text = "\n".join(lines) + "\n\n"
    assert all_keys(plan_of({}, root, text)) == reference


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(d)
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {}) if not p.isdigit() else node[int(p)]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


CHANGES_RESULT = [
    ("PROMPT.teacher.messages", [{"role": "system", "content": "You are a pirate."}], "prompt"),
    ("PROMPT.teacher.tools", [{"type": "function", "function": {"name": "f"}}], "prompt"),
    ("TARGET.generators.0.questions", ["c?"], "stim"),
    ("TARGET.generators.1.seed", 2, "stim"),
    ("TARGET.generators.1.numq", 6, "stim"),
    ("TARGET.heldout_fraction", 0.2, "stim"),
    ("TARGET.num_traj_per_stimulus", 3, "rollout"),
    ("TARGET.max_concurrency", 3, "rollout"),
    ("PROMPT.student", {"messages": [{"role": "system", "content": "trigger"}]}, "stim"),
    ("TARGET.temperature", 0.7, "rollout"),
    ("TARGET.max_tokens", 64, "rollout"),
    ("TARGET.extra_kwargs", {"top_p": 0.9}, "rollout"),
    ("TARGET.model_name", "someone/else", "rollout"),
    ("BAKE.epochs", 3, "bake"),
    ("BAKE.micro_batch_size", 2, "bake"),
    ("BAKE.gradient_accumulation_steps", 2, "bake"),
    ("BAKE.total_trajectories", 7, "bake"),
    ("BAKE.seed", 1, "bake"),
    ("BAKE.datasets.0.weight", 2.0, "bake"),
    ("BAKE.model.baked_adapter_config.r", 16, "bake"),
    ("BAKE.model.baked_adapter_config.lora_alpha", 8, "bake"),
    ("BAKE.model.baked_adapter_config.lora_dropout", 0.1, "bake"),
    ("BAKE.model.baked_adapter_config.target_modules", ["q_proj"], "bake"),
    ("BAKE.model.dtype", "fp32", "bake"),
    ("BAKE.model.attn_implementation", "eager", "bake"),
    ("BAKE.optimizer.learning_rate", 0.01, "bake"),
    ("BAKE.optimizer.type", "sgd", "bake"),
    ("BAKE.optimizer.weight_decay", 0.1, "bake"),
    ("BAKE.optimizer.betas", [0.9, 0.95], "bake"),
    ("BAKE.scheduler.name", "cosine", "bake"),
    ("BAKE.scheduler.warmup_ratio", 0.1, "bake"),
    ("BAKE.scheduler.warmup_steps", 3, "bake"),
    ("BAKE.data.max_length", 512, "bake"),
    ("BAKE.data.topk", 20, "bake"),
    ("BAKE.data.temperature", 2.0, "bake"),
    ("BAKE.data.seed", 5, "bake"),
    ("BAKE.deepspeed", {"gradient_clipping": 1.0}, "bake"),
    ("BAKE.deepspeed", {"bf16": {"enabled": True}}, "bake"),
]
ORDER = ["prompt", "stim", "rollout", "bake"]


@pytest.mark.parametrize("change", CHANGES_RESULT, ids=lambda c: c[0])
def test_every_field_that_changes_the_result_changes_its_key(tmp_path: Path, change: tuple[str, Any, str]) -> None:
    root = tmp_path
    path, value, first = change
    before = all_keys(plan_of(BASE, root))
    after = all_keys(plan_of(_set(BASE, path, value), root))
    i = ORDER.index(first)
    # the stage it belongs to and every stage downstream change; upstream ones do not
    assert before[:i] == after[:i], path
    assert all(b != a for b, a in zip(before[i:], after[i:])), path


NOT_IN_KEY = [
    ("TARGET.name", "renamed"),
    ("BAKE.data.train_eval_split", [0.9, 0.1]),
    ("BAKE.name", "other"),
    ("BAKE.wandb", {"enable": False, "project": "p"}),
    ("BAKE.checkpoint", [{"save_every_n_steps": 5}]),
    ("BAKE.train_log_iter_interval", 10),
    ("BAKE.eval_interval", 5),
    ("TARGET.generators.0.numq", 7),
    ("BAKE.data.dl_num_workers", 8),
    ("BAKE.data.num_proc", 4),
    ("BAKE.model.disable_activation_checkpoint", True),
    ("PROMPT.teacher.name", "yoda"),
]


@pytest.mark.parametrize("change", NOT_IN_KEY, ids=lambda c: c[0])
def test_fields_that_cannot_change_the_result_leave_keys_alone(tmp_path: Path, change: tuple[str, Any]) -> None:
    root = tmp_path
    path, value = change
    data = _set(BASE, path, value)
    if path == "TARGET.name":
        data["BAKE"]["datasets"][0]["target"] = value
    assert all_keys(plan_of(BASE, root)) == all_keys(plan_of(data, root))


def test_template_contents_change_the_stim_key(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("Write ${numq} questions about ${prompt_u}")
    data = _set(BASE, "TARGET.generators", [{"type": "oneshot_qs", "numq": 3, "template_path": "q.txt"}])
    before = plan_of(data, tmp_path)
    (tmp_path / "q.txt").write_text("Write ${numq} hard questions about ${prompt_u}")
    after = plan_of(data, tmp_path)
    assert before.target and after.target and before.target.stim_key != after.target.stim_key
    # moving the file without changing it keeps the key: the contents count, not the path
    (tmp_path / "q.txt").rename(tmp_path / "moved.txt")
    moved = plan_of(_set(data, "TARGET.generators.0.template_path", "moved.txt"), tmp_path)
    assert moved.target and moved.target.stim_key == after.target.stim_key


def test_question_file_contents_change_the_stim_key(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("a?\nb?\n")
    data = _set(BASE, "TARGET.generators", [{"type": "from_file", "path": "q.txt"}])
    before = plan_of(data, tmp_path)
    (tmp_path / "q.txt").write_text("a?\nc?\n")
    after = plan_of(data, tmp_path)
    assert before.target and after.target and before.target.stim_key != after.target.stim_key


def test_parent_model_changes_the_bake_key_and_local_rollouts(tmp_path: Path) -> None:
    from gitbake.contract.bread import Bread

    loaded = config.parse_input(yaml.safe_dump(BASE), tmp_path)
    base = build(loaded, tmp_path, None, None)
    b = Bread()
    b.set("REPO", "base_model", "tiny")
    b.set("PARENT_MODEL", "adapters", '["' + "a" * 64 + '"]')
    on_parent = build(loaded, tmp_path, b, None)
    assert base.bake and on_parent.bake and base.bake.key != on_parent.bake.key
    # the rollout model defaults to the parent: the teacher's answers change with it
    assert base.target and on_parent.target and base.target.key != on_parent.target.key
    # but the questions of a hardcoded/from_dataset target do not depend on any model
    assert base.target.stim_key == on_parent.target.stim_key


def test_oneshot_questions_depend_on_the_model_that_writes_them(tmp_path: Path) -> None:
    from gitbake.contract.bread import Bread

    data = _set(
        BASE, "TARGET.generators", [{"type": "oneshot_qs", "numq": 3, "template_content": "${numq} ${prompt_u}"}]
    )
    loaded = config.parse_input(yaml.safe_dump(data), tmp_path)
    b = Bread()
    b.set("PARENT_MODEL", "adapters", '["' + "b" * 64 + '"]')
    one, two = build(loaded, tmp_path, None, None), build(loaded, tmp_path, b, None)
    assert one.target and two.target and one.target.stim_key != two.target.stim_key


def test_local_directory_identity_hashes_its_files(tmp_path: Path) -> None:
    from gitbake.contract import identity

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    first = identity.base_identity(str(model))
    (model / "config.json").write_text('{"a": 1}')
    assert identity.base_identity(str(model)) != first
    assert identity.base_identity(str(model))["kind"] == "dir"


def test_hub_identity_uses_the_local_cache_revision(tmp_path: Path, monkeypatch: Any) -> None:
    from gitbake.contract import identity

    cache = tmp_path / "hub"
    refs = cache / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    main, v2 = "a" * 40, "b" * 40
    (refs / "main").write_text(main)  # as huggingface_hub writes it
    (refs / "v2").write_text(v2)
    for commit in (main, v2, "c" * 40):  # a snapshot counts once it holds the model's config.json
        (cache / "models--org--model" / "snapshots" / commit).mkdir(parents=True)
        (cache / "models--org--model" / "snapshots" / commit / "config.json").write_text("{}")
        (cache / "models--org--model" / "snapshots" / commit / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert identity.base_identity("org/model") == {"kind": "hub", "id": "org/model", "revision": main}
    assert identity.base_identity("org/other")["revision"] == "uncached"
    # a branch or tag is the commit it points to: the key follows the weights, and @main is the plain id
    assert identity.base_identity("org/model@v2")["revision"] == v2
    assert identity.base_identity("org/model@main") == identity.base_identity("org/model")
    (refs / "v2").write_text("c" * 40)  # the tag moved: another model
    assert identity.base_identity("org/model@v2")["revision"] == "c" * 40
    assert identity.base_identity("org/model@" + "d" * 40)["revision"] == "d" * 40  # a commit is itself
    assert identity.base_identity("org/model@v3")["revision"] == "uncached"
    (refs / "v3").write_text("f" * 40)  # a ref whose snapshot has no config.json: not a model here yet
    assert identity.base_identity("org/model@v3")["revision"] == "uncached"
    (cache / "models--org--model" / "snapshots" / ("f" * 40)).mkdir()
    (cache / "models--org--model" / "snapshots" / ("f" * 40) / "config.json").write_text("{}")
    assert identity.base_identity("org/model@v3")["revision"] == "uncached"  # nor without its weights (cut short)
    (tmp_path / "secret").write_text("e" * 40)
    assert identity.base_identity("org/model@../../../secret")["revision"] == "uncached"  # a ref, never a path


def test_docs_list_exactly_the_excluded_fields() -> None:
    text = DOCS.read_text()
    section = text[text.index("The fields left out of keys, exactly:") :]
    listed = re.findall(r"`([a-z_.]+)`", section.split("(`gitbake/contract/keys.py`")[0])
    expected = list(keys.EXCLUDED["TARGET"]) + list(keys.EXCLUDED["BAKE"])
    assert sorted(set(listed)) == sorted(set(expected))


def test_integral_floats_and_ints_give_one_key(tmp_path: Path) -> None:
    a = plan_of(_set(BASE, "TARGET.extra_kwargs", {"top_p": 1}), tmp_path)
    b = plan_of(_set(BASE, "TARGET.extra_kwargs", {"top_p": 1.0}), tmp_path)
    assert a.target and b.target and a.target.key == b.target.key


def test_nan_is_rejected(tmp_path: Path) -> None:
    from gitbake.errors import ConfigError

    with pytest.raises(ConfigError):
        plan_of({}, tmp_path, "BAKE:\n  name: b\n  optimizer: {learning_rate: .nan}\n")


def test_the_zero_stage_is_not_in_the_key(tmp_path: Path) -> None:
    two = plan_of(_set(BASE, "BAKE.deepspeed", {"zero_optimization": {"stage": 2}}), tmp_path)
    three = plan_of(_set(BASE, "BAKE.deepspeed", {"zero_optimization": {"stage": 3}}), tmp_path)
    assert two.bake and three.bake and two.bake.key == three.bake.key
