"""The ``tinygpt`` command line: one thin module per command.

Each command module has ``add_parser(subparsers)`` and a ``run(args) -> int``; options come
from the library's config dataclasses, and the work from the library. This module wires
them up and turns user errors (``TinyGPTError``) into one-line messages.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import TinyGPTError
from . import sample, train

COMMANDS = (train, sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygpt", description="Train, run and study small GPT language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TinyGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
