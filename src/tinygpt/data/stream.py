"""Training on a Hugging Face dataset streamed as it is read: ``--data hf:owner/name[:config][:split]``.

The text is never stored: documents come from ``datasets``' streaming reader, are tokenized
as they arrive (the end-of-text id between two documents, as between two files), and are cut
into consecutive windows like ``--sampling sequential``. What a resume needs is the read
position, kept in the trainer state as a global counter: the reader's own state
(``IterableDataset.state_dict()``, which reopens the right file at the right row, not the
stream's start) before the document the next window starts in, the token offset in that
document, and the documents read so far. Every rank reads the whole stream and keeps its share
of the windows (distributed.RankShare), so the position is the same on every rank and a run
resumes exactly on any number of processes.

What is stored, once, in ``cache_dir()/data/<key>/``: the tokenizer (a BPE is trained on the
stream's first ``TOKENIZER_SAMPLE_BYTES``) and a bounded validation set, the first
``VAL_TOKENS`` tokens of the dataset's validation split (or test split) when it has one.

A local folder of parquet / JSONL / CSV files is read the same way (``hf:./folder``; split
names from file names such as ``train-00000.parquet`` and ``validation.jsonl``), which is how
the tests exercise this path offline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..config import cache_dir
from ..errors import TinyGPTError
from ..tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .batches import Batch
from .cache import TokenData, staged, token_dtype

PREFIX = "hf:"
SPLITS = ("train", "validation", "test")
VAL_TOKENS = 1 << 20                  # the held-out set read from a validation split, at most
TOKENIZER_SAMPLE_BYTES = 32 << 20     # text a BPE (--tokenizer bpe) is trained on
DOCS_PER_READ = 32                    # documents tokenized per encode_batch call


def is_stream(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass(frozen=True)
class StreamSpec:
    """What ``hf:path[:config][:split]`` names. One part after the path is the split when it
    is train, validation or test, else the config."""
    path: str
    config: str | None = None
    split: str = "train"

    @classmethod
    def parse(cls, spec: str) -> "StreamSpec":
        parts = spec[len(PREFIX):].split(":")
        if not parts[0] or len(parts) > 3 or not all(parts):
            raise TinyGPTError(f"--data {spec!r}: write a streamed dataset as hf:owner/name[:config][:split], "
                               "e.g. hf:roneneldan/TinyStories or hf:./my_parquet_folder:train")
        if len(parts) == 2:
            return cls(parts[0], None, parts[1]) if parts[1] in SPLITS else cls(parts[0], parts[1])
        return cls(*parts)

    def open(self, split: str | None = None):
        """The streaming IterableDataset of ``split`` (default: this spec's)."""
        datasets = _datasets()
        path = os.path.expanduser(self.path)
        try:
            return datasets.load_dataset(path, self.config, split=split or self.split, streaming=True)
        except Exception as e:   # datasets raises many kinds (FileNotFound, ValueError, hub errors)
            where = (f"config {self.config}, " if self.config else "") + f"split {split or self.split}"
            raise TinyGPTError(f"cannot stream {self.path!r} ({where}): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; check the name, the "
                               "split, and the network (or give a local folder as hf:./folder)") from None

    def splits(self) -> list[str]:
        try:
            return list(_datasets().get_dataset_split_names(os.path.expanduser(self.path), self.config))
        except Exception:   # offline hub, unknown layout: no validation split then
            return []


def _datasets():
    try:
        import datasets
    except ImportError:
        raise TinyGPTError("streaming a dataset needs the datasets package: pip install 'tinygpt[stream]'") from None
    datasets.logging.set_verbosity_error()   # its progress chatter would drown the run's log
    return datasets


def _texts(dataset, field: str, spec: str) -> Iterator[str]:
    for example in dataset:
        text = example.get(field)
        if not isinstance(text, str):
            have = ", ".join(k for k, v in example.items() if isinstance(v, str)) or "none"
            raise TinyGPTError(f"{spec}: its examples have no text field {field!r} (text fields: {have}); "
                               "name it with --text-field")
        yield text


class StreamSource:
    """A streamed dataset with its tokenizer: makes the training stream of windows."""

    def __init__(self, spec: str, field: str, tokenizer: Tokenizer, dtype: np.dtype):
        self.spec, self.field, self.tokenizer, self.dtype = spec, field, tokenizer, dtype
        self.parsed = StreamSpec.parse(spec)

    def open(self):
        """A reader of its own (each evaluation opens one; after the first, datasets resolves
        the files from its cache in milliseconds)."""
        return self.parsed.open()

    def batches(self, batch_size: int, block_size: int) -> "StreamBatches":
        return StreamBatches(self, batch_size, block_size)


class StreamBatches:
    """Batches of consecutive windows of the streamed tokens: window i starts block_size tokens
    after window i - 1 (the same windows as ``Batches(mode="sequential")`` on these tokens).
    At the stream's end it starts again from its first document (a new epoch)."""

    def __init__(self, source: StreamSource, batch_size: int, block_size: int):
        if batch_size < 1 or block_size < 1:
            raise TinyGPTError(f"batch size and block size must be at least 1, got {batch_size} and {block_size}")
        self.source, self.batch_size, self.block_size = source, batch_size, block_size
        self.dataset = source.open()
        self._fresh = copy.deepcopy(self.dataset.state_dict())   # the reader's state at the start
        self.epoch = 0
        self.docs_read = 0        # documents read in this process (a resume does not read the skipped ones)
        self._restart(None, 0, 0)

    def _restart(self, reader_state: dict | None, doc_index: int, offset: int) -> None:
        """Read on from ``reader_state`` (None: the stream's start), whose next document is the
        stream's ``doc_index``-th; the next window starts ``offset`` tokens into it."""
        self.dataset.load_state_dict(copy.deepcopy(reader_state or self._fresh))
        self._texts = _texts(self.dataset, self.source.field, self.source.spec)
        # The documents the next windows are cut from: (reader state before it, its index, its ids).
        self._docs: list[tuple[dict, int, np.ndarray]] = []
        self._next_index, self._offset = doc_index, offset
        self._cut_this_epoch = doc_index > 0 or offset > 0

    def _read(self) -> bool:
        """Tokenize the next few documents into the buffer; False at the end of the stream."""
        texts, states = [], []
        for _ in range(DOCS_PER_READ):
            state = self.dataset.state_dict()
            text = next(self._texts, None)
            if text is None:
                break
            texts.append(text)
            states.append(state)
        if not texts:
            return False
        eot = self.source.tokenizer.eot_id
        for state, ids in zip(states, self.source.tokenizer.encode_batch(texts)):
            # A document's tokens begin with the separator from the one before (none before an
            # epoch's first: each epoch is the same token sequence, as Batches' passes are).
            lead = [eot] if eot is not None and self._next_index else []
            self._docs.append((state, self._next_index, np.asarray(lead + list(ids), dtype=np.int64)))
            self._next_index += 1
        self.docs_read += len(texts)
        return True

    def _buffered(self) -> int:
        return sum(len(ids) for _, _, ids in self._docs) - self._offset

    def _window(self) -> np.ndarray:
        T = self.block_size
        while self._buffered() < T + 1:
            if not self._read():
                # The stream's end: the last partial window is dropped, a new epoch begins at its start.
                if not self._cut_this_epoch:
                    raise TinyGPTError(f"{self.source.spec} holds fewer than one block ({T} + 1 tokens) of text in "
                                       f"field {self.source.field!r}; use a smaller --block-size or more text")
                self.epoch += 1
                self._restart(None, 0, 0)
        pieces, need, start = [], T + 1, self._offset
        for _, _, ids in self._docs:   # only the documents this window reaches
            pieces.append(ids[start:start + need])
            need -= len(pieces[-1])
            start = 0
            if need == 0:
                break
        self._offset += T
        while self._docs and self._offset >= len(self._docs[0][2]):
            self._offset -= len(self._docs[0][2])
            self._docs.pop(0)
        self._cut_this_epoch = True
        return np.concatenate(pieces)

    def __iter__(self) -> "StreamBatches":
        return self

    def __next__(self) -> Batch:
        windows = np.stack([self._window() for _ in range(self.batch_size)])   # (B, T+1)
        return Batch(torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy()))

    def state_dict(self) -> dict:
        """The read position: the reader's state before the document the next window starts in,
        that document's index in the stream (the global counter), and the offset in it."""
        if self._docs:
            state, index, _ = self._docs[0]
        else:
            state, index = self.dataset.state_dict(), self._next_index
        return {"mode": "stream", "spec": self.source.spec, "reader": json.dumps(state), "document": index,
                "offset": self._offset, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != "stream":
            raise TinyGPTError("this run's saved data position is not a stream's; resume it with the --data it "
                               "trained on")
        self.epoch = int(state["epoch"])
        self._restart(json.loads(state["reader"]), int(state["document"]), int(state["offset"]))


def prepare_stream(cfg: Any, tokenizer: Tokenizer | None = None, log: Callable[[str], None] = print):
    """The TokenData of a streamed dataset: its tokenizer and validation tokens, made once into
    the cache, and the source its training windows stream from."""
    spec = StreamSpec.parse(cfg.data)
    if tokenizer is None and cfg.tokenizer == "char":
        raise TinyGPTError("the char tokenizer must see every character before training, which a stream cannot "
                           "promise; use --tokenizer gpt2 or bpe, or tinygpt prepare the text first")
    settings = {"stream": cfg.data, "field": cfg.text_field, "tokenizer": cfg.tokenizer,
                "given": tokenizer.fingerprint() if tokenizer is not None else None,
                "bpe_vocab_size": cfg.bpe_vocab_size if cfg.tokenizer == "bpe" else None, "version": 1}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    directory = cache_dir() / "data" / f"stream-{key[:16]}"
    if not (directory / "meta.json").is_file():
        _build_stream_cache(cfg, spec, settings, key, directory, tokenizer, log)
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    own = load_tokenizer(directory)
    dtype = token_dtype(own.vocab_size)
    val = np.fromfile(directory / "val.bin", dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
    log(f"data: streaming {cfg.data} (field {cfg.text_field!r}), tokenized as it is read; "
        + (f"{len(val):,} validation tokens from its {meta['val_split']} split" if len(val)
           else "no validation split, so no validation loss") + f"; vocab {own.vocab_size:,} ({own.kind})")
    source = StreamSource(cfg.data, cfg.text_field, own, dtype)
    return TokenData(directory, own, meta, np.empty(0, dtype=dtype), val, stream=source)


def _build_stream_cache(cfg: Any, spec: StreamSpec, settings: dict, key: str, directory: Path,
                        tokenizer: Tokenizer | None, log: Callable[[str], None]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    with staged(directory, f".tmp-stream-{key[:16]}-") as staging:
        # Read the first example now: a wrong name, split or field fails here, before anything is stored.
        next(_texts(spec.open(), cfg.text_field, cfg.data), None)
        if tokenizer is None:
            def sample() -> Iterator[str]:
                total = 0
                for text in _texts(spec.open(), cfg.text_field, cfg.data):
                    yield text
                    total += len(text)
                    if total >= TOKENIZER_SAMPLE_BYTES:
                        return

            if cfg.tokenizer == "bpe":
                log(f"data: training the bpe tokenizer on the first {TOKENIZER_SAMPLE_BYTES >> 20} MB of {cfg.data}")
            tokenizer = build_tokenizer(cfg.tokenizer, sample, vocab_size=cfg.bpe_vocab_size)
        dtype = token_dtype(tokenizer.vocab_size)
        val_split = next((s for s in ("validation", "test") if s != spec.split and s in spec.splits()), None)
        ids, n_bytes = [], 0
        if val_split is not None:
            eot, n = tokenizer.eot_id, 0
            for text in _texts(spec.open(val_split), cfg.text_field, cfg.data):
                doc = ([eot] if eot is not None and ids else []) + tokenizer.encode(text)
                ids.extend(doc)
                n_bytes += len(text.encode("utf-8"))
                n += len(doc)
                if n >= VAL_TOKENS:   # whole documents: the byte count stays exact
                    break
        np.asarray(ids, dtype=dtype).tofile(staging / "val.bin")
        tokenizer.save(staging)
        meta = {"key": key, "source": cfg.data, "stream": settings, "dtype": dtype.name,
                "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.to_dict(), "val_split": val_split,
                "n_tokens": len(ids), "val_start": 0, "val_bytes": n_bytes, "train_bytes": 0}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
