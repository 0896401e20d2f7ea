"""The first rung: a bigram model, predicting each character from the one before it alone.

Built two ways that arrive at the same place:

- **counting**: tally how often each character follows each other one in the training
  words (a V x V table), add ``smoothing`` to every cell so nothing is impossible, and
  normalise each row into probabilities. That is the maximum-likelihood answer itself.
- **a one-layer neural net**: logits = one_hot(x) @ W, softmax, cross-entropy, trained by
  gradient descent. exp(W) plays the role of the count table: the net learns it. The
  L2 penalty on W does what smoothing does: it pulls the rows toward uniform.

Both are evaluated on the same examples, so their losses compare directly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...analysis import pictures


class CountBigram(nn.Module):
    """P(next | current) from smoothed counts. Also a ``WindowModel`` with block_size 1."""

    block_size = 1
    grows_context = False

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, vocab_size: int, smoothing: float = 1.0):
        super().__init__()
        counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        counts.index_put_((X[:, -1], Y), torch.ones(len(Y), dtype=torch.float64), accumulate=True)
        self.register_buffer("counts", counts)  # (V, V): counts[a, b] = times b followed a
        probs = (counts + smoothing) / (counts + smoothing).sum(1, keepdim=True)
        # The table is the model's parameters, found by counting instead of by gradient descent.
        self.log_probs = nn.Parameter(probs.log().float(), requires_grad=False)

    def logits(self, X: torch.Tensor) -> torch.Tensor:  # (B, 1) -> (B, V): log-probabilities are logits
        return self.log_probs[X[:, -1]]

    def loss_sum(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, int]:
        return -self.logits(X).gather(1, Y[:, None]).sum(), Y.numel()


class NeuralBigram(nn.Module):
    """logits = one_hot(x) @ W. Multiplying by a one-hot row just picks a row of W, so this
    is written as the lookup W[x]: the same numbers without building (B, V) one-hots."""

    block_size = 1
    grows_context = False

    def __init__(self, vocab_size: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.W[X[:, -1]]

    def loss_sum(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, int]:
        return F.cross_entropy(self.logits(X), Y, reduction="sum"), Y.numel()


def pair_loss(model: NeuralBigram, counts: torch.Tensor) -> torch.Tensor:
    """The mean loss over every training example, computed from the pair counts.

    The bigram net's loss on an example depends only on its (current, next) pair, so the
    sum over ~550k examples is the sum over the V x V pairs of count x that pair's loss:
    the same number (up to float rounding), for V*V work instead of one row per example."""
    logp = torch.log_softmax(model.W.double(), dim=1)  # (V, V): log P(next | current)
    return -(counts * logp).sum() / counts.sum()


def train_neural(model: NeuralBigram, counts: torch.Tensor, steps: int, lr: float,
                 l2: float, log: Callable[[str], None] | None = None) -> list[float]:
    """Full-batch gradient descent: every example in every step (through ``pair_loss``). The
    gradient of the whole training set has no noise, so a learning rate of tens works."""
    losses = []
    for step in range(steps):
        loss = pair_loss(model, counts) + l2 * (model.W ** 2).mean()
        model.W.grad = None
        loss.backward()
        with torch.no_grad():
            model.W -= lr * model.W.grad
        losses.append(loss.item())
        if log and (step % max(steps // 5, 1) == 0 or step == steps - 1):
            log(f"step {step:>4}/{steps}  loss {loss.item():.4f} (with the L2 term)")
    return losses


def draw_counts(counts: torch.Tensor, chars: list[str], path, title: str):
    """The V x V count table as a picture: row = current character, column = next, each cell
    labelled with its pair and count (when the table is small enough to read)."""
    from matplotlib.figure import Figure

    n = len(chars)
    c = counts.numpy()
    labelled = n <= 32
    size = 16 if labelled else min(max(6.0, 0.2 * n), 20)
    fig = Figure(figsize=(size, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.log1p(c), cmap="Blues")  # log colour: a few pairs are far more common than the rest
    if labelled:
        dark = np.log1p(c) > 0.6 * np.log1p(c).max()
        for i in range(n):
            for j in range(n):
                colour = "white" if dark[i, j] else "#333333"
                ax.text(j, i - 0.15, chars[i] + chars[j], ha="center", va="bottom", fontsize=7, color=colour)
                ax.text(j, i + 0.05, f"{int(c[i, j])}", ha="center", va="top", fontsize=6, color=colour)
    ax.set_xticks(range(n), chars, fontsize=8)
    ax.set_yticks(range(n), chars, fontsize=8)
    ax.set_xlabel("next character")
    ax.set_ylabel("current character ('.' = start/end of a word)")
    ax.set_title(title, fontsize=12)
    return pictures.save(fig, path)
