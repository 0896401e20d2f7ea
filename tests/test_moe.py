"""Mixture of experts: the router, its losses, capacity, counts and what training records."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import MODERN, TINY_MODEL, random_ids, randomize_

from tinygpt import moe
from tinygpt.errors import TinyGPTError
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT, GPTConfig
from tinygpt.train.optim import updated_by

MOE = dict(moe_experts=4, moe_top_k=2)


def model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(**{**TINY_MODEL, **kw}))
    randomize_(m, seed, scale=0.3, embedding_scale=0.1)
    return m.eval()


@pytest.mark.parametrize("variant", [{}, MODERN])
def test_one_expert_with_top1_is_the_dense_mlp(variant):
    dense, sparse = model(**variant), model(seed=1, **variant, moe_experts=1, moe_top_k=1)
    weights = {k.replace(".mlp.", ".mlp.experts.0."): v for k, v in dense.state_dict().items()}
    weights.update({k: v for k, v in sparse.state_dict().items() if ".router." in k})
    sparse.load_state_dict(weights)
    idx = random_ids((3, 16))
    a, b = dense(idx, idx), sparse(idx, idx)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-6, rtol=0)
    # A lone expert gets every token: its probability is exactly 1, the balance loss exactly 1.
    assert [m.load.tolist() for m in moe.moe_layers(sparse)] == [[48], [48]]
    assert b.aux_loss is not None and a.aux_loss is None


def test_a_balanced_router_gives_the_switch_loss_its_minimum_one():
    layer = model(**MOE).transformer.h[0].mlp
    x = torch.randn(64, 32)
    with torch.no_grad():
        layer.router.weight.zero_()  # every expert equally likely: P_i = 1/E whatever is chosen
    _, probs, _, top_i = layer.route(x)
    assert layer.balance_loss(probs, torch.bincount(top_i.reshape(-1), minlength=4)).item() == \
        pytest.approx(1.0, abs=1e-6)
    x[:, 0] = 1.0
    with torch.no_grad():  # every token's first choice is expert 0, with probability ~1: f_0 = 1/2, P_0 = 1
        layer.router.weight[0, 0] = 100.0
    _, probs, _, top_i = layer.route(x)
    assert layer.balance_loss(probs, torch.bincount(top_i.reshape(-1), minlength=4)).item() == \
        pytest.approx(4 * 0.5, abs=1e-4)


def direct_moe(layer: moe.MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block computed token by token as the papers write it: (output (N, C), balance loss)."""
    E, k = layer.n_experts, layer.top_k
    outs, counts, probs = [], [0] * E, []
    for t in range(x.shape[0]):
        p = F.softmax(x[t].double() @ layer.router.weight.double().t(), dim=-1).float()
        probs.append(p)
        chosen = sorted(range(E), key=lambda e: -p[e].item())[:k]
        norm = sum(p[e] for e in chosen) if k > 1 else 1.0
        y = sum(p[e] / norm * layer.experts[e](x[t:t + 1])[0] for e in chosen)
        if layer.shared is not None:
            y = y + layer.shared(x[t:t + 1])[0]
        outs.append(y)
        for e in chosen:
            counts[e] += 1
    f = torch.tensor(counts, dtype=torch.float32) / (x.shape[0] * k)
    P = torch.stack(probs).mean(0)
    return torch.stack(outs), E * (f * P).sum()


@pytest.mark.parametrize("kw", [dict(moe_experts=4, moe_top_k=2, moe_shared_expert=True),
                                dict(moe_experts=3, moe_top_k=1, **MODERN)])
def test_routing_its_losses_and_their_gradients_match_a_direct_computation(kw):
    m = model(**kw)
    m.train()
    layer = m.transformer.h[0].mlp
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))
    mine_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = layer(mine_x)
    mine_lb = (layer.aux_loss - layer.z_weight * torch.logsumexp(layer.route(mine_x.view(-1, 32))[0], -1)
               .square().mean()) / layer.aux_weight
    ref, ref_lb = direct_moe(layer, theirs_x.view(-1, 32))
    torch.testing.assert_close(out.view(-1, 32), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine_lb, ref_lb, atol=1e-6, rtol=1e-6)
    params = [layer.router.weight, *layer.experts.parameters()]
    probe = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    g_mine = torch.autograd.grad((out.view(-1, 32) * probe).sum() + mine_lb, [mine_x, *params], allow_unused=True)
    g_ref = torch.autograd.grad((ref * probe).sum() + ref_lb, [theirs_x, *params], allow_unused=True)
    for a, b in zip(g_mine, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert g_mine[1].abs().sum() > 0  # the router learns from the output (k=1: through the raw probability)


def test_z_loss_is_the_mean_squared_logsumexp_of_the_router_logits():
    m = model(**MOE, moe_aux_weight=0.0, moe_z_weight=1.0)
    layer = m.transformer.h[1].mlp
    x = torch.randn(1, 5, 32)
    layer(x)
    logits = x.view(-1, 32) @ layer.router.weight.t()
    expected = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in logits]).mean()
    torch.testing.assert_close(layer.aux_loss, expected, atol=1e-6, rtol=1e-6)


