"""The KV cache, and how one forward's queries attend: positions, masks and cache slots.

The model's forward contract: each token has a position, shared (T,) or per row (B, T). A
negative position marks padding: a pad is never cached and never attended to. A position
that does not continue the one before it (back to 0) starts a new sequence in the row, so
packed examples never attend across their boundary. :func:`plan` turns the positions and
the cache into what every layer needs (:class:`Plan`), once per forward.

The cache holds one (B, n_kv, max_len + 1, hs) pair of tensors per layer; slot = position
(modulo max_len in a rolling cache). A cache may also carry a *prefix*: keys and values
that every row reads before its own positions, visible to every query (prompt tuning's
soft prompt: :mod:`tinygpt.adapters` supplies it). The row's positions then start after the
prefix's, and its own context is what the position tables leave. A cache with
``max_len=0`` stores nothing and only carries a prefix, for forwards that cache nothing
(training a soft prompt).

Shape legend: B rows, T new tokens, S keys attended, n prefix positions, hs head size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import TinyGPTError


class Plan(NamedTuple):
    """How one forward's queries attend, worked out once for all layers."""
    slots: torch.Tensor | int | None  # where new keys go in the cache (None: nothing is stored)
    length: int                       # stored keys attended: S (the prefix's come on top)
    end: int                          # one past the highest position, prefix included
    mask: torch.Tensor | None         # bool, True = may attend: (T, n + S) or (B, 1, T, n + S)
    causal: bool                      # plain causal over T == S keys (SDPA's fast path)


