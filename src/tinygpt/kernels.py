"""Kernels behind ``Linear``: faster CPU routes for inference, chosen per call, same math.

The model builds its linear layers from :class:`Linear`, which is ``nn.Linear`` plus the
routes below; nothing in the model's math depends on them. What decides *when* a route
pays (batched decoding, how long a generation runs) is the decoder's business
(:mod:`tinygpt.generation.decoder`). A Linear may also hold int8 or int4 weights instead of
its float ones (:mod:`tinygpt.quant`: the formats and their kernels).
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import quant
from .checkpoint import atomic_write_json
from .config import cache_dir
from .device import cpu_name, fastest
from .quant import QuantSpec, quantized_weights  # noqa: F401 (the model counts them)


class Linear(nn.Linear):
    """``nn.Linear`` with the CPU inference routes of decoding.

    Generating a token multiplies each weight matrix by one vector per row, a read of the
    whole matrix, so decoding speed is the speed of reading weights. PyTorch's ``linear``
    is not the fastest reader everywhere, and which route is differs between CPUs:

    - One row: ``linear``, ``torch.mv`` or oneDNN's prepacked (blocked) weight, whichever
      reads this weight fastest here (:func:`one_row_route`, measured once per machine for
      each shape and dtype, and kept on disk). GPT-2 small's shapes, GB/s of weights read
      (bench/one_row_routes.py): on a 2-core AMX Xeon bf16 mv 35-43 against linear 21-27;
      on a 2-core AMD EPYC (AVX-512, no AMX) packed 18-27 against linear and mv 12-17 in
      fp32, and packed 16-25 against linear 12-17 and mv 9-15 in bf16.
    - Several rows (batched decoding): the packed weights, which run a batch-8 step in
      35.5 instead of 59.7 ms (fp32) and 19.5 instead of 25 ms (bf16) on the Xeon.

    :func:`packed_weights` makes the packed copies (the decoder holds them while it
    decodes). Same parameters, same math; training (gradients on) pays one test per call."""

    _packed: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (weight, its _version, oneDNN copy)
    quant: QuantSpec | None = None              # set by quant.make_quantized: int8/int4 buffers, no weight
    fake_quant: QuantSpec | None = None         # quantization-aware training: the forward rounds the weight

    def pack(self) -> bool:
        """Make oneDNN's blocked copy of the weight for batched CPU inference; False where
        this PyTorch build cannot (the plain routes stay)."""
        if self.quant is not None:
            return False   # quantized weights have kernels of their own
        w = self.weight
        if self._packed is not None and self._packed[0] is w and self._packed[1] == w._version:
            return True
        packed = _packed_copy(w.detach())
        if packed is None:
            return False
        self._packed = (w, w._version, packed)
        return True

    def unpack(self) -> None:
        self._packed = None

    def _apply(self, fn, recurse=True):
        if self.quant is None:
            return super()._apply(fn, recurse)
        # A quantized layer's scales keep their dtype when the model's float tensors change
        # theirs (a bf16 model's int4 scales would round off their fp16); they only move.
        kept = {n: self._buffers.pop(n) for n in ("scales", "input_scale") if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for name, t in kept.items():
            self._buffers[name] = t.to(fn(t[:0]).device)
        self._kernel = None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            return quantized_forward(self, x)
        if self.fake_quant is not None:  # the weight as it will be stored, its gradient straight through
            w = quant.fake_quantize(self.weight, self.fake_quant.bits, self.fake_quant.group_size)
            return F.linear(x, w, self.bias)
        # Under autocast F.linear computes in the autocast dtype: the routes would compute in the weights'.
        if (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == self.weight.dtype
                and not torch.is_autocast_enabled("cpu") and not hasattr(self.weight, "placements")):  # DTensor: split
            route = one_row_route(self.weight) if x.numel() == x.shape[-1] else "packed"
            if route == "mv":
                y = torch.mv(self.weight, x.reshape(-1))
                if self.bias is not None:
                    y = y + self.bias
                return y.view(*x.shape[:-1], -1)
            if route == "packed" and self._packed is not None:
                w, version, packed = self._packed
                if w is self.weight and version == w._version:  # a changed weight falls back to linear
                    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _packed_copy(w: torch.Tensor) -> torch.Tensor | None:
    try:
        # The batch-size hint picks oneDNN's layout; 8 measured best for 1 to 64 rows.
        return torch.ops.mkldnn._reorder_linear_weight(w, 8)
    except (AttributeError, RuntimeError):
        return None


# How a route is timed: over up to 32 distinct copies of the weight adding up to 48 MB, more
# than a 2-core CPU's caches hold, because a decode step streams a large model's weights
# from memory (one matrix read again and again would sit in cache); a small matrix's copies
# stay in cache, as a small model's whole weights do. At least 8 MB is read per timing.
COPY_BYTES, MAX_COPIES, READ_BYTES = 48 * 2**20, 32, 8 * 2**20
# How much faster than linear a route must be to be taken. mv gives linear's bits, so 5%
# will do; packed weights round differently (within 1e-5 in fp32), so they must win by so
# much (EPYC: 1.3-2x) that timing noise does not flip the choice.
WIN_BY = {"linear": 1.0, "mv": 0.95, "packed": 0.8, "int-fp32": 1.0, "int-bf16": 0.8}
# Each choice is kept on disk, per CPU and PyTorch, so that every later run on this machine
# takes the same routes (the same bits for a seeded generation) without timing them again.
ROUTES_FILE = "kernel_routes.json"
_ROUTE: dict[tuple[torch.dtype, tuple[int, ...]], str] = {}  # (dtype, shape) -> route, in this process
_SAVED: dict[str, str] | None = None  # the file's choices, read at first use


def one_row_route(w: torch.Tensor) -> str:
    """The route that multiplies one vector by ``w`` fastest on this machine: "linear"
    (PyTorch's own), "mv" or "packed" (used while :func:`packed_weights` holds a copy).
    Timed once per machine for each (dtype, shape), alternating the routes, best of 5 (see
    ``COPY_BYTES``); a route must beat linear by ``WIN_BY``, so a tie keeps PyTorch's. All
    read the same bytes and agree to rounding (mv and linear were bitwise equal where measured)."""
    key = (w.dtype, tuple(w.shape))
    route = _ROUTE.get(key)
    if route is None:
        saved, name = _saved_routes(), route_name(w.dtype, w.shape)
        route = saved.get(name)
        if route is None:
            gbs = route_speeds(w)
            wins = [r for r in gbs if gbs["linear"] < WIN_BY[r] * gbs[r]]
            route = saved[name] = max(wins, key=gbs.get) if wins else "linear"
            _save(saved)
        _ROUTE[key] = route
    return route


def route_name(dtype: torch.dtype, shape: tuple[int, ...]) -> str:
    return f"{cpu_name()} | torch {torch.__version__} | {str(dtype).removeprefix('torch.')} | {tuple(shape)}"


def route_speeds(w: torch.Tensor) -> dict[str, float]:
    """GB/s of weights each one-row route reads ``w`` at here (see ``COPY_BYTES``): linear,
    mv, and packed where oneDNN can pack this dtype."""
    nbytes = w.numel() * w.element_size()
    n = min(MAX_COPIES, max(1, COPY_BYTES // nbytes))
    with torch.no_grad():
        copies = [w.detach().clone() for _ in range(n)]
        reads = copies * max(1, -(-READ_BYTES // (n * nbytes)))
        x = torch.ones(w.shape[1], dtype=w.dtype) / w.shape[1]
        options = {"linear": lambda: [F.linear(x[None], c) for c in reads],
                   "mv": lambda: [torch.mv(c, x) for c in reads]}
        packed = [_packed_copy(c) for c in copies] if w.device.type == "cpu" else [None]
        if all(p is not None for p in packed):
            packed_reads = packed * (len(reads) // n)
            options["packed"] = lambda: [torch.ops.mkldnn._linear_pointwise(x[None], p, None, "none", [], "")
                                         for p in packed_reads]
        _, times = fastest(options, w.device, reps=5)
    return {r: len(reads) * nbytes / t / 1e9 for r, t in times.items()}


def _saved_routes() -> dict[str, str]:
    global _SAVED
    if _SAVED is None:
        try:
            loaded = json.loads((cache_dir() / ROUTES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: measure again
            loaded = {}
        _SAVED = {k: v for k, v in loaded.items() if v in WIN_BY} if isinstance(loaded, dict) else {}
    return _SAVED


def _save(routes: dict[str, str]) -> None:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_dir() / ROUTES_FILE, routes)
    except OSError:  # a read-only cache only means timing again next time
        pass


def packs_one_row(model: nn.Module) -> bool:
    """Whether any of ``model``'s linear layers reads one row fastest from a packed copy here."""
    return any(one_row_route(m.weight) == "packed" for m in model.modules()
               if isinstance(m, Linear) and m.quant is None)


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


# ---------------------------------------------------------------------------- quantized layers

def quantized_forward(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    """A quantized layer's y = x W^T + b, in x's dtype (tinygpt.quant holds its formats).

    On CPU, PyTorch's own kernels: ``aten._weight_int8pack_mm``, and
    ``aten._weight_int4pack_mm_for_cpu`` on a copy converted once by
    ``_convert_weight_to_int4pack_for_cpu``. Their fp32 paths can be far slower than their
    bf16 ones (EPYC, AVX512-BF16, torch 2.13, GPT-2 small's head: int8 38.6 ms in fp32
    against 7.6 ms in bf16; fp32 weights 15.1 ms), so fp32 activations take the faster of
    the two, timed once per machine and shape (:func:`quantized_route`); in bf16 they round
    to 3 significant digits, finer than llama.cpp's q8_0 activations (8 bits). Elsewhere, and
    where a build lacks the kernel, the weights are dequantized for the call (correct
    everywhere, not fast). Dynamic int8 rounds each row of x to int8 and multiplies integers
    (``torch._int_mm``), as ``torch.ao.quantization.quantize_dynamic`` does."""
    spec: QuantSpec = layer.quant
    input_scale = getattr(layer, "input_scale", None)
    if input_scale is not None:
        x = x / input_scale.to(x.dtype)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    y = None
    if spec.activations == "int8":
        y = _dynamic_int8(x2, layer.qweight, layer.scales)
    elif x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        if x.dtype == torch.float32 and quantized_route(layer) == "int-bf16":
            y = _int_kernel(layer, x2.to(torch.bfloat16))
            y = y.float() if y is not None else None
        else:
            y = _int_kernel(layer, x2)
    if y is None:  # every device: the weights dequantized for this call
        y = F.linear(x2, quant.dequantize(layer.qweight, layer.scales, spec.bits).to(x.dtype))
    if layer.bias is not None:
        y = y + layer.bias.to(y.dtype)
    return y.view(*shape[:-1], -1)


_KERNELS: dict[tuple, bool] = {}   # (op, dtype) -> whether this PyTorch build runs it here (tried once)


def _works(name: str, dtype: torch.dtype, call) -> torch.Tensor | None:
    """``call()``, or None where this build lacks the kernel (then never tried again, and
    said once: the fallback is correct but slow)."""
    if _KERNELS.get((name, dtype)) is False:
        return None
    try:
        y = call()
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        _KERNELS[(name, dtype)] = False
        warnings.warn(f"this PyTorch ({torch.__version__}) has no CPU {name} kernel for {str(dtype)[6:]} here "
                      f"({str(e).splitlines()[0][:100]}); quantized layers multiply by dequantizing their weights "
                      "instead: correct, not fast", RuntimeWarning, stacklevel=2)
        return None
    _KERNELS[(name, dtype)] = True
    return y


def _int_kernel(layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
    """x (M, K) times the layer's int8 / int4 weight by PyTorch's CPU kernel, or None."""
    spec: QuantSpec = layer.quant
    if spec.bits == 8:
        scales = layer.scales.to(x.dtype)
        return _works("int8", x.dtype, lambda: torch.ops.aten._weight_int8pack_mm(x, layer.qweight, scales))
    key = (x.dtype, layer.qweight.data_ptr())
    if layer._kernel is None or layer._kernel[0] != key:
        made = _works("int4-pack", x.dtype, lambda: _int4_pack(layer, x.dtype))
        if made is None:
            return None
        layer._kernel = (key, *made)
    _, packed, scale_zeros = layer._kernel
    return _works("int4", x.dtype, lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, spec.group_size,
                                                                                        scale_zeros))


def _int4_pack(layer: Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's CPU int4 layout of the codes, and its (K/g, N, 2) scales and zeros (zero 0:
    its dequantization, (q - 8) * scale + zero, is then ours)."""
    codes = quant.unpack_int4(layer.qweight).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    s = layer.scales.to(dtype).t()                            # (K/g, N)
    return packed, torch.stack([s, torch.zeros_like(s)], dim=-1).contiguous()


def _dynamic_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) rounded per row to int8, times the int8 weight in integers, scaled back."""
    xf = x.float()
    sx = xf.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127           # (M, 1)
    xq = torch.round(xf / sx).clamp_(-127, 127).to(torch.int8)
    acc = _works("int_mm", torch.int8, lambda: torch._int_mm(xq, qweight.t()))
    if acc is None:  # integer products summed in fp32 could lose bits past 2^24: int32
        acc = xq.to(torch.int32) @ qweight.t().to(torch.int32)
    return (acc.float() * sx * scales.float()[None, :]).to(x.dtype)


def quantized_route(layer: Linear) -> str:
    """How fp32 activations meet this quantized layer fastest here: "int-fp32" (the kernel
    in fp32) or "int-bf16" (rounded to bf16 for the kernel, which must win by ``WIN_BY``).
    Timed once per machine for each format and shape, over enough copies to leave the
    caches (see ``COPY_BYTES``), and kept on disk with the other routes."""
    spec: QuantSpec = layer.quant
    shape = (layer.out_features, layer.in_features)
    key = (f"int{spec.bits}/{spec.group_size}", shape)
    route = _ROUTE.get(key)
    if route is None:
        saved, name = _saved_routes(), route_name(key[0], shape)
        route = saved.get(name)
        if route is None:
            times = _quantized_times(layer)
            wins = [r for r in times if times[r] < WIN_BY[r] * times["int-fp32"]]
            route = saved[name] = min(wins, key=times.get) if wins else "int-fp32"
            _save(saved)
        _ROUTE[key] = route
    return route


def _quantized_times(layer: Linear) -> dict[str, float]:
    """Seconds for one row through copies of the layer, each way that runs on this build."""
    nbytes = layer.qweight.numel() * layer.qweight.element_size()
    n = min(MAX_COPIES, max(1, COPY_BYTES // nbytes))
    copies = []
    for _ in range(n):
        c = Linear(layer.in_features, layer.out_features, bias=False, device="meta")
        quant.make_quantized(c, layer.quant, {"qweight": layer.qweight.clone(), "scales": layer.scales.clone()})
        copies.append(c)
    reads = copies * max(1, -(-READ_BYTES // (n * nbytes)))
    x = torch.ones(1, layer.in_features) / layer.in_features
    options = {}
    for route, dtype in (("int-fp32", torch.float32), ("int-bf16", torch.bfloat16)):
        if _int_kernel(copies[0], x.to(dtype)) is not None:
            options[route] = lambda dtype=dtype: [_int_kernel(c, x.to(dtype)) for c in reads]
    if not options:
        return {"int-fp32": 1.0}   # no kernel: the dequantizing fallback either way
    with torch.no_grad():
        _, times = fastest(options, torch.device("cpu"), reps=3)
    return times
