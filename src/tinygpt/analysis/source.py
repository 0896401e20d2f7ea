"""Which model to look at: a run, a Hugging Face GPT-2 (name or local directory), or
random weights (a preset's shape, or a run's shape) to compare a trained model against."""

from __future__ import annotations

from pathlib import Path

import torch

from ..device import seed_everything
from ..errors import TinyGPTError
from ..generation import TinyGPT, load
from ..model import GPT, GPTConfig
from ..presets import get_preset
from ..tokenizer import CharTokenizer, GPT2Tokenizer


def open_model(source: str | None, *, checkpoint: str = "best", preset: str | None = None,
               untrained: bool = False, seed: int = 0, text: str = "") -> tuple[TinyGPT, str]:
    """(model on the CPU in fp32, a name for titles). ``untrained`` keeps the shape and
    tokenizer of ``source`` (or of ``preset``: GPT-2's BPE for the gpt2 presets, else the
    characters of ``text``) with freshly initialised weights from ``seed``."""
    if source is None and preset is None:
        raise TinyGPTError("give a MODEL (run directory, Hugging Face name or directory), "
                           "or --preset NAME --untrained")
    if source is not None and preset is not None:
        raise TinyGPTError("give either a MODEL or --preset NAME --untrained, not both")
    if preset is not None and not untrained:
        raise TinyGPTError(f"--preset {preset} has no trained weights; add --untrained for random ones, "
                           "or give a run directory")
    if source is not None:
        lm = load(source, checkpoint=checkpoint, device="cpu", dtype="fp32")
        name = _name(source, lm)
        if not untrained:
            return lm, name
        cfg, tokenizer = lm.model.config, lm.tokenizer
        name = f"{name} (untrained, seed {seed})"
    else:
        shape = get_preset(preset).model
        tokenizer = GPT2Tokenizer() if preset.startswith("gpt2") else CharTokenizer.train([text])
        cfg = GPTConfig(**shape, vocab_size=tokenizer.vocab_size)
        name = f"preset {preset} (untrained, seed {seed})"
    seed_everything(seed)
    model = GPT(cfg).eval()
    return TinyGPT(model, tokenizer, torch.device("cpu"), torch.float32), name


def _name(source: str, lm: TinyGPT) -> str:
    path = Path(source)
    name = path.name if path.exists() else source
    return name + (f" step {lm.step}" if lm.step is not None else "")
