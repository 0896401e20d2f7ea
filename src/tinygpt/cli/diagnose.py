"""``tinygpt diagnose``: activation, gradient and update health of a model, as text and pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_checkpoint_option, log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="check a model's training health (activations, gradients, updates)",
        description="Run a few batches through a checkpoint and report per layer: activation mean/std and "
                    "saturation, attention entropy, gradient statistics and gradient-to-weight ratios "
                    "(update-to-weight ratios against --previous weights, and over training when the run "
                    "recorded --diagnostics); flags problems with their likely fix and draws them.")
    p.add_argument("model", metavar="MODEL", help="run directory, or a Hugging Face GPT-2 name or directory")
    add_checkpoint_option(p)
    p.add_argument("--previous", metavar="WEIGHTS",
                   help="earlier weights of the same model (best, last or a .safetensors path) for update ratios")
    p.add_argument("--data", help="text to probe with (default: the run's own training data)")
    p.add_argument("--batches", type=int, default=4, help="probe batches averaged (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per probe batch (default 8)")
    p.add_argument("--out", help="folder for the pictures (default: RUN/plots, else ./plots)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--show", action="store_true", help="open the pictures in windows as well")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from safetensors.torch import load_file

    from ..analysis import health, pictures, source
    from ..checkpoint import atomic_write_text
    from ..errors import TinyGPTError
    from ..run import RunDir

    if args.batches < 1 or args.batch_size < 1:
        raise TinyGPTError("--batches and --batch-size must be at least 1")
    lm, name = source.open_model(args.model, checkpoint=args.checkpoint)
    run_dir = RunDir(args.model) if RunDir.is_run(args.model) else None
    previous = None
    if args.previous:
        path = run_dir.weights_path(args.previous) if run_dir and args.previous in ("best", "last") \
            else Path(args.previous)
        if not path.is_file():
            raise TinyGPTError(f"--previous {args.previous}: no weights file at {path}; give best, last or a "
                               ".safetensors path")
        previous = load_file(str(path))
    batches = health.probe_batches(lm, run_dir, args.data, args.batches, args.batch_size, log=log)
    result = health.diagnose(lm, batches, previous)
    recorded = run_dir.read_diagnostics(notice=log) if run_dir else []
    problems = health.judge(result, recorded)
    print(health.format_report(name, result, problems, recorded))
    out = Path(args.out) if args.out else run_dir.pictures_dir("plots") if run_dir else Path("plots")
    paths = health.draw(name, result, out, recorded)
    for p in paths:
        log(f"wrote {p}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": name, **result, "problems": problems}, indent=1) + "\n")
    if args.show:
        for p in paths:
            pictures.show(p)
    return 0
