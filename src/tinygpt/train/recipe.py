"""What to train in a time budget: the 'auto' preset on a CPU, chosen by measurement.

The rule: of the ladder of char presets, take the one that *this* machine, in the budget,
trains on the number of tokens per parameter that was best in a measured sweep. A larger
model sees too few tokens to learn what it could; a smaller one learns less per token.
Chinchilla's compute-optimal ratio is ~20 tokens per parameter (Hoffmann et al. 2022), but
at this scale, with Muon, the sweep (bench/sweep_time_budget.py: 5-minute runs on
Shakespeare, 2-core AMX Xeon, 4-layer models of three widths) put the best near 3. In one
round the 192-wide model, at 3.1 tokens per parameter, reached val loss 1.464 against the
128-wide's 1.478 at 7.5; in a second, with the machine running ~1.5x slower, 192-wide
(with RoPE) reached 1.475 at 2.1, 128-wide 1.484 at 6.8 and 256-wide 1.496 at 1.0.

Where ``tinygpt scaling`` has fitted Chinchilla's law on this machine and saved it (the
profile in the cache folder), the target is that law's compute-optimal ratio at each
candidate's compute instead of the fixed one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import cache_dir
from ..device import autocast, cpu_has_bf16, fastest
from ..errors import TinyGPTError
from ..model import GPT, GPTConfig
from ..presets import get_preset


@dataclass(frozen=True)
class ScalingLaw:
    """Chinchilla's L(N, D) = E + A / N^alpha + B / D^beta (fitted by ``tinygpt scaling``:
    analysis/scaling.py); here because a saved fit decides what --preset auto trains."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float | np.ndarray, d: float | np.ndarray) -> float | np.ndarray:
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N, D) that minimise the loss at ``flops`` = 6 N D."""
        a, b = self.alpha, self.beta
        if a <= 0 or b <= 0:
            raise TinyGPTError(f"a law with exponents {a:.3g} and {b:.3g} has no compute-optimal size (the loss "
                               "must fall with both parameters and tokens)")
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        n = g * (flops / 6) ** (b / (a + b))
        return n, flops / (6 * n)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILE = "scaling_profile.json"  # in the cache folder: this machine's fitted law (tinygpt scaling)


def profile_path() -> Path:
    return cache_dir() / PROFILE


def saved_law(path: Path | None = None) -> ScalingLaw | None:
    """The law ``tinygpt scaling`` saved for this machine, if it saved one."""
    path = path or profile_path()
    if not path.is_file():
        return None
    try:
        law = ScalingLaw(**{k: float(v) for k, v in json.loads(path.read_text())["law"].items()})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TinyGPTError(f"{path} is not a scaling profile tinygpt wrote; delete it, or run tinygpt scaling "
                           "again to write a new one") from None
    if not all(math.isfinite(v) and v >= 0 for v in asdict(law).values()) or min(law.alpha, law.beta) <= 0:
        raise TinyGPTError(f"{path} holds a law with exponents that are not positive; delete it, or run "
                           "tinygpt scaling again with longer --budgets")
    return law


def save_law(law: ScalingLaw, flops_per_second: float, path: Path | None = None) -> Path:
    """Write ``law`` as this machine's profile (what ``saved_law`` reads)."""
    from ..checkpoint import atomic_write_text

    path = path or profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"law": asdict(law), "flops_per_second": flops_per_second}, indent=1) + "\n")
    return path


def best_ratio(law: ScalingLaw | None, params: float, tokens: float) -> float:
    """Tokens per parameter to aim at for a run of ``params`` on ``tokens``: the law's
    compute-optimal ratio at that run's compute (6 N D), or the measured TOKENS_PER_PARAM."""
    if law is None:
        return TOKENS_PER_PARAM
    n, d = law.optimal(6.0 * params * tokens)
    return d / n


LADDER = ("char-nano", "char-tiny", "char-small", "baby")  # smallest first
TOKENS_PER_PARAM = 3.0
# A larger model runs at most this many times the smallest one's FLOP/s (bigger matmuls
# use the machine better: 2.3x from char-nano to baby on a 2-core AMX Xeon). A step of
# the ladder that could not come nearer the ratio even so is ruled out without timing it.
MAX_SPEEDUP = 4.0


def training_speed(model: GPT, batch_size: int) -> dict[torch.dtype, float]:
    """Tokens/s of ``model``'s forward and backward on this CPU, per autocast dtype worth
    trying (fp32, and bf16 where the CPU has it), on up to ~2,048 tokens of a batch.
    The global random state and the model's gradients are left as they were."""
    T = model.config.block_size
    rows = max(1, min(batch_size, 2048 // T))
    dtypes = (torch.float32, torch.bfloat16) if cpu_has_bf16() else (torch.float32,)
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(model.config.vocab_size, (rows, T))

        def step(dtype: torch.dtype) -> None:
            with autocast(torch.device("cpu"), dtype):
                loss = model(x, x).loss
            loss.backward()

        _, times = fastest({d: (lambda d=d: step(d)) for d in dtypes}, torch.device("cpu"), reps=2)
    model.zero_grad(set_to_none=True)
    return {d: rows * T / s for d, s in times.items()}


_SAVED = object()


def preset_for_time(seconds: float, vocab_size: int, log: Callable[[str], None] = print,
                    speed: Callable[[GPT, int], dict[torch.dtype, float]] = training_speed,
                    law: ScalingLaw | None | object = _SAVED) -> str:
    """The ladder's preset whose tokens per (non-embedding) parameter, trained in
    ``seconds`` on this CPU, come nearest the best ratio (nearest as a ratio): the
    compute-optimal one of the law ``tinygpt scaling`` fitted on this machine where it
    saved one (``law``: default the saved one), else TOKENS_PER_PARAM."""
    law = saved_law() if law is _SAVED else law
    best, best_gap, first_rate, said = LADDER[0], math.inf, None, []
    for name in LADDER:
        preset = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            model = GPT(GPTConfig(**preset.model, vocab_size=vocab_size))
        params, per_token = model.num_params(non_embedding=True), model.flops_per_token()
        if first_rate is not None:
            hopeful = MAX_SPEEDUP * first_rate * seconds / per_token / params
            aim = best_ratio(law, params, hopeful * params)
            if hopeful < aim and math.log(aim / hopeful) >= best_gap:
                break  # cannot come nearer even at the best speed-up: not worth timing
        rate = max(speed(model, preset.train.get("batch_size", 32)).values()) * per_token  # FLOP/s
        first_rate = first_rate or rate
        ratio = rate * seconds / per_token / params
        aim = best_ratio(law, params, ratio * params)
        said.append(f"{name} {ratio:.1f}" + (f" (best {aim:.1f})" if law is not None else ""))
        gap = abs(math.log(ratio / aim))
        if gap < best_gap:
            best, best_gap = name, gap
        if ratio < aim:
            break  # the larger ones fall further below
    rule = ("nearest the compute-optimal ratio of this machine's fitted scaling law wins" if law is not None
            else f"nearest {TOKENS_PER_PARAM:g} wins")
    log(f"preset auto: {best} for {seconds:.0f} s (tokens per parameter this machine trains in that time: "
        f"{', '.join(said)}; {rule})")
    return best
