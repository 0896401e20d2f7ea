"""Logits processors: each rewrites next-token logits (B, V); a chain of them is a decoding rule.

Order (the same as Hugging Face's ``generate``): penalties on what was already said
(repetition, frequency / presence, no-repeat n-gram), then temperature, then the
truncations (top-k, top-p, min-p, typical-p). A removed token gets -inf. Each
truncation keeps at least one token. The arithmetic follows the published definitions
step for step, so the tokens kept are the same as transformers' on the same logits
(tested), not merely close.

Written here rather than calling transformers' processors because those want the whole
(B, L) id tensor each step, which batched rows of different lengths do not have, and
transformers is not a dependency of the main install.
"""

from __future__ import annotations

from typing import Protocol

import torch

NEG_INF = float("-inf")


class History:
    """What each row has said so far (prompt + generated), as the penalties need it: token
    lists per row, and per-row token counts (B, V) built on first use and kept up to date.
    Rows join (:meth:`extend`) and leave or are copied (:meth:`select`) with the batch."""

    def __init__(self, rows: list[list[int]], vocab_size: int, device: torch.device | str = "cpu"):
        self.rows = [list(r) for r in rows]
        self.vocab_size, self.device = vocab_size, torch.device(device)
        self._counts: torch.Tensor | None = None

    @property
    def counts(self) -> torch.Tensor:
        """(B, V) int32: how often each token occurs in each row."""
        if self._counts is None:
            self._counts = self._count(self.rows)
        return self._counts

    def _count(self, rows: list[list[int]]) -> torch.Tensor:
        counts = torch.zeros(len(rows), self.vocab_size, dtype=torch.int32, device=self.device)
        for i, row in enumerate(rows):
            if row:
                ids = torch.tensor(row, device=self.device)
                counts[i].index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
        return counts

    def append(self, tokens: torch.Tensor) -> None:
        """Add one new token per row, ``tokens`` (B,) (already on the device)."""
        for row, t in zip(self.rows, tokens.tolist()):
            row.append(t)
        if self._counts is not None:
            self._counts[torch.arange(len(self.rows), device=self.device), tokens] += 1

    def extend(self, rows: list[list[int]]) -> None:
        """New rows join at the end."""
        self.rows += [list(r) for r in rows]
        if self._counts is not None:
            self._counts = torch.cat([self._counts, self._count(rows)])

    def select(self, index: list[int]) -> None:
        """Keep rows ``index`` (finished rows leave the batch; beams are reordered and copied)."""
        self.rows = [list(self.rows[i]) for i in index]
        if self._counts is not None:
            self._counts = self._counts[torch.tensor(index, dtype=torch.long, device=self.device)]

    def subset(self, index: list[int]) -> "HistoryRows":
        """Rows ``index`` as processors see them (for a group of rows with their own rule)."""
        return HistoryRows(self, index)


class HistoryRows:
    """Some rows of a :class:`History`: their token lists, and their counts taken from the
    whole history's (built there once, kept up to date there)."""

    def __init__(self, history: History, index: list[int]):
        self.history, self.index = history, index
        self.rows = [history.rows[i] for i in index]

    @property
    def counts(self) -> torch.Tensor:
        return self.history.counts[torch.tensor(self.index, dtype=torch.long, device=self.history.device)]


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor: ...


class LimitVocab:
    """Never pick ids the tokenizer lacks (a checkpoint's embedding table may be larger)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        return logits.index_fill(-1, torch.arange(self.size, logits.size(-1), device=logits.device), NEG_INF)


class RepetitionPenalty:
    """Every token already present: a positive logit divided by ``penalty``, a negative one
    multiplied (so both become less likely), as in the CTRL paper."""

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        seen = history.counts > 0
        penalized = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
        return torch.where(seen, penalized, logits)


class FrequencyPresencePenalty:
    """OpenAI's penalties: subtract ``frequency`` x count and ``presence`` x (count > 0)."""

    def __init__(self, frequency: float, presence: float):
        self.frequency, self.presence = frequency, presence

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        counts = history.counts.to(logits.dtype)
        return logits - self.frequency * counts - self.presence * (counts > 0).to(logits.dtype)


class NoRepeatNGram:
    """Forbid any token that would repeat an n-gram the row already contains."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        n = self.n
        banned_rows, banned_ids = [], []
        for i, row in enumerate(history.rows):
            if len(row) + 1 < n:
                continue
            prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            for j in range(len(row) - n + 1):
                if tuple(row[j:j + n - 1]) == prefix:
                    banned_rows.append(i)
                    banned_ids.append(row[j + n - 1])
        if banned_rows:
            logits = logits.clone()
            logits[banned_rows, banned_ids] = NEG_INF
        return logits


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        return logits / self.temperature


class TopK:
    """Keep the ``k`` likeliest tokens (ties with the k-th kept too)."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        k = min(self.k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)


class TopP:
    """Nucleus sampling: keep the smallest set of likeliest tokens whose probability
    reaches ``p`` (drop, from the least likely up, tokens whose mass stays within 1 - p)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - self.p
        drop[..., -1:] = False  # the likeliest token always stays
        return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


class MinP:
    """Keep tokens at least ``p`` times as likely as the likeliest one."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        floor = self.p * probs.amax(dim=-1, keepdim=True)
        drop = probs < floor
        # Keep at least the likeliest token (all probabilities can underflow below the floor).
        drop.scatter_(-1, logits.argmax(dim=-1, keepdim=True), False)
        return logits.masked_fill(drop, NEG_INF)


class TypicalP:
    """Locally typical sampling: keep the tokens whose surprise is closest to the
    distribution's entropy, until their probability reaches ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        logp = logits.log_softmax(dim=-1)
        entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)
        distance, order = torch.sort((-logp - entropy).abs())
        cum = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cum < self.p).sum(dim=-1, keepdim=True).clamp(max=logits.size(-1) - 1)
        drop = distance > distance.gather(-1, last)
        drop[..., :1] = False
        return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def apply(processors: list[LogitsProcessor], logits: torch.Tensor, history: History) -> torch.Tensor:
    for p in processors:
        logits = p(logits, history)
    return logits
