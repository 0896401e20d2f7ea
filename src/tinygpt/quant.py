"""Quantized weights behind ``Linear``: int8 per output channel and int4 in groups, symmetric.

Decoding one row reads every weight once per token, so its speed is the speed of reading
weights: int8 is a quarter of fp32's bytes, int4 an eighth. What a quantized linear layer
``<name>`` holds (its state dict, and so the run's safetensors):

- int8: ``<name>.qweight`` int8 (N, K) and ``<name>.scales`` fp32 (N,): w = q * scale, with
  scale = max |w| of the row / 127 (per output channel).
- int4: ``<name>.qweight`` uint8 (N, K/2), two values a byte (the low nibble holds the even
  column), each q in 0..15, and ``<name>.scales`` fp16 (N, K/g): w = (q - 8) * scale for a
  group of g consecutive inputs. The scale is llama.cpp's q4_0 rule: the group's value of
  largest magnitude, signed, over -8 (so that value is the code 0, and the range's extra
  negative step is never wasted), and q = trunc(w / scale + 8.5) clipped to 15. With g = 32
  this *is* q4_0's block (fp16 scale, q - 8), so a GGUF export copies it unchanged.
- optionally ``<name>.input_scale`` fp32 (K,): the layer reads x / input_scale. Activation-
  aware scaling (AWQ) multiplies salient input channels' weights up before rounding, so
  they lose less, and divides their inputs back down here.

The weights themselves (``<name>.weight``) are gone: the layer keeps only these buffers.
How it multiplies (PyTorch's int8 / int4 CPU kernels, or dequantize-then-matmul) is
tinygpt.kernels' business, like every route behind ``Linear``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import TinyGPTError

BITS = (8, 4)
GROUP_SIZES = (32, 64, 128, 256)   # what PyTorch's int4 kernels take (and 32: q4_0's block)


@dataclass(frozen=True)
class QuantSpec:
    """How a model's linear layers hold their weights (config.json's "quantization")."""
    bits: int = 8                 # 8: int8 per output channel; 4: int4 in groups along the input
    group_size: int = 0           # int4's group width; 0 for int8
    head: bool = False            # the output head too (else it stays in the model's float dtype)
    activations: str = "float"    # "float"; "int8": rounded per row on the fly (dynamic int8)
    method: str = "rtn"           # how the values were chosen (rtn, awq-lite, gptq-lite, qat): a record

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise TinyGPTError(f"weights can be int8 or int4, not {self.bits}-bit")
        if self.bits == 4 and self.group_size not in GROUP_SIZES:
            raise TinyGPTError(f"int4 needs --group-size one of {', '.join(map(str, GROUP_SIZES))}, "
                               f"got {self.group_size}")
        if self.bits == 8 and self.group_size:
            raise TinyGPTError("int8 scales are per output channel: --group-size is for int4")
        if self.activations not in ("float", "int8") or (self.activations == "int8" and self.bits != 8):
            raise TinyGPTError("only int8 weights take dynamically quantized (int8) activations")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "QuantSpec":
        try:
            return cls(**raw)
        except TypeError as e:
            raise TinyGPTError(f"config.json's quantization record is not one this version reads ({e})") from None

    @property
    def name(self) -> str:
        return "dynamic-int8" if self.activations == "int8" else f"int{self.bits}"


# ---------------------------------------------------------------------------- round to nearest

def int8_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-row scales (N,) fp32 of a (N, K) weight: max |w| / 127 (1 for an all-zero row)."""
    amax = w.detach().float().abs().amax(dim=1)
    return torch.where(amax > 0, amax / 127, torch.ones_like(amax))


def quantize_int8(w: torch.Tensor, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), scales fp32 (N,)): w ~ q * scale, round to nearest."""
    scales = int8_scales(w) if scales is None else scales
    q = torch.round(w.detach().float() / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def int4_scales(w: torch.Tensor, group: int) -> torch.Tensor:
    """q4_0's scales (N, K/g) of a (N, K) weight, in fp32 (they are stored in fp16): each
    group's largest-magnitude value, signed, over -8."""
    g = w.detach().float().reshape(w.shape[0], -1, group)
    return g.gather(-1, g.abs().argmax(dim=-1, keepdim=True)).squeeze(-1) / -8


