"""Activation checkpointing: the same losses and gradients, fewer saved activations, the same model."""

import copy

import pytest
import torch
from helpers import MODERN, TINY_MODEL, random_ids

from tinygpt.model import GPT, Block, GPTConfig
from tinygpt.train.recompute import RecomputedBlock, recompute_blocks


@pytest.mark.parametrize("extra", [{}, {**MODERN, "value_embeds": True, "unet_skips": True, "n_layer": 4}])
def test_recomputed_blocks_give_the_same_loss_and_gradients(extra):
    cfg = GPTConfig(**{**TINY_MODEL, "dropout": 0.2, **extra})
    idx, targets = random_ids((3, 16)), random_ids((3, 16), seed=2)

    def loss_and_grads(every):
        torch.manual_seed(0)
        model = GPT(cfg).train()
        chosen = recompute_blocks(model, every)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            torch.manual_seed(1)  # the same dropout masks in both runs
            loss = model(idx, targets).loss
        loss.backward()
        return chosen, loss.item(), {n: p.grad for n, p in model.named_parameters()}, sum(saved)

    none, all_, every_other = loss_and_grads(0), loss_and_grads(1), loss_and_grads(2)
    assert none[0] == [] and all_[0] == list(range(cfg.n_layer)) and every_other[0] == list(range(0, cfg.n_layer, 2))
    for chosen, loss, grads, _ in (all_, every_other):
        assert loss == none[1]  # the forward is the same math
        for name, g in none[2].items():
            torch.testing.assert_close(grads[name], g, rtol=0, atol=1e-6, msg=name)
    # What it is for: the forward keeps fewer activations for the backward.
    assert all_[3] < every_other[3] < none[3]


def test_a_recomputed_model_keeps_its_names_copies_and_evaluation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL))
    names = list(model.state_dict())
    recompute_blocks(model, 1)
    assert list(model.state_dict()) == names and all(isinstance(b, RecomputedBlock) for b in model.transformer.h)
    twin = copy.deepcopy(model)  # a copy recomputes its own blocks, not the original's
    twin.transformer.h[0].attn.c_attn.weight.data.zero_()
    idx = random_ids((2, 8))
    model.train()
    twin.train()
    assert not torch.equal(model(idx).logits, twin(idx).logits)
    recompute_blocks(model, 0)
    assert all(type(b) is Block for b in model.transformer.h)
