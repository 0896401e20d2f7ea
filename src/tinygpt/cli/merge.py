"""``tinygpt merge``: fold a LoRA fine-tune into full weights (a run of its own)."""

from __future__ import annotations

import argparse

from ..finetune.merge import merge_run
from .common import add_checkpoint_option, log


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="fold a LoRA fine-tune into full weights",
                       description="Write RUN (a --method lora fine-tune) as a plain run whose weights hold "
                                   "W + (alpha/r) B A: it needs neither peft nor the base, and exports like any run.")
    p.add_argument("run", metavar="RUN", help="a LoRA fine-tune's run directory")
    p.add_argument("--out", help="where to write the merged run (default: RUN-merged beside it)")
    add_checkpoint_option(p)
    p.add_argument("--force", action="store_true", help="write into --out even if it holds files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = merge_run(args.run, args.out, checkpoint=args.checkpoint, force=args.force)
    log(f"{args.run} merged -> {out}; sample with: tinygpt sample {out} --instruct --prompt \"...\"")
    return 0
