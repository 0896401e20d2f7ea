"""Folding a LoRA fine-tune into plain weights: a run every tool reads without peft or the base."""

from __future__ import annotations

from pathlib import Path

from .. import adapters
from ..checkpoint import model_from_tensors
from ..errors import TinyGPTError
from ..model import GPT
from ..run import RunDir
from ..source import open_source


def merge_run(source: str | Path, out: str | Path | None = None, *, checkpoint: str = "best",
              force: bool = False) -> Path:
    """Write ``source`` (a LoRA fine-tune) with W + (alpha / r) B A in place of each adapted
    weight as a new run at ``out`` (default: beside it, ``<run>-merged``); returns ``out``.
    Its config.json keeps the fine-tune's record under ``merged``."""
    src = Path(source)
    if not RunDir.is_run(src) or not RunDir(src).has_adapter():
        raise TinyGPTError(f"{source} is not an adapter fine-tune (no adapter.json); tinygpt merge folds a "
                           "--method lora run into full weights")
    out = Path(out) if out is not None else src.with_name(src.name + "-merged")
    RunDir.check_new(out, force=force)
    opened = open_source(src, checkpoint)
    config, tensors = adapters.merge(opened.model)
    model = model_from_tensors(lambda: GPT(config), tensors, f"the merge of {src}")
    saved = dict(opened.config)
    record = {"from": str(src.resolve()), "checkpoint": str(opened.path), "base": saved.pop("base", None),
              "finetune": saved.pop("finetune", None)}
    RunDir.derive(out, saved, model, opened.tokenizer, opened.info, {"merged": record}, force=force)
    return out
