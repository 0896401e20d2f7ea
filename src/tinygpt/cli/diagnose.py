"""``tinygpt diagnose``: activation, gradient and update health of a model, as text and pictures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..analysis import health, health_pictures
from ..analysis.source import titled_model
from ..checkpoint import atomic_write_text
from ..config import add_command, section
from ..console import log
from ..device import RuntimeConfig
from ..options import OutputOptions
from ..source import ModelSource


@dataclass
class DiagnoseCommand:
    source: ModelSource = field(default_factory=ModelSource)
    probe: health.DiagnoseOptions = field(default_factory=health.DiagnoseOptions)
    runtime: RuntimeConfig = section(RuntimeConfig, only=("device", "dtype", "threads"), dtype="fp32")
    output: OutputOptions = section(OutputOptions, only=("out", "json", "show"),
                                    shown={"out": "MODEL/plots for a run, else ./plots"})


def add_parser(sub) -> None:
    add_command(sub, "diagnose", DiagnoseCommand, run,
                help="check a model's training health (activations, gradients, updates)",
                description="Run a few batches through a checkpoint and report per layer: activation mean/std and "
                            "saturation, attention entropy, gradient statistics and gradient-to-weight ratios "
                            "(update-to-weight ratios against --previous weights, and over training when the run "
                            "recorded --diagnostics); flags problems with their likely fix and draws them.")


def run(cmd: DiagnoseCommand) -> int:
    from ..analysis import pictures  # matplotlib: only when drawing

    model = cmd.source.model
    lm, name = titled_model(model, checkpoint=cmd.source.checkpoint, device=cmd.runtime.device,
                            dtype=cmd.runtime.dtype)
    d = health.diagnose_model(lm, name, model, cmd.probe, log=log)
    print(health.format_report(d.name, d.result, d.problems, d.recorded))
    paths = health_pictures.draw(d.name, d.result, pictures.folder("plots", cmd.output.out, model), d.recorded)
    for p in paths:
        log(f"wrote {p}")
    if cmd.output.json:
        atomic_write_text(cmd.output.json, json.dumps({"model": d.name, **d.result, "problems": d.problems},
                                                      indent=1) + "\n")
    if cmd.output.show:
        for p in paths:
            pictures.show(p)
    return 0
