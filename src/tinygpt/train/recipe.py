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
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..device import autocast, cpu_has_bf16, fastest
from ..model import GPT, GPTConfig
from ..presets import get_preset

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


def preset_for_time(seconds: float, vocab_size: int, log: Callable[[str], None] = print,
                    speed: Callable[[GPT, int], dict[torch.dtype, float]] = training_speed) -> str:
    """The ladder's preset whose tokens per (non-embedding) parameter, trained in
    ``seconds`` on this CPU, come nearest TOKENS_PER_PARAM (nearest as a ratio)."""
    best, best_gap, first_rate, said = LADDER[0], math.inf, None, []
    for name in LADDER:
        preset = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            model = GPT(GPTConfig(**preset.model, vocab_size=vocab_size))
        params, per_token = model.num_params(non_embedding=True), model.flops_per_token()
        if first_rate is not None:
            hopeful = MAX_SPEEDUP * first_rate * seconds / per_token / params
            if hopeful < TOKENS_PER_PARAM and math.log(TOKENS_PER_PARAM / hopeful) >= best_gap:
                break  # cannot come nearer even at the best speed-up: not worth timing
        rate = max(speed(model, preset.train.get("batch_size", 32)).values()) * per_token  # FLOP/s
        first_rate = first_rate or rate
        ratio = rate * seconds / per_token / params
        said.append(f"{name} {ratio:.1f}")
        gap = abs(math.log(ratio / TOKENS_PER_PARAM))
        if gap < best_gap:
            best, best_gap = name, gap
        if ratio < TOKENS_PER_PARAM:
            break  # the larger ones fall further below
    log(f"preset auto: {best} for {seconds:.0f} s (tokens per parameter this machine trains in that time: "
        f"{', '.join(said)}; nearest {TOKENS_PER_PARAM:g} wins)")
    return best
