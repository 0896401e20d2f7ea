"""``tinygpt plot``: training curves of one or more runs (also of a run still training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw training curves of runs",
                       description="Draw train/val loss against steps, tokens and wall time, learning rate, "
                                   "tokens/s and gradient norm from runs' metrics.jsonl (several runs overlaid), "
                                   "and bits per byte by step once 'tinygpt eval' scored a text at two or more "
                                   "steps of a run (its eval.json).")
    p.add_argument("runs", metavar="RUN", nargs="+", help="run directories")
    p.add_argument("--smooth", type=float, default=0.9, help="EMA factor for per-step lines, 0 = raw (default 0.9)")
    p.add_argument("--log", action="store_true", help="log scale for the loss axes (and gradient norm)")
    p.add_argument("--log-x", action="store_true", help="log scale for the x axes")
    p.add_argument("--out", help="the PNG to write (default: FIRST_RUN/plots/curves.png)")
    p.add_argument("--json", metavar="FILE", help="also write each run's summary as JSON")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until Ctrl+C")
    p.add_argument("--show", action="store_true", help="open the picture in a window as well")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from ..analysis import curves, pictures
    from ..checkpoint import atomic_write_text
    from ..errors import TinyGPTError
    from ..run import RunDir

    if args.watch is not None and args.watch <= 0:
        raise TinyGPTError(f"--watch must be a positive number of seconds, got {args.watch}")
    names = [Path(r).resolve().name for r in args.runs]
    if len(set(names)) < len(names):  # two runs of the same name in different folders: show their paths
        names = [str(r) for r in args.runs]
    out = Path(args.out) if args.out else RunDir.open(args.runs[0]).pictures_dir("plots") / "curves.png"
    while True:
        runs = [curves.read(r, n) for r, n in zip(args.runs, names)]
        path = curves.draw(runs, out, smoothing=args.smooth, log_y=args.log, log_x=args.log_x)
        rows = [r.summary() for r in runs]
        print(curves.format_summary(rows), flush=True)
        log(f"wrote {path}")
        if args.json:
            atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
        if args.watch is None:
            break
        time.sleep(args.watch)
    if args.show:
        pictures.show(path)
    return 0
