"""Training curves from runs' metrics.jsonl: loss against steps, tokens and wall time,
learning rate, tokens/s and gradient norm, several runs overlaid; and bits per byte by step
from the evaluations ``tinygpt eval`` kept in a run's eval.json, once a text was scored at
two or more steps (the last checkpoint evaluated now and then, or best and last).

metrics.jsonl is append-only (one line per step, evaluations on their step's line), so a
run still training can be read at any time; a torn last line is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import opt
from ..errors import TinyGPTError
from ..run import RunDir

X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed"}  # x-axis name -> record key


@dataclass
class CurvesOptions:
    """What ``tinygpt plot`` draws."""
    runs: list[str] = opt([], "run directories (a run still training too)", positional=True, metavar="RUN")
    smooth: float = opt(0.9, "EMA factor for per-step lines (0: raw)")
    log: bool = opt(False, "log scale for the loss axes (and gradient norm)")
    log_x: bool = opt(False, "log scale for the x axes")
    watch: float | None = opt(None, "redraw every SECONDS until Ctrl+C", metavar="SECONDS")

    def __post_init__(self) -> None:
        if self.watch is not None and self.watch <= 0:
            raise TinyGPTError(f"--watch must be a positive number of seconds, got {self.watch}")

    def names(self) -> list[str]:
        """Each run's name in the legend: its folder's name, or the paths as given when two
        runs in different folders have the same name."""
        names = [Path(r).resolve().name for r in self.runs]
        return names if len(set(names)) == len(names) else [str(r) for r in self.runs]

    def picture(self, out: str | Path | None = None) -> Path:
        """Where the picture goes: ``out``, else curves.png in the first run's plots folder."""
        return Path(out) if out is not None else RunDir.open(self.runs[0]).pictures_dir("plots") / "curves.png"


@dataclass
class Curves:
    """One run's per-step series (arrays of equal length), its evaluations while training and
    the bits per byte that ``tinygpt eval`` recorded afterwards."""
    name: str
    step: dict[str, np.ndarray] = field(default_factory=dict)   # step, tokens, elapsed, loss, lr, tok_per_s, grad_norm
    evals: dict[str, np.ndarray] = field(default_factory=dict)  # step, tokens, elapsed, train_loss, val_loss
    bits_per_byte: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # text -> (steps, bpb)
    last_eval: dict | None = None  # the latest perplexity record of eval.json that has a step

    def summary(self) -> dict:
        s, e = self.step, self.evals
        out = {"run": self.name, "steps": int(s["step"][-1]), "tokens": int(s["tokens"][-1]),
               "time_s": round(float(s["elapsed"][-1]), 1), "last_loss_smoothed": float(smooth(s["loss"], 0.9)[-1]),
               "last_lr": float(s["lr"][-1]), "median_tok_per_s": float(np.nanmedian(s["tok_per_s"]))}
        if len(e.get("val_loss", [])) and np.isfinite(e["val_loss"]).any():
            best = int(np.nanargmin(e["val_loss"]))
            out.update(last_val_loss=float(e["val_loss"][-1]), best_val_loss=float(e["val_loss"][best]),
                       best_val_step=int(e["step"][best]))
        if self.last_eval is not None:
            last = self.last_eval
            out.update(eval_bits_per_byte=float(last["bits_per_byte"]), eval_step=last["step"], eval_data=last["data"])
        return out


def read(path: str | Path, name: str | None = None) -> Curves:
    run = RunDir.open(path)
    records = run.read_metrics()
    steps = [r for r in records if "loss" in r]
    if not steps:
        raise TinyGPTError(f"{run.metrics_path} has no training steps yet; plot it once the run has taken a step")
    curves = Curves(name or Path(path).resolve().name)

    def series(rows: list[dict], key: str) -> np.ndarray:
        return np.array([r.get(key, np.nan) if r.get(key) is not None else np.nan for r in rows], dtype=float)

    for key in ("step", "tokens", "elapsed", "loss", "lr", "tok_per_s", "grad_norm"):
        curves.step[key] = series(steps, key)
    evals = [r for r in records if "val_loss" in r or "train_loss" in r]
    for key in ("step", "tokens", "elapsed", "train_loss", "val_loss"):
        curves.evals[key] = series(evals, key)
    scored = perplexity_records(run)
    curves.bits_per_byte = bits_per_byte_series(scored)
    curves.last_eval = scored[-1] if scored else None
    return curves


def perplexity_records(run: RunDir) -> list[dict]:
    """eval.json's perplexity records that have a place on a curve (a step and a bits per byte),
    oldest first; weights from elsewhere (a .safetensors with no step) have none."""
    return [r for r in run.read_results("eval") if isinstance(r, dict) and r.get("kind") == "perplexity"
            and isinstance(r.get("step"), int) and isinstance(r.get("bits_per_byte"), (int, float))]


def bits_per_byte_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bits per byte by step (ascending), one series per text scored the same way, from records
    oldest first. A text is its description, length and stride: a text cut shorter (--max-chars)
    or another stride gives other numbers, so those are series of their own, labelled apart. A
    step scored again keeps its latest record; a text scored at fewer than two steps makes no curve."""
    texts: dict[tuple, dict[int, float]] = {}
    for r in records:
        texts.setdefault((r.get("data"), r.get("chars"), r.get("stride")), {})[r["step"]] = float(r["bits_per_byte"])
    kept = {text: points for text, points in texts.items() if len(points) >= 2}
    out = {}
    for (data, chars, stride), points in kept.items():
        label = str(data)
        if sum(other[0] == data for other in kept) > 1:
            label += f" ({chars} chars, stride {stride})"
        steps = sorted(points)
        out[label] = (np.array(steps), np.array([points[s] for s in steps]))
    return out


def smooth(values: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average with bias correction (so the first points are not pulled
    toward zero), skipping missing values; ``alpha`` 0 returns the values unchanged."""
    if not 0.0 <= alpha < 1.0:
        raise TinyGPTError(f"--smooth must be in [0, 1), got {alpha}")
    if alpha == 0.0:
        return values.copy()
    out = np.empty_like(values)
    avg, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            avg = alpha * avg + (1 - alpha) * v
            weight = alpha * weight + (1 - alpha)
        out[i] = avg / weight if weight else np.nan
    return out


