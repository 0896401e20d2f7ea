"""``tinygpt scaling``: train a few model sizes at a few time budgets on this machine, fit
Chinchilla's law to their losses and say what size a budget should train."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.scaling import (
    ScalingOptions,
    SweepStopped,
    draw_isoflops,
    fit_law,
    flops_per_second,
    isoflop_minima,
    minima_exponent,
    sweep,
)
from ..checkpoint import atomic_write_text
from ..config import add_command, parse_duration, section
from ..console import log
from ..data import DataConfig
from ..device import RuntimeConfig
from ..model import GPTConfig
from ..options import OutputOptions
from ..train import TrainConfig
from ..train.recipe import save_law


@dataclass
class ScalingCommand:
    scaling: ScalingOptions = field(default_factory=ScalingOptions)
    data: DataConfig = section(DataConfig, only=("data", "tokenizer", "val_fraction"))
    model: GPTConfig = section(GPTConfig, only=("block_size",), block_size=128)
    train: TrainConfig = section(TrainConfig, only=("batch_size", "lr"), shown={"lr": "0.003"}, batch_size=16, lr=3e-3)
    runtime: RuntimeConfig = section(RuntimeConfig, only=("device", "dtype"))
    output: OutputOptions = section(OutputOptions, only=("out", "json", "force"), out="scaling")


def add_parser(sub) -> None:
    add_command(sub, "scaling", ScalingCommand, run, help="measure scaling laws on this machine",
                description="Train every --sizes model for every --budgets time (one after another, each a run "
                            "directory under --out), fit L(N, D) = E + A/N^alpha + B/D^beta to the validation "
                            "losses (Chinchilla's approach 3), draw the iso-FLOP curves and the compute-optimal "
                            "frontier (--out/isoflops.png), and with --predict say which model size and token "
                            "count a longer run should use here.")


def run(cmd: ScalingCommand) -> int:
    s, out = cmd.scaling, Path(cmd.output.out)
    base = {"data": cmd.data.data, "tokenizer": cmd.data.tokenizer, "val_fraction": cmd.data.val_fraction,
            "block_size": cmd.model.block_size, "batch_size": cmd.train.batch_size, "lr": cmd.train.lr,
            "device": cmd.runtime.device, "dtype": cmd.runtime.dtype, "preset": "char-nano", "dropout": 0.0,
            "warmup_steps": 20}
    log(f"scaling: {len(s.sizes)} sizes x {len(s.budgets)} budgets, one after another, into {out}")
    try:
        runs = sweep(cmd.data.data, s.sizes, s.budgets, out, base, log=log)
    except SweepStopped as e:
        log(f"stopped: the sweep ends at {e.path} (its run is saved; tinygpt train --resume {e.path} finishes it)")
        return 128 + e.signal
    law = fit_law([r.params for r in runs], [r.tokens for r in runs], [r.val_loss for r in runs])
    picture = draw_isoflops(runs, law, out / "isoflops.png")
    rate = flops_per_second(runs)
    print(f"fit: L(N, D) = {law.E:.3f} + {law.A:.4g} / N^{law.alpha:.3f} + {law.B:.4g} / D^{law.beta:.3f}")
    if min(law.alpha, law.beta) < 0.05:
        log("warning: across these runs the loss hardly falls with more parameters or more tokens (an exponent "
            "near 0): the budgets are too short, or the sizes too close, to measure a law; give longer --budgets")
    print(f"compute-optimal: N grows as C^{law.beta / (law.alpha + law.beta):.2f}, D as "
          f"C^{law.alpha / (law.alpha + law.beta):.2f}; this machine trains {rate:.3g} FLOPs/s (6ND)")
    minima = isoflop_minima(runs)
    report = {"runs": [{**r.__dict__, "flops": r.flops} for r in runs], "law": law.to_dict(),
              "flops_per_second": rate, "isoflop_minima": [dict(budget=b, flops=c, params=n) for b, c, n in minima]}
    exponent = minima_exponent(minima)
    report["isoflop_exponent"] = exponent
    if minima:
        print("iso-FLOP minima (a parabola in log N per budget, no formula assumed): "
              + ", ".join(f"{b} {n / 1e6:.2f}M" for b, _, n in minima)
              + (f"; N grows as C^{exponent:.2f}" if exponent is not None else ""))
    if s.predict is not None:
        seconds = parse_duration(s.predict)
        n, d = law.optimal(rate * seconds)
        print(f"for {s.predict} here ({rate * seconds:.3g} FLOPs): about {n / 1e6:.2f}M parameters on {d:,.0f} tokens "
              f"({d / n:.1f} tokens per parameter), predicted loss {law.loss(n, d):.3f}")
        report["prediction"] = {"budget": s.predict, "flops": rate * seconds, "params": n, "tokens": d,
                                "loss": float(law.loss(n, d))}
    if s.save_profile and min(law.alpha, law.beta) >= 0.05:
        path = save_law(law, rate)
        log(f"saved this machine's scaling profile to {path}: --preset auto now sizes time-budgeted runs by it "
            "(delete the file to go back to the fixed rule)")
    elif s.save_profile:
        log("not saved as this machine's profile: the exponents are too near 0 to size runs by")
    log(f"wrote {picture}")
    if cmd.output.json:
        atomic_write_text(cmd.output.json, json.dumps(report, indent=1) + "\n")
    return 0
