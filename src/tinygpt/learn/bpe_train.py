"""Byte-level BPE from scratch: learning the merges.

Start from the text's UTF-8 bytes; count every pair of adjacent tokens; the most frequent
pair becomes a new token (ids 256, 257, ...) and replaces the pair everywhere; repeat.

How the text is cut before pairs are counted (``split``):

- ``"none"``, the lecture's basic tokenizer: the text is one long byte sequence, so a
  merge may glue the end of one word to the start of the next ("e t" in "the tea").
  Every merge rescans the whole text: fine for ~100 kB, slow for megabytes.
- ``"gpt2"``: GPT-2's regex first cuts the text into chunks and merges never cross a
  chunk boundary, so the vocabulary holds " dog" once instead of "dog.", "dog!", "dog,".

Special tokens are cut out of the training text: "<|endoftext|>" separates documents,
and pairs across it, or inside it, say nothing about the language.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import regex

from ..errors import TinyGPTError
from ..tokenizer import GPT2_EOT, GPT2_PAT_STR, gpt2_byte_decoder
from .bpe import BPE, Pair, get_stats, merge, replace_surrogates, split_special

SPLITS = {"gpt2": GPT2_PAT_STR, "none": None}  # --split: the regex that cuts the text into chunks


def train(text: str, vocab_size: int, split: str = "gpt2", special_tokens: Sequence[str] = (GPT2_EOT,)) -> BPE:
    """A tokenizer with ``vocab_size`` ids: 256 bytes, the merges learned on ``text``, then
    ``special_tokens``. Training stops early when no pair is left to merge (a tiny text)."""
    if split not in SPLITS:
        raise TinyGPTError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    special_tokens = list(dict.fromkeys(special_tokens))  # drop repeats, keep the order
    if "" in special_tokens:
        raise TinyGPTError("a special token cannot be the empty string; pass e.g. --special '<|endoftext|>'")
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        specials = f"{len(special_tokens)} special token{'s' * (len(special_tokens) != 1)}"
        raise TinyGPTError(f"vocab size {vocab_size} is too small: it needs at least {minimum} (256 bytes + "
                           f"{specials}); pass --vocab-size {minimum} or more")
    chunks = count_chunks(text, SPLITS[split], special_tokens)
    if not chunks:
        raise TinyGPTError("the training text is empty, so BPE has nothing to learn; check --data")
    merges = learn_merges(chunks, vocab_size - minimum)
    first_special = 256 + len(merges)
    return BPE(merges, {token: first_special + i for i, token in enumerate(special_tokens)}, SPLITS[split])


def count_chunks(text: str, pattern: str | None, special_tokens: Sequence[str] = ()) -> Counter[bytes]:
    """Each distinct chunk of ``text`` (as UTF-8 bytes) with the number of times it occurs.

    Pairs are never counted across chunks, so a chunk that occurs 1000 times can be
    counted once with weight 1000: Shakespeare's 1.4 million chunks (5 MB) are 36 thousand
    distinct ones (0.27 MB), so each step of training has ~18x fewer bytes to look at.
    """
    counts: Counter[str] = Counter()
    chunker = regex.compile(pattern) if pattern else None
    for piece, _ in split_special(replace_surrogates(text), special_tokens):
        if piece:
            counts.update(chunker.findall(piece) if chunker else [piece])
    return Counter({chunk.encode("utf-8"): n for chunk, n in counts.items()})


def learn_merges(chunks: Counter[bytes], num_merges: int) -> dict[Pair, int]:
    """The BPE training loop: merge the most frequent pair, ``num_merges`` times.

    The plain loop recounts every pair after each merge. Here the counts are kept up to
    date instead: a merge only changes the chunks that contain the merged pair, so only
    those are recounted (their old pairs taken off the totals, their new ones added).
    The merges are the same; ~1000 of them on all of Shakespeare take seconds, not minutes.
    """
    words = [list(chunk) for chunk in chunks]  # each distinct chunk as ids, bytes to start with
    freqs = list(chunks.values())
    stats: dict[Pair, int] = {}  # pair -> occurrences in the whole text
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> the words that contain it (or once did)
    for i, word in enumerate(words):
        _count_pairs(stats, where, i, word, freqs[i])
    merges: dict[Pair, int] = {}
    for idx in range(256, 256 + num_merges):
        if not stats:
            break  # every chunk is a single token: nothing left to merge
        pair = most_frequent(stats)
        for i in where.pop(pair):
            if pair not in zip(words[i], words[i][1:]):
                continue  # an earlier merge took it apart: `where` is never pruned
            _count_pairs(stats, where, i, words[i], -freqs[i])
            words[i] = merge(words[i], pair, idx)
            _count_pairs(stats, where, i, words[i], freqs[i])
        merges[pair] = idx
    return merges


def _count_pairs(stats: dict[Pair, int], where: dict[Pair, set[int]], i: int, word: list[int], weight: int) -> None:
    # Add word i's pairs, ``weight`` times each, to the totals (a negative weight takes them off).
    for pair, n in get_stats(word).items():
        stats[pair] = stats.get(pair, 0) + n * weight
        if stats[pair] == 0:
            del stats[pair]  # gone from the text: keep it out of the next max()
        elif weight > 0:
            where[pair].add(i)


def most_frequent(stats: dict[Pair, int]) -> Pair:
    """The pair to merge next: the most frequent, ties broken as in :func:`tie_order`."""
    top = max(stats.values())
    return min((pair for pair, n in stats.items() if n == top), key=tie_order)


def tie_order(pair: Pair) -> tuple[int, int]:
    """Which of equally frequent pairs goes first: the smaller, comparing left tokens, then right.

    Any fixed rule would do; this is the ``tokenizers`` library's, so that both learn the
    same merges. It compares ids of *its* vocabulary, where the 256 bytes are sorted by the
    character GPT-2 prints each as (encoder.json's "Ġ" for a space): the 188 printable
    bytes "!".."ÿ" first, then the 68 others (control bytes, space, DEL, ...) in byte order;
    merged tokens follow in the order they were made, as here. So on a tie, ("a", "b")
    goes before (" ", "a"), although byte 32 (space) is smaller than byte 97 ("a").
    """
    return _PRINTED_RANK.get(pair[0], pair[0]), _PRINTED_RANK.get(pair[1], pair[1])


# byte -> its place in GPT-2's printed alphabet: "!" (byte 33) is 0, ..., "ÿ" is 187, byte 0 is 188, space 220
_PRINTED_RANK = {b: rank for rank, (_, b) in enumerate(sorted(gpt2_byte_decoder().items()))}
