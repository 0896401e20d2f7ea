"""What to train in a time budget: the 'auto' preset on a CPU, chosen by measurement.

The rule: take the largest preset of the ladder that the budget can still train on about
20 tokens per parameter (Chinchilla's compute-optimal ratio, Hoffmann et al. 2022), its
tokens being what *this* machine trains of it in the budget, measured. Anything larger
sees too few tokens to learn what it could; anything smaller stops improving per token.
bench/sweep_time_budget.py measured the rule's choices against the alternatives (the
numbers are in the README's "What to expect" section): on a 2-core CPU char-tiny wins up
to about an hour, where char-small starts to see its 20 tokens per parameter.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..device import autocast, cpu_has_bf16, fastest
from ..model import GPT, GPTConfig
from ..presets import get_preset

LADDER = ("char-tiny", "char-small", "baby")  # smallest first
TOKENS_PER_PARAM = 20
# A larger model runs at most this many times the smallest one's FLOP/s (bigger matmuls
# use the machine better: 2.3x from char-tiny to baby on a 2-core AMX Xeon). A step
# of the ladder that cannot qualify even so is ruled out without timing it.
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
    """The ladder's largest preset that ``seconds`` of this CPU trains on at least
    TOKENS_PER_PARAM tokens per (non-embedding) parameter; the smallest when none does."""
    chosen, first_rate, said = LADDER[0], None, []
    for name in LADDER:
        preset = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            model = GPT(GPTConfig(**preset.model, vocab_size=vocab_size))
        params, per_token = model.num_params(non_embedding=True), model.flops_per_token()
        need = TOKENS_PER_PARAM * params
        if first_rate is not None and MAX_SPEEDUP * first_rate * seconds / per_token < need:
            break  # out of reach even at the best speed-up: not worth timing
        rate = max(speed(model, preset.train.get("batch_size", 32)).values()) * per_token  # FLOP/s
        first_rate = first_rate or rate
        ratio = rate * seconds / per_token / params
        said.append(f"{name} {ratio:.1f}")
        if name != LADDER[0] and ratio < TOKENS_PER_PARAM:
            break
        chosen = name
    log(f"preset auto: {chosen} for {seconds:.0f} s (tokens per parameter this machine trains in that time: "
        f"{', '.join(said)}; the largest with >= {TOKENS_PER_PARAM} wins, else the smallest)")
    return chosen
