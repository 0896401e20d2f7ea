"""Sampling rules: greedy, temperature, top-k, top-p, and one generator per row."""

import pytest
import torch
from helpers import seeded

from tinygpt.generation import sample_next

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
N_DRAWS = 20000


def draw(logits_row, n=N_DRAWS, seed=0, **kw):
    """n independent draws from one distribution (one row per draw, one call)."""
    return sample_next(logits_row.expand(n, -1), generator=seeded(seed), **kw).view(-1)


def freqs(ids, size=4):
    return torch.bincount(ids, minlength=size).float() / ids.numel()


def test_temperature_zero_is_argmax():
    logits = torch.randn(6, 50, generator=seeded(0))
    for t in (0, 0.0, -1.0):
        out = sample_next(logits, temperature=t, top_k=5, top_p=0.1)
        assert out.shape == (6, 1) and out.dtype == torch.long
        assert torch.equal(out, logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_argmax(temperature):
    logits = torch.randn(64, 50, generator=seeded(1))
    out = sample_next(logits, temperature=temperature, top_k=1, generator=seeded(2))
    assert torch.equal(out, logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("k", [2, 5, 17])
def test_top_k_never_leaves_the_top_k(k):
    logits = torch.randn(1, 50, generator=seeded(3))
    top = set(torch.topk(logits[0], k).indices.tolist())
    ids = draw(logits, n=5000, temperature=3.0, top_k=k)
    assert set(ids.tolist()) == top  # nothing outside, and every member does get drawn


def test_top_k_applies_per_row():
    logits = torch.randn(2, 50, generator=seeded(4))
    tops = [set(torch.topk(row, 3).indices.tolist()) for row in logits]
    ids = sample_next(logits.repeat(2000, 1), temperature=2.0, top_k=3, generator=seeded(5)).view(2000, 2)
    for row in range(2):
        assert set(ids[:, row].tolist()) == tops[row]


@pytest.mark.parametrize("top_p, allowed", [(0.7, {0, 1}), (0.5, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (0.2, {0})])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, allowed):
    ids = draw(PROBS.log().unsqueeze(0), top_p=top_p)
    assert set(ids.tolist()) == allowed
    kept = torch.tensor(sorted(allowed))
    expected = torch.zeros(4)
    expected[kept] = PROBS[kept] / PROBS[kept].sum()  # renormalised over the kept set
    assert (freqs(ids) - expected).abs().max() < 0.02


def test_top_p_applies_per_row():
    # Row 1 is row 0 reversed: the kept ids must follow each row's own ordering.
    logits = torch.stack([PROBS, PROBS.flip(0)]).log()
    ids = sample_next(logits.repeat(5000, 1), top_p=0.7, generator=seeded(6)).view(5000, 2)
    assert set(ids[:, 0].tolist()) == {0, 1}
    assert set(ids[:, 1].tolist()) == {2, 3}


@pytest.mark.parametrize("top_p", [None, 1.0])
def test_draws_follow_the_distribution(top_p):
    ids = draw(PROBS.log().unsqueeze(0), top_p=top_p, top_k=None)
    assert (freqs(ids) - PROBS).abs().max() < 0.02


def test_temperature_reshapes_the_distribution():
    # logits / 2 -> probabilities proportional to sqrt(p).
    ids = draw(PROBS.log().unsqueeze(0), temperature=2.0)
    expected = PROBS.sqrt() / PROBS.sqrt().sum()
    assert (freqs(ids) - expected).abs().max() < 0.02
    cold = draw(PROBS.log().unsqueeze(0), temperature=0.25)
    assert (freqs(cold) - PROBS ** 4 / (PROBS ** 4).sum()).abs().max() < 0.02


def test_top_k_then_top_p():
    # top_k=3 renormalises to [0.526, 0.316, 0.158]; top_p=0.8 then keeps {0, 1}.
    ids = draw(PROBS.log().unsqueeze(0), top_k=3, top_p=0.8)
    assert set(ids.tolist()) == {0, 1}


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits = torch.randn(8, 50, generator=seeded(7))
    a = sample_next(logits, temperature=1.3, top_k=20, top_p=0.9, generator=seeded(11))
    b = sample_next(logits, temperature=1.3, top_k=20, top_p=0.9, generator=seeded(11))
    assert torch.equal(a, b)
    runs = {tuple(sample_next(logits, generator=seeded(s)).view(-1).tolist()) for s in range(5)}
    assert len(runs) > 1


def test_half_precision_logits_are_sampled_in_fp32():
    logits = torch.randn(4, 50, generator=seeded(8))
    for dtype in (torch.float16, torch.bfloat16):
        out = sample_next(logits.to(dtype), temperature=0)
        assert torch.equal(out, logits.to(dtype).float().argmax(-1, keepdim=True))


def test_one_generator_per_row_makes_each_row_independent_of_the_batch():
    logits = torch.randn(3, 50, generator=seeded(9))
    together = sample_next(logits, temperature=1.2, top_k=30, generator=[seeded(s) for s in (10, 11, 12)])
    for row, s in enumerate((10, 11, 12)):
        alone = sample_next(logits[row:row + 1], temperature=1.2, top_k=30, generator=seeded(s))
        assert together[row].item() == alone.item()
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        sample_next(logits, generator=[seeded(0), seeded(1)])


def test_top_k_zero_means_off_as_before():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    off = sample_next(logits, 1.0, top_k=None, generator=torch.Generator().manual_seed(4))
    assert torch.equal(sample_next(logits, 1.0, top_k=0, generator=torch.Generator().manual_seed(4)), off)
