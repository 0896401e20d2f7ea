"""The layers makemore's MLP and WaveNet are built from, written out so their math is on the page.

They are ``torch.nn.Module`` subclasses only for the bookkeeping (parameters, buffers,
train/eval mode); each forward is the plain formula. Embedding and Tanh are PyTorch's
own: there is nothing to add to ``C[X]`` and ``tanh``.

Shapes: B batch, T positions (characters), C channels.
"""

from __future__ import annotations

import torch
from torch import nn

TANH_GAIN = 5 / 3  # tanh squashes; this gain keeps activations' std about constant through depth


class Linear(nn.Module):
    """x @ W + b with W scaled by gain / sqrt(fan_in) ("Kaiming init").

    With unit-variance inputs, each output sums fan_in products: dividing by sqrt(fan_in)
    keeps its variance at 1, and the gain makes up for what tanh takes away. Too large and
    tanh saturates (flat, no gradient); too small and the signal fades layer by layer."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True, gain: float = TANH_GAIN,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_in, fan_out, generator=generator) * gain / fan_in**0.5)
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., fan_in) -> (..., fan_out)
        out = x @ self.weight
        return out if self.bias is None else out + self.bias


class BatchNorm1d(nn.Module):
    """Normalise each channel to zero mean and unit variance over the batch, then scale and shift.

    In training the statistics come from the batch itself; a running average of them is kept
    for evaluation, when there may be one example and no batch to average over.

    For 3-D input (B, T, C) the statistics are taken over batch *and* time, dims (0, 1): each
    channel is one feature wherever it occurs. Taking them over dim 0 only is the classic bug:
    it keeps separate statistics per position and averages over far fewer numbers. The
    result equals ``torch.nn.BatchNorm1d`` on x.transpose(1, 2) (tested)."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.01):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gain = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C) or (B, T, C)
        if self.training:
            dims = tuple(range(x.dim() - 1))  # (0,) or (0, 1): everything but the channel
            # Normalise by the batch's own (biased) variance; one fused kernel for both moments.
            var, mean = torch.var_mean(x, dims, correction=0)  # (C,) each
            with torch.no_grad():
                n = x.numel() // x.shape[-1]
                # The running variance estimates the population's, hence n / (n - 1) (Bessel).
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * (n / max(n - 1, 1)), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.gain * torch.rsqrt(var + self.eps)  # (C,): the per-channel factor, computed once
        return (x - mean) * scale + self.shift


class FlattenConsecutive(nn.Module):
    """Fuse every n neighbouring positions into one: (B, T, C) -> (B, T/n, n*C).

    WaveNet's step: characters become pairs, pairs become pairs of pairs. When one position
    is left the time dimension is dropped, so the last layers see (B, C) as in the MLP."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        x = x.reshape(B, T // self.n, C * self.n)  # neighbours are adjacent in memory: a view, no copy
        return x.squeeze(1) if x.shape[1] == 1 else x


class Flatten(nn.Module):
    """(B, T, C) -> (B, T*C): the MLP reads its whole context at once, in one layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)
