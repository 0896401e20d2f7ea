"""Text -> memory-mapped token file -> reproducible (x, y) training batches.

``prepare_data`` tokenizes a corpus once into ``cache_dir()/data/<key>/``, the key being
a SHA-256 over the settings that change the tokens and over every file's name and bytes.
Corpora may be bigger than RAM, so text is streamed: read in ~``CHUNK_BYTES`` pieces cut
at line ends, decoded incrementally, encoded a batch of pieces at a time (the tokenizer
backends run ``encode_batch`` in parallel) and appended to ``tokens.bin``. A cache dir is
built under a temporary name and renamed into place, so it only ever appears complete.

``Batches`` draws (x, y) windows from the read-only memmap; its state fits in a
checkpoint, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import bisect
import codecs
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .config import cache_dir, check_choices, opt
from .corpora import BUILTIN_CORPORA, corpus_files
from .errors import TinyGPTError
from .tokenizer import TOKENIZER_KINDS, Tokenizer, build_tokenizer, load_tokenizer

FORMAT_VERSION = 1          # bump when the layout or meaning of a cache dir changes
CHUNK_BYTES = 1 << 20       # bytes read per step; text is cut at the last newline in it
ENCODE_BATCH_CHUNKS = 16    # chunks handed to one encode_batch call (the parallelism)
SAMPLING_MODES = ("random", "sequential")


@dataclass
class DataConfig:
    data: str = opt("shakespeare", "text to train on: a file, a folder, a glob, or a built-in corpus (shakespeare)")
    tokenizer: str = opt("char", "how text becomes tokens: characters, GPT-2's BPE, or a BPE trained on your text",
                         choices=TOKENIZER_KINDS)
    bpe_vocab_size: int = opt(8192, "vocabulary size when training a BPE tokenizer (--tokenizer bpe)")
    val_fraction: float = opt(0.1, "fraction of tokens held out for validation (the end of the corpus)")
    encoding: str = opt("utf-8", "text encoding of the input files, e.g. latin-1")
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


def check_encoding(encoding: str) -> str:
    """The canonical codec name for ``encoding``; TinyGPTError if Python has no such text encoding."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        info = None
    # rot13/base64 etc. are known to codecs but are not bytes -> text encodings.
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise TinyGPTError(f"unknown text encoding {encoding!r} for --encoding; use e.g. utf-8, latin-1 or cp1252")
    return info.name


# ---------------------------------------------------------------------------- finding files

