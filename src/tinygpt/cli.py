"""``tinygpt`` command line. Every option comes from a config dataclass; this module only
wires them to commands and turns user errors into one-line messages."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from .config import add_arguments, cli_values, flatten_values, layered, load_config_file, opt, to_dict
from .errors import TinyGPTError

# Settings that define what a run *is*; they cannot change when it is resumed.
FIXED_ON_RESUME = ("model", "data")


@dataclass
class SampleConfig:
    prompt: str = opt("", "text to continue (default: start of a document)")
    prompt_file: str | None = opt(None, "read the prompt from this file instead")
    max_new_tokens: int = opt(300, "tokens to generate per sample")
    temperature: float = opt(0.8, "sampling temperature (0: greedy)")
    top_k: int | None = opt(200, "sample only from the k likeliest tokens (none: all)")
    top_p: float | None = opt(None, "sample only from the smallest set of tokens with this total probability")
    num_samples: int = opt(1, "how many samples to draw")
    seed: int | None = opt(None, "random seed for reproducible samples")
    checkpoint: str = opt("best", "which weights: best (lowest val loss), last, or a .safetensors path")
    device: str = opt("auto", "cpu, cuda, cuda:N or mps (auto: the best available)")
    dtype: str = opt("fp32", "number format for inference", choices=("auto", "fp32", "bf16", "fp16"))

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.num_samples < 1:
            raise TinyGPTError("--max-new-tokens must be >= 0 and --num-samples >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise TinyGPTError(f"--top-p must be in (0, 1], got {self.top_p}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- train

def _train_config(args: argparse.Namespace):
    """RunConfig from defaults < preset < --config file < flags, with the 'auto' preset resolved."""
    from .device import resolve_device
    from .model import preset
    from .train import PRESET_TRAINING, RunConfig

    file_values = load_config_file(args.config) if args.config else {}
    flags = cli_values(RunConfig, args)
    given = layered(RunConfig, file_values, flags).train
    name = given.preset
    if name == "auto":
        name = "char-tiny" if resolve_device(given.device).type == "cpu" else "baby"
    return layered(RunConfig, {"model": preset(name), "train": PRESET_TRAINING.get(name, {})}, file_values, flags,
                   {"train": {"preset": name}})


def _resume_config(run_dir: Path, args: argparse.Namespace):
    """The saved RunConfig with only training settings overridable."""
    from .train import RunConfig

    saved = ckpt.load_run_config(run_dir)
    base = layered(RunConfig, {k: saved[k] for k in ("model", "data", "train") if k in saved})
    file_values = load_config_file(args.config) if args.config else {}
    changes = {**flatten_values(RunConfig, file_values), **flatten_values(RunConfig, cli_values(RunConfig, args))}
    for path, value in changes.items():
        section = getattr(base, path[0])
        if path[0] in FIXED_ON_RESUME and getattr(section, path[-1]) != value and path[-1] != "vocab_size":
            raise TinyGPTError(f"--{path[-1].replace('_', '-')} cannot change when resuming (the run has "
                               f"{getattr(section, path[-1])!r}); start a new run with --out instead")
    train_changes = {path[-1]: v for path, v in changes.items() if path[0] == "train"}
    return saved, layered(RunConfig, to_dict(base), {"train": train_changes})


def cmd_train(args: argparse.Namespace) -> int:
    from .config import replace
    from .data import prepare_data
    from .train import Trainer, run_config_dict

    if args.resume:
        run_dir = Path(args.resume)
        saved, cfg = _resume_config(run_dir, args)
    else:
        cfg = _train_config(args)
        run_dir = Path(cfg.train.out) if cfg.train.out else Path("runs") / (cfg.train.name or _run_name(cfg))
        if (run_dir / ckpt.CONFIG_FILE).exists():
            raise TinyGPTError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                               "or choose another --out / --name")

    data = prepare_data(cfg.data, log=_log)
    cfg = replace(cfg, {"model": {"vocab_size": data.tokenizer.vocab_size}})
    if args.resume and saved.get("data_key") != data.meta["key"]:
        raise TinyGPTError(f"the text at --data {cfg.data.data!r} has changed since {run_dir} started; resuming "
                           "needs the same files (restore them, or start a new run)")

    trainer = Trainer(cfg, data, run_dir, log=_log)  # validates everything before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        trainer.load_state_dict(ckpt.load_state(run_dir / ckpt.TRAINER_STATE))
        _log(f"resuming {run_dir} at step {trainer.step} ({trainer.tokens:,} tokens, "
             f"{trainer.elapsed:.0f}s trained)")
    else:
        data.tokenizer.save(run_dir)
    ckpt.atomic_write_json(run_dir / ckpt.CONFIG_FILE, run_config_dict(cfg, data))
    _log(f"run: {run_dir}")
    _log(trainer.describe())
    budget = [f"{k} {v}" for k, v in (("steps", cfg.train.max_steps), ("tokens", cfg.train.max_tokens),
                                      ("time", f"{trainer.max_time:.0f}s" if trainer.max_time else None)) if v]
    _log(f"budget: {', '.join(budget)}; data: {len(data.train):,} train / {len(data.val):,} val tokens "
         f"({data.tokenizer.kind} tokenizer, {data.tokenizer.vocab_size} tokens)")
    if trainer.done():
        _log(f"{run_dir} already used its budget at step {trainer.step}; raise --max-steps, --max-tokens "
             "or --max-time to train further")
        return 0

    t0, tokens0 = time.time(), trainer.tokens
    summary = trainer.fit()
    val, seconds = summary["val_loss"], time.time() - t0
    _log(f"{'stopped' if summary['interrupted'] else 'done'}: step {summary['step']}, "
         f"{summary['tokens']:,} tokens, {seconds:.0f}s this session "
         f"({(summary['tokens'] - tokens0) / max(seconds, 1e-9):,.0f} tokens/s with evaluations)"
         + (f", val loss {val:.4f} (best {summary['best_val']:.4f})" if val is not None else ""))
    if summary["interrupted"]:
        _log(f"checkpoint saved; continue with: tinygpt train --resume {run_dir}")
        return 130
    if cfg.train.sample_tokens:
        print("--- sample ---")
        print(trainer.sample(), flush=True)
        print("--------------")
    _log(f"weights: {run_dir / ckpt.BEST_WEIGHTS}; sample with: tinygpt sample {run_dir} --prompt \"...\"")
    return 0


def _run_name(cfg) -> str:
    stem = Path(cfg.data.data.rstrip("/*")).stem or "data"
    return f"{stem}-{cfg.train.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------- sample

def cmd_sample(args: argparse.Namespace) -> int:
    from .config import from_dict
    from .generate import load

    s = from_dict(SampleConfig, cli_values(SampleConfig, args))
    prompt = s.prompt
    if s.prompt_file:
        try:
            prompt = Path(s.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TinyGPTError(f"cannot read --prompt-file {s.prompt_file}: {e}; give a UTF-8 text file") from None
    lm = load(args.run, checkpoint=s.checkpoint, device=s.device, dtype=s.dtype)
    _log(f"{lm.checkpoint}: step {lm.step}" + (f", val loss {lm.val_loss:.4f}" if lm.val_loss is not None else "")
         + f" | {lm.model.num_params() / 1e6:.2f}M parameters on {lm.device}")
    ids, cropped = lm.encode_prompt(prompt)
    if cropped:
        _log(f"notice: the prompt is longer than the context; using its last {lm.model.config.block_size} tokens")
    for i in range(s.num_samples):
        if s.num_samples > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        sys.stdout.write(lm.tokenizer.decode(ids[0].tolist()) if prompt else "")
        lm.generate(prompt, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                    seed=None if s.seed is None else s.seed + i,
                    on_text=lambda _, piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    from .train import RunConfig

    parser = argparse.ArgumentParser(prog="tinygpt", description="Train, run and study small GPT language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("train", help="train a GPT on text (default: Shakespeare, 5 minutes)",
                       description="Train a GPT. Every option can also come from --config FILE "
                                   "(YAML or JSON, flat or nested by section: model/data/train); flags win.")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of options")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory exactly where it stopped")
    add_arguments(p, RunConfig, skip=("vocab_size",))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run directory written by 'tinygpt train'.")
    p.add_argument("run", metavar="RUN", help="run directory, e.g. runs/shakespeare-char-tiny-...")
    add_arguments(p, SampleConfig)
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TinyGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
