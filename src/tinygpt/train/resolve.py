"""Settings to a run, decided once: the device, the training dtype, the preset and model
shape, the budget and schedule, the seed, and the run's directory and name.

Layers of settings (defaults < preset < config file < flags; on resume, the recorded config
< flags) and this machine become one frozen :class:`ResolvedRun`. The session builds from
it, the trainer runs it and config.json records it; nothing after it decides again.

    run = resolve_new_run({"data": "my_book.txt", "max_time": "15m"}, vocab_size=65)
    run.preset, run.device, run.dtype, run.path, run.train.time_limit

config.json records the settings with every choice that depends on the machine or on chance
made concrete (preset 'auto', dtype 'auto', seed none, threads none), so a resume, which starts from the
record, makes none of them again. Values that follow from the settings by a rule (the
default time budget, min_lr = lr/10, micro-batches per step; see TrainConfig) are derived,
not recorded: a resume that changes --lr or gives a new budget derives them from that.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from ..config import flatten_values, layered, to_dict
from ..data import DataConfig, absolute_spec
from ..device import (
    RuntimeConfig,
    cpu_has_bf16,
    dtype_name,
    fresh_seed,
    resolve_device,
    resolve_dtype,
    use_threads,
)
from ..errors import TinyGPTError
from ..model import GPT, GPTConfig
from ..presets import get_preset, resolve_preset
from .config import RunConfig, RunSection, TrainConfig
from .recipe import preset_for_time, training_speed

RUNS_DIR = Path("runs")
# Settings that define what a run *is*; they cannot change when it is resumed. (Where
# the data is may change: Session.resume checks the text itself is the same.)
FIXED_ON_RESUME = ("model", "data", ("run", "preset"), ("train", "optimizer"))


@dataclass(frozen=True)
class ResolvedRun:
    """A run with everything decided. The settings sections are what config.json records
    (:meth:`record`); ``device``, ``dtype`` and ``path`` are what they came to on this machine."""
    model: GPTConfig        # vocab_size from the tokenizer
    data: DataConfig        # the data's path absolute, so the run resumes from any directory
    run: RunSection         # the preset as chosen, the name of the run's directory
    train: TrainConfig      # with its time_limit and final_lr derived
    runtime: RuntimeConfig  # the device as asked; the dtype and seed as decided
    device: torch.device
    dtype: torch.dtype
    path: Path

    RECORDED: ClassVar[tuple[str, ...]] = ("model", "data", "run", "train", "runtime")

    @property
    def preset(self) -> str:
        return self.run.preset

    @property
    def seed(self) -> int:
        return self.runtime.seed

    def record(self) -> dict:
        """The settings as config.json holds them, section by section."""
        return {name: _plain(getattr(self, name)) for name in self.RECORDED}


def _plain(value: Any) -> Any:
    return to_dict(value) if dataclasses.is_dataclass(value) else value


def given_settings(*layers: dict) -> RunConfig:
    """The settings as given, before 'auto' is resolved: what decides the preset (the device,
    the budget) and the run's data and directory. The model's shape is checked with the named
    preset under the flags (char-nano's 4 heads divide --n-embd 64; the defaults' 6 do not);
    under 'auto' it is left at its defaults until the preset is chosen."""
    named = layered(RunConfig, *layers, leave=("model",))
    if named.run.preset == "auto":
        return named
    return layered(RunConfig, get_preset(named.run.preset).layer(), *layers)


def resolve_new_run(*layers: dict, vocab_size: int, log: Callable[[str], None] = print) -> ResolvedRun:
    """A new training run from settings ``layers`` (defaults < the preset < each layer in
    turn), for data whose tokenizer has ``vocab_size`` tokens."""
    given = given_settings(*layers)
    device = resolve_device(given.runtime.device)
    preset = choose_preset(given, device, vocab_size, log)
    settings = layered(RunConfig, get_preset(preset).layer(), *layers,
                       {"run": {"preset": preset}, "model": {"vocab_size": vocab_size}})
    path = run_dir(settings.run, f"{data_name(given.data.data)}-{preset}")
    return resolve_run(settings, path=path, device=device, log=log)


def resolve_run(settings: Any, *, path: str | Path, model: GPTConfig | None = None,
                device: torch.device | None = None, measure_on: Callable[[], GPT] | None = None,
                kind: type[ResolvedRun] = ResolvedRun, log: Callable[[str], None] = print, **more: Any) -> ResolvedRun:
    """``settings`` (a RunConfig, or a fine-tune's config: sections ``data``, ``run``, ``train``,
    ``runtime`` and more) frozen for this machine as a ``kind`` at ``path``: the device
    (unless a new run's preset already needed it), the seed (drawn for none), the training
    dtype (for auto on a CPU with bf16, measured on ``measure_on()``, by default a fresh
    model of ``model``'s shape). ``model``: the model section (default ``settings.model``);
    ``more``: sections of ``kind`` beyond a training run's (a fine-tune's base)."""
    model = settings.model if model is None else model
    device = resolve_device(settings.runtime.device) if device is None else device
    # The thread count is recorded like the dtype: a float sum splits differently over 1 or 2
    # threads, so a resume computes with its run's count to continue bitwise (a new run
    # takes the count the command started with: one per core other processes left free).
    threads = use_threads(settings.runtime.threads or torch.get_num_threads())
    dtype = training_dtype(settings.runtime.dtype, device, settings.train.batch_size,
                           measure_on or (lambda: fresh_model(model)), log)
    path = Path(path)
    sections = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    sections.update(
        model=model,
        data=dataclasses.replace(settings.data, data=absolute_spec(settings.data.data)),
        run=dataclasses.replace(settings.run, name=path.name),
        runtime=dataclasses.replace(settings.runtime, dtype=dtype_name(dtype), seed=draw_seed(settings.runtime.seed),
                                    threads=threads),
    )
    return kind(**sections, **more, device=device, dtype=dtype, path=path)


def resumed_run_config(saved: dict, *layers: dict, cls: type = RunConfig, fixed_on_resume: tuple = FIXED_ON_RESUME):
    """A saved run's config (of schema ``cls``) with ``layers`` laid over it; the settings in
    ``fixed_on_resume`` (sections, or (section, option) paths) cannot change. The record is
    the run's resolution: its choices (preset, dtype, seed) stand unless a layer changes them."""
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


# ---------------------------------------------------------------------------- the decisions

def choose_preset(given: RunConfig, device: torch.device, vocab_size: int, log: Callable[[str], None]) -> str:
    """The preset named; for 'auto', the device's (see tinygpt.presets), or on a CPU with a
    time budget (no step or token budget) the size this machine trains best in it, measured."""
    t = given.train
    if given.run.preset == "auto" and device.type == "cpu" and t.max_steps is None and t.max_tokens is None:
        return preset_for_time(t.time_limit, vocab_size, log)
    return resolve_preset(given.run.preset, device.type)


def draw_seed(seed: int | None) -> int:
    """``seed``, or for none (fresh randomness) one drawn now, to be recorded so the run resumes."""
    return fresh_seed() if seed is None else seed


def training_dtype(name: str, device: torch.device, batch_size: int, measure_on: Callable[[], GPT],
                   log: Callable[[str], None]) -> torch.dtype:
    """The dtype ``name`` trains in on ``device``: for 'auto' on a CPU with bf16, whichever of
    fp32 and bf16 runs the model ``measure_on()`` builds faster; else device.resolve_dtype's."""
    if name == "auto" and device.type == "cpu" and cpu_has_bf16():
        return measure_training_dtype(measure_on(), batch_size, log)
    return resolve_dtype(name, device)


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


def fresh_model(config: GPTConfig) -> GPT:
    """A model of ``config``'s shape to time, drawn without touching the global generators
    (the run's own model is the first draw from its seed)."""
    with torch.random.fork_rng(devices=[]):
        return GPT(config)


# ---------------------------------------------------------------------------- the run's directory

def named_run_dir(run: RunSection) -> Path | None:
    """The directory the settings name: ``--out``, else ``runs/<--name>``; None for neither."""
    if run.out:
        return Path(run.out)
    return RUNS_DIR / run.name if run.name else None


def run_dir(run: RunSection, what: str) -> Path:
    """``--out``, else ``runs/<--name>``, else ``runs/<what>-<date>-<time>`` (``what``: e.g. the
    data and the preset, or the base and the method)."""
    return named_run_dir(run) or RUNS_DIR / f"{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def data_name(spec: str) -> str:
    """A file's stem, a folder's name, or for a glob the folder before its first wildcard."""
    plain = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), Path(spec).parts))
    return (Path(*plain).stem if plain else "") or "data"
