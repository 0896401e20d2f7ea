"""micrograd: automatic differentiation one scalar at a time, and a neural net built on it.

Read in this order:

- :mod:`.engine`: ``Value``, a number that records the operations that made it, and its
  ``backward()``, the chain rule applied over that record in reverse topological order;
- :mod:`.nn`: ``Neuron``, ``Layer`` and ``MLP`` written with nothing but Values;
- :mod:`.demo`: the lesson: two moons (or spirals), a hinge loss, gradient descent;
- :mod:`.draw`: its pictures, the decision boundary and a neuron's computation graph.

``tinygpt learn micrograd`` runs the lesson; the tests check every gradient against
PyTorch's autograd. The rest of tinygpt uses PyTorch, which does the same on tensors.
"""

from .demo import (
    MicrogradConfig,
    Result,
    Step,
    hinge_loss,
    make_moons,
    make_spirals,
    neuron_expression,
    run_lesson,
    train,
)
from .engine import Value, topological_order
from .nn import MLP, Layer, Module, Neuron, scores

__all__ = [
    "Value", "topological_order", "Module", "Neuron", "Layer", "MLP", "MicrogradConfig", "Result", "Step",
    "make_moons", "make_spirals", "hinge_loss", "train", "scores", "neuron_expression", "run_lesson",
]
