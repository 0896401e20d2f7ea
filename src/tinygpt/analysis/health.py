"""``tinygpt diagnose``: a model's training health from a checkpoint (a few batches of the
run's own data through :func:`tinygpt.train.health.probe`) and from what ``--diagnostics N``
recorded during training; judged against the makemore lectures' rules of thumb and drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_weights
from ..config import like, opt
from ..data import Batches, read_text
from ..errors import TinyGPTError
from ..generation import TinyGPT
from ..options import TextOptions
from ..run import RunDir
from ..train import run_data
from ..train.config import TrainConfig
from ..train.health import probe, update_ratios, weight_matrices

# Rules of thumb, with the fix each suggests.
DEAD_TOO_MANY = 0.10        # > 10% of the MLP's hidden units never leave GELU's flat region
DEAD_STD = 1e-3             # pre-activations this narrow carry no signal
EXPLODING_STD = 30.0        # residual stream std (it starts near 0.02-1)
COLLAPSED_ENTROPY = 0.02    # each query on exactly one key
UPDATE_TOO_LARGE = -2.0     # log10 update / weight; about -3 is healthy (Karpathy, makemore part 3)
UPDATE_TOO_SMALL = -4.5
GRAD_TOO_LARGE = 0.0        # log10 grad / weight above 0: gradients larger than the weights


@dataclass
class DiagnoseOptions:
    """What ``tinygpt diagnose`` probes a model with."""
    previous: str | None = opt(None, "earlier weights of the same model (best, last or a .safetensors path), for "
                                     "update-to-weight ratios", metavar="WEIGHTS")
    data: str | None = like(TextOptions, "data", shown="the run's own training data")
    batches: int = opt(4, "probe batches averaged")
    batch_size: int = like(TrainConfig, "batch_size", 8)

    def __post_init__(self) -> None:
        if self.batches < 1 or self.batch_size < 1:
            raise TinyGPTError("--batches and --batch-size must be at least 1")


@dataclass
class Diagnosis:
    """A model's health: what was measured, the problems judged from it, what training recorded."""
    name: str
    result: dict
    problems: list[str]
    recorded: list[dict] = field(default_factory=list)   # the run's diagnostics.jsonl (--diagnostics N)


def diagnose_model(lm: TinyGPT, name: str, source: str | Path, opts: DiagnoseOptions, log=print) -> Diagnosis:
    """Probe ``lm`` (loaded from ``source``) with ``opts``: its run's own training data unless
    ``--data`` names a text, update ratios against ``--previous`` weights, and judge it
    together with what the run recorded while training."""
    run = RunDir(source) if RunDir.is_run(source) else None
    previous = previous_weights(lm, run, opts.previous)
    batches = probe_batches(lm, run, opts.data, opts.batches, opts.batch_size, log=log)
    result = diagnose(lm, batches, previous)
    recorded = run.read_diagnostics(notice=log) if run else []
    return Diagnosis(name, result, judge(result, recorded), recorded)


def previous_weights(lm: TinyGPT, run: RunDir | None, previous: str | None) -> dict[str, torch.Tensor] | None:
    """The ``--previous`` weights, on ``lm``'s device: a run's 'best' or 'last', or a
    .safetensors file; None when none were asked for."""
    if previous is None:
        return None
    path = run.weights_path(previous) if run is not None and previous in ("best", "last") else Path(previous)
    if not path.is_file():
        raise TinyGPTError(f"--previous {previous}: no weights file at {path}; give best, last or a "
                           ".safetensors path")
    return {k: v.to(lm.device) for k, v in load_weights(path).items()}


def probe_batches(lm: TinyGPT, run: RunDir | None, data: str | None, n: int, batch_size: int,
                  log=print) -> list:
    """``n`` batches of training text: the run's own training split, or ``data`` (a file,
    folder, glob or shakespeare) encoded with the model's tokenizer."""
    T = lm.model.config.block_size
    if data is None and run is not None:
        tokens = run_data(run.path, log=log).train
    else:
        if data is None:
            raise TinyGPTError("this model has no run data to probe with; give --data FILE (or shakespeare)")
        text = read_text(data, max_chars=2_000_000, log=log)  # plenty for a few batches
        tokens = np.array(lm.tokenizer.encode(text), dtype=np.int64)
    if len(tokens) <= T:
        raise TinyGPTError(f"the probe text has {len(tokens)} tokens, fewer than the context ({T}) + 1; "
                           "give a longer --data")
    batches = Batches(tokens, batch_size, T, seed=0, split="train")
    return [next(batches) for _ in range(n)]