def test_capacity_drops_overflow_first_choices_first_and_only_in_training():
    m = model(moe_experts=2, moe_top_k=1, moe_capacity=1.0)
    layer = m.transformer.h[0].mlp
    with torch.no_grad():  # every token prefers expert 0: capacity ceil(1.0 * 6 * 1 / 2) = 3 seats
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 10.0
    x = torch.zeros(1, 6, 32)
    x[..., 0] = 1.0
    x[..., 1] = torch.arange(6.0)  # distinct tokens
    layer.train()
    y = layer(x)
    assert layer.load.tolist() == [6, 0] and layer.dropped.item() == 3
    p0 = torch.softmax(torch.tensor([10.0, 0.0]), 0)[0]
    kept = p0 * layer.experts[0](x[0, :3])
    torch.testing.assert_close(y[0, :3], kept, atol=1e-6, rtol=1e-6)  # the first three tokens hold the seats
    assert torch.equal(y[0, 3:], torch.zeros(3, 32))  # the rest pass this block unchanged (the residual)
    y.sum().backward()  # expert 1 got no token, yet ran: its gradient is zero, not missing (DDP needs one)
    assert all(p.grad is not None and not p.grad.any() for p in layer.experts[1].parameters())
    layer.eval()
    with torch.no_grad():  # inference: nothing dropped, and the idle expert 1 is not even called
        called = []
        handle = layer.experts[1].register_forward_hook(lambda *a: called.append(1))
        torch.testing.assert_close(layer(x)[0], p0 * layer.experts[0](x[0]), atol=1e-6, rtol=1e-6)
        handle.remove()
    assert layer.dropped.item() == 0 and not called


def test_within_capacity_is_the_queue_a_direct_count_gives():
    layer = model(moe_experts=3, moe_top_k=2, moe_capacity=0.5).transformer.h[0].mlp
    top_i = torch.randint(0, 3, (10, 2), generator=torch.Generator().manual_seed(0))
    capacity = math.ceil(0.5 * 10 * 2 / 3)
    seats, expected = [0, 0, 0], torch.zeros(10, 2, dtype=torch.bool)
    for rank in range(2):  # all first choices, in token order, then all second ones
        for t in range(10):
            e = top_i[t, rank].item()
            expected[t, rank] = seats[e] < capacity
            seats[e] += 1
    assert torch.equal(layer.within_capacity(top_i, 10), expected.reshape(-1))


def test_cached_decoding_and_batched_rows_equal_the_whole_forward():
    m = model(**MOE, **MODERN, moe_capacity=1.0)  # capacity is training only: inference never drops
    idx = random_ids((2, 12))
    whole = m(idx).logits
    cache = KVCache(m.config, 2)
    steps = [m(idx[:, :5], cache=cache).logits] + [m(idx[:, t:t + 1], cache=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(idx[1:]).logits, whole[1:], atol=1e-5, rtol=1e-5)  # other matmul row counts


def test_total_and_active_parameters_and_flops():
    dense, sparse = model(), model(moe_experts=4, moe_top_k=1, moe_every=2, moe_shared_expert=True)
    mlp = sum(p.numel() for p in dense.transformer.h[1].mlp.parameters())
    router = 4 * 32
    assert sparse.num_params() == dense.num_params() + (4 + 1 - 1) * mlp + router  # block 1 only: 4 + shared
    assert sparse.active_params() == dense.num_params() + mlp + router  # one routed + the shared expert
    assert sparse.flops_per_token() - dense.flops_per_token() == 6 * (mlp + router)
    assert [type(b.mlp).__name__ for b in sparse.transformer.h] == ["MLP", "MoE"]
    for kw in (MOE, dict(moe_experts=3, moe_every=2, n_layer=5)):  # counted from 1- and 2-block models, or all
        padding = (64 - 50) * 32
        assert GPTConfig(**{**TINY_MODEL, **kw}).stored_params() == model(**kw).num_params() - padding


def test_the_router_stays_on_adamw_under_muon():
    by = updated_by(model(**MOE), "muon")
    assert by["transformer.h.0.mlp.router.weight"] == "adamw"
    assert by["transformer.h.0.mlp.experts.3.c_fc.weight"] == "muon"


@pytest.mark.parametrize("kw, names", [
    (dict(moe_experts=0), "--moe-experts"), (dict(moe_experts=4, moe_top_k=5), "--moe-top-k"),
    (dict(moe_experts=4, moe_every=3), "--moe-every"), (dict(moe_experts=4, moe_capacity=0.0), "--moe-capacity"),
    (dict(moe_experts=4, moe_aux_weight=-1.0), "--moe-aux-weight"),
])
def test_bad_settings_are_one_line_errors(kw, names):
    with pytest.raises(TinyGPTError, match=names) as e:
        GPTConfig(**{**TINY_MODEL, **kw})
    assert "\n" not in str(e.value)


def test_training_adds_the_router_losses_and_records_expert_load(tmp_path):
    from test_train_trainer import TEXT, fit, start

    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    session = start(corpus, tmp_path / "run", max_steps=3, eval_interval=3, moe_experts=4, moe_top_k=2,
                    moe_capacity=1.0, tokens_per_step=128)
    m, t = session.trainer.model, session.trainer
    # The gradient the trainer steps with is that of the LM loss plus the routers' weighted losses.
    fit(session)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["expert_load"]) for r in records] == [2, 2, 2]  # two MoE blocks
    for r in records:
        assert all(len(row) == 4 and sum(row) == pytest.approx(1.0, abs=1e-3) for row in r["expert_load"])
        assert 0 <= r["moe_dropped"] < 1 and r["aux_loss"] > 0
    assert "active" in t.describe() and m.active_params() < m.num_params()
