"""Text -> tokenized corpus, cached on disk as a memory-mapped token file.

``prepare_data`` tokenizes a corpus once into ``cache_dir()/data/<key>/``, the key being
a SHA-256 over the settings that change the tokens and over every file's name and bytes.
Text is streamed (see files.py), encoded a batch of chunks at a time (the tokenizer
backends run ``encode_batch`` in parallel) and appended to ``tokens.bin``. A cache dir
is built under a temporary name and renamed into place, so it only ever appears complete.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ..config import cache_dir
from ..errors import TinyGPTError
from ..tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .batches import Batch, Batches
from .config import DataConfig
from .encode import encode_files
from .files import (
    CHUNK_BYTES,
    check_encoding,
    iter_chunks,
    open_binary,
    relative_names,
    resolve_files,
)

if TYPE_CHECKING:
    from .stream import StreamSource

FORMAT_VERSION = 1          # bump when the layout or meaning of a cache dir changes


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding every id below ``vocab_size``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass
class TokenData:
    """A tokenized corpus: the tokenizer plus read-only 1-D memmap views of the two splits."""
    directory: Path
    tokenizer: Tokenizer
    meta: dict
    train: np.ndarray   # (val_start,) uint16/uint32 memmap view (or a shards.TokenShards view)
    val: np.ndarray     # (n_tokens - val_start,)
    stream: "StreamSource | None" = None   # a streamed dataset: its training windows come from here

    def batches(self, split: str, batch_size: int, block_size: int, *, mode: str = "random",
                seed: int = 0) -> Iterator[Batch]:
        """A stream of ``split``'s batches: windows of the tokens, or of a streamed dataset's
        documents as they are read (always in order)."""
        if split == "train" and self.stream is not None:
            return self.stream.batches(batch_size, block_size)
        tokens = self.train if split == "train" else self.val
        return Batches(tokens, batch_size, block_size, mode=mode, seed=seed, split=split)


def prepare_data(cfg: DataConfig, *, tokenizer: Tokenizer | None = None,
                 log: Callable[[str], None] = print) -> TokenData:
    """Tokenize ``cfg.data`` into ``cache_dir()/data/<key>/`` (once) and map it into memory.

    ``tokenizer``: encode with this one (a fine-tune keeps its base's) instead of building
    ``cfg.tokenizer``'s kind from the text. A folder ``tinygpt prepare`` wrote is read as it is
    (see shards.py)."""
    from .shards import is_prepared, load_prepared
    from .stream import is_stream, prepare_stream

    if is_stream(cfg.data):
        return prepare_stream(cfg, tokenizer, log)
    if is_prepared(cfg.data):
        return load_prepared(cfg, tokenizer, log)
    files = resolve_files(cfg.data, cfg.encoding, log)
    names = relative_names(files)
    key, n_raw = _cache_key(cfg, files, names, tokenizer)
    directory = cache_dir() / "data" / key[:16]
    if not (directory / "meta.json").is_file():
        if n_raw == 0:
            raise TinyGPTError(f"no text in {cfg.data!r}: the corpus is empty")
        directory.parent.mkdir(parents=True, exist_ok=True)
        kind = tokenizer.kind if tokenizer is not None else cfg.tokenizer
        log(f"data: tokenizing {len(files)} file(s), {n_raw / 1e6:.1f} MB, with the {kind} tokenizer")
        started = time.perf_counter()
        _build(cfg, files, names, key, n_raw, directory, log, tokenizer)
        log(f"data: tokenized in {time.perf_counter() - started:.1f}s into {directory}")
    data = _load(directory)
    m = data.meta
    log(f"data: {m['n_tokens']:,} tokens ({len(data.train):,} train, {len(data.val):,} val), "
        f"vocab {m['vocab_size']:,} ({m['tokenizer']['kind']})")
    return data


def _cache_key(cfg: DataConfig, files: list[Path], names: list[str],
               tokenizer: Tokenizer | None = None) -> tuple[str, int]:
    """(sha256 hex over settings + each file's name and bytes, total bytes read)."""
    settings = {"version": FORMAT_VERSION, "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction,
                "encoding": check_encoding(cfg.encoding)}
    if tokenizer is not None:
        settings["tokenizer"] = {"given": tokenizer.fingerprint()}
    elif cfg.tokenizer == "bpe":
        settings["bpe_vocab_size"] = cfg.bpe_vocab_size
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    total = 0
    for path, name in zip(files, names):
        # Hashing each file separately and feeding (name, digest) pairs keeps the key
        # unambiguous: no file content can masquerade as a file boundary.
        content = hashlib.sha256()
        with open_binary(path) as f:
            while block := f.read(CHUNK_BYTES):
                content.update(block)
                total += len(block)
        key.update(json.dumps(name).encode() + content.digest())
    return key.hexdigest(), total


def _load(directory: Path) -> TokenData:
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    size = (directory / "tokens.bin").stat().st_size
    if size != meta["n_tokens"] * dtype.itemsize:
        raise TinyGPTError(f"the token cache {directory} is damaged (tokens.bin has {size} bytes, expected "
                           f"{meta['n_tokens'] * dtype.itemsize}); delete that folder and run again")
    tokens = np.memmap(directory / "tokens.bin", dtype=dtype, mode="r")
    split = meta["val_start"]
    return TokenData(directory, load_tokenizer(directory), meta, tokens[:split], tokens[split:])


def _remove_stale_builds(data_root: Path, key: str) -> None:
    """Delete temp dirs of this key left by builds that were killed (their process is gone)."""
    if os.name != "posix":  # os.kill(pid, 0) only probes on POSIX; elsewhere it would kill
        return
    for stale in data_root.glob(f".tmp-{key[:16]}-*"):
        try:
            pid = int(stale.name.split("-")[2])
            if pid != os.getpid():
                os.kill(pid, 0)
                continue  # still running: another process is building the same data
        except (ValueError, IndexError, PermissionError):
            continue
        except ProcessLookupError:
            pass
        shutil.rmtree(stale, ignore_errors=True)


def _build(cfg: DataConfig, files: list[Path], names: list[str], key: str, n_raw: int,
           directory: Path, log: Callable[[str], None], tokenizer: Tokenizer | None = None) -> None:
    """Tokenize into a temp dir beside ``directory``, then rename it into place."""
    _remove_stale_builds(directory.parent, key)
    with staged(directory, f".tmp-{key[:16]}-{os.getpid()}-") as staging:
        def texts() -> Iterator[str]:
            return (chunk for path in files for chunk in iter_chunks(path, cfg.encoding))

        if tokenizer is None:
            tokenizer = build_tokenizer(cfg.tokenizer, texts, vocab_size=cfg.bpe_vocab_size)
        dtype = token_dtype(tokenizer.vocab_size)
        n_tokens, n_bytes, marks = _write_tokens(files, cfg.encoding, tokenizer, staging / "tokens.bin",
                                                 dtype, n_raw, log)
        if n_tokens == 0:
            raise TinyGPTError(f"no text in {cfg.data!r}: the corpus is empty")
        val_start = n_tokens - round(n_tokens * cfg.val_fraction)
        meta = {"version": FORMAT_VERSION, "key": key, "source": cfg.data, "files": names,
                "n_tokens": n_tokens, "val_start": val_start, "dtype": dtype.name,
                "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.to_dict(),
                "encoding": check_encoding(cfg.encoding), "n_bytes": n_bytes}
        tokens = np.memmap(staging / "tokens.bin", dtype=dtype, mode="r")
        train_bytes = bytes_before(tokenizer, tokens, marks, val_start)
        del tokens
        if train_bytes is not None:
            meta.update(train_bytes=train_bytes, val_bytes=n_bytes - train_bytes)
        tokenizer.save(staging)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


@contextmanager
def staged(directory: Path, prefix: str) -> Iterator[Path]:
    """A temp folder beside ``directory`` to build a cache entry in: renamed into place when
    the block ends (removed if it raises), so ``directory`` only ever appears complete."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=directory.parent))
    try:
        yield staging
        try:
            os.rename(staging, directory)
        except OSError:
            # A concurrent run with the same inputs got there first; its result is identical.
            if not (directory / "meta.json").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_tokens(files: list[Path], encoding: str, tokenizer: Tokenizer, out_path: Path, dtype: np.dtype,
                  n_raw: int, log: Callable[[str], None]) -> tuple[int, int, list[tuple[int, int]]]:
    """Encode every file into ``out_path``; returns (n_tokens, utf-8 bytes of text, marks).

    ``marks`` holds (tokens so far, text bytes so far) after every encoded piece, so the
    byte count of the text before any token can later be found without re-reading files.
    """
    n_tokens = n_bytes = 0
    marks: list[tuple[int, int]] = []
    last_report = time.perf_counter()
    with open(out_path, "wb") as out:
        for piece in encode_files(files, encoding, tokenizer, dtype):
            piece.ids.tofile(out)
            n_tokens += len(piece.ids)
            n_bytes += piece.n_bytes
            marks.append((n_tokens, n_bytes))
            if time.perf_counter() - last_report > 10:  # big corpora: show it is alive
                last_report = time.perf_counter()
                log(f"data:   {n_bytes / 1e6:,.0f} of ~{n_raw / 1e6:,.0f} MB, {n_tokens:,} tokens")
    return n_tokens, n_bytes, marks


def bytes_before(tokenizer: Tokenizer, tokens, marks: list[tuple[int, int]] | np.ndarray, index: int) -> int | None:
    """UTF-8 bytes of the text encoded by tokens[:index], or None when not exactly knowable.

    Exact at chunk boundaries. Inside a chunk, the chunk's tokens are decoded in two
    halves; if the halves rejoin into the chunk, the cut lies between characters and the
    first half's byte length is exact. Byte-level tokenizers can cut inside a multi-byte
    character, and there is no exact answer in characters then.
    """
    if index == 0:
        return 0
    i = bisect.bisect_left([int(end) for end, _ in marks], index)   # the chunk holding token index - 1
    end, bytes_end = (int(v) for v in marks[i])
    start, bytes_start = (int(v) for v in marks[i - 1]) if i else (0, 0)
    if index == end:
        return bytes_end
    ids = np.asarray(tokens[start:end]).tolist()
    whole, head = tokenizer.decode(ids), tokenizer.decode(ids[: index - start])
    if len(whole.encode("utf-8")) != bytes_end - bytes_start or head + tokenizer.decode(ids[index - start:]) != whole:
        return None
    return bytes_start + len(head.encode("utf-8"))
