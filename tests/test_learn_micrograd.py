"""micrograd: the scalar engine and the MLP against PyTorch's autograd (float64), the lesson, the CLI."""

import math
import random

import numpy as np
import pytest
import torch

from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.learn.micrograd import (
    MLP,
    MicrogradConfig,
    Value,
    hinge_loss,
    make_moons,
    make_spirals,
    neuron_expression,
    scores,
    topological_order,
    train,
)
from tinygpt.learn.micrograd.draw import ROW, _layout
from tinygpt.learn.micrograd.draw import graph as draw_graph


def close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# ---------------------------------------------------------------------------- random expressions
# An expression is a recipe: a list of (op, operand indices, constant) over a growing pool of
# nodes. Replaying the same recipe on Values and on torch tensors gives two graphs to compare.
# Operands are drawn from the whole pool, so nodes are reused and gradients must accumulate.

UNARY = {
    "neg": lambda a, c: -a, "exp": lambda a, c: a.exp(), "log": lambda a, c: a.log(),
    "tanh": lambda a, c: a.tanh(), "relu": lambda a, c: a.relu(), "pow": lambda a, c: a ** c,
    "add_c": lambda a, c: a + c, "radd_c": lambda a, c: c + a, "sub_c": lambda a, c: a - c,
    "rsub_c": lambda a, c: c - a, "mul_c": lambda a, c: a * c, "rmul_c": lambda a, c: c * a,
    "div_c": lambda a, c: a / c, "rdiv_c": lambda a, c: c / a,
}
BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b}


def _allowed(op: str, a: float, c: float, b: float | None = None) -> bool:
    """Keep every step inside its domain and the numbers of moderate size."""
    if op == "log":
        return a > 0.1
    if op == "exp":
        return abs(a) < 3
    if op == "pow":
        return a > 0.2 if not float(c).is_integer() else (abs(a) > 0.2 or c >= 0) and abs(a) < 5
    if op == "rdiv_c":
        return abs(a) > 0.2
    if op == "div":
        return abs(b) > 0.2
    if op == "mul":
        return abs(a * b) < 50
    return True


def random_recipe(rng: random.Random, n_leaves: int = 4, n_ops: int = 25) -> tuple[list[float], list[tuple]]:
    leaves = [rng.uniform(-2, 2) for _ in range(n_leaves)]
    pool = [Value(x) for x in leaves]
    steps = []
    while len(steps) < n_ops:
        op = rng.choice(list(UNARY) + list(BINARY))
        i, j = rng.randrange(len(pool)), rng.randrange(len(pool))  # i == j is allowed: x * x, x - x
        c = rng.choice([2, 3, -1, 0.5, -1.5]) if op == "pow" else rng.choice([-1.5, 0.5, 2.0, 3.0])
        a, b = pool[i].data, pool[j].data
        if op in BINARY:
            if not _allowed(op, a, c, b):
                continue
            out = BINARY[op](pool[i], pool[j])
        else:
            if not _allowed(op, a, c):
                continue
            out = UNARY[op](pool[i], c)
        if not abs(out.data) < 1e3:
            continue
        pool.append(out)
        steps.append((op, i, j, c))
    return leaves, steps


def replay(leaves: list, steps: list[tuple]) -> list:
    """The recipe on any numbers that support the ops (Values or torch tensors); returns the pool,
    with one more node: the sum of the last three results, so the output reads several paths."""
    pool = list(leaves)
    for op, i, j, c in steps:
        pool.append(BINARY[op](pool[i], pool[j]) if op in BINARY else UNARY[op](pool[i], c))
    pool.append(pool[-1] + pool[-2] * pool[-3])
    return pool


def test_random_expressions_match_torch_autograd_at_every_node():
    rng = random.Random(0)
    seen_ops = set()
    for _ in range(150):
        leaves, steps = random_recipe(rng)
        seen_ops.update(op for op, *_ in steps)
        ours = replay([Value(x) for x in leaves], steps)
        theirs = replay([torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in leaves], steps)
        for t in theirs:
            if t.requires_grad and not t.is_leaf:
                t.retain_grad()
        ours[-1].backward()
        theirs[-1].backward()
        for v, t in zip(ours, theirs):
            assert close(v.data, t.item())
            if t.requires_grad:  # a node built from constants only has no gradient in torch
                assert close(v.grad, 0.0 if t.grad is None else t.grad.item()), (steps, v, t)
    assert seen_ops == set(UNARY) | set(BINARY)  # every operation was exercised


