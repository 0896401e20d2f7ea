"""Looking inside the MLPs: the learning-rate finder, and per-layer activation and gradient
statistics (the numbers tinygpt's own health probe reads for the GPT, ``train/health.py``).

- **lr finder**: train a fresh copy for a few hundred steps while the learning rate grows
  exponentially from tiny to too large, and plot loss against it. The loss falls fastest
  somewhere before it blows up; a rate a few times below the blow-up is a good choice.
- **tanh health**: at initialisation and after training, for every hidden layer, the
  histogram of the tanh outputs and the share that is *saturated* (|t| > 0.97, where
  tanh is flat and passes back less than 6% of the gradient), and the histogram of the
  gradient arriving at those outputs. A healthy deep net keeps all layers alike: no layer
  saturated, no layer's gradient shrinking or exploding relative to the others.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...analysis import pictures
from ...analysis.health_pictures import hist_line
from ...train.health import histogram

SATURATED = 0.97  # tanh'(x) = 1 - tanh(x)^2 < 0.06 beyond this


def lr_finder(model, train: tuple[torch.Tensor, ...], batch_size: int, steps: int = 500,
              lo: float = 1e-3, hi: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(learning rates, losses): SGD on a copy of ``model`` with lr rising from ``lo`` to ``hi``."""
    model = copy.deepcopy(model).train()  # the real model keeps its initialisation
    g = torch.Generator().manual_seed(seed)
    lrs = np.geomspace(lo, hi, steps)
    losses = np.full(steps, np.nan)
    for i, lr in enumerate(lrs):
        ix = torch.randint(0, train[0].shape[0], (batch_size,), generator=g)
        total, n = model.loss_sum(*(t[ix] for t in train))
        loss = total / n
        if not math.isfinite(loss.item()) or (i > 10 and loss.item() > 4 * np.nanmin(losses)):
            break  # diverged: the rest of the range only repeats that
        losses[i] = loss.item()
        model.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return lrs, losses


def suggest_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """A third of the rate where the smoothed loss bottoms out: fast, with room before divergence."""
    smooth = _ema(losses, 0.95)
    return float(lrs[int(np.nanargmin(smooth))] / 3)


def _ema(x: np.ndarray, beta: float) -> np.ndarray:
    out, avg = np.full_like(x, np.nan), None
    for i, v in enumerate(x):
        if np.isfinite(v):
            avg = v if avg is None else beta * avg + (1 - beta) * v
            out[i] = avg
    return out


def draw_lr_finder(lrs: np.ndarray, losses: np.ndarray, chosen: float, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="#9ecae1", linewidth=0.8, label="loss per step")
    ax.plot(lrs, _ema(losses, 0.95), color="#08519c", linewidth=1.8, label="smoothed")
    ax.axvline(suggest_lr(lrs, losses), color="#31a354", linestyle="--", label="suggested (1/3 of the minimum)")
    ax.axvline(chosen, color="#e6550d", linestyle=":", label=f"used: {chosen:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (rising every step)")
    ax.set_ylabel("training loss (nats)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    return pictures.save(fig, path)


def tanh_health(model, batch: tuple[torch.Tensor, ...]) -> list[dict]:
    """Per tanh layer: output and gradient statistics and histograms on one training-mode batch."""
    outs: list[torch.Tensor] = []

    def keep(module, args, out):
        out.retain_grad()  # a non-leaf tensor keeps its .grad only when asked
        outs.append(out)

    tanhs = [m for m in model.modules() if isinstance(m, nn.Tanh)]
    hooks = [m.register_forward_hook(keep) for m in tanhs]
    was = model.training
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        total, n = model.loss_sum(*batch)
        (total / n).backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    layers = []
    for i, t in enumerate(outs):
        a, g = t.detach(), t.grad
        layers.append({"layer": i, "mean": float(a.mean()), "std": float(a.std()),
                       "saturated": float((a.abs() > SATURATED).float().mean()),
                       "grad_std": float(g.std()), "act_hist": histogram(a), "grad_hist": histogram(g)})
    return layers


def draw_health(stages: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One row per stage ("at init", "trained"): tanh outputs left, their gradients right."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2 * len(stages)), dpi=100, layout="constrained")
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for (stage, layers), (act, grad) in zip(stages.items(), axes):
        for layer in layers:
            hist_line(act, layer["act_hist"], f"layer {layer['layer']}: mean {layer['mean']:+.2f}, "
                                              f"std {layer['std']:.2f}, saturated {layer['saturated']:.1%}")
            hist_line(grad, layer["grad_hist"], f"layer {layer['layer']}: std {layer['grad_std']:.2e}")
        act.set_title(f"{stage}: tanh outputs (saturated: |t| > {SATURATED})", fontsize=10)
        act.set_xlim(-1.05, 1.05)
        grad.set_title(f"{stage}: gradient at the tanh outputs", fontsize=10)
        reach = 5 * max(layer["grad_std"] for layer in layers)
        if reach > 0:
            grad.set_xlim(-reach, reach)
        for ax in (act, grad):
            ax.legend(fontsize=7)
            ax.grid(True, alpha=0.3)
            ax.set_ylabel("density")
    fig.suptitle(title, fontsize=11)
    return pictures.save(fig, path)
