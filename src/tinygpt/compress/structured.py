"""Structured pruning: remove whole attention heads or MLP neurons, so the tensors shrink.

Unstructured zeros cost a dense kernel what any weight costs; a removed head or neuron is a
row or column fewer in every matrix that touches it, so the file is smaller and decoding reads
fewer bytes. The model config says each block's widths (``layer_heads``, ``layer_hidden``).

The unit of a head is its key/value head with the query heads that share it (one head in a
model without grouped-query attention): a query head cannot go without its group's keys
changing shape for the others. Each block loses the same fraction of its units, so no block
is emptied and the blocks stay alike (an HF Llama export can still hold uniform widths).

Importance (``--criterion``), of each unit's contribution to the residual stream:

- ``magnitude``: from the weights alone, ||the unit's output columns|| times ||its input
  rows|| (what a unit can pass from input to output at most).
- ``wanda``: over a calibration text, sum over the unit's output-projection input channels
  j of ||x_j|| * ||W_out[:, j]|| (Wanda's |w| * ||x|| gathered per unit): a unit whose
  activations are quiet on real text matters little, whatever its weights.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import TinyGPTError
from ..model import GPT
from .quantize import read_inputs

UNITS = ("heads", "neurons", "both")
MULTIPLE = 32  # kept MLP widths round to this where the width is a multiple of it: int4 groups and fast GEMM shapes


def unit_columns(model: GPT, layer: int, units: str) -> list[torch.Tensor]:
    """The output projection's input columns of each unit of block ``layer``: one index tensor
    per head group (``heads``) or per neuron (``neurons``)."""
    block = model.transformer.h[layer]
    if units == "neurons":
        return list(torch.arange(block.mlp.c_proj.in_features)[:, None])
    a = block.attn
    per = a.n_head // a.kv_heads * a.head_size  # query columns of one group
    return [torch.arange(g * per, (g + 1) * per) for g in range(a.kv_heads)]


def input_rows(model: GPT, layer: int, units: str, idx: list[int]) -> torch.Tensor:
    """The rows of the input matrix (c_fc, or c_attn's packed q/k/v) that units ``idx`` own,
    in the matrix's own layout: SwiGLU's gates then ups; all queries, then keys, then values."""
    block = model.transformer.h[layer]

    def span(width: int, offset: int = 0) -> torch.Tensor:  # rows [u * width, (u + 1) * width) of each unit
        return torch.cat([torch.arange(u * width, (u + 1) * width) for u in idx]) + offset

    if units == "neurons":
        H = block.mlp.c_proj.in_features
        return torch.cat([span(1), span(1, H)]) if block.mlp.swiglu else span(1)
    a = block.attn
    return torch.cat([span(a.n_head // a.kv_heads * a.head_size), span(a.head_size, a.q_width),
                      span(a.head_size, a.q_width + a.kv_width)])


def _modules(model: GPT, layer: int, units: str):
    block = model.transformer.h[layer]
    return (block.mlp.c_fc, block.mlp.c_proj) if units == "neurons" else (block.attn.c_attn, block.attn.c_proj)


@torch.no_grad()
def scores(model: GPT, units: str, input_norms: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Each block's unit importances (units,), fp32. ``input_norms``: {layer: ||x_j|| over
    the calibration text of the output projection's inputs (K,)}; None: by magnitude."""
    out = []
    for i in range(len(model.transformer.h)):
        fc, proj = _modules(model, i, units)
        col_norms = proj.weight.float().norm(dim=0)  # (K,): ||W_out[:, j]||
        s = []
        for u, cols in enumerate(unit_columns(model, i, units)):
            if input_norms is not None:
                s.append((col_norms[cols] * input_norms[i][cols]).sum())
            else:
                s.append(col_norms[cols].norm() * fc.weight.float()[input_rows(model, i, units, [u])].norm())
        out.append(torch.stack(s))
    return out


def kept(n: int, amount: float, units: str) -> int:
    """How many of a block's ``n`` units stay when ``amount`` of them go (at least one)."""
    keep = n - round(amount * n)
    if units == "neurons" and n % MULTIPLE == 0 and n > MULTIPLE:
        keep = max(MULTIPLE, round(keep / MULTIPLE) * MULTIPLE)
    return max(1, keep)


@torch.no_grad()
def shrink(model: GPT, units: str, keep: list[torch.Tensor]) -> GPT:
    """A new model without the units not in ``keep`` (per block: the kept unit indices, in
    order). Every other weight is copied as it is."""
    c = model.config
    state = {k: v.clone() for k, v in model.state_dict().items()}
    widths = []
    for i, idx in enumerate(keep):
        idx = idx.sort().values.tolist()
        fc, proj = _modules(model, i, units)
        prefix = f"transformer.h.{i}." + ("mlp." if units == "neurons" else "attn.")
        rows = input_rows(model, i, units, idx)
        cols = torch.cat([unit_columns(model, i, units)[u] for u in idx])
        if units == "heads":
            a = model.transformer.h[i].attn
            widths.append(len(idx) * (a.n_head // a.kv_heads))
            if model.value_embeds is not None:  # a value embedding per key/value head
                name = f"value_embeds.{i}.weight"
                state[name] = state[name][:, torch.cat([torch.arange(u * a.head_size, (u + 1) * a.head_size)
                                                        for u in idx])]
        else:
            widths.append(len(idx))
        fc_name = prefix + ("c_fc" if units == "neurons" else "c_attn")
        state[fc_name + ".weight"] = fc.weight[rows].clone()
        if fc.bias is not None:
            state[fc_name + ".bias"] = fc.bias[rows].clone()
        state[prefix + "c_proj.weight"] = proj.weight[:, cols].clone()
    new = replace(c, **({"layer_hidden": widths} if units == "neurons" else {"layer_heads": widths}))
    with torch.device("meta"):
        pruned = GPT(new)
    pruned.load_state_dict(state, assign=True)
    pruned.tie_weights()
    pruned.init_buffers()
    return pruned.to(next(model.parameters()).dtype)


def input_norms(model: GPT, units: str, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """{block: ||x_j|| (K,)} of each block's output projection inputs over ``ids`` (B, T)."""
    layers = [(i, _modules(model, i, units)[1]) for i in range(len(model.transformer.h))]
    squares = {i: torch.zeros(m.in_features) for i, m in layers}
    read_inputs(model, layers, ids, lambda i, x: squares[i].add_(x.pow(2).sum(0)))
    return {i: s.sqrt() for i, s in squares.items()}


def prune_structure(model: GPT, units: str, amount: float, ids: torch.Tensor | None = None) -> tuple[GPT, dict]:
    """``model`` without the least important ``amount`` of each block's heads and/or neurons
    (by Wanda's scores over ``ids`` (B, T) where given, else by magnitude); and what went,
    {"heads": [per block: the removed units' indices], "neurons": [...]}."""
    if model.config.moe_experts:  # one width per block cannot describe experts pruned apart
        raise TinyGPTError("structured pruning of a mixture-of-experts model is not supported; prune it unstructured "
                           "(tinygpt prune without --structured) or quantize it")
    removed: dict[str, list[list[int]]] = {}
    for kind in (("heads", "neurons") if units == "both" else (units,)):
        # Scored on the model as it is now: with heads gone, the MLPs read a changed stream.
        s = scores(model, kind, None if ids is None else input_norms(model, kind, ids))
        n = [len(x) for x in s]
        if all(kept(k, amount, kind) == k for k in n):
            raise TinyGPTError(f"--amount {amount:g} removes no {kind}: each block has {n[0]} (heads count in "
                               "key/value groups); raise --amount")
        keep = [x.topk(kept(len(x), amount, kind)).indices for x in s]
        removed[kind] = [sorted(set(range(len(x))) - set(k.tolist())) for x, k in zip(s, keep)]
        model = shrink(model, kind, keep)
    return model, removed
