"""Optimizers (AdamW, or Muon for the hidden matrices) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "linear", "constant", "wsd", "onecycle")
# OneCycle (Smith & Topin; PyTorch's OneCycleLR defaults): it starts at lr / ONECYCLE_DIV, rises to
# lr over --pct-start of the run and anneals to lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV (or
# --min-lr), both halves cosine, while the momentum (AdamW's beta1) falls from
# ONECYCLE_MOMENTUM[1] to [0] and rises back.
ONECYCLE_DIV, ONECYCLE_FINAL_DIV, ONECYCLE_MOMENTUM = 25.0, 1e4, (0.85, 0.95)
OPTIMIZERS = ("adamw", "muon")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device, kind: str = "adamw") -> "torch.optim.Optimizer | Optimizers":
    """AdamW decaying only matrices and embeddings (2-D+); biases and norm gains are not
    decayed, since shrinking them toward zero only fights the normalisation.

    ``kind="muon"``: the transformer blocks' weight matrices go to PyTorch's Muon
    (momentum orthogonalised by Newton-Schulz, as in modded-nanogpt), with its update
    scaled to AdamW's RMS so that the same learning rate and weight decay apply; the
    embeddings, the head, biases and gains stay on AdamW."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights appear once
    by = updated_by(model, kind)
    hidden = [p for n, p in named if by[n] == "muon"]
    taken = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in taken]
    adamw = _adamw([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                    {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}], lr, betas, device)
    # (adamw_groups names these groups: keep the two in step)
    if kind == "adamw":
        return adamw
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r}")
    muon = torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    return Optimizers(adamw=adamw, muon=muon)


def adamw_groups(model: torch.nn.Module) -> list[list[str]]:
    """The parameter names of :func:`make_optimizer`'s AdamW groups on one process (decayed,
    then not), however a parallel layout splits them: the shape a checkpoint's optimizer
    state is saved in, so that any layout resumes any other's."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [[n for n, p in named if p.dim() >= 2], [n for n, p in named if p.dim() < 2]]


def updated_by(model: torch.nn.Module, kind: str) -> dict[str, str]:
    """Which optimizer ``make_optimizer(..., kind=kind)`` gives each parameter: "muon" for
    the blocks' weight matrices under Muon, else "adamw". (Training health is judged per
    optimizer: Muon's orthogonalised steps move a matrix more than AdamW's at one rate.)"""
    # A mixture-of-experts router is a (E, C) matrix but a classifier: AdamW, as the head is.
    return {n: "muon" if kind == "muon" and p.dim() == 2 and ".h." in f".{n}" and ".router." not in n else "adamw"
            for n, p in model.named_parameters()}


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    # A tensor-parallel model has split (DTensor) and whole parameters, which one fused or
    # foreach update cannot take together: a group holding both becomes two.
    split = [[p for p in g["params"] if hasattr(p, "placements")] for g in groups]
    groups = [part for g, s in zip(groups, split) for part in (
        ({**g, "params": s}, {**g, "params": [p for p in g["params"] if not hasattr(p, "placements")]})
        if s and len(s) < len(g["params"]) else (g,))]
    # The fused kernel updates every parameter in one pass. On CPU, PyTorch otherwise takes
    # its per-parameter loop: a baby-preset update measured 108 ms that way, 25.5 ms with
    # foreach, 7.3 ms fused (2 cores, one run side by side).
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older PyTorch, or a device without the kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


class Optimizers:
    """Several optimizers stepped as one, each over its own parameters. It offers what the
    trainer, the loss scaler and checkpoints use of an optimizer: ``param_groups`` (the
    children's own group dicts, so setting a learning rate reaches them), ``state``,
    ``step``, ``zero_grad`` and a state dict keyed by child."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers.values() for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for o in self.optimizers.values() for p, s in o.state.items()}

    def step(self) -> None:
        for o in self.optimizers.values():
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: o.state_dict() for name, o in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, o in self.optimizers.items():
            o.load_state_dict(state[name])  # a missing one (another optimizer's state): KeyError


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle_phase(step: int, progress: float, total_steps: int | None, pct_start: float) -> tuple[bool, float]:
    """(rising, how far through that half) of a OneCycle run at optimizer step ``step``:
    with a step budget of ``total_steps`` exactly as OneCycleLR counts (the peak at step
    pct_start * total - 1, the floor at total - 1); otherwise by ``progress``."""
    if total_steps:
        pos, peak, end = float(step), pct_start * total_steps - 1, float(total_steps - 1)
    else:
        pos, peak, end = min(max(progress, 0.0), 1.0), pct_start, 1.0
    if pos <= peak:
        return True, pos / peak if peak > 0 else 1.0
    return False, min(1.0, (pos - peak) / (end - peak)) if end > peak else 1.0


def onecycle_momentum(step: int, progress: float, total_steps: int | None, pct_start: float) -> float:
    """AdamW's beta1 at this point of a OneCycle run: high while the rate is low, and back."""
    rising, pct = onecycle_phase(step, progress, total_steps, pct_start)
    low, high = ONECYCLE_MOMENTUM
    return _cos(high, low, pct) if rising else _cos(low, high, pct)


def lr_at(step: int, progress: float, *, lr: float, min_lr: float, warmup_steps: int, schedule: str,
          decay_fraction: float = 0.2, warmup_floor: float = 0.0, total_steps: int | None = None,
          pct_start: float = 0.3) -> float:
    """Learning rate for optimizer step ``step`` (0-based) at run ``progress`` in [0, 1].

    Linear warmup over the first ``warmup_steps`` steps, then ``schedule`` decays from
    ``lr`` to ``min_lr`` as progress goes 0 -> 1. Progress is whichever budget (steps,
    tokens or wall-clock time) is nearest its end, so a time-bounded run decays too.
    "wsd" (warmup-stable-decay) holds ``lr`` and decays linearly over the last
    ``decay_fraction`` of the run: resumed with a larger budget before its decay, a run
    simply goes on at full rate, so it can be extended ("overnight, then some more").
    ``warmup_floor``: how far warmup is by another measure (the trainer's share of a time or
    token budget); warmup ends at whichever comes first.
    "onecycle" brings its own rise (``pct_start`` of the run) in place of the warmup; with a
    step budget (``total_steps``) it is OneCycleLR's curve step for step.
    """
    if schedule == "onecycle":
        rising, pct = onecycle_phase(step, progress, total_steps, pct_start)
        return _cos(lr / ONECYCLE_DIV, lr, pct) if rising else _cos(lr, min_lr, pct)
    if step < warmup_steps and warmup_floor < 1:
        # (lr * (step + 1) / warmup_steps, not lr * ramp: the same bits as ever for a step budget)
        return max(lr * (step + 1) / warmup_steps, lr * warmup_floor)
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr - (lr - min_lr) * p
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        return lr if p <= start else lr - (lr - min_lr) * (p - start) / decay_fraction
    raise ValueError(f"unknown schedule {schedule!r}")
