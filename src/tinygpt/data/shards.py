"""A prepared corpus: token shards on disk with an index, written by ``tinygpt prepare`` and
trained on with ``--data DIR``, for corpora bigger than memory (or than one cache folder).

The directory (its format is documented in the README, "Corpora bigger than memory"):

    index.json              {"format": "tinygpt-tokens", "version": 1, "key", "source", "files",
                             "encoding", "dtype", "vocab_size", "tokenizer", "n_tokens", "n_bytes",
                             "shards": [{"name": "shard-00000.bin", "tokens": n}, ...]}
    shard-00000.bin ...     the token ids back to back, little-endian uint16 (uint32 past 65,536 ids)
    marks.npy               int64 (pieces, 2): tokens and text bytes so far after each encoded
                            chunk, so the validation tail's size in bytes is exact (bits per byte)
    tokenizer_config.json   the tokenizer (+ tokenizer.json for a trained BPE)

Concatenated, the shards hold exactly the tokens the token cache holds for the same text and
tokenizer (both encode through encode.py), so training on a prepared corpus takes the batches
training on the raw text takes. The split between training and validation is not stored: the
last ``--val-fraction`` of the tokens is held out at load time, as for raw text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import TinyGPTError
from ..tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .cache import TokenData, _cache_key, bytes_before, token_dtype
from .config import DataConfig
from .encode import default_workers, encode_files
from .files import check_encoding, iter_chunks, relative_names, resolve_files

INDEX = "index.json"
FORMAT, VERSION = "tinygpt-tokens", 1
DEFAULT_SHARD_TOKENS = 100_000_000   # ~200 MB of uint16 per shard: few files, each easy to copy


def is_prepared(spec: str) -> bool:
    """Whether ``--data spec`` names a directory written by ``tinygpt prepare``."""
    return (Path(spec).expanduser() / INDEX).is_file()


class TokenShards:
    """Read-only 1-D view of ``tokens[start:stop]`` across the shards' memmaps, as if one
    array: what Batches and evaluation index (length, slices, integer-array gathers)."""

    def __init__(self, shards: list[np.ndarray], start: int = 0, stop: int | None = None):
        lengths = np.array([len(s) for s in shards], dtype=np.int64)
        self._shards = shards
        self._ends = np.cumsum(lengths)             # (S,) global index one past each shard
        self._begins = self._ends - lengths         # (S,) global index of each shard's first token
        total = int(self._ends[-1]) if len(shards) else 0
        self.start, self.stop = start, total if stop is None else stop
        self.dtype = shards[0].dtype if shards else np.dtype("<u2")

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, start: int, stop: int) -> "TokenShards":
        return TokenShards(self._shards, self.start + start, self.start + stop)

    def __getitem__(self, key):
        if isinstance(key, slice):
            i, j, step = key.indices(len(self))
            if step == 1:
                return self._range(self.start + i, self.start + max(i, j))
            key = np.arange(i, j, step)
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"token index {key} out of range for {len(self)} tokens")
            return self[np.array([key % len(self)])][0]
        index = np.asarray(key, dtype=np.int64)
        flat = index.ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range for {len(self)} tokens")
        flat = flat + self.start
        which = np.searchsorted(self._ends, flat, side="right")   # the shard of each index
        out = np.empty(flat.shape, dtype=self.dtype)
        for s in np.unique(which):   # a window crosses at most one boundary: one or two shards
            here = which == s
            out[here] = self._shards[s][flat[here] - self._begins[s]]
        return out.reshape(index.shape)

    def _range(self, a: int, b: int) -> np.ndarray:
        parts = [s[max(a - lo, 0):min(b, hi) - lo] for s, lo, hi in zip(self._shards, self._begins, self._ends)
                 if a < hi and b > lo]
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._range(self.start, self.stop)
        return whole if dtype is None else whole.astype(dtype)

    def __iter__(self):
        return iter(np.asarray(self))


def load_prepared(cfg: DataConfig, tokenizer: Tokenizer | None = None,
                  log: Callable[[str], None] = print) -> TokenData:
    """The prepared corpus ``cfg.data`` names, mapped into memory, its last ``cfg.val_fraction``
    held out. ``tokenizer``: the one the caller must encode with (a fine-tune's base's)."""
    directory = Path(cfg.data).expanduser()
    index = _read_index(directory)
    own = load_tokenizer(directory)
    if tokenizer is not None and tokenizer.fingerprint() != own.fingerprint():
        raise TinyGPTError(f"{directory} was prepared with another tokenizer ({own.kind}, {own.vocab_size} tokens) "
                           f"than the one this needs ({tokenizer.kind}, {tokenizer.vocab_size} tokens); prepare the "
                           f"text again with that tokenizer, or give the raw text")
    dtype = np.dtype(index["dtype"]).newbyteorder("<")
    shards = []
    root = directory.resolve()
    for entry in index["shards"]:
        name, n = entry.get("name"), entry.get("tokens")
        path = directory / str(name)
        # Only plain files inside the directory: an index naming ../elsewhere or a symlink out is damage.
        if not isinstance(name, str) or Path(name).name != name or not isinstance(n, int) \
                or path.is_symlink() or path.resolve().parent != root:
            raise TinyGPTError(f"{directory / INDEX} names a shard {name!r} that is not a file of that folder; "
                               "the prepared folder is damaged: prepare it again")
        size = path.stat().st_size if path.is_file() else -1
        if size != n * dtype.itemsize:
            raise TinyGPTError(f"the shard {path} has {max(size, 0)} bytes, the index says {n * dtype.itemsize}; "
                               "the prepared folder is damaged or incomplete: prepare it again")
        if n:
            shards.append(np.memmap(path, dtype=dtype, mode="r"))
    tokens = TokenShards(shards)
    n_tokens = len(tokens)
    if n_tokens != index["n_tokens"]:
        raise TinyGPTError(f"{directory / INDEX} says {index['n_tokens']} tokens but its shards hold {n_tokens}; "
                           "prepare it again")
    val_start = n_tokens - round(n_tokens * cfg.val_fraction)
    # The run's data key: the prepared text and tokenizer, and where it is split.
    key = hashlib.sha256(f"{index['key']}:{cfg.val_fraction!r}".encode()).hexdigest()
    meta = {key_: index[key_] for key_ in ("source", "files", "encoding", "dtype", "vocab_size", "tokenizer",
                                           "n_bytes")}
    meta.update(key=key, prepared=str(directory), n_tokens=n_tokens, val_start=val_start)
    marks = np.load(directory / "marks.npy", allow_pickle=False) if (directory / "marks.npy").is_file() else None
    train_bytes = bytes_before(own, tokens, marks, val_start) if marks is not None and len(marks) else None
    if train_bytes is not None:
        meta.update(train_bytes=train_bytes, val_bytes=index["n_bytes"] - train_bytes)
    log(f"data: prepared corpus {directory}: {n_tokens:,} tokens in {len(shards)} shard(s) "
        f"({val_start:,} train, {n_tokens - val_start:,} val), vocab {own.vocab_size:,} ({own.kind})")
    return TokenData(directory, own, meta, tokens.view(0, val_start), tokens.view(val_start, n_tokens))


def _read_index(directory: Path) -> dict:
    path = directory / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TinyGPTError(f"cannot read {path} ({e}); prepare the text again with tinygpt prepare") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise TinyGPTError(f"{path} is not a tinygpt prepared corpus index; give the folder tinygpt prepare wrote")
    if index.get("version") != VERSION:
        raise TinyGPTError(f"{path} is format version {index.get('version')}, this tinygpt reads {VERSION}; "
                           "prepare the text again with this version")
    missing = [k for k in ("key", "dtype", "n_tokens", "n_bytes", "shards", "vocab_size", "tokenizer")
               if k not in index]
    if missing or not isinstance(index["shards"], list):
        raise TinyGPTError(f"{path} lacks {', '.join(missing) or 'its shard list'}; the prepared folder is damaged: "
                           "prepare it again")
    return index


def prepare_corpus(cfg: DataConfig, out: str | Path, *, workers: int | None = None,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, progress: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """Tokenize ``cfg.data`` into the new (or empty) folder ``out``: the shards, their index,
    the tokenizer. Written under a temporary name beside ``out`` and renamed into place, so
    ``out`` only ever holds a complete corpus. Returns ``out``."""
    out = Path(out).expanduser()
    if shard_tokens < 1:
        raise TinyGPTError(f"--shard-tokens must be at least 1, got {shard_tokens}; e.g. --shard-tokens 100M")
    if workers is None:
        # tiktoken and tokenizers already encode a batch on every core in one process; measured on
        # 2 cores (59 MB of text), a second process made GPT-2's encoding slower, the char one faster.
        workers = default_workers() if cfg.tokenizer == "char" else 1
    if workers < 1:
        raise TinyGPTError(f"--workers must be at least 1, got {workers}; e.g. --workers 2")
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise TinyGPTError(f"{out} already exists and is not an empty folder; give a new --out (nothing was written)")
    files = resolve_files(cfg.data, cfg.encoding, log)
    names = relative_names(files)
    split_free = replace(cfg, val_fraction=0.0)   # the split is chosen at load time
    key, n_raw = _cache_key(split_free, files, names)
    if n_raw == 0:
        raise TinyGPTError(f"no text in {cfg.data!r}: the corpus is empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-prepare-{out.name}-", dir=out.parent))
    try:
        started = time.perf_counter()
        tokenizer = build_tokenizer(cfg.tokenizer, lambda: (c for p in files for c in iter_chunks(p, cfg.encoding)),
                                    vocab_size=cfg.bpe_vocab_size)
        tokenizer.save(staging)
        dtype = token_dtype(tokenizer.vocab_size)
        log(f"prepare: {len(files)} file(s), {n_raw / 1e6:,.1f} MB, {tokenizer.kind} tokenizer "
            f"({tokenizer.vocab_size:,} tokens), {workers} worker(s)")
        shards, marks, n_bytes = _write_shards(encode_files(files, cfg.encoding, tokenizer, dtype, workers=workers,
                                                            tokenizer_dir=staging),
                                               staging, dtype, shard_tokens, n_raw, progress, log)
        n_tokens = sum(s["tokens"] for s in shards)
        if n_tokens == 0:
            raise TinyGPTError(f"no text in {cfg.data!r}: the corpus is empty")
        np.save(staging / "marks.npy", np.asarray(marks, dtype=np.int64).reshape(-1, 2), allow_pickle=False)
        index = {"format": FORMAT, "version": VERSION, "key": key, "source": cfg.data, "files": names,
                 "encoding": check_encoding(cfg.encoding), "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
                 "tokenizer": tokenizer.to_dict(), "n_tokens": n_tokens, "n_bytes": n_bytes, "shards": shards}
        (staging / INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        if out.is_dir():
            out.rmdir()   # empty (checked above); rename needs the name free
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    log(f"prepare: {n_tokens:,} tokens in {len(shards)} shard(s) in {seconds:.1f}s "
        f"({n_raw / 1e6 / max(seconds, 1e-9):,.1f} MB/s) -> {out}; train with: tinygpt train --data {out}")
    return out


def _write_shards(pieces, directory: Path, dtype: np.dtype, shard_tokens: int, n_raw: int,
                  progress: bool, log: Callable[[str], None]) -> tuple[list[dict], list[tuple[int, int]], int]:
    """Write the pieces' tokens into shards of ``shard_tokens`` (the last one shorter);
    returns (the index's shard list, marks, text bytes)."""
    import sys

    from tqdm import tqdm

    shards: list[dict] = []
    marks: list[tuple[int, int]] = []
    n_tokens = n_bytes = 0
    handle = None
    # A bar on a terminal; elsewhere (a log file, CI) a line every 10 s, as training does.
    bar = tqdm(total=n_raw, unit="B", unit_scale=True, desc="prepare", disable=not (progress and sys.stderr.isatty()),
               dynamic_ncols=True)
    last_line = time.perf_counter()
    try:
        for piece in pieces:
            ids = piece.ids
            while len(ids):
                if handle is None or shards[-1]["tokens"] == shard_tokens:
                    if handle is not None:
                        handle.close()
                    shards.append({"name": f"shard-{len(shards):05d}.bin", "tokens": 0})
                    handle = open(directory / shards[-1]["name"], "wb")
                room = shard_tokens - shards[-1]["tokens"]
                ids[:room].tofile(handle)
                shards[-1]["tokens"] += len(ids[:room])
                ids = ids[room:]
            n_tokens += len(piece.ids)
            n_bytes += piece.n_bytes
            marks.append((n_tokens, n_bytes))
            bar.update(piece.n_bytes)
            if progress and bar.disable and time.perf_counter() - last_line > 10:
                last_line = time.perf_counter()
                log(f"prepare: {n_bytes / 1e6:,.0f} of ~{n_raw / 1e6:,.0f} MB, {n_tokens:,} tokens")
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    return shards, marks, n_bytes
