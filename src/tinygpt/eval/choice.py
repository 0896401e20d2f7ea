"""Multiple choice in HellaSwag's format: which ending does the model find likeliest?

Each question is a context and a few endings; an ending is scored by the log-likelihood of
its tokens given the context. Three ways to pick an answer from those scores are reported:

- ``acc``: the largest summed log-likelihood.
- ``acc_norm``: the largest log-likelihood per character of the ending, as EleutherAI's
  lm-evaluation-harness computes its ``acc_norm``. Longer endings collect more negative
  log-likelihood, and this corrects for that.
- ``acc_token``: the largest mean log-likelihood per token of the ending. This is what
  build-nanogpt's and llm.c's HellaSwag scripts call ``acc_norm``.

The ``protocol`` decides how a question becomes text and tokens:

- ``harness``: the harness's HellaSwag task. The context is ``activity_label: ctx_a
  Ctx_b`` and the text is cleaned of WikiHow's bracket artifacts. Each continuation is
  " " + ending (a plain record may name another ``delimiter``), and context and continuation are tokenized together and split where the
  context's own tokens end (the harness's ``_encode_pair``). That split keeps BPE merges
  at the boundary exactly as the harness has them. acc and acc_norm then equal the
  harness's, example by example.
- ``llmc``: llm.c's script. It uses the raw ``ctx`` field and raw endings, and tokenizes
  context and " " + ending separately.

Published GPT-2 124M figures: harness acc 28.9 / acc_norm 31.1; llm.c acc 28.6 /
acc_token 29.6.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import TinyGPTError
from ..generation import TinyGPT
from ..generation.lm import start_ids
from ..tokenizer import Tokenizer

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_FILE = "hellaswag_val.jsonl"
PROTOCOLS = ("harness", "llmc")


@dataclass
class Question:
    context: str
    endings: list[str]
    label: int
    delimiter: str = " "  # between context and ending (the harness's target_delimiter)


# ---------------------------------------------------------------------------- questions

def preprocess(text: str) -> str:
    """The harness's HellaSwag clean-up: strip, turn " [title]" into a sentence break, drop
    the other bracketed WikiHow artifacts, fold the double spaces that leaves."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def question(doc: dict, protocol: str = "harness") -> Question:
    """One JSONL record -> a Question. HellaSwag's own records (``ctx_a``, ``ctx_b``,
    ``activity_label``, ``ctx``, ``endings``, ``label``) follow ``protocol``; a plain record
    (``context``, ``endings``, ``label``, optionally ``delimiter``, default " ") is taken as written."""
    endings = doc.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise ValueError("needs 'endings': a list of at least two strings")
    try:
        label = int(doc["label"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("needs 'label': the index of the right ending") from None
    if not 0 <= label < len(endings):
        raise ValueError(f"label {label} is not an index of its {len(endings)} endings")
    if "context" in doc:
        return Question(str(doc["context"]), endings, label, str(doc.get("delimiter", " ")))
    if protocol == "llmc" and "ctx" in doc:
        return Question(doc["ctx"], endings, label)
    if {"ctx_a", "ctx_b", "activity_label"} <= doc.keys():
        context = doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return Question(preprocess(context), [preprocess(e) for e in endings], label)
    raise ValueError("needs 'context' (or HellaSwag's 'ctx_a', 'ctx_b' and 'activity_label')")


def read_questions(spec: str | Path, protocol: str = "harness", limit: int | None = None,
                   log: Callable[[str], None] | None = None) -> list[Question]:
    """Questions from a JSONL file, or from HellaSwag's official validation set for the spec
    ``hellaswag`` (downloaded once into the cache, see :func:`hellaswag_path`)."""
    if protocol not in PROTOCOLS:
        raise TinyGPTError(f"unknown multiple-choice protocol {protocol!r}; use one of: {', '.join(PROTOCOLS)}")
    path = hellaswag_path(log) if str(spec) == "hellaswag" else Path(spec)
    if not path.is_file():
        raise TinyGPTError(f"{path} is not a file; give a JSONL of questions (context, endings, label) or hellaswag")
    questions = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                questions.append(question(json.loads(line), protocol))
            except (ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
                raise TinyGPTError(f"{path}, line {n}: not a multiple-choice question ({e}); "
                                   "each line must be a JSON object with context, endings and label") from None
            if limit is not None and len(questions) >= limit:
                break
    if not questions:
        raise TinyGPTError(f"{path} holds no questions")
    return questions


def hellaswag_path(log: Callable[[str], None] | None = None) -> Path:
    """HellaSwag's validation JSONL (10,042 questions). It is downloaded from the authors'
    repository on first use and cached; offline, put the file at the path this names."""
    from ..checkpoint import atomic_write
    from ..config import cache_dir

    path = cache_dir() / "hellaswag" / HELLASWAG_FILE
    if path.is_file():
        return path
    if log is not None:
        log(f"downloading HellaSwag's validation set from {HELLASWAG_URL}")
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(HELLASWAG_URL, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise TinyGPTError(f"could not download HellaSwag ({getattr(e, 'reason', e)}); download {HELLASWAG_URL} "
                           f"to {path}, or pass a JSONL file of questions") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data), size=len(data))
    return path


# ---------------------------------------------------------------------------- tokens

def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness makes them.

    The context's trailing whitespace moves to the continuation. The two are tokenized
    together and split where the context's own tokens end, so a merge across the boundary
    is scored as the model would read the whole text. An empty context conditions on
    end-of-text, as in the harness (a newline for a tokenizer without one)."""
    if not context:
        return start_ids(tokenizer), tokenizer.encode(continuation)
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = tokenizer.encode(stripped + continuation)
    n = len(tokenizer.encode(stripped))
    return whole[:n], whole[n:]


def choice_pairs(tokenizer: Tokenizer, q: Question, protocol: str = "harness") -> list[tuple[list[int], list[int]]]:
    """One (context ids, ending ids) pair per ending of ``q``."""
    if protocol == "llmc":
        context = tokenizer.encode(q.context) if q.context else start_ids(tokenizer)
        return [(context, tokenizer.encode(q.delimiter + e)) for e in q.endings]
    return [encode_pair(tokenizer, q.context, q.delimiter + e) for e in q.endings]


@dataclass
class Likelihood:
    logprob: float   # summed log-probability of the continuation's tokens (nats)
    tokens: int      # how many tokens the continuation has
    greedy: bool     # whether greedy decoding would produce exactly those tokens


@torch.no_grad()
def loglikelihoods(lm: TinyGPT, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> list[Likelihood]:
    """Log-likelihood of each continuation given its context, in padded batches.

    A pair longer than the model's context keeps its last ``block_size`` input tokens, as
    the harness does. Long pairs are batched together so that there is little padding."""
    model = lm.model
    block = model.config.block_size
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise TinyGPTError(f"continuation {i} has no tokens to score")
        if len(cont) > block:
            raise TinyGPTError(f"continuation {i} has {len(cont)} tokens, more than the model's "
                               f"context ({block}); shorten it")
        rows.append((i, (ctx + cont)[-(block + 1):][:-1], cont))  # inputs predict the tokens after them
    rows.sort(key=lambda r: -len(r[1]))
    out: list[Likelihood | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(rows), batch_size):
            group = rows[b:b + batch_size]
            width = len(group[0][1])
            x = torch.zeros(len(group), width, dtype=torch.long)  # (B, T), padded on the right
            for r, (_, inp, _) in enumerate(group):
                x[r, :len(inp)] = torch.tensor(inp)
            # Causal attention keeps padding after a row's tokens from changing their logits.
            logits = model(x.to(lm.device)).logits.float()  # (B, T, vocab)
            for r, (i, inp, cont) in enumerate(group):
                end = len(inp)
                logp = F.log_softmax(logits[r, end - len(cont):end], dim=-1)  # (len(cont), vocab)
                target = torch.tensor(cont, device=logp.device)
                out[i] = Likelihood(float(logp.gather(-1, target[:, None]).sum()), len(cont),
                                    bool((logp.argmax(-1) == target).all()))
            if progress is not None:
                progress(len(group))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------- scoring

def _best(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equals, as numpy's argmax


@dataclass
class ChoiceScore:
    protocol: str
    questions: int
    acc: float
    acc_norm: float
    acc_token: float
    examples: list[dict] = field(default_factory=list)  # per question: logprobs, tokens, picks, label


def multiple_choice(lm: TinyGPT, questions: Sequence[Question], protocol: str = "harness", *, batch_size: int = 16,
                    progress: Callable[[int], None] | None = None) -> ChoiceScore:
    """acc, acc_norm and acc_token of ``lm`` on ``questions`` (see the module docstring)."""
    pairs = [pair for q in questions for pair in choice_pairs(lm.tokenizer, q, protocol)]
    scores = loglikelihoods(lm, pairs, batch_size=batch_size, progress=progress)
    examples = []
    at = 0
    for q in questions:
        got = scores[at:at + len(q.endings)]
        at += len(q.endings)
        lls = [s.logprob for s in got]
        examples.append({
            "logprobs": lls, "tokens": [s.tokens for s in got], "label": q.label,
            "pred": _best(lls),
            "pred_norm": _best([ll / len(e) if e else float("-inf") for ll, e in zip(lls, q.endings)]),
            "pred_token": _best([ll / s.tokens for ll, s in zip(lls, got)])})
    n = len(examples)
    return ChoiceScore(protocol, n, *(sum(e[k] == e["label"] for e in examples) / n
                                     for k in ("pred", "pred_norm", "pred_token")), examples)


def evaluate(source: str, questions: Sequence[Question], where: str, *, lm: TinyGPT | None = None,
             protocol: str = "harness", batch_size: int = 16, checkpoint: str = "best", device: str = "auto",
             dtype: str = "fp32", progress: bool = True) -> tuple[dict, ChoiceScore]:
    """:func:`multiple_choice` of the model at ``source`` on ``questions`` (from
    :func:`read_questions` with the same ``protocol``; ``where`` names them), as one row
    (kept in a run's eval.json) and the full score."""
    import time

    from tqdm import tqdm

    from .report import given_or_loaded, keep, model_row

    lm = given_or_loaded(source, lm, checkpoint=checkpoint, device=device, dtype=dtype)
    started = time.perf_counter()
    with tqdm(total=sum(len(q.endings) for q in questions), desc=Path(source).name, unit="ending", leave=False,
              disable=None if progress else True) as bar:
        s = multiple_choice(lm, questions, protocol, batch_size=batch_size, progress=bar.update)
    row = {**model_row(source, lm), "data": where, "protocol": protocol, "questions": s.questions,
           "acc": s.acc, "acc_norm": s.acc_norm, "acc_token": s.acc_token,
           "seconds": round(time.perf_counter() - started, 2)}
    keep(source, "multiple_choice", row)
    return row, s
