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
