"""The lesson: train a tiny MLP made of Values to separate two classes of 2-D points.

The data are generated (two moons, or two spirals), the model is :class:`.nn.MLP`, the loss
is the max-margin (hinge) loss of a support vector machine plus L2 weight decay, and the
optimiser is plain gradient descent on the whole data set with a linearly decaying step.
:func:`run_lesson` does it all and draws the pictures (:mod:`.draw`); ``tinygpt learn
micrograd`` is a thin wrapper over it.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ...config import check_choices, like, opt, parse_ints
from ...device import RuntimeConfig
from ...errors import TinyGPTError
from ...train.config import TrainConfig
from .engine import Value
from .nn import MLP

DATASETS = ("moons", "spirals")


@dataclass
class MicrogradConfig:
    """Everything the lesson's result depends on; the same config and seed give the same numbers."""

    dataset: str = opt("moons", "the 2-D toy data set", choices=DATASETS)
    samples: int = opt(100, "points in the data set, half of each class")
    noise: float = opt(0.1, "standard deviation of the Gaussian noise added to each point")
    hidden: tuple[int, ...] = opt((16, 16), "hidden layer sizes, comma-separated, e.g. 16,16", parse=parse_ints)
    max_steps: int = like(TrainConfig, "max_steps", 100, aliases=("--steps",))  # each on the whole data set
    lr: float = opt(1.0, "peak learning rate", shown="1.0, decaying to a tenth of it by the end")
    l2: float = opt(1e-4, "L2 weight decay: the loss adds l2 * (sum of squared parameters)")
    seed: int = like(RuntimeConfig, "seed", 1337)  # the data and the initial weights

    def __post_init__(self):
        check_choices(self)
        self.hidden = parse_ints(self.hidden)
        if self.samples < 2:
            raise TinyGPTError(f"--samples must be at least 2 (one point per class), got {self.samples}")
        if not self.hidden or min(self.hidden) < 1:
            raise TinyGPTError(f"--hidden needs one or more positive layer sizes such as 16,16, got "
                               f"{','.join(map(str, self.hidden)) or 'nothing'}")
        if self.max_steps is None or self.max_steps < 0:
            raise TinyGPTError(f"--max-steps must be 0 or more, got {self.max_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TinyGPTError(f"--lr must be a positive number such as 1.0, got {self.lr}")
        for name in ("l2", "noise"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise TinyGPTError(f"--{name} must be a number of at least 0, got {getattr(self, name)}")

    @property
    def sizes(self) -> list[int]:
        """Layer widths from input to output: 2 coordinates in, 1 score out."""
        return [2, *self.hidden, 1]


# ---------------------------------------------------------------------------- data

def make_moons(n: int, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles: ``X`` (n, 2) float64 and labels ``y`` (n,) in {-1, +1}.

    The upper moon (label -1) is centred at (0, 0), the lower one (+1) at (1, 0.5), so no
    straight line separates them: a linear model tops out near 85% and the MLP must bend.
    """
    rng = np.random.default_rng(seed)
    n_up = n // 2
    t_up, t_down = np.linspace(0, math.pi, n_up), np.linspace(0, math.pi, n - n_up)
    up = np.stack([np.cos(t_up), np.sin(t_up)], axis=1)
    down = np.stack([1 - np.cos(t_down), 0.5 - np.sin(t_down)], axis=1)
    X = np.concatenate([up, down]) + rng.normal(0.0, noise, size=(n, 2))
    y = np.concatenate([-np.ones(n_up, dtype=np.int64), np.ones(n - n_up, dtype=np.int64)])
    return X, y


def make_spirals(n: int, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two spiral arms winding 1.5 turns around the origin, half a turn apart; shapes as
    :func:`make_moons`. Much harder than the moons: give it more steps."""
    rng = np.random.default_rng(seed)
    n_neg = n // 2
    parts = []
    for count, phase in ((n_neg, 0.0), (n - n_neg, math.pi)):
        t = np.linspace(0.0, 1.0, count)
        radius, angle = 0.1 + t, 3 * math.pi * t + phase  # radius grows as the arm turns
        parts.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
    X = np.concatenate(parts) + rng.normal(0.0, noise, size=(n, 2))
    y = np.concatenate([-np.ones(n_neg, dtype=np.int64), np.ones(n - n_neg, dtype=np.int64)])
    return X, y


def make_dataset(cfg: MicrogradConfig) -> tuple[np.ndarray, np.ndarray]:
    make = make_moons if cfg.dataset == "moons" else make_spirals
    return make(cfg.samples, cfg.noise, cfg.seed)


# ---------------------------------------------------------------------------- loss and training

def hinge_loss(model: MLP, X: np.ndarray, y: np.ndarray, l2: float = 0.0) -> tuple[Value, float]:
    """Mean max-margin loss ``relu(1 - y * score)`` plus ``l2 * sum(p**2)``; and the accuracy.

    A point adds nothing once it is on the right side by a margin of 1 (``y * score >= 1``),
    so training stops pushing on points it already gets right and works on the rest.
    """
    outs = [model(x)[0] for x in X.tolist()]  # plain floats in: the inputs need no gradient
    margins = [(1 - yi * s).relu() for yi, s in zip(y.tolist(), outs)]
    loss = sum(margins) / len(margins)
    if l2:
        loss = loss + l2 * sum(p * p for p in model.parameters())
    accuracy = sum((s.data > 0) == (yi > 0) for yi, s in zip(y.tolist(), outs)) / len(outs)
    return loss, accuracy


@dataclass
class Step:
    """What one training step saw, before its update."""

    step: int
    loss: float
    accuracy: float
    lr: float


@dataclass
class Result:
    """A trained model, its data and how training went (accuracy on the training points);
    ``pictures`` once :func:`run_lesson` has drawn them."""

    cfg: MicrogradConfig
    model: MLP
    X: np.ndarray
    y: np.ndarray
    history: list[Step]
    loss: float  # of the trained model
    accuracy: float
    pictures: list[Path] = field(default_factory=list)


@contextmanager
def _no_cycle_collector() -> Iterator[None]:
    """Pause Python's cycle collector. A step makes ~65,000 Values and the collector scans
    them over and over, doubling the step time; the graph has no cycles (a Value points only
    to its inputs), so reference counting frees it anyway once the step is over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def train(cfg: MicrogradConfig, on_step: Callable[[Step], None] | None = None) -> Result:
    """Gradient descent on the whole data set for ``cfg.max_steps`` steps; ``on_step`` sees each step."""
    X, y = make_dataset(cfg)
    model = MLP(2, cfg.sizes[1:], random.Random(cfg.seed))
    history = []
    with _no_cycle_collector():
        for step in range(1, cfg.max_steps + 1):
            loss, accuracy = hinge_loss(model, X, y, cfg.l2)
            model.zero_grad()
            loss.backward()
            # Big steps first to get to the right region, smaller ones later to settle in it.
            lr = cfg.lr * (1.0 - 0.9 * (step - 1) / cfg.max_steps)
            for p in model.parameters():
                p.data -= lr * p.grad
            history.append(Step(step, loss.data, accuracy, lr))
            if on_step is not None:
                on_step(history[-1])
        loss, accuracy = hinge_loss(model, X, y, cfg.l2)
    return Result(cfg, model, X, y, history, loss.data, accuracy)


# ---------------------------------------------------------------------------- the small expression

def neuron_expression() -> Value:
    """``o = tanh(x1*w1 + x2*w2 + b)`` with every node labelled, after ``o.backward()``: the
    graph the lesson draws. One neuron is the smallest piece of the MLP worth looking at."""
    x1, x2 = Value(2.0, "x1"), Value(-1.0, "x2")
    w1, w2, b = Value(-0.5, "w1"), Value(1.5, "w2"), Value(3.2, "b")
    x1w1, x2w2 = x1 * w1, x2 * w2
    x1w1.label, x2w2.label = "x1*w1", "x2*w2"
    s = x1w1 + x2w2
    s.label = "x1*w1 + x2*w2"
    n = s + b
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    o.backward()
    return o


def run_lesson(cfg: MicrogradConfig, out: str | Path, on_step: Callable[[Step], None] | None = None) -> Result:
    """Train, then draw the decision boundary and the neuron's graph into ``out``."""
    from . import draw  # matplotlib loads only when drawing

    result = train(cfg, on_step)
    out = Path(out)
    title = (f"{cfg.dataset}: MLP {'-'.join(map(str, cfg.sizes))} after {cfg.max_steps} steps, "
             f"accuracy {result.accuracy:.0%}, loss {result.loss:.3f}")
    boundary = draw.decision_boundary(result.model, result.X, result.y, out / "decision_boundary.png", title)
    graph = draw.graph(neuron_expression(), out / "graph.png",
                       title="o = tanh(x1*w1 + x2*w2 + b): each box's value, and the gradient do/d(box)")
    return dataclasses.replace(result, pictures=[boundary, graph])
