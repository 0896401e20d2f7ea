"""makemore's rungs: the layers against PyTorch's, each model's shape and learning, the shared
loop, evaluation and sampler, the ladder table, and the command end to end on a tiny word list."""

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinygpt.cli import main
from tinygpt.data.words import WordVocab, context_windows, split_words, word_rows
from tinygpt.errors import TinyGPTError
from tinygpt.learn.makemore import bigram, diagnostics, ladder, models, train
from tinygpt.learn.makemore.config import MakemoreConfig
from tinygpt.learn.makemore.gpt import WordGPT
from tinygpt.learn.makemore.layers import BatchNorm1d, FlattenConsecutive, Linear

SYLLABLES = ["ka", "lo", "mi", "ra", "ne", "su", "ti", "vo"]
# 584 distinct words of 1-3 syllables: a language with structure for the models to find.
WORDS = ["".join(p) for n in (1, 2, 3) for p in itertools.product(SYLLABLES, repeat=n)][:584]


@pytest.fixture(scope="module")
def data():
    vocab = WordVocab.from_words(WORDS)
    splits = split_words(WORDS, seed=0)
    return vocab, splits


@pytest.fixture
def word_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(random.Random(0).sample(WORDS, 200)) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- layers

def test_batchnorm_over_batch_and_time_equals_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, 6, generator=g, dtype=torch.float64) * 3 + 1   # (B, T, C)
    ours, theirs = BatchNorm1d(6, momentum=0.1).double(), torch.nn.BatchNorm1d(6, momentum=0.1).double()
    with torch.no_grad():
        ours.gain.copy_(torch.linspace(0.5, 2, 6))
        theirs.weight.copy_(ours.gain)
        ours.shift.fill_(0.3)
        theirs.bias.fill_(0.3)
    for _ in range(3):  # training: batch statistics, and the running averages move alike
        torch.testing.assert_close(ours(x), theirs(x.transpose(1, 2)).transpose(1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=1e-12)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x.transpose(1, 2)).transpose(1, 2), rtol=0, atol=1e-12)


