"""``tinygpt train``: settings from --config and flags, then the library's Session does the run."""

from __future__ import annotations

import argparse

from ..config import add_arguments, cli_values, load_config_file
from ..errors import TinyGPTError
from ..train import RunConfig, Session, fit_and_report
from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a GPT on text (default: Shakespeare, 5 minutes)",
                       description="Train a GPT. Every option can also come from --config FILE "
                                   "(YAML or JSON, flat or nested by section: model/data/train/runtime); flags win.")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of options")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory exactly where it stopped")
    p.add_argument("--force", action="store_true",
                   help="start the run in --out even if that directory holds other files or an old run "
                        "(files with a run's names are replaced)")
    add_arguments(p, RunConfig, skip=("vocab_size",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    layers = (load_config_file(args.config) if args.config else {}, cli_values(RunConfig, args))
    if args.resume:
        if args.force:
            raise TinyGPTError("--force is for starting a new run in --out; --resume never replaces anything")
        session = Session.resume(args.resume, *layers, log=log)
    else:
        session = Session.start(*layers, force=args.force, log=log)
    return fit_and_report(session, resumed=bool(args.resume), log=log)
