"""Tokenizers: turn text into integer ids and back.

Three kinds share one interface (:class:`Tokenizer`):

* ``char``: one id per distinct character of the corpus; tiny vocabulary, but it
  cannot encode characters it never saw.
* ``gpt2``: GPT-2's own 50257-token BPE via ``tiktoken``, built offline from
  OpenAI's ``encoder.json``, shipped inside tinygpt (``assets/gpt2/``).
* ``bpe``: a byte-level BPE trained on the user's corpus with HF ``tokenizers``.

The byte-level kinds (gpt2, bpe) encode any string, and for every kind
``decode(encode(s)) == s`` whenever ``encode(s)`` succeeds. :func:`build_tokenizer`
creates one, :meth:`Tokenizer.save` / :func:`load_tokenizer` keep it with a run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from .checkpoint import atomic_write_text
from .errors import TinyGPTError

TOKENIZER_KINDS = ("char", "gpt2", "bpe")
CONFIG_FILE = "tokenizer_config.json"
BPE_FILE = "tokenizer.json"  # HF tokenizers' own serialization format

# GPT-2's pre-tokenization regex (tiktoken's r50k/gpt2 pattern): contractions,
# letter runs, digit runs, punctuation runs, each optionally led by one space.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = "<|endoftext|>"


class Tokenizer(ABC):
    """Text <-> ids. Subclasses set ``kind`` and ``eot_id`` (None when there is none)."""

    kind: ClassVar[str]
    eot_id: int | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (the largest id + 1): the model's embedding table size."""

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts; subclasses override this where the backend runs in parallel."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict:
        """Small JSON-able description, stored in a run's config.json."""
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    def save(self, directory: str | Path) -> None:
        """Write this tokenizer into an existing ``directory`` (always ``tokenizer_config.json``)."""
        # ASCII-escaped JSON (the default): a char vocabulary may hold lone surrogates,
        # which UTF-8 cannot store.
        atomic_write_text(Path(directory) / CONFIG_FILE, json.dumps(self._config(), indent=1) + "\n")

    def _config(self) -> dict:
        # What tokenizer_config.json holds; subclasses add what they need to reload.
        return self.to_dict()

    def fingerprint(self) -> str:
        """sha256 of everything that decides how text is encoded (two tokenizers with the same
        fingerprint give the same ids)."""
        return hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode()).hexdigest()

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        # Backends disagree on bad ids (tiktoken: KeyError, tokenizers: silently
        # drops them, numpy: wraps negatives), so reject them uniformly here. A bad id
        # usually means a model whose output layer is larger than the vocabulary.
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
            raise ValueError(f"cannot decode id {bad}: the {self.kind} tokenizer has ids 0..{self.vocab_size - 1}")
        return arr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


# ---------------------------------------------------------------------------- char


