"""``tinygpt finetune``: adapt a base model to new text or instructions (the library's FinetuneSession)."""

from __future__ import annotations

import argparse

from ..config import add_arguments, cli_values, load_config_file
from ..errors import TinyGPTError
from ..finetune import FinetuneRunConfig, FinetuneSession
from ..finetune.config import NOT_FLAGS
from ..train import fit_and_report
from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a run, GPT-2 or a Hugging Face model on text or instructions",
                       description="Fine-tune BASE (a tinygpt run, a Hugging Face GPT-2 / Llama directory, or a hub "
                                   "name such as gpt2) on --data: text (a file, folder or shakespeare) or "
                                   "instruction data (.jsonl of instruction/input/response or chat messages; the "
                                   "loss covers the responses only). --method full trains every weight; lora, "
                                   "adapter and prompt train a small adapter saved alone. The result is a run: "
                                   "sample, eval, chat, attention and export take it.")
    p.add_argument("base", metavar="BASE", nargs="?", help="the model to start from (not with --resume)")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of options")
    p.add_argument("--resume", metavar="RUN", help="continue the fine-tune in this directory exactly where it stopped")
    p.add_argument("--force", action="store_true", help="start the fine-tune in --out even if that directory holds "
                                                        "other files or an old run")
    add_arguments(p, FinetuneRunConfig, skip=NOT_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    layers = (load_config_file(args.config) if args.config else {}, cli_values(FinetuneRunConfig, args))
    if args.resume:
        if args.base:
            raise TinyGPTError("--resume continues a fine-tune with its own base; leave BASE out")
        session = FinetuneSession.resume(args.resume, *layers, log=log)
    else:
        if not args.base:
            raise TinyGPTError("give the model to fine-tune: tinygpt finetune BASE --data FILE (BASE: a run "
                               "directory, a Hugging Face model directory or a hub name such as gpt2)")
        session = FinetuneSession.start(args.base, *layers, force=args.force, log=log)
    return fit_and_report(session, resumed=bool(args.resume), log=log)
