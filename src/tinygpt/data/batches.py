"""Training batches: ``Batch(x, y, loss_mask, input_pos)`` and a reproducible window sampler over token memmaps."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..errors import TinyGPTError
from ..model import IGNORE_INDEX
from .config import SAMPLING_MODES


class Batch(NamedTuple):
    """What the trainer consumes: inputs, targets, which targets count, and positions.

    ``input_pos`` is the model's: a row may hold several sequences (packed examples), each
    starting again at position 0, and a negative position marks padding."""
    x: torch.Tensor                         # (B, T) int64 token ids
    y: torch.Tensor                         # (B, T) int64 next-token targets
    loss_mask: torch.Tensor | None = None   # (B, T) bool: targets that count (None: all)
    input_pos: torch.Tensor | None = None   # (B, T) int64 positions (None: 0..T-1 in every row)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(move(self.x), move(self.y), move(self.loss_mask), move(self.input_pos))

    def n_targets(self) -> int:
        """How many targets count towards the loss (the model counts the same way)."""
        counted = self.y != IGNORE_INDEX
        if self.loss_mask is not None:
            counted &= self.loss_mask.bool()
        return int(counted.sum())


class Batches:
    """Reproducible stream of Batch(x, y), each (batch_size, block_size); y is x shifted by one.

    ``mode="random"`` draws batch_size windows at uniformly random starts (a private
    torch.Generator seeded with ``seed``); ``mode="sequential"`` walks through the tokens
    in order, batch_size consecutive non-overlapping windows per batch, wrapping to the
    start (a new epoch) when fewer than block_size + 1 tokens remain.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, *, mode: str = "random",
                 seed: int = 0, split: str = "train") -> None:
        if mode not in SAMPLING_MODES:
            raise TinyGPTError(f"unknown sampling mode {mode!r}; choose one of: {', '.join(SAMPLING_MODES)}")
        if batch_size < 1 or block_size < 1:
            raise TinyGPTError(f"batch size and block size must be at least 1, got {batch_size} and {block_size}")
        if len(tokens) < block_size + 1:
            fix = "a smaller --block-size, a larger --val-fraction" if split == "val" else "a smaller --block-size"
            raise TinyGPTError(f"the {split} split has {len(tokens)} tokens, fewer than one block "
                               f"(block_size {block_size} + 1); use {fix} or more text")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.mode, self.seed, self.split = mode, seed, split
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0   # sequential: token index where the next window starts
        self.epoch = 0      # sequential: completed passes over the tokens
        self._offsets = np.arange(block_size + 1)   # (T+1,) window-relative indices

    def _sequential_starts(self) -> np.ndarray:
        starts = np.empty(self.batch_size, dtype=np.int64)
        for b in range(self.batch_size):
            if self.position + self.block_size + 1 > len(self.tokens):
                self.position, self.epoch = 0, self.epoch + 1
            starts[b] = self.position
            self.position += self.block_size
        return starts

    def _starts(self) -> np.ndarray:
        if self.mode == "random":
            high = len(self.tokens) - self.block_size   # last start whose window (T+1) fits, plus one
            return torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
        return self._sequential_starts()

    def skip(self) -> None:
        """Move past the next batch without reading its tokens (another rank's micro-batch)."""
        self._starts()

    def next_batch(self) -> Batch:
        """The next Batch: x and y are int64 CPU tensors of shape (batch_size, block_size)."""
        starts = self._starts()
        windows = self.tokens[starts[:, None] + self._offsets]   # (B, T+1) uint16/uint32, one gather
        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1], dtype=np.int64))
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:], dtype=np.int64))
        return Batch(x, y)

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly; safe for torch.load(weights_only=True)."""
        return {"mode": self.mode, "seed": self.seed, "split": self.split, "n_tokens": len(self.tokens),
                "rng": self.generator.get_state(), "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``. Both modes' state is restored, so switching --sampling on resume works."""
        self.generator.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        # A position past the end (the tokens changed) simply wraps on the next draw.
        self.position = int(state["position"])
