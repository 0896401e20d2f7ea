"""Text files -> token ids, chunk by chunk, in this process or in a pool of worker processes.

The token cache (cache.py) and ``tinygpt prepare`` (shards.py) both encode through here, so a
prepared corpus holds exactly the tokens the cache holds: the files in order, each cut into
the same line-aligned chunks (files.iter_chunks), the end-of-text id between two files.

One process is enough for the tokenizers whose backends already run ``encode_batch`` on
every core (tiktoken, tokenizers); worker processes also parallelise the character tokenizer
and take the encoding off the process that reads and writes. The text goes to the workers
in batches of chunks and comes back in order, with a bounded number in flight, so memory
stays flat whatever the corpus size.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ..tokenizer import Tokenizer, load_tokenizer
from .files import iter_chunks

ENCODE_BATCH_CHUNKS = 16    # chunks handed to one encode_batch call (or one worker task)


class Piece(NamedTuple):
    """A run of tokens and the text it encodes: one chunk, or the separator between two files."""
    ids: np.ndarray     # (n,) token ids in the corpus dtype
    n_bytes: int        # UTF-8 bytes of the text they encode (0 for the separator)


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def encode_files(files: list[Path], encoding: str, tokenizer: Tokenizer, dtype: np.dtype, *,
                 workers: int = 1, tokenizer_dir: Path | None = None) -> Iterator[Piece]:
    """The corpus's tokens in order, one Piece per chunk (and one per file separator).

    ``workers`` > 1 encodes in that many processes, which load the tokenizer saved in
    ``tokenizer_dir`` (the tokenizer itself may not pickle)."""
    eot = tokenizer.eot_id
    separator = Piece(np.array([eot], dtype=dtype), 0) if eot is not None else None
    if workers <= 1:
        for batch in _chunk_batches(files, encoding):
            yield from _batch_pieces(batch, tokenizer.encode_batch([text for text, _ in batch]), dtype, separator)
        return
    if tokenizer_dir is None:
        raise ValueError("worker processes load the tokenizer from tokenizer_dir: save it there first")
    # forkserver, not fork: the parent may hold threads (torch, a tokenizer's thread pool)
    # that a forked child would inherit in an unknown state.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_start_worker,
                             initargs=(str(tokenizer_dir),)) as pool:
        pending: deque[tuple[list[tuple[str, bool]], Future]] = deque()
        for batch in _chunk_batches(files, encoding):
            pending.append((batch, pool.submit(_encode, [text for text, _ in batch])))
            if len(pending) >= 2 * workers:     # bounded: the reader never runs far ahead
                done, future = pending.popleft()
                yield from _batch_pieces(done, future.result(), dtype, separator)
        while pending:
            done, future = pending.popleft()
            yield from _batch_pieces(done, future.result(), dtype, separator)


def _chunk_batches(files: list[Path], encoding: str) -> Iterator[list[tuple[str, bool]]]:
    """Batches of (chunk text, does a separator go before it), in corpus order: one goes
    before a file's first chunk when text came before it (empty files leave no trace)."""
    batch: list[tuple[str, bool]] = []
    seen = False
    for path in files:
        starts_file = seen
        for chunk in iter_chunks(path, encoding):
            batch.append((chunk, starts_file))
            starts_file, seen = False, True
            if len(batch) == ENCODE_BATCH_CHUNKS:
                yield batch
                batch = []
    if batch:
        yield batch


def _batch_pieces(batch: list[tuple[str, bool]], encoded: list, dtype: np.dtype,
                  separator: Piece | None) -> Iterator[Piece]:
    for (text, starts_file), ids in zip(batch, encoded):
        if starts_file and separator is not None:
            yield separator         # document separator: 1 token, 0 bytes
        yield Piece(np.asarray(ids, dtype=dtype), len(text.encode("utf-8")))


_worker_tokenizer: Tokenizer | None = None   # each worker process's own copy


def _start_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _encode(texts: list[str]) -> list[np.ndarray]:
    # int32 arrays pickle far smaller and faster than lists of Python ints.
    return [np.asarray(ids, dtype=np.int32) for ids in _worker_tokenizer.encode_batch(texts)]
