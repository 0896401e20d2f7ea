"""Sharded data parallel (FSDP2, ``--shard``): every rank keeps a 1/N slice of each weight,
its gradient and its optimizer state, and gathers a block's weights just for its forward
and backward. For models whose weights and AdamW state do not fit one device.

PyTorch's ``fully_shard`` does the work, on each block and then on the model (the
embeddings, head and final norm), with a mixed-precision policy for bf16/fp16 runs
(compute in that dtype, gradients reduced in fp32). Checkpoints stay what a one-process
run writes: rank 0 gathers the whole weights into one safetensors file and the whole
optimizer state into trainer.pt (``torch.distributed.checkpoint.state_dict``'s full state
dicts, re-keyed by parameter index as ``Optimizer.state_dict()`` keys them), so a sharded
run resumes sharded or not, on any number of processes. Gathering to one host is right
for the models tinygpt trains; past that size the next step is ``torch.distributed.checkpoint``
writing each rank's shards.
"""

from __future__ import annotations

import inspect
import warnings

import torch

from ..model import GPT
from .optim import adamw_groups
from .parallel import split_rows, whole_rows


def shard_model(model: GPT, dtype: torch.dtype, world_size: int, reshard: bool = True) -> None:
    """``fully_shard`` each block of ``model``, then the model, over all ``world_size`` ranks (in place).
    ``reshard``: free each block's gathered weights after its forward and gather them again for
    its backward (ZeRO-3); off, they stay gathered from forward to backward (ZeRO-2)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32
              else MixedPrecisionPolicy())
    # The logits are returned as a slice of the padded head's output (a view); nothing
    # modifies them in place, which is what FSDP2's warning about views is for.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)


def zero_redundancy(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """ZeRO-1: ``optimizer``'s parameter groups under PyTorch's ZeroRedundancyOptimizer, which
    gives each rank the state of a share of the parameters, steps that share and broadcasts it.
    (Its ``state_dict`` after ``consolidate_state_dict(to=0)`` is the whole optimizer's, on rank 0.)"""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    takes = inspect.signature(type(optimizer)).parameters  # AdamW's defaults hold a flag its constructor refuses
    defaults = {k: v for k, v in optimizer.defaults.items() if k in takes}
    return ZeroRedundancyOptimizer([dict(g) for g in optimizer.param_groups], optimizer_class=type(optimizer),
                                   **defaults)


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The whole weights, on the CPU, on rank 0 (empty elsewhere). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: GPT, optimizer: torch.optim.Optimizer, row_orders: dict | None = None) -> dict:
    """The whole optimizer state on rank 0, keyed as one process's ``Optimizer.state_dict()``
    keys it (by parameter index, in :func:`adamw_groups`' groups); a tensor-parallel model's
    rows put back in order (``row_orders``: train/parallel.py). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not state:
        return {}
    return by_index(regroup(_rows(state, row_orders or {}, whole=True), adamw_groups(model)))


def load_full_state(model: GPT, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                    optimizer_state: dict, row_orders: dict | None = None) -> None:
    """Each rank takes its slice of whole ``weights`` and an index-keyed ``optimizer_state``
    (every rank has read them from the checkpoint)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    orders = row_orders or {}
    set_model_state_dict(model, split_rows(weights, orders), options=_options())
    state = regroup(by_name(optimizer_state, adamw_groups(model)), group_names(model, optimizer))
    set_optimizer_state_dict(model, optimizer, _rows(state, orders, whole=False), options=_options())


def group_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The names of ``optimizer``'s parameters in ``model``, group by group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def regroup(state: dict, groups: list[list[str]]) -> dict:
    """A name-keyed optimizer state with its param groups laid out as ``groups`` (lists of
    names), each with the settings of the group that held its first parameter. A layout that
    splits a group (tensor parallel keeps split and whole parameters apart: optim.py) saves
    and loads in the one-process shape."""
    settings = {name: g for g in state["param_groups"] for name in g["params"]}
    return {"state": state["state"], "param_groups": [{**settings[names[0]], "params": names}
                                                      for names in groups if names]}


def _rows(state: dict, orders: dict, whole: bool) -> dict:
    """A name-keyed optimizer state with each tensor-parallel parameter's moments in the model's
    row order (``whole``) or in the split order."""
    change = whole_rows if whole else split_rows
    for name, s in state["state"].items():
        if name in orders:
            state["state"][name] = {k: change({name: v}, orders)[name] if torch.is_tensor(v) and v.dim() else v
                                    for k, v in s.items()}
    return state


def by_index(state: dict) -> dict:
    """An optimizer state keyed by parameter name (the full state dict's way) keyed by
    index instead, numbered in the order of the param groups as ``Optimizer.state_dict()`` does."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {index[name]: s for name, s in state["state"].items()}, "param_groups": groups}


def by_name(state: dict, groups: list[list[str]]) -> dict:
    """The inverse of :func:`by_index` for a state saved in ``groups`` (lists of names)."""
    order = [name for names in groups for name in names]
    param_groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[int(i)]: s for i, s in state["state"].items()}, "param_groups": param_groups}
