"""The decode loop: prefill the KV cache with the prompts, then one token per row per step.

Prompts of different lengths go in one batch, left-padded: a pad has a negative position,
so the model neither caches nor attends to it, and each row's real tokens sit at
positions 0.. exactly as they would alone. A row that stops (a stop token, or its caller
says so) leaves the batch, and its slot in the cache with it, so it costs nothing more.

Past the context (``block_size``) a row can go on two ways (``past_context``):

- "exact" (default): every step re-reads each row's last ``block_size`` tokens without
  the cache, as the textbook loop does, so long generations equal the uncached sliding
  window. The cost: a full forward of the window per token, about ``block_size`` times
  a cached step's arithmetic (on GPT-2 small's 1024 that is compute-bound, tens of
  times slower than a cached step on CPU).
- "fast": the cache goes on. RoPE models keep a rolling cache that overwrites the oldest
  position, so each step still costs one token and attends the last ``block_size``
  positions; what differs from exact is that the kept keys and values were computed
  when their own context reached further back than the window does now. Learned
  positions end at ``block_size``, so a row that reaches it is re-read from its last
  ``block_size // 2`` tokens (one half-block forward every half block of tokens) and
  goes on cached; its context then shrinks to half a block at each re-read, where
  exact mode always sees a whole block.

The cache is used while every row fits, in both modes. Each row re-reads by itself, so
a batched row still gives what it gives alone.

On CPU a batch of rows decodes with oneDNN-packed weights (see ``model.Linear``), packed
once per call: that costs about as much as 10-30 decode steps and a second copy of the
weights while it lasts, so short generations and single rows skip it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Sequence

import torch

from ..model import GPT, KVCache, packed_weights
from . import processors as P
from .sampling import Generators, basic_chain, choose

PACK_MIN_TOKENS = 32  # batched generations shorter than this do not pay for packing
PAST_CONTEXT = ("exact", "fast")

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


def worth_packing(rows: int, max_new_tokens: int, device: torch.device) -> bool:
    """Whether to decode on packed weights (see the module notes)."""
    return rows > 1 and device.type == "cpu" and max_new_tokens >= PACK_MIN_TOKENS


@contextmanager
def inference(model: GPT, pack: bool) -> Iterator[None]:
    """Eval mode (the caller's mode comes back after) and, if ``pack``, packed weights."""
    was_training = model.training
    model.eval()
    try:
        with packed_weights(model) if pack else nullcontext():
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def decode(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
           processors: Sequence[P.LogitsProcessor] = (), greedy: bool = False, generator: Generators = None,
           stop_ids: Sequence[int] = (), use_cache: bool = True, on_step: OnStep | None = None,
           past_context: str = "exact") -> list[list[int]]:
    """The new tokens of each prompt (a list of ids, lengths may differ): up to
    ``max_new_tokens``, ending at the first of ``stop_ids`` (included) or when ``on_step``
    stops the row. ``generator``: one for the batch or one per row (see sampling.choose).
    ``past_context``: "exact" or "fast", how rows longer than the context go on (see above)."""
    B = len(prompts)
    if B == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if past_context not in PAST_CONTEXT:
        raise ValueError(f"past_context must be one of {PAST_CONTEXT}, got {past_context!r}")
    device = next(model.parameters()).device
    block = model.config.block_size
    out: list[list[int]] = [[] for _ in range(B)]
    active = list(range(B))
    history = P.History(prompts, model.config.vocab_size, device)
    gens = list(generator) if isinstance(generator, (list, tuple)) else generator
    stops = torch.tensor(sorted(set(stop_ids)), device=device, dtype=torch.long)
    fast = use_cache and past_context == "fast"
    rolling = fast and model.config.pos_emb == "rope"
    # Slots for the longest row's whole generation, not the whole context: zeroing and
    # holding unused slots costs time and memory.
    longest = min(block, max(len(p) for p in prompts) + max_new_tokens)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, longest, device=device, dtype=dtype, rolling=rolling) if use_cache else None
    # Row i's last token sits at position len(row) - 1 - shift[i]: fast mode starts a row
    # over at position 0 when it re-reads (or the prompt outgrew the context).
    shift = [max(0, len(p) - block) if fast else 0 for p in prompts]
    fresh = True  # the cache has not seen the prompts yet
    pack = worth_packing(B, max_new_tokens, device)
    with inference(model, pack):
        for _ in range(max_new_tokens):
            rows = history.rows
            if cache is not None and not fast and max(len(r) for r in rows) > block:
                cache = None  # outgrew the context: from now on, the exact sliding window
            if cache is None:
                ids, pos = _left_pad([r[-block:] for r in rows], device)
                logits = model(ids, input_pos=pos).logits[:, -1]
            elif fresh:
                ids, pos = _left_pad([r[-block:] for r in rows], device)
                logits = model(ids, input_pos=pos, cache=cache).logits[:, -1]
                fresh = False
            else:
                logits = _step(model, rows, shift, cache, rolling)
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
                shift = [shift[j] for j in keep]
                history.select(keep)
                if isinstance(gens, list):
                    gens = [gens[j] for j in keep]
                if cache is not None:
                    cache.reorder(torch.tensor(keep, device=device))
    return out


def _step(model: GPT, rows: list[list[int]], shift: list[int], cache: KVCache, rolling: bool) -> torch.Tensor:
    """One cached step: each row's last token -> logits (B, V). A row whose position would
    pass the context (fast mode, learned positions) is first re-read from its last half
    block into its cache row alone, and takes its logits from that; its ``shift`` entry is
    updated in place (the caller's list)."""
    device, block = cache.layers[0].k.device, model.config.block_size
    pos = [len(r) - 1 - s for r, s in zip(rows, shift)]
    fresh_logits = {}
    if not rolling:
        for j, p in enumerate(pos):
            if p >= block:
                keep = block // 2
                shift[j] = len(rows[j]) - keep
                one = KVCache(model.config, 1, keep, device=device, dtype=cache.layers[0].k.dtype)
                fresh_logits[j] = model(torch.tensor([rows[j][-keep:]], device=device), cache=one).logits[0, -1]
                cache.put_row(j, one, keep)
                pos[j] = -1  # a pad in the batched step below: it neither writes nor matters
    ids = torch.tensor([[r[-1]] for r in rows], device=device)
    if len(set(pos)) == 1 and pos[0] == cache.length:  # every row at the cache's next position
        logits = model(ids, cache=cache).logits[:, -1]
    elif all(p < 0 for p in pos):
        logits = torch.stack([fresh_logits[j] for j in range(len(rows))])
    else:
        logits = model(ids, input_pos=torch.tensor(pos, device=device)[:, None], cache=cache).logits[:, -1]
    for j, row_logits in fresh_logits.items():
        logits[j] = row_logits
    return logits


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
