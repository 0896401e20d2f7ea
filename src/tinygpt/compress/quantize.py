"""Post-training quantization: a model's linear layers to int8 or int4 (round to nearest,
or chosen with a calibration text), and the quantized run it writes.

Three ways to pick int4 values (``--rounding``):

- ``rtn``: round each weight to the nearest step of its group's scale (llama.cpp's q4_0 rule).
- ``awq-lite`` (activation-aware scaling, after AWQ): inputs with large activations matter
  most, so their weight columns are multiplied by s = mean|x|^alpha before rounding (they
  then lose less to it) and the layer divides its input by s (``input_scale``). alpha is
  searched per layer on calibration inputs, minimising the layer's output error; alpha =
  0 is round to nearest, so the search never does worse than it on those inputs.
- ``gptq-lite`` (after GPTQ): columns are rounded one at a time, and each one's rounding
  error is spread over the columns not yet rounded, weighted by the inverse of the inputs'
  second moment H = X^T X, so the layer's output moves as little as possible. "Lite": the
  inputs are collected once from the float model (GPTQ proper feeds each layer the
  already-quantized model's outputs), and groups take their scales when reached.

Both calibration methods read ``--calibration-tokens`` tokens of a text (the run's training
text by default: never its validation split, which scores the result).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import quant
from ..config import like, opt
from ..errors import TinyGPTError
from ..model import GPT
from ..options import TextOptions
from ..quant import QuantSpec
from ..run import RunDir
from ..source import open_source

TARGETS = ("int8", "int4", "dynamic-int8")
METHODS = ("rtn", "awq-lite", "gptq-lite")
AWQ_GRID = 20           # alpha in 0, 1/20, ..., 1
AWQ_ROWS = 1024         # calibration rows of x kept per layer to measure output error
GPTQ_BLOCK = 128        # columns rounded between two whole-matrix updates (GPTQ's lazy batches)
GPTQ_DAMP = 0.01        # of H's mean diagonal, added to it: keeps the inverse well conditioned


@dataclass
class QuantizeOptions:
    scheme: str = opt("int8", "int8: weights per output channel; int4: in groups (--group-size); dynamic-int8: "
                              "int8 weights and activations rounded to int8 on the fly", choices=TARGETS)
    group_size: int = opt(32, "int4: inputs sharing one scale (32 is llama.cpp's q4_0 block)")
    rounding: str = opt("rtn", "how values are chosen: rtn (round to nearest), awq-lite (scales found on a "
                               "calibration text), gptq-lite (rounding errors spread by the text's statistics)",
                        choices=METHODS)
    quantize_head: bool = opt(False, "quantize the output head too (a tied head gets its own quantized copy; "
                                     "the embedding stays float)")
    data: str | None = like(TextOptions, "data", shown="the run's training text")
    calibration_tokens: int = opt(8192, "tokens of --data that calibration reads (awq-lite, gptq-lite, wanda)",
                                  metavar="N")

    def __post_init__(self) -> None:
        if self.calibration_tokens < 1:
            raise TinyGPTError(f"--calibration-tokens must be at least 1, got {self.calibration_tokens}")
        if self.scheme != "int4" and self.rounding == "awq-lite":
            raise TinyGPTError("awq-lite chooses int4 scales; use it with --scheme int4 (int8 loses little to "
                               "rounding)")
        if self.scheme == "dynamic-int8" and self.rounding != "rtn":
            raise TinyGPTError("dynamic-int8 is the textbook baseline: round to nearest only (--rounding rtn)")

    def spec(self) -> QuantSpec:
        if self.scheme == "int4":
            return QuantSpec(bits=4, group_size=self.group_size, head=self.quantize_head, method=self.rounding)
        return QuantSpec(bits=8, head=self.quantize_head, method=self.rounding,
                         activations="int8" if self.scheme == "dynamic-int8" else "float")


# ---------------------------------------------------------------------------- the model

@torch.no_grad()
def quantize_model(model: GPT, spec: QuantSpec, calibration: torch.Tensor | None = None,
                   log: Callable[[str], None] | None = None) -> GPT:
    """Quantize ``model``'s linear layers (in place, fp32 on CPU) as ``spec`` says;
    ``calibration`` (B, T) token ids feed awq-lite and gptq-lite. Returns the model."""
    if any(getattr(m, "fake_quant", None) is not None for m in model.modules()):
        quant.set_fake_quant(model, None)   # (a QAT model, rounded for real now)
    if spec.method in ("awq-lite", "gptq-lite") and calibration is None:
        raise TinyGPTError(f"{spec.method} needs a calibration text")
    if any(getattr(m, "quant", None) is not None for m in model.modules()):
        raise TinyGPTError("this model is already quantized; quantize its float run")
    model.float().eval()
    layers = quant.linears(model, spec.head)
    stats = _collect(model, layers, calibration, spec.method) if spec.method in ("awq-lite", "gptq-lite") else {}
    for i, (name, layer) in enumerate(layers):
        w = layer.weight.detach().float()
        if spec.method == "awq-lite":
            tensors = _awq(w, spec, *stats.pop(name))
        elif spec.method == "gptq-lite":
            tensors = _gptq(w, spec, stats.pop(name))
        else:
            tensors = _rtn(w, spec)
        quant.make_quantized(layer, spec, tensors)
        if log is not None and (i + 1) % 12 == 0:
            log(f"quantized {i + 1} of {len(layers)} layers")
    return model


def _rtn(w: torch.Tensor, spec: QuantSpec) -> dict[str, torch.Tensor]:
    if spec.bits == 8:
        q, s = quant.quantize_int8(w)
        return {"qweight": q, "scales": s}
    q, s = quant.quantize_int4(w, spec.group_size)
    return {"qweight": quant.pack_int4(q), "scales": s}


def read_inputs(model: GPT, layers, ids: torch.Tensor, seen: Callable[[str, torch.Tensor], None]) -> None:
    """Forwards of ``model`` over each row of ``ids`` (B, T), showing ``seen(name, x)`` each
    of ``layers``' (name, module) inputs as (n, K) fp32 rows; the hooks go after."""
    def hook(name):
        def look(_, args) -> None:   # returns nothing: a pre-hook's return value would replace the input
            seen(name, args[0].detach().float().reshape(-1, args[0].shape[-1]))
        return look

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers]
    try:
        for row in ids:
            model(row[None])
    finally:
        for h in handles:
            h.remove()


