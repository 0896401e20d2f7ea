"""The hand-written backward of the MLP-with-BatchNorm (backprop ninja) against PyTorch's autograd."""

import pytest
import torch
import torch.nn.functional as F

from tinygpt.learn.makemore.manual import (
    INTERMEDIATE_NAMES,
    PARAMETER_NAMES,
    SHORTCUT_NAMES,
    ManualMLP,
    check_gradients,
)

V, BLOCK, EMBD, HIDDEN, BATCH = 27, 3, 5, 16, 32


def tiny_model(dtype=torch.float64, **kwargs) -> ManualMLP:
    return ManualMLP(V, BLOCK, EMBD, HIDDEN, seed=0, dtype=dtype, **kwargs)


def random_batch(seed: int = 1, n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, BLOCK), generator=g), torch.randint(0, V, (n,), generator=g)


def autograd_reference(model: ManualMLP, X, Y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameter gradients from autograd over a forward written with torch's own pieces
    (torch.var, F.cross_entropy), independent of the module's step-by-step forward."""
    p = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters().items()}
    hprebn = p["C"][X].view(X.shape[0], -1) @ p["W1"] + p["b1"]
    mean, var = hprebn.mean(0, keepdim=True), hprebn.var(0, keepdim=True, unbiased=True)
    h = torch.tanh(p["bngain"] * (hprebn - mean) / torch.sqrt(var + model.eps) + p["bnbias"])
    loss = F.cross_entropy(h @ p["W2"] + p["b2"], Y)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in p.items()}


def test_check_gradients_reports_every_intermediate_parameter_and_shortcut():
    diffs = check_gradients(tiny_model(), *random_batch())
    assert set(diffs) == set(INTERMEDIATE_NAMES) | set(PARAMETER_NAMES) | set(SHORTCUT_NAMES)
    assert len(diffs) == 19 + 7 + 2


def test_every_hand_written_gradient_matches_autograd_in_float64():
    diffs = check_gradients(tiny_model(), *random_batch())
    # The bar is 1e-6; in float64 every gradient, shortcuts included, is within
    # rounding of autograd's (measured: at most ~1e-17), so hold it to 1e-12.
    for name, diff in diffs.items():
        assert diff < 1e-12, (name, diff)


def test_every_hand_written_gradient_matches_autograd_in_float32():
    # Even in float32 the 1e-6 bar holds at this size (measured: at most ~1e-8).
    diffs = check_gradients(tiny_model(torch.float32), *random_batch())
    assert max(diffs.values()) < 1e-6, diffs


def test_b1_gradient_vanishes_because_batchnorm_subtracts_the_mean():
    model = tiny_model()
    _, cache = model.forward(*random_batch())
    grads = model.backward(cache)
    assert grads["b1"].abs().max() < 1e-15
    assert grads["W1"].abs().max() > 1e-3  # the layer itself still learns


def test_check_gradients_leaves_the_running_statistics_alone():
    model = tiny_model()
    before = (model.running_mean.clone(), model.running_var.clone())
    check_gradients(model, *random_batch())
    assert torch.equal(model.running_mean, before[0]) and torch.equal(model.running_var, before[1])


def test_loss_and_grads_writes_autograds_gradients_and_cross_entropys_loss():
    model = tiny_model()
    X, Y = random_batch()
    ref_loss, ref_grads = autograd_reference(model, X, Y)
    loss = model.loss_and_grads(X, Y)
    assert loss == pytest.approx(ref_loss.item(), abs=1e-14)
    assert model.forward(X, Y)[0].item() == pytest.approx(ref_loss.item(), abs=1e-14)
    for name, p in model.named_parameters().items():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=0, atol=1e-12)
    assert [p.grad is not None for p in model.parameters()] == [True] * 7


def test_training_mode_logits_are_the_step_by_step_forwards():
    model = tiny_model()
    X, Y = random_batch()
    logits = model.logits(X)
    _, cache = model.forward(X, Y)
    torch.testing.assert_close(logits, cache["logits"], rtol=0, atol=1e-12)


def test_forward_and_loss_and_grads_update_running_statistics_with_momentum():
    X, Y = random_batch()
    a, b = tiny_model(momentum=0.25), tiny_model(momentum=0.25)
    _, cache = a.forward(X, Y)
    b.loss_and_grads(X, Y)
    hprebn = cache["hprebn"]
    torch.testing.assert_close(a.running_mean, 0.25 * hprebn.mean(0, keepdim=True), rtol=0, atol=1e-14)
    torch.testing.assert_close(a.running_var, 0.75 + 0.25 * hprebn.var(0, keepdim=True), rtol=0, atol=1e-14)
    torch.testing.assert_close(b.running_mean, a.running_mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(b.running_var, a.running_var, rtol=0, atol=1e-14)


def test_eval_logits_use_the_running_statistics():
    model = tiny_model()
    g = torch.Generator().manual_seed(2)
    model.running_mean = torch.randn(1, HIDDEN, generator=g, dtype=torch.float64)
    model.running_var = torch.rand(1, HIDDEN, generator=g, dtype=torch.float64) + 0.5
    X = random_batch()[0][:1]  # one example: no batch statistics to lean on
    hprebn = model.C[X].view(1, -1) @ model.W1 + model.b1
    bnraw = (hprebn - model.running_mean) / torch.sqrt(model.running_var + model.eps)
    expected = torch.tanh(model.bngain * bnraw + model.bnbias) @ model.W2 + model.b2
    assert model.eval() is model and not model.training
    torch.testing.assert_close(model.logits(X), expected, rtol=0, atol=1e-12)
    # Eval mode is deterministic per row: a row's logits do not depend on the rest of the batch.
    X4 = random_batch()[0][:4]
    torch.testing.assert_close(model.logits(X4)[:1], expected, rtol=0, atol=1e-12)
    assert model.train() is model and model.training


def sgd_losses(steps: int = 300) -> list[float]:
    """Train on a learnable rule (next character = last one + 1, mod V) with torch's SGD."""
    model = tiny_model(momentum=0.1)
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        X = torch.randint(0, V, (BATCH, BLOCK), generator=g)
        losses.append(model.loss_and_grads(X, (X[:, -1] + 1) % V))
        opt.step()
    return losses


def test_sgd_on_hand_written_gradients_learns_a_pattern_deterministically():
    losses = sgd_losses()
    assert losses[0] > 3.0  # about log(27) = 3.3 at init
    assert sum(losses[-20:]) / 20 < 0.5
    assert sgd_losses() == losses  # same seed, same losses, exactly


@pytest.mark.parametrize("kwargs", [{"momentum": 0.0}, {"momentum": 1.5}, {"eps": 0.0}, {"n_hidden": 0}])
def test_bad_settings_are_refused_at_construction(kwargs):
    with pytest.raises(ValueError, match="ManualMLP"):
        ManualMLP(V, **kwargs)


def test_training_on_one_row_or_the_wrong_context_explains_the_fix():
    model = tiny_model()
    X, Y = random_batch(n=1)
    with pytest.raises(ValueError, match="eval"):
        model.loss_and_grads(X, Y)
    with pytest.raises(ValueError, match="block_size=3"):
        model.forward(torch.zeros(4, 2, dtype=torch.long), Y.repeat(4))
