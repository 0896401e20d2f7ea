"""What a command says to its user besides its output: progress and facts go to stderr, so
that stdout carries only the text a command produces (a sample, a table, a path)."""

import sys

ARGV: list[str] = []  # the command line the CLI runs (set by cli.main), for a command that restarts itself

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
