"""A training run from settings to a run directory: what ``tinygpt train`` does, as a library.

    from tinygpt.train import Session
    session = Session.start({"data": "my_book.txt", "max_time": "15m"})   # or Session.resume("runs/x")
    summary = session.fit()
    print(session.sample())

Settings are layered (defaults < preset < each given layer, flat or nested dicts), the
'auto' preset is resolved for the device found, the model's vocabulary comes from the
tokenizer, and everything is built and checked before anything is written to disk.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import versions
from ..checkpoint import DiskFullError
from ..config import flatten_values, from_dict, layered, replace, to_dict
from ..data import Batch, Batches, DataConfig, TokenData, absolute_spec, prepare_data
from ..device import (
    cpu_has_bf16,
    dtype_name,
    fresh_seed,
    resolve_device,
    resolve_dtype,
    seed_everything,
)
from ..errors import TinyGPTError
from ..generation import GenerationConfig, TinyGPT
from ..model import GPT
from ..presets import get_preset, resolve_preset
from ..run import RunDir
from .callbacks import (
    Callback,
    Checkpointer,
    EarlyStop,
    Evaluator,
    MetricsLog,
    PeriodicSampler,
    ProgressBar,
)
from .config import RunConfig
from .health import HealthProbe
from .recipe import preset_for_time, training_speed
from .trainer import DEFAULT_TIME_BUDGET, DivergedError, Trainer

RUNS_DIR = Path("runs")
# Settings that define what a run *is*; they cannot change when it is resumed. (Where
# the data is may change: Session.resume checks the text itself is the same.)
FIXED_ON_RESUME = ("model", "data", ("train", "preset"), ("train", "optimizer"))


def new_run_config(*layers: dict) -> RunConfig:
    """Defaults < the preset's model shape and training settings < ``layers``; 'auto' resolved."""
    given = layered(RunConfig, *layers)
    name = resolve_preset(given.train.preset, resolve_device(given.runtime.device).type)
    cfg = layered(RunConfig, get_preset(name).layer(), *layers, {"train": {"preset": name}})
    if cfg.runtime.seed is None:  # asked for fresh randomness: draw a seed and record it, so resume works
        cfg = replace(cfg, {"runtime": {"seed": fresh_seed()}})
    return cfg


def resumed_run_config(saved: dict, *layers: dict, cls: type = RunConfig, fixed_on_resume: tuple = FIXED_ON_RESUME):
    """A saved run's config (of schema ``cls``) with ``layers`` laid over it; the settings in
    ``fixed_on_resume`` (sections, or (section, option) paths) cannot change."""
    base = layered(cls, {f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})
    changes: dict = {}
    for layer in layers:
        changes.update(flatten_values(cls, layer))
    fixed = [p for p in changes if (p[0] in fixed_on_resume or p in fixed_on_resume) and p != ("data", "data")]
    for path in fixed:
        current = getattr(getattr(base, path[0]), path[-1])
        if current != changes[path]:
            raise TinyGPTError(f"--{path[-1].replace('_', '-')} cannot change when resuming (the run has "
                               f"{current!r}); start a new run with --out instead")
    allowed = {path[-1]: v for path, v in changes.items() if path not in fixed}
    return layered(cls, to_dict(base), allowed)


def measure_training_dtype(model: GPT, batch_size: int, log: Callable[[str], None]) -> torch.dtype:
    """fp32 or bf16 autocast for training ``model`` on this CPU, whichever runs its forward
    and backward faster. Which wins depends on the machine and the model: on a 2-core AMX
    Xeon bf16 trained the 10.8M-parameter baby 2.3x faster than fp32, but char-nano (0.8M)
    10% slower, its matmuls too small to gain what the casts cost."""
    speed = training_speed(model, batch_size)
    best = max(speed, key=speed.get)
    log(f"dtype auto: {dtype_name(best)} (measured on this model: bf16 forward+backward "
        f"{speed[torch.bfloat16] / speed[torch.float32]:.2f}x fp32's speed)")
    return best


