"""A fine-tune's settings: the method and its shape, what to freeze, instruction data, and
the training defaults that suit adapting a trained model rather than training one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ..adapters import METHODS, AdapterConfig
from ..compress.prune import PruneOptions
from ..compress.quantize import QuantizeOptions
from ..config import like, opt, section
from ..data import DataConfig
from ..data.instruct import DEFAULT_TEMPLATE, InstructOptions
from ..device import RuntimeConfig
from ..errors import TinyGPTError
from ..quant import QuantSpec
from ..source import ModelSource
from ..train import ResolvedRun, RunSection, TrainConfig

# Peak learning rate per method (AdamW). A trained model needs small steps to keep what it
# knows; fresh adapter tensors start from nothing and take larger ones, a soft prompt
# larger still (Lester et al. 2021 tuned prompts at 0.3 with Adafactor).
METHOD_LR = {"full": 1e-4, "lora": 1e-3, "adapter": 1e-3, "prompt": 1e-2}
DEFAULT_EPOCHS = 3.0  # with no budget given: this many epochs, capped at the default time budget


@dataclass
class FinetuneConfig(AdapterConfig):
    method: str = opt("lora", "full (every weight, some frozen at will), lora, adapter (bottleneck layers) or "
                              "prompt (soft prompt); lr defaults to " + ", ".join(f"{k} {v:g}" for k, v in
                                                                                   METHOD_LR.items()),
                      choices=("full",) + METHODS)
    checkpoint: str = like(ModelSource, "checkpoint")  # of the base
    freeze_blocks: int = opt(0, "full: keep the first N transformer blocks frozen")
    freeze_embeddings: bool = opt(False, "full: keep the token and position embeddings frozen (a tied output "
                                         "head with them)")
    template: str = like(InstructOptions, "template", DEFAULT_TEMPLATE)  # of instruction data (.jsonl)
    pack: bool = opt(True, "instruction data: pack several examples per sequence (attention stays inside each); "
                           "off: one padded example per sequence")
    qat: str | None = opt(None, "quantization-aware training (--method full): every forward sees the linear "
                                "layers' weights rounded as int8 or int4 will store them (the gradient passes "
                                "straight through); at the end the quantized run is written beside the fine-tune "
                                "(<run>-int8 / -int4)", choices=("int8", "int4"))
    group_size: int = like(QuantizeOptions, "group_size")
    quantize_head: bool = like(QuantizeOptions, "quantize_head")
    teacher: str | None = opt(None, "distil from this model (a run, Hugging Face directory or hub name with the "
                                    "same tokenizer): the training loss mixes cross-entropy with the KL divergence "
                                    "from the teacher's next-token distribution (its share: --distill-weight)")
    distill_weight: float = like(PruneOptions, "distill_weight", 0.5)
    epochs: float | None = opt(None, f"passes over the training data (default with no other budget: "
                                     f"{DEFAULT_EPOCHS:g}, within the default 5m)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.freeze_blocks < 0:
            raise TinyGPTError(f"--freeze-blocks must be at least 0, got {self.freeze_blocks}")
        if self.epochs is not None and self.epochs <= 0:
            raise TinyGPTError(f"--epochs must be positive, got {self.epochs}")
        if self.qat is not None and self.method != "full":
            raise TinyGPTError(f"--qat trains every weight to suit its rounding: use it with --method full, not "
                               f"{self.method}")
        if self.qat is not None:
            self.qat_spec()   # a group size the kernels take
        if not 0 <= self.distill_weight <= 1:
            raise TinyGPTError(f"--distill-weight is a share between 0 and 1, got {self.distill_weight}")
        if self.teacher is not None and self.method == "prompt":
            raise TinyGPTError("--teacher distils through the model's own positions; a soft prompt adds positions "
                               "the teacher has not got: use --method full, lora or adapter")
        if self.method != "full" and (self.freeze_blocks or self.freeze_embeddings):
            raise TinyGPTError(f"--freeze-blocks / --freeze-embeddings are for --method full; {self.method} "
                               "already trains only its own tensors")

    def qat_spec(self) -> QuantSpec | None:
        """How --qat rounds the weights (None: it is off)."""
        if self.qat is None:
            return None
        opts = QuantizeOptions(scheme=self.qat, group_size=self.group_size, quantize_head=self.quantize_head)
        return dataclasses.replace(opts.spec(), method="qat")

    def adapter(self) -> AdapterConfig | None:
        """The parameter-efficient method's settings (None for a full fine-tune)."""
        if self.method == "full":
            return None
        return AdapterConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AdapterConfig)})


@dataclass
class FinetuneRunConfig:
    """Everything a fine-tune is (its config.json, beside the base's model section and record)."""
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)  # its preset unused: the base is the model
    train: TrainConfig = section(TrainConfig, shown={"lr": "by --method"}, batch_size=8, warmup_steps=20,
                                 weight_decay=0.0, eval_interval=50, eval_batches=10)
    runtime: RuntimeConfig = section(RuntimeConfig, seed=1337)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass(frozen=True)
class FinetuneRun(ResolvedRun):
    """A fine-tune decided (see tinygpt.train.resolve): ``model`` is the base's shape; the
    method's settings and the record of the base (where it was, its weights' hash) are recorded too."""
    finetune: FinetuneConfig
    base: dict

    RECORDED: ClassVar[tuple[str, ...]] = ResolvedRun.RECORDED + ("finetune", "base")


# Options of train/data that a fine-tune takes from its base instead.
NOT_FLAGS = ("tokenizer", "bpe_vocab_size", "preset", "optimizer")
