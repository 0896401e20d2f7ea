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

# Learning rates: small models tolerate, and over a short budget need, larger rates. char-tiny
# on Shakespeare, 150 s on a 2-core CPU, reached val loss 2.18 / 1.91 / 1.83 / 1.78 at lr
# 1e-3 / 3e-3 / 5e-3 / 8e-3 (grad norms stayed below 2); 6e-3 leaves some margin for other
# corpora. The GPT-2 sizes take the GPT-3 paper's rates and AdamW beta2.
# char-tiny trains with Muon: in bench/sweep_time_budget.py's 5-minute runs on Shakespeare
# (2-core AMX Xeon) it reached val loss 1.471 against AdamW's 1.574 at the same lr, ahead of
# every larger shape tried (char-small 1.599-1.643, 6 layers 1.716): at this budget tokens
# seen matter more than width. The sweep and its results are in the issue 8 note.
PRESETS: dict[str, Preset] = {
    "char-tiny": Preset("0.8M parameters, context 128: minutes on a laptop CPU",
                        dict(n_layer=4, n_head=4, n_embd=128, block_size=128), dict(lr=6e-3, optimizer="muon")),
    "char-small": Preset("3.2M parameters, context 256",
                         dict(n_layer=4, n_head=4, n_embd=256, block_size=256), dict(lr=2e-3)),
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
