"""The neural rungs that read a fixed window of previous characters: Bengio et al.'s MLP
(with or without BatchNorm) and the WaveNet-style hierarchy.

Both are a ``torch.nn.Sequential`` of the layers in :mod:`.layers`, wrapped in
:class:`WindowModel`, which is what the training loop, the evaluation and the sampler
talk to: ``logits(X)`` for a batch of contexts X (B, block_size) -> (B, vocab).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TinyGPTError
from .layers import BatchNorm1d, Flatten, FlattenConsecutive, Linear

OUTPUT_GAIN = 0.1  # a near-uniform first guess: confident wrong logits at init cost loss for nothing


class WindowModel(nn.Module):
    """Next-character logits from the previous ``block_size`` characters."""

    grows_context = False  # the sampler slides a window of block_size, it does not grow one

    def __init__(self, net: nn.Sequential, block_size: int):
        super().__init__()
        self.net, self.block_size = net, block_size

    def logits(self, X: torch.Tensor) -> torch.Tensor:  # (B, block_size) ids -> (B, vocab)
        return self.net(X)

    def loss_sum(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy (nats) over the batch, and how many characters it covers."""
        return F.cross_entropy(self.logits(X), Y, reduction="sum"), Y.numel()


def _embedding(vocab_size: int, n_embd: int, g: torch.Generator) -> nn.Embedding:
    emb = nn.Embedding(vocab_size, n_embd)
    nn.init.normal_(emb.weight, generator=g)  # unit variance: what the first Linear's init assumes
    return emb


def mlp(vocab_size: int, block_size: int = 3, n_embd: int = 10, n_hidden: int = 200, layers: int = 1,
        batchnorm: bool = False, seed: int = 0) -> WindowModel:
    """Bengio et al. 2003: embed each of the last ``block_size`` characters, concatenate, then
    ``layers`` tanh hidden layers (each Linear -> [BatchNorm] -> tanh) and a linear output.

    With BatchNorm the Linear has no bias: BatchNorm subtracts the mean, bias included, and
    its own shift takes the bias's place."""
    if min(block_size, n_embd, n_hidden, layers) < 1:
        raise TinyGPTError("--block-size, --n-embd, --n-hidden and --layers must all be at least 1")
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = [_embedding(vocab_size, n_embd, g), Flatten()]  # (B, T) -> (B, T, E) -> (B, T*E)
    fan_in = block_size * n_embd
    for _ in range(layers):
        mods.append(Linear(fan_in, n_hidden, bias=not batchnorm, generator=g))
        if batchnorm:
            mods.append(BatchNorm1d(n_hidden))
        mods.append(nn.Tanh())
        fan_in = n_hidden
    mods.append(Linear(fan_in, vocab_size, gain=OUTPUT_GAIN, generator=g))
    return WindowModel(nn.Sequential(*mods), block_size)


def wavenet(vocab_size: int, block_size: int = 8, n_embd: int = 24, n_hidden: int = 128,
            seed: int = 0) -> WindowModel:
    """A WaveNet-style hierarchy: instead of squashing all ``block_size`` characters into one
    layer, fuse neighbours in pairs, then pairs of pairs, ... (log2(block_size) levels, each
    Linear -> BatchNorm -> tanh over (B, T, C) with T halving), then a linear output.

    Each level sees a little more of the context, so information is mixed gradually, as
    WaveNet's dilated causal convolutions do. BatchNorm here gets (B, T, C) input: its
    statistics must span batch and time (see :class:`.layers.BatchNorm1d`)."""
    levels = block_size.bit_length() - 1
    if block_size < 2 or block_size != 1 << levels:
        raise TinyGPTError(f"wavenet fuses characters in pairs, so --block-size must be a power of two "
                           f"(2, 4, 8, 16, ...), got {block_size}")
    if min(n_embd, n_hidden) < 1:
        raise TinyGPTError("--n-embd and --n-hidden must be at least 1")
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = [_embedding(vocab_size, n_embd, g)]  # (B, T, E)
    width = n_embd
    for _ in range(levels):  # T -> T/2 -> ... -> 1
        mods += [FlattenConsecutive(2), Linear(2 * width, n_hidden, bias=False, generator=g),
                 BatchNorm1d(n_hidden), nn.Tanh()]
        width = n_hidden
    mods.append(Linear(n_hidden, vocab_size, gain=OUTPUT_GAIN, generator=g))
    return WindowModel(nn.Sequential(*mods), block_size)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
