"""What one rank holds while it trains, by kind: weights, gradients, optimizer state and the
activations a forward saves for its backward. These are what the parallel layouts share out
differently (DDP: all whole; ZeRO-1 shards the optimizer state, ZeRO-2 the gradients too,
ZeRO-3 the weights too), so the trainer records them for its first step (``mem_*_mb`` in
metrics.jsonl) and ``tinygpt bench train`` lays the layouts side by side.

Counted from the tensors themselves (a sharded tensor's local shard), so the figures are
the same on every device and allocator. Weights FSDP2 gathers for a block's forward and
keeps for its backward (ZeRO-2 and 3) are saved tensors like any other, so they show in the
activations column: the price sharding pays for the memory it saves elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

MB = 2**20


def local_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` this rank holds (a DTensor's local shard)."""
    return (t.to_local() if hasattr(t, "to_local") else t).nbytes


@contextlib.contextmanager
def saved_activations(model: torch.nn.Module) -> Iterator[dict[int, int]]:
    """{storage: bytes} of the tensors the forwards inside save for their backward (autograd's
    saved-tensor hooks; the model's own weights left out, each storage counted once)."""
    params = {_storage(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _storage(t)
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def _storage(t: torch.Tensor) -> int:
    return (t.to_local() if hasattr(t, "to_local") else t).untyped_storage().data_ptr()


def rank_memory(model: torch.nn.Module, optimizer, activations: dict[int, int]) -> dict[str, float]:
    """This rank's weights, gradients (call between the backward and ``zero_grad``), optimizer
    state (after a step: AdamW makes it lazily) and ``activations`` (:func:`saved_activations`), in MB."""
    params = list(model.parameters())
    own = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: this rank's own optimizer
    state = sum(local_bytes(t) for s in own.state.values() for t in s.values() if torch.is_tensor(t))
    return {"mem_weights_mb": sum(local_bytes(p) for p in params) / MB,
            "mem_grads_mb": sum(local_bytes(p.grad) for p in params if p.grad is not None) / MB,
            "mem_optimizer_mb": state / MB,
            "mem_activations_mb": sum(activations.values()) / MB}
