"""``tinygpt bench``: speed, measured side by side (never by tests)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed side by side (train: tokens/s and MFU; generate: decoding)")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="what")
    g = kinds.add_parser("generate", help="decoding tokens/s: tinygpt vs transformers vs llama.cpp, same weights")
    g.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    g.add_argument("--new-tokens", type=int, default=256)
    g.add_argument("--prompt", type=int, default=64, help="prompt length in tokens")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--engines", default="tinygpt,transformers,llama.cpp")
    g.add_argument("--n-layer", type=int, default=12, help="model shape (default: GPT-2 small)")
    g.add_argument("--n-embd", type=int, default=768)
    g.add_argument("--n-head", type=int, default=12)
    g.set_defaults(func=run)
    t = kinds.add_parser("train", help="training tokens/s, MFU against the measured matmul peak, loop overhead, "
                                       "and a plain nanoGPT-style fp32 loop of the same shape")
    t.add_argument("--preset", default="baby")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--dtypes", default="fp32,bf16", help="comma-separated (default fp32,bf16)")
    t.add_argument("--device", default="auto")
    t.add_argument("--steps", type=int, default=4, help="timed steps per engine per round")
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--no-reference", action="store_true", help="skip the nanoGPT-style fp32 loop")
    t.add_argument("--loop-steps", type=int, default=12, help="steps of the tinygpt train run (0: skip it)")
    t.add_argument("--compile", action="store_true", help="torch.compile tinygpt's model")
    t.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    t.set_defaults(func=run_train)


def run(args: argparse.Namespace) -> int:
    from ..bench.generate import GenerateBench
    from ..bench.generate import run as bench

    bench(GenerateBench(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, prompt=args.prompt,
                        new_tokens=args.new_tokens, batches=tuple(int(b) for b in args.batches.split(",")),
                        rounds=args.rounds, engines=tuple(args.engines.split(","))), log=print)
    return 0


def run_train(args: argparse.Namespace) -> int:
    import json

    from ..bench.train import TrainBench
    from ..bench.train import run as bench
    from ..checkpoint import atomic_write_text

    report = bench(TrainBench(preset=args.preset, batch_size=args.batch_size, dtypes=tuple(args.dtypes.split(",")),
                              device=args.device, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
                              reference=not args.no_reference, loop_steps=args.loop_steps, compile=args.compile),
                   log=print)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0
