"""The decode loop: prefill the KV cache with the prompts, then one token per row per step.

Prompts of different lengths go in one batch, left-padded: a pad has a negative position,
so the model neither caches nor attends to it, and each row's real tokens sit at
positions 0.. exactly as they would alone. A row that stops (a stop token, or its caller
says so) leaves the batch, and its slot in the cache with it, so it costs nothing more.

Past the context (``block_size``) the loop is exact by default: every step re-reads each
row's last ``block_size`` tokens without the cache, as the textbook loop does, so long
generations equal the uncached sliding window (and cost a full forward of the window per
token). The cache is used while every row fits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..model import GPT, KVCache
from . import processors as P
from .sampling import Generators, basic_chain, choose

# on_step(rows, tokens): the original indices of the rows still generating and their new
# tokens (B,); returns the rows (original indices) to stop now, e.g. on a stop string.
OnStep = Callable[[list[int], torch.Tensor], "set[int] | None"]


def _left_pad(rows: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids and per-row positions (negative = pad), or None positions when no row is padded."""
    T = max(len(r) for r in rows)
    if all(len(r) == T for r in rows):
        return torch.tensor([list(r) for r in rows], device=device), None
    ids = torch.tensor([[0] * (T - len(r)) + list(r) for r in rows], device=device)
    pos = torch.tensor([list(range(len(r) - T, len(r))) for r in rows], device=device)
    return ids, pos


@torch.no_grad()
def decode(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
           processors: Sequence[P.LogitsProcessor] = (), greedy: bool = False, generator: Generators = None,
           stop_ids: Sequence[int] = (), use_cache: bool = True, on_step: OnStep | None = None) -> list[list[int]]:
    """The new tokens of each prompt (a list of ids, lengths may differ): up to
    ``max_new_tokens``, ending at the first of ``stop_ids`` (included) or when ``on_step``
    stops the row. ``generator``: one for the batch or one per row (see sampling.choose)."""
    B = len(prompts)
    if B == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    out: list[list[int]] = [[] for _ in range(B)]
    active = list(range(B))
    history = P.History(prompts, model.config.vocab_size, device)
    gens = list(generator) if isinstance(generator, (list, tuple)) else generator
    stops = torch.tensor(sorted(set(stop_ids)), device=device, dtype=torch.long)
    cache = KVCache(model.config, B, device=device, dtype=next(model.parameters()).dtype) if use_cache else None
    fresh = True  # the cache has not seen the prompts yet
    try:
        for _ in range(max_new_tokens):
            rows = history.rows
            if cache is not None and max(len(r) for r in rows) > block:
                cache = None  # outgrew the context: from now on, the exact sliding window
            if cache is not None and fresh:
                ids, pos = _left_pad(rows, device)
                logits = model(ids, input_pos=pos, cache=cache).logits[:, -1]
                fresh = False
            elif cache is not None:
                ids = torch.tensor([[r[-1]] for r in rows], device=device)
                lengths = {len(r) for r in rows}
                pos = None if len(lengths) == 1 and cache.length == len(rows[0]) - 1 else \
                    torch.tensor([[len(r) - 1] for r in rows], device=device)
                logits = model(ids, input_pos=pos, cache=cache).logits[:, -1]
            else:
                ids, pos = _left_pad([r[-block:] for r in rows], device)
                logits = model(ids, input_pos=pos).logits[:, -1]
            logits = P.apply(processors, logits.float(), history)
            nxt = choose(logits, greedy, gens)  # (b,)
            history.append(nxt)
            for i, t in zip(active, nxt.tolist()):
                out[i].append(t)
            done = set(on_step(active, nxt) or ()) if on_step is not None else set()
            if len(stops):
                done |= {active[j] for j in torch.isin(nxt, stops).nonzero()[:, 0].tolist()}
            if done:
                keep = [j for j, i in enumerate(active) if i not in done]
                if not keep:
                    break
                active = [active[j] for j in keep]
                history.select(keep)
                if isinstance(gens, list):
                    gens = [gens[j] for j in keep]
                if cache is not None:
                    cache.reorder(torch.tensor(keep, device=device))
    finally:
        model.train(was_training)
    return out


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: Generators = None,
             use_cache: bool = True, stop_id: int | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens -> (B, T + new).

    The tensor form of :func:`decode` for rows of one length, with the model's own
    distribution by default (user-facing defaults live in GenerationConfig). A row that
    produced ``stop_id`` is padded with it until every row has (Hugging Face's convention).
    ``on_token`` sees each new column (B, 1) as it is made."""
    B = idx.size(0)

    def step(rows: list[int], tokens: torch.Tensor) -> None:
        if on_token is not None:
            column = torch.full((B, 1), stop_id if stop_id is not None else 0, dtype=torch.long, device=idx.device)
            column[rows, 0] = tokens
            on_token(column)

    new = decode(model, idx.tolist(), max_new_tokens, processors=basic_chain(temperature, top_k, top_p),
                 greedy=temperature <= 0, generator=generator, stop_ids=() if stop_id is None else (stop_id,),
                 use_cache=use_cache, on_step=step)
    n = max((len(r) for r in new), default=0)
    tail = torch.tensor([r + [stop_id] * (n - len(r)) for r in new], dtype=torch.long, device=idx.device)
    return torch.cat([idx, tail.view(B, n)], dim=1)
