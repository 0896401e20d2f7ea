"""The data component's settings."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_choices, like, opt
from ..errors import TinyGPTError
from ..options import TextOptions
from ..tokenizer import TOKENIZER_KINDS
from .files import check_encoding

SAMPLING_MODES = ("random", "sequential")


@dataclass
class DataConfig:
    data: str = like(TextOptions, "data", "shakespeare")
    tokenizer: str = opt("char", "how text becomes tokens: characters, GPT-2's BPE, or a BPE trained on your text",
                         choices=TOKENIZER_KINDS)
    bpe_vocab_size: int = opt(8192, "vocabulary size when training a BPE tokenizer (--tokenizer bpe)")
    val_fraction: float = opt(0.1, "fraction of tokens held out for validation (the end of the corpus)")
    encoding: str = opt("utf-8", "text encoding of the input files, e.g. latin-1")
    text_field: str = opt("text", "the field of a streamed dataset's examples that holds the text (--data hf:...)")
    sampling: str = opt("random", "how training batches are drawn: random windows, or sequential passes",
                        choices=SAMPLING_MODES)

    def __post_init__(self) -> None:
        check_choices(self)  # the CLI checks too, but configs are also built directly in code
        if not 0 <= self.val_fraction < 1:
            raise TinyGPTError(f"--val-fraction must be at least 0 and below 1, got {self.val_fraction}; "
                               "e.g. --val-fraction 0.1")
        if self.bpe_vocab_size < 257:
            raise TinyGPTError(f"--bpe-vocab-size must be at least 257 (256 byte tokens + 1), "
                               f"got {self.bpe_vocab_size}; e.g. --bpe-vocab-size 8192")
        check_encoding(self.encoding)
