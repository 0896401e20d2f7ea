"""The from-scratch BPE of :mod:`.bpe` next to the real ones.

- :func:`load_gpt2` rebuilds GPT-2's tokenizer from the two files OpenAI released
  (``vocab.bpe``: the merges; ``encoder.json``: the ids), so its ids can be compared with
  tiktoken's;
- :func:`train_tokenizers` trains Hugging Face ``tokenizers``' BPE with the settings of
  :func:`.bpe_train.train`, so the merges can be compared one by one;
- :func:`lesson` does both on one text, and :func:`run_lesson` on the text a
  :class:`BPELessonConfig` names: what ``tinygpt learn bpe`` prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..config import check_choices, like, opt
from ..errors import TinyGPTError
from ..options import TextOptions
from ..tokenizer import (
    GPT2_EOT,
    GPT2_PAT_STR,
    GPT2Tokenizer,
    gpt2_byte_decoder,
    gpt2_files,
)
from .bpe import BPE, split_special
from .bpe_train import SPLITS, train

# --split none rescans the whole text for every merge (~0.1 s per 100k characters on one
# core), so by default it trains on the first 100k characters: ~1000 merges in ~15 s.
BASIC_MAX_CHARS = 100_000


@dataclass
class BPELessonConfig:
    """The text and settings ``tinygpt learn bpe`` trains on."""
    data: str = like(TextOptions, "data", "shakespeare")
    vocab_size: int = opt(1024, "ids in all: 256 bytes + merges + special tokens")
    split: str = opt("gpt2", "gpt2: merge only inside the chunks of GPT-2's regex (words, numbers, ...); none: the "
                             "lecture's basic tokenizer, merging across the whole text", choices=tuple(SPLITS))
    special: list[str] = opt([], "a special token, cut out of the text and given its own id", metavar="TOKEN",
                             shown=GPT2_EOT)
    max_chars: int | None = like(TextOptions, "max_chars", shown=f"all with --split gpt2, {BASIC_MAX_CHARS} with "
                                                                 "--split none, whose every merge rescans the text")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_chars is not None and self.max_chars < 1:
            raise TinyGPTError(f"--max-chars must be a positive number of characters, got {self.max_chars}")

    @property
    def chars_to_read(self) -> int | None:
        return self.max_chars if self.max_chars is not None else BASIC_MAX_CHARS if self.split == "none" else None

    @property
    def special_tokens(self) -> list[str]:
        return self.special or [GPT2_EOT]

# ---------------------------------------------------------------------------- GPT-2's merges


def load_gpt2() -> BPE:
    """GPT-2's tokenizer as a :class:`.bpe.BPE`.

    Both files spell a token's bytes with one printable character per byte ("Ġ" is a
    space; see :func:`tinygpt.tokenizer.gpt2_byte_decoder`). ``vocab.bpe`` lists the
    50,000 merges in the order they were learned; ``encoder.json`` gives every token its
    id: the 256 bytes first (in printed order, so byte 33 "!" is id 0), then merge i
    makes id 256 + i, and "<|endoftext|>" is 50256.
    """
    merges_path, encoder_path = gpt2_files()
    encoder: dict[str, int] = json.loads(encoder_path.read_text(encoding="utf-8"))
    byte_ids = [0] * 256
    for char, byte in gpt2_byte_decoder().items():
        byte_ids[byte] = encoder[char]
    lines = merges_path.read_text(encoding="utf-8").split("\n")[1:]  # line 0 is "#version: 0.2"
    merges = {}
    for line in filter(None, lines):
        left, right = line.split(" ")
        merges[encoder[left], encoder[right]] = encoder[left + right]
    return BPE(merges, {GPT2_EOT: encoder[GPT2_EOT]}, GPT2_PAT_STR, byte_ids)


# ---------------------------------------------------------------------------- the tokenizers library


def train_tokenizers(text: str, vocab_size: int, split: str = "gpt2", special_tokens: Sequence[str] = (GPT2_EOT,)):
    """Hugging Face ``tokenizers``' byte-level BPE trained as :func:`.bpe_train.train` trains:
    the same split (its ByteLevel regex is GPT-2's), all 256 bytes in the vocabulary, no
    minimum frequency, special tokens counted in ``vocab_size``. Returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split == "gpt2")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The library's trainer reads "<|endoftext|>" in training text as ordinary text, while
    # ours cuts it out; handing it the pieces between special tokens makes the two agree.
    tok.train_from_iterator([piece for piece, _ in split_special(text, special_tokens)], trainer=trainer)
    return tok