def diagnose(lm: TinyGPT, batches: list, previous: dict[str, torch.Tensor] | None = None) -> dict:
    """Statistics averaged over ``batches`` (histograms from the first), and the
    update-to-weight ratio against ``previous`` weights when given."""
    results = [probe(lm.model, b, lm.device, torch.float32, histograms=True) for b in batches]
    first = results[0]
    layers = []
    for i, layer in enumerate(first["layers"]):
        avg = {k: float(np.mean([r["layers"][i][k] for r in results])) for k in layer if k not in ("layer", "pre_hist")}
        layers.append({"layer": i, **avg, "pre_hist": layer["pre_hist"]})
    weights = []
    for j, w in enumerate(first["weights"]):
        row = {"name": w["name"], "w_std": w["w_std"], "grad_hist": w["grad_hist"]}
        for k in ("grad_mean", "grad_std"):
            row[k] = float(np.mean([r["weights"][j][k] for r in results]))
        ratios = [r["weights"][j]["grad_to_weight"] for r in results if r["weights"][j]["grad_to_weight"] is not None]
        row["grad_to_weight"] = float(np.mean(ratios)) if ratios else None
        weights.append(row)
    if previous is not None:
        now = {n: p.detach() for n, p in weight_matrices(lm.model).items()}
        missing = sorted(set(now) - set(previous))
        if missing:
            raise TinyGPTError(f"the --previous weights lack {missing[0]}; give a checkpoint of the same run")
        ratios = update_ratios({n: previous[n] for n in now}, now)
        for row in weights:
            row["update_to_weight"] = ratios[row["name"]]
    return {"loss": float(np.mean([r["loss"] for r in results])), "layers": layers, "weights": weights}


def judge(result: dict, recorded: list[dict] | None = None) -> list[str]:
    """One line per problem found, each with its likely fix; empty when all looks healthy."""
    out = []
    for layer in result["layers"]:
        i = layer["layer"]
        if layer["dead"] > DEAD_TOO_MANY:
            out.append(f"layer {i}: {layer['dead']:.0%} of the MLP's hidden units are dead (in GELU's flat region "
                       "for 99% of tokens, so they learn nothing): lower the learning rate, or check the init "
                       "scale of mlp.c_fc")
        if layer["pre_std"] < DEAD_STD:
            out.append(f"layer {i}: MLP inputs have std {layer['pre_std']:.1e} (dead): check the init, or the "
                       "learning rate that collapsed them")
        if layer["out_std"] > EXPLODING_STD:
            out.append(f"layer {i}: the residual stream has std {layer['out_std']:.1f} (exploding): lower the "
                       "learning rate, clip gradients (--grad-clip 1), or use --norm rmsnorm with --qk-norm")
        if layer["attn_entropy"] < COLLAPSED_ENTROPY:
            out.append(f"layer {i}: attention entropy {layer['attn_entropy']:.3f} (every query on one key): "
                       "lower the learning rate or try --qk-norm")
    for w in result["weights"]:
        g = w.get("grad_to_weight")
        if g is not None and g > GRAD_TOO_LARGE:
            out.append(f"{w['name']}: gradients larger than the weights (log10 ratio {g:.1f}): clip gradients "
                       "(--grad-clip 1) or lower the learning rate")
        if w["grad_std"] == 0:
            out.append(f"{w['name']}: no gradient at all (dead or disconnected)")
    updates = _latest_updates(recorded)
    for name, u in updates.items():
        if u > UPDATE_TOO_LARGE:
            out.append(f"{name}: updates are 10^{u:.1f} of the weights per step (guideline ~10^-3): lower the "
                       "learning rate")
        elif u < UPDATE_TOO_SMALL:
            out.append(f"{name}: updates are 10^{u:.1f} of the weights per step (guideline ~10^-3): raise the "
                       "learning rate (or the schedule has decayed it: expected at the end of a run)")
    return out


def _latest_updates(recorded: list[dict] | None) -> dict[str, float]:
    """Per-step update ratios: the last recorded probe's (true one-step values) when there
    is one, else none (a two-checkpoint ratio spans many steps and is not judged)."""
    if recorded:
        return {w["name"]: w["update_to_weight"] for w in recorded[-1]["weights"]
                if w.get("update_to_weight") is not None}
    return {}


def format_report(name: str, result: dict, problems: list[str], recorded: list[dict] | None) -> str:
    lines = [f"model: {name} | probe loss {result['loss']:.4f}",
             "layer  pre-act mean   std   flat%   dead%   out std  attn entropy"]
    for layer in result["layers"]:
        lines.append(f"{layer['layer']:5d}  {layer['pre_mean']:12.3f} {layer['pre_std']:6.3f} {layer['flat']:6.1%} "
                     f"{layer['dead']:6.1%} "
                     f"{layer['out_std']:9.3f}  {layer['attn_entropy']:12.3f}")
    has_update = any("update_to_weight" in w for w in result["weights"])
    lines.append(f"{'weight':34} {'w std':>8} {'grad std':>10} {'log10 g/w':>10}"
                 + (f" {'log10 upd/w':>12}" if has_update else ""))
    for w in result["weights"]:
        g = "-" if w["grad_to_weight"] is None else f"{w['grad_to_weight']:.2f}"
        u = w.get("update_to_weight")
        lines.append(f"{w['name'][:34]:34} {w['w_std']:8.4f} {w['grad_std']:10.2e} {g:>10}"
                     + (f" {'-' if u is None else f'{u:.2f}':>12}" if has_update else ""))
    if recorded:
        lines.append(f"recorded during training: {len(recorded)} probes, steps {recorded[0]['step']}.."
                     f"{recorded[-1]['step']} (update ratios judged from the last)")
    lines.append("problems:" if problems else "no problems found: activations, gradients and updates look healthy")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- pictures