class CharTokenizer(Tokenizer):
    """One id per character; ids are indices into the sorted character list."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError("CharTokenizer needs a non-empty list of single characters")
        self.chars = chars
        self.eot_id = None
        # Sorted code points: encoding is then a vectorized binary search, which
        # keeps multi-MB corpora fast (a Python loop per character is ~50x slower).
        self._codes = _code_points("".join(chars))

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for chunk in texts:  # one chunk at a time: the corpus may not fit in memory
            seen.update(chunk)
        if not seen:
            raise TinyGPTError("the corpus is empty, so the char tokenizer has no characters to learn; check the dataset path")
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes)
        # searchsorted returns an insertion point, which is only a real id when the
        # character at that point is the one we looked up.
        ids = np.minimum(ids, len(self._codes) - 1)
        unknown = self._codes[ids] != codes
        if unknown.any():
            raise TinyGPTError(self._unknown_message(codes[unknown]))
        return ids.tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return self._codes[self._check_ids(ids)].tobytes().decode("utf-32-le", "surrogatepass")

    @staticmethod
    def _unknown_message(bad: np.ndarray) -> str:
        uniq, first = np.unique(bad, return_index=True)
        uniq = uniq[np.argsort(first)]  # report in order of appearance
        shown = ", ".join(repr(chr(c)) for c in uniq[:10])  # repr keeps the message on one line
        more = f" (and {len(uniq) - 10} more)" if len(uniq) > 10 else ""
        return (
            f"text contains {len(uniq)} characters the char tokenizer does not know: {shown}{more}; "
            "remove them, or train with --tokenizer gpt2 or bpe to cover any text"
        )

    def _config(self) -> dict:
        return {**self.to_dict(), "chars": self.chars}

    @classmethod
    def _from_config(cls, directory: Path, config: dict) -> CharTokenizer:
        return cls(config["chars"])


def some_chars(chars: Sequence[str]) -> str:
    """Characters named in an error: "3 characters ('é', '\\n', '€')", the first 10 then a count."""
    # repr keeps newlines and odd characters visible, and the message on one line.
    shown = ", ".join(map(repr, chars[:10])) + (f" and {len(chars) - 10} more" if len(chars) > 10 else "")
    return f"{len(chars)} character{'s' if len(chars) != 1 else ''} ({shown})"


def _code_points(text: str) -> np.ndarray:
    # surrogatepass: Python strings may hold lone surrogates, which plain UTF-32 rejects.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


# ---------------------------------------------------------------------------- gpt2


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's encoder.json spells each byte as a printable character; map them back.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, NBSP,
    soft hyphen) are shifted to U+0100 onwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    decoder = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if chr(b) not in decoder]
    decoder.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return decoder


# GPT-2's vocabulary as OpenAI released it (assets/gpt2/README.md says where from). The
# sha256s are the ones tiktoken pins for the same two files (tiktoken_ext/openai_public.py),
# so a test can check that what we ship is byte for byte OpenAI's.
GPT2_ASSETS = Path(__file__).parent / "assets" / "gpt2"
GPT2_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's ``vocab.bpe`` (the merges) and ``encoder.json`` (the ids), shipped with tinygpt:
    everything that needs them (the gpt2 tokenizer, the HF and GGUF exporters, learn/'s BPE)
    reads them here."""
    merges, encoder = GPT2_ASSETS / "vocab.bpe", GPT2_ASSETS / "encoder.json"
    if not (merges.is_file() and encoder.is_file()):  # only an install that lost its package data
        raise TinyGPTError(f"GPT-2's vocabulary files are missing from {GPT2_ASSETS}; reinstall tinygpt "
                           "(from a checkout: pip install -e .)")
    return merges, encoder


def _gpt2_mergeable_ranks() -> dict[bytes, int]:
    """Token bytes -> id from the packaged encoder.json (GPT-2's ids are its merge ranks).

    Not ``tiktoken.load.data_gym_to_mergeable_bpe_ranks``: it also copies both files
    into a cache in the temp directory, for no gain with local files."""
    encoder = json.loads(gpt2_files()[1].read_text(encoding="utf-8"))
    byte_of = gpt2_byte_decoder()
    return {bytes(byte_of[ch] for ch in token): i for token, i in encoder.items() if token != GPT2_EOT}


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    # Cached: building the merge table takes a noticeable fraction of a second.
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=_gpt2_mergeable_ranks(), special_tokens={GPT2_EOT: 50256}
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2's tokenizer (via tiktoken); "<|endoftext|>" in text becomes id 50256."""

    kind = "gpt2"

    def __init__(self):
        self._enc = _gpt2_encoding()
        self.eot_id = self._enc.eot_token

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        # allowed_special="all": corpora use the literal "<|endoftext|>" as document separator.
        return self._enc.encode(text, allowed_special="all")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_batch(texts, allowed_special="all")  # threaded in tiktoken

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(self._check_ids(ids).tolist())

    @classmethod
    def _from_config(cls, directory: Path, config: dict) -> GPT2Tokenizer:
        return cls()  # the vocabulary ships with tinygpt


