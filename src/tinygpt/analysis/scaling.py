"""Scaling laws measured on your own machine: a sweep of model sizes at a few compute
budgets, Chinchilla's fit of the loss, and the compute-optimal size for a budget.

The law (Hoffmann et al. 2022, "approach 3"): the loss of a model of N parameters trained
on D tokens is L(N, D) = E + A / N^alpha + B / D^beta, and a run costs C = 6 N D FLOPs.
Fitted as the paper does: a Huber loss on log L, the terms combined by log-sum-exp so that
A, B and E stay positive, L-BFGS from a grid of starting points (the fit has many shallow
local minima), the best kept. (Written here, on torch, rather than with scipy: scipy is
not one of tinygpt's dependencies and the whole fit is twenty lines.)

At a fixed C, substituting D = C / (6 N) gives one curve of N per budget (an iso-FLOP
curve) whose minimum is at N_opt(C) = G (C / 6)^(beta / (alpha + beta)) with
G = (alpha A / (beta B))^(1 / (alpha + beta)), and D_opt = C / (6 N_opt).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import opt, parse_duration, parse_names
from ..errors import TinyGPTError
from ..train.recipe import ScalingLaw

MIN_RUNS = 5  # the law has five parameters


@dataclass
class ScalingOptions:
    sizes: tuple[str, ...] = opt(("2x64", "2x128", "4x128", "4x192", "6x256"),
                                 "model sizes to train, LAYERSxWIDTH, comma-separated (heads 64 wide)",
                                 parse=parse_names)
    budgets: tuple[str, ...] = opt(("2m", "5m", "15m"), "training budget of every size, comma-separated: each "
                                                        "budget is one iso-FLOP curve; a time (90, 2m, 1h) or a "
                                                        "compute (1e13flops: the same for every size, and untouched "
                                                        "by whatever else the machine runs)", parse=parse_names)
    predict: str | None = opt(None, "a training time to predict the compute-optimal model size and token count "
                                    "for, on this machine (e.g. 1h)")
    save_profile: bool = opt(True, "save the fit as this machine's profile, which --preset auto then sizes "
                                   "time-budgeted runs by (its compute-optimal tokens per parameter)")

    def __post_init__(self) -> None:
        for size in self.sizes:
            parse_size(size)
        for budget in self.budgets:
            parse_budget(budget)
        if len(self.sizes) * len(self.budgets) < MIN_RUNS:
            raise TinyGPTError(f"{len(self.sizes)} sizes x {len(self.budgets)} budgets are fewer than the {MIN_RUNS} "
                               "runs a fit needs; add sizes or budgets")
        if self.predict is not None and (parse_duration(self.predict) or 0) <= 0:
            raise TinyGPTError(f"--predict is a training time such as 1h; got {self.predict!r}")


def parse_budget(budget: str) -> tuple[str, float]:
    """("time", seconds) for "90", "2m", "1h"; ("flops", C) for "1e13flops"."""
    text = budget.strip().lower()
    for suffix in ("flops", "flop"):
        if text.endswith(suffix):
            try:
                value = float(text[:-len(suffix)])
            except ValueError:
                value = 0.0
            if not (value > 0 and math.isfinite(value)):
                break
            return "flops", value
    else:
        try:
            seconds = parse_duration(budget) or 0
        except ValueError:
            seconds = 0
        if seconds > 0:
            return "time", seconds
    raise TinyGPTError(f"--budgets are training times such as 90, 2m or 1h, or computes such as 1e13flops; "
                       f"got {budget!r}")


def fit_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], delta: float = 1e-3) -> ScalingLaw:
    """The law's five parameters from runs of ``n`` parameters on ``d`` tokens that reached
    ``loss`` (at least five runs, with more than one size and more than one token count)."""
    if len(loss) < MIN_RUNS:
        raise TinyGPTError(f"a scaling fit needs at least {MIN_RUNS} runs, got {len(loss)}; add sizes or budgets")
    if len(set(n)) < 2 or len(set(d)) < 2:
        raise TinyGPTError("a scaling fit needs runs of more than one model size and more than one token count")
    log_n, log_d = (torch.tensor(np.log(x), dtype=torch.float64) for x in (n, d))
    log_l = torch.tensor(np.log(loss), dtype=torch.float64)

    def per_start(p: torch.Tensor) -> torch.Tensor:  # (S, 5) starting points -> (S,) objectives
        a, b, e, log_alpha, log_beta = p.T.unsqueeze(-1)  # (S, 1) each
        alpha, beta = log_alpha.exp(), log_beta.exp()  # kept positive: a law that improves with N and D
        pred = torch.logsumexp(torch.stack([a - alpha * log_n, b - beta * log_d, e.expand(-1, len(log_n))]), dim=0)
        return torch.nn.functional.huber_loss(pred, log_l.expand_as(pred), delta=delta, reduction="none").sum(-1)

    # The paper's grid, thinned: a (log A), b (log B), e (log E), log alpha, log beta; all the starts
    # optimised together (their objectives are independent, so the sum's minimum is each one's).
    exponents = (math.log(0.2), math.log(0.5))
    starts = torch.tensor(list(itertools.product((0.0, 6.0, 12.0), (0.0, 6.0, 12.0), (-1.0, 0.5), exponents,
                                                 exponents)), dtype=torch.float64)
    p = starts.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=500, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = per_start(p).nan_to_num(1e30).sum()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        values = per_start(p)
        values[~torch.isfinite(p).all(-1)] = math.inf
    best = p[values.argmin()].detach() if torch.isfinite(values).any() else None
    if best is not None:  # the shared line search stops short for some: polish the winner alone
        q = best.clone().unsqueeze(0).requires_grad_(True)
        polish = torch.optim.LBFGS([q], lr=1.0, max_iter=200, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def alone() -> torch.Tensor:
            polish.zero_grad()
            value = per_start(q).sum()
            value.backward()
            return value

        polish.step(alone)
        if bool(torch.isfinite(q).all()) and per_start(q.detach()).item() <= values.min().item():
            best = q.detach()[0]
    if best is None:
        raise TinyGPTError("the scaling fit did not converge from any starting point; the losses may not fall with "
                           "size and data (check the runs, or give larger budgets)")
    a, b, e, log_alpha, log_beta = best.tolist()
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=math.exp(log_alpha), beta=math.exp(log_beta))


class SweepStopped(Exception):
    """A signal stopped the sweep during the run at ``path`` (checkpointed as a train would be)."""

    def __init__(self, signal: int, path: Path):
        super().__init__(f"stopped by signal {signal} during {path}")
        self.signal, self.path = signal, path


@dataclass
class SweepRun:
    budget: str          # as given, e.g. "2m"
    size: str            # "LxC": layers x width
    params: int          # N: parameters without the position table
    tokens: int          # D: tokens trained on
    seconds: float       # training time
    val_loss: float

    @property
    def flops(self) -> float:
        return 6.0 * self.params * self.tokens


def parse_size(spec: str) -> dict:
    """"4x128" -> 4 blocks 128 wide, with 64-wide heads (at least one)."""
    layers, _, width = spec.lower().partition("x")
    if not (layers.isdigit() and width.isdigit()) or int(layers) < 1 or int(width) < 8:
        raise TinyGPTError(f"a model size is LAYERSxWIDTH, e.g. 4x128; got {spec!r}")
    n_embd = int(width)
    n_head = max(1, n_embd // 64)
    if n_embd % n_head:
        raise TinyGPTError(f"width {n_embd} does not split into {n_head} heads of 64; pick a multiple of 64")
    return {"n_layer": int(layers), "n_embd": n_embd, "n_head": n_head}


def sweep(data: str, sizes: Sequence[str], budgets: Sequence[str], out: Path, base: dict,
          log: Callable[[str], None] = print) -> list[SweepRun]:
    """Train every size at every budget (``tinygpt train --max-time``, or ``--max-tokens``
    C / 6N for a compute budget; one after another on this machine), each a run directory
    under ``out``; their final losses."""
    from ..train import Session

    shapes = [parse_size(s) for s in sizes]
    runs = []
    for budget in budgets:
        kind, amount = parse_budget(budget)
        for size, shape in zip(sizes, shapes):
            path = out / f"{budget}-{size}"
            settings = {**base, **shape, "data": data, "out": str(path),
                        "eval_interval": 10**9, "progress": False, "max_new_tokens": 0}
            if kind == "time":
                settings["max_time"] = amount
            else:  # the token count that spends the compute: N is known once the model is built
                n = Session.start({**settings, "max_steps": 1}, force=True, log=lambda _: None).trainer.model \
                    .num_params(non_embedding=True)
                settings["max_tokens"] = max(1, round(amount / (6 * n)))
            session = Session.start(settings, force=True, log=lambda _: None)
            summary = session.fit()
            if summary["signal"]:  # Ctrl+C / SIGTERM stops the sweep, not just this run (saved, resumable)
                raise SweepStopped(int(summary["signal"]), path)
            t = session.trainer
            if not session.has_val():
                raise TinyGPTError("the sweep scores every run on held-out text: give the data a validation split "
                                   "(--val-fraction)")
            if t.state.tokens == 0:
                raise TinyGPTError(f"{budget} was too short for one step of the {size} model; give longer --budgets")
            # Every run scored alike, on the same held-out batches, whatever it evaluated while training.
            val = t.evaluate(session.batches("val", seed=0), t.cfg.eval_batches)
            run = SweepRun(budget, size, t.model.num_params(non_embedding=True), t.state.tokens, t.state.elapsed, val)
            log(f"{budget:>6} {size:>8}: {run.params / 1e6:7.3f}M parameters, {run.tokens:>12,} tokens, "
                f"val loss {run.val_loss:.4f}")
            runs.append(run)
    return runs


def isoflop_minima(runs: Sequence[SweepRun]) -> list[tuple[str, float, float]]:
    """Chinchilla's approach 2, a check on the fitted law that assumes no formula: for each
    budget with three or more sizes, (budget, its compute C, the model size N at the minimum of
    a parabola through its losses in log N), the vertex kept within the sizes it ran."""
    out = []
    for budget in dict.fromkeys(r.budget for r in runs):
        mine = [r for r in runs if r.budget == budget]
        if len(mine) < 3:
            continue
        log_n = np.log([r.params for r in mine])
        a, b, _ = np.polyfit(log_n, np.log([r.val_loss for r in mine]), 2)
        vertex = -b / (2 * a) if a > 0 else log_n[int(np.argmin([r.val_loss for r in mine]))]
        out.append((budget, float(np.median([r.flops for r in mine])),
                    float(np.exp(np.clip(vertex, log_n.min(), log_n.max())))))
    return out


def minima_exponent(minima: Sequence[tuple[str, float, float]]) -> float | None:
    """a in N_opt ~ C^a through :func:`isoflop_minima` (two budgets or more), else None."""
    if len(minima) < 2:
        return None
    return float(np.polyfit(np.log([c for _, c, _ in minima]), np.log([n for *_, n in minima]), 1)[0])


def flops_per_second(runs: Sequence[SweepRun]) -> float:
    """This machine's training rate in 6ND FLOPs per second (the median run's)."""
    return float(np.median([r.flops / r.seconds for r in runs if r.seconds > 0]))


def draw_isoflops(runs: Sequence[SweepRun], law: ScalingLaw, path: str | Path) -> Path:
    """Loss against model size, one colour per budget: the runs, the law's iso-FLOP curve at
    the budget's compute, and its minimum; plus the fitted frontier N_opt(C)."""
    from matplotlib.figure import Figure

    from .pictures import STYLES, save

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    budgets = list(dict.fromkeys(r.budget for r in runs))
    for i, budget in enumerate(budgets):
        mine = [r for r in runs if r.budget == budget]
        c = float(np.median([r.flops for r in mine]))
        marker, line = STYLES[i % len(STYLES)]
        ns = np.array([r.params for r in mine], dtype=float)
        left.scatter(ns, [r.val_loss for r in mine], marker=marker, label=f"{budget}: C = {c:.2e} FLOPs")
        grid = np.geomspace(ns.min() / 3, ns.max() * 3, 100)
        left.plot(grid, law.loss(grid, c / (6 * grid)), line, alpha=0.7)
        n_opt, d_opt = law.optimal(c)
        left.plot([n_opt], [law.loss(n_opt, d_opt)], "*", markersize=14, color=left.lines[-1].get_color())
    left.set_xscale("log")
    left.set_xlabel("parameters N (without the position table)")
    left.set_ylabel("validation loss")
    left.set_title("iso-FLOP curves: runs, fitted L(N, C/6N), its minimum (star)")
    left.legend(fontsize=8)
    cs = np.geomspace(min(r.flops for r in runs) / 3, max(r.flops for r in runs) * 30, 50)
    right.plot(cs, [law.optimal(c)[0] for c in cs], "-", label="N_opt(C)")
    right.plot(cs, [law.optimal(c)[1] for c in cs], "--", label="D_opt(C) (tokens)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("compute C = 6 N D (FLOPs)")
    right.set_ylabel("compute-optimal parameters / tokens")
    right.set_title(f"fitted frontier: L = {law.E:.2f} + {law.A:.3g}/N^{law.alpha:.2f} + {law.B:.3g}/D^{law.beta:.2f}",
                    fontsize=9)
    right.legend(fontsize=8)
    return save(fig, path)
