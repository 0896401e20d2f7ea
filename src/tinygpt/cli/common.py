"""What every command shares."""

import sys


def add_checkpoint_option(parser) -> None:
    """``--checkpoint``: which of a run's weights a command reads."""
    parser.add_argument("--checkpoint", default="best", help="a run's weights: best, last, or a .safetensors path")


def log(message: str) -> None:
    """Progress and facts go to stderr, so stdout carries only the text a command produces."""
    print(message, file=sys.stderr, flush=True)
