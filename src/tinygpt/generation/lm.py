"""A model with its tokenizer, ready to turn prompts into text: :class:`TinyGPT` and :func:`load`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import replace
from ..device import autocast, fresh_seed, resolve_device, resolve_dtype
from ..errors import TinyGPTError
from ..model import GPT
from ..run import RunDir
from ..tokenizer import Tokenizer
from .config import GenerationConfig
from .engine import generate
from .stream import StreamDecoder


def start_ids(tokenizer: Tokenizer) -> list[int]:
    """A neutral prompt for unconditional samples: end-of-text, else a newline, else id 0."""
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n")
    except TinyGPTError:
        return [0]


@dataclass
class TinyGPT:
    """A model and its tokenizer for inference, and where they came from (when loaded from a run)."""
    model: GPT
    tokenizer: Tokenizer
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    config: dict = field(default_factory=dict)   # the run's config.json
    checkpoint: Path | None = None
    step: int | None = None
    val_loss: float | None = None

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, bool]:
        """Prompt text -> (1, T) ids cropped to the context; also whether it was cropped."""
        ids = self.tokenizer.encode(prompt) if prompt else start_ids(self.tokenizer)
        block = self.model.config.block_size
        return torch.tensor([ids[-block:]], device=self.device), len(ids) > block

    def generate(self, prompt: str = "", max_new_tokens: int | None = None, *,
                 config: GenerationConfig | None = None, seed: int | None = None,
                 on_text: Callable[[int, str], None] | None = None, **options: Any) -> list[str]:
        """Continuations of ``prompt`` (the prompt is not included), one per sample.

        Options are GenerationConfig's (temperature, top_k, top_p, num_samples), given
        as ``config`` and/or keywords. Sample i draws from its own generator seeded
        ``seed + i`` (a fresh seed when None), so the same options give the same text
        here, on the command line and in the trainer's samples. ``on_text(sample_index,
        piece)`` streams text as it is produced."""
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        cfg = config or GenerationConfig()
        if options:
            cfg = replace(cfg, options)
        n = cfg.num_samples
        idx, _ = self.encode_prompt(prompt)
        idx = idx.expand(n, -1).contiguous()
        base = fresh_seed() if seed is None else seed
        generators = [torch.Generator(device=self.device).manual_seed(base + i) for i in range(n)]
        streams = [StreamDecoder(self.tokenizer) for _ in range(n)]

        def emit(nxt: torch.Tensor) -> None:
            for i, t in enumerate(nxt[:, 0].tolist()):
                if piece := streams[i].push(t):
                    on_text(i, piece)

        with autocast(self.device, self.dtype):
            out = generate(self.model, idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p, generator=generators, on_token=emit if on_text is not None else None)
        if on_text is not None:
            for i, stream in enumerate(streams):
                if rest := stream.flush():
                    on_text(i, rest)
        return [self.tokenizer.decode(row[idx.size(1):].tolist()) for row in out]


def load(source: str | Path, checkpoint: str = "best", device: str = "auto", dtype: str = "fp32") -> TinyGPT:
    """Load a run directory written by ``tinygpt train`` for generation.

    ``checkpoint`` is 'best' (lowest validation loss), 'last', or a path to a
    .safetensors file. The weights are memory-mapped into a model built without init."""
    run = RunDir.open(source)
    dev = resolve_device(device)
    tokenizer = run.load_tokenizer()
    model, info, path = run.load_model(checkpoint, dev)
    return TinyGPT(model, tokenizer, dev, resolve_dtype(dtype, dev), run.read_config(), path, info.step,
                   info.val_loss)