def _collect(model: GPT, layers, ids: torch.Tensor, method: str) -> dict[str, object]:
    """What each layer's inputs say, from forwards of the float model over ``ids`` (B, T):
    awq-lite (mean |x| per input channel (K,), a sample of rows (M, K)); gptq-lite H = X^T X / n (K, K)."""
    acc: dict[str, list] = {name: [None, None, 0] for name, _ in layers}

    def seen(name: str, x: torch.Tensor) -> None:
        a = acc[name]
        if method == "awq-lite":
            a[0] = x.abs().sum(0) if a[0] is None else a[0] + x.abs().sum(0)
            kept = 0 if a[1] is None else a[1].shape[0]
            if kept < AWQ_ROWS:
                rows = x[: AWQ_ROWS - kept]
                a[1] = rows.clone() if a[1] is None else torch.cat([a[1], rows])
        else:
            a[0] = x.T @ x if a[0] is None else a[0].addmm_(x.T, x)
        a[2] += x.shape[0]

    read_inputs(model, layers, ids, seen)
    if method == "awq-lite":
        return {name: (a[0] / a[2], a[1]) for name, a in acc.items()}
    return {name: a[0] / a[2] for name, a in acc.items()}


def _awq(w: torch.Tensor, spec: QuantSpec, act: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The alpha (0..1) whose scales s = act^alpha (normalised to geometric mean 1) give the
    smallest output error ||x W^T - (x / s) Q(W s)^T|| on the kept rows ``x``."""
    target = x @ w.T                                              # (M, N)
    best, chosen = math.inf, None
    act = act.clamp_min(1e-6)
    for k in range(AWQ_GRID + 1):
        alpha = k / AWQ_GRID
        s = act ** alpha
        s = s / (s.max() * s.min()).sqrt()
        tensors = _rtn(w * s, spec)
        err = (target - (x / s) @ quant.dequantize(tensors["qweight"], tensors["scales"], 4).T).pow(2).sum().item()
        if err < best:
            best, chosen = err, {**tensors, "input_scale": s} if k else tensors
    return chosen


def _gptq(w: torch.Tensor, spec: QuantSpec, H: torch.Tensor) -> dict[str, torch.Tensor]:
    """Columns rounded left to right, each one's error pushed onto the rest through H^-1."""
    W = w.clone()
    N, K = W.shape
    H = H.clone()
    dead = H.diagonal() == 0                      # inputs never active: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(GPTQ_DAMP * H.diagonal().mean())
    # The upper Cholesky factor of H^-1: row i holds how column i's error spreads onto i+1.. .
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    g = spec.group_size
    if spec.bits == 8:
        scales = quant.int8_scales(w)             # per row, from the weights as they were
    else:
        scales = torch.empty(N, K // g, dtype=torch.float16)
    codes = torch.empty(N, K, dtype=torch.int8 if spec.bits == 8 else torch.uint8)
    for start in range(0, K, GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, K)
        block, errors = W[:, start:end].clone(), torch.zeros(N, end - start)
        Hb = Hinv[start:end, start:end]
        for j in range(end - start):
            col = start + j
            if spec.bits == 4 and col % g == 0:  # the group's scale, from its weights as they are now
                grp = torch.cat([block[:, j:j + g], W[:, end:end + g - (end - col)]], dim=1)   # (N, g)
                d32 = quant.int4_scales(grp, g)[:, 0]
                scales[:, col // g] = d32.to(torch.float16)
                d_codes = d32
            v = block[:, j]
            if spec.bits == 8:
                q = torch.round(v / scales).clamp_(-127, 127)
                vq = q * scales
            else:
                q = quant.int4_codes(v[:, None], d_codes[:, None])[:, 0].float()
                vq = (q - 8) * scales[:, col // g].float()
            codes[:, col] = q.to(codes.dtype)
            err = (v - vq) / Hb[j, j]
            block[:, j:] -= err[:, None] * Hb[j, j:][None, :]
            errors[:, j] = err
        W[:, end:] -= errors @ Hinv[start:end, end:]
    if spec.bits == 8:
        return {"qweight": codes, "scales": scales}
    return {"qweight": quant.pack_int4(codes), "scales": scales}


# ---------------------------------------------------------------------------- the run

def calibration_ids(source: str | Path, tokenizer, opts: QuantizeOptions, context: int,
                    log: Callable[[str], None] | None = None) -> torch.Tensor:
    """(B, T) token ids to calibrate on: ``opts.calibration_tokens`` of ``--data``, else of
    the run's training text, in windows of at most the context."""
    if opts.data is not None:
        from ..data.files import read_text

        # Enough characters for the tokens asked for (no tokenizer packs more than 16 into one).
        ids = tokenizer.encode(read_text(opts.data, opts.calibration_tokens * 16, log=log))
    else:
        if not RunDir.is_run(source):
            raise TinyGPTError(f"{source} is not a tinygpt run, so it has no training text: give --data to "
                               f"calibrate {opts.rounding} on")
        from ..train import run_data

        ids = run_data(source, log=log or (lambda _: None)).train[: opts.calibration_tokens]
    ids = torch.tensor(np.asarray(ids[: opts.calibration_tokens]), dtype=torch.long)   # a copy: a memmap is read-only
    T = min(context, 512)
    if len(ids) < T:
        raise TinyGPTError(f"the calibration text has {len(ids)} tokens; give at least {T} (--data)")
    return ids[: len(ids) // T * T].view(-1, T)


def quantize_run(source: str | Path, out: str | Path | None, opts: QuantizeOptions, *, checkpoint: str = "best",
                 force: bool = False, method: str | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write ``source`` quantized as ``opts`` say, as a run at ``out`` (default: beside it,
    ``<name>-<scheme>``); returns ``out``. Its config.json says how (``quantization``; its
    method recorded as ``method`` where given: "qat" for a quantization-aware fine-tune) and
    from what."""
    spec = opts.spec() if method is None else dataclasses.replace(opts.spec(), method=method)
    name = Path(str(source).rstrip("/")).name
    out = Path(out) if out is not None else Path(str(source).rstrip("/")).with_name(f"{name}-{spec.name}")
    RunDir.check_new(out, force=force)
    opened = open_source(source, checkpoint)
    if opened.run is not None and opened.run.quantization() is not None:
        raise TinyGPTError(f"{source} is already quantized ({opened.run.quantization().name}); quantize its float run")
    model = opened.model
    ids = None
    if spec.method in ("awq-lite", "gptq-lite"):
        ids = calibration_ids(source, opened.tokenizer, opts, model.config.block_size, log)
        if log is not None:
            log(f"calibrating {spec.method} on {ids.numel():,} tokens")
    quantize_model(model, spec, ids, log)
    record = {"from": str(Path(source).resolve()) if Path(source).exists() else str(source),
              "checkpoint": str(opened.path), "calibration": None if ids is None else
              {"data": opts.data or "the run's training text", "tokens": ids.numel()}}
    RunDir.derive(out, opened.config, model, opened.tokenizer, opened.info,
                  {"quantization": spec.to_json(), "quantized": record}, force=force)
    return out
