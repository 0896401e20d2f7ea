"""Where a model comes from, and building it from there.

A model source is one of: a run directory (``tinygpt train`` or a full fine-tune: it
holds the weights), a parameter-efficient fine-tune (it holds an adapter, and adapter.json
names its base: the base is opened, checked against the content hash recorded when the
fine-tune began, and the adapter attached unmerged), a Hugging Face model directory (GPT-2
or Llama architecture), or a hub name such as ``gpt2``. Everything that takes a model
(generation, evaluation, analysis, export, fine-tuning) opens it here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote

import torch

from . import adapters
from .checkpoint import load_weights, model_from_tensors, weight_tensors
from .config import opt
from .errors import TinyGPTError
from .interop import hf_dir
from .model import GPT
from .run import CheckpointInfo, RunDir
from .tokenizer import Tokenizer


@dataclass
class ModelSource:
    """The model a command works on, declared once for every command that takes one."""
    model: str = opt("", "a run directory, an adapter fine-tune's run, a Hugging Face model directory or a hub "
                         "name such as gpt2", positional=True, metavar="MODEL")
    checkpoint: str = opt("best", "which of a run's weights: best (lowest validation loss), last, or a "
                                  ".safetensors path")


@dataclass
class Opened:
    """A model (fp32 or the file's dtype, eval mode, CPU, weights memory-mapped where the
    file allows) with its tokenizer and what describes it."""
    model: GPT
    tokenizer: Tokenizer
    config: dict                  # the run's config.json, or {"hf": the HF config}
    path: Path                    # the weights file (or HF directory) read
    info: CheckpointInfo = field(default_factory=CheckpointInfo)
    run: RunDir | None = None


def is_hub_or_hf(source: str | Path) -> bool:
    """Whether ``source`` is a Hugging Face directory or a hub name. A name whose folder is
    here (``runs/nope`` beside runs/) is a local path mistyped, not ``owner/name``: it is
    opened as a run, whose error says there is no such directory."""
    parent = Path(str(source)).parent
    local = parent != Path(".") and parent.exists()
    return hf_dir.is_hf_dir(source) or (hf_dir.looks_like_hub_name(str(source)) and not local)


def check_vocabulary(tokenizer: Tokenizer, vocab_size: int, source: str | Path) -> None:
    """Refuse a tokenizer with ids the model has no rows for (its text could not be read).
    Fewer ids than rows is normal (padded checkpoints): ids past the tokenizer are never drawn."""
    if tokenizer.vocab_size > vocab_size:
        raise TinyGPTError(f"{source}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                           f"{vocab_size}; they do not belong together: put the model's own tokenizer beside it")


def open_source(source: str | Path, checkpoint: str = "best") -> Opened:
    """The model at ``source`` opened, with its tokenizer and what describes it; ``checkpoint``
    (runs only) is 'best', 'last' or a .safetensors path."""
    if is_hub_or_hf(source):
        directory = Path(source) if hf_dir.is_hf_dir(source) else hf_dir.download(str(source))
        cfg, sd, raw = hf_dir.load_model_parts(directory)
        tokenizer = hf_dir.load_tokenizer(directory, raw, cfg.vocab_size)
        check_vocabulary(tokenizer, cfg.vocab_size, directory)
        model = model_from_tensors(lambda: GPT(cfg), sd, directory)
        return Opened(model.eval(), tokenizer, {"hf": raw}, directory)
    run = RunDir.open(source)
    tokenizer = run.load_tokenizer()
    if not run.has_adapter():
        check_vocabulary(tokenizer, run.model_config().vocab_size, run.path)
        model, info, path = run.load_model(checkpoint)
        return Opened(model, tokenizer, run.read_config(), path, info, run)
    cfg, base = run.read_adapter_config()
    opened = open_base(base, f"the base of {run.path}")
    with torch.random.fork_rng(devices=[]):  # the adapter's init is overwritten: leave the global generator be
        adapters.attach(opened.model, cfg)
    path = run.weights_path(checkpoint)
    adapters.load_adapter_tensors(opened.model, load_weights(path), str(path))
    info = run.checkpoint_info(checkpoint)
    return Opened(opened.model.eval(), tokenizer, run.read_config(), path, info, run)


def open_base(base: dict, what: str) -> Opened:
    """The model a fine-tune's ``base`` record (:func:`base_record`) names, checked to be the
    same weights as when the record was made."""
    try:
        opened = open_source(base["source"], base.get("checkpoint", "best"))
    except TinyGPTError as e:
        raise TinyGPTError(f"{what} ({base['source']}) cannot be opened: {e}") from None
    if base.get("sha256") and weights_digest(opened.model) != base["sha256"]:
        raise TinyGPTError(f"{what}, {base['source']}, holds other weights than when the fine-tune began (their "
                           "hash differs); restore that base, or fine-tune the base as it is now")
    return opened


def base_record(source: str | Path, checkpoint: str, opened: Opened) -> dict:
    """How a fine-tune names its base: where it is (a local path made absolute, a hub name as
    given), which checkpoint, and the content hash of its weights."""
    if opened.run is not None and opened.run.has_adapter():
        raise TinyGPTError(f"{source} is itself an adapter fine-tune; fold it into full weights first "
                           f"(tinygpt merge {quote(str(source))} --out DIR) and fine-tune DIR")
    where = str(Path(source).resolve()) if Path(source).exists() else str(source)
    record = {"source": where, "sha256": weights_digest(opened.model)}
    if opened.run is not None:
        record["checkpoint"] = checkpoint if checkpoint in ("best", "last") else str(Path(checkpoint).resolve())
    return record


def weights_digest(model: GPT) -> str:
    """sha256 over the model's weights (names, dtypes, shapes and bytes, in name order): the
    same for the same weights whatever file format held them."""
    h = hashlib.sha256()
    tensors = weight_tensors(model)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