def tokenizers_merges(tok) -> list[tuple[bytes, bytes]]:
    """A trained ``tokenizers.Tokenizer``'s merges, in order, as pairs of byte strings."""
    byte_of = gpt2_byte_decoder()
    merges = json.loads(tok.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]  # "a b" before tokenizers 0.20
    return [(bytes(byte_of[c] for c in a), bytes(byte_of[c] for c in b)) for a, b in pairs]


def merges_as_bytes(bpe: BPE) -> list[tuple[bytes, bytes]]:
    """``bpe``'s merges, in order, as pairs of byte strings (comparable across id schemes)."""
    return [(bpe.vocab[a], bpe.vocab[b]) for (a, b), _ in sorted(bpe.merges.items(), key=lambda item: item[1])]


def agreeing_prefix(ours: Sequence, theirs: Sequence) -> int:
    """How many merges, from the first, are the same in both lists."""
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
        n += 1
    return n


# ---------------------------------------------------------------------------- the lesson


@dataclass
class Lesson:
    """What ``tinygpt learn bpe`` found: our tokenizer and how it compares."""

    bpe: BPE
    seconds: float  # our training time
    text_bytes: int
    bytes_per_token: dict[str, float]  # "ours", "tokenizers", "gpt2": higher is better compression
    merges: list[tuple[bytes, bytes]]  # ours, in order
    library_merges: list[tuple[bytes, bytes]]  # the tokenizers library's, in order

    @property
    def agree(self) -> int:
        return agreeing_prefix(self.merges, self.library_merges)


def run_lesson(cfg: BPELessonConfig, log: Callable[[str], None] | None = None) -> Lesson:
    """:func:`lesson` on the text ``cfg`` names, with its settings."""
    from ..data.files import read_text

    text = read_text(cfg.data, max_chars=cfg.chars_to_read, log=log)
    return lesson(text, cfg.vocab_size, cfg.split, cfg.special_tokens, log=log)


def lesson(text: str, vocab_size: int, split: str = "gpt2", special_tokens: Sequence[str] = (GPT2_EOT,),
           log: Callable[[str], None] | None = None) -> Lesson:
    """Train :func:`.bpe_train.train` on ``text``, and the ``tokenizers`` library with the same
    settings; measure both, and GPT-2, in bytes per token on ``text``."""
    log = log or (lambda message: None)
    special_tokens = list(dict.fromkeys(special_tokens))
    start = time.perf_counter()
    bpe = train(text, vocab_size, split, special_tokens)
    seconds = time.perf_counter() - start
    log(f"bpe: learned {len(bpe.merges)} merges in {seconds:.1f}s; training the tokenizers library's BPE to compare")
    library = train_tokenizers(text, vocab_size, split, special_tokens)
    log("bpe: encoding the text with ours, the library's and GPT-2's tokenizer")
    n_bytes = len(text.encode("utf-8"))
    encode_batch = getattr(library, "encode_batch_fast", library.encode_batch)  # _fast (>= 0.20): no offsets
    counts = {"ours": len(bpe.encode(text, allowed_special="all")),
              "tokenizers": len(encode_batch([text])[0].ids),
              "gpt2": len(GPT2Tokenizer().encode(text))}
    return Lesson(bpe, seconds, n_bytes, {name: n_bytes / max(n, 1) for name, n in counts.items()},
                  merges_as_bytes(bpe), tokenizers_merges(library))
