"""Batch and window warmup: the stages, and how a batch is cut at each."""

import pytest
import torch

from tinygpt.config import from_dict
from tinygpt.data import Batch
from tinygpt.errors import TinyGPTError
from tinygpt.train import TrainConfig
from tinygpt.train.curriculum import shape_batch, stage_divisor


def test_stages_over_the_warmup():
    assert [stage_divisor(p, 0.4) for p in (0.0, 0.19, 0.2, 0.39, 0.4, 1.0)] == [4, 4, 2, 2, 1, 1]
    assert [stage_divisor(p, 0.0) for p in (0.0, 0.5)] == [1, 1]  # off
    assert [stage_divisor(p, 1.0) for p in (0.0, 0.49, 0.5, 0.99, 1.0)] == [4, 4, 2, 2, 1]


def batch(B, T, **extra):
    x = torch.arange(B * T).reshape(B, T)
    return Batch(x, x + 1000, **{k: v(x) for k, v in extra.items()})


def test_window_cut_keeps_every_token_in_order():
    b = batch(2, 8, loss_mask=lambda x: x % 3 == 0)
    cut = shape_batch(b, 1, 4)
    assert cut.x.shape == cut.y.shape == cut.loss_mask.shape == (8, 2)
    assert cut.x.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert torch.equal(cut.y, cut.x + 1000) and torch.equal(cut.loss_mask, cut.x % 3 == 0)
    assert cut.input_pos is None
    assert shape_batch(b, 1, 1) is b  # the full shape is the batch itself


def test_batch_cut_takes_the_first_rows():
    b = batch(8, 4, input_pos=lambda x: x % 4)
    cut = shape_batch(b, 4, 1)
    assert torch.equal(cut.x, b.x[:2]) and torch.equal(cut.y, b.y[:2]) and torch.equal(cut.input_pos, b.input_pos[:2])
    assert shape_batch(batch(3, 4), 4, 1).x.shape == (1, 4)  # at least one row
    both = shape_batch(batch(8, 8), 2, 2)
    assert both.x.shape == (8, 4) and torch.equal(both.x.flatten(), torch.arange(32))


def test_window_divisor_drops_to_one_that_divides_the_length():
    assert shape_batch(batch(2, 6), 1, 4).x.shape == (4, 3)
    assert shape_batch(batch(2, 5), 1, 4).x.shape == (2, 5)


def test_packed_examples_refuse_the_window_warmup():
    with pytest.raises(TinyGPTError, match="--window-warmup needs plain text batches.*--window-warmup 0"):
        shape_batch(batch(2, 8, input_pos=lambda x: x % 4), 1, 2)


@pytest.mark.parametrize("name", ["batch_warmup", "window_warmup"])
def test_warmup_fractions_are_checked(name):
    flag = "--" + name.replace("_", "-")
    for bad in (-0.1, 1.5):
        with pytest.raises(TinyGPTError, match=f"{flag} must be in \\[0, 1\\], got {bad}"):
            from_dict(TrainConfig, {name: bad})
    assert getattr(from_dict(TrainConfig, {name: 1.0}), name) == 1.0
