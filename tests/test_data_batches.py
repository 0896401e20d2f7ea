"""Batches: the Batch tuple and the reproducible window sampler."""


import numpy as np
import pytest
import torch
from helpers import QUIET

from tinygpt.data import Batch, Batches, DataConfig, prepare_data
from tinygpt.errors import TinyGPTError


def ramp(n):
    """Tokens 0, 1, 2, ... so every window shows where it came from."""
    return (np.arange(n) % 65536).astype(np.uint16)


def test_batches_shapes_and_shift():
    tokens = ramp(1000)
    x, y, mask, pos = Batches(tokens, 4, 16, seed=1).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert mask is None and pos is None  # plain text: every target counts, every row one sequence
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)   # y is x shifted by one token
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))   # each row is a contiguous window
    assert int(x.min()) >= 0 and int(y.max()) <= 999


def test_random_batches_are_reproducible_and_cover_the_ends():
    tokens = ramp(40)
    a, b = Batches(tokens, 8, 8, seed=3), Batches(tokens, 8, 8, seed=3)
    for _ in range(5):
        (xa, ya, _, _), (xb, yb, _, _) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = Batches(tokens, 8, 8, seed=4).next_batch()[0]
    assert not torch.equal(Batches(tokens, 8, 8, seed=3).next_batch()[0], other)
    starts = torch.cat([next(a)[0][:, 0] for _ in range(200)])
    assert int(starts.min()) == 0 and int(starts.max()) == 40 - 9   # every valid start, no more


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_state_dict_resumes_exactly(mode, tmp_path):
    tokens = ramp(500)
    run = Batches(tokens, 3, 10, mode=mode, seed=7)
    for _ in range(6):
        run.next_batch()
    torch.save(run.state_dict(), tmp_path / "state.pt")
    expected = [run.next_batch() for _ in range(25)]   # sequential: crosses an epoch boundary

    resumed = Batches(tokens, 3, 10, mode=mode, seed=0)  # the seed is overridden by the state
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for (x, y, _, _), (rx, ry, _, _) in zip(expected, (resumed.next_batch() for _ in range(25))):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_sequential_walks_in_order_and_wraps():
    tokens = ramp(50)   # windows of 4 + 1 tokens start at 0, 4, ..., 44: 12 per epoch
    seq = Batches(tokens, 3, 4, mode="sequential")
    rows = torch.cat([seq.next_batch()[0] for _ in range(4)])   # exactly one epoch
    assert torch.equal(rows.flatten(), torch.arange(48))
    assert seq.epoch == 0
    x, y, _, _ = seq.next_batch()
    assert seq.epoch == 1 and torch.equal(x[0], torch.arange(4)) and torch.equal(y[0], torch.arange(1, 5))
    # A batch that runs past the end is filled from the start again.
    seq2 = Batches(tokens, 5, 4, mode="sequential")
    seq2.next_batch(), seq2.next_batch()
    x, _, _, _ = seq2.next_batch()
    assert x[:, 0].tolist() == [40, 44, 0, 4, 8] and seq2.epoch == 1


def test_too_short_split():
    with pytest.raises(TinyGPTError) as err:
        Batches(ramp(200), 2, 256)
    assert str(err.value) == ("the train split has 200 tokens, fewer than one block (block_size 256 + 1); "
                              "use a smaller --block-size or more text")
    with pytest.raises(TinyGPTError, match="the val split has 0 tokens"):
        Batches(ramp(0), 2, 8, split="val")
    Batches(ramp(257), 2, 256)   # exactly one block fits


def test_batches_from_prepared_memmap(tiny_corpus):
    d = prepare_data(DataConfig(data=str(tiny_corpus), val_fraction=0.2), **QUIET)
    for split, tokens in (("train", d.train), ("val", d.val)):
        x, y, _, _ = Batches(tokens, 4, 32, split=split, mode="sequential").next_batch()
        assert d.tokenizer.decode(x[0].tolist()) == d.tokenizer.decode(tokens[:32].tolist())
        assert torch.equal(y[:, :-1], x[:, 1:])


def test_split_byte_counts_are_exact_or_absent(tmp_path):
    # GPT-2 spells the 4-byte emoji as two tokens: a split between them has no exact
    # byte count in characters, so meta must leave it out rather than guess.
    (tmp_path / "e.txt").write_text("\U0001F600" * 4, encoding="utf-8")
    at_char = prepare_data(DataConfig(data=str(tmp_path), tokenizer="gpt2", val_fraction=0.5), **QUIET).meta
    assert at_char["n_tokens"] == 8 and at_char["val_start"] == 4
    assert (at_char["train_bytes"], at_char["val_bytes"], at_char["n_bytes"]) == (8, 8, 16)
    mid_char = prepare_data(DataConfig(data=str(tmp_path), tokenizer="gpt2", val_fraction=0.625), **QUIET).meta
    assert mid_char["val_start"] == 3 and "train_bytes" not in mid_char and "val_bytes" not in mid_char


def test_batch_counts_the_targets_that_count():
    x = torch.zeros(2, 4, dtype=torch.long)
    y = torch.tensor([[1, 2, 3, 4], [5, -100, 7, 8]])
    assert Batch(x, y).n_targets() == 7  # IGNORE_INDEX targets never count
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    assert Batch(x, y, mask).n_targets() == 4  # masked or ignored: both drop out
    pos = torch.tensor([[0, 1, 0, 1], [0, 1, 2, -1]])
    moved = Batch(x, y, mask, pos).to("cpu")
    assert torch.equal(moved.loss_mask, mask) and torch.equal(moved.y, y) and torch.equal(moved.input_pos, pos)
    assert Batch(x, y).to("cpu").loss_mask is None
