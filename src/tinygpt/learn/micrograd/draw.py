"""The lesson's two pictures: the trained MLP's decision boundary, and a small computation graph.

Both are drawn with matplotlib's object API (no pyplot) and written by
:func:`tinygpt.analysis.pictures.save`. The graph is laid out here by hand (graphviz is not a
dependency): columns by depth in the graph, inputs on the left, the output on the right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from .engine import Value, topological_order
from .nn import MLP, scores

CLASS_COLOURS = {-1: "#c0392b", 1: "#2166ac"}  # the ends of the RdBu colour map the scores use


def _save(fig: Figure, path: Path) -> Path:
    # Imported here: the picture writer brings in torch (through the atomic file writer),
    # which the engine and the training loop do not need.
    from ...analysis.pictures import save

    return save(fig, path)


# ---------------------------------------------------------------------------- decision boundary

def decision_boundary(model: MLP, X: np.ndarray, y: np.ndarray, path: str | Path, title: str) -> Path:
    """The model's score over the plane as filled contours (red: class -1, blue: class +1),
    the boundary where the score is 0 as a black line, and the data points (X, y) on top."""
    pad = 0.5
    (x0, y0), (x1, y1) = X.min(axis=0) - pad, X.max(axis=0) + pad
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    grid = scores(model, np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gx.shape)

    # A symmetric colour scale around 0, clipped so a few far-off scores do not wash it out.
    top = max(float(np.percentile(np.abs(grid), 95)), 1e-6)
    # The figure takes the data's proportions, so both axes get about the same scale (the
    # data's true shape) while the colour bar still spans the plot's full height.
    aspect = float(np.clip((y1 - y0) / (x1 - x0), 0.4, 1.6))
    fig = Figure(figsize=(7.6, 6.0 * aspect + 1.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    filled = ax.contourf(gx, gy, np.clip(grid, -top, top), levels=np.linspace(-top, top, 21), cmap="RdBu",
                         alpha=0.75)
    ax.contour(gx, gy, grid, levels=[0.0], colors="black", linewidths=1.5)
    for label, colour in CLASS_COLOURS.items():
        pts = X[y == label]
        ax.scatter(pts[:, 0], pts[:, 1], s=28, c=colour, edgecolors="white", linewidths=0.8, zorder=3)
    fig.colorbar(filled, ax=ax, label="MLP score (sign = predicted class)", ticks=[-top, 0, top],
                 format="%.1f")
    handles = [Line2D([], [], marker="o", ls="", color=CLASS_COLOURS[-1], mec="white", label="class -1"),
               Line2D([], [], marker="o", ls="", color=CLASS_COLOURS[1], mec="white", label="class +1"),
               Line2D([], [], color="black", label="score = 0")]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    return _save(fig, Path(path))


# ---------------------------------------------------------------------------- computation graph

BOX_W, BOX_H = 2.0, 0.9  # a value's box, in data units
COL = 3.6  # from one value column to the next; each op's circle sits halfway between
ROW = 1.25  # from one slot to the next, vertically
OP_R = 0.3


def _layout(root: Value) -> dict[int, tuple[float, float]]:
    """Centre (x, y) of each value's box, keyed by ``id``.

    x: a result sits one column right of its deepest input; an input such as a weight sits
    just left of the first result that uses it, so no arrow jumps across the picture.
    y: the inputs are stacked in the order the expression names them; a result sits at the
    mean height of its inputs (like a tree drawn from its leaves), moved down if another box
    of its column is already there.
    """
    order = topological_order(root)
    depth: dict[int, int] = {}
    for v in order:
        depth[id(v)] = 1 + max((depth[id(c)] for c in v._prev), default=-1)
    first_use: dict[int, int] = {}  # the depth of the shallowest result that uses each value
    for v in order:
        for c in v._prev:
            first_use[id(c)] = min(first_use.get(id(c), depth[id(v)]), depth[id(v)])
    for v in order:
        if not v._prev and id(v) in first_use:  # a leaf: pull it right, next to its first user
            depth[id(v)] = first_use[id(v)] - 1

    slot = {id(leaf): i * ROW for i, leaf in enumerate(_leaves_in_reading_order(root))}
    height: dict[int, float] = {}
    for d in sorted(set(depth.values())):  # left to right: a column's inputs are placed before it
        column = [v for v in order if depth[id(v)] == d]
        wanted = {id(v): sum(height[id(c)] for c in v._prev) / len(v._prev) if v._prev else slot[id(v)]
                  for v in column}
        below = -float("inf")
        for v in sorted(column, key=lambda v: wanted[id(v)]):
            height[id(v)] = below = max(wanted[id(v)], below + ROW)
    return {key: (depth[key] * COL, -height[key]) for key in depth}  # y grows downwards


def _leaves_in_reading_order(root: Value) -> list[Value]:
    """The graph's inputs as the expression names them, left to right (a pre-order walk)."""
    leaves, seen, stack = [], set(), [root]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if not v._prev:
            leaves.append(v)
        stack.extend(reversed(v._prev))  # so the first input comes off the stack first
    return leaves


