"""``tinygpt bench``: speed, measured side by side (never by tests)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed side by side (generate: vs transformers and llama.cpp)")
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


def run(args: argparse.Namespace) -> int:
    from ..bench.generate import GenerateBench
    from ..bench.generate import run as bench

    bench(GenerateBench(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, prompt=args.prompt,
                        new_tokens=args.new_tokens, batches=tuple(int(b) for b in args.batches.split(",")),
                        rounds=args.rounds, engines=tuple(args.engines.split(","))), log=print)
    return 0
