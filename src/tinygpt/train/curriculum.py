"""Batch and window warmup: smaller, shorter steps early in a run, the full shape later.

modded-nanogpt grows both its batch and its attention window over a run: early on, while
the gradient is large and the model knows little, a step on fewer or shorter sequences
buys nearly as much progress for less compute. Here both ramp in three stages over the
first ``fraction`` of the budget (a quarter, a half, then the whole), so a compiled model
sees at most three shapes.

- **Batch warmup** trains on the first ``batch_size / k`` rows of each sampled batch. The
  sampler still draws whole batches, so the data stream and its resume state do not
  depend on the schedule.
- **Window warmup** cuts each row of T tokens into k rows of T/k: the same tokens per
  step, but each attends over a window of T/k. Attention costs O(T^2) per row, so short
  windows are cheaper; it is the CPU-friendly form of a sliding window that needs no
  attention mask (SDPA keeps its causal fast path).
"""

from __future__ import annotations

from ..data import Batch
from ..errors import TinyGPTError

STAGES = (4, 2, 1)  # divisors of the batch or window, in order over the warmup


def stage_divisor(progress: float, fraction: float) -> int:
    """How much smaller than full a step is at ``progress`` (0..1) of the budget, for a
    warmup over ``fraction`` of it: 4 in the first half of the warmup, 2 in the second,
    then 1 (0 turns the warmup off)."""
    if fraction <= 0 or progress >= fraction:
        return 1
    return STAGES[min(int(2 * progress / fraction), 1)]


def shape_batch(batch: Batch, batch_divisor: int, window_divisor: int) -> Batch:
    """``batch`` (B, T) with its batch cut to B/batch_divisor rows (at least one) and each
    row cut into window_divisor rows of T/window_divisor: (B', T) -> (B' * w, T / w).
    A window divisor that does not divide T is lowered to one that does."""
    rows = max(1, batch.x.shape[0] // batch_divisor)
    if rows < batch.x.shape[0]:
        batch = Batch(*(None if t is None else t[:rows] for t in batch))
    T = batch.x.shape[1]
    while window_divisor > 1 and T % window_divisor:
        window_divisor //= 2
    if window_divisor == 1:
        return batch
    if batch.input_pos is not None:
        # Packed rows restart positions mid-row; cutting them would split examples in ways
        # their positions do not say, so such data trains at its own length throughout.
        raise TinyGPTError("--window-warmup needs plain text batches, not packed examples with their own "
                           "positions; set --window-warmup 0")

    def cut(t):  # (B', T) -> (B' * w, T / w): consecutive pieces of one row stay adjacent
        return None if t is None else t.reshape(-1, T // window_divisor)

    return Batch(*(cut(t) for t in batch))
