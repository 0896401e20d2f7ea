"""Logits processors: the same logits out as transformers' processors, on random logits and histories."""

import pytest
import torch

from tinygpt.generation.processors import (
    FrequencyPresencePenalty,
    History,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    TypicalP,
)

hf = pytest.importorskip("transformers.generation.logits_process")

B, L, V = 4, 24, 50


def random_case(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (B, L), generator=g)  # a small alphabet, so n-grams repeat
    logits = torch.randn(B, V, generator=g) * 3
    return ids, logits


@pytest.mark.parametrize("ours, theirs", [
    (RepetitionPenalty(1.3), lambda: hf.RepetitionPenaltyLogitsProcessor(1.3)),
    (NoRepeatNGram(1), lambda: hf.NoRepeatNGramLogitsProcessor(1)),
    (NoRepeatNGram(2), lambda: hf.NoRepeatNGramLogitsProcessor(2)),
    (NoRepeatNGram(3), lambda: hf.NoRepeatNGramLogitsProcessor(3)),
    (Temperature(0.7), lambda: hf.TemperatureLogitsWarper(0.7)),
    (TopK(5), lambda: hf.TopKLogitsWarper(5)),
    (TopK(500), lambda: hf.TopKLogitsWarper(500)),
    (TopP(0.9), lambda: hf.TopPLogitsWarper(0.9)),
    (TopP(0.05), lambda: hf.TopPLogitsWarper(0.05)),
    (MinP(0.1), lambda: hf.MinPLogitsWarper(0.1)),
    (TypicalP(0.8), lambda: hf.TypicalLogitsWarper(0.8)),
    (TypicalP(0.2), lambda: hf.TypicalLogitsWarper(0.2)),
])
@pytest.mark.parametrize("seed", range(5))
def test_same_logits_as_transformers(ours, theirs, seed):
    ids, logits = random_case(seed)
    expected = theirs()(ids, logits.clone())
    got = ours(logits.clone(), History(ids.tolist(), V))
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got, expected)


def test_the_history_keeps_counts_up_to_date_as_rows_grow_and_leave():
    h = History([[1, 2, 2], [3]], vocab_size=5)
    assert h.counts.tolist() == [[0, 1, 2, 0, 0], [0, 0, 0, 1, 0]]
    h.append(torch.tensor([2, 4]))
    assert h.rows == [[1, 2, 2, 2], [3, 4]] and h.counts.tolist() == [[0, 1, 3, 0, 0], [0, 0, 0, 1, 1]]
    h.select([1])
    assert h.rows == [[3, 4]] and h.counts.tolist() == [[0, 0, 0, 1, 1]]


def test_frequency_and_presence_penalties_follow_the_counts():
    h = History([[1, 1, 1, 2]], vocab_size=4)
    out = FrequencyPresencePenalty(frequency=0.5, presence=1.0)(torch.zeros(1, 4), h)
    assert out.tolist() == [[0.0, -2.5, -1.5, 0.0]]
