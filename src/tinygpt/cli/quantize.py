"""``tinygpt quantize``: a model's weights to int8 or int4, as a run of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from shlex import quote

from ..compress import QuantizeOptions, quantize_run
from ..config import add_command, section
from ..console import log
from ..options import OutputOptions
from ..source import ModelSource


@dataclass
class QuantizeCommand:
    source: ModelSource = field(default_factory=ModelSource)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    output: OutputOptions = section(OutputOptions, only=("out", "force"), shown={"out": "MODEL-int8 (or -int4, "
                                                                                        "-dynamic-int8) beside it"})


def add_parser(sub) -> None:
    add_command(sub, "quantize", QuantizeCommand, run, help="int8 / int4 weights: a smaller, faster run",
                description="Write MODEL with its linear layers' weights in int8 (per output channel) or int4 "
                            "(groups of --group-size, llama.cpp's q4_0 rule) as a run that sample, chat, eval, "
                            "serve, export and bench generate load directly. --rounding awq-lite or gptq-lite "
                            "choose int4 values with a calibration text (--data; the run's training text by "
                            "default).")


def run(cmd: QuantizeCommand) -> int:
    src = cmd.source.model
    out = quantize_run(src, cmd.output.out, cmd.quantize, checkpoint=cmd.source.checkpoint, force=cmd.output.force,
                       log=log)
    how = f"{cmd.quantize.scheme}, {cmd.quantize.rounding}"
    log(f"{src} quantized ({how}) -> {out}; try: tinygpt sample {quote(str(out))}")
    return 0
