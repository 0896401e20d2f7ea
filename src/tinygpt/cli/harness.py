"""``tinygpt lm-eval ...``: EleutherAI's lm-evaluation-harness command line, with the ``tinygpt``
model registered (the harness's own ``lm_eval`` command cannot find models from other packages).

Everything after ``lm-eval`` goes to the harness unchanged, e.g.
``tinygpt lm-eval --model tinygpt --model_args run=runs/x --tasks hellaswag``."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..config import add_command

COMMAND = "lm-eval"


@dataclass
class LmEvalCommand:
    """No options of tinygpt's own: every argument after ``lm-eval`` is the harness's."""


def add_parser(sub) -> None:
    # Listed for `tinygpt --help`; main() hands the arguments over before argparse sees them,
    # since argparse cannot pass options it does not know through a subcommand.
    add_command(sub, COMMAND, LmEvalCommand, lambda cmd: run([]), add_help=False,
                help="run EleutherAI's lm-evaluation-harness with tinygpt models (--model tinygpt)")


def run(argv: list[str]) -> int:
    from ..errors import TinyGPTError

    try:
        from lm_eval.__main__ import cli_evaluate

        from ..eval import harness  # noqa: F401  (registers the tinygpt model)
    except ImportError as e:
        raise TinyGPTError(f"tinygpt lm-eval needs lm-evaluation-harness ({e.name} is missing): "
                           "pip install 'tinygpt[eval]'") from None
    saved = sys.argv
    sys.argv = ["lm-eval", *(argv or ["--help"])]
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else 1
    except ValueError as e:  # the harness's word for bad input: unknown tasks, bad --model_args
        raise TinyGPTError(f"lm-eval: {e} (see tinygpt lm-eval --help; lm-eval ls tasks lists the tasks)") from None
    finally:
        sys.argv = saved
    return 0


