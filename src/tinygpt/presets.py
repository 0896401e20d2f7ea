"""The preset table: each named preset is a model shape plus the training settings that go with it.

A preset is laid under config files and flags (defaults < preset < file < flags), so it is
plain data: section name -> {option: value}. ``auto`` picks a preset for the hardware found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .errors import TinyGPTError


@dataclass(frozen=True)
class Preset:
    about: str
    model: Mapping = field(default_factory=dict)  # GPTConfig fields
    train: Mapping = field(default_factory=dict)  # TrainConfig fields

    def __post_init__(self) -> None:  # read-only, so no caller can change the table by accident
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))

    def layer(self) -> dict:
        """This preset as a nested config layer (copies, so callers may change them)."""
        return {"model": dict(self.model), "train": dict(self.train)}


_LLAMA_STYLE = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)

# Learning rates: small models tolerate, and over a short budget need, larger rates. The
# 128-wide char model on Shakespeare, 150 s on a 2-core CPU, reached val loss 2.18 / 1.91 /
# 1.83 / 1.78 at lr 1e-3 / 3e-3 / 5e-3 / 8e-3 (grad norms stayed below 2); 6e-3 leaves some
# margin for other corpora. The GPT-2 sizes take the GPT-3 paper's rates and AdamW beta2.
# The char models train with Muon: in bench/sweep_time_budget.py's 5-minute runs (2-core AMX
# Xeon) it took the 128-wide model from val loss 1.574 to 1.471 on Shakespeare and from 0.970
# to 0.879 on Vim's documentation, at the same lr. Width and depth at a 5-minute budget on
# Shakespeare, side by side: 4 layers of 192 (3 heads of 64) 1.464, 4 of 128 1.478, 6 of 128
# 1.517; in a slower round 192 1.475, 128 1.484, 256 1.496. RMSNorm and QK-norm cost more
# time than they gained (PyTorch's CPU RMSNorm takes 4x LayerNorm's time); RoPE about broke even.
# modded-nanogpt's other changes (ReLU², zero-initialised projections, logit soft-capping,
# U-net skips, value embeddings) and torch.compile, 5 minutes on Shakespeare and on the Python
# standard library (2-core AMD EPYC, bench/sweep_time_budget.py): none beat the base by more
# than the machine's own drift; at an equal 700 steps value embeddings gained 0.003 nats on
# both, too little to give up Hugging Face export, and compiling lost even from a warm cache.
# The first round's switches again, on that machine and both corpora, at an equal 700 steps
# (base 1.527 / 1.202): RoPE 1.493 / 1.197 at 1.10x the step time, QK-norm 1.533 / 1.188 at
# 1.16x, RMSNorm 1.530 / 1.200 at 1.10x, an untied head 1.534 / 1.205. In 5-minute runs RoPE
# won on Shakespeare (1.494 against 1.510) and lost on the stdlib (1.192 against 1.179), so it
# stays a flag; so do the batch and window warmups (train/curriculum.py), which lost on both.
# The ladder of char-nano / char-tiny / char-small is what train/recipe.py sizes to a budget.
PRESETS: dict[str, Preset] = {
    "char-nano": Preset("0.8M parameters, context 128: a minute or two on a laptop CPU",
                        dict(n_layer=4, n_head=4, n_embd=128, block_size=128), dict(lr=6e-3, optimizer="muon")),
    "char-tiny": Preset("1.8M parameters, context 128: minutes on a laptop CPU",
                        dict(n_layer=4, n_head=3, n_embd=192, block_size=128), dict(lr=6e-3, optimizer="muon")),
    "char-small": Preset("3.2M parameters, context 256: an hour or more on a laptop CPU",
                         dict(n_layer=4, n_head=4, n_embd=256, block_size=256), dict(lr=6e-3, optimizer="muon")),
    "baby": Preset("10.8M parameters, context 256: nanoGPT's Shakespeare model, for a GPU",
                   dict(n_layer=6, n_head=6, n_embd=384, block_size=256), dict(lr=1e-3, batch_size=64)),
    "baby-llama": Preset("baby with RoPE, RMSNorm, SwiGLU, no biases and an untied head",
                         dict(n_layer=6, n_head=6, n_embd=384, block_size=256, **_LLAMA_STYLE),
                         dict(lr=1e-3, batch_size=64)),
    "gpt2": Preset("GPT-2 small, 124M parameters",
                   dict(n_layer=12, n_head=12, n_embd=768, block_size=1024), dict(lr=6e-4, beta2=0.95, batch_size=8)),
    "gpt2-medium": Preset("GPT-2 medium, 355M parameters",
                          dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
                          dict(lr=3e-4, beta2=0.95, batch_size=4)),
    "gpt2-large": Preset("GPT-2 large, 774M parameters",
                         dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
                         dict(lr=2.5e-4, beta2=0.95, batch_size=2)),
    "gpt2-xl": Preset("GPT-2 XL, 1.5B parameters",
                      dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024), dict(lr=2e-4, beta2=0.95, batch_size=1)),
}

# What 'auto' means on each kind of device: a CPU gets a model that learns in minutes.
AUTO = {"cpu": "char-tiny", "cuda": "baby", "mps": "baby"}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise TinyGPTError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_preset(name: str, device_type: str) -> str:
    """The concrete preset for ``name``, resolving 'auto' from the device type."""
    if name == "auto":
        return AUTO.get(device_type, "baby")
    get_preset(name)
    return name
