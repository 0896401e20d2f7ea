"""The decode loop: prefill the KV cache with the prompt, then one token per step."""

from __future__ import annotations

from typing import Callable

import torch

from ..model import GPT, KVCache
from .sampling import Generators, sample_next


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: Generators = None,
             use_cache: bool = True, stop_id: int | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens -> (B, T + new).

    The defaults sample the model's own distribution; user-facing defaults live in
    GenerationConfig. With the cache, the prompt is processed once and each step feeds
    only the new token. Once the sequence outgrows the context, each step re-reads the
    last ``block_size`` tokens instead, exactly as the uncached loop does, so both give
    the same tokens. Generation stops early when every row has produced ``stop_id``.
    """
    was_training = model.training
    model.eval()
    block = model.config.block_size
    cache = None
    if use_cache:
        # Parameter dtype: under autocast the new keys/values are cast on the way in.
        cache = KVCache(model.config, idx.size(0), device=idx.device, dtype=next(model.parameters()).dtype)
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= block:
                # Feed whatever the cache has not seen yet: the prompt first, then one token.
                logits = model(idx[:, cache.length:], cache=cache).logits
            else:
                logits = model(idx[:, -block:]).logits
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            if on_token is not None:
                on_token(nxt)
            if stop_id is not None:
                finished |= nxt.squeeze(1) == stop_id
                if finished.all():
                    break
    finally:
        model.train(was_training)
    return idx
