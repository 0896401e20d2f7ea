"""``tinygpt train``: settings from --config and flags, then the library's Session does the run."""

from __future__ import annotations

from dataclasses import field, make_dataclass

from ..config import add_command, sections_of
from ..console import ARGV, log
from ..train import RunConfig, Session, SessionOptions, fit_and_report
from ..train.distributed import launch, launched_by_torchrun

# The run's own sections (model, data, run, train, runtime), less the vocabulary size that the
# tokenizer decides; the flags given reach the library as a layer over the preset and --config.
TrainCommand = make_dataclass("TrainCommand", [("session", SessionOptions, field(default_factory=SessionOptions)),
                                               *sections_of(RunConfig, leave=("vocab_size", "layer_heads", "layer_hidden"))])


def add_parser(sub) -> None:
    add_command(sub, "train", TrainCommand, run, given=RunConfig,
                help="train a GPT on text (default: Shakespeare, 5 minutes)",
                description="Train a GPT. Every option can also come from --config FILE (YAML or JSON, flat or "
                            "nested by section: model/data/run/train/runtime); flags win.")


def run(cmd, given: dict) -> int:
    if cmd.session.nproc > 1 and not launched_by_torchrun():
        return launch(cmd.session.nproc, ARGV)
    session = Session.from_options(cmd.session, given, log=log)
    return fit_and_report(session, resumed=bool(cmd.session.resume), log=log)
