"""Activation checkpointing: a chosen block keeps only its input during a training forward
and is run again inside the backward, trading about one more forward of it for the memory
of its activations (the attention and MLP intermediates, several times the residual stream).

PyTorch's non-reentrant ``torch.utils.checkpoint`` does the work; it replays the block with
the random state it first ran with (dropout draws the same mask), so losses and gradients
equal those without it. Training concerns stay out of model.py: a chosen block's class is
swapped for a subclass whose forward checkpoints, so parameter names, state dicts, exports
and copies of the model are untouched.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..model import GPT, Block


class RecomputedBlock(Block):
    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)  # evaluation, sampling with a KV cache


def recompute_blocks(model: GPT, every: int) -> list[int]:
    """Recompute every ``every``-th block of ``model`` in the backward (1: all, 0: none);
    returns the indices of the blocks that do."""
    chosen = [i for i in range(len(model.transformer.h)) if every and i % every == 0]
    for i, block in enumerate(model.transformer.h):
        if isinstance(block, Block):
            block.__class__ = RecomputedBlock if i in chosen else Block
    return chosen
