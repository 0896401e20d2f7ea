"""One makemore rung from words to table row: read and split the words, build the model,
train it, score every split, sample new words, draw its pictures, add its row to the ladder.

:class:`~.config.MakemoreConfig` holds every setting (a setting left as None takes the
rung's own default); :func:`run` runs one rung.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ...data.words import WordVocab, context_windows, read_words, split_words, word_rows
from ...errors import TinyGPTError
from . import bigram, diagnostics, ladder, models, train
from .config import ALL, MakemoreConfig
from .gpt import WordGPT
from .manual import ManualMLP

SMOOTHING = 1.0  # the count bigram's add-one smoothing
L2 = 0.01        # the neural bigram's weight penalty: its counterpart


@dataclass
class RungResult:
    rung: str
    params: int
    train: float
    val: float
    test: float
    seconds: float
    steps: int
    samples: list[str] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("samples", "pictures")}


def run(cfg: MakemoreConfig, log: Callable[[str], None] = lambda _: None) -> tuple[list[RungResult], list[Path]]:
    """Train and score the rung; returns its results (two for the bigram) and the ladder's files."""
    if cfg.model == ALL:
        raise TinyGPTError("run one rung at a time: MakemoreConfig.rungs() gives each rung's config")
    words = read_words(cfg.data, log)
    splits = split_words(words, seed=cfg.seed)
    vocab = WordVocab.from_words(words)
    log(f"data: {len(words):,} words ({len(splits.train):,} train, {len(splits.val):,} val, "
        f"{len(splits.test):,} test), {vocab.vocab_size} characters with the '.' boundary")
    out = Path(cfg.out)
    if cfg.model == "bigram":
        trained = _bigrams(cfg, splits, vocab, out, log)
    elif cfg.model == "gpt":
        trained = [_gpt(cfg, splits, vocab, log)]
    else:
        trained = [_window(cfg, splits, vocab, out, log)]
    data = cfg.data if cfg.data == "names" else str(Path(cfg.data).expanduser().resolve())
    for result, model in trained:
        result.samples = _sample(model, vocab, cfg.num_samples, cfg.seed)
    results = [result for result, _ in trained]
    return results, list(ladder.add_rows(out, data, [r.row() for r in results]))


def _splits_as(fn, splits, *args) -> tuple[tuple[torch.Tensor, ...], ...]:
    return tuple(fn(words, *args) for words in (splits.train, splits.val, splits.test))


def _score(rung: str, model, examples, seconds: float, steps: int, chunk: int = 32768) -> tuple[RungResult, object]:
    """The rung's result (its loss on every split), and the model, to sample from."""
    return RungResult(rung, models.parameter_count(model), *(train.split_loss(model, e, chunk) for e in examples),
                      seconds=seconds, steps=steps), model


def _bigrams(cfg, splits, vocab, out, log) -> list[tuple[RungResult, object]]:
    examples = _splits_as(context_windows, splits, vocab, 1)
    X, Y = examples[0]
    start = time.perf_counter()
    counts = bigram.CountBigram(X, Y, vocab.vocab_size, SMOOTHING)
    counted = _score("bigram (counts)", counts, examples, time.perf_counter() - start, 0)
    counted[0].pictures.append(bigram.draw_counts(counts.counts, vocab.chars, out / "bigram_counts.png",
                                               f"bigram counts of {len(splits.train):,} training words"))
    net = bigram.NeuralBigram(vocab.vocab_size, seed=cfg.seed)
    start = time.perf_counter()
    steps = cfg.setting("max_steps")
    bigram.train_neural(net, counts.counts, steps, cfg.setting("lr"), L2, log)
    return [counted, _score("bigram (neural net)", net, examples, time.perf_counter() - start, steps)]


