"""Byte-level BPE from scratch: the tokenizer itself (encode, decode, save).

Byte pair encoding starts from the 256 byte values of UTF-8 text and learns *merges*
(:mod:`.bpe_train`): the most frequent pair of adjacent tokens becomes a new token, again
and again, until the vocabulary has the wanted size. Encoding replays the merges in the
order they were learned; decoding joins the tokens' bytes. Since every string is bytes,
any text can be encoded, and decoding gives it back exactly.

GPT-2 first cuts text into chunks with a regex (a word with its leading space, a number,
a run of punctuation, a run of spaces) and never merges across a chunk boundary; with no
regex (``pattern=None``, the lecture's basic tokenizer) the text is one byte sequence.

Special tokens such as "<|endoftext|>" are not text: they are cut out before encoding
(and before training) and have ids of their own after the merges (50256 in GPT-2).

:mod:`.bpe_compare` loads GPT-2's own merges into :class:`BPE` and checks it against
tiktoken, and checks the training against the ``tokenizers`` library.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import regex  # not `re`: GPT-2's pattern needs Unicode classes such as \p{L} (a dependency of tiktoken)

from ..checkpoint import atomic_write_text
from ..errors import TinyGPTError
from ..tokenizer import GPT2_PAT_STR

MODEL_FILE = "bpe.json"  # what load() reads back
VOCAB_FILE = "vocab.txt"  # for people: every token and the merge that made it

Pair = tuple[int, int]


# ---------------------------------------------------------------------------- the two primitives


def get_stats(ids: Sequence[int]) -> Counter[Pair]:
    """How often each adjacent pair occurs in ``ids``: [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}."""
    return Counter(zip(ids, ids[1:]))


def merge(ids: Sequence[int], pair: Pair, idx: int) -> list[int]:
    """``ids`` with each occurrence of ``pair`` replaced by ``idx``, scanning left to right
    (so "a a a" with pair (a, a) becomes "aa a")."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == pair[0] and i + 1 < len(ids) and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ---------------------------------------------------------------------------- the tokenizer


