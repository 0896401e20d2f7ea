"""How a mixture-of-experts run's routers spread the tokens over training: read from the
``expert_load`` that training writes into metrics.jsonl (:mod:`tinygpt.train.experts`),
judged (an expert the router has given up on) and drawn as one heatmap per MoE block."""

from __future__ import annotations

import math

import numpy as np

from ..moe import is_moe_layer

# An expert whose share stays under this fraction of the balanced 1/E over the last tenth of
# training is collapsed: the router has stopped sending it tokens, so it stops learning.
COLLAPSED_SHARE = 0.25
MAX_COLUMNS = 300  # steps drawn as columns; more are averaged in runs


def history(records: list[dict], config) -> dict | None:
    """{"steps", "blocks", "load"} from metrics records: load[s][b][e] is expert e's share of
    MoE block ``blocks[b]``'s assignments at step ``steps[s]``; None for a dense run."""
    rows = [r for r in records if "expert_load" in r]
    if not rows or not config.moe_experts:
        return None
    blocks = [i for i in range(config.n_layer) if is_moe_layer(config, i)]
    return {"steps": [r["step"] for r in rows], "blocks": blocks, "load": [r["expert_load"] for r in rows],
            "dropped": [r.get("moe_dropped", 0.0) for r in rows]}


def judge(h: dict) -> list[str]:
    """One line per collapsed expert (with the fix), judged on the last tenth of training."""
    load = np.asarray(h["load"], dtype=float)  # (steps, blocks, E)
    E = load.shape[-1]
    late = load[-max(1, len(load) // 10):].mean(axis=0)  # (blocks, E)
    out = []
    for b, block in enumerate(h["blocks"]):
        for e in np.flatnonzero(late[b] < COLLAPSED_SHARE / E):
            out.append(f"block {block} expert {e} gets {late[b, e]:.1%} of its tokens (balanced: {1 / E:.1%}): "
                       "the router has collapsed onto the others; raise --moe-aux-weight (e.g. 0.02-0.05)")
    return out


def summary(h: dict) -> list[str]:
    """Text lines: each block's last expert shares (x E: 1 is balanced) and what capacity dropped."""
    load = np.asarray(h["load"], dtype=float)
    E = load.shape[-1]
    lines = [f"expert load at step {h['steps'][-1]} (share x {E}; 1 = balanced)"
             + (f", {np.mean(h['dropped']):.2%} of assignments dropped by capacity" if any(h["dropped"]) else "")]
    for b, block in enumerate(h["blocks"]):
        lines.append(f"  block {block}: " + " ".join(f"{v * E:5.2f}" for v in load[-1, b]))
    return lines


def figure(name: str, h: dict):
    """A heatmap per MoE block: experts down, steps across, colour = share x E (1 balanced)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    load = np.asarray(h["load"], dtype=float)  # (steps, blocks, E)
    steps = np.asarray(h["steps"])
    if len(steps) > MAX_COLUMNS:  # a long run: mean over runs of consecutive steps, a column each
        cut = np.array_split(np.arange(len(steps)), MAX_COLUMNS)
        load, steps = np.stack([load[c].mean(axis=0) for c in cut]), np.array([steps[c[-1]] for c in cut])
    E, n = load.shape[-1], len(h["blocks"])
    cols = math.ceil(math.sqrt(n))
    rows = -(-n // cols)
    fig = Figure(figsize=(5.2 * cols, 0.35 * E * rows + 1.6 * rows + 0.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    top = max(2.0, float((load * E).max()))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=top)  # white at the balanced share
    for ax, b in zip(axes, range(n)):
        im = ax.imshow((load[:, b, :] * E).T, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest",
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, E - 0.5, -0.5))
        ax.set_title(f"block {h['blocks'][b]}", fontsize=10)
        ax.set_ylabel("expert")
        ax.set_yticks(range(E))
        ax.set_xlabel("step")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes[:n].tolist(), label="share of tokens x E (1 = balanced, 0 = unused)", shrink=0.9)
    fig.suptitle(f"{name}: tokens per expert over training", fontsize=11)
    return fig
