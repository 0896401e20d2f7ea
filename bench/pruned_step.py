"""Where structured pruning saves decode time: one batch-1 step of each run, whole and without its head.

    tinygpt prune RUN --structured both --amount 0.2 --out RUN-both
    python bench/pruned_step.py RUN RUN-both

Each run decodes the same 48 one-token steps after a 64-token prompt (KV cache, last
position only); the runs alternate for 5 rounds and the median is printed, with the head
(the vocabulary projection, which pruning leaves whole) and without it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygpt.device import cpu_name
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT
from tinygpt.run import RunDir


@torch.no_grad()
def step_ms(model: GPT, steps: int = 48, head: bool = True) -> float:
    kept = model.lm_head
    if not head:
        model.lm_head = torch.nn.Identity()   # (B, 1, C) out: the blocks and the final norm only
    try:
        cache = KVCache(model.config, 1, 64 + steps)
        x = torch.randint(0, model.config.vocab_size, (1, 64 + steps), generator=torch.Generator().manual_seed(0))
        model(x[:, :64], cache=cache, last=True)
        t = time.perf_counter()
        for i in range(64, 64 + steps):
            model(x[:, i:i + 1], cache=cache, last=True)
        return (time.perf_counter() - t) / steps * 1000
    finally:
        model.lm_head = kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    models = {r: RunDir.open(r).load_model()[0].float().eval() for r in args.runs}
    whole: dict[str, list[float]] = {r: [] for r in models}
    blocks: dict[str, list[float]] = {r: [] for r in models}
    for _ in range(args.rounds):
        for r, m in models.items():
            whole[r].append(step_ms(m))
            blocks[r].append(step_ms(m, head=False))
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, fp32, median of {args.rounds} rounds")
    first = args.runs[0]
    for r, m in models.items():
        w, b = statistics.median(whole[r]), statistics.median(blocks[r])
        print(f"{r}: {m.num_params() / 1e6:.1f}M parameters, {w:.1f} ms a step ({statistics.median(whole[first]) / w:.2f}x"
              f"), without the head {b:.1f} ms ({statistics.median(blocks[first]) / b:.2f}x)")


if __name__ == "__main__":
    main()
