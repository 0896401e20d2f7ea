"""The settings of a makemore rung (:class:`MakemoreConfig`) and each rung's own defaults.

A setting left as None takes the rung's own default from :data:`DEFAULTS` (sizes that run
in well under a minute on two CPU cores).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...config import check_choices, like, opt
from ...device import RuntimeConfig
from ...errors import TinyGPTError
from ...generation import GenerationConfig
from ...model import GPTConfig
from ...options import OutputOptions, TextOptions
from ...train.config import TrainConfig
from ..micrograd.demo import MicrogradConfig

RUNGS = ("bigram", "mlp", "mlp-bn", "wavenet", "gpt")
ALL = "all"  # every rung, in order
BACKWARDS = ("autograd", "manual")

# Per rung: model shape and training. The MLP and WaveNet shapes are the lectures'; steps
# and batch sizes are cut to fit a minute on a laptop CPU (the lectures ran 200k steps).
DEFAULTS: dict[str, dict] = {
    "bigram": dict(block_size=1, max_steps=500, lr=50.0, batch_size=0),
    "mlp": dict(block_size=3, n_embd=10, n_hidden=200, layers=1, max_steps=30000, batch_size=64, lr=0.1),
    # BatchNorm keeps every layer's statistics in place, so it takes twice the MLP's rate.
    "mlp-bn": dict(block_size=3, n_embd=10, n_hidden=128, layers=3, max_steps=20000, batch_size=64, lr=0.2),
    "mlp-bn/manual": dict(block_size=3, n_embd=10, n_hidden=200, layers=1, max_steps=30000, batch_size=64, lr=0.1),
    "wavenet": dict(block_size=8, n_embd=24, n_hidden=128, max_steps=12000, batch_size=128, lr=0.1),
    "gpt": dict(n_layer=2, n_head=4, n_embd=64, max_steps=4000, batch_size=64, lr=1e-2),
}


RUNG = "the rung's"  # how help shows a size each rung sets for itself (DEFAULTS)


@dataclass
class MakemoreConfig:
    """Every setting of a makemore rung; a size left as None takes the rung's own (DEFAULTS).
    For the MLP rungs --n-embd is each character's embedding width; for gpt, the residual stream's."""
    model: str = opt("mlp", f"the rung; {ALL} climbs every one", choices=RUNGS + (ALL,))
    data: str = like(TextOptions, "data", "names")
    out: str = like(OutputOptions, "out", "makemore")
    max_steps: int | None = like(TrainConfig, "max_steps", None, shown=RUNG, aliases=("--steps",))
    batch_size: int | None = like(TrainConfig, "batch_size", None, shown=RUNG)
    lr: float | None = like(MicrogradConfig, "lr", None, shown=RUNG)
    block_size: int | None = like(GPTConfig, "block_size", None, shown=RUNG)
    n_embd: int | None = like(GPTConfig, "n_embd", None, shown=RUNG)
    n_hidden: int | None = opt(None, "hidden layer width (mlp, mlp-bn, wavenet)", shown=RUNG)
    layers: int | None = opt(None, "hidden layers (mlp, mlp-bn)", shown=RUNG)
    n_layer: int | None = like(GPTConfig, "n_layer", None, shown=RUNG)
    n_head: int | None = like(GPTConfig, "n_head", None, shown=RUNG)
    backward: str = opt("autograd", "mlp-bn: manual trains with the hand-written backward pass, checked against "
                                    "autograd first", choices=BACKWARDS)
    num_samples: int = like(GenerationConfig, "num_samples", 20, aliases=("--samples",))
    seed: int = like(RuntimeConfig, "seed", 42)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.backward == "manual":
            if self.model != "mlp-bn":
                raise TinyGPTError("--backward manual is the hand-written backward of the BatchNorm MLP; "
                                   "use it with --model mlp-bn")
            if self.layers not in (None, 1):
                raise TinyGPTError("--backward manual is written for one hidden layer (the lecture's model); "
                                   "drop --layers or pass --layers 1")
        for name in ("max_steps", "batch_size", "block_size", "n_embd", "n_hidden", "layers", "n_layer", "n_head"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise TinyGPTError(f"--lr must be positive, got {self.lr}")
        if self.num_samples < 0:
            raise TinyGPTError(f"--num-samples must be 0 or more, got {self.num_samples}")
        if self.model == ALL:
            return  # each rung's own config is checked by rungs()
        block = self.setting("block_size")
        if self.model == "wavenet" and (block < 2 or block & (block - 1)):
            raise TinyGPTError(f"wavenet fuses characters in pairs, so --block-size must be a power of two "
                               f"(2, 4, 8, 16, ...), got {block}")

    def rungs(self) -> list[MakemoreConfig]:
        """The config of each rung this one names: itself, or for 'all' every rung in order."""
        return [dataclasses.replace(self, model=m) for m in RUNGS] if self.model == ALL else [self]

    @property
    def key(self) -> str:
        return f"{self.model}/manual" if self.backward == "manual" else self.model

    def setting(self, name: str):
        """The given value of ``name``, else the rung's default."""
        value = getattr(self, name)
        return DEFAULTS[self.key].get(name) if value is None else value
