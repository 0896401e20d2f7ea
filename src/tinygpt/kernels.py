"""Kernels behind ``Linear``: faster CPU routes for inference, chosen per call, same math.

The model builds its linear layers from :class:`Linear`, which is ``nn.Linear`` plus the
routes below; nothing in the model's math depends on them. What decides *when* a route
pays (batched decoding, how long a generation runs) is the decoder's business
(:mod:`tinygpt.generation.decoder`); quantized weights (int8/int4) will live here too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import fastest


class Linear(nn.Linear):
    """``nn.Linear`` with the CPU inference routes of decoding.

    Generating a token multiplies each weight matrix by one vector per row, a read of the
    whole matrix, so decoding speed is the speed of reading weights. Two routes beat
    PyTorch's ``linear`` there (GPT-2 small, 2 AVX-512 cores, measured in the decode loop):

    - One row of half-precision weights: on a 2-core AMX Xeon ``linear`` reached about half
      the bandwidth of the matrix-vector kernel (a 15.5 ms step became 12.1 ms of mv; on
      another, bf16 GPT-2 shapes read at 21-27 GB/s by linear and 35-43 by mv, bitwise
      equal); on an AMD EPYC ``mv`` was the slower (18 against 29-31 GB/s). So the route
      is measured, once per process for each weight shape and dtype, on the weight itself
      (:func:`mv_pays`).
    - Several rows (batched decoding): oneDNN's prepacked (blocked) weights, the layout
      ``torch.compile``'s CPU freezing uses, run a batch-8 step in 35.5 instead of 59.7 ms
      (fp32) and 19.5 instead of 25 ms (bf16). :func:`packed_weights` makes them; one
      row keeps the plain routes, which were as fast or faster (fp32: 23 vs 27 ms).

    Same parameters, same math; training (gradients on) pays one test per call."""

    _packed: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (weight, its _version, oneDNN copy)

    def pack(self) -> bool:
        """Make oneDNN's blocked copy of the weight for batched CPU inference; False where
        this PyTorch build cannot (the plain routes stay)."""
        w = self.weight
        if self._packed is not None and self._packed[0] is w and self._packed[1] == w._version:
            return True
        try:
            # The batch-size hint picks oneDNN's layout; 8 measured best for 2 to 64 rows.
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8)
        except (AttributeError, RuntimeError):
            return False
        self._packed = (w, w._version, packed)
        return True

    def unpack(self) -> None:
        self._packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == self.weight.dtype:
            if x.numel() == x.shape[-1]:
                if x.dtype in (torch.bfloat16, torch.float16) and mv_pays(self.weight):
                    y = torch.mv(self.weight, x.reshape(-1))
                    if self.bias is not None:
                        y = y + self.bias
                    return y.view(*x.shape[:-1], -1)
            elif self._packed is not None:
                w, version, packed = self._packed
                if w is self.weight and version == w._version:  # a changed weight falls back to linear
                    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


_MV_PAYS: dict[tuple[torch.dtype, tuple[int, ...]], bool] = {}  # (dtype, weight shape) -> measured


def mv_pays(w: torch.Tensor) -> bool:
    """Whether ``torch.mv`` multiplies one vector by ``w`` clearly faster than ``F.linear``
    on this machine: timed the first time a (dtype, shape) is seen, alternating the two,
    best of 5 each; mv must win by 5% (so a tie keeps PyTorch's own route). Both read the
    same bytes and were bitwise equal where measured; the choice is only speed."""
    key = (w.dtype, tuple(w.shape))
    if key not in _MV_PAYS:
        x = torch.ones(w.shape[1], dtype=w.dtype) / w.shape[1]
        repeat = range(max(1, 4_000_000 // w.numel()))  # about 8 MB read per timing: long enough to time
        _, times = fastest({"mv": lambda: [torch.mv(w, x) for _ in repeat],
                            "linear": lambda: [F.linear(x[None], w) for _ in repeat]}, w.device, reps=5)
        _MV_PAYS[key] = times["mv"] < 0.95 * times["linear"]
    return _MV_PAYS[key]


@contextmanager
def packed_weights(model: nn.Module) -> Iterator[bool]:
    """Inside, batched CPU inference uses oneDNN-packed copies of every :class:`Linear`'s
    weight (see there). Copies made here are dropped on leaving, as they cost a second
    copy of those weights in memory; a caller that serves many batches (a server) enters
    once around them all, and inner entries reuse its copies. Yields whether packing was
    possible on this build."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    mine = [m for m in linears if m._packed is None]
    try:
        yield all([m.pack() for m in linears])
    finally:
        for m in mine:
            m.unpack()