def int4_codes(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Codes q (N, K) uint8 in 0..15 of a (N, K) weight under ``scales`` (N, K/g): the q4_0
    rule, trunc(w / scale + 8.5) clipped to 15, computed as llama.cpp does (times 1/scale
    of the fp32 scale, before its fp16 rounding: so are gguf's, bit for bit)."""
    N, K = w.shape
    g = w.detach().float().reshape(N, scales.shape[1], -1)
    d = scales.float()[..., None] if scales.dtype != torch.float32 else scales[..., None]
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    return torch.trunc(g * inv + 8.5).clamp_(0, 15).to(torch.uint8).reshape(N, K)


def quantize_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 (N, K) in 0..15, scales fp16 (N, K/g)) by llama.cpp's q4_0 rule."""
    if w.shape[1] % group:
        raise TinyGPTError(f"int4 groups of {group} need layers whose inputs are a multiple of {group} wide; "
                           f"one is {w.shape[1]}: choose a --group-size that divides it")
    d32 = int4_scales(w, group)                                # fp32, as llama.cpp computes the codes with
    return int4_codes(w, d32), d32.to(torch.float16)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) codes 0..15 -> (N, K/2) bytes, the even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) bytes -> (N, K) codes 0..15."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, bits: int,
               input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The (N, K) fp32 weight a quantized layer computes with (its input_scale folded in)."""
    if bits == 8:
        w = qweight.float() * scales.float()[:, None]
    else:
        q = unpack_int4(qweight).float() - 8
        N, K = q.shape
        w = (q.reshape(N, scales.shape[1], -1) * scales.float()[..., None]).reshape(N, K)
    return w / input_scale if input_scale is not None else w


def fake_quantize(w: torch.Tensor, bits: int, group: int = 0) -> torch.Tensor:
    """w rounded to the grid it would be stored on and back, in w's dtype, with the gradient
    passed straight through (quantization-aware training: the forward sees the rounding,
    the float weights learn)."""
    with torch.no_grad():
        if bits == 8:
            q, s = quantize_int8(w)
            rounded = q.float() * s[:, None]
        else:
            q, s = quantize_int4(w, group)
            rounded = dequantize(pack_int4(q), s, 4)
    return w + (rounded.to(w.dtype) - w).detach()


# ---------------------------------------------------------------------------- the layer

def buffers_of(linear, spec: QuantSpec, device=None) -> dict[str, torch.Tensor]:
    """Empty buffers of the right shapes for ``linear`` under ``spec`` (filled by loading)."""
    N, K = linear.out_features, linear.in_features
    if spec.bits == 8:
        return {"qweight": torch.empty(N, K, dtype=torch.int8, device=device),
                "scales": torch.empty(N, dtype=torch.float32, device=device)}
    if K % spec.group_size:
        raise TinyGPTError(f"int4 groups of {spec.group_size} need inputs a multiple of it wide; a layer has {K}")
    return {"qweight": torch.empty(N, K // 2, dtype=torch.uint8, device=device),
            "scales": torch.empty(N, K // spec.group_size, dtype=torch.float16, device=device)}


def make_quantized(linear, spec: QuantSpec, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Turn ``linear`` (a tinygpt Linear) into a quantized one: its weight parameter goes,
    ``tensors`` (qweight, scales, optional input_scale, on their own device; else empty ones
    on the weight's, to load into) stay."""
    if tensors is None:   # on the weight's device (meta, for a model about to be loaded)
        tensors = buffers_of(linear, spec, linear.weight.device)
    del linear.weight
    linear.register_parameter("weight", None)
    for name, t in tensors.items():
        linear.register_buffer(name, t)
    linear.quant = spec
    linear._kernel = None


def weight_of(linear) -> torch.Tensor:
    """A linear layer's weight as it computes with it: its parameter, or its quantized
    values dequantized (fp32)."""
    if getattr(linear, "quant", None) is None:
        return linear.weight
    return dequantize(linear.qweight, linear.scales, linear.quant.bits, getattr(linear, "input_scale", None))


# ---------------------------------------------------------------------------- a model's layers

def linears(model, head: bool) -> list[tuple[str, torch.nn.Module]]:
    """The model's tinygpt Linear layers that quantization covers: every one in the blocks,
    and the output head when ``head``."""
    from .kernels import Linear  # kernels imports this module

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Linear) and (head or n != "lm_head")]


def prepare(model, spec: QuantSpec):
    """``model`` (built on the meta device) with empty quantized buffers in place of the
    weights ``spec`` covers, ready to be given a quantized run's tensors; returns it."""
    for _, m in linears(model, spec.head):
        make_quantized(m, spec)
    return model


def set_fake_quant(model, spec: QuantSpec | None) -> None:
    """Quantization-aware training on (``spec``: the layers it covers see their weights
    rounded in every forward) or off (None)."""
    for _, m in linears(model, head=True):
        m.fake_quant = None
    if spec is not None:
        for _, m in linears(model, spec.head):
            m.fake_quant = spec


def quantized_weights(model) -> int:
    """How many weights the model's quantized layers hold (they have no weight parameters)."""
    return sum(m.in_features * m.out_features for m in model.modules() if getattr(m, "quant", None) is not None)


def own_buffers(model) -> None:
    """Copy the quantized layers' integer weights out of a memory-mapped file into memory of
    their own. PyTorch's bf16 int8 kernel reads a little past the end of its weight: harmless
    in allocated memory, a crash when the weight ends a mapped file's last page (seen with
    torch 2.13 on AVX-512). A quantized model is small; the copy costs its file's size."""
    for _, m in linears(model, head=True):
        if m.quant is not None:
            m.qweight = m.qweight.clone()


