"""`git bake eval --expect/--lang [--min/--max]`: behaviour rates on the baked tiny repository, the verdict
as an exit code, and a real `git bisect run` over the repository's history; on the real model, French
and English answers told apart.

tiny's answers are noise, so the tests take their patterns from the answers themselves: a pattern one
model's greedy answers match and the others' do not. What that shows is the plumbing: the rates count
the model's real outputs, and bisect's verdict follows them. That a language is recognised in a real
model's answers is the `real` test's part.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gitbake.repo.repo import open_repo
from gitbake.workflow.behaviourcheck import BehaviourRates, behaviour_rates, request

from helpers import bake_here, copy_baked, cpu_fp32, git, smollm2_gguf

ANY = r"\S"  # an answer with anything visible in it


pytestmark = pytest.mark.usefixtures("tiny_on_the_cpu_in_fp32")


@pytest.fixture(scope="module")
def rates(
    baked_repo: dict[str, Any], model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BehaviourRates]:
    """The greedy answers of both bakes of the session's repository, to the same (the first bake's) questions."""
    with pytest.MonkeyPatch.context() as mp, cpu_fp32():  # module-scoped: before the module's fixture
        mp.setenv("HOME", str(tmp_path_factory.mktemp("eval-home")))
        mp.setenv("GITBAKE_CACHE", str(model_cache))
        repo = open_repo(baked_repo["root"])
        req = request(ANY, None, questions_from=baked_repo["first"])
        return {name: behaviour_rates(repo, baked_repo[name], req) for name in ("first", "second")}


def mark(answers: list[str], others: list[str]) -> str:
    """A pattern that some of `answers` match and none of `others`: the start of an answer no other
    answer starts with. None exists when a bake did not change any greedy answer."""
    for a in answers:
        for k in range(1, len(a) + 1):
            if "\x00" in a[:k]:
                break  # not on a command line
            if not any(o.startswith(a[:k]) for o in others):
                return "^" + re.escape(a[:k])
    pytest.fail(f"no answer of {answers!r} differs from all of {others!r}: the bake changed nothing")


def test_rates_count_the_greedy_answers_of_teacher_parent_and_model(
    rates: dict[str, BehaviourRates], baked_repo: dict[str, Any]
) -> None:
    first, second = rates["first"], rates["second"]
    questions = sorted(["What is the capital of France?", "How do I make tea?"])
    assert sorted(a.question for a in first.answers) == questions == sorted(a.question for a in second.answers)
    assert first.rev == baked_repo["first"] and second.rev == baked_repo["second"] and first.adapter != second.adapter
    assert first.note and "training questions" in first.note  # two questions: none could be held out
    for r in (first, second):
        for role in ("teacher", "parent", "model"):
            texts = [getattr(a, role) for a in r.answers]
            assert getattr(r, role).total == 2
            assert getattr(r, role).shown == sum(bool(re.search(ANY, t)) for t in texts), role
    # the second bake's parent is the first bake's model, and its teacher is that model with the prompt
    assert [a.parent for a in second.answers] == [a.model for a in first.answers]
    assert [a.model for a in first.answers] != [a.parent for a in first.answers]  # baking changed answers


def test_eval_prints_the_rates_and_min_judges_them(
    rates: dict[str, BehaviourRates], baked_repo: dict[str, Any]
) -> None:
    root, first, second = baked_repo["root"], baked_repo["first"], baked_repo["second"]
    # answers of the first bake's model only: its parent (the base model) and the second bake lost them
    ours = mark(
        [a.model for a in rates["first"].answers],
        [a.parent for a in rates["first"].answers] + [a.model for a in rates["second"].answers],
    )
    out = bake_here(root, "eval", first, "--expect", ours, "--min", "0.5")
    assert out.exit_code == 0, out.stderr
    # tiny's answers are noise: the pattern may hold a character splitlines() would break at (\x1d, \x85)
    lines = out.stdout.rstrip("\n").split("\n")
    assert lines[0].startswith(f"{rates['first'].bake} ({first[:10]}): /{ours}/, on 2 held-out question(s)")
    assert re.search(r"teacher \(parent \+ prompt, the ceiling\)\s+\d/2", out.stdout)
    assert re.search(r"parent, no prompt\s+0/2\s+0\.00", out.stdout)
    assert re.search(rf"{first}, no prompt\s+[12]/2", out.stdout)
    assert lines[-1].startswith(f"pass: {first}'s rate") and "wanted >= 0.5 (--min)" in lines[-1]
    out = bake_here(root, "eval", second, "--expect", ours, "--min", "0.5", "--questions", first, "--json")
    assert out.exit_code == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["passed"] is False and report["model"] == {"shown": 0, "total": 2, "rate": 0.0}
    assert report["parent"]["shown"] >= 1  # the parent of the second bake is the first bake's model
    assert report["behaviour"] == {"expect": ours, "lang": None} and report["rev"] == second


def test_a_commit_with_nothing_baked_is_skipped_by_a_verdict(baked_repo: dict[str, Any]) -> None:
    root = baked_repo["root"]
    before = f"{baked_repo['first']}~1"  # input.yml committed, not baked yet: the base model, no questions
    out = bake_here(root, "eval", before, "--lang", "en", "--min", "0.5")
    assert out.exit_code == 125 and "skip:" in out.stderr and "git bisect run skips" in out.stderr, out.stderr
    plain = bake_here(root, "eval", before, "--lang", "en")
    assert plain.exit_code == 2 and "has no baked model" in plain.stderr


def test_bad_options_exit_2_naming_the_fix(baked_repo: dict[str, Any]) -> None:
    root = baked_repo["root"]
    cases = [
        (["--expect", "caf(e"], "not a valid regular expression at position 3"),
        (["--lang", "xx"], "--lang 'xx': not a language langdetect knows"),
        (["--lang", "fr", "--min", "1.5"], "--min 1.5: a rate is between 0 and 1"),
        (["--min", "0.8"], "no behaviour was given"),
    ]
    for args, message in cases:
        out = bake_here(root, "eval", *args)
        assert out.exit_code == 2 and message in out.stderr and "hint:" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_git_bisect_run_finds_the_bake_that_brought_answers_in(
    rates: dict[str, BehaviourRates], baked_repo: dict[str, Any], tmp_path: Path
) -> None:
    root = copy_baked(baked_repo, tmp_path)
    first, second = baked_repo["first"], baked_repo["second"]
    init = git(root, "rev-list", "--max-parents=0", "HEAD").strip()
    # history: init, "bake yoda" (nothing baked: skip), first, "bake yoda again" (first's model), second
    theirs = mark(
        [a.model for a in rates["second"].answers],
        [a.model for a in rates["first"].answers] + [a.parent for a in rates["first"].answers],
    )
    git(root, "bisect", "start", second, init)
    run = ["git", "bisect", "run", "git", "bake", "eval", "--expect", theirs, "--max", "0", "--questions", first]
    out = subprocess.run(run, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{second} is the first bad commit" in out.stdout, out.stdout
    log = git(root, "bisect", "log")
    assert re.search(r"# (good|skip): \[", log), log  # at least one verdict came from an older commit's model
    git(root, "bisect", "reset")


def test_greedy_answers_in_batches_are_those_given_one_at_a_time() -> None:
    """engine.infer.complete, eval's generator: batched (left-padded, shortest first, finished rows dropped
    once half the batch is done) and still each answer what `stream` gives the prompt alone."""
    from gitbake.engine.infer import GREEDY, complete, stream
    from gitbake.engine.models import load_base
    from gitbake.engine.templating import render

    m = load_base("tiny")
    questions = ["Hi", "What is the capital of France?", "Why?", "How do I make tea? In detail, please.", "Name one"]
    prompts = [render(m.tokenizer, [], None, q) for q in questions]

    def alone() -> list[str]:
        return ["".join(stream(m.model, m.tokenizer, p, GREEDY, max_tokens=24)) for p in prompts]

    assert complete(m.model, m.tokenizer, prompts, 24, batch_size=4) == alone()
    # tiny's noise seldom ends: a stop token common in its answers makes rows finish at different steps
    full = alone()
    common = max((c for c in "".join(full) if c.isascii() and c.isprintable()), key="".join(full).count)
    (stop,) = m.tokenizer(common, add_special_tokens=False)["input_ids"]
    m.model.generation_config.eos_token_id = [m.tokenizer.eos_token_id, stop]
    cut = alone()
    assert complete(m.model, m.tokenizer, prompts, 24) == cut
    assert any(c != f for c, f in zip(cut, full)), "no answer stopped early: the batch was never compacted"


FRENCH_SYSTEM = "Tu parles toujours en français."


@pytest.mark.real
def test_real_model_answers_in_french_and_english_are_told_apart() -> None:
    """Greedy answers SmolLM2-135M-Instruct is known to give: with the French system prompt it answers
    these two in French ("La capital de France est Paris.", "La ciel est bleu."), without a prompt these
    two in English. (It does not always obey the prompt: asked for a good breakfast, it answers in
    English either way; that is the teacher's ceiling below 1, not the detector's doing.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gitbake.engine.behaviour import behaviour
    from gitbake.engine.infer import complete
    from gitbake.engine.templating import render

    source = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    system = [{"role": "system", "content": FRENCH_SYSTEM}]
    prompts = [
        render(tokenizer, system, None, q) for q in ("What is the capital of France?", "Pourquoi le ciel est-il bleu ?")
    ]
    prompts += [render(tokenizer, [], None, q) for q in ("What is the capital of France?", "What is a good breakfast?")]
    answers = complete(model, tokenizer, prompts, max_tokens=24)
    french, english = answers[:2], answers[2:]
    assert behaviour(None, "fr").rate(french).shown == 2, french
    assert behaviour(None, "en").rate(english).shown == 2, english
    assert behaviour(None, "fr").rate(english).shown == 0 and behaviour(None, "en").rate(french).shown == 0
    assert behaviour("Paris", "fr").rate(answers).shown == 1  # both criteria: only the French answer about Paris
