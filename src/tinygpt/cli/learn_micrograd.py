"""``tinygpt learn micrograd``: train a tiny MLP built on a scalar autograd engine, draw what it learned.

The options come from :class:`tinygpt.learn.micrograd.MicrogradConfig`; the work is
:func:`tinygpt.learn.micrograd.run_lesson`.
"""

from __future__ import annotations

import argparse

from ..config import add_arguments, cli_values, from_dict
from ..learn.micrograd import MicrogradConfig, Step, run_lesson
from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser("micrograd", help="a scalar autograd engine and a tiny MLP trained on it",
                       description="Train a small MLP made of scalar Values (micrograd: every +, *, tanh records "
                                   "itself, and backward() applies the chain rule over that record) to separate "
                                   "two 2-D classes, printing loss and accuracy; then draw its decision boundary "
                                   "and the computation graph of one neuron as PNGs.")
    add_arguments(p, MicrogradConfig)
    p.add_argument("--out", default="learn/micrograd", help="folder for the pictures (default: learn/micrograd)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = from_dict(MicrogradConfig, cli_values(MicrogradConfig, args))
    every = max(1, cfg.steps // 10)
    log(f"{cfg.dataset}: {cfg.samples} points, MLP {'-'.join(map(str, cfg.sizes))}, {cfg.steps} steps")

    def progress(s: Step) -> None:
        if s.step == 1 or s.step % every == 0:
            log(f"step {s.step:4d}  loss {s.loss:.4f}  accuracy {s.accuracy:6.1%}  lr {s.lr:.3f}")

    result = run_lesson(cfg, args.out, on_step=progress)
    print(f"final: loss {result.loss:.4f}, accuracy {result.accuracy:.1%} "
          f"({round(result.accuracy * cfg.samples)}/{cfg.samples} points)")
    for path in result.pictures:
        print(path)
    return 0
