"""One makemore rung from words to table row: read and split the words, build the model,
train it, score every split, sample new words, draw its pictures, add its row to the ladder.

:class:`MakemoreConfig` holds every setting; a setting left as None takes the rung's own
default from :data:`DEFAULTS` (sizes that run in well under a minute on two CPU cores).
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
from .gpt import WordGPT
from .manual import ManualMLP

RUNGS = ("bigram", "mlp", "mlp-bn", "wavenet", "gpt")
BACKWARDS = ("autograd", "manual")

# Per rung: model shape and training. The MLP and WaveNet shapes are the lectures'; steps
# and batch sizes are cut to fit a minute on a laptop CPU (the lectures ran 200k steps).
DEFAULTS: dict[str, dict] = {
    "bigram": dict(block_size=1, steps=500, lr=50.0, batch_size=0),
    "mlp": dict(block_size=3, n_embd=10, n_hidden=200, layers=1, steps=30000, batch_size=64, lr=0.1),
    # BatchNorm keeps every layer's statistics in place, so it takes twice the MLP's rate.
    "mlp-bn": dict(block_size=3, n_embd=10, n_hidden=128, layers=3, steps=20000, batch_size=64, lr=0.2),
    "mlp-bn/manual": dict(block_size=3, n_embd=10, n_hidden=200, layers=1, steps=30000, batch_size=64, lr=0.1),
    "wavenet": dict(block_size=8, n_embd=24, n_hidden=128, steps=12000, batch_size=128, lr=0.1),
    "gpt": dict(n_layer=2, n_head=4, n_embd=64, steps=4000, batch_size=64, lr=1e-2),
}
SMOOTHING = 1.0  # the count bigram's add-one smoothing
L2 = 0.01        # the neural bigram's weight penalty: its counterpart


@dataclass
class MakemoreConfig:
    model: str = "mlp"
    data: str = "names"
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    block_size: int | None = None
    n_embd: int | None = None
    n_hidden: int | None = None
    layers: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    backward: str = "autograd"
    samples: int = 20
    seed: int = 42
    out: str = "makemore"

    def __post_init__(self) -> None:
        if self.model not in RUNGS:
            raise TinyGPTError(f"unknown makemore model {self.model!r}; choose one of: {', '.join(RUNGS)}")
        if self.backward not in BACKWARDS:
            raise TinyGPTError(f"--backward must be autograd or manual, got {self.backward!r}")
        if self.backward == "manual":
            if self.model != "mlp-bn":
                raise TinyGPTError("--backward manual is the hand-written backward of the BatchNorm MLP; "
                                   "use it with --model mlp-bn")
            if self.layers not in (None, 1):
                raise TinyGPTError("--backward manual is written for one hidden layer (the lecture's model); "
                                   "drop --layers or pass --layers 1")
        for name in ("steps", "batch_size", "block_size", "n_embd", "n_hidden", "layers", "n_layer", "n_head"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        block = self.setting("block_size")
        if self.model == "wavenet" and (block < 2 or block & (block - 1)):
            raise TinyGPTError(f"wavenet fuses characters in pairs, so --block-size must be a power of two "
                               f"(2, 4, 8, 16, ...), got {block}")
        if self.lr is not None and not self.lr > 0:
            raise TinyGPTError(f"--lr must be positive, got {self.lr}")
        if self.samples < 0:
            raise TinyGPTError(f"--samples must be 0 or more, got {self.samples}")

    @property
    def key(self) -> str:
        return f"{self.model}/manual" if self.backward == "manual" else self.model

    def setting(self, name: str):
        """The given value of ``name``, else the rung's default."""
        value = getattr(self, name)
        return DEFAULTS[self.key].get(name) if value is None else value


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
        result.samples = _sample(model, vocab, cfg.samples, cfg.seed)
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
    steps = cfg.setting("steps")
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
    fit = train.FitConfig(steps=cfg.setting("steps"), batch_size=cfg.setting("batch_size"), lr=cfg.setting("lr"),
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
    fit = train.FitConfig(steps=cfg.setting("steps"), batch_size=cfg.setting("batch_size"), lr=cfg.setting("lr"),
                          optimizer="adamw", weight_decay=0.01, seed=cfg.seed)
    start = time.perf_counter()
    train.fit(model, examples[0], fit, log, report_every=max(fit.steps // 10, 1))
    return _score("gpt", model, examples, time.perf_counter() - start, fit.steps, chunk=4096)


def _by_length(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort((y >= 0).sum(1), stable=True)
    return x[order], y[order]


def _sample(model, vocab: WordVocab, n: int, seed: int) -> list[str]:
    return [vocab.decode(ids) for ids in train.sample_words(model, vocab.boundary, n, seed=seed)] if n else []
