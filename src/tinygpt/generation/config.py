"""How to decode: the one declaration of the generation options and their defaults, shared by
``tinygpt sample``, ``TinyGPT.generate`` and the trainer's periodic samples."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import check_choices, opt, parse_escaped
from ..errors import TinyGPTError
from . import processors as P
from .sampling import Sampling


@dataclass
class GenerationConfig:
    max_new_tokens: int = opt(300, "tokens to generate per sample")
    temperature: float = opt(0.8, "sampling temperature (0: greedy)")
    top_k: int | None = opt(200, "sample only from the k likeliest tokens (none: all)")
    top_p: float | None = opt(None, "sample only from the smallest set of tokens with this total probability")
    min_p: float | None = opt(None, "drop tokens less than this fraction as likely as the likeliest")
    typical_p: float | None = opt(None, "locally typical sampling: keep this much probability, most typical first")
    repetition_penalty: float = opt(1.0, "penalise tokens already present (1: off; 1.1-1.3 typical)")
    frequency_penalty: float = opt(0.0, "subtract this times a token's count so far")
    presence_penalty: float = opt(0.0, "subtract this from every token already present")
    no_repeat_ngram_size: int = opt(0, "never repeat an n-gram of this size (0: off)")
    greedy: bool = opt(False, "always take the likeliest token (same as --temperature 0)")
    beams: int = opt(1, "beam search with this many beams (1: off); returns the --num-samples best")
    length_penalty: float = opt(1.0, "beam search: score = log-probability / length ** this (>1 favours longer)")
    early_stopping: bool = opt(False, "beam search: stop once --beams hypotheses have ended")
    stop: list[str] = opt([], "stop when this text appears (it is not included); \\n, \\t, \\r, \\\\, \\xhh and "
                              "\\uXXXX in it are read as escapes", parse=parse_escaped)
    stop_at_eot: bool = opt(True, "stop a sample at the tokenizer's end-of-text token, if it has one")
    num_samples: int = opt(1, "how many samples to draw (of each prompt, where there is one)")
    past_context: str = opt("exact", "past the context length: exact (re-read the last block each token, "
                                     "slow) or fast (keep the cache: RoPE evicts the oldest positions, "
                                     "learned positions re-read the last half block)", choices=("exact", "fast"))

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_new_tokens < 0 or self.num_samples < 1:
            raise TinyGPTError("--max-new-tokens must be >= 0 and --num-samples >= 1")
        for name in ("top_p", "min_p", "typical_p"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
        if self.top_k is not None and self.top_k < 1:
            raise TinyGPTError(f"--top-k must be at least 1 (or none), got {self.top_k}")
        if self.temperature < 0 or self.repetition_penalty <= 0:
            raise TinyGPTError("--temperature must be >= 0 and --repetition-penalty > 0")
        if self.no_repeat_ngram_size < 0 or self.beams < 1:
            raise TinyGPTError("--no-repeat-ngram-size must be >= 0 and --beams >= 1")
        if self.beams > 1 and self.num_samples > self.beams:
            raise TinyGPTError(f"beam search returns at most --beams ({self.beams}) results; "
                               f"lower --num-samples ({self.num_samples}) or raise --beams")
        if any(not s for s in self.stop):
            raise TinyGPTError("--stop needs a non-empty text")

    def sampling(self, seed: int | None = None, stop_ids: tuple[int, ...] = ()) -> Sampling:
        """One row's settings from these options (``seed``: the row's generator's)."""
        return Sampling(**{f.name: getattr(self, f.name) for f in fields(Sampling)
                           if f.name not in ("stop_ids", "seed")}, stop_ids=tuple(stop_ids), seed=seed)

    def processors(self) -> list[P.LogitsProcessor]:
        """The chain of logits processors these options make, in Hugging Face's order (beam
        search: the penalties alone)."""
        return self.sampling().chain(warpers=self.beams == 1)
