"""Pruning: zero the least important weights of every linear layer in the blocks.

Two ways to say which weights matter least (``--criterion``):

- ``magnitude``: the smallest |w| of each layer, what ``torch.nn.utils.prune.l1_unstructured``
  removes (the same mask; tested).
- ``wanda`` (Sun et al. 2023, "pruning by weights and activations"): |w_ij| times the norm of
  input j over a calibration text, compared within each output row. A small weight on a
  loud input can matter more than a larger one on a quiet input; no retraining is needed.

Unstructured zeros keep the tensors' shapes (a zero costs what any weight costs to a dense
kernel), so the file and the speed stay the same. ``--structured`` removes whole attention
heads or MLP neurons instead, so the tensors shrink (see :mod:`.structured`). Either way the
head and the embeddings are left whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import quant
from ..config import like, opt
from ..errors import TinyGPTError
from ..model import GPT
from ..run import RunDir
from ..source import open_source
from .quantize import QuantizeOptions, calibration_ids, read_inputs
from .structured import UNITS, prune_structure

CRITERIA = ("magnitude", "wanda")


@dataclass
class PruneOptions:
    amount: float = opt(0.2, "the fraction of each linear layer's weights (in the blocks) to set to zero")
    criterion: str = opt("magnitude", "which weights go: magnitude (the smallest |w| of each layer) or wanda (|w| "
                                      "times its input's norm over a calibration text, within each output row)",
                         choices=CRITERIA)
    structured: str | None = opt(None, "remove whole units instead of single weights, so the tensors shrink: "
                                       "heads (attention heads, with their key/value head's group), neurons (MLP "
                                       "hidden units; the kept width rounds to a multiple of 32) or both; --amount "
                                       "of each block's units", choices=UNITS)
    recover_steps: int = opt(0, "after pruning, fine-tune every weight for this many steps on the training text "
                                "(--data, else the run's own) to win back what pruning cost; the pruned run "
                                "before it is kept as <out>-unrecovered")
    distill_weight: float = opt(0.0, "the share of the training loss that is the KL divergence from a teacher's "
                                     "next-token distribution (0: cross-entropy alone, 1: the teacher's alone); "
                                     "finetune's teacher is --teacher, prune's recovery the unpruned model; "
                                     "validation stays cross-entropy")
    data: str | None = like(QuantizeOptions, "data")
    calibration_tokens: int = like(QuantizeOptions, "calibration_tokens")

    def __post_init__(self) -> None:
        if not 0 < self.amount < 1:
            raise TinyGPTError(f"--amount is a fraction between 0 and 1 (0.2: a fifth), got {self.amount}")
        if self.recover_steps < 0:
            raise TinyGPTError(f"--recover-steps must be at least 0, got {self.recover_steps}")
        if not 0 <= self.distill_weight <= 1:
            raise TinyGPTError(f"--distill-weight is a share between 0 and 1, got {self.distill_weight}")
        if self.distill_weight and not self.recover_steps:
            raise TinyGPTError("--distill-weight weighs the teacher in the recovery fine-tune; add --recover-steps N")
        if self.calibration_tokens < 1:
            raise TinyGPTError(f"--calibration-tokens must be at least 1, got {self.calibration_tokens}")


def magnitude_mask(w: torch.Tensor, amount: float) -> torch.Tensor:
    """True where a weight stays: all but the round(amount * numel) smallest |w| of the tensor."""
    k = round(amount * w.numel())
    keep = torch.ones(w.numel(), dtype=torch.bool)
    if k:
        keep[torch.topk(w.detach().abs().reshape(-1), k, largest=False).indices] = False
    return keep.view_as(w)


def wanda_mask(w: torch.Tensor, input_norms: torch.Tensor, amount: float) -> torch.Tensor:
    """True where a weight stays: in each output row, all but the round(amount * K) lowest
    |w_ij| * ||x_j||."""
    score = w.detach().abs() * input_norms[None, :]
    k = round(amount * w.shape[1])
    keep = torch.ones_like(score, dtype=torch.bool)
    if k:
        keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
    return keep


@torch.no_grad()
def prune_model(model: GPT, opts: PruneOptions, calibration: torch.Tensor | None = None) -> dict[str, float]:
    """Zero ``model``'s least important block weights in place; {layer: fraction zeroed}."""
    if any(getattr(m, "quant", None) is not None for m in model.modules()):
        raise TinyGPTError("this model is quantized; prune its float run (then quantize the pruned run)")
    layers = [(n, m) for n, m in quant.linears(model, head=False)]
    norms: dict[str, torch.Tensor] = {}
    if opts.criterion == "wanda":
        if calibration is None:
            raise TinyGPTError("wanda needs a calibration text")
        squares = {n: torch.zeros(m.in_features) for n, m in layers}
        read_inputs(model, layers, calibration, lambda name, x: squares[name].add_(x.pow(2).sum(0)))
        norms = {n: s.sqrt() for n, s in squares.items()}
    zeroed = {}
    for name, layer in layers:
        w = layer.weight
        keep = wanda_mask(w, norms[name], opts.amount) if name in norms else magnitude_mask(w, opts.amount)
        w.mul_(keep.to(w.dtype))
        zeroed[name] = 1 - keep.float().mean().item()
    return zeroed


def prune_run(source: str | Path, out: str | Path | None, opts: PruneOptions, *, checkpoint: str = "best",
              force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Write ``source`` pruned as ``opts`` say, as a run at ``out`` (default: beside it,
    ``<name>-pruned``); returns ``out``. Its config.json records how (``pruned``)."""
    name = Path(str(source).rstrip("/")).name
    out = Path(out) if out is not None else Path(str(source).rstrip("/")).with_name(f"{name}-pruned")
    RunDir.check_new(out, force=force)
    opened = open_source(source, checkpoint)
    model = opened.model.float().eval()
    ids = None
    if opts.criterion == "wanda":
        ids = calibration_ids(source, opened.tokenizer, QuantizeOptions(
            data=opts.data, calibration_tokens=opts.calibration_tokens, rounding="gptq-lite"),
            model.config.block_size, log)
    record = {"from": str(Path(source).resolve()) if Path(source).exists() else str(source),
              "checkpoint": str(opened.path), "amount": opts.amount, "criterion": opts.criterion,
              "calibration": None if ids is None else {"data": opts.data or "the run's training text",
                                                       "tokens": ids.numel()}}
    if opts.structured:
        if any(getattr(m, "quant", None) is not None for m in model.modules()):
            raise TinyGPTError("this model is quantized; prune its float run (then quantize the pruned run)")
        before = model.num_params()
        model, removed = prune_structure(model, opts.structured, opts.amount, ids)
        record.update(structured=opts.structured, removed=removed, params=[before, model.num_params()])
        if log is not None:
            gone = ", ".join(f"{sum(map(len, r))} {kind}" for kind, r in removed.items())
            log(f"removed {gone} by {opts.criterion}: {before:,} -> {model.num_params():,} parameters")
    else:
        zeroed = prune_model(model, opts, ids)
        if log is not None:
            log(f"pruned {len(zeroed)} layers by {opts.criterion}: {sum(zeroed.values()) / len(zeroed):.1%} of their "
                "weights are zero")
    RunDir.derive(out, opened.config, model, opened.tokenizer, opened.info, {"pruned": record}, force=force)
    return out
