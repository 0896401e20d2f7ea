"""The time-budget recipe: the char preset this machine trains on the best tokens per parameter."""

import math

import pytest
import torch

from tinygpt.device import cpu_has_bf16
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.presets import get_preset
from tinygpt.train import Session
from tinygpt.train.recipe import (
    LADDER,
    TOKENS_PER_PARAM,
    ScalingLaw,
    best_ratio,
    preset_for_time,
    profile_path,
    save_law,
    saved_law,
    training_speed,
)

VOCAB = 84


def sizes(name):
    model = GPT(GPTConfig(**get_preset(name).model, vocab_size=VOCAB))
    return model.num_params(non_embedding=True), model.flops_per_token()


def constant_flops(flops_per_s, timed):
    """A speed function for a machine that runs every model at ``flops_per_s``; records what it timed."""
    def speed(model, batch_size):
        timed.append(model.config.n_embd)
        return {torch.float32: flops_per_s / model.flops_per_token()}
    return speed


def boundary(a, b, flops_per_s):
    """The budget at which presets ``a`` and ``b`` are equally far (as ratios) from
    TOKENS_PER_PARAM tokens per parameter: their ratios' product is its square."""
    (pa, fa), (pb, fb) = sizes(a), sizes(b)
    return TOKENS_PER_PARAM * math.sqrt(fa * pa * fb * pb) / flops_per_s


@pytest.mark.parametrize("i", range(1, len(LADDER)))
def test_the_preset_nearest_the_best_tokens_per_parameter_is_chosen(i):
    F = 1e11
    below, above = LADDER[i - 1], LADDER[i]
    t = boundary(below, above, F)
    assert preset_for_time(t * 0.99, VOCAB, log=lambda _: None, speed=constant_flops(F, [])) == below
    assert preset_for_time(t * 1.01, VOCAB, log=lambda _: None, speed=constant_flops(F, [])) == above


def test_the_smallest_preset_for_short_budgets_and_out_of_reach_sizes_are_not_timed():
    timed, said = [], []
    seconds = 1.0
    assert preset_for_time(seconds, VOCAB, log=said.append, speed=constant_flops(1e11, timed)) == LADDER[0]
    assert timed == [get_preset(LADDER[0]).model["n_embd"]]  # the next size cannot come nearer: never timed
    params, per_token = sizes(LADDER[0])
    assert said[0].startswith(f"preset auto: {LADDER[0]} for 1 s (tokens per parameter this machine trains in "
                              f"that time: {LADDER[0]} {1e11 * seconds / per_token / params:.1f};")
    # A size within reach of the speed-up bound is timed, and here still loses.
    timed.clear()
    t = boundary(LADDER[0], LADDER[1], 1e11) / 1.5
    assert preset_for_time(t, VOCAB, log=lambda _: None, speed=constant_flops(1e11, timed)) == LADDER[0]
    assert timed == [get_preset(n).model["n_embd"] for n in LADDER[:2]]


def test_training_speed_measures_each_dtype_and_leaves_state_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=VOCAB))
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.random.get_rng_state()
    speed = training_speed(model, batch_size=4)
    assert set(speed) == ({torch.float32, torch.bfloat16} if cpu_has_bf16() else {torch.float32})
    assert all(v > 0 for v in speed.values())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_session_sizes_auto_to_its_time_budget_and_records_the_choice(tmp_path, monkeypatch):
    import tinygpt.train.resolve as resolve_module

    asked = []

    def pick(seconds, vocab_size, log):
        asked.append((seconds, vocab_size))
        return "char-small"

    monkeypatch.setattr(resolve_module, "preset_for_time", pick)
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh" * 2000)
    common = {"data": str(text), "device": "cpu", "dtype": "fp32", "progress": False}
    session = Session.start({**common, "out": str(tmp_path / "a"), "max_time": "2m"}, log=lambda _: None)
    assert asked == [(120.0, 8)] and session.cfg.preset == "char-small"
    assert session.cfg.model.n_embd == get_preset("char-small").model["n_embd"]
    # A step or token budget, or a named preset, keeps the preset as given.
    for i, extra in enumerate(({"max_steps": 5}, {"max_tokens": "10k"}, {"preset": "char-tiny"})):
        session = Session.start({**common, "out": str(tmp_path / f"b{i}"), **extra},
                                log=lambda _: None)
        assert session.cfg.preset == "char-tiny"
    assert len(asked) == 1


def test_a_fitted_law_moves_the_target_to_its_compute_optimal_ratio(tmp_path):
    # alpha = beta: the compute-optimal ratio is (B / A)^(1 / alpha) at every budget, here 20.
    law = ScalingLaw(E=1.0, A=1.0, B=math.sqrt(20.0), alpha=0.5, beta=0.5)
    assert best_ratio(law, 1e6, 1e8) == pytest.approx(20.0, rel=1e-9)
    F, (below, above) = 1e11, LADDER[:2]
    t = boundary(below, above, F) * 20.0 / TOKENS_PER_PARAM  # where the two sizes are equally far from 20
    pick = [preset_for_time(t * k, VOCAB, log=lambda _: None, speed=constant_flops(F, []), law=law)
            for k in (0.99, 1.01)]
    assert pick == [below, above]
    # Without a saved profile the fixed rule holds; with one, auto reads it.
    assert saved_law() is None
    said = []
    path = save_law(law, 1e11)
    assert path == profile_path() and saved_law() == law
    assert preset_for_time(t * 1.01, VOCAB, log=said.append, speed=constant_flops(F, [])) == above
    assert "compute-optimal ratio of this machine's fitted scaling law" in said[0]
    path.write_text('{"law": {"E": "x"}}')
    with pytest.raises(TinyGPTError, match="is not a scaling profile tinygpt wrote; delete it"):
        saved_law()
