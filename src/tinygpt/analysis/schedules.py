"""The learning-rate schedules side by side, and OneCycle's momentum: drawn from the trainer's
own :func:`tinygpt.train.optim.lr_at`, so the picture is what training does.

``python -m tinygpt.analysis.schedules docs/schedules.png`` draws the README's picture.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..train.optim import ONECYCLE_DIV, ONECYCLE_FINAL_DIV, SCHEDULES, lr_at, onecycle_momentum


def curves(steps: int = 1000, lr: float = 1e-3, warmup: int = 100, pct_start: float = 0.3) -> dict[str, list[float]]:
    """Each schedule's rate at every step of a ``steps``-step run (warmup and floor as the
    trainer defaults them: min_lr lr/10, OneCycle's lr/25/1e4 and its own rise)."""
    out = {}
    for schedule in SCHEDULES:
        floor = lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV if schedule == "onecycle" else lr / 10
        out[schedule] = [lr_at(s, s / steps, lr=lr, min_lr=floor, warmup_steps=warmup, schedule=schedule,
                               total_steps=steps, pct_start=pct_start) for s in range(steps)]
    out["onecycle momentum"] = [onecycle_momentum(s, s / steps, steps, pct_start) for s in range(steps)]
    return out


def draw(path: str | Path, steps: int = 1000) -> Path:
    from matplotlib.figure import Figure

    from .pictures import STYLES, save

    c = curves(steps)
    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    for i, schedule in enumerate(SCHEDULES):
        width = 1.8 if schedule == "onecycle" else 1.2
        left.plot(range(steps), c[schedule], STYLES[i % len(STYLES)][1], linewidth=width, label=schedule)
    left.set_xlabel("optimizer step")
    left.set_ylabel("learning rate (peak 1e-3)")
    left.set_title(f"--schedule, a {steps}-step run (100 warmup steps; onecycle brings its own rise)", fontsize=10)
    left.legend(fontsize=8)
    right.plot(range(steps), c["onecycle momentum"], color="tab:purple")
    right.set_xlabel("optimizer step")
    right.set_title("onecycle: AdamW's beta1 (Muon's momentum)", fontsize=10)
    return save(fig, path)


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else "schedules.png"))
