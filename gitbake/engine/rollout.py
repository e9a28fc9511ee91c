"""rollout: sample the teacher's answers to every question, batched (docs/engine.md).

Prompts are tokenised once (teacher and student contexts), expanded `num_traj_per_stimulus` times,
sorted by length so a batch pads little, left-padded, and generated with the KV cache. Each batch is
seeded from the rollout seed and its index, so a CPU run is reproducible. Token ids of the prompts and
the response are kept, so the bake never re-tokenises (baking-method.md §9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gitbake.engine.sampling import OpenAIPenalties, Sampling, TokenLogprob, logprob_of
from gitbake.engine.templating import render, response_text, with_turn_stops
from gitbake.progress import Progress
from gitbake.reporter import Reporter


@dataclass
class SamplingSettings:
    num_traj_per_stimulus: int = 1
    temperature: float = 1.0
    max_tokens: int = 256
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 8


def contexts(
    tokenizer: Any, stim: Sequence[dict[str, Any]], teacher: dict[str, Any], student: dict[str, Any]
) -> list[tuple[list[int], list[int]]]:
    """(teacher ids, student ids) of every stim record."""
    out = []
    for rec in stim:
        q = rec["question"]
        t = render(tokenizer, teacher.get("messages") or [], teacher.get("tools"), q)
        s = render(tokenizer, student.get("messages") or [], student.get("tools"), q)
        out.append((t, s))
    return out


def sampling_of(settings: SamplingSettings) -> Sampling:
    """The rollout's sampling (TARGET.temperature + extra_kwargs) as chat and serve take it."""
    x = settings.extra_kwargs
    return Sampling(
        temperature=settings.temperature,
        top_p=float(x.get("top_p", 1.0)),
        top_k=x.get("top_k"),
        min_p=x.get("min_p"),
        presence_penalty=float(x.get("presence_penalty", 0.0)),
        frequency_penalty=float(x.get("frequency_penalty", 0.0)),
        repetition_penalty=float(x.get("repetition_penalty", 1.0)),
        seed=settings.seed,
        stop=tuple(x.get("stop") or ()),
        logprobs=bool(x.get("logprobs") or x.get("top_logprobs")),
        top_logprobs=int(x.get("top_logprobs") or 0),
    )


