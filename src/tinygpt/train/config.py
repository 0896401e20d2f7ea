"""The training component's settings, and the schema of a whole run (what config.json holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import (
    check_choices,
    like,
    load_config_file,
    opt,
    parse_count,
    parse_duration,
    section,
)
from ..data import DataConfig
from ..device import RuntimeConfig
from ..errors import TinyGPTError
from ..generation.config import GenerationConfig
from ..model import GPTConfig
from ..options import OutputOptions
from ..presets import PRESETS
from .optim import ONECYCLE_DIV, ONECYCLE_FINAL_DIV, OPTIMIZERS, SCHEDULES
from .parallel import parse_layout

DEFAULT_TIME_BUDGET = 300.0  # seconds, when no budget at all is given


@dataclass
class RunSection:
    """What a run is built from and where it goes (config.json's ``run`` section; earlier
    runs recorded these under ``train``, which still reads: option names are unique)."""
    preset: str = opt("auto", "model preset; auto picks one for the hardware found: on a CPU with a time budget, "
                              "the char preset this machine trains best in it (measured at the start), else "
                              "char-tiny; on a GPU, baby",
                      choices=("auto",) + tuple(PRESETS))
    out: str | None = like(OutputOptions, "out", None, shown="runs/<name>")
    name: str | None = opt(None, "run name under runs/ (default: <data>-<preset>-<date>-<time>)")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class SessionOptions:
    """How a command starts a run: anew (from --config and flags) or where one stopped."""
    config: str | None = opt(None, "YAML or JSON file of options, flat or nested by section "
                                   "(model/data/run/train/runtime/finetune); flags win", metavar="FILE")
    resume: str | None = opt(None, "continue the run in this directory exactly where it stopped", metavar="RUN")
    force: bool = like(OutputOptions, "force")
    nproc: int = opt(1, "train on N processes on this machine (data parallel; starts torchrun for you: one "
                        "process per GPU, or CPU processes with gloo). Several machines: run torchrun itself, "
                        "see the README", metavar="N")

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise TinyGPTError(f"--nproc must be at least 1, got {self.nproc}")

    def layers(self, given: dict) -> tuple[dict, ...]:
        """The settings layers under the recorded or preset ones: the --config file, then the flags given."""
        return (load_config_file(self.config) if self.config else {}, given)


@dataclass
class TrainConfig:
    max_steps: int | None = opt(None, "stop after this many optimizer steps (e.g. 5000, 20k)", parse=parse_count)
    max_tokens: int | None = opt(None, "stop after training on this many tokens (e.g. 50M)", parse=parse_count)
    max_time: float | None = opt(None, "stop after this much wall-clock time, e.g. 300, 15m, 6h "
                                 "(default 5m when no other budget is given)", parse=parse_duration)
    batch_size: int = opt(32, "sequences per micro-batch")
    tokens_per_step: int | None = opt(None, "tokens per optimizer step; micro-batches are accumulated to reach it "
                                      "(default: one micro-batch)", parse=parse_count)
    batch_warmup: float = opt(0.0, "train on a quarter, then half of each batch over this fraction of the budget, "
                                   "then on all of it (0: off)")
    window_warmup: float = opt(0.0, "train on windows a quarter, then half of --block-size long over this fraction "
                                    "of the budget, then whole; the tokens per step stay the same (0: off)")
    lr: float = opt(1e-3, "peak learning rate", shown="each preset's own, see tinygpt.presets")
    min_lr: float | None = opt(None, "learning rate at the end of the schedule (default lr/10)")
    warmup_steps: int = opt(100, "linear warmup steps")
    schedule: str = opt("cosine", "decay after warmup (wsd: hold the rate, then decay over the last "
                                  "--decay-fraction of the budget; onecycle: PyTorch's OneCycleLR)",
                       choices=SCHEDULES)
    decay_fraction: float = opt(0.2, "wsd schedule: the final fraction of the budget spent decaying")
    pct_start: float = opt(0.3, "onecycle schedule: the fraction of the budget spent rising from lr/25 to the "
                                "peak (in place of --warmup-steps); then it anneals to lr/25e4 (or --min-lr), "
                                "and AdamW's beta1 cycles 0.95 -> 0.85 -> 0.95")
    optimizer: str = opt("adamw", "adamw, or muon: Muon for the blocks' weight matrices, AdamW for embeddings, "
                                  "head, biases and gains (the same --lr and --weight-decay; the char "
                                  "presets pick muon)", choices=OPTIMIZERS)
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices and embeddings only)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)")
    eval_interval: int = opt(200, "evaluate and checkpoint every N steps")
    eval_batches: int = opt(20, "batches averaged per evaluation")
    early_stop: int = opt(0, "stop once the validation loss has not improved for N evaluations in a row "
                             "(0: never); the best weights are kept")
    diagnostics: int = opt(0, "every N steps record activation, gradient and update statistics per layer into "
                              "the run's diagnostics.jsonl, for tinygpt diagnose (0: off)")
    sample_interval: int = opt(0, "print a sample every N steps (0: only at the end)")
    max_new_tokens: int = like(GenerationConfig, "max_new_tokens", 200, aliases=("--sample-tokens",))  # 0: none
    activation_checkpointing: int = opt(0, "recompute every Nth block's activations in the backward instead of "
                                           "keeping them (1: every block, 0: off): less memory, about a third "
                                           "more time per recomputed block", metavar="N")
    zero: int = opt(0, "on several processes, shard what each would otherwise hold whole (ZeRO's stages): 1 the "
                       "AdamW state (PyTorch's ZeroRedundancyOptimizer, under DDP), 2 also the gradients (FSDP2, "
                       "the weights gathered once per step), 3 also the weights (FSDP2, gathered per block as "
                       "needed); 0: whole copies (DDP)", choices=(0, 1, 2, 3))
    shard: bool = opt(False, "the same as --zero 3 (FSDP2 full sharding): its first name, still read")
    parallel: str = opt("", "how torchrun's processes share the work: dp=N (data parallel, each a whole model, the "
                            "default), tp=N (tensor parallel, Megatron-style: each block's matrices split across "
                            "the processes by heads and MLP columns) or pp=N (pipeline parallel: the blocks split "
                            "into N stages, micro-batches flowing through them); dp=N,tp=M combines the first two on "
                            "N*M processes (a 2-D mesh); pp takes all processes for now",
                        metavar="LAYOUT")
    pipeline_schedule: str = opt("1f1b", "with --parallel pp=N: the order of the micro-batches' forwards and "
                                         "backwards (1f1b: alternating, at most N micro-batches' activations held; "
                                         "gpipe: all forwards, then all backwards)", choices=("1f1b", "gpipe"))
    compile: bool = opt(False, "torch.compile the model (slow start, faster steps on GPUs)")
    progress: bool = opt(True, "show a progress bar (a line every 10 s when stderr is not a terminal)")
    # Derived from the options above here and nowhere else (not recorded: a resume that
    # changes --lr or gives a budget derives them again from what it has).
    time_limit: float | None = field(init=False)  # --max-time, or the default when no budget at all is given
    final_lr: float = field(init=False)           # --min-lr, or lr/10

    def __post_init__(self) -> None:
        check_choices(self)
        at_least = {"batch_size": 1, "eval_interval": 1, "eval_batches": 1, "max_steps": 1, "max_tokens": 1,
                    "tokens_per_step": 1, "warmup_steps": 0, "sample_interval": 0, "max_new_tokens": 0,
                    "diagnostics": 0, "early_stop": 0,
                    "activation_checkpointing": 0}
        for name, lowest in at_least.items():
            v = getattr(self, name)
            if v is not None and v < lowest:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least {lowest}, got {v}")
        if self.max_time is not None and self.max_time <= 0:
            raise TinyGPTError(f"--max-time must be positive, got {self.max_time}")
        try:
            parse_layout(self.parallel)
        except ValueError as e:
            raise TinyGPTError(f"--parallel: {e}") from None
        if self.shard and self.zero not in (0, 3):
            raise TinyGPTError(f"--shard is --zero 3, which --zero {self.zero} contradicts; give one of them")
        for name in ("batch_warmup", "window_warmup"):
            if not 0 <= getattr(self, name) <= 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.decay_fraction <= 1:
            raise TinyGPTError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
        if self.lr <= 0 or (self.min_lr is not None and not 0 <= self.min_lr <= self.lr):
            raise TinyGPTError(f"need 0 < --lr and 0 <= --min-lr <= --lr, got lr={self.lr} min_lr={self.min_lr}")
        no_budget = self.max_steps is None and self.max_tokens is None and self.max_time is None
        self.time_limit = DEFAULT_TIME_BUDGET if no_budget else self.max_time
        if not 0 < self.pct_start < 1:
            raise TinyGPTError(f"--pct-start must be in (0, 1), got {self.pct_start}")
        default_floor = self.lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV if self.schedule == "onecycle" else self.lr / 10
        self.final_lr = default_floor if self.min_lr is None else self.min_lr

    @property
    def zero_stage(self) -> int:
        """What --zero says, --shard (its first name) included."""
        return 3 if self.shard else self.zero

    def micro_batches(self, block_size: int) -> int:
        """Micro-batches accumulated per optimizer step on sequences of ``block_size``:
        enough to reach --tokens-per-step, at least one."""
        micro = self.batch_size * block_size
        return max(1, math.ceil((self.tokens_per_step or micro) / micro))

    def step_tokens(self, block_size: int) -> int:
        """Token slots one optimizer step trains on (whole micro-batches)."""
        return self.micro_batches(block_size) * self.batch_size * block_size

    def describe_budget(self) -> str:
        """The limits the run stops at, e.g. 'steps 5000, time 300s'."""
        limits = (("steps", self.max_steps), ("tokens", self.max_tokens),
                  ("time", f"{self.time_limit:.0f}s" if self.time_limit else None))
        return ", ".join(f"{k} {v}" for k, v in limits if v)


@dataclass
class RunConfig:
    """Everything that defines a training run; saved as the run's config.json.

    ``model.vocab_size`` stays None here until the tokenizer is known."""
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = section(RuntimeConfig, seed=1337)  # one seed: weights, batches, dropout, samples
