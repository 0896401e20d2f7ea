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

Sparse layers (:mod:`tinygpt.patterns`) get a plan of their own whose mask is the pattern's
AND the plan's, one per distinct pattern per forward. A ``local`` layer whose window W is
shorter than the cache keeps only W slots (+ the spare): a rolling buffer, slot = position % W.
Such a layer attends the buffer as it was before the forward, then the forward's own keys
(a chunk may overwrite keys its first queries still see), and stores the last W of them.

Shape legend: B rows, T new tokens, S keys attended, n prefix positions, hs head size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import patterns as P
from .errors import TinyGPTError


class Plan(NamedTuple):
    """How one forward's queries attend, worked out once for all layers."""
    slots: torch.Tensor | int | None  # where new keys go in the cache (None: nothing is stored)
    length: int                       # stored keys attended: S (the prefix's come on top)
    end: int                          # one past the highest position, prefix included
    mask: torch.Tensor | None         # bool, True = may attend: (T, n + S) or (B, 1, T, n + S)
    causal: bool                      # plain causal over T == S keys (SDPA's fast path)
    append: bool = False              # attend stored slots [0, length) as before the write, then the new keys
    layers: tuple[Plan, ...] | None = None  # each layer's own plan where some are sparse

    def layer(self, i: int) -> Plan:
        """The plan of layer ``i``."""
        return self.layers[i] if self.layers is not None else self


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
        if plan.append:  # a window buffer: its keys as they were (cat copies them) before the new ones
            kept = self.k[:B, :, :plan.length], self.v[:B, :, :plan.length]
            attend = torch.cat([kept[0], k], dim=2), torch.cat([kept[1], v], dim=2)  # (B, n_kv, W + T, hs)
            self.write(plan.slots, k, v)
            k, v = attend
        elif plan.slots is not None:
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

    ``windows=False`` keeps every position in every layer, local ones too: a prefix's cache
    (all of its keys are read by every query).
    """

    def __init__(self, config, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 rolling: bool = False, prefix: KVCache | None = None, windows: bool = True):
        if rolling and config.pos_emb != "rope":
            raise TinyGPTError("a rolling KV cache needs rotary positions (pos_emb rope): learned position "
                               "embeddings end at block_size")
        self.max_len = config.block_size if max_len is None else max_len
        self.rolling = rolling
        self.windows = windows  # local layers keep only their window (not a prefix: all its keys are read)
        if self.max_len:
            # (B, n_kv, S + 1, hs) per layer; n_kv may differ between layers (a structurally pruned model),
            # S is W for a local layer's window buffer
            shapes = [(batch_size, config.heads(i)[1], _slots(pattern, self.max_len, windows) + 1, config.head_size)
                      for i, pattern in enumerate(P.layer_patterns(config))]
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
        view.max_len, view.rolling, view.length, view.windows = self.max_len, self.rolling, self.length, self.windows
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
         n_positions: int, patterns: tuple[P.Pattern | None, ...] = ()) -> tuple[torch.Tensor, Plan]:
    """Positions of the (B, T) tokens for the position tables (after any prefix), and how
    their queries attend, from ``input_pos`` and the cache. ``n_positions``: how many
    positions the model's tables hold (a prefix takes the first of them); ``patterns``:
    each layer's sparse pattern (None: full), see :func:`tinygpt.patterns.layer_patterns`."""
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
    if any(p is not None for p in patterns):
        queries = pos[None] if input_pos is None else input_pos.to(device=device, dtype=torch.long).expand(B, T)
        how = how._replace(layers=_sparse(how, patterns, queries, store, B, input_pos is None and T == 1))
    if store is not None:
        store.length = max(store.length, how.end)
    if n:
        pos, how = pos + n, _after_prefix(how, n, T, device)
    return pos, how


def _slots(pattern: P.Pattern | None, max_len: int, windows: bool = True) -> int:
    """Cache slots a layer keeps: a local layer's window W where that is fewer than ``max_len``."""
    if windows and pattern is not None and pattern.kind == "local" and pattern.window < max_len:
        return pattern.window
    return max_len


def _sparse(how: Plan, patterns: tuple[P.Pattern | None, ...], q: torch.Tensor, store: KVCache | None,
            B: int, one_step: bool) -> tuple[Plan, ...]:
    """Each layer's plan: ``how`` for full layers, else ``how`` under its pattern (one per
    distinct pattern). ``q``: the queries' positions (R, T), R = 1 or B, negative = padding;
    ``one_step``: one token for every row at the cache's length (decoding's usual step)."""
    pad = q < 0
    made: dict[P.Pattern, Plan] = {}
    keys = None  # (R, S): the position each attended slot holds, worked out once
    for pattern in dict.fromkeys(p for p in patterns if p is not None):
        if store is not None and _slots(pattern, store.max_len, store.windows) < store.max_len:
            if one_step:  # its slots hold exactly the window: written first, then all read, no mask
                W, p = pattern.window, how.end - 1
                made[pattern] = Plan(p % W, min(p + 1, W), how.end, None, False)
            else:
                made[pattern] = _window(how, pattern, q, pad, B)
            continue
        if keys is None:
            keys = q if store is None else _slot_positions(q, how.length, store)
        mask = P.allowed(pattern, q[:, :, None], keys[:, None, :])  # (R, T, S)
        mask = mask.unsqueeze(1) if how.mask is None else how.mask & mask.unsqueeze(1)  # (R, 1, T, S)
        # A pad query may attend anything (see _explicit): never a row of -inf.
        made[pattern] = how._replace(mask=mask | pad[:, None, :, None], causal=False)
    return tuple(how if p is None else made[p] for p in patterns)


def _slot_positions(q: torch.Tensor, S: int, store: KVCache) -> torch.Tensor:
    """The position in each of slots 0..S-1, (R, S), negative where none is: slot = position, or in
    a rolling cache the latest position up to the row's last query with that slot."""
    slots = torch.arange(S, device=q.device)[None]
    if not store.rolling:
        return slots
    last = q.max(dim=1, keepdim=True).values  # (R, 1)
    return last - (last - slots) % store.max_len


def _window(how: Plan, pattern: P.Pattern, q: torch.Tensor, pad: torch.Tensor, B: int) -> Plan:
    """The plan of a local layer with a window buffer: its W slots as they were (each row's
    last W positions before this forward, assuming its positions run on), then the T new keys."""
    W, T = pattern.window, q.shape[1]
    # (R, 1): each row's first new position (a pad, negative, stands in as a huge one: never the first)
    first = q.masked_fill(pad, 2 ** 40).min(dim=1, keepdim=True).values
    last = q.max(dim=1, keepdim=True).values
    slots = torch.arange(W, device=q.device)[None]
    before = first - 1 - (first - 1 - slots) % W  # (R, W): the position each slot holds now (negative: none)
    keys = torch.cat([before, q], dim=1)  # (R, W + T)
    mask = P.allowed(pattern, q[:, :, None], keys[:, None, :]) | pad[:, :, None]  # (R, T, W + T)
    # Only a row's last W new keys are stored; the others (and pads) go to the spare slot W.
    write = torch.where(pad | (q <= last - W), W, q % W).expand(B, T)
    return Plan(write, W, how.end, mask.unsqueeze(1), False, append=True)


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
    if how.layers is not None:  # each distinct plan once
        done = {id(p): _after_prefix(p._replace(layers=None), n, T, device) for p in how.layers}
        how = how._replace(layers=tuple(done[id(p)] for p in how.layers))
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
