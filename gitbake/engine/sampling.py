"""How the next token is chosen, the same way in chat, serve and rollouts: transformers' logits processors.

`Sampling` holds OpenAI's sampling parameters (and vLLM's `top_k`, `min_p`, `repetition_penalty`);
`processors()` turns them into a transformers `LogitsProcessorList`: its repetition penalty, temperature,
top-k, top-p and min-p warpers, in the order `generate()` applies them, plus `OpenAIPenalties` for
OpenAI's presence and frequency penalties, which transformers does not have (they subtract, per token
already generated, a constant and a multiple of its count, from the logits: OpenAI's definition).
Log-probabilities are those of the model's own distribution (the logits before any processor), as
OpenAI and vLLM report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a token is chosen: serve checks requests without it
    import torch

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; the defaults change nothing (plain sampling at temperature 1)."""

    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def processors(self, prompt_length: int) -> Any:
        """The transformers LogitsProcessorList of these settings; `prompt_length`: where the generated
        tokens start in the ids the processors are given (OpenAI's penalties count only those)."""
        from transformers import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        out = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.presence_penalty or self.frequency_penalty:
            out.append(OpenAIPenalties(self.presence_penalty, self.frequency_penalty, prompt_length))
        if not self.greedy:  # the warpers only shape a distribution that is sampled from
            if self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                out.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(self.top_p))
            if self.min_p:
                out.append(MinPLogitsWarper(self.min_p))
        return out

    def generate_kwargs(self) -> dict[str, Any]:
        """These settings as `model.generate()` arguments (rollouts): its own sampling flags, with the
        processors transformers has no flag for."""
        kwargs: dict[str, Any] = {"do_sample": not self.greedy}
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p)
            if self.min_p:
                kwargs["min_p"] = self.min_p
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


@dataclass
class OpenAIPenalties:
    """OpenAI's presence and frequency penalties as a transformers logits processor:
    logit[t] -= presence * (count[t] > 0) + frequency * count[t], over the tokens generated so far."""

    presence: float
    frequency: float
    prompt_length: int  # ids before this are the prompt, which the penalties do not count

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        penalty = self.presence * (counts > 0).to(scores.dtype) + self.frequency * counts
        return scores - penalty  # type: ignore[return-value]


def choose(sampling: Sampling, processors: Any, ids: torch.Tensor, logits: torch.Tensor, gen: Any) -> int:
    """The next token: `logits` (the model's, for the last position of one sequence `ids` [1, n]) through
    the processors, then argmax (greedy) or a draw with `gen`."""
    import torch

    scores = processors(ids, logits.float().unsqueeze(0)) if len(processors) else logits.float().unsqueeze(0)
    if sampling.greedy:
        return int(scores[0].argmax())
    probs = torch.softmax(scores[0], dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the likeliest alternatives (OpenAI's `logprobs`)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def logprob_of(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under the model's distribution `logits` (before any processor)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top:
        values, indices = logp.topk(min(top, logp.shape[-1]))
        best = tuple((int(i), float(v)) for i, v in zip(indices, values))
    return TokenLogprob(token, float(logp[token]), best)
