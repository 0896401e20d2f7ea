"""Learning-rate schedule values and optimizer parameter groups."""

import math

import pytest
import torch

from tinygpt.model import GPT, GPTConfig
from tinygpt.train.optim import lr_at, make_optimizer, onecycle_momentum


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


def test_wsd_holds_the_rate_then_decays_linearly_over_the_last_fraction():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=0, schedule="wsd", decay_fraction=0.2)
    assert [lr_at(0, p, **kw) for p in (0.0, 0.5, 0.8)] == [1e-3, 1e-3, 1e-3]
    assert lr_at(0, 0.9, **kw) == pytest.approx(5.5e-4, rel=1e-12)
    assert lr_at(0, 1.0, **kw) == pytest.approx(1e-4, rel=1e-12)
    assert lr_at(2, 0.0, **{**kw, "warmup_steps": 10}) == pytest.approx(3e-4, rel=1e-12)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=30, tie_embeddings=False))
    opt = make_optimizer(model, 2e-3, 0.1, (0.9, 0.95), torch.device("cpu"), kind="muon")
    muon = {id(p) for g in opt.optimizers["muon"].param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    adamw = [p for g in opt.optimizers["adamw"].param_groups for p in g["params"]]
    assert len(muon) + len(adamw) == len(list(model.parameters())) and not muon & {id(p) for p in adamw}
    # One learning rate for both, set through the combined groups as the trainer does.
    for group in opt.param_groups:
        group["lr"] = 5e-4
    assert all(g["lr"] == 5e-4 for o in opt.optimizers.values() for g in o.param_groups)
    # It learns: a few steps on one batch lower its loss; its state round-trips.
    x = torch.randint(30, (4, 8), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        loss = model(x, x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    state = opt.state_dict()
    assert set(state) == {"adamw", "muon"} and len(opt.state) == len(list(model.parameters()))
    fresh = make_optimizer(model, 2e-3, 0.1, (0.9, 0.95), torch.device("cpu"), kind="muon")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.optimizers["muon"].state_dict()["state"][0]["momentum_buffer"],
                       state["muon"]["state"][0]["momentum_buffer"])
    with pytest.raises(KeyError):
        fresh.load_state_dict(make_optimizer(model, 2e-3, 0.1, (0.9, 0.95), torch.device("cpu")).state_dict())


def test_onecycle_by_progress_rises_to_the_peak_then_anneals_to_its_floor():
    kw = dict(lr=1e-3, min_lr=1e-8, warmup_steps=100, schedule="onecycle", pct_start=0.3)  # no warmup of its own
    assert lr_at(0, 0.0, **kw) == pytest.approx(1e-3 / 25, rel=1e-12)
    assert lr_at(0, 0.15, **kw) == pytest.approx((1e-3 + 1e-3 / 25) / 2, rel=1e-12)
    assert lr_at(0, 0.3, **kw) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(0, 1.0, **kw) == pytest.approx(1e-8, rel=1e-12)
    assert [onecycle_momentum(0, p, None, 0.3) for p in (0.0, 0.3, 1.0)] == pytest.approx([0.95, 0.85, 0.95])
