"""The seam where data-parallel training (torchrun: several processes, GPUs or machines)
plugs into the trainer and the session.

The trainer asks its ``DistContext`` a few things and nothing else:

* ``wrap(model)``: the module forward/backward run through (DDP wraps it);
* ``gradient_sync(module, sync)``: a context for each micro-batch's backward; DDP skips
  the all-reduce (``no_sync``) on all but the last micro-batch of a step;
* ``sum_across_ranks(x)``: the loss of a step is summed cross-entropy divided by the
  real targets of the whole step on every rank, so each rank needs the global count, and
  the step's loss is the sum of the ranks' shares;
* ``gradient_scale``: DDP *averages* gradients across ranks; the loss is already divided
  by the global target count, so each rank's backward is scaled by the world size to make
  that average the sum;
* ``max_across_ranks(values)``: every stop decision taken together (the elapsed time, a
  stop request, the signal), so a time budget that runs out on one rank first, or a signal
  to any one rank, ends all of them at the same step, and callbacks that ask whether this
  is the last step get one answer;
* ``is_main``: only rank 0 runs the callbacks that write files or print
  (``Callback.main_process_only``); evaluation runs on every rank, each on its share.

``DistContext()`` is the single-process answer to all of them; :func:`init_distributed`
gives the multi-process one when torchrun started this process. The data side of the seam
is :class:`RankShare`: every rank draws the same global stream and keeps its share, so
the batches of a step do not depend on how many processes share it.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..errors import TinyGPTError

# How long a rank waits for the others at a collective (rank 0 preparing a corpus, saving
# a checkpoint) before the run fails instead of hanging for ever.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_ranks(self) -> int:
        """How many replicas train on micro-batches of their own (tensor parallel: one)."""
        return self.world_size

    @property
    def data_rank(self) -> int:
        return self.rank

    @property
    def gradient_scale(self) -> float:
        return 1.0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def gradient_sync(self, module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sum_across_ranks(self, x):
        """``x`` (an int or a tensor) summed over every rank."""
        return x

    def max_across_ranks(self, values: list[float]) -> list[float]:
        """Each of ``values`` (numbers, flags) at its largest over every rank."""
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object made by this code, never data)."""
        return obj


@dataclass(frozen=True)
class ProcessGroup(DistContext):
    """A rank of a torch.distributed process group (gloo on CPU, NCCL on CUDA)."""

    @property
    def gradient_scale(self) -> float:
        return float(self.world_size)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        # The model's buffers are constants (rotary tables), not statistics: nothing to sync each
        # step (newer PyTorch names the switch forward_sync_buffers and deprecates the old one).
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       **no_sync)

    def gradient_sync(self, module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        if hasattr(module, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last micro-batch only
            module.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if sync else module.no_sync()

    def sum_across_ranks(self, x):
        return self._sum(x, group=None)

    def _sum(self, x, group):
        """``x`` (an int, a float or a tensor) summed over the ranks of ``group`` (None: all)."""
        if torch.is_tensor(x):
            x = x.clone()
            dist.all_reduce(x, group=group)
            return x
        t = torch.tensor([x], dtype=torch.float64 if isinstance(x, float) else torch.int64, device=self._device())
        dist.all_reduce(t, group=group)
        return type(x)(t.item())

    def max_across_ranks(self, values: list[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo CPU ones.
        nccl = dist.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


@dataclass(frozen=True)
class ModelParallelGroup(ProcessGroup):
    """Ranks that each hold a part of one model (a slice of every block: train/parallel.py;
    or a stage of blocks: train/pipeline.py). The ranks of one replica train on the same
    micro-batches: to the data and the loss, one process; the communication that joins the
    parts is inside the forward and backward. With several replicas (data x tensor), each
    takes its share of the micro-batches and a slice's gradients are summed over the
    replicas' matching slices (``replica_group``) after the step's last backward."""

    replicas: int = 1
    replica: int = 0
    replica_group: Any = None

    @property
    def data_ranks(self) -> int:
        return self.replicas

    @property
    def data_rank(self) -> int:
        return self.replica

    @property
    def gradient_scale(self) -> float:
        return 1.0  # the gradients are summed, not averaged

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    @contextlib.contextmanager
    def gradient_sync(self, module: torch.nn.Module, sync: bool) -> Iterator[None]:
        yield
        if sync and self.replicas > 1:
            for p in module.parameters():
                if p.grad is not None:  # a split weight's gradient: this rank's slice of it
                    dist.all_reduce(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad,
                                    group=self.replica_group)

    def sum_across_ranks(self, x):
        # The ranks of one replica computed the same whole sums: they are added across replicas.
        return x if self.replicas == 1 else self._sum(x, group=self.replica_group)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> DistContext:
    """This process's context: ``DistContext()`` unless torchrun started it; then the
    process group joined for the device ``device`` names (see :func:`init_distributed`)."""
    if not launched_by_torchrun():
        return DistContext()
    from ..device import resolve_device

    return init_distributed(resolve_device(device))[0]


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """The context of this process (one process: ``DistContext()``) and the device it
    computes on: under torchrun, the process group is joined (NCCL for CUDA, gloo
    otherwise) and a CUDA rank takes the GPU of its local rank."""
    if not launched_by_torchrun():
        return DistContext(), device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise TinyGPTError(f"local rank {local} has no GPU of its own ({torch.cuda.device_count()} here); "
                               "start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise TinyGPTError(f"training on several processes runs on CUDA (NCCL) or the CPU (gloo), not "
                           f"{device.type}; use --device cpu or one process")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return ProcessGroup(rank, world, local), device


class RankShare:
    """The share of a global stream of micro-batches one rank trains on: of every
    ``world_size`` consecutive micro-batches drawn, the ``rank``-th. Every rank draws the
    whole stream from the same seed (drawing a window's start is cheap; only its own windows'
    tokens are read where the stream can skip), so a step's micro-batches
    are the same on 1, 2 or 4 processes, and the stream's position, saved at the end of a
    step, is the same on every rank: a run resumes on any number of processes."""

    def __init__(self, batches: Iterator, rank: int, world_size: int):
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self):
        return self

    def __next__(self):
        mine = None
        for i in range(self.world_size):
            if i == self.rank:
                mine = next(self.batches)
            elif hasattr(self.batches, "skip"):   # the draw without the read: ranks read disjoint windows
                self.batches.skip()
            else:
                next(self.batches)
        return mine

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def tinygpt_command(nproc: int) -> list[str]:
    """The command line that starts ``tinygpt`` on ``nproc`` processes of this machine
    (torchrun's launcher, ``--standalone``: a rendezvous on a free local port); one process
    is plain ``python -m tinygpt``."""
    import sys

    if nproc == 1:
        return [sys.executable, "-m", "tinygpt"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "tinygpt"]


def launch(nproc: int, argv: list[str]) -> int:
    """``tinygpt <argv>`` on ``nproc`` processes of this machine, started by torchrun's own
    launcher (``--standalone``: a rendezvous on a free local port), with ``--nproc`` taken
    out; returns its exit status. Ctrl+C reaches every process (one process group)."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    try:
        return subprocess.run(tinygpt_command(nproc) + rest).returncode
    except KeyboardInterrupt:  # the children got it too and save; torchrun reports how they ended
        return 130
