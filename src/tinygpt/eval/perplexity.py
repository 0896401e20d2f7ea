"""Loss, perplexity and bits per byte of a model over a whole text, scored in sliding windows.

A text longer than the context is cut into windows of ``block_size`` input tokens that
start ``stride`` tokens apart. The first window scores every prediction in it; each later
one scores only the predictions no earlier window made (its last ``stride``), so every
token is scored exactly once and each of those sees at least ``block_size - stride`` tokens
of context. ``stride == block_size`` is the plain non-overlapping computation; a smaller
stride costs more forwards and scores closer to what the model does with a full context.

Every token but the first is predicted (nothing comes before the first). Bits per byte
divide the summed loss, in bits, by the UTF-8 bytes of the predicted tokens' text, so
models with different tokenizers compare; perplexity is per token and does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..errors import TinyGPTError
from ..generation import TinyGPT
from ..model import IGNORE_INDEX


@dataclass
class Score:
    loss_sum: float      # nats, summed over the scored tokens
    tokens: int          # tokens scored
    bytes: int           # UTF-8 bytes of the scored tokens' text

    @property
    def loss(self) -> float:
        """Mean loss per token (nats)."""
        return self.loss_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.loss_sum / math.log(2) / self.bytes


def windows(n: int, block: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first scored) of each window over ``n`` tokens: inputs [start, end),
    targets [start + 1, end + 1), of which those at positions >= first scored are counted."""
    if not 1 <= stride <= block:
        raise TinyGPTError(f"--stride must be between 1 and the context ({block}), got {stride}")
    scored_to = 1  # targets before this position are scored already (position 0 never is)
    start = 0
    while scored_to < n:
        end = min(start + block, n - 1)
        yield start, end, scored_to
        scored_to = end + 1
        start += stride


@torch.no_grad()
def score(lm: TinyGPT, ids: list[int], *, stride: int | None = None, batch_size: int = 8,
          progress: Callable[[int], None] | None = None) -> Score:
    """Summed loss over every token of ``ids`` but the first (see the module docstring)."""
    if len(ids) < 2:
        raise TinyGPTError("the text has fewer than two tokens; there is nothing to predict")
    model = lm.model
    block = model.config.block_size
    stride = stride or block
    was_training = model.training
    model.eval()
    data = torch.tensor(ids, dtype=torch.long)
    spans = list(windows(len(ids), block, stride))
    total, counted = 0.0, 0
    try:
        for i in range(0, len(spans), batch_size):
            group = spans[i:i + batch_size]
            x = torch.zeros(len(group), block, dtype=torch.long)
            y = torch.full((len(group), block), IGNORE_INDEX, dtype=torch.long)
            for row, (start, end, first) in enumerate(group):
                x[row, :end - start] = data[start:end]
                skip = first - (start + 1)  # targets already scored by an earlier window
                y[row, skip:end - start] = data[start + 1 + skip:end + 1]
            # Padding sits after each row's real tokens: causal attention keeps it from them.
            out = model(x.to(lm.device), y.to(lm.device))
            total += float(out.loss_sum)
            counted += int(out.n_targets)
            if progress is not None:
                progress(int(out.n_targets))
    finally:
        model.train(was_training)
    n_bytes = len(lm.tokenizer.decode(ids[1:]).encode("utf-8"))
    return Score(total, counted, n_bytes)


# ---------------------------------------------------------------------------- models and texts

def evaluate(source: str, text: str, where: str, *, lm: TinyGPT | None = None, stride: int | None = None,
             batch_size: int = 8, checkpoint: str = "best", device: str = "auto",
             dtype: str = "fp32", progress: bool = True) -> dict:
    """Score ``text`` (described by ``where``) with the model at ``source`` (a run, a Hugging
    Face name or directory; ``lm`` if already loaded), in ``dtype``; the result as one row. A run
    also keeps the row, with the time and library versions, in its eval.json."""
    import time
    from pathlib import Path

    from tqdm import tqdm

    from .report import given_or_loaded, keep, model_row

    lm = given_or_loaded(source, lm, checkpoint=checkpoint, device=device, dtype=dtype)
    ids = lm.tokenizer.encode(text)
    started = time.perf_counter()
    with tqdm(total=max(len(ids) - 1, 0), desc=Path(source).name, unit="tok", leave=False,
              disable=None if progress else True) as bar:
        s = score(lm, ids, stride=stride, batch_size=batch_size, progress=bar.update)
    row = {**model_row(source, lm), "data": where, "chars": len(text),
           "stride": stride or lm.model.config.block_size, "tokens": s.tokens, "bytes": s.bytes, "loss": s.loss,
           "perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte,
           "seconds": round(time.perf_counter() - started, 2)}
    keep(source, "perplexity", row)
    return row


def validation_text(run_path, log: Callable[[str], None] | None = None) -> str:
    """A run's held-out split (the tail of its corpus it never trained on), as text."""
    from ..train import run_data

    data = run_data(run_path, log=log or (lambda _: None))
    if len(data.val) < 2:
        raise TinyGPTError(f"{run_path} has no validation split (--val-fraction 0); give --data to evaluate on")
    return data.tokenizer.decode([int(t) for t in data.val])