def draw(runs: list[Curves], path: Path, *, smoothing: float = 0.9, log_y: bool = False,
         log_x: bool = False) -> Path:
    """:func:`figure` written as a PNG at ``path``."""
    from . import pictures

    return pictures.save(figure(runs, smoothing=smoothing, log_y=log_y, log_x=log_x), path)


def figure(runs: list[Curves], *, smoothing: float = 0.9, log_y: bool = False, log_x: bool = False):
    """Six panels: loss against step, tokens and wall time (faint raw steps, the smoothed
    line, val loss as dots), then learning rate, tokens/s and gradient norm by step; below
    them, full width, bits per byte by step when a run has such a series (else no such row)."""
    from matplotlib.figure import Figure

    from . import pictures

    scored = any(run.bits_per_byte for run in runs)
    fig = Figure(figsize=(16, 12 if scored else 8.5), dpi=100, layout="constrained")
    grid = fig.add_gridspec(3 if scored else 2, 3, height_ratios=(1, 1, 0.8) if scored else None)
    axes = np.array([[fig.add_subplot(grid[row, col]) for col in range(3)] for row in range(2)])
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (axis, key) in zip(axes[0], X_AXES.items()):
        for c, run in zip(colours, runs):
            x = run.step[key]
            ax.plot(x, run.step["loss"], color=c, alpha=0.15, linewidth=0.7)
            ax.plot(x, smooth(run.step["loss"], smoothing), color=c, linewidth=1.5, label=f"{run.name} train")
            if len(run.evals.get("val_loss", [])):
                ax.plot(run.evals[key], run.evals["val_loss"], "o--", color=c, markersize=4, linewidth=1,
                        label=f"{run.name} val")
        ax.set_xlabel({"step": "step", "tokens": "tokens", "time": "wall time (s)"}[axis])
        if axis == "tokens" and not log_x:
            pictures.count_ticks(ax, "x")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(f"loss by {axis}" + (f" (train smoothed, EMA {smoothing})" if smoothing else ""), fontsize=10)
    for ax, (key, label) in zip(axes[1], (("lr", "learning rate"), ("tok_per_s", "tokens/s"),
                                          ("grad_norm", "gradient norm (before clipping)"))):
        for c, run in zip(colours, runs):
            y = run.step[key] if key == "lr" else smooth(run.step[key], smoothing)
            ax.plot(run.step["step"], y, color=c, linewidth=1.2, label=run.name)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        if key == "grad_norm" and log_y:
            ax.set_yscale("log")
            pictures.plain_log_ticks(ax, "y")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        if log_x:
            ax.set_xscale("log")
            pictures.plain_log_ticks(ax, "x")
    for ax in axes[0]:
        if log_y:
            ax.set_yscale("log")
            pictures.plain_log_ticks(ax, "y")
    axes[0][0].legend(fontsize=8)
    if scored:
        ax = fig.add_subplot(grid[2, :])
        for c, run in zip(colours, runs):
            for i, (text, (steps, bpb)) in enumerate(run.bits_per_byte.items()):
                marker, line = pictures.STYLES[i % len(pictures.STYLES)]  # one per text a run was scored on
                ax.plot(steps, bpb, marker=marker, linestyle=line, color=c, markersize=5, linewidth=1.2,
                        label=f"{run.name}: {text}")
        ax.set_xlabel("step (of the checkpoint scored)")
        ax.set_ylabel("bits per byte")
        ax.set_title("bits per byte by step (tinygpt eval, from eval.json)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_xscale("log" if log_x else "linear")
        ax.set_yscale("log" if log_y else "linear")
        for axis, on in (("x", log_x), ("y", log_y)):
            if on:
                pictures.plain_log_ticks(ax, axis)
        (low, high), (first, last) = ax.get_xlim(), axes[0][0].get_xlim()
        ax.set_xlim(min(low, first), max(high, last))  # the steps of training above, so scores sit where they were
        ax.legend(fontsize=8)
    fig.suptitle("training curves: " + ", ".join(r.name for r in runs), fontsize=12)
    return fig


def format_summary(rows: list[dict]) -> str:
    """One line per run; the latest eval.json bits per byte (at its step) only when a run has one."""
    scored = any("eval_bits_per_byte" in r for r in rows)
    head = f"{'run':30} {'steps':>7} {'tokens':>12} {'time':>8} {'loss':>7} {'val':>7} {'best val':>14} {'tok/s':>8}"
    lines = [head + (f" {'bits/byte':>14}" if scored else "")]
    for r in rows:
        best = f"{r['best_val_loss']:.4f}@{r['best_val_step']}" if "best_val_loss" in r else "-"
        val = f"{r['last_val_loss']:.4f}" if "last_val_loss" in r else "-"
        bpb = f"{r['eval_bits_per_byte']:.4f}@{r['eval_step']}" if "eval_bits_per_byte" in r else "-"
        lines.append(f"{r['run'][:30]:30} {r['steps']:7d} {r['tokens']:12,d} {r['time_s']:7.0f}s "
                     f"{r['last_loss_smoothed']:7.4f} {val:>7} {best:>14} {r['median_tok_per_s']:8.0f}"
                     + (f" {bpb:>14}" if scored else ""))
    return "\n".join(lines)
