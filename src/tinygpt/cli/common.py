"""What every command shares."""

import sys


def log(message: str) -> None:
    """Progress and facts go to stderr, so stdout carries only the text a command produces."""
    print(message, file=sys.stderr, flush=True)