def test_reused_nodes_accumulate_gradient():
    x = Value(3.0)
    y = x * x + x / x - x  # dy/dx = 2x + 0 - 1
    y.backward()
    assert y.data == 7.0 and x.grad == 5.0


def test_backward_twice_accumulates_into_leaves_like_torch():
    a, b = Value(0.3), Value(-1.2)
    out = (a * b).tanh() + a.exp()
    out.backward()
    out.backward()
    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.3, -1.2))
    tout = (ta * tb).tanh() + ta.exp()
    tout.backward(retain_graph=True)
    tout.backward()
    assert close(a.grad, ta.grad.item()) and close(b.grad, tb.grad.item())


def test_backward_handles_graphs_deeper_than_the_recursion_limit():
    x = Value(0.5)
    y = x
    for _ in range(20_000):
        y = y + x
    y.backward()
    assert x.grad == 20_001.0
    order = topological_order(y)
    assert len(order) == 20_001 and order[0] is x and order[-1] is y


def test_pow_takes_only_a_number_exponent():
    with pytest.raises(TypeError, match="number exponent"):
        Value(2.0) ** Value(3.0)


# ---------------------------------------------------------------------------- the MLP against a torch replica

def torch_loss(model: MLP, X: np.ndarray, y: np.ndarray, l2: float):
    """The same network and loss with torch float64 tensors, weights copied from ``model``."""
    params, h = [], torch.tensor(X, dtype=torch.float64)
    for k, layer in enumerate(model.layers):
        W = torch.tensor([[w.data for w in n.w] for n in layer.neurons], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([n.b.data for n in layer.neurons], dtype=torch.float64, requires_grad=True)
        params.append((W, b))
        h = h @ W.T + b
        if k < len(model.layers) - 1:
            h = h.relu()
    s = h[:, 0]
    loss = (1 - torch.tensor(y, dtype=torch.float64) * s).relu().mean()
    loss = loss + l2 * sum((W ** 2).sum() + (b ** 2).sum() for W, b in params)
    return loss, params


def test_mlp_loss_and_every_gradient_match_torch():
    X, y = make_moons(24, noise=0.2, seed=3)
    model = MLP(2, [6, 5, 1], random.Random(0))
    loss, accuracy = hinge_loss(model, X, y, l2=1e-3)
    model.zero_grad()
    loss.backward()
    tloss, params = torch_loss(model, X, y, l2=1e-3)
    tloss.backward()
    assert close(loss.data, tloss.item())
    assert loss.data > 0.1  # many points inside the margin: the gradients are not trivially zero
    for layer, (W, b) in zip(model.layers, params):
        for i, n in enumerate(layer.neurons):
            assert close(n.b.grad, b.grad[i].item())
            for j, w in enumerate(n.w):
                assert close(w.grad, W.grad[i, j].item())
    assert len(model.parameters()) == (2 * 6 + 6) + (6 * 5 + 5) + (5 + 1)


def test_zero_grad_clears_every_parameter():
    X, y = make_moons(6, seed=0)
    model = MLP(2, [3, 1], random.Random(0))
    hinge_loss(model, X, y, 0.1)[0].backward()
    assert any(p.grad != 0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0 for p in model.parameters())


def test_numpy_scores_are_the_models_scores():
    X, _ = make_spirals(10, seed=1)
    model = MLP(2, [5, 4, 1], random.Random(2))
    expected = [model(x)[0].data for x in X.tolist()]
    assert np.allclose(scores(model, X), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- data and training

@pytest.mark.parametrize("make", [make_moons, make_spirals])
def test_data_sets_are_deterministic_with_balanced_labels(make):
    X, y = make(31, 0.1, seed=5)
    assert X.shape == (31, 2) and X.dtype == np.float64 and y.shape == (31,)
    assert (y == -1).sum() == 15 and (y == 1).sum() == 16
    X2, y2 = make(31, 0.1, seed=5)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(X, make(31, 0.1, seed=6)[0])


def test_data_sets_have_their_shapes_without_noise():
    X, y = make_moons(40, noise=0.0)
    assert np.allclose(np.linalg.norm(X[y == -1], axis=1), 1.0)  # the upper moon: unit circle at (0, 0)
    assert np.allclose(np.linalg.norm(X[y == 1] - [1.0, 0.5], axis=1), 1.0)  # the lower one at (1, 0.5)
    X, y = make_spirals(40, noise=0.0)
    assert np.allclose(X[y == 1], -X[y == -1])  # the second arm is the first turned half a turn


def test_training_separates_the_moons_deterministically():
    cfg = MicrogradConfig(samples=40, hidden=(8, 8), max_steps=40, seed=1)
    seen = []
    result = train(cfg, on_step=seen.append)
    losses = [s.loss for s in result.history]
    assert seen == result.history and [s.step for s in seen] == list(range(1, 41))
    assert result.accuracy >= 0.95 and result.history[0].accuracy < 0.9
    assert result.loss < 0.3 * losses[0] and losses[-1] < losses[0]
    again = train(cfg)
    assert [s.loss for s in again.history] == losses and again.accuracy == result.accuracy


@pytest.mark.parametrize("values, message", [
    (dict(hidden=(0,)), "--hidden"), (dict(hidden=()), "--hidden"), (dict(samples=1), "--samples"),
    (dict(max_steps=-1), "--max-steps"), (dict(lr=0.0), "--lr"), (dict(noise=-0.1), "--noise"),
    (dict(dataset="circles"), "--dataset"),
])
def test_bad_settings_say_which_option(values, message):
    with pytest.raises(TinyGPTError, match=message):
        MicrogradConfig(**values)


# ---------------------------------------------------------------------------- the neuron's graph and the CLI

def test_neuron_expression_is_the_neuron():
    o = neuron_expression()
    leaves = {v.label: v for v in topological_order(o) if not v._prev}
    n = sum(leaves[x].data * leaves[w].data for x, w in (("x1", "w1"), ("x2", "w2"))) + leaves["b"].data
    assert close(o.data, math.tanh(n))
    dn = 1 - math.tanh(n) ** 2
    assert close(leaves["w1"].grad, dn * leaves["x1"].data) and close(leaves["b"].grad, dn)


def reused_expression() -> Value:
    x = Value(0.5, "x")
    y = (x * x + x).tanh() * x - 2 * x.relu()  # x feeds four operations, one with a constant
    y.backward()
    return y


@pytest.mark.parametrize("make", [neuron_expression, reused_expression])
def test_graph_layout_keeps_boxes_apart_and_arrows_pointing_right(make, tmp_path):
    root = make()
    pos = _layout(root)
    nodes = topological_order(root)
    assert set(pos) == {id(v) for v in nodes}
    for v in nodes:
        assert all(pos[id(c)][0] < pos[id(v)][0] for c in v._prev)  # every arrow points right
        for u in nodes:
            if u is not v and pos[id(u)][0] == pos[id(v)][0]:  # same column: a full row apart
                assert abs(pos[id(u)][1] - pos[id(v)][1]) >= ROW - 1e-12
    assert draw_graph(root, tmp_path / "g.png").stat().st_size > 10_000


def test_ops_with_constants_name_them():
    x = Value(1.0)
    assert [v._op for v in (x * 2, 2 * x, x + 1, 3 - x, x / 4, 1 / x, x ** 2, -x, x - x)] == \
        ["*2", "*2", "+1", "3-", "/4", "1/", "**2", "-", "-"]


def test_cli_trains_prints_and_draws(tmp_path, capsys):
    rc = main(["learn", "micrograd", "--samples", "16", "--hidden", "4", "--max-steps", "5", "--out", str(tmp_path)])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "accuracy" in out and "step    5" in err
    for name in ("decision_boundary.png", "graph.png"):
        path = tmp_path / name
        assert path.stat().st_size > 10_000 and str(path) in out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_option_is_a_one_line_error(tmp_path, capsys):
    assert main(["learn", "micrograd", "--hidden", "16,0", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --hidden") and "\n" not in err
    assert not list(tmp_path.iterdir())
