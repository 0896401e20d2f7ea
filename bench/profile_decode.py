"""Where a batch-1 decode step's time goes: torch.profiler over greedy decoding.

    python bench/profile_decode.py --dtype fp32      # GPT-2 small's shape, random weights

Prints the step time, the ops that take the most time (self CPU time per step) and how much
of the step the weight products take; the rest is attention, norms, sampling and Python.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tinygpt.device import cpu_name
from tinygpt.generation.decoder import decode
from tinygpt.model import GPT, GPTConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRODUCTS = ("aten::linear", "aten::mv", "mkldnn::_linear_pointwise", "aten::addmm", "aten::mm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)).to(dtype).eval()
    prompt = [list(range(64))]
    decode(model, prompt, args.tokens, greedy=True, dtype=dtype)  # routes measured, caches warm
    t = time.perf_counter()
    decode(model, prompt, args.tokens, greedy=True, dtype=dtype)
    step_ms = (time.perf_counter() - t) / args.tokens * 1000
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode(model, prompt, args.tokens, greedy=True, dtype=dtype)
    events = prof.key_averages()
    print(f"{args.dtype}, {cpu_name()}, {torch.get_num_threads()} threads: {step_ms:.1f} ms per token unprofiled")
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCTS) / args.tokens / 1000
    total = sum(e.self_cpu_time_total for e in events) / args.tokens / 1000
    print(f"profiled: {total:.1f} ms of op self time per token, weight products {products:.1f} ms; "
          f"{sum(e.count for e in events) / args.tokens:.0f} op calls per token")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