def _window(cfg, splits, vocab, out, log) -> tuple[RungResult, object]:
    size = {k: cfg.setting(k) for k in ("block_size", "n_embd", "n_hidden")}
    V, seed = vocab.vocab_size, cfg.seed
    if cfg.key == "mlp-bn/manual":
        model = ManualMLP(V, **size, seed=seed)
    elif cfg.model == "wavenet":
        model = models.wavenet(V, **size, seed=seed)
    else:
        model = models.mlp(V, **size, layers=cfg.setting("layers"), batchnorm=cfg.model == "mlp-bn", seed=seed)
    examples = _splits_as(context_windows, splits, vocab, size["block_size"])
    fit = train.FitConfig(steps=cfg.setting("max_steps"), batch_size=cfg.setting("batch_size"), lr=cfg.setting("lr"),
                          seed=seed)
    pictures = []
    if cfg.model == "mlp":
        lrs, losses = diagnostics.lr_finder(model, examples[0], fit.batch_size, seed=seed)
        suggested = diagnostics.suggest_lr(lrs, losses)
        log(f"lr finder: loss bottoms out near lr {3 * suggested:.3g}; suggested {suggested:.3g}, using {fit.lr:g}")
        pictures.append(diagnostics.draw_lr_finder(lrs, losses, fit.lr, out / "mlp_lr_finder.png",
                                                   "mlp: learning-rate finder (SGD, lr rising each step)"))
    health = {}
    if cfg.key == "mlp-bn/manual":
        report = _check_manual(model, examples[0])
        log("backprop ninja: max |hand-written - autograd| per tensor: " + report)
    elif cfg.model != "mlp":  # BatchNorm nets: how the layers look before and after training
        health["at init"] = diagnostics.tanh_health(model, _probe(examples[0], seed))
    start = time.perf_counter()
    train.fit(model, examples[0], fit, log, report_every=max(fit.steps // 10, 1))
    seconds = time.perf_counter() - start
    label = "mlp-bn (manual backward)" if cfg.key == "mlp-bn/manual" else cfg.model
    if health:
        health["trained"] = diagnostics.tanh_health(model, _probe(examples[0], seed))
        for stage, layers in health.items():
            log(f"{stage}: saturated tanh outputs per layer: "
                + ", ".join(f"{layer['saturated']:.1%}" for layer in layers))
        pictures.append(diagnostics.draw_health(health, out / f"{cfg.model}_health.png",
                                                f"{label}: activations and gradients per layer"))
    result = _score(label, model, examples, seconds, fit.steps)
    result[0].pictures += pictures
    return result


def _probe(examples, seed: int, n: int = 2048):
    g = torch.Generator().manual_seed(seed)
    ix = torch.randint(0, examples[0].shape[0], (n,), generator=g)
    return tuple(t[ix] for t in examples)


def _check_manual(model: ManualMLP, examples) -> str:
    from .manual import check_gradients

    X, Y = _probe(examples, 0, 64)
    diffs = check_gradients(model, X, Y)
    worst = max(diffs, key=diffs.get)
    return f"worst {diffs[worst]:.1e} ({worst}) over {len(diffs)} tensors; " + ", ".join(
        f"{k} {v:.0e}" for k, v in diffs.items() if k in ("logits", "hprebn", "emb", "C", "W1"))


def _gpt(cfg, splits, vocab, log) -> tuple[RungResult, object]:
    longest = max(len(w) for w in (*splits.train, *splits.val, *splits.test)) + 1
    block = cfg.block_size or longest
    # Rows shortest first: evaluated in chunks of similar length, each chunk drops the columns
    # that are padding in all its rows (4x faster on the names). Training draws rows at random.
    examples = tuple(_by_length(*rows) for rows in _splits_as(word_rows, splits, vocab, block))
    model = WordGPT(vocab.vocab_size, block, cfg.setting("n_layer"), cfg.setting("n_head"), cfg.setting("n_embd"),
                    seed=cfg.seed)
    fit = train.FitConfig(steps=cfg.setting("max_steps"), batch_size=cfg.setting("batch_size"), lr=cfg.setting("lr"),
                          optimizer="adamw", weight_decay=0.01, seed=cfg.seed)
    start = time.perf_counter()
    train.fit(model, examples[0], fit, log, report_every=max(fit.steps // 10, 1))
    return _score("gpt", model, examples, time.perf_counter() - start, fit.steps, chunk=4096)


def _by_length(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort((y >= 0).sum(1), stable=True)
    return x[order], y[order]


def _sample(model, vocab: WordVocab, n: int, seed: int) -> list[str]:
    return [vocab.decode(ids) for ids in train.sample_words(model, vocab.boundary, n, seed=seed)] if n else []
