"""A neural network out of Values: neuron, layer, multi-layer perceptron (MLP).

Nothing here knows about gradients: a forward pass only does arithmetic on Values, and the
engine records the graph as it goes. Training is then ``loss.backward()`` followed by a
small step against each parameter's ``grad``, as in :mod:`.demo`.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from .engine import Number, Value


class Module:
    """What every part of the network shares: its parameters, and clearing their gradients."""

    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        # Leaf gradients accumulate across backward() calls (as in PyTorch): clear them each step.
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """``act(w . x + b)``: a weighted sum of the inputs, then an optional ReLU."""

    def __init__(self, n_in: int, rng: random.Random, *, relu: bool = True):
        # Uniform in [-1, 1]. Deep nets scale this down by 1/sqrt(n_in) to keep activations of
        # size ~1 through many layers; this net is shallow, and measured on the lesson (moons,
        # 100 steps, lr 1, seeds 1337 and 1) the larger weights train faster: 100% and 100%
        # accuracy against 95% and 99% with the 1/sqrt(n_in) scale.
        self.w = [Value(rng.uniform(-1.0, 1.0)) for _ in range(n_in)]
        self.b = Value(0.0)
        self.relu = relu

    def __call__(self, x: Sequence[Value | Number]) -> Value:
        act = self.b
        for wi, xi in zip(self.w, x):
            act = act + wi * xi
        return act.relu() if self.relu else act

    def parameters(self) -> list[Value]:
        return self.w + [self.b]

    def __repr__(self) -> str:
        return f"{'ReLU' if self.relu else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    """``n_out`` neurons that all read the same inputs."""

    def __init__(self, n_in: int, n_out: int, rng: random.Random, *, relu: bool = True):
        self.neurons = [Neuron(n_in, rng, relu=relu) for _ in range(n_out)]

    def __call__(self, x: Sequence[Value | Number]) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        n = self.neurons[0]
        return f"Layer({len(n.w)} -> {len(self.neurons)}, {'ReLU' if n.relu else 'linear'})"


class MLP(Module):
    """Layers of sizes ``n_in -> sizes[0] -> ... -> sizes[-1]``: ReLU in the hidden layers, and a
    linear last layer, so its outputs are unbounded scores rather than clipped at 0."""

    def __init__(self, n_in: int, sizes: Sequence[int], rng: random.Random):
        dims = [n_in, *sizes]
        last = len(sizes) - 1
        self.layers = [Layer(dims[i], dims[i + 1], rng, relu=i != last) for i in range(len(sizes))]

    def __call__(self, x: Sequence[Value | Number]) -> list[Value]:
        out = self.layers[0](x)
        for layer in self.layers[1:]:
            out = layer(out)
        return out

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        widths = [len(self.layers[0].neurons[0].w)] + [len(layer.neurons) for layer in self.layers]
        return f"MLP({' -> '.join(map(str, widths))})"


def scores(model: MLP, points: np.ndarray) -> np.ndarray:
    """The model's scores for many points (N, 2) -> (N,), as matrix products with numpy.

    The same arithmetic as calling the model on each point, but without building a graph:
    drawing the decision boundary needs tens of thousands of scores and no gradients.
    """
    h = points
    for layer in model.layers:
        W = np.array([[w.data for w in n.w] for n in layer.neurons])  # (n_out, n_in)
        b = np.array([n.b.data for n in layer.neurons])  # (n_out,)
        h = h @ W.T + b  # (N, n_out)
        if layer.neurons[0].relu:
            h = np.maximum(h, 0.0)
    return h[:, 0]
