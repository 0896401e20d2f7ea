"""``tinygpt plot``: training curves of one or more runs (also of a run still training)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ..analysis import curves
from ..checkpoint import atomic_write_text
from ..config import add_command, section
from ..console import log
from ..options import OutputOptions


@dataclass
class PlotCommand:
    curves: curves.CurvesOptions = field(default_factory=curves.CurvesOptions)
    output: OutputOptions = section(OutputOptions, only=("out", "json", "show"),
                                    shown={"out": "FIRST_RUN/plots/curves.png"})


def add_parser(sub) -> None:
    add_command(sub, "plot", PlotCommand, run, help="draw training curves of runs",
                description="Draw train/val loss against steps, tokens and wall time, learning rate, tokens/s and "
                            "gradient norm from runs' metrics.jsonl (several runs overlaid), and bits per byte by "
                            "step once 'tinygpt eval' scored a text at two or more steps of a run (its eval.json). "
                            "--out names the PNG.")


def run(cmd: PlotCommand) -> int:
    from ..analysis import pictures  # matplotlib: only when drawing

    c = cmd.curves
    names, path = c.names(), c.picture(cmd.output.out)
    while True:
        runs = [curves.read(r, n) for r, n in zip(c.runs, names)]
        path = curves.draw(runs, path, smoothing=c.smooth, log_y=c.log, log_x=c.log_x)
        rows = [r.summary() for r in runs]
        print(curves.format_summary(rows), flush=True)
        log(f"wrote {path}")
        if cmd.output.json:
            atomic_write_text(cmd.output.json, json.dumps(rows, indent=1) + "\n")
        if c.watch is None:
            break
        time.sleep(c.watch)
    if cmd.output.show:
        pictures.show(path)
    return 0
