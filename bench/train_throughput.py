"""Training throughput (tokens/s) of a preset under several dtypes, measured side by side.

    python bench/train_throughput.py --preset baby --dtypes fp32,bf16 --steps 5

Each dtype trains the same model on the same random tokens; the first ``--warmup``
steps are not timed. Rounds alternate between dtypes so that noise from a shared
machine falls on all of them alike; the median step time per dtype is reported.
"""

import argparse
import statistics
import time

import numpy as np
import torch

from tinygpt.config import layered
from tinygpt.data import Batches
from tinygpt.device import resolve_device, resolve_dtype, seed_everything
from tinygpt.model import GPT
from tinygpt.presets import get_preset
from tinygpt.train import RunConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="baby")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per dtype per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    vocab = 65  # like tiny-shakespeare's characters
    tokens = np.random.default_rng(0).integers(0, vocab, 200_000).astype(np.uint16)
    trainers = {}
    for dtype in args.dtypes.split(","):
        cfg = layered(RunConfig, get_preset(args.preset).layer(),
                      {"model": {"vocab_size": vocab}, "train": {"batch_size": args.batch_size, "max_steps": 10**9},
                       "runtime": {"device": args.device, "dtype": dtype}})
        device = resolve_device(cfg.runtime.device)
        seed_everything(cfg.runtime.seed)
        batches = Batches(tokens, cfg.train.batch_size, cfg.model.block_size, seed=cfg.runtime.seed)
        trainers[dtype] = Trainer(GPT(cfg.model).to(device), cfg.train, batches, device=device,
                                  dtype=resolve_dtype(dtype, device))
        for _ in range(args.warmup):
            trainers[dtype].train_step()
    times = {d: [] for d in trainers}
    for _ in range(args.rounds):
        for dtype, trainer in trainers.items():
            for _ in range(args.steps):
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                trainer.train_step()  # .item() on the loss synchronises
                times[dtype].append(time.perf_counter() - t0)
    t0 = next(iter(trainers.values()))
    print(f"{args.preset}: {t0.model.num_params() / 1e6:.2f}M params, {t0.tokens_per_step} tokens/step, "
          f"device {t0.device}, {torch.get_num_threads()} threads")
    base = None
    for dtype, ts in times.items():
        med = statistics.median(ts)
        tps = t0.tokens_per_step / med
        base = base or tps
        print(f"  {dtype:5s} {tps:10,.0f} tokens/s  (median step {med * 1000:.0f} ms, "
              f"{tps / base:.2f}x the first)")


if __name__ == "__main__":
    main()
