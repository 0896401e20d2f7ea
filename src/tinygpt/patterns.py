"""Sparse attention patterns: which earlier keys a query may attend, as pure functions of positions.

Every pattern is causal (a key after its query is never seen) and lets a query see itself, so
no real query's row is ever empty. With window W:

- ``local`` (sliding window, Longformer / Mistral): a query at position p sees keys k with
  p - W < k <= p, its last W positions.
- ``strided`` (Sparse Transformer, Child et al. 2019): the local window, plus every earlier
  key a whole number of windows back, (p - k) % W == 0. Two hops (stride, then window)
  reach any earlier position.
- ``bigbird`` (causal BigBird, Zaheer et al. 2020): positions in blocks of W; a query sees
  its local window, the global tokens (the first block, positions < W, seen by every
  query), and ``RANDOM_BLOCKS`` earlier blocks drawn for its block by a fixed hash of
  (layer, block): the same in every forward, cached or not.
- ``full``: every earlier key (no mask of ours: SDPA's causal path).

``--attention-pattern`` mixes them over layers like nanochat's short/long windows: a string of
S (the sparse pattern) and L (full attention) letters repeated over the layers. A negative
position is padding: it is never a key, and a padding query sees everything (its row must not
be all -inf, and what it computes goes nowhere); :mod:`tinygpt.kvcache` adds that.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import TinyGPTError

KINDS = ("full", "local", "strided", "bigbird")
# BigBird's random blocks per query block: a constant, so a query's cost stays O(W) however long
# the context; 2 rather than the paper's 3 because our contexts hold few blocks (256 / 32 = 8),
# and more would make the pattern close to full attention there.
RANDOM_BLOCKS = 2


class Pattern(NamedTuple):
    """One layer's pattern; equal patterns share one mask per forward."""
    kind: str     # local, strided or bigbird
    window: int   # W
    seed: int     # the layer (bigbird's random blocks); 0 where the pattern does not use it


def check_options(attention: str, window: int | None, pattern: str | None) -> None:
    """Validate the three options (GPTConfig calls this): one-line errors that say the fix."""
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window <= 0):
        raise TinyGPTError(f"--window must be a positive number of tokens, got {window!r}")
    if attention != "full" and window is None:
        raise TinyGPTError(f"--attention {attention} needs --window W (how many positions a query sees nearby)")
    if attention == "full" and window is not None:
        raise TinyGPTError(f"--window {window} applies to a sparse --attention (local, strided or bigbird); "
                           "give one, or leave --window out for full attention")
    if pattern is not None:
        if attention == "full":
            raise TinyGPTError("--attention-pattern mixes a sparse --attention with full layers; "
                               "give --attention local, strided or bigbird with it")
        if not pattern or set(pattern) - {"S", "L"}:
            raise TinyGPTError(f"--attention-pattern takes letters S (sparse) and L (full) only, e.g. SSSL; "
                               f"got {pattern!r}")


def layer_patterns(config) -> tuple[Pattern | None, ...]:
    """Each layer's pattern (None: full attention), from a GPTConfig. A pattern that cannot
    hide a key within the context (a window at least the context long) is full attention,
    and goes SDPA's causal path."""
    if config.attention == "full" or config.window >= config.block_size:
        return (None,) * config.n_layer
    letters = config.attention_pattern or "S"
    return tuple(Pattern(config.attention, config.window, i if config.attention == "bigbird" else 0)
                 if letters[i % len(letters)] == "S" else None for i in range(config.n_layer))


def random_blocks(seed: int, block: int) -> list[int]:
    """The earlier blocks query block ``block`` reads at random (plain Python; :func:`allowed`
    computes the same hash on tensors): blocks 1 .. block-1, as block 0 is global already."""
    if block < 2:
        return []
    return [1 + _mix(seed, block, r) % (block - 1) for r in range(RANDOM_BLOCKS)]


def _mix(seed, block, r):
    """A 31-bit integer hash of (seed, block, r), on ints or int64 tensors alike: products of
    31-bit numbers stay inside int64, so tensors never overflow."""
    h = (seed * 1000003 + r * 7919 + 0x2545F491) & 0x7FFFFFFF
    h = ((h ^ block) * 0x5BD1E995) & 0x7FFFFFFF
    h = ((h ^ (h >> 13)) * 0x27D4EB2F) & 0x7FFFFFFF
    return h ^ (h >> 15)


def allowed(pattern: Pattern, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Whether a query at position ``q`` may attend a key at position ``k`` under ``pattern``:
    bool, broadcast of the two (e.g. q (B, T, 1) and k (B, 1, S) give (B, T, S)). A negative
    key is padding and never allowed."""
    W = pattern.window
    seen = (k <= q) & (k >= 0)
    near = k > q - W
    if pattern.kind == "local":
        return seen & near
    if pattern.kind == "strided":
        return seen & (near | ((q - k) % W == 0))
    if pattern.kind != "bigbird":
        raise ValueError(f"unknown attention pattern {pattern.kind!r}")
    qb, kb = q.clamp(min=0) // W, k.clamp(min=0) // W  # blocks of queries and keys
    far = k < W  # the global tokens
    for r in range(RANDOM_BLOCKS):
        far = far | ((qb >= 2) & (kb == 1 + _mix(pattern.seed, qb, r) % (qb - 1).clamp(min=1)))
    return seen & (near | far)


def square(pattern: Pattern | None, T: int) -> torch.Tensor:
    """The (T, T) mask of positions 0..T-1 (None: full causal), what a picture shows."""
    pos = torch.arange(T)
    return pos[:, None] >= pos[None, :] if pattern is None else allowed(pattern, pos[:, None], pos[None, :])
