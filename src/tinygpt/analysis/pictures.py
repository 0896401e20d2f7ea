"""PNG pictures with matplotlib, headless: figures are built with the object API on the
Agg canvas (no pyplot, no display, no global state), so they draw the same on a server,
in tests and on a laptop. ``show`` opens a written PNG in a window when asked for.

Each function takes numbers computed elsewhere (:mod:`.attention`, :mod:`.curves`,
:mod:`.health`), writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..checkpoint import atomic_path
from ..run import RunDir

MAX_LABELS = 64  # tick labels per axis before they are thinned (every k-th token)
CMAP = "viridis"  # perceptually uniform: equal steps of weight look like equal steps of colour
STYLES = [("o", "-"), ("s", "--"), ("D", ":"), ("^", "-.")]  # marker, line: series told apart without colour


def folder(kind: str, out: str | Path | None = None, model: str | Path | None = None) -> Path:
    """Where pictures of ``kind`` ('attention', or 'plots' for training health and curves)
    go: ``out`` when given, else the run's own folder of that kind when ``model`` is a run,
    else ``./kind``."""
    if out is not None:
        return Path(out)
    if model is not None and RunDir.is_run(model):
        return RunDir(model).pictures_dir(kind)
    return Path(kind)


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    return path


def show(path: str | Path) -> None:
    """Open a written picture in a window (needs a display and an interactive backend)."""
    import matplotlib.pyplot as plt

    img = plt.imread(str(path))
    fig = plt.figure(figsize=(img.shape[1] / 100, img.shape[0] / 100))
    fig.figimage(img)
    plt.show()


def short_number(v: float, _=None) -> str:
    """200k, 1.5M, 2G, 0.5, 3: a tick label (token counts written out in full run together)."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:g}{unit}"
    return f"{v:g}"