def training_dtype(cfg, model: GPT, device: torch.device, log: Callable[[str], None]) -> tuple[torch.dtype, object]:
    """The dtype to train ``model`` in, and ``cfg`` (a run's config with a ``runtime`` and a
    ``train`` section) with it recorded, so a resume keeps it: the configured one, or for
    ``auto`` on a CPU with bf16, whichever of fp32 and bf16 measured faster on this model."""
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    if cfg.runtime.dtype == "auto" and device.type == "cpu" and cpu_has_bf16():
        dtype = measure_training_dtype(model, cfg.train.batch_size, log)
        cfg = replace(cfg, {"runtime": {"dtype": dtype_name(dtype)}})
    return dtype, cfg


def run_data(path: str | Path, log: Callable[[str], None] = print) -> TokenData:
    """The tokenized corpus the run at ``path`` trained on, as its config.json records it
    (from the cache when it is there): its held-out split to evaluate on, its training
    split to probe with."""
    run = RunDir.open(path)
    config = run.read_config()
    data = from_dict(DataConfig, config.get("data", {}))
    if "finetune" not in config:
        return prepare_data(data, log=log)
    if data.data.endswith(".jsonl"):  # see tinygpt.data.instruct
        raise TinyGPTError(f"{run.path} was fine-tuned on instruction data ({data.data}), not a text with a held-out "
                           "tail; give --data with a text to use")
    return prepare_data(data, tokenizer=run.load_tokenizer(), log=log)  # a fine-tune reads with its base's


def default_run_dir(cfg: RunConfig) -> Path:
    """``--out``, else ``runs/<--name>``, else ``runs/<data>-<preset>-<date>-<time>``."""
    if cfg.train.out:
        return Path(cfg.train.out)
    stem = _data_name(cfg.data.data)
    return RUNS_DIR / (cfg.train.name or f"{stem}-{cfg.train.preset}-{time.strftime('%Y%m%d-%H%M%S')}")


def _data_name(spec: str) -> str:
    """A file's stem, a folder's name, or for a glob the folder before its first wildcard."""
    plain = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), Path(spec).parts))
    return (Path(*plain).stem if plain else "") or "data"


