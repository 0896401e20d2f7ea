"""Which model to look at: a run, a Hugging Face GPT-2 (name or local directory), or
random weights (a preset's shape, or a run's shape) to compare a trained model against."""

from __future__ import annotations

from pathlib import Path

from ..device import fresh_seed, resolve_device, resolve_dtype, seed_everything
from ..errors import TinyGPTError
from ..generation import TinyGPT, load
from ..model import GPT, GPTConfig
from ..presets import get_preset, resolve_preset
from ..tokenizer import CharTokenizer, GPT2Tokenizer


def titled_model(source: str | None, *, checkpoint: str = "best", preset: str | None = None,
                 untrained: bool = False, seed: int | None = 0, text: str = "", device: str = "cpu",
                 dtype: str = "fp32") -> tuple[TinyGPT, str]:
    """(the model to look at, on ``device`` in ``dtype``; a name for titles). ``untrained``
    keeps the shape and tokenizer of ``source`` (or of ``preset``: GPT-2's BPE for the gpt2
    presets, else the characters of ``text``) with freshly initialised weights from ``seed``."""
    if source is None and preset is None:
        raise TinyGPTError("give a MODEL (run directory, Hugging Face name or directory), "
                           "or --preset NAME --untrained")
    if source is not None and preset is not None:
        raise TinyGPTError("give either a MODEL or --preset NAME --untrained, not both")
    if preset is not None and not untrained:
        raise TinyGPTError(f"--preset {preset} has no trained weights; add --untrained for random ones, "
                           "or give a run directory")
    seed = fresh_seed() if seed is None else seed
    if source is not None:
        lm = load(source, checkpoint=checkpoint, device=device, dtype=dtype)
        name = _name(source, lm)
        if not untrained:
            return lm, name
        cfg, tokenizer = lm.model.config, lm.tokenizer
        name = f"{name} (untrained, seed {seed})"
    else:
        preset = resolve_preset(preset, resolve_device(device).type)
        tokenizer = GPT2Tokenizer() if preset.startswith("gpt2") else CharTokenizer.train([text])
        cfg = GPTConfig(**get_preset(preset).model, vocab_size=tokenizer.vocab_size)
        name = f"preset {preset} (untrained, seed {seed})"
    seed_everything(seed)
    model = GPT(cfg).eval()  # drawn on the CPU in fp32, so a seed gives the same weights anywhere
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev, inference=True)
    return TinyGPT(model.to(dev, dt), tokenizer, dev, dt), name


def _name(source: str, lm: TinyGPT) -> str:
    path = Path(source)
    name = path.name if path.exists() else source
    return name + (f" step {lm.step}" if lm.step is not None else "")
