"""``tinygpt diagnose``: a model's training health from a checkpoint (a few batches of the
run's own data through :func:`tinygpt.train.health.probe`) and from what ``--diagnostics N``
recorded during training; judged against the makemore lectures' rules of thumb and, for
update sizes, against ranges measured per optimizer. :mod:`.health_pictures` draws it.
"""

from __future__ import annotations

import math
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
from ..train.optim import updated_by
from . import experts

# Rules of thumb, with the fix each suggests.
DEAD_TOO_MANY = 0.10        # > 10% of the MLP's hidden units never leave GELU's flat region
DEAD_STD = 1e-3             # pre-activations this narrow carry no signal
EXPLODING_STD = 30.0        # residual stream std (it starts near 0.02-1)
COLLAPSED_ENTROPY = 0.02    # each query on exactly one key
GRAD_TOO_LARGE = 0.0        # log10 grad / weight above 0: gradients larger than the weights
# The healthy log10 std(update) / std(weight) of one step at the peak learning rate, per
# optimizer that made it (a ratio taken where the schedule had the rate lower is scaled up
# to the peak first: the ratio moves with the rate). Karpathy's ~-3 (makemore part 3) is
# for his MLP; measured here by bench/update_ratios.py (char-nano on Shakespeare, 120
# steps at a constant rate, median over matrices and probes; val loss in brackets):
#   AdamW lr 1.8e-4 -2.43 (2.78)  6e-4 -2.06 (2.59)  1.8e-3 -1.78 (2.54)  6e-3 -1.74 (2.55)  1.8e-2 -1.72 (2.83)
#   Muon  lr 1.8e-4 -2.69 (2.80)  6e-4 -2.13 (2.58)  1.8e-3 -1.81 (2.50)  6e-3 -1.59 (2.34)  1.8e-2 -1.57 (2.09)
#         6e-2 -1.62 (2.62)
# Good runs sit near 10^-1.7, a decade and more above 10^-3 (so the old guideline called
# the default Muon recipe too fast on every matrix); rates too low for the budget fall
# below -2.3 (AdamW) and -2.4 (Muon: its good rates run higher). Rates too high do not
# raise the ratio here, the weights grow with them (the loss and divergence checks catch
# those); the upper ends are half a decade past any run that trained.
UPDATE_RANGES = {"adamw": (-2.3, -1.2), "muon": (-2.4, -1.0)}
OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon"}


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
    kind = run.read_config().get("train", {}).get("optimizer", "adamw") if run else "adamw"
    by = updated_by(lm.model, kind)
    for row in result["weights"]:
        row["optimizer"] = by.get(row["name"], "adamw")
    recorded = run.read_diagnostics(notice=log) if run else []
    problems = judge(result, recorded, by)
    routed = experts.history(run.read_metrics(notice=log), lm.model.config) if run else None
    if routed is not None:  # a mixture-of-experts run: how its routers spread the tokens
        result["experts"] = routed
        problems += experts.judge(routed)
    return Diagnosis(name, result, problems, recorded)


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
        td = run_data(run.path, log=log)
        if td.stream is not None:   # a streamed run: its first windows
            batches = td.batches("train", batch_size, T)
            return [next(batches) for _ in range(n)]
        tokens = td.train
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
    return {"loss": float(np.mean([r["loss"] for r in results])), "layers": layers, "weights": weights,
            "activation": first["activation"], "flat_below": first["flat_below"]}


def judge(result: dict, recorded: list[dict] | None = None, by: dict[str, str] | None = None) -> list[str]:
    """One line per problem found, each with its likely fix; empty when all looks healthy.
    Update ratios are judged against the range of the optimizer that made them: the one
    each recorded row names, else ``by``'s (name -> optimizer; AdamW where it says none)."""
    out = []
    for layer in result["layers"]:
        i = layer["layer"]
        if layer["dead"] > DEAD_TOO_MANY:
            out.append(f"layer {i}: {layer['dead']:.0%} of the MLP's hidden units are dead (in "
                       f"{result.get('activation', 'GELU')}'s flat region "
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
    judged = {} if recorded and recorded[-1].get("warmup") else latest_updates(recorded, by)
    for name, (u, at_peak, kind) in judged.items():
        lo, hi = update_range(kind)
        said = f"updates are 10^{u:.1f} of the weights per step" + (
            f" (10^{at_peak:.1f} at the peak rate)" if abs(at_peak - u) >= 0.05 else "")
        healthy = f"healthy under {OPTIMIZER_NAMES.get(kind, kind)}: 10^{lo:g} to 10^{hi:g}"
        if at_peak > hi:
            out.append(f"{name}: {said}, {healthy}: lower the learning rate")
        elif at_peak < lo:
            out.append(f"{name}: {said}, {healthy}: raise the learning rate"
                       + ("" if "lr" in recorded[-1] else " (or the schedule has decayed it: expected at the end "
                                                           "of a run)"))
    return out


def update_range(kind: str) -> tuple[float, float]:
    """The healthy (low, high) log10 one-step update ratio under optimizer ``kind`` (AdamW's
    for one not measured)."""
    return UPDATE_RANGES.get(kind, UPDATE_RANGES["adamw"])


def latest_updates(recorded: list[dict] | None,
                   by: dict[str, str] | None = None) -> dict[str, tuple[float, float, str]]:
    """Per-step update ratios as (log10 ratio, the same at the peak rate, the optimizer that
    made it): the last recorded probe's (true one-step values) when there is one, else none
    (a two-checkpoint ratio spans many steps and is not judged)."""
    if not recorded:
        return {}
    return {w["name"]: (w["update_to_weight"], w["update_to_weight"] + to_peak(recorded[-1]), kind)
            for w, kind in zip(recorded[-1]["weights"], optimizers(recorded[-1], by))
            if w.get("update_to_weight") is not None}


def to_peak(probe: dict) -> float:
    """log10 peak rate / the probe step's rate: what scales its update ratios to the peak
    (0 for a probe recorded before rates were)."""
    lr, peak = probe.get("lr"), probe.get("peak_lr")
    return math.log10(peak / lr) if lr and peak and lr > 0 else 0.0


def optimizers(probe: dict, by: dict[str, str] | None = None) -> list[str]:
    """The optimizer of each of a probe's weights: the one its row names, else ``by``'s
    (for rows recorded before they named one), else AdamW."""
    by = by or {}
    return [w.get("optimizer") or by.get(w["name"], "adamw") for w in probe["weights"]]


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
    if "experts" in result:
        lines += experts.summary(result["experts"])
    if recorded:
        lines.append(f"recorded during training: {len(recorded)} probes, steps {recorded[0]['step']}.."
                     f"{recorded[-1]['step']} (update ratios judged from the last"
                     + (", taken in warmup: not judged)" if recorded[-1].get("warmup") else ")"))
    lines.append("problems:" if problems else "no problems found: activations, gradients and updates look healthy")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
