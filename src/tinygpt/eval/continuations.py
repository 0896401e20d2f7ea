"""How close a model's greedy continuations of held-out text come to the text that really
follows: corpus BLEU (sacrebleu) and ROUGE-1/2/L F-measure (rouge-score), both 0-100.

``n`` passages are picked from the text at seeded random token offsets that never overlap.
Each is ``prompt_tokens`` tokens of prompt and the ``max_new_tokens`` tokens after it, the
reference. Prompt and reference are cut from one encoding of the whole text and decoded
slice by slice, so they split on a token boundary, and the model reads each prompt as
those very tokens. The scores are computed by the libraries the field reports, not
rewritten here, so they compare with published numbers computed the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import TinyGPTError
from ..generation import TinyGPT

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass
class GenerationScore:
    bleu: float             # corpus BLEU, 0-100
    rouge1: float           # mean F-measure, 0-100
    rouge2: float
    rougeL: float
    n: int                  # prompts
    prompt_tokens: int      # tokens of each prompt (as cut from the text)
    new_tokens: int         # tokens generated for, and in the reference of, each prompt
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, reference, generated)

    def to_row(self) -> dict:
        """The numbers, without the examples, for a results table or eval.json."""
        return {"generate": self.n, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "bleu": self.bleu, "rouge1": self.rouge1, "rouge2": self.rouge2, "rougeL": self.rougeL}


def prompt_starts(n_tokens: int, n: int, span: int, seed: int = 0) -> list[int]:
    """Sorted offsets of ``n`` spans of ``span`` tokens that fit in ``n_tokens`` without
    overlapping, every such placement equally likely for a given ``seed``.

    The ``n_tokens - n * span`` tokens not in a span are shared out among the n + 1 gaps
    around the spans: picking n sorted distinct values ``c`` from ``range(spare + n)`` and
    taking ``c[i] - i`` as the spare tokens before span i is the stars-and-bars bijection."""
    if n < 1:
        raise TinyGPTError(f"--generate must be at least 1, got {n}")
    spare = n_tokens - n * span
    if spare < 0:
        raise TinyGPTError(f"{n} prompts of {span} tokens (prompt + continuation) need {n * span} tokens of text "
                           f"and it has {n_tokens}: ask for fewer (--generate) or give more text (--max-chars)")
    picks = sorted(random.Random(seed).sample(range(spare + n), n))
    return [c - i + i * span for i, c in enumerate(picks)]


def text_scores(generated: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and mean ROUGE-1/2/L F-measure (stemmed) of ``generated`` against one
    reference each, all scaled 0-100."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError:
        raise TinyGPTError("generation metrics need sacrebleu and rouge-score: pip install 'tinygpt[eval]'") from None
    if not generated or len(generated) != len(references):
        raise TinyGPTError(f"need one reference per generated text, got {len(generated)} and {len(references)}")
    scores = {"bleu": sacrebleu.corpus_bleu(generated, [references]).score}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    each = [scorer.score(ref, hyp) for hyp, ref in zip(generated, references)]  # (target, prediction)
    for kind in ROUGE_TYPES:
        scores[kind] = 100 * sum(s[kind].fmeasure for s in each) / len(each)
    return scores


def score_continuations(lm: TinyGPT, text: str, n: int, *, prompt_tokens: int | None = None,
                        max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 16) -> GenerationScore:
    """Greedy continuations of ``n`` prompts cut from ``text`` (see the module docstring),
    scored against what follows each in the text.

    ``max_new_tokens`` (all of them are generated: the end-of-text token stops nothing here)
    defaults to 64 (or half the context, if smaller) and ``prompt_tokens`` to half the
    context, less where prompt and continuation would not fit in it together: past the
    context the model would forget the start of its prompt while generating."""
    if n < 1:
        raise TinyGPTError(f"--generate must be at least 1, got {n}")
    if batch_size < 1:
        raise TinyGPTError(f"--batch-size must be at least 1, got {batch_size}")
    block = lm.model.config.block_size
    new_tokens = min(64, block // 2) if max_new_tokens is None else max_new_tokens
    if not 1 <= new_tokens < block:
        raise TinyGPTError(f"--max-new-tokens must be between 1 and {block - 1} (the model's context, {block}, "
                           f"less one token of prompt), got {new_tokens}")
    prompt_tokens = min(block // 2, block - new_tokens) if prompt_tokens is None else prompt_tokens
    if not 1 <= prompt_tokens <= block - new_tokens:
        raise TinyGPTError(f"--prompt-tokens must be between 1 and {block - new_tokens} so that prompt and "
                           f"{new_tokens} new tokens fit the model's context ({block}), got {prompt_tokens}")
    ids = lm.tokenizer.encode(text)
    span = prompt_tokens + new_tokens
    prompts, cuts, references = [], [], []
    for start in prompt_starts(len(ids), n, span, seed):
        # The model reads the prompt as the slice of the text's own tokens (re-encoding the
        # decoded text could merge differently at the cut); the text is for people to read.
        cuts.append(ids[start:start + prompt_tokens])
        prompts.append(lm.tokenizer.decode(cuts[-1]))
        references.append(lm.tokenizer.decode(ids[start + prompt_tokens:start + span]))
    generated: list[str] = []
    for i in range(0, n, batch_size):
        generated += lm.generate(cuts[i:i + batch_size], new_tokens, greedy=True, stop_at_eot=False, seed=seed)
    s = text_scores(generated, references)
    return GenerationScore(s["bleu"], s["rouge1"], s["rouge2"], s["rougeL"], n, prompt_tokens, new_tokens,
                           list(zip(prompts, references, generated)))


def evaluate(source: str, text: str, where: str, n: int, *, lm: TinyGPT | None = None, seed: int = 0,
             prompt_tokens: int | None = None, max_new_tokens: int | None = None, batch_size: int = 16,
             checkpoint: str = "best", device: str = "auto", dtype: str = "fp32") -> tuple[dict, GenerationScore]:
    """:func:`score_continuations` of the model at ``source`` as one row (kept in a run's
    eval.json, see :func:`~tinygpt.eval.report.keep`), and the full score with its examples."""
    import time

    from .report import given_or_loaded, keep, model_row

    lm = given_or_loaded(source, lm, checkpoint=checkpoint, device=device, dtype=dtype)
    started = time.perf_counter()
    s = score_continuations(lm, text, n, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens, seed=seed,
                            batch_size=batch_size)
    row = {**model_row(source, lm), "data": where, **s.to_row(), "seed": seed,
           "seconds": round(time.perf_counter() - started, 2)}
    keep(source, "generate", row, libraries=("sacrebleu", "rouge-score"))
    return row, s
