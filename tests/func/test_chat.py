"""`git bake chat`: one answer, the REPL's commands, any revision, checkpoints, and the streaming engine."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch

from gitbake.engine import infer
from gitbake.engine.infer import GREEDY
from gitbake.engine.models import load_base
from gitbake.engine.sampling import Sampling
from gitbake.engine.templating import render
from gitbake.repo.repo import open_repo
from gitbake.use.chat import Session, handle, side_by_side
from gitbake.use.versions import resolve

from helpers import YODA_SMALL, bake_git, bake_here, git


def test_one_answer_is_deterministic_at_temperature_zero_on_any_revision(baked_repo: dict[str, Any]) -> None:
    root = baked_repo["root"]
    args = ["chat", "-p", "What is the capital of France?", "--temperature", "0", "--max-tokens", "24"]
    head = bake_git(root, *args)
    assert head.returncode == 0, head.stderr
    again = bake_here(root, *args)  # another run, in another process
    assert again.exit_code == 0 and head.stdout == again.stdout and head.stdout.strip()
    # any revision, not only HEAD: each loads its own model (tiny's one-step bakes barely move its noise,
    # so the model, not the text, is what is checked)
    for rev, adapters in (
        (baked_repo["first"], 1),
        ("HEAD", 2),
        (git(root, "rev-list", "--max-parents=0", "HEAD").strip(), 0),
    ):
        out = bake_here(root, "chat", rev, "--max-tokens", "2", input="/status\n")
        assert out.exit_code == 0 and f"{adapters} adapter(s)" in out.stdout, (rev, out.stdout)


def test_repl_commands(baked_repo: dict[str, Any]) -> None:
    script = (
        "hello\n/status\n/system You are a pirate. Speak only in rhymes.\n/system\n/compare "
        "hi\n/clear\n/status\n/nope\n/help\n/quit\nnever read\n"
    )
    out = bake_here(baked_repo["root"], "chat", "--max-tokens", "8", input=script)
    assert out.exit_code == 0, out.stderr
    text = out.stdout
    assert "turns:       1" in text and "turns:       0" in text  # /status before and after /clear
    assert "system prompt: You are a pirate. Speak only in rhymes." in text  # the whole text, not the first word
    assert "base model (tiny)" in text and " | " in text  # /compare, side by side
    assert "unknown command /nope" in text and "/compare [TEXT]" in text


def test_session_keeps_history_and_system_prompt(baked_repo: dict[str, Any]) -> None:
    repo = open_repo(baked_repo["root"])
    version = resolve(repo, "HEAD")
    from gitbake.use.versions import load

    s = Session(repo, version, load(repo, version), Sampling(temperature=0.0), max_tokens=4)
    out: list[str] = []
    handle(s, "/system Be brief and kind.", out.append)
    handle(s, "first question", out.append)
    handle(s, "second question", out.append)
    assert [m["role"] for m in s.history] == ["user", "assistant", "user", "assistant"]
    assert s._messages("third")[0] == {"role": "system", "content": "Be brief and kind."}
    assert not handle(s, "/exit", out.append)


def test_checkpoint_of_a_bake(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "foreground")
    text = YODA_SMALL.replace(
        "epochs: 1", "epochs: 3\n  micro_batch_size: 2\n  checkpoint:\n    - save_every_n_steps: 2"
    )
    (model_repo / "input.yml").write_text(text)
    subprocess.run(["git", "commit", "-qam", "with checkpoints"], cwd=model_repo, check=True, capture_output=True)
    from gitbake.repo.checkpoints import saved as checkpoints

    saved = checkpoints(open_repo(model_repo), "HEAD")
    assert saved and all(step % 2 == 0 for step in saved)
    step = min(saved)
    args = ["chat", "-p", "Tell me a joke.", "--temperature", "0", "--max-tokens", "16"]
    half = bake_here(model_repo, "chat", "--checkpoint", str(step), "--max-tokens", "2", input="/status\n")
    assert half.exit_code == 0 and f"checkpoint step {step}" in half.stdout, half.stderr
    assert bake_here(model_repo, *args, "--checkpoint", str(step)).exit_code == 0
    v = resolve(open_repo(model_repo), "HEAD", step)
    final = resolve(open_repo(model_repo), "HEAD").adapters[-1]
    assert v.adapters[-1] == saved[step] != final  # the half-baked adapter, not the final one
    missing = bake_here(model_repo, *args, "--checkpoint", "999")
    assert missing.exit_code == 2 and "no checkpoint at step 999" in missing.stderr and str(step) in missing.stderr
    # the same checkpoint as a model address, in the commands that take one
    address = f"HEAD@checkpoint-{step}"
    assert resolve(open_repo(model_repo), address).adapters == v.adapters
    shown = bake_here(model_repo, "show", address, "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["adapters"][-1] == saved[step], shown.stderr
    out = bake_here(model_repo, "checkout", address, "--to", str(model_repo.parent / "ck"))
    assert out.exit_code == 0, out.stderr
    placed = json.loads((model_repo.parent / "ck" / "model.json").read_text())["adapters"]
    assert placed[-1]["digest"] == saved[step]
    both = bake_here(model_repo, *args, "--checkpoint", str(step + 1))
    assert both.exit_code == 2  # no such checkpoint; and an address naming one step with --checkpoint another:
    twice = bake_here(model_repo, "chat", address, "-p", "hi", "--checkpoint", str(step + 2))
    assert twice.exit_code == 2 and "give the checkpoint once" in twice.stderr
    # checkpoints are not the model's identity: .bread names the final adapter only
    assert saved[step] not in (model_repo / ".bread").read_text()


def test_unknown_revision_or_no_model(model_repo: Path) -> None:
    out = bake_git(model_repo, "chat", "nope", "-p", "hi")
    assert out.returncode == 2 and "unknown model address `nope`" in out.stderr


def test_side_by_side_wraps_both_columns() -> None:
    text = side_by_side("left", "a " * 40, "right", "b", width=40)
    lines = text.splitlines()
    assert all(" | " in line for line in lines) and lines[0].startswith("left") and "right" in lines[0]
    assert len(lines) > 3


def test_batched_decoding_matches_generate_and_streams() -> None:
    m = load_base("tiny")
    tok = m.tokenizer
    prompts = [render(tok, [], None, q) for q in ("Hi", "What is the capital of France, dear friend?", "x")]
    dec = infer.Decoder(m.model, tok)
    rows = [infer._Row(infer.Request(p, GREEDY, 10), tok) for p in prompts]
    logits = dec.prefill(rows)  # one left-padded batch of three lengths
    while True:
        dec.advance(rows, logits)
        if all(r.finish is not None for r in rows):
            break
        logits = dec.step(rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for p, row in zip(prompts, rows):
        ours = row.ids[len(p) : len(p) + row.produced + (row.finish == "stop")]  # then pads while the others finish
        ref = m.model.generate(
            input_ids=torch.tensor([p], device=m.device),  # where the model is: a GPU's, or the CPU
            attention_mask=torch.ones(1, len(p), dtype=torch.long, device=m.device),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(dec.stops),
        )[0, len(p) :].tolist()
        assert ours and ours == ref[: len(ours)]  # left padding and positions are right: same tokens as generate()
    text = "".join(infer.stream(m.model, tok, prompts[1], GREEDY, 10))
    assert text == tok.decode(rows[1].ids[len(prompts[1]) :][: rows[1].produced], skip_special_tokens=True)


def test_batcher_decodes_concurrent_requests_together() -> None:
    m = load_base("tiny")
    b = infer.Batcher(m.model, m.tokenizer, max_batch=8, gather_s=0.2)
    try:
        reqs = [b.submit(infer.Request(render(m.tokenizer, [], None, f"question {i}"), GREEDY, 6)) for i in range(5)]
        results = []
        for r in reqs:
            parts, info = [], None
            while info is None:
                kind, value = r.events.get(timeout=60)
                if kind == "text":
                    parts.append(value)
                elif kind == "done":
                    info = value
                else:
                    pytest.fail(value)
            results.append(("".join(parts), info))
        assert b.batches[0] == 5  # one batch, one forward pass per step for all five
        assert all(info["completion_tokens"] <= 6 for _, info in results)
        alone = "".join(infer.stream(m.model, m.tokenizer, render(m.tokenizer, [], None, "question 3"), GREEDY, 6))
        assert results[3][0] == alone  # batching does not change a greedy answer
    finally:
        b.close()


def test_batcher_mixed_lengths_and_joining_mid_batch() -> None:
    m = load_base("tiny")
    b = infer.Batcher(m.model, m.tokenizer, max_batch=8, gather_s=0.0)
    try:

        def collect(r: infer.Request) -> tuple[str, dict[str, Any]]:
            parts = []
            while True:
                kind, value = r.events.get(timeout=60)
                if kind == "text":
                    parts.append(value)
                elif kind == "done":
                    return "".join(parts), value
                else:
                    pytest.fail(value)

        long = b.submit(infer.Request(render(m.tokenizer, [], None, "a long one"), GREEDY, 40))
        time.sleep(0.2)  # the long one is decoding when the short ones arrive: they join its batch
        shorts = [b.submit(infer.Request(render(m.tokenizer, [], None, f"short {i}"), GREEDY, 3 + i)) for i in range(3)]
        results = [collect(r) for r in shorts] + [collect(long)]
        for i, (_, info) in enumerate(results[:3]):
            assert info["completion_tokens"] <= 3 + i and info["finish_reason"] in ("stop", "length")
        assert results[3][1]["completion_tokens"] <= 40
        alone = "".join(infer.stream(m.model, m.tokenizer, render(m.tokenizer, [], None, "short 1"), GREEDY, 4))
        assert results[1][0] == alone  # joining mid-batch (a re-prefill) does not change a greedy answer
        assert max(b.batches) > 1
    finally:
        b.close()


def test_compare_is_the_same_turn_in_the_same_conversation(baked_repo: dict[str, Any]) -> None:
    repo = open_repo(baked_repo["root"])
    version = resolve(repo, "HEAD")
    from gitbake.use.versions import load

    s = Session(repo, version, load(repo, version), Sampling(temperature=0.0), max_tokens=4)
    seen: list[list[dict[str, str]]] = []
    real = s.answer
    s.answer = lambda model, messages, write: seen.append(list(messages)) or real(model, messages, write)  # type: ignore[method-assign]
    out: list[str] = []
    handle(s, "first", out.append)
    handle(s, "second", out.append)
    seen.clear()
    handle(s, "/compare", out.append)  # the last turn again: "first" exchange, then "second"
    assert len(seen) == 2 and seen[0] == seen[1]
    assert [m["content"] for m in seen[0] if m["role"] == "user"] == ["first", "second"]
    assert len(s.history) == 4  # comparing does not change the conversation
    seen.clear()
    handle(s, "/compare third", out.append)
    assert [m["content"] for m in seen[0] if m["role"] == "user"] == ["first", "second", "third"]


def test_chat_sampling_options_and_logprobs(model_repo: Path) -> None:
    args = ["chat", "-p", "Tell me a story.", "--temperature", "0", "--max-tokens", "6"]
    plain = bake_here(model_repo, *args)
    shown = bake_here(model_repo, *args, "--logprobs", "2")
    assert plain.exit_code == 0 and shown.exit_code == 0, shown.stderr
    answer, *table = shown.stdout.splitlines()
    assert plain.stdout.splitlines()[0] == answer  # asking for logprobs changes no answer
    assert 0 < len(table) <= 6 and all(len(re.findall(r"-?\d+\.\d{3}", row)) == 3 for row in table)
    longer = ["chat", "-p", "Tell me a story.", "--temperature", "0", "--max-tokens", "24"]
    penalised = bake_here(model_repo, *longer, "--frequency-penalty", "2", "--presence-penalty", "2")
    assert penalised.exit_code == 0 and penalised.stdout != bake_here(model_repo, *longer).stdout
    seeded = [bake_here(model_repo, "chat", "-p", "hi", "--seed", "3", "--max-tokens", "6").stdout for _ in range(2)]
    assert seeded[0] == seeded[1]
    bad = bake_here(model_repo, *args, "--presence-penalty", "3")
    assert bad.exit_code == 2 and "--presence-penalty" in bad.stderr
    many = bake_here(model_repo, *args, *[x for s in "abcde" for x in ("--stop", s)])
    assert many.exit_code == 2 and "at most 4" in many.stderr
