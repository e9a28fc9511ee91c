"""stim: every generator, canonical order, held-out split, and oneshot_qs over real HTTP servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gitbake.contract import config
from gitbake.engine import llm, stim
from gitbake.errors import ConfigError, UsageError

from helpers import ChatServer, chat_reply, git, invoke

TEACHER = {"messages": [{"role": "system", "content": "You are Yoda."}]}


def target_of(text: str, root: Path) -> tuple[config.Target, config.LoadedInput]:
    loaded = config.parse_input(
        "PROMPT:\n  teacher:\n    messages: [{role: system, content: You are Yoda.}]\n" + text, root
    )
    assert loaded.config.TARGET is not None
    return loaded.config.TARGET, loaded


def ctx_of(loaded: config.LoadedInput, root: Path, writer: Any = None) -> stim.StimContext:
    return stim.StimContext(root, TEACHER, {"messages": []}, loaded.templates, loaded.question_files, writer)


def questions(text: str, root: Path, writer: Any = None) -> list[dict[str, Any]]:
    t, loaded = target_of(text, root)
    return stim.make_stim(t, ctx_of(loaded, root, writer))


def test_hardcoded_records_are_bgit_shaped(tmp_path: Path) -> None:
    recs = questions("TARGET:\n  generators: [{type: hardcoded, questions: ['a?', 'b?', 'A?']}]\n", tmp_path)
    assert [r["question"] for r in recs] == ["a?", "b?"]  # de-duplicated, case-insensitively
    assert recs[0]["unconditioned_stimulus"]["messages"] == [*TEACHER["messages"], {"role": "user", "content": "a?"}]
    assert recs[0]["conditioned_stimulus"]["messages"] == [{"role": "user", "content": "a?"}]


def test_from_file_txt_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("one?\n\n two? \n")
    (tmp_path / "q.jsonl").write_text('{"question": "three?"}\n\n{"question": "four?", "x": 1}\n')
    recs = questions(
        "TARGET:\n  generators: [{type: from_file, path: q.txt}, {type: from_file, path: q.jsonl}]\n", tmp_path
    )
    assert sorted(r["question"] for r in recs) == ["four?", "one?", "three?", "two?"]


def test_from_file_bad_json_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"question": "ok?"}\n{"question": broken}\n{"nope": 1}\n')
    with pytest.raises(ConfigError) as exc:
        questions("TARGET:\n  generators: [{type: from_file, path: q.jsonl}]\n", tmp_path)
    assert [(i.file, i.line) for i in exc.value.issues] == [("q.jsonl", 2), ("q.jsonl", 3)]
    assert exc.value.exit_code == 2


def test_from_file_numq_samples_with_seed(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("\n".join(f"q{i}?" for i in range(50)))
    a = questions("TARGET:\n  generators: [{type: from_file, path: q.txt, numq: 5, seed: 1}]\n", tmp_path)
    b = questions("TARGET:\n  generators: [{type: from_file, path: q.txt, numq: 5, seed: 1}]\n", tmp_path)
    c = questions("TARGET:\n  generators: [{type: from_file, path: q.txt, numq: 5, seed: 2}]\n", tmp_path)
    assert [r["question"] for r in a] == [r["question"] for r in b] != [r["question"] for r in c]
    assert len(a) == 5


def test_from_dataset_local_file(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"question": f"d{i}?"}) + "\n" for i in range(30)))
    recs = questions("TARGET:\n  generators: [{type: from_dataset, dataset: data.jsonl, numq: 7, seed: 3}]\n", tmp_path)
    assert len(recs) == 7


def test_from_dataset_not_available_offline_says_how(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        questions("TARGET:\n  generators: [{type: from_dataset, dataset: squad, numq: 5}]\n", tmp_path)
    assert "squad" in exc.value.message and exc.value.hint and ".jsonl" in exc.value.hint


def test_persona(tmp_path: Path) -> None:
    recs = questions("TARGET:\n  generators: [{type: persona, numq: 12, seed: 5}]\n", tmp_path)
    assert len(recs) == 12 and all(r["question"] in stim.PERSONA_QUESTIONS for r in recs)


def test_generator_order_in_yaml_changes_nothing(tmp_path: Path) -> None:
    a = questions(
        "TARGET:\n  generators: [{type: hardcoded, questions: ['x?', 'y?']}, {type: persona, numq: 3}]\n", tmp_path
    )
    b = questions(
        "TARGET:\n  generators: [{type: persona, numq: 3}, {type: hardcoded, questions: ['x?', 'y?']}]\n", tmp_path
    )
    assert a == b


@pytest.mark.parametrize(
    "n, fraction, expected", [(9, 0.1, 0), (10, 0.1, 1), (30, 0.1, 3), (30, 0.0, 0), (40, 0.25, 10)]
)
def test_heldout_split(n: int, fraction: float, expected: int, tmp_path: Path) -> None:
    qs = ", ".join(f'"q{i}?"' for i in range(n))
    recs = questions(
        f"TARGET:\n  heldout_fraction: {fraction}\n  generators: [{{type: hardcoded, questions: [{qs}]}}]\n", tmp_path
    )
    assert sum(r["split"] == "heldout" for r in recs) == expected
    assert (stim.heldout_note(recs) is not None) == (expected == 0)


def test_parse_numbered_lists() -> None:
    text = "Here you go:\n1. What is X?\n2) How do I Y?\n 3. Why Z?\n\nThanks"
    assert stim.parse_questions(text) == ["What is X?", "How do I Y?", "Why Z?"]
    assert stim.parse_questions("- bullet one\n* bullet two") == ["bullet one", "bullet two"]
    assert stim.parse_questions("no list here\nbut a question?") == ["but a question?"]


ONESHOT = "TARGET:\n  generators:\n    - {type: oneshot_qs, model: 'openai:writer', numq: 3, base_url: BASE}\n"


def test_oneshot_over_http_with_canned_replies(tmp_path: Path) -> None:
    replies = iter(
        ["1. What is the Force?\n2. Where is Dagobah?", "1. Where is Dagobah?\n2. Who trained you?\n3. Extra?"]
    )
    with ChatServer(lambda body: (200, chat_reply(next(replies)))) as server:
        t, loaded = target_of(ONESHOT.replace("BASE", server.url), tmp_path)
        writer = llm.writer_for(t.generators[0], None)  # type: ignore[arg-type]
        recs = stim.make_stim(t, ctx_of(loaded, tmp_path, writer))
    assert [r["question"] for r in recs] == ["What is the Force?", "Where is Dagobah?", "Who trained you?"]
    assert len(server.requests) == 2  # asked again for the missing one; duplicates dropped
    body = server.requests[0]["body"]
    assert (
        body["model"] == "writer"
        and "You are Yoda." in body["messages"][0]["content"]
        and "3" in body["messages"][0]["content"]
    )


def test_oneshot_failing_endpoint_retries_then_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ChatServer(lambda body: (503, {"error": "overloaded"})) as server:
        t, loaded = target_of(ONESHOT.replace("BASE", server.url), tmp_path)
        writer = llm.writer_for(t.generators[0], None)  # type: ignore[arg-type]
        with pytest.raises(llm.EndpointError) as exc:
            stim.make_stim(t, ctx_of(loaded, tmp_path, writer))
    assert (
        len(server.requests) == llm.RETRIES and "503" in exc.value.message and "after 3 attempts" in exc.value.message
    )


def test_oneshot_refused_request_is_not_retried(tmp_path: Path) -> None:
    """A 401 will not go away by asking again: one request, and the status in the message."""
    with ChatServer(lambda body: (401, {"error": {"message": "bad key"}})) as server:
        t, loaded = target_of(ONESHOT.replace("BASE", server.url), tmp_path)
        writer = llm.writer_for(t.generators[0], None)  # type: ignore[arg-type]
        with pytest.raises(llm.EndpointError) as exc:
            stim.make_stim(t, ctx_of(loaded, tmp_path, writer))
    assert len(server.requests) == 1 and "refused the request: HTTP 401" in exc.value.message


def test_oneshot_unreachable_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t, loaded = target_of(ONESHOT.replace("BASE", "http://127.0.0.1:9/v1"), tmp_path)
    writer = llm.writer_for(t.generators[0], None)  # type: ignore[arg-type]
    with pytest.raises(llm.EndpointError, match="failed after 3 attempts"):
        stim.make_stim(t, ctx_of(loaded, tmp_path, writer))


def test_claude_without_key_says_how_to_point_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    t, _ = target_of(
        "TARGET:\n  generators: [{type: oneshot_qs, model: claude-sonnet-4-5-20250929, numq: 3}]\n", tmp_path
    )
    with pytest.raises(UsageError) as exc:
        llm.writer_for(t.generators[0], None)  # type: ignore[arg-type]
    assert "ANTHROPIC_API_KEY" in exc.value.message and exc.value.hint and "openai:NAME" in exc.value.hint


def test_oneshot_against_a_server_serving_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol end to end with a real model behind it; tiny never writes a list, so: a clear error."""
    from gitbake.engine import models
    from gitbake.engine.rollout import SamplingSettings, generate_batches
    from gitbake.engine.templating import render, response_text

    m = models.load_base("tiny")

    def serve(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ids = render(m.tokenizer, body["messages"], None, None)
        (answer,) = generate_batches(
            m.model, m.tokenizer, [ids], SamplingSettings(max_tokens=min(body["max_tokens"], 24), seed=1)
        )
        return 200, chat_reply(response_text(m.tokenizer, answer.ids))

    with ChatServer(serve) as server:
        t, loaded = target_of(ONESHOT.replace("BASE", server.url), tmp_path)
        writer = llm.writer_for(t.generators[0], None)  # type: ignore[arg-type]
        with pytest.raises(stim.StimError, match="wrote no questions"):
            stim.make_stim(t, ctx_of(loaded, tmp_path, writer))
    assert len(server.requests) == 3 and all(r["path"] == "/v1/chat/completions" for r in server.requests)


def test_failed_oneshot_stores_nothing(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (model_repo / "input.yml").write_text(
        "PROMPT:\n  teacher:\n    messages: [{role: system, content: hi}]\n"
        + ONESHOT.replace("BASE", "http://127.0.0.1:9/v1")
    )
    git(model_repo, "commit", "-qam", "oneshot")
    result = invoke("run", "stim")
    assert result.exit_code == 1 and "failed after 3 attempts" in result.stderr
    from gitbake.repo.repo import open_repo

    assert list(open_repo(model_repo).store.iter_objects()) == []
