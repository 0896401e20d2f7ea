"""The kernels behind Linear: each one-row route (linear, mv, packed) and oneDNN-packed
weights give linear's results; the one-row route is the one measured fastest here."""

import json

import pytest
import torch
import torch.nn.functional as F


# oneDNN packs fp32 and bf16 weights on every x86 CPU (fp16 only on some: there the route
# is never offered, since one_row_route measures only the copies it could make).
@pytest.mark.parametrize("dtype, route", [(torch.float32, r) for r in ("linear", "mv", "packed")]
                         + [(torch.bfloat16, r) for r in ("linear", "mv", "packed")]
                         + [(torch.float16, r) for r in ("linear", "mv")])
def test_every_one_row_route_gives_linears_result(monkeypatch, dtype, route):
    from tinygpt import kernels

    torch.manual_seed(0)
    layer = kernels.Linear(64, 96).to(dtype)
    monkeypatch.setitem(kernels._ROUTE, (dtype, (96, 64)), route)
    rows = torch.randn(3, 1, 64).to(dtype)
    with torch.no_grad(), kernels.packed_weights(layer) as packed:
        assert packed or route != "packed"
        one = layer(rows[:1])
        assert one.shape == (1, 1, 96) and one.dtype == dtype
        exact = F.linear(rows[:1].float(), layer.weight.float(), layer.bias.float())
        assert (one.float() - exact).abs().max() <= (1e-5 if dtype == torch.float32 else 2e-2) * exact.abs().max()
    # With gradients, the standard route.
    x = rows[:1].float().requires_grad_()
    layer.float()(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("fastest_route, times, chosen", [
    ("mv", {"linear": 3.0, "mv": 1.0, "packed": 2.0}, "mv"),
    ("packed", {"linear": 3.0, "mv": 3.0, "packed": 1.0}, "packed"),
    ("linear", {"linear": 1.0, "mv": 3.0, "packed": 2.0}, "linear"),
    ("mv", {"linear": 1.0, "mv": 0.97, "packed": 2.0}, "linear"),  # within 5%: PyTorch's own route stays
    ("packed", {"linear": 1.0, "mv": 1.0, "packed": 0.85}, "linear"),  # packed rounds differently: 20% or stay
    ("packed", {"linear": 1.0, "mv": 0.9, "packed": 0.85}, "mv"),
])
def test_the_one_row_route_is_the_one_measured_fastest_once_per_shape(monkeypatch, fastest_route, times, chosen):
    from tinygpt import kernels

    monkeypatch.setattr(kernels, "_ROUTE", {})
    monkeypatch.setattr(kernels, "_SAVED", None)
    timed = []

    def fake_fastest(options, device, reps):
        timed.append(sorted(options))
        for f in options.values():  # each route really computes
            f()
        return fastest_route, {k: times[k] for k in options}

    monkeypatch.setattr(kernels, "fastest", fake_fastest)
    calls = {"mv": 0, "linear": 0, "packed": 0}
    real_mv, real_linear, real_packed = torch.mv, F.linear, torch.ops.mkldnn._linear_pointwise
    layer = kernels.Linear(64, 96).to(torch.bfloat16)
    with torch.no_grad():
        assert kernels.one_row_route(layer.weight) == chosen
        assert kernels._ROUTE == {(torch.bfloat16, (96, 64)): chosen} and timed == [["linear", "mv", "packed"]]
        monkeypatch.setattr(kernels.torch, "mv", lambda *a: calls.__setitem__("mv", calls["mv"] + 1) or real_mv(*a))
        monkeypatch.setattr(kernels.F, "linear",
                            lambda *a: calls.__setitem__("linear", calls["linear"] + 1) or real_linear(*a))
        monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                            lambda *a: calls.__setitem__("packed", calls["packed"] + 1) or real_packed(*a))
        with kernels.packed_weights(layer):
            layer(torch.randn(1, 1, 64).to(torch.bfloat16))  # measured already: not timed again
            layer(torch.randn(1, 64).to(torch.bfloat16))
        layer(torch.randn(1, 64).to(torch.bfloat16))  # no packed copy held: "packed" falls back to linear
    assert timed == [["linear", "mv", "packed"]]
    assert calls == {"mv": {"mv": 3, "linear": 0, "packed": 0}, "packed": {"mv": 0, "linear": 1, "packed": 2},
                     "linear": {"mv": 0, "linear": 3, "packed": 0}}[chosen]


