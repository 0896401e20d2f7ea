"""Learning-rate schedule values and optimizer parameter groups."""

import math

import pytest
import torch

from tinygpt.model import GPT, GPTConfig
from tinygpt.train.optim import lr_at, make_optimizer


def test_warmup_is_linear_from_lr_over_warmup():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    assert [lr_at(s, 0.0, **kw) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3], abs=0, rel=1e-12)


@pytest.mark.parametrize("schedule, mid", [("cosine", 5.5e-4), ("linear", 5.5e-4), ("constant", 1e-3)])
def test_decay_endpoints_and_midpoint(schedule, mid):
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=0, schedule=schedule)
    end = 1e-3 if schedule == "constant" else 1e-4
    assert lr_at(0, 0.0, **kw) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(50, 0.5, **kw) == pytest.approx(mid, rel=1e-12)
    assert lr_at(99, 1.0, **kw) == pytest.approx(end, rel=1e-12)
    assert lr_at(200, 1.7, **kw) == pytest.approx(end, rel=1e-12)  # progress is clamped


def test_cosine_quarter_point():
    lr = lr_at(0, 0.25, lr=1.0, min_lr=0.0, warmup_steps=0, schedule="cosine")
    assert lr == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)


def test_weight_decay_only_on_matrices_and_embeddings():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30))
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    # The tied head is the embedding: counted once, and every parameter is in exactly one group.
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
