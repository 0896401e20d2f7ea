"""Where a run is: the loop's counters and the random generators' states, as plain containers
(tensors, numbers, strings) so that ``torch.load(weights_only=True)`` can read them back."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TrainState:
    step: int = 0            # optimizer steps taken
    tokens: int = 0          # tokens trained on
    elapsed: float = 0.0     # training wall-clock seconds, summed across resumes
    best_val: float = math.inf
    last_val: float | None = None
    evals_since_best: int = 0  # evaluations since the validation loss last improved (early stopping)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            # A counter added later is absent from older checkpoints: it starts again at its default.
            setattr(self, f.name, state[f.name] if f.name in state or f.name != "evals_since_best" else 0)


def capture_rng() -> dict:
    """The global generators' states (Python, NumPy, torch CPU and CUDA)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    s = rng["numpy"]
    np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
