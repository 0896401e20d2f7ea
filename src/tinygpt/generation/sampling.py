"""How one row picks its next token: its settings (:class:`Sampling`), the one chain of logits
processors those settings make, and the pick itself (the likeliest, or a draw)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from . import processors as P

Generators = torch.Generator | Sequence[torch.Generator | None] | None


@dataclass(frozen=True)
class Sampling:
    """One row's decoding settings. The processor settings are applied in Hugging Face's
    order: penalties on what was already said, then (unless greedy) temperature and the
    truncations. A setting at its default value adds nothing to the chain: temperature 1,
    top-k None (or <= 0), top-p None (or >= 1), penalties 1 / 0 / 0, n-gram size 0.

    ``max_new_tokens`` is the row's budget; a token in ``stop_ids`` ends it (and is its
    last token); ``seed`` seeds the row's own generator (None: the global one)."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    greedy: bool = False
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature <= 0

    def chain(self, warpers: bool = True) -> list[P.LogitsProcessor]:
        """The logits processors these settings make, in order: the one place that decides
        the decoding rule (``warpers=False``: the penalties alone, as beam search takes them)."""
        chain: list[P.LogitsProcessor] = []
        if self.repetition_penalty != 1.0:
            chain.append(P.RepetitionPenalty(self.repetition_penalty))
        if self.frequency_penalty or self.presence_penalty:
            chain.append(P.FrequencyPresencePenalty(self.frequency_penalty, self.presence_penalty))
        if self.no_repeat_ngram_size:
            chain.append(P.NoRepeatNGram(self.no_repeat_ngram_size))
        if self.is_greedy or not warpers:  # warpers only shape sampling (as in transformers)
            return chain
        if self.temperature != 1.0:
            chain.append(P.Temperature(self.temperature))
        if self.top_k is not None and self.top_k > 0:
            chain.append(P.TopK(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            chain.append(P.TopP(self.top_p))
        if self.min_p is not None:
            chain.append(P.MinP(self.min_p))
        if self.typical_p is not None and self.typical_p < 1.0:
            chain.append(P.TypicalP(self.typical_p))
        return chain

    def rule(self) -> tuple:
        """What decides the processed logits and the pick: rows with equal rules are processed together."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("max_new_tokens", "stop_ids", "seed"))


def choose(logits: torch.Tensor, greedy: bool, generator: Generators = None) -> torch.Tensor:
    """The next token of each row of ``logits`` (B, V) -> (B,).

    ``generator`` is one generator for the batch, or one per row: then each row's draws
    depend on its own generator only, so a sample is the same whatever batch it is in."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = logits.float().softmax(dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
    if len(generator) != probs.size(0):
        raise ValueError(f"{len(generator)} generators for {probs.size(0)} rows")
    return torch.cat([torch.multinomial(row[None], num_samples=1, generator=g)[:, 0]
                      for row, g in zip(probs, generator)])


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: Generators = None) -> torch.Tensor:
    """Pick the next token for each row of ``logits`` (B, V) -> (B, 1): temperature (0 is
    greedy), then top-k, then top-p, then a draw."""
    rule = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    return choose(P.apply(rule.chain(), logits.float(), None), rule.is_greedy, generator)[:, None]
