"""AdamW with the usual decay groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "linear", "constant")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW decaying only matrices and embeddings (2-D+); biases and norm gains are not decayed,
    since shrinking them toward zero only fights the normalisation."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every parameter in one pass. On CPU, PyTorch otherwise takes
    # its per-parameter loop: a baby-preset update measured 108 ms that way, 25.5 ms with
    # foreach, 7.3 ms fused (2 cores, one run side by side).
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older PyTorch, or a device without the kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def lr_at(step: int, progress: float, *, lr: float, min_lr: float, warmup_steps: int, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based) at run ``progress`` in [0, 1].

    Linear warmup over the first ``warmup_steps`` steps, then ``schedule`` decays from
    ``lr`` to ``min_lr`` as progress goes 0 -> 1. Progress is whichever budget (steps,
    tokens or wall-clock time) is nearest its end, so a time-bounded run decays too.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr - (lr - min_lr) * p
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}")