# ---------------------------------------------------------------------------- bpe


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained on the user's corpus; special tokens take the lowest ids."""

    kind = "bpe"

    def __init__(self, tok, special_tokens: Sequence[str]):
        self._tok = tok  # a tokenizers.Tokenizer
        self.special_tokens = list(special_tokens)
        self.eot_id = tok.token_to_id(self.special_tokens[0]) if self.special_tokens else None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str]) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        minimum = 256 + len(special_tokens)  # every byte, plus the special tokens
        if vocab_size < minimum:
            raise TinyGPTError(
                f"vocab size {vocab_size} is too small for the bpe tokenizer: it needs at least {minimum} "
                f"(256 bytes + {len(special_tokens)} special tokens); pass --bpe-vocab-size {minimum} or more"
            )
        tok = HFTokenizer(models.BPE())
        # Byte-level pre-tokenization + decoding makes any unicode round-trip exactly;
        # no prefix space, or decoding would return a leading space the text never had.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # initial_alphabet: all 256 bytes get an id, even those the corpus lacks.
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(special_tokens), initial_alphabet=alphabet, show_progress=False
        )
        any_text = False

        def chunks() -> Iterator[str]:  # notes on the way whether the corpus held any text
            nonlocal any_text
            for chunk in texts:
                any_text = any_text or bool(chunk)
                yield chunk

        tok.train_from_iterator(chunks(), trainer=trainer)
        if not any_text:
            raise TinyGPTError("the corpus is empty, so the bpe tokenizer has nothing to learn; check the dataset path")
        return cls(tok, special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Rust-side parallel batch; the "fast" variant (tokenizers >= 0.20) skips
        # computing character offsets we never use.
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in batch(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        # Keep special tokens, so text with "<|endoftext|>" separators round-trips.
        return self._tok.decode(self._check_ids(ids).tolist(), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "special_tokens": self.special_tokens}

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / BPE_FILE, self._tok.to_str(pretty=True))
        super().save(directory)

    def fingerprint(self) -> str:
        return hashlib.sha256((super().fingerprint() + self._tok.to_str()).encode()).hexdigest()

    @classmethod
    def _from_config(cls, directory: Path, config: dict) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = directory / BPE_FILE
        if not path.is_file():
            raise TinyGPTError(_incomplete(path, "is missing"))
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise TinyGPTError(_incomplete(path, f"is corrupt ({_one_line(err)})")) from None
        special = config["special_tokens"]
        if any(tok.token_to_id(s) is None for s in special):
            raise TinyGPTError(_incomplete(path, "does not match tokenizer_config.json"))
        return cls(tok, special)


# ---------------------------------------------------------------------------- factory & loading

_CLASSES: dict[str, type] = {"char": CharTokenizer, "gpt2": GPT2Tokenizer, "bpe": BPETokenizer}


def build_tokenizer(kind: str, texts: Callable[[], Iterable[str]] | None = None, *, vocab_size: int = 8192,
                    special_tokens: Sequence[str] = (GPT2_EOT,)) -> Tokenizer:
    """Create a tokenizer of ``kind``, training it on ``texts()`` where it needs a corpus.

    ``texts`` returns a fresh iterator over corpus chunks; chunks are consumed one by
    one and never joined, since the corpus may be larger than memory. ``vocab_size``
    and ``special_tokens`` only apply to "bpe"; "gpt2" ignores ``texts``.
    """
    if kind not in _CLASSES:
        raise TinyGPTError(f"unknown tokenizer kind {kind!r}; use one of: {', '.join(TOKENIZER_KINDS)}")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if texts is None:
        raise ValueError(f"the {kind} tokenizer is trained on a corpus: pass texts")
    if kind == "char":
        return CharTokenizer.train(texts())
    return BPETokenizer.train(texts(), vocab_size, special_tokens)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read back a tokenizer written by :meth:`Tokenizer.save`."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyGPTError(_incomplete(path, "is missing")) from None
    except (OSError, ValueError) as err:  # ValueError covers bad JSON and bad UTF-8
        raise TinyGPTError(_incomplete(path, f"is unreadable ({_one_line(err)})")) from None
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in _CLASSES:
        raise TinyGPTError(_incomplete(path, f"names no known tokenizer kind (got {kind!r})"))
    try:
        return _CLASSES[kind]._from_config(directory, config)
    except (KeyError, TypeError, ValueError) as err:
        raise TinyGPTError(_incomplete(path, f"is corrupt ({type(err).__name__}: {_one_line(err)})")) from None


def _incomplete(path: Path, problem: str) -> str:
    return (
        f"tokenizer file {path} {problem}; the run directory looks incomplete or damaged, "
        "so point to a complete run directory or retrain"
    )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
