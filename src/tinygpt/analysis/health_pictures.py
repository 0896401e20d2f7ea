"""The pictures of ``tinygpt diagnose`` (:mod:`.health`'s numbers drawn): activations per
layer against the activation's flat region, gradients per layer, gradient and update
ratios per matrix against the healthy range of the optimizer that made them, and what
``--diagnostics`` recorded over training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..train.health import FLAT_BELOW
from . import experts
from .health import (
    COLLAPSED_ENTROPY,
    DEAD_TOO_MANY,
    GRAD_TOO_LARGE,
    OPTIMIZER_NAMES,
    latest_updates,
    optimizers,
    to_peak,
    update_range,
)


def hist_line(ax, hist: dict, label: str, **style) -> None:
    """A histogram from ``train.health.histogram`` as a density curve (several overlay legibly)."""
    counts = np.asarray(hist["counts"])
    edges = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    density = counts / max(counts.sum() * (edges[1] - edges[0]), 1e-30)
    ax.plot(centres, density, label=label, linewidth=1.2, **style)


def draw(name: str, result: dict, out: Path, recorded: list[dict] | None = None) -> list[Path]:
    """:func:`figures` written as PNGs under ``out``."""
    from . import pictures

    return [pictures.save(fig, out / f"{stem}.png") for stem, fig in figures(name, result, recorded).items()]


def figures(name: str, result: dict, recorded: list[dict] | None = None) -> dict:
    """The pictures of a diagnosis, by file name: activations, gradients (for a model with
    blocks), ratios, and over_training when the run recorded ``--diagnostics``."""
    out = {"activations": _activations(name, result)}
    gradients = _gradients(name, result)
    if gradients is not None:
        out["gradients"] = gradients
    by = {w["name"]: w.get("optimizer", "adamw") for w in result["weights"]}  # for rows that name none
    out["ratios"] = _ratios(name, result, recorded, by)
    if recorded:
        out["over_training"] = _over_training(name, recorded, by)
    if "experts" in result:
        out["experts"] = experts.figure(name, result["experts"])
    return out


def _activations(name: str, result: dict):
    from matplotlib.figure import Figure

    from .pictures import STYLES

    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for layer in result["layers"]:
        _, line = STYLES[layer["layer"] % len(STYLES)]
        hist_line(ax, layer["pre_hist"], f"layer {layer['layer']}: mean {layer['pre_mean']:+.2f}, "
                                          f"std {layer['pre_std']:.2f}, flat {layer['flat']:.1%}", linestyle=line)
    left, right = ax.get_xlim()
    # The band lies left of the threshold, and is shown even when no value reaches it.
    flat, activation = result.get("flat_below", FLAT_BELOW), result.get("activation", "GELU")
    left = min(left, flat - 0.15 * max(right - flat, 1.0))
    right = max(right, flat + 1.0)
    ax.axvspan(left, flat, color="grey", alpha=0.2, linewidth=0, label=f"{activation}'s flat region (x < {flat:g})")
    ax.set_xlim(left, right)
    ax.set_xlabel(f"MLP pre-activation (input of {activation})")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: forward activations per layer", fontsize=11)
    return fig


def _gradients(name: str, result: dict):
    from matplotlib.figure import Figure

    kinds: dict[str, list[dict]] = {}
    for w in result["weights"]:
        if ".h." in f".{w['name']}":
            kinds.setdefault(w["name"].split(".", 3)[-1], []).append(w)
    if not kinds:
        return None
    cols = min(len(kinds), 2)
    rows_n = -(-len(kinds) // cols)
    fig = Figure(figsize=(6.5 * cols, 4.2 * rows_n), dpi=100, layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False).flat
    for ax, (kind, rows) in zip(axes, kinds.items()):
        for w in rows:
            layer = w["name"].split(".")[2]
            hist_line(ax, w["grad_hist"], f"layer {layer}: std {w['grad_std']:.1e}")
        reach = 5 * max(w["grad_std"] for w in rows)  # the tails beyond hold almost nothing
        if reach > 0:
            ax.set_xlim(-reach, reach)
        ax.set_title(f"gradient of {kind}", fontsize=10)
        ax.set_xlabel("gradient value")
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: backward gradients per layer", fontsize=11)
    return fig


def _optimizer_colour(kind: str) -> str:
    return {"adamw": "tab:green", "muon": "tab:purple"}.get(kind, "tab:grey")


def _ratios(name: str, result: dict, recorded: list[dict] | None, by: dict[str, str]):
    """Per weight matrix: the gradient-to-weight ratio (too large above 0), the last
    recorded one-step update ratio on the bar of its optimizer's healthy range, and the
    ratio between two checkpoints when ``--previous`` gave one (many steps: not judged)."""
    from matplotlib.figure import Figure

    weights = result["weights"]
    fig = Figure(figsize=(max(8, 0.35 * len(weights) + 3), 5.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    xs = np.arange(len(weights))
    ax.axhline(GRAD_TOO_LARGE, color="tab:red", linestyle="--", linewidth=1,
               label="gradient as large as the weight: above, too large")
    ax.plot(xs, [np.nan if w["grad_to_weight"] is None else w["grad_to_weight"] for w in weights], "o",
            color="tab:blue", label="log10 std(grad) / std(weight)")
    one_step = latest_updates(recorded, by)
    if one_step:
        for kind in sorted({k for *_, k in one_step.values()}):
            lo, hi = update_range(kind)
            at = [x for x, w in zip(xs, weights) if one_step.get(w["name"], (0, 0, None))[2] == kind]
            ax.bar(at, hi - lo, bottom=lo, width=0.7, color=_optimizer_colour(kind), alpha=0.18,
                   label=f"healthy one-step update under {OPTIMIZER_NAMES.get(kind, kind)} "
                         f"(10^{lo:g} to 10^{hi:g})")
        scaled = to_peak(recorded[-1]) != 0
        ax.plot(xs, [one_step[w["name"]][1] if w["name"] in one_step else np.nan for w in weights], "s",
                color="black", label=f"log10 std(update) / std(weight), one step (step {recorded[-1]['step']}"
                                     + (", scaled to the peak rate)" if scaled else ")"))
    between = [w.get("update_to_weight") for w in weights]
    if any(u is not None for u in between):
        ax.plot(xs, [np.nan if u is None else u for u in between], "^", color="tab:orange",
                label="log10 std(w - w_previous) / std(w_previous): the steps between two checkpoints")
    ax.set_xticks(xs, [w["name"].replace("transformer.", "") for w in weights], rotation=90, fontsize=7)
    ax.set_ylabel("log10 ratio")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{name}: gradient and update sizes relative to the weights", fontsize=11)
    return fig


def _over_training(name: str, recorded: list[dict], by: dict[str, str]):
    from matplotlib.figure import Figure

    from .pictures import STYLES

    steps = [r["step"] for r in recorded]
    fig = Figure(figsize=(16, 4.8), dpi=100, layout="constrained")
    a, b, c = fig.subplots(1, 3)
    kinds = {}
    for j, (w, kind) in enumerate(zip(recorded[0]["weights"], optimizers(recorded[0], by))):
        n = w["name"]
        kinds.setdefault(kind, None)
        ys = [np.nan if r["weights"][j].get("update_to_weight") is None
              else r["weights"][j]["update_to_weight"] + to_peak(r) for r in recorded]
        if n.endswith("c_fc.weight") or not n.startswith("transformer.h."):
            a.plot(steps, ys, label=f"{n.replace('transformer.', '')} ({OPTIMIZER_NAMES.get(kind, kind)})")
        else:
            a.plot(steps, ys, color="grey", alpha=0.3, linewidth=0.8)
    for kind in kinds:
        lo, hi = update_range(kind)
        a.axhspan(lo, hi, color=_optimizer_colour(kind), alpha=0.12, linewidth=0,
                  label=f"healthy under {OPTIMIZER_NAMES.get(kind, kind)} (10^{lo:g} to 10^{hi:g})")
    warm = [r["step"] for r in recorded if r.get("warmup")]
    if warm:  # to halfway to the first probe after warmup: one probe in warmup still gets a band
        after = [s for s in steps if s > max(warm)]
        end = (max(warm) + after[0]) / 2 if after else max(warm) + 0.02 * (max(steps) - min(steps) or 1)
        a.axvspan(min(steps), end, color="grey", alpha=0.1, linewidth=0, label="warmup: not judged")
    scaled = any(to_peak(r) for r in recorded)
    a.set_title("log10 update / weight per step" + (", at the peak rate" if scaled else "")
                + " (grey: other matrices)", fontsize=10)
    a.legend(fontsize=7)
    n_layers = len(recorded[0]["layers"])
    # Layers often coincide (every one at 0% dead): each has its own marker and dash, and
    # its dead-unit points sit a little to the side of the step (a dodge), so none hides another.
    dodge = 0.012 * (max(steps) - min(steps) or 1)
    for i in range(n_layers):
        marker, line = STYLES[i % len(STYLES)]
        style = dict(marker=marker, linestyle=line, markersize=4, markevery=max(1, len(steps) // 12),
                     label=f"layer {i}", alpha=0.85)
        b.plot([s + (i - (n_layers - 1) / 2) * dodge for s in steps],
               [r["layers"][i]["dead"] * 100 for r in recorded], **style)
        c.plot(steps, [r["layers"][i]["attn_entropy"] for r in recorded], **style)
    b.axhline(DEAD_TOO_MANY * 100, color="tab:red", linestyle="--", linewidth=1,
              label=f"{DEAD_TOO_MANY:.0%}: too many dead")
    top = max(r["layers"][i]["dead"] * 100 for r in recorded for i in range(n_layers))
    b.set_ylim(-1, max(DEAD_TOO_MANY * 100 * 1.5, top * 1.1))
    c.axhline(COLLAPSED_ENTROPY, color="tab:red", linestyle="--", linewidth=1,
              label=f"{COLLAPSED_ENTROPY:g}: collapsed (each query on one key)")
    c.set_ylim(0, 1.02)  # normalised entropy: the whole scale, never an offset axis around one value
    b.set_title("dead MLP units: flat for 99% of tokens (%; layers side by side)", fontsize=10)
    c.set_title("attention entropy (0 sharp, 1 diffuse)", fontsize=10)
    for ax in (a, b, c):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    b.legend(fontsize=7)
    c.legend(fontsize=7)
    fig.suptitle(f"{name}: training health over training (--diagnostics)", fontsize=11)
    return fig