def hist_line(ax, hist: dict, label: str) -> None:
    """A histogram from ``train.health.histogram`` as a density curve (several overlay legibly)."""
    counts = np.asarray(hist["counts"])
    edges = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    density = counts / max(counts.sum() * (edges[1] - edges[0]), 1e-30)
    ax.plot(centres, density, label=label, linewidth=1.2)


def draw(name: str, result: dict, out: Path, recorded: list[dict] | None = None) -> list[Path]:
    from matplotlib.figure import Figure

    from . import pictures

    paths = []
    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for layer in result["layers"]:
        hist_line(ax, layer["pre_hist"], f"layer {layer['layer']}: mean {layer['pre_mean']:+.2f}, "
                                          f"std {layer['pre_std']:.2f}, flat {layer['flat']:.1%}")
    ax.axvspan(ax.get_xlim()[0], -3, color="grey", alpha=0.15, label="GELU's flat region (x < -3)")
    ax.set_xlabel("MLP pre-activation (input of GELU)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: forward activations per layer", fontsize=11)
    paths.append(pictures.save(fig, out / "activations.png"))

    kinds = {}
    for w in result["weights"]:
        if ".h." in f".{w['name']}":
            kinds.setdefault(w["name"].split(".", 3)[-1], []).append(w)
    if kinds:
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
        paths.append(pictures.save(fig, out / "gradients.png"))

    fig = Figure(figsize=(max(8, 0.35 * len(result["weights"]) + 3), 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    xs = np.arange(len(result["weights"]))
    ax.plot(xs, [np.nan if w["grad_to_weight"] is None else w["grad_to_weight"] for w in result["weights"]],
            "o", label="log10 std(grad) / std(weight)")
    if any("update_to_weight" in w for w in result["weights"]):
        ax.plot(xs, [np.nan if w.get("update_to_weight") is None else w["update_to_weight"]
                     for w in result["weights"]], "s", label="log10 std(update) / std(weight)")
    if any(w.get("update_to_weight") is not None for w in result["weights"]):
        ax.axhline(-3, color="k", linestyle="--", linewidth=1, label="~-3: a healthy update per step")
    ax.set_xticks(xs, [w["name"].replace("transformer.", "") for w in result["weights"]], rotation=90, fontsize=7)
    ax.set_ylabel("log10 ratio")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{name}: gradient and update sizes relative to the weights", fontsize=11)
    paths.append(pictures.save(fig, out / "ratios.png"))

    if recorded:
        paths.append(_draw_recorded(name, recorded, out / "over_training.png"))
    return paths


def _draw_recorded(name: str, recorded: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    from . import pictures

    steps = [r["step"] for r in recorded]
    fig = Figure(figsize=(16, 4.8), dpi=100, layout="constrained")
    a, b, c = fig.subplots(1, 3)
    names = [w["name"] for w in recorded[0]["weights"]]
    for j, n in enumerate(names):
        ys = [r["weights"][j].get("update_to_weight") for r in recorded]
        if ".h." in f".{n}" and n.endswith("c_fc.weight") or not n.startswith("transformer.h."):
            a.plot(steps, [np.nan if y is None else y for y in ys], label=n.replace("transformer.", ""))
        else:
            a.plot(steps, [np.nan if y is None else y for y in ys], color="grey", alpha=0.3, linewidth=0.8)
    a.axhline(-3, color="k", linestyle="--", linewidth=1)
    a.set_title("log10 update / weight per step (grey: the other matrices)", fontsize=10)
    a.legend(fontsize=7)
    for i in range(len(recorded[0]["layers"])):
        b.plot(steps, [r["layers"][i]["dead"] * 100 for r in recorded], label=f"layer {i}")
        c.plot(steps, [r["layers"][i]["attn_entropy"] for r in recorded], label=f"layer {i}")
    b.set_title("dead MLP units: flat for 99% of tokens (%)", fontsize=10)
    c.set_title("attention entropy (0 sharp, 1 diffuse)", fontsize=10)
    for ax in (a, b, c):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    b.legend(fontsize=7)
    fig.suptitle(f"{name}: training health over training (--diagnostics)", fontsize=11)
    return pictures.save(fig, path)
