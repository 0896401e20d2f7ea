"""Processed logits -> next token: the likeliest, or a draw with one random generator per row if asked."""

from __future__ import annotations

from typing import Sequence

import torch

from . import processors as P

Generators = torch.Generator | Sequence[torch.Generator] | None


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


def basic_chain(temperature: float, top_k: int | None, top_p: float | None) -> list[P.LogitsProcessor]:
    """Temperature, then top-k (off when None or <= 0), then top-p (off when None or >= 1),
    for the low-level APIs below; temperature <= 0 (greedy) needs none of them."""
    if temperature <= 0:
        return []
    chain: list[P.LogitsProcessor] = [P.Temperature(temperature)] if temperature != 1.0 else []
    if top_k is not None and top_k > 0:
        chain.append(P.TopK(top_k))
    if top_p is not None and top_p < 1.0:
        chain.append(P.TopP(top_p))
    return chain


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: Generators = None) -> torch.Tensor:
    """Pick the next token for each row of ``logits`` (B, V) -> (B, 1): temperature (0 is
    greedy), then top-k, then top-p, then a draw."""
    logits = logits.float()
    greedy = temperature <= 0
    return choose(P.apply(basic_chain(temperature, top_k, top_p), logits, None), greedy, generator)[:, None]
