"""``tinygpt eval``: loss, perplexity and bits per byte of one or more models over a text."""

from __future__ import annotations

import argparse

from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="score models on a text: loss, perplexity, bits per byte",
        description="Score every token of a text (sliding windows, --stride) with each model and print one "
                    "table; runs also keep the result in their eval.json.")
    p.add_argument("models", metavar="MODEL", nargs="+", help="run directories, Hugging Face names or directories")
    p.add_argument("--data", help="a file, folder, glob or shakespeare (default: the first run's validation split)")
    p.add_argument("--stride", type=int, help="tokens between window starts (default: the context, no overlap); "
                                              "each scored token then sees at least context - stride tokens")
    p.add_argument("--max-chars", type=int, help="score only the first N characters of the text")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--checkpoint", default="best", help="a run's weights: best, last, or a .safetensors path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import atomic_write_text
    from ..data import read_text
    from ..errors import TinyGPTError
    from ..eval import perplexity
    from ..run import RunDir

    if args.batch_size < 1 or (args.max_chars is not None and args.max_chars < 1):
        raise TinyGPTError("--batch-size and --max-chars must be at least 1")
    if args.data:
        text, where = read_text(args.data, args.max_chars, log=log), args.data
    else:
        if not RunDir.is_run(args.models[0]):
            raise TinyGPTError(f"{args.models[0]} is not a tinygpt run, so it has no validation split; give --data")
        text, where = perplexity.validation_text(args.models[0], log), f"validation split of {args.models[0]}"
        text = text[:args.max_chars] if args.max_chars else text
    rows = [perplexity.evaluate(m, text, where, stride=args.stride, batch_size=args.batch_size,
                                checkpoint=args.checkpoint, device=args.device) for m in args.models]
    print(f"{'model':40} {'tokenizer':>9} {'tokens':>10} {'loss':>8} {'ppl':>9} {'bits/byte':>10} {'s':>7}")
    for r in rows:
        print(f"{r['model'][-40:]:40} {r['tokenizer']:>9} {r['tokens']:10,d} {r['loss']:8.4f} {r['perplexity']:9.3f} "
              f"{r['bits_per_byte']:10.4f} {r['seconds']:7.1f}")
    if len({r["tokenizer"] for r in rows}) > 1:
        print("models with different tokenizers compare only in bits per byte (loss and perplexity are per token)")
    log(f"scored {where}: {len(text):,} characters, stride {args.stride or 'context'}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0
