"""The training loop: a ``Trainer`` whose whole state round-trips through ``state_dict()``.

The trainer owns the optimizer, the schedule, mixed precision, batching and
checkpoints; it knows nothing of attention. A run stops at whichever budget comes
first (steps, tokens, wall-clock time) and the learning-rate schedule is laid over
that same budget, so a ``--max-time 6h`` run decays properly by morning.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import check_choices, opt, parse_count, parse_duration, to_dict
from .data import Batches, DataConfig, TokenData
from .device import autocast, configure_backends, dtype_name, resolve_device, resolve_dtype
from .errors import TinyGPTError
from .model import GPT, PRESETS, GPTConfig
from .optim import SCHEDULES, lr_at, make_optimizer

DEFAULT_TIME_BUDGET = 300.0  # seconds, when no budget at all is given

# Training settings that go with each model preset (laid under config files and flags).
# Small models tolerate, and over a short budget need, larger learning rates: char-tiny
# on Shakespeare, 150 s on a 2-core CPU, reached val loss 2.18 / 1.91 / 1.83 / 1.78 at
# lr 1e-3 / 3e-3 / 5e-3 / 8e-3 (grad norms stayed below 2); 6e-3 leaves some margin for
# other corpora. The GPT-2 sizes take the GPT-3 paper's rates and AdamW beta2.
PRESET_TRAINING: dict[str, dict] = {
    "char-tiny": dict(lr=6e-3),
    "char-small": dict(lr=2e-3),
    "baby": dict(lr=1e-3, batch_size=64),
    "baby-llama": dict(lr=1e-3, batch_size=64),
    "gpt2": dict(lr=6e-4, beta2=0.95, batch_size=8),
    "gpt2-medium": dict(lr=3e-4, beta2=0.95, batch_size=4),
    "gpt2-large": dict(lr=2.5e-4, beta2=0.95, batch_size=2),
    "gpt2-xl": dict(lr=2e-4, beta2=0.95, batch_size=1),
}


@dataclass
class TrainConfig:
    preset: str = opt("auto", "model preset; auto picks one that fits the hardware found (cpu: char-tiny, gpu: baby)",
                      choices=("auto",) + tuple(PRESETS))
    out: str | None = opt(None, "run directory (default: runs/<name>)")
    name: str | None = opt(None, "run name under runs/ (default: <data>-<preset>-<date>-<time>)")
    max_steps: int | None = opt(None, "stop after this many optimizer steps (e.g. 5000, 20k)", parse=parse_count)
    max_tokens: int | None = opt(None, "stop after training on this many tokens (e.g. 50M)", parse=parse_count)
    max_time: float | None = opt(None, "stop after this much wall-clock time, e.g. 300, 15m, 6h "
                                 "(default 5m when no other budget is given)", parse=parse_duration)
    batch_size: int = opt(32, "sequences per micro-batch")
    tokens_per_step: int | None = opt(None, "tokens per optimizer step; micro-batches are accumulated to reach it "
                                      "(default: one micro-batch)", parse=parse_count)
    lr: float = opt(1e-3, "peak learning rate (each preset sets its own; see PRESET_TRAINING)")
    min_lr: float | None = opt(None, "learning rate at the end of the schedule (default lr/10)")
    warmup_steps: int = opt(100, "linear warmup steps")
    schedule: str = opt("cosine", "decay after warmup", choices=SCHEDULES)
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices and embeddings only)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)")
    eval_interval: int = opt(200, "evaluate and checkpoint every N steps")
    eval_batches: int = opt(20, "batches averaged per evaluation")
    sample_interval: int = opt(0, "print a sample every N steps (0: only at the end)")
    sample_tokens: int = opt(200, "length of the printed samples in tokens (0: none)")
    device: str = opt("auto", "cpu, cuda, cuda:N or mps (auto: the best available)")
    dtype: str = opt("auto", "number format (auto: bf16 where fast, fp16 on older GPUs, else fp32)",
                     choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the model (slow start, faster steps on GPUs)")
    seed: int = opt(1337, "random seed (weights, batches, dropout)")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_choices(self)
        at_least = {"batch_size": 1, "eval_interval": 1, "eval_batches": 1, "max_steps": 1, "max_tokens": 1,
                    "tokens_per_step": 1, "warmup_steps": 0, "sample_interval": 0, "sample_tokens": 0}
        for name, lowest in at_least.items():
            v = getattr(self, name)
            if v is not None and v < lowest:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least {lowest}, got {v}")
        if self.max_time is not None and self.max_time <= 0:
            raise TinyGPTError(f"--max-time must be positive, got {self.max_time}")
        if self.lr <= 0 or (self.min_lr is not None and not 0 <= self.min_lr <= self.lr):
            raise TinyGPTError(f"need 0 < --lr and 0 <= --min-lr <= --lr, got lr={self.lr} min_lr={self.min_lr}")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as the run's config.json."""
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class Trainer:
    def __init__(self, cfg: RunConfig, data: TokenData, run_dir: str | Path, *,
                 log: Callable[[str], None] = print):
        self.cfg, self.data, self.run_dir, self.log = cfg, data, Path(run_dir), log
        t = cfg.train
        self.device = resolve_device(t.device)
        self.dtype = resolve_dtype(t.dtype, self.device)
        configure_backends(self.device)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)

        self.model = GPT(cfg.model).to(self.device)
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.optimizer = make_optimizer(self.model, t.lr, t.weight_decay, (t.beta1, t.beta2), self.device)
        # Loss scaling keeps fp16 gradients from underflowing; bf16/fp32 have the range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

        T = cfg.model.block_size
        self.batches = Batches(data.train, t.batch_size, T, mode=cfg.data.sampling, seed=t.seed, split="train")
        self.has_val = len(data.val) > 0
        if self.has_val:
            Batches(data.val, 1, T, split="val")  # fail now, not at the first evaluation
        tokens_per_micro = t.batch_size * T
        self.grad_accum = max(1, math.ceil((t.tokens_per_step or tokens_per_micro) / tokens_per_micro))
        self.tokens_per_step = self.grad_accum * tokens_per_micro
        no_budget = t.max_steps is None and t.max_tokens is None and t.max_time is None
        self.max_time = DEFAULT_TIME_BUDGET if no_budget else t.max_time
        self.min_lr = t.lr / 10 if t.min_lr is None else t.min_lr

        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0  # training wall-clock seconds, summed across resumes
        self.best_val = math.inf
        self.last_val: float | None = None
        self._stop: str | None = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "model": ckpt.weight_tensors(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "batches": self.batches.state_dict(),
            "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
            "best_val": self.best_val, "last_val": self.last_val,
            "rng": {
                "python": random.getstate(),
                "numpy": _numpy_rng_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict) -> None:
        ckpt.assign_weights(self.model, state.get("model", {}), self.run_dir / ckpt.TRAINER_STATE)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.batches.load_state_dict(state["batches"])
            self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
            self.best_val, self.last_val = state["best_val"], state["last_val"]
            rng = state["rng"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise TinyGPTError(f"the trainer state in {self.run_dir} does not fit this run ({str(e)[:120]}); "
                               "start a new run instead of --resume") from None
        random.setstate(rng["python"])
        _set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ budget

    def progress(self) -> float:
        """Fraction of the budget used: whichever of steps, tokens, time is furthest along."""
        t = self.cfg.train
        fractions = [0.0]
        if t.max_steps:
            span = max(1, t.max_steps - t.warmup_steps)
            fractions.append((self.step - t.warmup_steps) / span if t.max_steps > t.warmup_steps
                             else self.step / t.max_steps)
        if t.max_tokens:
            fractions.append(self.tokens / t.max_tokens)
        if self.max_time:
            fractions.append(self.elapsed / self.max_time)
        return min(1.0, max(fractions))

    def done(self) -> bool:
        t = self.cfg.train
        return ((t.max_steps is not None and self.step >= t.max_steps)
                or (t.max_tokens is not None and self.tokens >= t.max_tokens)
                or (self.max_time is not None and self.elapsed >= self.max_time))

    def lr(self) -> float:
        t = self.cfg.train
        return lr_at(self.step, self.progress(), lr=t.lr, min_lr=self.min_lr,
                     warmup_steps=t.warmup_steps, schedule=t.schedule)

    # ------------------------------------------------------------------ steps

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches."""
        self.model.train()
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for _ in range(self.grad_accum):
            x, y = self.batches.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device, self.dtype):
                loss = self.forward(x, y).loss / self.grad_accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        grad_norm = None
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.tokens_per_step
        return {"loss": total.item(), "lr": lr,
                "grad_norm": None if grad_norm is None else grad_norm.item()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over the same ``eval_batches`` windows of each split every time,
        so successive evaluations are comparable."""
        self.model.eval()
        t = self.cfg.train
        out = {}
        splits = [("train", self.data.train, 1)] + ([("val", self.data.val, 2)] if self.has_val else [])
        for split, tokens, salt in splits:
            batches = Batches(tokens, t.batch_size, self.cfg.model.block_size, seed=t.seed + salt, split=split)
            losses = []
            for _ in range(t.eval_batches):
                x, y = (b.to(self.device) for b in batches.next_batch())
                with autocast(self.device, self.dtype):
                    losses.append(self.forward(x, y).loss.float())
            out[f"{split}_loss"] = torch.stack(losses).mean().item()
        return out

    def save_checkpoint(self, val_loss: float | None) -> bool:
        """Write last weights and trainer state; the best weights too if ``val_loss`` improved.

        Returns whether this was a new best."""
        meta = {"step": self.step, "tokens": self.tokens, "val_loss": val_loss}
        improved = val_loss is not None and val_loss < self.best_val
        if improved:
            self.best_val = val_loss
        if improved or (not self.has_val and val_loss is None):
            ckpt.save_weights(self.model, self.run_dir / ckpt.BEST_WEIGHTS, meta)
        ckpt.save_weights(self.model, self.run_dir / ckpt.LAST_WEIGHTS, meta)
        ckpt.save_state(self.state_dict(), self.run_dir / ckpt.TRAINER_STATE)
        return improved

    # ------------------------------------------------------------------ loop

    def fit(self, on_step: Callable[["Trainer", dict], None] | None = None) -> dict:
        """Train until a budget runs out or a stop signal arrives; returns a summary.

        Ctrl+C / SIGTERM finish the current step, save a checkpoint and return with
        ``summary["interrupted"]`` set (a second Ctrl+C aborts at once)."""
        t = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = _MetricsLog(self.run_dir / ckpt.METRICS_FILE, keep_until_step=self.step)
        bar = _ProgressBar(enabled=t.progress)
        ema = None
        start_step = self.step
        with self._stop_signals(), metrics, bar:
            t_last = time.perf_counter()
            while not self.done() and self._stop is None:
                info = self.train_step()
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                self.elapsed += dt
                ema = info["loss"] if ema is None else 0.9 * ema + 0.1 * info["loss"]
                record = {"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed, 3),
                          **info, "tok_per_s": self.tokens_per_step / dt}
                if not math.isfinite(info["loss"]):
                    metrics.write(record)
                    raise TinyGPTError(f"the loss became {info['loss']} at step {self.step}; lower --lr "
                                       "(or use --dtype fp32 / --grad-clip 1.0) and start again")
                if self.step % t.eval_interval == 0 or self.done():
                    record.update(self.evaluate())
                    self.last_val = record.get("val_loss")
                    record["best"] = self.save_checkpoint(self.last_val if self.has_val else None)
                    t_last = time.perf_counter()  # evaluation and saving are not step time
                    self.elapsed += t_last - now
                metrics.write(record)
                bar.update(self, record, ema)
                if on_step is not None:
                    on_step(self, record)
                if t.sample_interval and self.step % t.sample_interval == 0 and not self.done():
                    bar.write(f"--- sample at step {self.step} ---\n{self.sample()}")
            interrupted = self._stop
            if interrupted and self.step > start_step:
                self.save_checkpoint(None)
        return {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                "val_loss": self.last_val, "best_val": self.best_val if self.has_val else None,
                "interrupted": interrupted}

    def sample(self, max_new_tokens: int | None = None, temperature: float = 0.8, top_k: int | None = 200) -> str:
        """A short sample from the current weights, from a document start (not the training RNG)."""
        from .generate import generate, start_ids

        tok = self.data.tokenizer
        idx = torch.tensor([start_ids(tok)], device=self.device)
        g = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed)
        with autocast(self.device, self.dtype):
            out = generate(self.model, idx, max_new_tokens or self.cfg.train.sample_tokens,
                           temperature=temperature, top_k=top_k, generator=g)
        return tok.decode(out[0, idx.shape[1]:].tolist())

    @contextmanager
    def _stop_signals(self):
        """First Ctrl+C / SIGTERM: stop after this step and checkpoint. Second Ctrl+C: abort."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop = signal.Signals(signum).name
            print(f"\n{self._stop}: finishing this step and saving a checkpoint "
                  "(Ctrl+C again to abort without saving)", file=sys.stderr, flush=True)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to checkpoint and return after the current step (as a signal does)."""
        self._stop = reason

    def describe(self) -> str:
        c, t = self.cfg.model, self.cfg.train
        return (f"model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context {c.block_size}, "
                f"{self.model.num_params() / 1e6:.2f}M parameters | device {self.device} {dtype_name(self.dtype)}"
                f"{' compiled' if t.compile else ''} | {self.tokens_per_step} tokens/step "
                f"(batch {t.batch_size} x {c.block_size} x {self.grad_accum} accumulation)")


def run_config_dict(cfg: RunConfig, data: TokenData) -> dict:
    """What goes into config.json: every setting, the tokenizer, the data's content hash
    (a resumed run must see the same tokens) and library versions."""
    import platform

    from . import __version__

    return {**to_dict(cfg), "tokenizer": data.tokenizer.to_dict(), "data_key": data.meta["key"],
            "versions": {"tinygpt": __version__, "torch": torch.__version__, "python": platform.python_version()}}


def _numpy_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(s: dict) -> None:
    np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


class _MetricsLog:
    """Append-only JSONL of per-step records; on resume, drops records past the checkpoint
    (steps the interrupted run took but never saved)."""

    def __init__(self, path: Path, keep_until_step: int):
        import json

        self.path, self._json = path, json
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= keep_until_step]
            if len(kept) != len(lines):
                ckpt.atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8")
        return self

    def write(self, record: dict) -> None:
        self.file.write(self._json.dumps(record) + "\n")
        self.file.flush()

    def __exit__(self, *exc):
        self.file.close()


class _ProgressBar:
    """tqdm bar over the budget (steps, tokens or time alike), with loss, lr, tokens/s, ETA."""

    RESOLUTION = 1000

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # Redirected to a file, a line every 10 s beats a wall of carriage returns.
            interval = 0.5 if sys.stderr.isatty() else 10.0
            self.bar = tqdm(total=self.RESOLUTION, dynamic_ncols=True, mininterval=interval, file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def update(self, trainer: Trainer, record: dict, ema: float) -> None:
        if self.bar is None:
            return
        val = trainer.last_val
        self.bar.set_description_str(
            f"step {trainer.step} | loss {ema:.4f}" + (f" | val {val:.4f}" if val is not None else "")
            + f" | lr {record['lr']:.2e} | {record['tok_per_s']:,.0f} tok/s |", refresh=False)
        self.bar.update(int(trainer.progress() * self.RESOLUTION) - self.bar.n)

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        if self.bar is not None:
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
