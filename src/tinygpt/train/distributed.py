"""The seam where data-parallel training (torchrun, several GPUs) plugs into the trainer.

The trainer asks its ``DistContext`` four things and nothing else:

* ``wrap(model)``: the module forward/backward run through (DDP wraps it);
* ``gradient_sync(module, sync)``: a context for each micro-batch's backward; DDP skips
  the all-reduce (``no_sync``) on all but the last micro-batch of a step;
* ``sum_across_ranks(n)``: the loss of a step is summed cross-entropy divided by the
  real targets of the whole step on every rank, so each rank needs the global count;
  the gradients must then be *summed* across ranks (DDP averages: scale by world_size);
* ``is_main``: only rank 0 runs the callbacks that write files or print
  (``Callback.main_process_only``); evaluation runs on every rank.

``DistContext()`` is the single-process answer to all four. The data side of the seam is
the batch iterator: a rank-sharded sampler is just another iterator of ``Batch``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def gradient_sync(self, module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sum_across_ranks(self, n: int) -> int:
        return n