@pytest.mark.parametrize("route", ["mv", "packed"])
def test_under_autocast_one_row_computes_in_the_autocast_dtype_as_linear_does(monkeypatch, route):
    from tinygpt import kernels

    torch.manual_seed(0)
    layer = kernels.Linear(64, 96)  # fp32 weights, as the trainer's model has
    monkeypatch.setitem(kernels._ROUTE, (torch.float32, (96, 64)), route)
    x = torch.randn(1, 1, 64)
    with torch.no_grad(), kernels.packed_weights(layer), torch.autocast("cpu", torch.bfloat16):
        y = layer(x)
        assert y.dtype == torch.bfloat16 and torch.equal(y, F.linear(x, layer.weight, layer.bias))


def test_a_route_is_timed_once_per_machine_and_kept_on_disk(monkeypatch, tmp_path):
    from tinygpt import kernels

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path))
    timings = []
    monkeypatch.setattr(kernels, "fastest", lambda options, device, reps: timings.append(1) or
                        ("mv", {"linear": 2.0, "mv": 1.0, "packed": 3.0}))
    w = torch.randn(96, 64)

    def new_process():
        monkeypatch.setattr(kernels, "_ROUTE", {})
        monkeypatch.setattr(kernels, "_SAVED", None)

    new_process()
    assert kernels.one_row_route(w) == "mv" and timings == [1]
    saved = json.loads((tmp_path / kernels.ROUTES_FILE).read_text())
    assert saved == {kernels.route_name(torch.float32, (96, 64)): "mv"}
    assert "torch " + torch.__version__ in next(iter(saved))  # per CPU and PyTorch
    new_process()
    assert kernels.one_row_route(w) == "mv" and timings == [1]  # read back, not timed again
    for bad in ("{not json", '["mv"]', json.dumps({kernels.route_name(torch.float32, (96, 64)): "fastest"})):
        (tmp_path / kernels.ROUTES_FILE).write_text(bad)
        new_process()
        timings.clear()
        assert kernels.one_row_route(w) == "mv" and timings == [1]  # damaged or unknown: timed again


def test_one_row_decoding_packs_only_where_a_weight_reads_fastest_packed(monkeypatch):
    from tinygpt import kernels
    from tinygpt.generation.decoder import PACK_MIN_TOKENS, worth_packing
    from tinygpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, kernels.Linear)}
    cpu = torch.device("cpu")
    for packed_shape in (None, *shapes):
        monkeypatch.setattr(kernels, "_ROUTE", {(torch.float32, s): "packed" if s == packed_shape else "mv"
                                                for s in shapes})
        assert worth_packing(model, 1, PACK_MIN_TOKENS, cpu) is (packed_shape is not None)
        assert worth_packing(model, 4, PACK_MIN_TOKENS, cpu)  # several rows always pack on a CPU
        assert not worth_packing(model, 1, PACK_MIN_TOKENS - 1, cpu)  # too short to pay for the copies
        assert not worth_packing(model, 4, PACK_MIN_TOKENS, torch.device("meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_compute_linear_and_are_never_used_stale(monkeypatch, dtype):
    from tinygpt import kernels
    from tinygpt.kernels import Linear, packed_weights

    monkeypatch.setattr(kernels, "_ROUTE", {})

    torch.manual_seed(0)
    layer = Linear(64, 96).to(dtype)
    rows = torch.randn(5, 3, 64).to(dtype)
    one = rows[:1, :1]
    with torch.no_grad():
        plain = layer(rows)
        with packed_weights(layer) as ok:
            assert ok
            packed = layer(rows)
            assert (packed.float() - plain.float()).abs().max() <= 1e-5 * (dtype == torch.float32) + \
                2e-2 * (dtype != torch.float32) * plain.abs().max().item()
            with packed_weights(layer):  # a nested entry reuses the copy and leaves it to its owner
                pass
            # The packed copy is what runs: zeroing the weight behind autograd's back (.data
            # does not count as a change) leaves rows > 1 computed from the copy...
            layer.weight.data.zero_()
            assert torch.equal(layer(rows), packed)
            # ...while one row takes the route measured for it: here the plain one.
            kernels._ROUTE[(dtype, (96, 64))] = "linear"
            assert torch.equal(layer(one)[0, 0], layer.bias)
            # ...and a change that counts makes the copy stale: linear again.
            layer.weight.add_(1.0)
            assert torch.equal(layer(rows), F.linear(rows, layer.weight, layer.bias))
        assert layer._packed is None
