"""The kernels behind Linear: the one-row matrix-vector route and oneDNN-packed weights give
linear's results."""

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_row_half_precision_products_take_the_matrix_vector_route_with_the_same_result(dtype):
    from tinygpt.kernels import Linear

    torch.manual_seed(0)
    layer = Linear(64, 96).to(dtype)
    rows = torch.randn(3, 1, 64).to(dtype)
    with torch.no_grad():
        one = layer(rows[:1])
        assert one.shape == (1, 1, 96) and one.dtype == dtype
        exact = torch.nn.functional.linear(rows[:1].float(), layer.weight.float(), layer.bias.float())
        assert (one.float() - exact).abs().max() < 2e-2 * exact.abs().max()
        # The batched product (F.linear's route) agrees with it to half precision.
        assert (layer(rows)[:1].float() - one.float()).abs().max() < 2e-2 * exact.abs().max()
    # With gradients, the standard route.
    x = rows[:1].float().requires_grad_()
    layer.float()(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("mv_faster", [True, False])
def test_the_one_row_route_is_the_one_measured_faster_once_per_shape(monkeypatch, mv_faster):
    from tinygpt import device, kernels

    monkeypatch.setattr(kernels, "_MV_PAYS", {})
    calls = {"mv": 0, "linear": 0}
    real_mv, real_linear = torch.mv, F.linear
    monkeypatch.setattr(kernels.torch, "mv", lambda *a: calls.__setitem__("mv", calls["mv"] + 1) or real_mv(*a))
    monkeypatch.setattr(kernels.F, "linear",
                        lambda *a: calls.__setitem__("linear", calls["linear"] + 1) or real_linear(*a))
    # A fake clock, read before and after each timed run, mv's first: the faster one takes 1, the other 3.
    fast, slow = [0.0, 1.0, 0.0, 3.0], [0.0, 3.0, 0.0, 1.0]
    clock = iter((fast if mv_faster else slow) * 5)
    monkeypatch.setattr(device.time, "perf_counter", lambda: next(clock))  # device.fastest times the two
    layer = kernels.Linear(64, 96).to(torch.bfloat16)
    with torch.no_grad():
        assert kernels.mv_pays(layer.weight) is mv_faster
        assert kernels._MV_PAYS == {(torch.bfloat16, (96, 64)): mv_faster}
        calls.update(mv=0, linear=0)
        layer(torch.randn(1, 1, 64).to(torch.bfloat16))  # measured already: no timing (the fake clock is spent)
        layer(torch.randn(1, 64).to(torch.bfloat16))
    assert calls == ({"mv": 2, "linear": 0} if mv_faster else {"mv": 0, "linear": 2})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_compute_linear_and_are_never_used_stale(dtype):
    from tinygpt.kernels import Linear, packed_weights

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
            assert torch.equal(layer(one)[0, 0], layer.bias)  # ...while one row keeps the plain route
            # ...and a change that counts makes the copy stale: linear again.
            layer.weight.add_(1.0)
            assert torch.equal(layer(rows), F.linear(rows, layer.weight, layer.bias))
        assert layer._packed is None