# transformers' generate flags that have no OpenAI name: passed as they are
GENERATE_ONLY = ("typical_p", "no_repeat_ngram_size")
# extra_kwargs that change only how answers are seeded or reported, not what is sampled
NEUTRAL = ("seed", "logprobs", "top_logprobs")
# the values of the others at which they leave the distribution as it is
NO_EFFECT: dict[str, Any] = {
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def plain(settings: SamplingSettings) -> bool:
    """Whether these settings sample the model's own distribution: temperature 1, nothing that reshapes or
    cuts it. Only such samples estimate the forward KL the bake's eval reports (baking-method.md §8)."""
    if settings.temperature != 1.0:
        return False
    return all(
        k in NEUTRAL or v is None or v == [] or (k in NO_EFFECT and v == NO_EFFECT[k])
        for k, v in settings.extra_kwargs.items()
    )


@dataclass
class Response:
    """One sampled answer: its token ids, whether it ended with an end-of-turn token (else: max_tokens or a
    stop string cut it), and each token's log-probability when asked."""

    ids: list[int]
    finished: bool
    logprobs: list[TokenLogprob] | None = None


# Answers are sampled in stages of growing length: FIRST_STAGE new tokens, then twice as many in all, and
# so on up to max_tokens. After each stage the answers that ended leave, and the rest go on in fresh,
# fuller batches, re-prefilled with what they have so far. `model.generate` decodes a batch until its
# longest answer ends, so without stages one rambling answer kept its whole batch decoding to max_tokens:
# on SmolLM2 answers average 25-45 tokens, and most batches of 16 had one that ran to 256 (docs/engine.md).
# Sampling on from a prefix is the same distribution, and every processor sees the same ids (the penalties
# count from where the answer starts), so only the random stream differs from one long generate.
FIRST_STAGE = 32


def generate_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    progress: Progress | None = None,
) -> list[Response]:
    """Sample one response per prompt. Batched, left-padded, in stages of growing length (FIRST_STAGE);
    `model.generate` with the same logits processors as chat and serve (gitbake.engine.sampling)."""
    import torch
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    # the model's own stop tokens (chat models often have several, e.g. <end_of_turn>), else the tokenizer's
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []) | (
        {eos} if eos is not None else set()
    )
    sampling = with_turn_stops(tokenizer, sampling_of(settings))  # every prompt here is a rendered chat
    results: list[Response] = [Response([], False)] * len(prompts)
    gen_kwargs: dict[str, Any] = {
        "pad_token_id": pad,
        "eos_token_id": sorted(stops) if stops else None,
        **sampling.generate_kwargs(),
        **{k: settings.extra_kwargs[k] for k in GENERATE_ONLY if k in settings.extra_kwargs},
    }
    if sampling.stop:
        from transformers import StoppingCriteriaList, StopStringCriteria

        # built once here, not by each generate call (`stop_strings=`): building it reads the whole
        # vocabulary, 0.8 s a call for Gemma 3's 262,144 tokens, and a rollout calls generate per stage and batch
        gen_kwargs["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(sampling.stop))])
    if sampling.logprobs:
        gen_kwargs.update(output_logits=True, return_dict_in_generate=True)
    sofar: dict[int, list[int]] = {i: [] for i in range(len(prompts))}  # each unfinished answer so far
    lps: dict[int, list[TokenLogprob]] = {i: [] for i in range(len(prompts))}
    pending, done_tokens, stage = list(range(len(prompts))), 0, 0
    while pending:
        # every pending answer has exactly done_tokens tokens: it neither stopped nor was cut
        cap = min(settings.max_tokens, max(FIRST_STAGE, 2 * done_tokens))
        order = sorted(pending, key=lambda i: (len(prompts[i]), i))
        pending = []
        for b, start in enumerate(range(0, len(order), settings.batch_size)):
            idx = order[start : start + settings.batch_size]
            rows = [list(prompts[i]) + sofar[i] for i in idx]
            width = max(len(r) for r in rows)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, r in enumerate(rows):
                ids[row, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[row, width - len(r) :] = 1
            penalties = LogitsProcessorList(
                [OpenAIPenalties(sampling.presence_penalty, sampling.frequency_penalty, width - done_tokens)]
                if sampling.presence_penalty or sampling.frequency_penalty
                else []
            )
            # seeded by (rollout seed, stage, batch): the same prompts and settings give the same answers
            torch.manual_seed(settings.seed * 1_000_003 + stage * 100_003 + b)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    logits_processor=penalties,
                    max_new_tokens=cap - done_tokens,
                    **gen_kwargs,
                )
            sequences = out.sequences if sampling.logprobs else out
            ended = 0
            for row, i in enumerate(idx):
                new = sequences[row, width:].tolist()
                finished = False
                ends = [k for k, tok in enumerate(new) if tok in stops]
                if ends:
                    new = new[: ends[0] + 1]  # keep the stop token: the student must learn to stop
                    finished = True
                    # a row a stop string ended is padded while the others go on, and the pad may be the EOS
                    # (a tokenizer without a pad token): then the stop string, not that EOS, ended it
                    before = sofar[i] + new[:-1]
                    if sampling.stop and _before_stop(tokenizer, before, sampling.stop) != before:
                        new, finished = new[:-1], False
                else:
                    while new and new[-1] == pad:
                        new.pop()
                if sampling.logprobs:
                    lps[i] += [logprob_of(out.logits[k][row], tok, sampling.top_logprobs) for k, tok in enumerate(new)]
                resp = sofar[i] + new
                cut = _before_stop(tokenizer, resp, sampling.stop) if sampling.stop and not finished else resp
                # it goes on only when it used the whole stage: it neither stopped nor was cut short
                if not finished and len(cut) == len(resp) == cap and cap < settings.max_tokens:
                    sofar[i] = resp  # on to the next stage
                    pending.append(i)
                    continue
                results[i] = Response(cut, finished, lps[i][: len(cut)] if sampling.logprobs else None)
                ended += 1
            if progress and ended:
                progress.update(ended)
        done_tokens, stage = cap, stage + 1
    return results


def _before_stop(tokenizer: Any, resp: list[int], stop: Sequence[str]) -> list[int]:
    """The response before its first stop string (which, as in chat and serve, is not part of the answer),
    to the last whole token that ends before the stop begins: a stop spread over several tokens ("\n",
    "user", ":") leaves none of them behind. The answer did not end by itself, so it is not `finished`."""

    def text(k: int) -> str:
        return str(tokenizer.decode(resp[:k], skip_special_tokens=True))

    for k in range(1, len(resp) + 1):
        hits = [i for i in (text(k).find(s) for s in stop if s) if i >= 0]
        if hits:
            j = k - 1
            while j > 0 and len(text(j)) > min(hits):
                j -= 1
            return resp[:j]
    return resp


def make_rollouts(
    model: Any,
    tokenizer: Any,
    stim: Sequence[dict[str, Any]],
    teacher: dict[str, Any],
    student: dict[str, Any],
    settings: SamplingSettings,
    label: str = "rollout",
    reporter: Reporter | None = None,
    answered_by_parent: bool = True,
) -> list[dict[str, Any]]:
    """The records of every question's answers. `teacher_sample` marks an answer that is a plain sample of
    the teacher (the parent under the teacher prompt; `plain` settings): the bake's eval takes the held-out
    ones as its teacher samples instead of sampling them again."""
    ctx = contexts(tokenizer, stim, teacher, student)
    teacher_plain = answered_by_parent and plain(settings)
    prompts, owners = [], []
    for rec, (t_ids, s_ids) in zip(stim, ctx):
        # rollout_with_conditioned: the answer is sampled from the student's context (bgit.md §5)
        source = s_ids if rec.get("rollout_with_conditioned") else t_ids
        for k in range(settings.num_traj_per_stimulus):
            prompts.append(source)
            owners.append((rec, k, t_ids, s_ids))
    progress = (reporter or Reporter()).progress(label, len(prompts), unit="traj")
    from gitbake.engine import vllm_backend

    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    # vLLM loads weights from disk: only for an unmodified model (a merged parent exists only in memory)
    if path and not getattr(model, "_gitbake_merged", False) and vllm_backend.wanted():
        sampling = with_turn_stops(tokenizer, sampling_of(settings))
        responses = vllm_backend.generate(path, prompts, sampling, settings.max_tokens, tokenizer.eos_token_id)
        # vLLM takes a stop string out of the answer's text but not out of its token ids: cut them as above
        for n, r in enumerate(responses):
            if sampling.stop and not r.finished:
                cut = _before_stop(tokenizer, r.ids, sampling.stop)
                responses[n] = Response(cut, False, r.logprobs[: len(cut)] if r.logprobs is not None else None)
    else:
        responses = generate_batches(model, tokenizer, prompts, settings, progress)
    out = []
    for n, ((rec, k, t_ids, s_ids), r) in enumerate(zip(owners, responses)):
        record = {
            "id": n,
            "stimulus_id": rec["id"],
            "traj": k,
            "split": rec["split"],
            "question": rec["question"],
            "teacher_ids": t_ids,
            "student_ids": s_ids,
            "response_ids": r.ids,
            "response": response_text(tokenizer, r.ids),
            "finished": r.finished,
            "temperature": settings.temperature,
            "teacher_sample": teacher_plain and not rec.get("rollout_with_conditioned"),
        }
        if r.logprobs is not None:  # one per response token: [token, log-probability, [[alt, lp], ...]]
            record["logprobs"] = [[lp.token, lp.logprob, [list(t) for t in lp.top]] for lp in r.logprobs]
        out.append(record)
    return out
