"""One training loop, evaluation and sampler for every neural rung.

A rung only has to offer ``parameters()``, ``train()/eval()`` and either
``loss_sum(*batch) -> (summed nats, characters)`` (autograd does the backward) or
``loss_and_grads(*batch) -> mean nats`` (it fills ``.grad`` itself: the hand-written
backward of :mod:`.manual`). The examples are a tuple of tensors with one row per
example: (X, Y) context windows, or (x, y) whole-word rows for the GPT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ...train.optim import lr_at, make_optimizer

Examples = tuple[torch.Tensor, ...]


@dataclass
class FitConfig:
    steps: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"     # "sgd" as in the lectures, or "adamw" (the GPT)
    weight_decay: float = 0.0
    seed: int = 0
    # SGD: the lectures' step decay, lr / 10 for the last quarter. AdamW: warmup + cosine,
    # tinygpt's own schedule (train/optim.py).
    decay_at: float = 0.75
    warmup_steps: int = 100


def fit(model, train: Examples, cfg: FitConfig, log: Callable[[str], None] | None = None,
        report_every: int = 0) -> list[float]:
    """Minibatch training for ``cfg.steps`` steps; returns the training loss of every step."""
    g = torch.Generator().manual_seed(cfg.seed)
    manual = hasattr(model, "loss_and_grads")  # its parameters take no part in autograd
    params = [p for p in model.parameters() if manual or p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay, (0.9, 0.99), torch.device("cpu"))
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr)
    n = train[0].shape[0]
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(cfg.steps):
        lr = _lr(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(0, n, (cfg.batch_size,), generator=g)
        batch = tuple(t[ix] for t in train)
        if manual:
            loss = model.loss_and_grads(*batch)
        else:
            total, count = model.loss_sum(*batch)
            loss_t = total / count
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            loss = loss_t.item()
        opt.step()
        losses.append(loss)
        if log and report_every and (step % report_every == 0 or step == cfg.steps - 1):
            log(f"step {step:>6}/{cfg.steps}  loss {loss:.4f}  lr {lr:.3g}  {time.perf_counter() - start:.1f}s")
    model.eval()
    return losses


def _lr(step: int, cfg: FitConfig) -> float:
    if cfg.optimizer == "adamw":
        return lr_at(step, step / max(cfg.steps - 1, 1), lr=cfg.lr, min_lr=cfg.lr / 10,
                     warmup_steps=min(cfg.warmup_steps, cfg.steps // 10), schedule="cosine")
    return cfg.lr if step < cfg.decay_at * cfg.steps else cfg.lr / 10


@torch.no_grad()
def split_loss(model, examples: Examples, chunk: int = 32768) -> float:
    """Mean cross-entropy (nats per character) over a whole split, in eval mode."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, examples[0].shape[0], chunk):
        s, c = _loss_sum(model, tuple(t[i:i + chunk] for t in examples))
        total, count = total + float(s), count + int(c)
    model.train(was)
    return total / max(count, 1)


def _loss_sum(model, batch: Examples):
    if hasattr(model, "loss_sum"):
        return model.loss_sum(*batch)
    X, Y = batch  # a model with its own backward offers logits
    return torch.nn.functional.cross_entropy(model.logits(X), Y, reduction="sum"), Y.numel()


@torch.no_grad()
def sample_words(model, boundary: int, n: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    """``n`` new words, each drawn one character at a time from the model's softmax until it
    picks the boundary (the word is complete) or reaches ``max_len``."""
    g = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    width = 1 if getattr(model, "grows_context", False) else model.block_size
    ctx = torch.full((n, width), boundary, dtype=torch.long)  # every word starts after boundaries
    out = torch.empty((n, 0), dtype=torch.long)
    for _ in range(max_len):
        probs = torch.softmax(model.logits(ctx).float(), dim=-1)    # (n, vocab)
        nxt = torch.multinomial(probs, 1, generator=g)             # (n, 1)
        out = torch.cat([out, nxt], dim=1)
        ctx = torch.cat([ctx, nxt], dim=1)
        if not getattr(model, "grows_context", False):
            ctx = ctx[:, 1:]                                        # slide the window
        if (out == boundary).any(dim=1).all():
            break
    model.train(was)
    words = []
    for row in out.tolist():
        words.append(row[:row.index(boundary)] if boundary in row else row)
    return words

