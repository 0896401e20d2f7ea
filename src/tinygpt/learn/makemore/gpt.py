"""The last makemore rung: tinygpt's own GPT (``tinygpt.model.GPT``), reading whole words.

Nothing here is a new model: the GPT is the one ``tinygpt train`` trains, at a size that
suits names. It differs from the window models in what it sees: a word's every earlier
character (attention over the whole prefix), not a fixed window of ``block_size``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...model import GPT, GPTConfig


class WordGPT(nn.Module):
    """Adapts a GPT to the rungs' interface: rows of words in, next-character logits out."""

    grows_context = True  # the sampler feeds the whole word so far, not a sliding window

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 64,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)  # GPT's initialisation draws from the global generator
        self.gpt = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                 vocab_size=vocab_size))
        self.block_size = block_size

    def logits(self, ctx: torch.Tensor) -> torch.Tensor:  # (B, t) words so far -> (B, vocab) for the next
        return self.gpt(ctx).logits[:, -1, :]

    def loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) rows from ``data.words.word_rows``; y's padding (-1) is masked out."""
        real = y >= 0
        T = int(real.any(0).nonzero().max()) + 1  # drop the columns that are padding in every row
        x, y, real = x[:, :T], y[:, :T], real[:, :T]
        out = self.gpt(x, y.clamp_min(0), loss_mask=real)
        return out.loss_sum, out.n_targets
