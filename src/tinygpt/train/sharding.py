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


def full_optimizer_state(model: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state on rank 0, keyed as ``Optimizer.state_dict()`` keys it (by
    parameter index). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    return by_index(state) if state else {}


def load_full_state(model: GPT, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                    optimizer_state: dict) -> None:
    """Each rank takes its slice of whole ``weights`` and an index-keyed ``optimizer_state``
    (every rank has read them from the checkpoint)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options())
    set_optimizer_state_dict(model, optimizer, by_name(optimizer_state, model, optimizer), options=_options())


def by_index(state: dict) -> dict:
    """An optimizer state keyed by parameter name (the full state dict's way) keyed by
    index instead, numbered in the order of the param groups as ``Optimizer.state_dict()`` does."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {index[name]: s for name, s in state["state"].items()}, "param_groups": groups}


def by_name(state: dict, model: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """The inverse of :func:`by_index`, for ``optimizer`` over ``model``'s parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = []
    for group in state["param_groups"]:
        groups.append({**group, "params": [order[i] for i in group["params"]]})
    return {"state": {order[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}
