"""The engine: a scalar ``Value`` that remembers how it was computed, so it can be differentiated.

Every operation on Values makes a new Value holding three things besides its number:

- ``_prev``: the Values it was computed from (its inputs in the graph);
- ``_local``: for each input, the *local derivative* d(this)/d(input), worked out while the
  forward number is at hand (for ``a * b`` they are ``b`` and ``a``);
- ``_op``: the operation's name, only for printing and drawing.

``backward()`` then applies the chain rule to the whole graph: it visits the nodes from the
output back to the inputs, each one only after every node that uses it (reverse topological
order), and pushes ``node.grad * local`` into each input's ``grad``. An input used twice gets
two contributions, which add up: that is why ``grad`` is accumulated with ``+=``.

Plain Python numbers mix in freely (``2 * v``, ``v - 1``, ``1 / v``); they are constants, so
they get no node and no gradient. This is the same algorithm as PyTorch's autograd, one
scalar at a time instead of one tensor at a time.
"""

from __future__ import annotations

import math
from numbers import Real

Number = int | float


class Value:
    """A float in a computation graph, with the gradient of the graph's output with respect to it."""

    # Slots: the MLP's graph over a dataset has tens of thousands of these, made every step.
    __slots__ = ("data", "grad", "label", "_prev", "_local", "_op")

    def __init__(self, data: Number, label: str = "", *, _prev: tuple[Value, ...] = (),
                 _local: tuple[float, ...] = (), _op: str = ""):
        self.data = float(data)
        self.grad = 0.0
        self.label = label
        self._prev = _prev
        self._local = _local
        self._op = _op

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.6g}, grad={self.grad:.6g})"

    # --- the operations: each returns its result and the local derivatives of its inputs

    def _binary(self, other: Value | Number, data: float, d_self: float, d_other: float, op: str) -> Value:
        """A two-input result; a plain number on the other side is a constant, so not an input
        (its name goes into the op instead: ``v * 2`` is the one-input op ``*2``)."""
        if isinstance(other, Value):
            return Value(data, _prev=(self, other), _local=(d_self, d_other), _op=op)
        return Value(data, _prev=(self,), _local=(d_self,), _op=f"{op}{other:g}")

    def _unary(self, data: float, d_self: float, op: str) -> Value:
        return Value(data, _prev=(self,), _local=(d_self,), _op=op)

    def __add__(self, other: Value | Number) -> Value:
        # d(a + b)/da = 1 and d(a + b)/db = 1: a sum passes the gradient through unchanged.
        return self._binary(other, self.data + _number(other), 1.0, 1.0, "+")

    def __sub__(self, other: Value | Number) -> Value:
        return self._binary(other, self.data - _number(other), 1.0, -1.0, "-")

    def __mul__(self, other: Value | Number) -> Value:
        # d(a * b)/da = b: each factor's gradient is scaled by the *other* factor.
        b = _number(other)
        return self._binary(other, self.data * b, b, self.data, "*")

    def __truediv__(self, other: Value | Number) -> Value:
        # d(a / b)/da = 1/b and d(a / b)/db = -a/b**2.
        b = _number(other)
        return self._binary(other, self.data / b, 1.0 / b, -self.data / (b * b), "/")

    def __pow__(self, exponent: Number) -> Value:
        # d(a**n)/da = n * a**(n-1). The exponent is a constant: a Value exponent would need
        # d/dn = a**n * log(a), which the lesson does not need.
        if not isinstance(exponent, Real):
            raise TypeError(f"Value ** only takes a number exponent, not {type(exponent).__name__}")
        n = float(exponent)
        return self._unary(self.data ** n, n * self.data ** (n - 1), f"**{exponent:g}")

    def __neg__(self) -> Value:
        return self._unary(-self.data, -1.0, "-")

    # Reflected forms, for a plain number on the left: 2 * v calls v.__rmul__(2).
    def __radd__(self, other: Number) -> Value:
        return self + other

    def __rmul__(self, other: Number) -> Value:
        return self * other

    def __rsub__(self, other: Number) -> Value:  # other - self
        return self._unary(other - self.data, -1.0, f"{other:g}-")

    def __rtruediv__(self, other: Number) -> Value:  # other / self
        return self._unary(other / self.data, -other / (self.data * self.data), f"{other:g}/")

    def exp(self) -> Value:
        e = math.exp(self.data)
        return self._unary(e, e, "exp")  # the exponential is its own derivative

    def log(self) -> Value:
        return self._unary(math.log(self.data), 1.0 / self.data, "log")

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        return self._unary(t, 1.0 - t * t, "tanh")  # written with the output: no second tanh needed

    def relu(self) -> Value:
        # The kink at 0 gets derivative 0, as in PyTorch.
        return self._unary(max(self.data, 0.0), 1.0 if self.data > 0 else 0.0, "relu")

    # --- the backward pass

    def backward(self) -> None:
        """Fill ``grad`` of every Value this one was computed from with d(self)/d(that Value).

        Leaves (Values made directly, such as weights) *accumulate* into ``grad`` as in
        PyTorch, so zero them between steps; results of operations are recomputed from 0.
        """
        order = topological_order(self)
        for node in order:
            if node._prev:
                node.grad = 0.0
        self.grad += 1.0  # d(self)/d(self)
        for node in reversed(order):  # every node after all the nodes that use it
            for child, local in zip(node._prev, node._local):
                child.grad += local * node.grad  # the chain rule, one edge at a time


def _number(x: Value | Number) -> float:
    return x.data if isinstance(x, Value) else float(x)


def topological_order(root: Value) -> list[Value]:
    """Every Value ``root`` depends on, each listed after all of its inputs (``root`` last).

    A depth-first search with an explicit stack rather than recursion: Python's recursion
    limit (about 1000) is far below the depth of a training step's graph. Each node goes on the
    stack twice: once to open it (push its inputs) and once, under them, to emit it after they
    are all done.
    """
    order: list[Value] = []
    opened: set[int] = set()
    stack: list[tuple[Value, bool]] = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in opened:  # reached again through another path: already listed or on its way
            continue
        opened.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in node._prev if id(child) not in opened)
    return order

