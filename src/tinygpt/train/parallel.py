"""Tensor parallelism (Megatron-LM's split of a block), on PyTorch's DTensor.

Each block's matrices are split across the ranks so that a block needs two all-reduces
forward (and two backward), and nothing else:

- attention: the packed q/k/v projection column-wise, by heads (each rank computes its own
  heads' queries, keys and values, and attends with them alone; with grouped-query
  attention, whole key/value groups), the output projection row-wise (each rank multiplies
  its heads' outputs by its rows; the partial sums are all-reduced);
- MLP: the first linear column-wise (SwiGLU: the gate's and the up projection's matching
  columns together), the second row-wise.

PyTorch's ``ColwiseParallel`` / ``RowwiseParallel`` split a weight into contiguous blocks of
rows (columns), but the packed layouts here are [all q | all k | all v] and [all gates | all
ups]. So the rows are permuted first, to [q, k, v of rank 0's heads | rank 1's | ...], and
each attention module is told its local head counts; saving gathers the whole weights and
puts the rows back (:func:`whole_rows`), loading permutes them again (:func:`split_rows`).
A checkpoint is the one-process safetensors file, whatever the layout.

The embeddings, norms and head are replicated: every rank holds them whole and computes the
same thing, so their gradients agree without communication. A vocabulary-parallel head with
loss parallel would save the head's memory; at tinygpt's sizes the blocks dominate.
"""

from __future__ import annotations

import torch

from ..errors import TinyGPTError
from ..model import GPT

LAYOUT_KEYS = ("dp", "tp", "pp")


def parse_layout(text: str) -> dict[str, int]:
    """"tp=2", "pp=2" or "dp=2,tp=2" -> {"dp": 2, "tp": 2, "pp": 1} (each left out: 1)."""
    layout = {k: 1 for k in LAYOUT_KEYS}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, _, value = part.partition("=")
        if key not in LAYOUT_KEYS or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{part!r} is not one of dp=N, tp=N, pp=N (e.g. tp=2, pp=2 or dp=2,tp=2)")
        layout[key] = int(value)
    return layout


_MESH: dict[tuple[int, int], object] = {}  # (dp, tp) -> this process's 2-D DeviceMesh


def prepare_mesh(parallel: str, world_size: int, device_type: str) -> None:
    """Every rank at start-up, before rank 0 builds the run alone: a data x tensor layout's
    2-D mesh (its sub-groups are made by every rank together, which a build on rank 0
    alone would wait on forever). Anything else needs none; a bad layout is left for the
    trainer to refuse, once, on rank 0."""
    try:
        layout = parse_layout(parallel)
    except ValueError:
        return
    dp, tp = layout["dp"], layout["tp"]
    if dp > 1 and tp > 1 and dp * tp == world_size and (dp, tp) not in _MESH:
        from torch.distributed.device_mesh import init_device_mesh

        _MESH[dp, tp] = init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"))


def mesh_2d(dp: int, tp: int):
    """The data x tensor mesh :func:`prepare_mesh` made (rank = replica * tp + slice)."""
    if (dp, tp) not in _MESH:
        raise TinyGPTError(f"--parallel dp={dp},tp={tp} is decided when torchrun starts the processes: give it "
                           "on the command line (for a resumed run too)")
    return _MESH[dp, tp]


def row_order(model: GPT, tp: int) -> dict[str, torch.Tensor]:
    """{parameter name: the row order that makes rank r's share rows [r*n/tp, (r+1)*n/tp)}."""
    orders = {}
    for i, block in enumerate(model.transformer.h):
        a = block.attn
        if a.kv_heads % tp:
            raise TinyGPTError(f"block {i} has {a.kv_heads} key/value heads, which {tp} ranks cannot share "
                               f"evenly; use a --parallel tp that divides {a.kv_heads}")
        q, kv = torch.arange(a.q_width).view(tp, -1), torch.arange(a.kv_width).view(tp, -1)
        order = torch.cat([torch.cat([q[r], a.q_width + kv[r], a.q_width + a.kv_width + kv[r]]) for r in range(tp)])
        orders[f"transformer.h.{i}.attn.c_attn.weight"] = order
        hidden = block.mlp.c_proj.in_features
        if hidden % tp:
            raise TinyGPTError(f"block {i}'s MLP is {hidden} wide, which {tp} ranks cannot share evenly")
        if block.mlp.swiglu:
            h = torch.arange(hidden).view(tp, -1)
            orders[f"transformer.h.{i}.mlp.c_fc.weight"] = torch.cat([torch.cat([h[r], hidden + h[r]])
                                                                      for r in range(tp)])
    for name in list(orders):
        if name.replace(".weight", ".bias") in dict(model.named_parameters()):
            orders[name.replace(".weight", ".bias")] = orders[name]
    return orders


def split_rows(tensors: dict[str, torch.Tensor], orders: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors (a checkpoint's) in the tensor-parallel row order."""
    return {k: v[orders[k]] if k in orders else v for k, v in tensors.items()}


def whole_rows(tensors: dict[str, torch.Tensor], orders: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`split_rows`: gathered tensors back in the model's own row order."""
    return {k: v[orders[k].argsort()] if k in orders else v for k, v in tensors.items()}


@torch.no_grad()
def tensor_parallel(model: GPT, tp: int, mesh=None) -> dict[str, torch.Tensor]:
    """Split ``model``'s blocks across the ``tp`` ranks of ``mesh`` (default: the whole
    process group), in place; returns the row orders that saving and loading undo and redo."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    orders = row_order(model, tp)
    params = dict(model.named_parameters())
    for name, order in orders.items():
        params[name].copy_(params[name][order])
    mesh = mesh if mesh is not None else init_device_mesh(next(model.parameters()).device.type, (tp,))
    for block in model.transformer.h:
        a = block.attn  # each rank attends with its own heads
        a.n_head, a.kv_heads, a.q_width, a.kv_width = a.n_head // tp, a.kv_heads // tp, a.q_width // tp, \
            a.kv_width // tp
        parallelize_module(block, mesh, {"attn.c_attn": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
                                         "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()},
                           src_data_rank=None)  # every rank built the same weights: each keeps its slice
                                                # (no scatter, which rank 0 would wait on alone: session.py)
    return orders


def is_split(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over split (DTensor) and replicated gradients
    together, which PyTorch's own refuses to mix: each kind's norm, then the whole one."""
    grads = [p.grad for p in params if p.grad is not None]
    kinds = [[g for g in grads if is_split(g)], [g for g in grads if not is_split(g)]]
    norms = []
    for kind in filter(None, kinds):
        norm = torch.nn.utils.get_total_norm(kind)
        norms.append(norm.full_tensor() if is_split(norm) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0).item()  # as PyTorch's: 1e-6 keeps a zero norm finite
    for g in grads:
        g.mul_(coef)
    return total