def _box(ax, v: Value, xy: tuple[float, float], colour: str) -> FancyBboxPatch:
    x, y = xy
    box = FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H, boxstyle="round,pad=0.02,rounding_size=0.12",
                         fc=colour, ec="#555555", lw=1.0, zorder=2)
    ax.add_patch(box)
    label = v.label  # unlabelled results show only their numbers
    ax.text(x, y + 0.2, label, ha="center", va="center", fontsize=9 if len(label) <= 10 else 7.5,
            fontweight="bold", zorder=3)
    ax.text(x, y - 0.17, f"data {v.data:+.4f}\ngrad {v.grad:+.4f}", ha="center", va="center", fontsize=7.5,
            family="monospace", linespacing=1.3, zorder=3)
    return box


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], start_patch, end_patch) -> None:
    # Given the shapes at both ends, matplotlib clips the arrow to their outlines.
    ax.add_patch(FancyArrowPatch(start, end, patchA=start_patch, patchB=end_patch, arrowstyle="-|>",
                                 mutation_scale=11, color="#444444", lw=1.0, zorder=1))


def _op_symbol(op: str) -> str:
    """``*`` -> ``×`` and so on; an op with a constant keeps it (``+1``, ``×2``, ``^2``)."""
    return op.replace("**", "^").replace("*", "\u00d7").replace("/", "\u00f7").replace("-", "\u2212")


def graph(root: Value, path: str | Path, title: str = "") -> Path:
    """Draw the graph behind ``root``: a box per value (label, data, grad), a circle per
    operation, arrows from inputs to results. Meant for small expressions (a few dozen nodes)."""
    order = topological_order(root)
    if len(order) > 60:
        raise ValueError(f"graph() draws small expressions; this one has {len(order)} values")
    pos = _layout(root)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    inches = 0.55  # per data unit: the boxes' text at a readable size
    fig = Figure(figsize=(inches * (max(xs) - min(xs) + BOX_W) + 0.6, inches * (max(ys) - min(ys) + BOX_H) + 1.2),
                 dpi=120, layout="constrained")
    ax = fig.add_subplot()

    boxes = {}
    for v in order:
        colour = "#fde3c4" if v is root else "#d6e6f5" if not v._prev else "#eeeeee"
        boxes[id(v)] = _box(ax, v, pos[id(v)], colour)
    for v in order:
        if not v._prev:
            continue
        x, y = pos[id(v)]
        centre = (x - COL / 2, y)  # the op's circle, halfway from its inputs' column
        op = Circle(centre, OP_R, fc="white", ec="#555555", lw=1.0, zorder=2)
        ax.add_patch(op)
        symbol = _op_symbol(v._op)
        ax.text(*centre, symbol, ha="center", va="center", zorder=3,
                fontsize=11 if len(symbol) <= 1 else 8 if len(symbol) <= 4 else 6)
        _arrow(ax, centre, (x, y), op, boxes[id(v)])
        for child in v._prev:
            _arrow(ax, pos[id(child)], centre, boxes[id(child)], op)

    ax.set_xlim(min(xs) - BOX_W / 2 - 0.2, max(xs) + BOX_W / 2 + 0.2)
    ax.set_ylim(min(ys) - BOX_H / 2 - 0.3, max(ys) + BOX_H / 2 + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    legend = [FancyBboxPatch((0, 0), 1, 1, fc=c, ec="#555555", label=t) for c, t in
              (("#d6e6f5", "input / parameter"), ("#eeeeee", "intermediate"), ("#fde3c4", "output"))]
    legend.append(Line2D([], [], marker="o", ls="", mfc="white", mec="#555555", ms=10, label="operation"))
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))
