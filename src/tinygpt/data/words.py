"""Word datasets: one word per line (first names, by default), for makemore's character models.

    words = read_words("names")                  # the built-in corpus, or any one-word-per-line file
    splits = split_words(words, seed=42)         # 80% train, 10% val, 10% test
    vocab = WordVocab.from_words(words)          # '.' plus every character seen
    X, Y = context_windows(splits.train, vocab, block_size=3)

Every word is read as ``.word.``: the boundary character '.' starts and ends it, so a model
learns which characters begin a word and when a word is complete. ``context_windows``
turns words into (previous ``block_size`` characters -> next character) examples, the
framing of every makemore rung up to WaveNet; ``word_rows`` pads whole words into rows for
a sequence model (the GPT rung).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TinyGPTError
from ..tokenizer import CharTokenizer, some_chars
from .corpora import BUILTIN_CORPORA, corpus_files

BOUNDARY = "."  # starts and ends every word; makemore's convention
MIN_WORDS = 10  # fewer cannot be split 80/10/10 with a word in each part


def read_words(spec: str, log=None) -> list[str]:
    """The words of a built-in corpus (``names``) or of a text file with one word per line.

    Lines are stripped and blank ones skipped; a word may hold any character but the
    boundary '.', which would make a word end in the middle."""
    if spec in BUILTIN_CORPORA:
        (path, *more) = corpus_files(spec, log)
        if more:
            raise TinyGPTError(f"the built-in corpus {spec!r} is running text, not a list of words; "
                               f"pass --data names or a file with one word per line")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise TinyGPTError(f"no word list at {spec!r}: give a text file with one word per line, or --data names")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TinyGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    words = [w.strip() for w in text.splitlines()]
    words = [w for w in words if w]
    bad = [i for i, w in enumerate(words) if BOUNDARY in w]
    if bad:
        raise TinyGPTError(f"{path} line {bad[0] + 1} ({words[bad[0]]!r}) holds '{BOUNDARY}', which makemore "
                           f"uses to mark where words start and end; remove it from the {len(bad)} words that have it")
    if len(words) < MIN_WORDS:
        raise TinyGPTError(f"{path} holds {len(words)} words; makemore needs at least {MIN_WORDS} "
                           "(80% train, 10% val, 10% test), one word per line")
    return words


@dataclass(frozen=True)
class WordSplits:
    train: list[str]
    val: list[str]
    test: list[str]


def split_words(words: list[str], seed: int = 42) -> WordSplits:
    """80/10/10 by a fixed seed: the same words land in the same split on every run."""
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)
    n1, n2 = int(0.8 * len(shuffled)), int(0.9 * len(shuffled))
    return WordSplits(shuffled[:n1], shuffled[n1:n2], shuffled[n2:])


class WordVocab(CharTokenizer):
    """tinygpt's char tokenizer over the words' characters plus the boundary '.'."""

    @classmethod
    def from_words(cls, words: list[str]) -> WordVocab:
        return cls({BOUNDARY, *"".join(words)})

    @property
    def boundary(self) -> int:
        return self.chars.index(BOUNDARY)

    def encode_words(self, words: list[str], pad: int) -> np.ndarray:
        """Ids of ``pad`` boundaries + word + one boundary, for every word, end to end (one call:
        the char tokenizer encodes a whole corpus at numpy speed)."""
        try:
            return np.asarray(self.encode("".join(BOUNDARY * pad + w + BOUNDARY for w in words)), dtype=np.int64)
        except TinyGPTError:
            unknown = sorted(set("".join(words)) - set(self.chars))
            raise TinyGPTError(f"the words hold {some_chars(unknown)} the vocabulary lacks; "
                               "build the vocabulary from every split's words") from None


def context_windows(words: list[str], vocab: WordVocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (previous ``block_size`` ids, next id) pair of the words: X (N, block_size), Y (N,).

    "emma" with block_size 3 gives ... -> e, ..e -> m, .em -> m, emm -> a, mma -> '.': one
    example per character plus one for the end, contexts padded with boundaries at the start."""
    ids = vocab.encode_words(words, pad=block_size)            # ...emma....olivia. (one segment per word)
    lengths = np.fromiter((len(w) + block_size + 1 for w in words), dtype=np.int64, count=len(words))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # each position's segment start
    offset = np.arange(len(ids)) - starts                      # position within its segment
    target = np.nonzero(offset >= block_size)[0]               # the characters to predict, and the end
    windows = np.lib.stride_tricks.sliding_window_view(ids, block_size)  # windows[i] = ids[i : i + block_size]
    X = torch.from_numpy(np.ascontiguousarray(windows[target - block_size]))
    Y = torch.from_numpy(ids[target])
    return X, Y


def word_rows(words: list[str], vocab: WordVocab, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole words as rows for a sequence model: x = '.' + word, y = word + '.', padded to ``length``.

    x, y (N, length); padding in y is -1 (ignored by the loss), in x the boundary (never a
    target, so what it holds does not matter). Same examples as ``context_windows`` with
    an unbounded context: every character of every word, and each word's end."""
    longest = max(len(w) for w in words) + 1
    if longest > length:
        raise TinyGPTError(f"a word of {longest - 1} characters does not fit rows of {length}; "
                           f"use --block-size {longest} or more")
    x = torch.full((len(words), length), vocab.boundary, dtype=torch.long)
    y = torch.full((len(words), length), -1, dtype=torch.long)
    ids = torch.from_numpy(vocab.encode_words(words, pad=1))
    at = 0
    for i, w in enumerate(words):  # a Python loop over words, not characters: ~0.1 s for 90k names
        n = len(w) + 1
        x[i, :n] = ids[at:at + n]
        y[i, :n] = ids[at + 1:at + n + 1]
        at += n + 1
    return x, y
