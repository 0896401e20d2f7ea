"""The ``tinygpt`` command line: one thin module per command.

Each command module has ``add_parser(subparsers)``, which declares the command as one
dataclass composed of the library's shared option sections (``config.add_command``), and a
``run(command) -> int`` that calls the library and prints. No command module imports
another. This module wires them up, applies ``--threads`` before any command starts, and
turns user errors (``TinyGPTError``) into one-line messages.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .. import __version__
from ..errors import TinyGPTError


def build_parser() -> argparse.ArgumentParser:
    # The commands import torch (seconds): they load here, inside main's handlers, so a
    # Ctrl+C during start-up ends with "aborted", not a traceback.
    from . import (
        arena,
        attention,
        bench,
        chat,
        diagnose,
        eval,
        export,
        finetune,
        harness,
        learn,
        makemore,
        merge,
        plot,
        prepare,
        prune,
        quantize,
        sample,
        scaling,
        serve,
        train,
    )

    parser = argparse.ArgumentParser(prog="tinygpt", description="Train, run and study small GPT language models.")
    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for command in (prepare, train, finetune, merge, quantize, prune, sample, chat, serve, arena, eval, harness, export,
                    bench, attention, plot, diagnose, scaling, learn, makemore):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from ..console import ARGV

    ARGV[:] = argv  # for a command that starts itself again (train --nproc)
    try:
        if argv[:1] == ["lm-eval"]:
            from . import harness

            return harness.run(argv[1:])
        args = build_parser().parse_args(argv)
        if hasattr(args, "threads"):  # first, so that whatever is measured runs with them
            from ..config import from_dict
            from ..console import log
            from ..device import RuntimeConfig, use_threads

            use_threads(from_dict(RuntimeConfig, {"threads": args.threads}).threads, log=log)
        return args.func(args)
    except TinyGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 128 + signal.SIGINT
