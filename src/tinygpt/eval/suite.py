"""What ``tinygpt eval`` runs: which scores its options ask for, the text they read, and
each model through each score, as one table per kind of score.

:class:`EvalOptions` is the command's own options, checked where they enter; the choice of
text (``--data``, else the first model's validation split) is :func:`text_to_score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..config import check_choices, like, opt
from ..data import read_text
from ..errors import TinyGPTError
from ..generation import GenerationConfig
from ..options import TextOptions
from ..run import RunDir
from ..train.config import TrainConfig
from . import choice, continuations, perplexity
from .report import given_or_loaded


@dataclass
class EvalOptions:
    data: str | None = like(TextOptions, "data", shown="the first model's validation split")
    max_chars: int | None = like(TextOptions, "max_chars")
    stride: int | None = opt(None, "bits per byte: tokens between window starts (none: the context, no overlap); "
                                   "each scored token then sees at least context - stride tokens")
    batch_size: int = like(TrainConfig, "batch_size", 8)
    choices: str | None = opt(None, "multiple-choice questions: hellaswag (the official validation set, downloaded "
                                    "once) or a JSONL of context, endings, label", metavar="JSONL")
    protocol: str = opt("harness", "how questions become tokens: lm-evaluation-harness's or llm.c's script",
                        choices=choice.PROTOCOLS)
    limit: int | None = opt(None, "only the first N questions", metavar="N")
    generate: int | None = opt(None, "continue N held-out prompts greedily and score them with BLEU and ROUGE "
                                     "(instead of bits per byte)", metavar="N")
    prompt_tokens: int | None = opt(None, "prompt length in tokens", metavar="N",
                                    shown="half the context, less where the new tokens would not fit")
    max_new_tokens: int | None = like(GenerationConfig, "max_new_tokens", None, aliases=("--new-tokens",),
                                      shown="64, or half the context if less")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("batch_size", "max_chars", "limit", "generate", "stride", "prompt_tokens", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    @property
    def scores_text(self) -> bool:
        """Bits per byte: asked for by default, or by a --data beside --choices; not with
        --generate, whose --data is where its prompts come from."""
        return self.generate is None and (self.data is not None or self.choices is None)

    @property
    def needs_text(self) -> bool:
        return self.scores_text or self.generate is not None


def text_to_score(models: Sequence[str], opts: EvalOptions,
                  log: Callable[[str], None] | None = None) -> tuple[str | None, str | None]:
    """(text, where it is from) for bits per byte and continuations: ``--data``, else the
    validation split of the first model (a run); (None, None) when no score reads a text."""
    if opts.data is not None:
        return read_text(opts.data, opts.max_chars, log=log), opts.data
    if not opts.needs_text:
        return None, None
    if not RunDir.is_run(models[0]):
        raise TinyGPTError(f"{models[0]} is not a tinygpt run, so it has no validation split; give --data")
    # Named by the run's folder, not the path as typed, so that evaluations from anywhere line up.
    name = RunDir(models[0]).path.resolve().name
    text = perplexity.validation_text(models[0], log)
    return (text[:opts.max_chars] if opts.max_chars else text), f"validation split of {name}"


def evaluate_models(models: Sequence[str], opts: EvalOptions, *, checkpoint: str = "best", device: str = "auto",
                    dtype: str = "fp32", seed: int | None = 0,
                    log: Callable[[str], None] | None = None) -> tuple[dict[str, list[dict]], str | None, str | None]:
    """Every model through every score ``opts`` ask for: {"perplexity", "multiple_choice",
    "generate"} -> one row per model (runs also keep theirs in eval.json), and the text
    scored with where it is from. The text and questions are read before any model loads,
    so that a bad file fails at once."""
    if not models:
        raise TinyGPTError("give one or more models to evaluate")
    text, where = text_to_score(models, opts, log)
    questions = choice.read_questions(opts.choices, opts.protocol, opts.limit, log) if opts.choices else None
    tables: dict[str, list[dict]] = {"perplexity": [], "multiple_choice": [], "generate": []}
    for source in models:
        lm = given_or_loaded(source, checkpoint=checkpoint, device=device, dtype=dtype)
        if opts.scores_text:
            tables["perplexity"].append(perplexity.evaluate(source, text, where, lm=lm, stride=opts.stride,
                                                            batch_size=opts.batch_size))
        if questions:
            tables["multiple_choice"].append(choice.evaluate(source, questions, opts.choices, lm=lm,
                                                             protocol=opts.protocol, batch_size=opts.batch_size)[0])
        if opts.generate:
            tables["generate"].append(continuations.evaluate(
                source, text, where, opts.generate, lm=lm, seed=seed, prompt_tokens=opts.prompt_tokens,
                max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size)[0])
    return tables, text, where
