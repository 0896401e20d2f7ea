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
import weakref
from typing import Iterator

import torch

MB = 2**20


def local_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` this rank holds (a DTensor's local shard)."""
    return (t.to_local() if hasattr(t, "to_local") else t).nbytes


class SavedActivations(dict):
    """{storage: bytes} of every tensor saved for a backward, and ``peak``: the most bytes
    held at once (a saved tensor is let go when its backward has run; micro-batches one
    after another, or a pipeline schedule's interleaving, hold less than their sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._holders: dict[int, int] = {}  # storage -> saved tensors still holding it

    def hold(self, ptr: int, nbytes: int) -> None:
        if not self._holders.get(ptr):
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self._holders[ptr] = self._holders.get(ptr, 0) + 1
        self[ptr] = nbytes

    def release(self, ptr: int, nbytes: int) -> None:
        self._holders[ptr] -= 1
        if not self._holders[ptr]:
            self.live -= nbytes


def _storage(t: torch.Tensor) -> int:
    return (t.to_local() if hasattr(t, "to_local") else t).untyped_storage().data_ptr()


@contextlib.contextmanager
def saved_activations(model: torch.nn.Module) -> Iterator[SavedActivations]:
    """The tensors the forwards inside save for their backward (autograd's saved-tensor
    hooks; the model's own weights left out, each storage counted once)."""
    params = {_storage(p) for p in model.parameters()}
    saved = SavedActivations()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _storage(t)
        if ptr not in params:
            nbytes = t.untyped_storage().nbytes()
            saved.hold(ptr, nbytes)
            # Freed once the graph lets go of it (after its backward), unless held elsewhere too.
            weakref.finalize(t, saved.release, ptr, nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def rank_memory(model: torch.nn.Module, optimizer, activations: SavedActivations | None) -> dict[str, float]:
    """This rank's weights, gradients (call between the backward and ``zero_grad``), optimizer
    state (after a step: AdamW makes it lazily) and ``activations`` at their peak
    (:func:`saved_activations`), in MB."""
    params = list(model.parameters())
    own = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: this rank's own optimizer
    state = sum(local_bytes(t) for s in own.state.values() for t in s.values() if torch.is_tensor(t))
    held = {"mem_weights_mb": sum(local_bytes(p) for p in params) / MB,
            "mem_grads_mb": sum(local_bytes(p.grad) for p in params if p.grad is not None) / MB,
            "mem_optimizer_mb": state / MB}
    if activations is not None:  # None: not looked into (a compiled forward)
        held["mem_activations_mb"] = activations.peak / MB
    return held