class LayerKV:
    """One layer's cached keys and values, (B, n_kv, max_len + 1, hs), and the prefix's
    (1, n_kv, n + 1, hs) if the cache carries one.

    The extra last slot takes the writes of padding tokens, so a batch with pads needs no
    data-dependent indexing; attention never reads it."""

    def __init__(self, k: torch.Tensor | None, v: torch.Tensor | None, prefix: LayerKV | None = None):
        self.k, self.v, self.prefix = k, v, prefix

    def write(self, slots: torch.Tensor | int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, nh, T, hs) at ``slots``: a start position shared by all rows, or (B, T)."""
        B, T = k.shape[0], k.shape[2]
        if isinstance(slots, int):
            self.k[:B, :, slots:slots + T] = k
            self.v[:B, :, slots:slots + T] = v
        else:
            rows = torch.arange(B, device=k.device)[:, None]  # (B, 1) with slots (B, T)
            self.k[rows, :, slots] = k.transpose(1, 2)  # indexed view is (B, T, nh, hs)
            self.v[rows, :, slots] = v.transpose(1, 2)

    def update(self, plan: Plan, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This forward's keys and values (B, n_kv, T, hs) -> the ones to attend (B, n_kv, n + S, hs):
        stored first (then every stored slot attended is read back), the prefix's before them."""
        B = k.shape[0]
        if plan.slots is not None:
            self.write(plan.slots, k, v)
            k, v = self.k[:B, :, :plan.length], self.v[:B, :, :plan.length]
        if self.prefix is not None:
            n = self.prefix.k.shape[2] - 1  # its spare slot is never read
            k = torch.cat([self.prefix.k[:, :, :n].to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([self.prefix.v[:, :, :n].to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        return k, v


class KVCache:
    """Keys and values of every layer for incremental decoding.

    ``length`` is one past the highest position written: attention reads slots
    [0, length). Without explicit positions, a forward continues every row at ``length``.

    ``rolling`` (RoPE models only): positions may go past ``max_len``; position p lives in
    slot p % max_len, overwriting the oldest, so a one-token step attends the last
    ``max_len`` positions. The keys kept were computed when their own context was longer
    than the window is now: cheap, but not equal to re-reading the window (see
    generation.decoder's fast mode).
    """

    def __init__(self, config, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 rolling: bool = False, prefix: KVCache | None = None):
        if rolling and config.pos_emb != "rope":
            raise TinyGPTError("a rolling KV cache needs rotary positions (pos_emb rope): learned position "
                               "embeddings end at block_size")
        self.max_len = config.block_size if max_len is None else max_len
        self.rolling = rolling
        if self.max_len:
            # (B, n_kv, S + 1, hs) per layer; n_kv may differ between layers (a structurally pruned model)
            shapes = [(batch_size, config.heads(i)[1], self.max_len + 1, config.head_size)
                      for i in range(config.n_layer)]
            self.layers = [LayerKV(torch.zeros(shape, device=device, dtype=dtype),
                                   torch.zeros(shape, device=device, dtype=dtype)) for shape in shapes]
        else:
            self.layers = [LayerKV(None, None) for _ in range(config.n_layer)]
        self.length = 0
        self._prefix: KVCache | None = None
        self.prefix = prefix

    @classmethod
    def prefix_only(cls, config, prefix: KVCache) -> KVCache:
        """A cache that stores nothing and reads ``prefix`` before every row (an uncached forward)."""
        return cls(config, 0, 0, prefix=prefix)

    @property
    def stores(self) -> bool:
        return self.max_len > 0

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0] if self.stores else 0

    @property
    def prefix(self) -> KVCache | None:
        """Keys and values (one row, n positions) read before every row's own."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: KVCache | None) -> None:
        self._prefix = prefix
        for i, layer in enumerate(self.layers):
            layer.prefix = prefix.layers[i] if prefix is not None else None

    @property
    def prefix_length(self) -> int:
        return self._prefix.max_len if self._prefix is not None else 0

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows [start, stop) as a cache of their own that shares this one's memory: what a
        forward through it writes lands here (a decoder's pool of rows)."""
        view = object.__new__(KVCache)
        view.max_len, view.rolling, view.length = self.max_len, self.rolling, self.length
        view.layers = [LayerKV(layer.k[start:stop], layer.v[start:stop]) for layer in self.layers]
        view._prefix = None
        view.prefix = self._prefix
        return view

    def put_row(self, row: int, source: KVCache, length: int) -> None:
        """Copy slots [0, length) of ``source``'s first row into row ``row`` (a row re-read by itself)."""
        for mine, theirs in zip(self.layers, source.layers):
            mine.k[row, :, :length] = theirs.k[0, :, :length]
            mine.v[row, :, :length] = theirs.v[0, :, :length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses between steps)."""
        for layer in self.layers:
            layer.k, layer.v = layer.k.index_select(0, index), layer.v.index_select(0, index)


def plan(shape: tuple[int, int], device: torch.device, input_pos: torch.Tensor | None, cache: KVCache | None,
         n_positions: int) -> tuple[torch.Tensor, Plan]:
    """Positions of the (B, T) tokens for the position tables (after any prefix), and how
    their queries attend, from ``input_pos`` and the cache. ``n_positions``: how many
    positions the model's tables hold (a prefix takes the first of them)."""
    B, T = shape
    store = cache if cache is not None and cache.stores else None
    n = cache.prefix_length if cache is not None else 0
    if store is not None and B > store.batch_size:
        raise TinyGPTError(f"the KV cache holds {store.batch_size} rows but the batch has {B}; make a larger KVCache")
    context = n_positions - n
    if input_pos is None:
        # One position counter for all rows: the fast paths, no mask tensor at all.
        start = store.length if store is not None else 0
        end = start + T
        _check_length(end, T, store, context)
        pos = torch.arange(start, end, device=device)
        if store is None or start == 0:
            how = Plan(None if store is None else 0, end, end, None, T > 1)
        elif T == 1:  # a lone new query sees everything cached (rolling: every slot, once full)
            how = Plan(start % store.max_len, min(end, store.max_len), end, None, False)
        else:  # query i (position start+i) sees keys 0..start+i
            mask = torch.ones(T, end, dtype=torch.bool, device=device).tril(diagonal=start)
            how = Plan(start, end, end, mask, False)
    else:
        pos, how = _explicit(B, T, device, input_pos, store, context)
    if store is not None:
        store.length = max(store.length, how.end)
    if n:
        pos, how = pos + n, _after_prefix(how, n, T, device)
    return pos, how


def _explicit(B: int, T: int, device: torch.device, input_pos: torch.Tensor, store: KVCache | None,
              context: int) -> tuple[torch.Tensor, Plan]:
    """The plan for positions given per token."""
    input_pos = input_pos.to(device=device, dtype=torch.long)
    if input_pos.shape not in ((T,), (B, T)):
        raise TinyGPTError(f"input_pos has shape {tuple(input_pos.shape)}; it must be ({T},) or ({B}, {T}) "
                           "to match the tokens")
    input_pos = input_pos.expand(B, T)
    pad = input_pos < 0
    highest = int(input_pos.max()) if T else -1  # one sync: bounds and the span to attend
    end = max(highest + 1, store.length if store is not None else 0)
    _check_length(highest + 1, T, store, context)
    pos = input_pos.clamp(min=0)
    if store is None:
        # Keys are this batch's tokens: causal by index, never a pad, and of the same
        # sequence: a position that does not continue the one before it begins a new one
        # (a packed example), numbered by counting those starts along the row.
        starts = torch.ones(B, T, dtype=torch.bool, device=device)
        starts[:, 1:] = input_pos[:, 1:] != input_pos[:, :-1] + 1
        seq = starts.cumsum(dim=1)  # (B, T)
        same = seq[:, :, None] == seq[:, None, :]
        mask = same & torch.ones(T, T, dtype=torch.bool, device=device).tril() & ~pad[:, None, :]  # (B, T, T)
        slots, span, end = None, T, T
    else:
        # Keys are cache slots = positions: a query at position p sees slots 0..p (so,
        # past the end of a rolling cache, every slot).
        span = min(end, store.max_len)
        mask = torch.arange(span, device=device) <= input_pos[..., None]  # (B, T, S)
        slots = (input_pos % store.max_len).masked_fill(pad, store.max_len)  # pads write to the spare slot
    # A pad query may attend anything: it must not be a row of -inf (NaN softmax),
    # and what it computes goes nowhere.
    mask = mask | pad[..., None]
    return pos, Plan(slots, span, end, mask.unsqueeze(1), False)  # (B, 1, T, S)


def _after_prefix(how: Plan, n: int, T: int, device: torch.device) -> Plan:
    """``how`` with a prefix's n keys before its S keys, visible to every query."""
    how = how._replace(end=how.end + n)
    if how.mask is None and not how.causal:
        return how  # a lone new query already sees every key
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril() if how.mask is None else how.mask
    seen = torch.ones(*mask.shape[:-1], n, dtype=torch.bool, device=device)
    return how._replace(mask=torch.cat([seen, mask], dim=-1), causal=False)  # (..., T, n + S)


def _check_length(end: int, T: int, store: KVCache | None, context: int) -> None:
    """Positions up to ``end`` must fit the cache and the context; a rolling cache takes
    any position one token (T = 1) at a time."""
    if store is not None and store.rolling and (T == 1 or end <= store.max_len):
        return
    if store is not None and end > store.max_len:
        raise TinyGPTError(f"the KV cache holds {store.max_len} positions but {end} were asked for; "
                           "make a larger KVCache (max_len) or crop the input")
    if end > context:
        raise TinyGPTError(f"sequence of {end} tokens exceeds the context of {context}; "
                           "crop the input to the last block")