class BPE:
    """A byte-level BPE tokenizer: merges, optional split regex, special tokens.

    ``merges`` maps (left id, right id) to the new token's id; ids grow with training
    order, so a smaller id is an earlier merge (GPT-2's ids have this property too).
    ``byte_ids[b]`` is the id of byte ``b``: ``range(256)`` for tokenizers trained here,
    a shuffled order for GPT-2's (see :func:`.bpe_compare.load_gpt2`).
    """

    def __init__(self, merges: dict[Pair, int], special_tokens: dict[str, int] | None = None,
                 pattern: str | None = GPT2_PAT_STR, byte_ids: Sequence[int] = range(256)):
        self.merges = dict(merges)
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self.byte_ids = list(byte_ids)
        if len(self.byte_ids) != 256:
            raise ValueError(f"byte_ids must give each of the 256 bytes an id, got {len(self.byte_ids)}")
        self._chunker = regex.compile(pattern) if pattern else None
        self._cache: dict[bytes, list[int]] = {}
        self.vocab = self._build_vocab()

    def _build_vocab(self) -> dict[int, bytes]:
        vocab = {idx: bytes([b]) for b, idx in enumerate(self.byte_ids)}
        for (a, b), idx in sorted(self.merges.items(), key=lambda item: item[1]):  # parts before the whole
            vocab[idx] = vocab[a] + vocab[b]
        for token, idx in self.special_tokens.items():
            vocab[idx] = token.encode("utf-8")
        return vocab

    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1

    # -- encoding

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text``, reading any special token in it as plain text."""
        text = replace_surrogates(text)
        chunks = self._chunker.findall(text) if self._chunker else [text]
        ids: list[int] = []
        for chunk in chunks:
            ids.extend(self._encode_chunk(chunk.encode("utf-8")))
        return ids

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        # Real text repeats its words, so each distinct chunk is worked out once.
        if chunk not in self._cache:
            if len(self._cache) > 100_000:  # bound the memory on endless random text
                self._cache.clear()
            self._cache[chunk] = self._apply_merges([self.byte_ids[b] for b in chunk])
        return self._cache[chunk]

    def _apply_merges(self, ids: list[int]) -> list[int]:
        # Replay training: the pair present that was merged *earliest* goes first, since
        # the later merges were learned on text in which it had already been merged.
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break  # no pair left that training ever merged
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def encode(self, text: str, allowed_special: str | Iterable[str] = (),
               disallowed_special: str | Iterable[str] = "all") -> list[int]:
        """Ids of ``text``, with tiktoken's rules for special tokens.

        A special token in ``allowed_special`` ("all" or a set) becomes its id; one in
        ``disallowed_special`` ("all": every special not allowed) raises ValueError, since
        text from users that spells "<|endoftext|>" should not end a document by accident;
        any other special token is encoded as plain text.
        """
        known = set(self.special_tokens)
        allowed = known if allowed_special == "all" else set(allowed_special) & known
        disallowed = known - allowed if disallowed_special == "all" else set(disallowed_special)
        for token in disallowed:
            if token in text:
                raise ValueError(f"text contains the special token {token!r}; pass allowed_special to encode it "
                                 "as its id, or disallowed_special=() to encode it as plain text")
        ids: list[int] = []
        for piece, special in split_special(text, allowed):
            ids.extend(self.encode_ordinary(piece))
            if special is not None:
                ids.append(self.special_tokens[special])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        # A token may be part of a character (one byte of "€"), so join the bytes before
        # decoding; bytes that end mid-character become U+FFFD, as in tiktoken.
        try:
            data = b"".join(self.vocab[i] for i in ids)
        except KeyError as err:
            raise ValueError(f"unknown token id {err.args[0]}: the ids are 0..{self.vocab_size - 1}") from None
        return data.decode("utf-8", errors="replace")

    # -- saving

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``bpe.json`` (what :meth:`load` reads) and ``vocab.txt`` (for reading) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ordered = sorted(self.merges.items(), key=lambda item: item[1])
        head = {"pattern": self.pattern, "special_tokens": self.special_tokens, "byte_ids": self.byte_ids}
        # JSON with one merge [left, right, new id] per line: indent=1 would put every number on its own line.
        fields = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in head.items()]
        merges = ",\n".join(f"  [{a}, {b}, {idx}]" for (a, b), idx in ordered)
        fields.append(f' "merges": [\n{merges}\n ]')
        atomic_write_text(directory / MODEL_FILE, "{\n" + ",\n".join(fields) + "\n}\n")
        lines = [f"{idx}\t{render(self.vocab[idx])}" for idx in sorted(self.byte_ids)]
        lines += [f"{idx}\t{render(self.vocab[idx])}\t= {render(self.vocab[a])} + {render(self.vocab[b])}"
                  for (a, b), idx in ordered]
        lines += [f"{idx}\t{token!r}\t(special)" for token, idx in self.special_tokens.items()]
        atomic_write_text(directory / VOCAB_FILE, "\n".join(lines) + "\n")
        return [directory / MODEL_FILE, directory / VOCAB_FILE]

    @classmethod
    def load(cls, path: str | Path) -> BPE:
        """Read back what :meth:`save` wrote (``path`` is the folder or its ``bpe.json``)."""
        path = Path(path)
        path = path / MODEL_FILE if path.is_dir() else path
        try:
            model = json.loads(path.read_text(encoding="utf-8"))
            merges = {(a, b): idx for a, b, idx in model["merges"]}
            return cls(merges, model["special_tokens"], model["pattern"], model["byte_ids"])
        except FileNotFoundError:
            raise TinyGPTError(f"no BPE tokenizer at {path}; pass the folder 'tinygpt learn bpe --out' wrote") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TinyGPTError(f"{path} is not a readable BPE tokenizer ({type(err).__name__}: {err}); "
                               "train it again with 'tinygpt learn bpe'") from None


def render(token: bytes) -> str:
    """A token as people read it: a quoted string, or a bytes literal when it is not whole UTF-8
    characters (b'\\xe2\\x82' is two thirds of "€")."""
    try:
        return repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(token)


def replace_surrogates(text: str) -> str:
    # A Python string may hold lone surrogates, which have no UTF-8 bytes; tiktoken turns
    # them into U+FFFD (and a split surrogate pair into its character), and so do we.
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def split_special(text: str, special_tokens: Iterable[str]) -> list[tuple[str, str | None]]:
    """``text`` cut at its special tokens: (plain piece, the special token after it, or None at the end)."""
    # Longest first, so a special token that starts another one does not cut it short.
    tokens = sorted(special_tokens, key=len, reverse=True)
    if not tokens:
        return [(text, None)]
    out, start = [], 0
    for m in regex.finditer("|".join(regex.escape(t) for t in tokens), text):
        out.append((text[start:m.start()], m.group()))
        start = m.end()
    return out + [(text[start:], None)]