class Session:
    """A run's config, data, model and trainer, and the run directory they write to."""

    def __init__(self, cfg: RunConfig, run: RunDir, data: TokenData, trainer: Trainer):
        self.cfg, self.run, self.data, self.trainer = cfg, run, data, trainer

    @classmethod
    def start(cls, *layers: dict, force: bool = False, log: Callable[[str], None] = print) -> "Session":
        """A new run from settings layers (e.g. a config file's, then command-line flags).

        The run directory must be new or empty unless ``force`` (then a run's files there
        are replaced). It is locked for the life of the process."""
        cfg = new_run_config(*layers)
        RunDir.check_new(default_run_dir(cfg), force=force)  # before the data is prepared, which can take a while
        data = prepare_data(cfg.data, log=log)
        given = layered(RunConfig, *layers).train
        if given.preset == "auto" and given.max_steps is None and given.max_tokens is None \
                and resolve_device(cfg.runtime.device).type == "cpu":  # a time budget: size the model to it
            seconds = given.max_time or DEFAULT_TIME_BUDGET
            cfg = new_run_config(*layers, {"train": {"preset": preset_for_time(seconds, data.tokenizer.vocab_size,
                                                                               log)}})
        path = default_run_dir(cfg)  # the name holds the preset; --out and --name were checked above
        cfg = replace(cfg, {"model": {"vocab_size": data.tokenizer.vocab_size},
                            "data": {"data": absolute_spec(cfg.data.data)}})
        session = cls._build(cfg, data, RunDir(path), log)  # checks everything before anything is written
        session.run = RunDir.create(path, force=force)
        # config.json first: from then on the directory is a run, and one killed before its
        # first checkpoint resumes from step 0 (see resume).
        session._write_config()
        session.run.save_tokenizer(data.tokenizer)
        return session

    @classmethod
    def resume(cls, path: str | Path, *layers: dict, log: Callable[[str], None] = print) -> "Session":
        """Continue the run at ``path`` exactly where its last checkpoint left it (a run
        stopped before its first checkpoint starts over, with its recorded settings)."""
        run = RunDir.open(path)
        saved = run.read_config()
        if "finetune" in saved:
            raise TinyGPTError(f"{run.path} is a fine-tune; continue it with: tinygpt finetune --resume {run.path}")
        run.lock()
        try:
            resumed_run_config(saved)  # the recorded settings alone: a failure here is damage, not a bad flag
        except TinyGPTError as e:
            raise TinyGPTError(f"{run.path / 'config.json'}: {e}; the run directory is damaged") from None
        cfg = resumed_run_config(saved, *layers)
        recorded = saved.get("data", {}).get("data", cfg.data.data)
        if cfg.data.data == recorded and absolute_spec(recorded) != recorded and not glob.has_magic(recorded) \
                and not Path(recorded).expanduser().exists():  # tinygpt 0.1 recorded the path as typed
            raise TinyGPTError(f"the run's data {recorded!r} is not found from here (the run recorded it "
                               f"relative to where it started); pass --data with its path")
        data = prepare_data(cfg.data, log=log)
        if saved.get("data_key") != data.meta["key"]:
            raise TinyGPTError(f"the text at --data {cfg.data.data!r} is not the text {run.path} was trained on "
                               f"(recorded at {recorded!r}); give the same files (names and contents), or start "
                               "a new run")
        cfg = replace(cfg, {"data": {"data": absolute_spec(cfg.data.data)}})  # it may have moved
        if cfg.model.vocab_size != data.tokenizer.vocab_size:
            raise TinyGPTError(f"{run.path} has a {cfg.model.vocab_size}-token model but the data's tokenizer has "
                               f"{data.tokenizer.vocab_size}; the run directory is inconsistent")
        session = cls._build(cfg, data, run, log)
        if run.has_checkpoint():
            session.trainer.load_state_dict(run.load_state(), source=str(run.state_path))
        else:
            log(f"notice: {run.path} stopped before its first checkpoint; starting it over from step 0 "
                "with its recorded settings")
        run.trim_metrics(session.trainer.state.step, notice=log)
        session._write_config()
        if not run.has_tokenizer():  # a start killed between config.json and the tokenizer
            run.save_tokenizer(data.tokenizer)
        return session

    @classmethod
    def _build(cls, cfg: RunConfig, data: TokenData, run: RunDir, log: Callable[[str], None]) -> "Session":
        device = resolve_device(cfg.runtime.device)
        T = cfg.model.block_size
        # Batch windows first: a corpus too short for one block fails here, before any work.
        batches = Batches(data.train, cfg.train.batch_size, T, mode=cfg.data.sampling, seed=cfg.runtime.seed,
                          split="train")
        if len(data.val):
            Batches(data.val, 1, T, split="val")
        seed_everything(cfg.runtime.seed)  # the model's init is the first draw from the seeded generators
        model = GPT(cfg.model).to(device)
        dtype, cfg = training_dtype(cfg, model, device, log)
        trainer = Trainer(model, cfg.train, batches, device=device, dtype=dtype)
        return cls(cfg, run, data, trainer)

    def _write_config(self) -> None:
        self.run.write_config({
            **to_dict(self.cfg), "tokenizer": self.data.tokenizer.to_dict(), "data_key": self.data.meta["key"],
            "versions": versions(),
        })

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        """A fresh stream of ``split``'s batches (for evaluation and probes) drawn with ``seed``."""
        tokens = self.data.train if split == "train" else self.data.val
        return Batches(tokens, self.cfg.train.batch_size, self.cfg.model.block_size, seed=seed, split=split)

    def has_val(self) -> bool:
        return len(self.data.val) > 0

    def callbacks(self) -> list[Callback]:
        """The standard ones, in order: evaluate, checkpoint, metrics file, progress, samples, early stop."""
        t, seed = self.cfg.train, self.cfg.runtime.seed
        has_val = self.has_val()
        splits = {"train": lambda: self.batches("train", seed + 1)}
        if has_val:
            splits["val"] = lambda: self.batches("val", seed + 2)
        out: list[Callback] = [Evaluator(splits, t.eval_interval, t.eval_batches),
                               Checkpointer(self.run, t.eval_interval, has_val), MetricsLog(self.run.metrics_path)]
        write = print
        if t.progress:
            bar = ProgressBar()
            out.append(bar)
            write = bar.write
        if t.diagnostics:
            probe_batch = next(self.batches("train", seed + 3))
            out.append(HealthProbe(self.run.diagnostics_path, t.diagnostics, probe_batch))
        if t.sample_interval and t.sample_tokens:
            out.append(PeriodicSampler(t.sample_interval, self.sample, write))
        if t.early_stop and has_val:
            out.append(EarlyStop(t.early_stop))
        return out

    def fit(self, *extra: Callback) -> dict:
        """Train to the budget (or a stop request); the standard callbacks, then ``extra``.

        Divergence and a full disk end the run with an error that says how to continue
        from the checkpoint on disk (which they never touch)."""
        self.trainer.callbacks = self.callbacks() + list(extra)
        try:
            return self.trainer.fit()
        except DivergedError as e:
            raise TinyGPTError(f"training diverged: {self._after_divergence(e)}") from None
        except DiskFullError as e:
            raise TinyGPTError(f"{e.problem}. Free some space, then continue with: {self.resume_command()}") from None

    def resume_command(self) -> str:
        """The command line that continues this run."""
        return f"tinygpt train --resume {self.run.path}"

    def _after_divergence(self, e: DivergedError) -> str:
        """What went wrong and the way on that can work from what is on disk."""
        what = e.what  # e.g. "the loss became nan at step 6 (lr 0.003)"
        command = f"{self.resume_command()} {e.flags()}"
        if not self.run.has_checkpoint():
            return f"{what}, before the first checkpoint; start the run over with {e.flags()}: {command}"
        last = self.run.checkpoint_info("last").step or 0
        if last < e.weights_step:
            return (f"{what}; the last checkpoint (step {last}) is intact, continue from it with {e.flags()}: "
                    f"{command}")
        best = self.run.checkpoint_info("best")
        kept = f"step {best.step}" + (f", val loss {best.val_loss:.4f}" if best.val_loss is not None else "")
        return (f"{what}; the last checkpoint (step {last}) holds the weights that diverged, so resuming would "
                f"repeat it: start a new run with {e.flags()} (the best weights so far, {kept}, stay in "
                f"{self.run.weights_path('best')})")

    def sample(self, max_new_tokens: int | None = None) -> str:
        """A sample of the current weights from a document start, drawn exactly as
        ``tinygpt.load(run).generate("", max_new_tokens, seed=<the run's seed>)`` draws it."""
        lm = TinyGPT(self.trainer.model, self.data.tokenizer, self.trainer.device, self.trainer.dtype, autocast=True)
        n = self.cfg.train.sample_tokens if max_new_tokens is None else max_new_tokens
        return lm.generate("", config=GenerationConfig(max_new_tokens=n), seed=self.cfg.runtime.seed)[0]

    def describe(self) -> list[str]:
        """What the run is, in a few lines for the log."""
        t, tr, tok = self.cfg.train, self.trainer, self.data.tokenizer
        budget = [f"{k} {v}" for k, v in (("steps", t.max_steps), ("tokens", t.max_tokens),
                                          ("time", f"{tr.max_time:.0f}s" if tr.max_time else None)) if v]
        return [f"run: {self.run.path}", tr.describe(),
                f"budget: {', '.join(budget)}; data: {len(self.data.train):,} train / {len(self.data.val):,} val "
                f"tokens ({tok.kind} tokenizer, {tok.vocab_size} tokens)"]
