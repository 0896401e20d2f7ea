"""``tinygpt merge``: fold a LoRA fine-tune into full weights (a run of its own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from shlex import quote

from ..config import add_command, section
from ..console import log
from ..finetune.merge import merge_run
from ..options import OutputOptions
from ..source import ModelSource


@dataclass
class MergeCommand:
    source: ModelSource = field(default_factory=ModelSource)
    output: OutputOptions = section(OutputOptions, only=("out", "force"), shown={"out": "MODEL-merged beside it"})


def add_parser(sub) -> None:
    add_command(sub, "merge", MergeCommand, run, help="fold a LoRA fine-tune into full weights",
                description="Write MODEL (a --method lora fine-tune's run) as a plain run whose weights hold "
                            "W + (alpha/r) B A: it needs neither peft nor the base, and exports like any run.")


def run(cmd: MergeCommand) -> int:
    src = cmd.source.model
    out = merge_run(src, cmd.output.out, checkpoint=cmd.source.checkpoint, force=cmd.output.force)
    log(f"{src} merged -> {out}; sample with: tinygpt sample {quote(str(out))} --instruct --prompt \"...\"")
    return 0