def test_batchnorm_statistics_span_batch_and_time_not_batch_alone():
    # The classic bug keeps statistics over dim 0 only: each position normalised on its own.
    x = torch.randn(8, 4, 3, dtype=torch.float64) + torch.arange(4.0, dtype=torch.float64)[None, :, None]
    y = BatchNorm1d(3).double()(x)
    torch.testing.assert_close(y.mean((0, 1)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (y.mean(0).std(0) > 0.5).all()  # positions keep their different levels: per-position means differ
    wrong = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    assert (wrong - y).abs().max() > 0.5


def test_flatten_consecutive_fuses_neighbours():
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    y = FlattenConsecutive(2)(x)
    assert y.shape == (2, 2, 6) and y[0, 1].tolist() == x[0, 2:4].flatten().tolist()
    assert FlattenConsecutive(2)(y).shape == (2, 12)  # the last level drops time


def test_linear_init_scale_is_gain_over_sqrt_fan_in():
    layer = Linear(400, 300, generator=torch.Generator().manual_seed(0))
    assert abs(layer.weight.std().item() - (5 / 3) / 20) < 0.002 and not layer.bias.any()


# ---------------------------------------------------------------------------- models

def test_mlp_and_wavenet_parameter_counts(data):
    V = 27
    assert models.parameter_count(models.mlp(V)) == V * 10 + 30 * 200 + 200 + 200 * V + V
    # BatchNorm: no Linear bias, a gain and a shift per hidden unit instead.
    assert models.parameter_count(models.mlp(V, n_hidden=100, layers=2, batchnorm=True)) == \
        V * 10 + 30 * 100 + 200 + 100 * 100 + 200 + 100 * V + V
    assert models.parameter_count(models.wavenet(V)) == \
        V * 24 + (48 * 128 + 256) + 2 * (256 * 128 + 256) + 128 * V + V  # 76,579 as in the lecture
    with pytest.raises(TinyGPTError, match="power of two"):
        models.wavenet(V, block_size=6)


def test_wavenet_sees_its_whole_context():
    model = models.wavenet(10, block_size=8, n_embd=4, n_hidden=8).eval()
    X = torch.randint(1, 10, (5, 8), generator=torch.Generator().manual_seed(0))
    changed = X.clone()
    changed[:, 0] = (X[:, 0] % 9) + 1
    assert (model.logits(X) - model.logits(changed)).abs().max() > 1e-4


def test_count_and_neural_bigram_reach_the_same_loss(data):
    vocab, splits = data
    X, Y = context_windows(splits.train, vocab, 1)
    # On 467 words add-one smoothing is a far stronger prior than on 73k; 0.1 and an L2 of
    # 0.001 pull about equally hard here (the command's 1 and 0.01 do so on the names).
    counts = bigram.CountBigram(X, Y, vocab.vocab_size, smoothing=0.1)
    probs = (counts.counts + 0.1) / (counts.counts + 0.1).sum(1, keepdim=True)
    torch.testing.assert_close(counts.log_probs.exp().double(), probs, rtol=0, atol=1e-6)
    net = bigram.NeuralBigram(vocab.vocab_size, seed=0)
    # The loss from pair counts is the loss over every example, computed V*V times instead of N.
    total, n = net.loss_sum(X, Y)
    assert abs(bigram.pair_loss(net, counts.counts).item() - total.item() / n) < 1e-5
    bigram.train_neural(net, counts.counts, steps=300, lr=50.0, l2=0.001)
    counted, learned = (train.split_loss(m, (X, Y)) for m in (counts, net))
    assert abs(counted - learned) < 0.01 and counted < 1.2  # uniform would be log(14) = 2.64


def test_gpt_rung_predicts_from_the_whole_prefix_and_masks_padding(data):
    vocab, splits = data
    x, y = word_rows(splits.train[:4], vocab, 8)
    model = WordGPT(vocab.vocab_size, 8, n_layer=1, n_head=2, n_embd=16, seed=0).eval()
    total, n = model.loss_sum(x, y)
    logits = model.gpt(x).logits
    real = y >= 0
    assert n == real.sum() and abs(total.item() - F.cross_entropy(logits[real], y[real], reduction="sum").item()) < 1e-4
    t = 3  # next-character logits from the prefix alone equal the row's (causal attention)
    torch.testing.assert_close(model.logits(x[:, :t + 1]), logits[:, t], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- loop, evaluation, sampling

def test_fit_learns_and_repeats_exactly(data):
    vocab, splits = data
    examples = context_windows(splits.train, vocab, 3)
    cfg = train.FitConfig(steps=150, batch_size=32, lr=0.2, seed=0)
    runs = [train.fit(models.mlp(vocab.vocab_size, n_hidden=32, seed=0), examples, cfg) for _ in range(2)]
    assert runs[0] == runs[1]
    assert sum(runs[0][-20:]) / 20 < sum(runs[0][:20]) / 20 - 0.5


def test_split_loss_is_the_mean_cross_entropy(data):
    vocab, splits = data
    X, Y = context_windows(splits.val, vocab, 3)
    model = models.mlp(vocab.vocab_size, n_hidden=16, batchnorm=True).train()
    expected = F.cross_entropy(model.eval().logits(X), Y).item()
    assert abs(train.split_loss(model, (X, Y), chunk=7) - expected) < 1e-6
    assert model.training is False  # left in the mode it was in (eval, above)


def test_sampler_follows_the_model_and_stops_at_the_boundary(data):
    vocab, splits = data
    # A bigram table that can only spell "kal" and end: sampling must give exactly that.
    X = torch.tensor([[vocab.boundary], [vocab.encode("k")[0]], [vocab.encode("a")[0]], [vocab.encode("l")[0]]])
    Y = torch.tensor(vocab.encode("kal") + [vocab.boundary])
    model = bigram.CountBigram(X.repeat(1000, 1), Y.repeat(1000), vocab.vocab_size, smoothing=1e-12)
    assert [vocab.decode(w) for w in train.sample_words(model, vocab.boundary, 3, seed=1)] == ["kal"] * 3
    mlp = models.mlp(vocab.vocab_size)
    assert train.sample_words(mlp, vocab.boundary, 5, seed=3) == train.sample_words(mlp, vocab.boundary, 5, seed=3)


def test_lr_finder_and_tanh_health(data):
    vocab, splits = data
    examples = context_windows(splits.train, vocab, 3)
    model = models.mlp(vocab.vocab_size, n_hidden=32, layers=2, batchnorm=True)
    before = [p.clone() for p in model.parameters()]
    lrs, losses = diagnostics.lr_finder(model, examples, 32, steps=100, lo=1e-3, hi=100.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trains a copy
    assert (lrs[1:] > lrs[:-1]).all()
    assert abs(losses[0] - math.log(vocab.vocab_size)) < 0.1  # the small output init: near uniform
    assert np.isnan(losses[-1]) and np.nanmin(losses) < losses[0] - 0.5  # it learns, then diverges and stops
    assert 1e-3 <= diagnostics.suggest_lr(lrs, losses) <= 100 / 3
    health = diagnostics.tanh_health(model, tuple(t[:256] for t in examples))
    assert [h["layer"] for h in health] == [0, 1] and all(0 <= h["saturated"] < 0.2 for h in health)
    with torch.no_grad():
        model.net[3].gain.fill_(50.0)  # a huge BatchNorm gain drives the first tanh into saturation
    assert diagnostics.tanh_health(model, tuple(t[:256] for t in examples))[0]["saturated"] > 0.9
    assert all(p.grad is None for p in model.parameters())


def test_ladder_replaces_rows_and_keeps_a_table_per_word_list(tmp_path):
    row = dict(rung="mlp", params=10, train=2.0, val=2.1, test=2.2, seconds=1.0, steps=5)
    ladder.add_rows(tmp_path, "names", [row])
    ladder.add_rows(tmp_path, "names", [dict(row, rung="bigram (counts)", test=2.5)])
    md, png = ladder.add_rows(tmp_path, "names", [dict(row, test=2.15)])
    names = json.loads((tmp_path / "ladder.json").read_text())["tables"]["names"]
    assert [r["rung"] for r in names] == ["bigram (counts)", "mlp"] and names[1]["test"] == 2.15
    assert "| mlp | 10 | 2.0000 | 2.1000 | 2.1500 | 5 | 1.0 |" in md.read_text() and png.stat().st_size > 0
    md, _ = ladder.add_rows(tmp_path, "/other/words.txt", [row])
    tables = json.loads((tmp_path / "ladder.json").read_text())["tables"]
    assert tables["names"] == names and tables["/other/words.txt"] == [row]  # the names' table is kept
    assert "on /other/words.txt" in md.read_text() and "2.1500" not in md.read_text()


# ---------------------------------------------------------------------------- the command

def test_every_rung_through_the_command(word_file, tmp_path, capsys):
    out = tmp_path / "mm"
    tiny = ["--max-steps", "30", "--n-hidden", "16", "--n-embd", "8", "--n-layer", "1", "--num-samples", "3"]
    assert main(["makemore", "--model", "all", "--data", str(word_file), "--out", str(out), *tiny]) == 0
    assert main(["makemore", "--model", "mlp-bn", "--backward", "manual", "--data", str(word_file),
                 "--out", str(out), *tiny]) == 0
    printed = capsys.readouterr().out
    rungs = [r["rung"] for r in json.loads((out / "ladder.json").read_text())["tables"][str(word_file)]]
    assert rungs == list(ladder.ORDER)
    assert printed.count("samples: ") == 7 and "loss train" in printed
    for picture in ("bigram_counts", "mlp_lr_finder", "mlp-bn_health", "wavenet_health", "ladder"):
        assert (out / f"{picture}.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--model", "mlp", "--backward", "manual"], "use it with --model mlp-bn"),
    (["--model", "mlp-bn", "--backward", "manual", "--layers", "3"], "pass --layers 1"),
    (["--model", "wavenet", "--block-size", "6"], "power of two"),
    (["--model", "mlp", "--max-steps", "0"], "--max-steps must be at least 1"),
])
def test_bad_settings_are_one_line_errors(word_file, tmp_path, capsys, argv, message):
    assert main(["makemore", "--data", str(word_file), "--out", str(tmp_path / "mm"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "mm" / "ladder.json").exists()


def test_config_defaults_come_from_the_rung():
    assert MakemoreConfig(model="wavenet").setting("block_size") == 8
    assert MakemoreConfig(model="wavenet", block_size=16).setting("block_size") == 16
    assert MakemoreConfig(model="mlp-bn", backward="manual").setting("layers") == 1


def test_all_names_every_rung_each_checked_as_it_is_made():
    every = MakemoreConfig(model="all", max_steps=3, num_samples=2)
    assert [c.model for c in every.rungs()] == ["bigram", "mlp", "mlp-bn", "wavenet", "gpt"]
    assert all(c.max_steps == 3 and c.num_samples == 2 for c in every.rungs())
    assert MakemoreConfig(model="gpt").rungs() == [MakemoreConfig(model="gpt")]
    with pytest.raises(TinyGPTError, match="power of two"):
        MakemoreConfig(model="all", block_size=6).rungs()  # the wavenet rung cannot take it
