"""What each architecture switch costs per training step, side by side.

The time-budget sweep (sweep_time_budget.py) mixes two things: how much a change gains per
step and how much slower its steps are; and the machine's speed drifts between 5-minute
runs (one shape's step count moved by 8%). So the sweep's equal-step runs measure the
first, and this measures the second: the bare ``Trainer.train_step`` of each variant of a
preset, in alternating rounds in one process, median ms per step and the ratio to the base.

    python bench/step_cost.py --dtype bf16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from tinygpt.config import layered
from tinygpt.data import Batches
from tinygpt.device import ALL_CORES, cpu_name, resolve_dtype, seed_everything, timed, use_threads
from tinygpt.model import GPT
from tinygpt.presets import get_preset
from tinygpt.train import RunConfig, Trainer

VARIANTS = {
    "base": {},
    "qk-norm": {"model": {"qk_norm": True}},
    "untied head": {"model": {"tie_embeddings": False}},
    "rope": {"model": {"pos_emb": "rope"}},
    "rmsnorm": {"model": {"norm": "rmsnorm"}},
    "relu2": {"model": {"mlp": "relu2"}},
    "softcap 15": {"model": {"logit_softcap": 15.0}},
    "unet skips": {"model": {"unet_skips": True}},
    "value embeds": {"model": {"value_embeds": True}},
    "window warmup, first stage": {"train": {"window_warmup": 1.0}},
    "batch warmup, first stage": {"train": {"batch_warmup": 1.0}},
}


def trainer(preset: str, variant: dict, dtype: str) -> Trainer:
    cfg = layered(RunConfig, get_preset(preset).layer(), variant,
                  {"model": {"vocab_size": 65}, "train": {"max_steps": 10**9}})
    seed_everything(0)
    tokens = np.random.default_rng(0).integers(0, 65, 400_000).astype(np.uint16)
    batches = Batches(tokens, cfg.train.batch_size, cfg.model.block_size, seed=0)
    return Trainer(GPT(cfg.model), cfg.train, batches, device=torch.device("cpu"),
                   dtype=resolve_dtype(dtype, torch.device("cpu")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="char-tiny")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    threads = use_threads(ALL_CORES)
    trainers = {name: trainer(args.preset, v, args.dtype) for name, v in VARIANTS.items()}
    for t in trainers.values():
        for _ in range(2):
            t.train_step()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, t in trainers.items():
            times[name] += [timed(t.train_step, t.device) for _ in range(args.steps)]
    base = statistics.median(times["base"])
    print(f"{args.preset}, {args.dtype}, {threads} threads, {cpu_name()}: median ms per train_step "
          f"({args.rounds} alternating rounds of {args.steps})")
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        rows.append({"variant": name, "ms": ms, "vs_base": ms / (base * 1e3)})
        print(f"{name:<28}{ms:>8.1f} ms  {ms / (base * 1e3):>6.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "dtype": args.dtype, "threads": threads, "cpu": cpu_name(),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