def resolve_files(spec: str, encoding: str | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """The text files named by ``spec``: a built-in corpus, a file, a folder (recursive) or a glob.

    Folders skip hidden files and hidden folders (``.git`` and the like). ``encoding``,
    when given, is checked first so a typo fails before anything is read or downloaded.
    """
    if encoding is not None:
        check_encoding(encoding)
    if spec in BUILTIN_CORPORA:
        return corpus_files(spec, log)
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune: os.walk won't descend
            found += [Path(root, n) for n in names if not n.startswith(".") and os.path.isfile(os.path.join(root, n))]
        files = sorted(found, key=lambda p: p.relative_to(path).as_posix())
    else:
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
    if not files:
        raise TinyGPTError(f"no text found at {spec!r}: give a file, a folder, a glob like 'books/*.txt', "
                           f"or a built-in corpus ({', '.join(BUILTIN_CORPORA)})")
    return files


def _relative_names(files: list[Path]) -> list[str]:
    """Each file's path relative to the files' common folder, so moving a corpus keeps its cache key."""
    absolute = [p.resolve() for p in files]
    try:
        root = Path(os.path.commonpath([p.parent for p in absolute]))
    except ValueError:  # e.g. files on different Windows drives: no common root
        return [p.as_posix() for p in absolute]
    return [p.relative_to(root).as_posix() for p in absolute]


def _display(path: Path) -> str:
    """``path`` as the user would recognise it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another Windows drive
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise TinyGPTError(f"cannot read {_display(path)}: {e.strerror or e}; check the file's permissions") from None


def _iter_chunks(path: Path, encoding: str) -> Iterator[str]:
    """Decoded text of ``path`` in pieces of about CHUNK_BYTES, each cut after a newline when there is one.

    Decoding is incremental, so a multi-byte character split across two reads is fine;
    an undecodable byte raises TinyGPTError with its exact offset in the file.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0      # bytes of the file handed to the decoder so far
    carry = ""      # decoded text after the last cut, waiting for its line to end
    with _open(path) as handle:
        while True:
            raw = handle.read(CHUNK_BYTES)
            # Bytes the decoder kept back from the previous read (a partial character):
            # the error offset below is relative to those bytes plus ``raw``.
            held = len(decoder.getstate()[0])
            try:
                carry += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                where = offset - held + e.start
                fix = ("convert it to UTF-8 or pass --encoding latin-1 (or the file's real encoding)"
                       if codecs.lookup(encoding).name == "utf-8"
                       else "pass --encoding with the file's real encoding (e.g. utf-8 or latin-1)")
                raise TinyGPTError(f"{_display(path)} is not valid {encoding} at byte {where}; {fix}") from None
            offset += len(raw)
            if not raw:
                if carry:
                    yield carry
                return
            # Cut at a line end so the tokenizer never sees a word split in two. A line
            # longer than a few chunks (minified text) is cut at a space, or anywhere,
            # to bound memory.
            cut = carry.rfind("\n") + 1
            if not cut and len(carry) > 4 * CHUNK_BYTES:
                cut = carry.rfind(" ") + 1 or len(carry)
            if cut:
                yield carry[:cut]
                carry = carry[cut:]


# ---------------------------------------------------------------------------- token cache

def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding every id below ``vocab_size``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass
class TokenData:
    """A tokenized corpus: the tokenizer plus read-only 1-D memmap views of the two splits."""
    directory: Path
    tokenizer: Tokenizer
    meta: dict
    train: np.ndarray   # (val_start,) uint16/uint32 memmap view
    val: np.ndarray     # (n_tokens - val_start,)


def prepare_data(cfg: DataConfig, *, log: Callable[[str], None] = print) -> TokenData:
    """Tokenize ``cfg.data`` into ``cache_dir()/data/<key>/`` (once) and map it into memory."""
    files = resolve_files(cfg.data, cfg.encoding, log)
    names = _relative_names(files)
    key, n_raw = _cache_key(cfg, files, names)
    directory = cache_dir() / "data" / key[:16]
    if not (directory / "meta.json").is_file():
        if n_raw == 0:
            raise TinyGPTError(f"no text in {cfg.data!r}: the corpus is empty")
        directory.parent.mkdir(parents=True, exist_ok=True)
        log(f"data: tokenizing {len(files)} file(s), {n_raw / 1e6:.1f} MB, with the {cfg.tokenizer} tokenizer")
        started = time.perf_counter()
        _build(cfg, files, names, key, n_raw, directory, log)
        log(f"data: tokenized in {time.perf_counter() - started:.1f}s into {directory}")
    data = _load(directory)
    m = data.meta
    log(f"data: {m['n_tokens']:,} tokens ({len(data.train):,} train, {len(data.val):,} val), "
        f"vocab {m['vocab_size']:,} ({m['tokenizer']['kind']})")
    return data


def _cache_key(cfg: DataConfig, files: list[Path], names: list[str]) -> tuple[str, int]:
    """(sha256 hex over settings + each file's name and bytes, total bytes read)."""
    settings = {"version": FORMAT_VERSION, "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction,
                "encoding": check_encoding(cfg.encoding)}
    if cfg.tokenizer == "bpe":
        settings["bpe_vocab_size"] = cfg.bpe_vocab_size
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    total = 0
    for path, name in zip(files, names):
        # Hashing each file separately and feeding (name, digest) pairs keeps the key
        # unambiguous: no file content can masquerade as a file boundary.
        content = hashlib.sha256()
        with _open(path) as f:
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
           directory: Path, log: Callable[[str], None]) -> None:
    """Tokenize into a temp dir beside ``directory``, then rename it into place."""
    _remove_stale_builds(directory.parent, key)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-{os.getpid()}-", dir=directory.parent))
    try:
        def texts() -> Iterator[str]:
            return (chunk for path in files for chunk in _iter_chunks(path, cfg.encoding))

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
        train_bytes = _bytes_before(tokenizer, staging / "tokens.bin", dtype, marks, val_start)
        if train_bytes is not None:
            meta.update(train_bytes=train_bytes, val_bytes=n_bytes - train_bytes)
        tokenizer.save(staging)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
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

    ``marks`` holds (tokens so far, text bytes so far) after every encoded chunk, so the
    byte count of the text before any token can later be found without re-reading files.
    """
    eot = tokenizer.eot_id
    n_tokens = n_bytes = 0
    marks: list[tuple[int, int]] = []
    batch: list[tuple[str, bool]] = []      # (chunk text, is it the start of a new file)
    last_report = time.perf_counter()

    with open(out_path, "wb") as out:
        def flush() -> None:
            nonlocal n_tokens, n_bytes
            encoded = tokenizer.encode_batch([text for text, _ in batch])
            for (text, starts_file), ids in zip(batch, encoded):
                if starts_file and eot is not None and n_tokens:
                    np.array([eot], dtype=dtype).tofile(out)   # document separator: 1 token, 0 bytes
                    n_tokens += 1
                    marks.append((n_tokens, n_bytes))
                np.asarray(ids, dtype=dtype).tofile(out)
                n_tokens += len(ids)
                n_bytes += len(text.encode("utf-8"))
                marks.append((n_tokens, n_bytes))
            batch.clear()

        for path in files:
            starts_file = True
            for chunk in _iter_chunks(path, encoding):
                batch.append((chunk, starts_file))
                starts_file = False
                if len(batch) == ENCODE_BATCH_CHUNKS:
                    flush()
                    if time.perf_counter() - last_report > 10:  # big corpora: show it is alive
                        last_report = time.perf_counter()
                        log(f"data:   {n_bytes / 1e6:,.0f} of ~{n_raw / 1e6:,.0f} MB, {n_tokens:,} tokens")
        if batch:
            flush()
    return n_tokens, n_bytes, marks


def _bytes_before(tokenizer: Tokenizer, token_file: Path, dtype: np.dtype,
                  marks: list[tuple[int, int]], index: int) -> int | None:
    """UTF-8 bytes of the text encoded by tokens[:index], or None when not exactly knowable.

    Exact at chunk boundaries. Inside a chunk, the chunk's tokens are decoded in two
    halves; if the halves rejoin into the chunk, the cut lies between characters and the
    first half's byte length is exact. Byte-level tokenizers can cut inside a multi-byte
    character, and there is no exact answer in characters then.
    """
    if index == 0:
        return 0
    i = bisect.bisect_left([end for end, _ in marks], index)   # the chunk holding token index - 1
    end, bytes_end = marks[i]
    start, bytes_start = marks[i - 1] if i else (0, 0)
    if index == end:
        return bytes_end
    ids = np.fromfile(token_file, dtype=dtype, count=end - start, offset=start * dtype.itemsize).tolist()
    whole, head = tokenizer.decode(ids), tokenizer.decode(ids[: index - start])
    if len(whole.encode("utf-8")) != bytes_end - bytes_start or head + tokenizer.decode(ids[index - start:]) != whole:
        return None
    return bytes_start + len(head.encode("utf-8"))


# ---------------------------------------------------------------------------- batches

class Batches:
    """Reproducible stream of (x, y) int64 tensors, each (batch_size, block_size); y is x shifted by one.

    ``mode="random"`` draws batch_size windows at uniformly random starts (a private
    torch.Generator seeded with ``seed``); ``mode="sequential"`` walks through the tokens
    in order, batch_size consecutive non-overlapping windows per batch, wrapping to the
    start (a new epoch) when fewer than block_size + 1 tokens remain.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, *, mode: str = "random",
                 seed: int = 0, split: str = "train") -> None:
        if mode not in SAMPLING_MODES:
            raise TinyGPTError(f"unknown sampling mode {mode!r}; choose one of: {', '.join(SAMPLING_MODES)}")
        if batch_size < 1 or block_size < 1:
            raise TinyGPTError(f"batch size and block size must be at least 1, got {batch_size} and {block_size}")
        if len(tokens) < block_size + 1:
            fix = "a smaller --block-size, a larger --val-fraction" if split == "val" else "a smaller --block-size"
            raise TinyGPTError(f"the {split} split has {len(tokens)} tokens, fewer than one block "
                               f"(block_size {block_size} + 1); use {fix} or more text")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.mode, self.seed, self.split = mode, seed, split
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0   # sequential: token index where the next window starts
        self.epoch = 0      # sequential: completed passes over the tokens
        self._offsets = np.arange(block_size + 1)   # (T+1,) window-relative indices

    def _sequential_starts(self) -> np.ndarray:
        starts = np.empty(self.batch_size, dtype=np.int64)
        for b in range(self.batch_size):
            if self.position + self.block_size + 1 > len(self.tokens):
                self.position, self.epoch = 0, self.epoch + 1
            starts[b] = self.position
            self.position += self.block_size
        return starts

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y): int64 CPU tensors of shape (batch_size, block_size)."""
        if self.mode == "random":
            high = len(self.tokens) - self.block_size   # last start whose window (T+1) fits, plus one
            starts = torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
        else:
            starts = self._sequential_starts()
        windows = self.tokens[starts[:, None] + self._offsets]   # (B, T+1) uint16/uint32, one gather
        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1], dtype=np.int64))
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:], dtype=np.int64))
        return x, y

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly; safe for torch.load(weights_only=True)."""
        return {"mode": self.mode, "seed": self.seed, "split": self.split, "n_tokens": len(self.tokens),
                "rng": self.generator.get_state(), "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``. Both modes' state is restored, so switching --sampling on resume works."""
        self.generator.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        # A position past the end (the tokens changed) simply wraps on the next draw.
        self.position = int(state["position"])
