"""What a fine-tune trains on, in the base's tokenizer: plain text (a file, folder or corpus,
tokenized and cached as for training) or instruction data (a .jsonl of examples, templated,
loss-masked to the responses, packed)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..data import Batch, Batches, DataConfig, prepare_data
from ..data import instruct as ins
from ..data.files import iter_chunks, resolve_files
from ..errors import TinyGPTError
from ..tokenizer import Tokenizer, some_chars
from .config import FinetuneConfig


@dataclass
class FinetuneData:
    """A fine-tune's two splits as batch streams."""
    kind: str                     # "text" or "instructions"
    tokenizer: Tokenizer
    key: str                      # identifies the data and how it was prepared (resume checks it)
    epoch_tokens: int             # token slots one pass over the training split fills
    description: str
    make: Callable[[str, int, int, int], Iterator[Batch]]  # (split, batch_size, block_size, seed) -> batches
    val_rows: int | None = None   # instructions: rows one pass over the held-out examples fills
    val_examples: list = field(default_factory=list)

    def batches(self, split: str, batch_size: int, block_size: int, seed: int) -> Iterator[Batch]:
        return self.make(split, batch_size, block_size, seed)

    @property
    def has_val(self) -> bool:
        return self.val_rows != 0


def prepare(data: DataConfig, ft: FinetuneConfig, tokenizer: Tokenizer, block_size: int, seed: int,
            log: Callable[[str], None] = print) -> FinetuneData:
    """``data.data`` in ``tokenizer``: a .jsonl is instruction data, anything else text."""
    if data.data.startswith("hf:"):
        raise TinyGPTError("fine-tuning reads a file, a folder or a prepared corpus, not a stream yet; write the "
                           "dataset's text to files (or tinygpt prepare them) and give --data with those")
    if ins.is_instruction_data(data.data):
        return _instructions(data, ft, tokenizer, block_size, seed, log)
    return _text(data, tokenizer, log)


def _text(data: DataConfig, tokenizer: Tokenizer, log: Callable[[str], None]) -> FinetuneData:
    if tokenizer.kind == "char":
        check_characters(data, tokenizer, log)
    td = prepare_data(data, tokenizer=tokenizer, log=log)

    def make(split: str, batch_size: int, block_size: int, seed: int) -> Iterator[Batch]:
        tokens = td.train if split == "train" else td.val
        return Batches(tokens, batch_size, block_size, mode=data.sampling if split == "train" else "random",
                       seed=seed, split=split)

    return FinetuneData("text", tokenizer, td.meta["key"], len(td.train),
                        f"{len(td.train):,} train / {len(td.val):,} val tokens of text", make,
                        val_rows=None if len(td.val) else 0)


def check_characters(data: DataConfig, tokenizer: Tokenizer, log: Callable[[str], None]) -> None:
    """A char-level base cannot read characters it never saw: name them all at once."""
    known, seen = set(tokenizer.chars), set()
    for path in resolve_files(data.data, data.encoding, log):
        for chunk in iter_chunks(path, data.encoding):
            seen.update(chunk)
    unknown = sorted(seen - known)
    if unknown:
        raise TinyGPTError(f"--data {data.data} has {some_chars(unknown)} that the base model's char tokenizer "
                           "never saw; remove or replace them in the text, or fine-tune a base model with a BPE "
                           "tokenizer such as gpt2")


def _instructions(data: DataConfig, ft: FinetuneConfig, tokenizer: Tokenizer, block_size: int, seed: int,
                  log: Callable[[str], None]) -> FinetuneData:
    path = data.data
    examples = ins.read_examples(path)
    train, val = ins.split_examples(examples, data.val_fraction, seed)
    encoded = {s: ins.encode_examples(e, tokenizer, ft.template, source=path) for s, e in (("train", train),
                                                                                        ("val", val))}
    key = hashlib.sha256(json.dumps({"file": _file_digest(path), "template": ft.template, "pack": ft.pack,
                                     "val_fraction": data.val_fraction, "seed": seed,
                                     "tokenizer": tokenizer.fingerprint()}, sort_keys=True).encode()).hexdigest()

    def make(split: str, batch_size: int, block_size: int, seed: int) -> Iterator[Batch]:
        return ins.ExampleBatches(encoded[split], batch_size, block_size, pack=ft.pack, seed=seed,
                                  shuffle=split == "train", split=split)

    first = make("train", 1, block_size, seed)
    if first.n_truncated:
        log(f"notice: {first.n_truncated} of {len(train)} training examples are longer than the context "
            f"({block_size} tokens) and were cut to it")
    if first.n_dropped:
        log(f"notice: {first.n_dropped} training examples have no response token within the context and are "
            "left out")
    val_rows = make("val", 1, block_size, seed).rows_per_epoch if val else 0
    n_trained = sum(sum(t[1:]) for _, t in encoded["train"])
    description = (f"{len(train):,} train / {len(val):,} val examples ({ft.template} template, "
                   f"{'packed' if ft.pack else 'padded'}; {n_trained:,} response tokens per epoch)")
    return FinetuneData("instructions", tokenizer, key, first.tokens_per_epoch, description, make, val_rows, val)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
