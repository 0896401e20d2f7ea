"""``tinygpt prune``: zero a model's least important weights, as a run of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from shlex import quote

from ..compress import PruneOptions, prune_run
from ..config import add_command, section
from ..console import log
from ..options import OutputOptions
from ..source import ModelSource


@dataclass
class PruneCommand:
    source: ModelSource = field(default_factory=ModelSource)
    prune: PruneOptions = field(default_factory=PruneOptions)
    output: OutputOptions = section(OutputOptions, only=("out", "force"), shown={"out": "MODEL-pruned beside it"})


def add_parser(sub) -> None:
    add_command(sub, "prune", PruneCommand, run, help="zero the least important weights (magnitude or Wanda)",
                description="Write MODEL with --amount of each block linear layer's weights set to zero: the "
                            "smallest (--criterion magnitude) or those with the smallest |w| times input norm over "
                            "a calibration text (wanda; --data, the run's training text by default). The tensors "
                            "keep their shapes.")


def run(cmd: PruneCommand) -> int:
    src = cmd.source.model
    out = prune_run(src, cmd.output.out, cmd.prune, checkpoint=cmd.source.checkpoint, force=cmd.output.force, log=log)
    log(f"{src} pruned ({cmd.prune.amount:g}, {cmd.prune.criterion}) -> {out}; score it: tinygpt eval "
        f"{quote(str(src))} {quote(str(out))}")
    return 0
