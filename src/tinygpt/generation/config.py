"""How to sample: the one declaration of the sampling options and their defaults, shared by
``tinygpt sample``, ``TinyGPT.generate`` and the trainer's periodic samples."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt
from ..errors import TinyGPTError


@dataclass
class GenerationConfig:
    max_new_tokens: int = opt(300, "tokens to generate per sample")
    temperature: float = opt(0.8, "sampling temperature (0: greedy)")
    top_k: int | None = opt(200, "sample only from the k likeliest tokens (none: all)")
    top_p: float | None = opt(None, "sample only from the smallest set of tokens with this total probability")
    num_samples: int = opt(1, "how many samples to draw (sample i uses seed + i)")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.num_samples < 1:
            raise TinyGPTError("--max-new-tokens must be >= 0 and --num-samples >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise TinyGPTError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise TinyGPTError(f"--top-k must be at least 1 (or none), got {self.top_k}")
