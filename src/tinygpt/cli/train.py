"""``tinygpt train``: settings from --config and flags, then the library's Session does the run."""

from __future__ import annotations

import argparse
import time

from ..config import add_arguments, cli_values, load_config_file
from ..errors import TinyGPTError
from ..train import RunConfig, Session
from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a GPT on text (default: Shakespeare, 5 minutes)",
                       description="Train a GPT. Every option can also come from --config FILE "
                                   "(YAML or JSON, flat or nested by section: model/data/train/runtime); flags win.")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of options")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory exactly where it stopped")
    p.add_argument("--force", action="store_true",
                   help="start the run in --out even if that directory holds other files or an old run "
                        "(files with a run's names are replaced)")
    add_arguments(p, RunConfig, skip=("vocab_size",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    layers = (load_config_file(args.config) if args.config else {}, cli_values(RunConfig, args))
    if args.resume:
        if args.force:
            raise TinyGPTError("--force is for starting a new run in --out; --resume never replaces anything")
        session = Session.resume(args.resume, *layers, log=log)
    else:
        session = Session.start(*layers, force=args.force, log=log)
    return fit_and_report(session, resumed=bool(args.resume), budget_flags="--max-steps, --max-tokens or --max-time")


def fit_and_report(session: Session, *, resumed: bool, budget_flags: str, sample_flags: str = "") -> int:
    """Describe the run, train it to its budget, say how it went and print a sample: what
    ``tinygpt train`` and ``tinygpt finetune`` do with a session. Returns the exit status:
    128 + the signal after Ctrl+C / SIGTERM (the shell's convention: 130, 143)."""
    run_dir, trainer = session.run.path, session.trainer
    if resumed:
        s = trainer.state
        log(f"resuming {run_dir} at step {s.step} ({s.tokens:,} tokens, {s.elapsed:.0f}s trained)")
    for line in session.describe():
        log(line)
    if trainer.done():
        log(f"{run_dir} already used its budget at step {trainer.state.step}; raise {budget_flags} to train further")
        return 0

    t0, tokens0 = time.time(), trainer.state.tokens
    summary = session.fit()
    val, seconds = summary["val_loss"], time.time() - t0
    log(f"{'stopped' if summary['interrupted'] else 'done'}: step {summary['step']}, "
        f"{summary['tokens']:,} tokens, {seconds:.0f}s this session "
        f"({(summary['tokens'] - tokens0) / max(seconds, 1e-9):,.0f} tokens/s with evaluations)"
        + (f", val loss {val:.4f} (best {summary['best_val']:.4f})" if val is not None else ""))
    if summary["signal"]:
        log(f"checkpoint saved; continue with: {session.resume_command()}")
        return 128 + summary["signal"]
    if summary["interrupted"]:
        log(summary["interrupted"])  # a stop that is not a signal: --early-stop
    if session.cfg.train.sample_tokens:
        print("--- sample ---")
        print(session.sample(), flush=True)
        print("--------------")
    log(f"weights: {session.run.weights_path('best')}; sample with: tinygpt sample {run_dir}{sample_flags} "
        "--prompt \"...\"")
    return 0