def count_ticks(ax, axis: str = "x") -> None:
    """Counts as 200k, 1.5M, 2G on a linear axis."""
    from matplotlib.ticker import FuncFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(FuncFormatter(short_number))


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain numbers (2, 3, 100, 10k) on a log-scaled axis instead of matplotlib's
    "4.4x10^0"; the in-between ticks are labelled only while the axis spans about a decade
    or less, where the powers of ten are too few to read a value by."""
    from matplotlib.ticker import FuncFormatter

    which = ax.yaxis if axis == "y" else ax.xaxis

    def narrow() -> bool:
        lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
        return lo > 0 and math.log10(hi / lo) < 1.2

    which.set_major_formatter(FuncFormatter(short_number))
    which.set_minor_formatter(FuncFormatter(lambda v, _: short_number(v) if narrow() else ""))


def _ticks(ax, labels: Sequence[str], axis: str, fontsize: float) -> None:
    step = max(1, math.ceil(len(labels) / MAX_LABELS))
    idx = list(range(0, len(labels), step))
    shown = [labels[i] for i in idx]
    if axis == "x":
        ax.set_xticks(idx, shown, rotation=90, fontsize=fontsize)
    else:
        ax.set_yticks(idx, shown, fontsize=fontsize)


def _size_for(n: int) -> float:
    """Inches for a labelled n x n heatmap: room for each shown label."""
    return float(min(max(5.0, 0.16 * min(n, MAX_LABELS) + 2.5), 14.0))


def _top(matrix: np.ndarray) -> float:
    """The top of a causal map's colour scale: its largest weight past the first query. The
    first query sees one key and always puts 1.0 on it, which would make every other cell
    look dark; that cell runs off the scale instead (the colour bar's arrow)."""
    body = matrix[..., 1:, :] if matrix.shape[-2] > 1 else matrix
    return max(float(np.max(body)), 1e-9)


def heatmap(matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str, *,
            xlabel: str = "key (attended to)", ylabel: str = "query (attending)",
            colorbar: str = "attention weight") -> Path:
    """One square matrix (rows = queries) with token labels on both axes."""
    n = len(labels)
    size = _size_for(n)
    fig = Figure(figsize=(size + 1.2, size), dpi=110)
    ax = fig.add_subplot()
    top = _top(matrix)
    im = ax.imshow(matrix, cmap=CMAP, vmin=0.0, vmax=top, interpolation="nearest")
    fontsize = 8 if n <= 40 else 6
    _ticks(ax, labels, "x", fontsize)
    _ticks(ax, labels, "y", fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=colorbar,
                 extend="max" if float(np.max(matrix)) > top else "neither")
    return save(fig, path)


def grid(matrices: np.ndarray, path: str | Path, title: str, *, names: Sequence[str] | None = None,
         labels: Sequence[str] | None = None, rows: int | None = None) -> Path:
    """Small multiples of (N, T, T) matrices, each on its own colour scale [0, its max] (a
    diffuse head stays readable beside a sharp one): one colour bar, in shares of a panel's
    largest weight, and that largest weight in each panel's title. Token labels only where
    they fit (short texts)."""
    N = matrices.shape[0]
    cols = math.ceil(N / rows) if rows else min(N, 4 if N <= 8 else 6)
    rows = rows or math.ceil(N / cols)
    cell = 2.4 if labels is None or len(labels) > 24 else 3.6
    fig = Figure(figsize=(cols * cell, rows * cell + 0.6), dpi=110, layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, ax in enumerate(axes.flat):
        if i >= N:
            ax.axis("off")
            continue
        m = matrices[i]
        top = _top(m)
        im = ax.imshow(m / top, cmap=CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{names[i]}, max {top:.2f}" if names is not None else f"max {top:.2f}", fontsize=8)
        if labels is not None and len(labels) <= 24:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=min(1.0, 0.4 + 0.15 * rows), pad=0.02, extend="max",
                 label="weight / the panel's max")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def masks(matrices: np.ndarray, names: Sequence[str], path: str | Path, title: str) -> Path:
    """(N, T, T) bool masks in a row, rows = queries: what may be attended in the colour of a
    full weight, the rest in the colour of none."""
    N, T = matrices.shape[:2]
    fig = Figure(figsize=(N * 3.0, 3.4), dpi=110, layout="constrained")
    for ax, m, name in zip(fig.subplots(1, N, squeeze=False)[0], matrices, names):
        ax.imshow(m.astype(float), cmap=CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{name} ({int(m.sum())} pairs)", fontsize=9)
        ax.set_xlabel("key position", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.axes[0].set_ylabel("query position", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def side_by_side(a: np.ndarray, b: np.ndarray, labels: Sequence[str], path: str | Path, title: str,
                 names: tuple[str, str]) -> Path:
    """The same head in two models, on one shared colour scale."""
    n = len(labels)
    size = _size_for(n)
    fig = Figure(figsize=(2 * size + 1.2, size), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    top = max(_top(a), _top(b))
    fontsize = 8 if n <= 40 else 6
    for ax, m, name in zip(axes, (a, b), names):
        im = ax.imshow(m, cmap=CMAP, vmin=0.0, vmax=top, interpolation="nearest")
        _ticks(ax, labels, "x", fontsize)
        _ticks(ax, labels, "y", fontsize)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key (attended to)")
    axes[0].set_ylabel("query (attending)")
    fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.02, label="attention weight",
                 extend="max" if max(float(a.max()), float(b.max())) > top else "neither")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def layer_head_table(values: np.ndarray, path: str | Path, title: str, *, label: str, vmin: float = 0.0,
                     vmax: float = 1.0, cmap: str = CMAP, fmt: str = "{:.2f}") -> Path:
    """An (L, nh) table of one number per head, coloured, each cell written out."""
    L, H = values.shape
    fig = Figure(figsize=(max(4.0, 0.7 * H + 2.0), max(2.5, 0.5 * L + 1.5)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(H), [str(h) for h in range(H)])
    ax.set_yticks(range(L), [str(layer) for layer in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if L * H <= 400:
        mid = (vmin + vmax) / 2
        for layer in range(L):
            for h in range(H):
                v = values[layer, h]
                ax.text(h, layer, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="black" if v > mid else "white")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return save(fig, path)
