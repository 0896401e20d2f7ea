"""Where the update-to-weight ratio of a healthy run lies, per optimizer: the measurement
behind ``tinygpt diagnose``'s UPDATE_RANGES (analysis/health.py).

    python bench/update_ratios.py                   # ~20 min on 2 cores
    python bench/update_ratios.py --steps 60 --lrs 1,10 --optimizers muon   # a quick look

For each optimizer and each learning rate (a multiple of the char presets' 6e-3), it
trains char-nano on Shakespeare for ``--steps`` steps at a constant rate after a short
warmup, with ``--diagnostics`` probes, and prints the final validation loss beside the
median log10 std(update) / std(weight) of the matrices each optimizer updates (the
probes after warmup). Read it as: the rates whose loss is near the best are healthy, and
their ratios are the healthy band; a rate whose loss is far worse (or NaN) marks a
ratio that is too large or too small.

Each matrix is counted under the optimizer that updates it (optim.updated_by): in a
Muon run the embeddings and the head stay on AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_LR = 6e-3


def train(out: Path, optimizer: str, lr: float, steps: int, every: int, env: dict) -> tuple[float, dict]:
    flags = ["--data", "shakespeare", "--preset", "char-nano", "--optimizer", optimizer, "--lr", f"{lr:g}",
             "--max-steps", str(steps), "--warmup-steps", str(every), "--schedule", "constant",
             "--diagnostics", str(every), "--eval-interval", str(steps), "--max-new-tokens", "0",
             "--progress", "false", "--seed", "0", "--dtype", "fp32", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "tinygpt", "train", *flags], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:]
        return float("nan"), {"error": tail}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None][-1]
    ratios: dict[str, list[float]] = {}
    for probe in map(json.loads, (out / "diagnostics.jsonl").read_text().splitlines()):
        if probe["step"] <= every:
            continue  # still warming up
        for w in probe["weights"]:
            u = w.get("update_to_weight")
            if u is not None:
                ratios.setdefault(w.get("optimizer", optimizer), []).append(u)
    return val, {k: statistics.median(v) for k, v in ratios.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=25, help="steps between probes (also the warmup)")
    ap.add_argument("--lrs", default="0.03,0.1,0.3,1,3,10", help="multiples of 6e-3")
    ap.add_argument("--optimizers", default="adamw,muon")
    args = ap.parse_args()
    env = {**os.environ, "TINYGPT_CACHE": os.environ.get("TINYGPT_CACHE", str(Path.home() / ".cache" / "tinygpt"))}
    print(f"char-nano on Shakespeare, {args.steps} steps, constant rate after {args.every} warmup steps; "
          "ratio: median log10 std(update)/std(weight) of the matrices each optimizer updates")
    print(f"{'optimizer':10} {'lr':>8} {'val loss':>9}  ratios")
    with tempfile.TemporaryDirectory() as work:
        for optimizer in args.optimizers.split(","):
            for mult in (float(m) for m in args.lrs.split(",")):
                lr = BASE_LR * mult
                val, ratios = train(Path(work) / f"{optimizer}-{mult}", optimizer, lr, args.steps, args.every, env)
                said = "  ".join(f"{k} {v:+.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in ratios.items())
                print(f"{optimizer:10} {lr:8.1e} {val:9.3f}  {said}", flush=True)


if __name__ == "__main__":
    main()
