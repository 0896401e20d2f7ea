"""Greedy continuations of held-out text scored with BLEU and ROUGE against what really follows."""

import random

import pytest
import sacrebleu
import torch
from helpers import TINY_MODEL, randomize_
from rouge_score import rouge_scorer

from tinygpt.errors import TinyGPTError
from tinygpt.eval.continuations import prompt_starts, score_continuations
from tinygpt.generation import TinyGPT
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer

_rng = random.Random(0)
# Seeded random words: every window of 6 or more characters occurs once, so a prompt's place in the text is known.
TEXT = " ".join("".join(_rng.choices("abcdefghijklmnopqrstuvwxyz", k=_rng.randint(1, 6))) for _ in range(500))
BLOCK = 32


def tiny_lm(seed=0):
    tok = CharTokenizer(TEXT)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY_MODEL, "block_size": BLOCK, "vocab_size": tok.vocab_size}))
    return TinyGPT(randomize_(model, seed).eval(), tok)  # wandering, not one repeated character


def continue_from(source, skip=0):
    """A stand-in for ``TinyGPT.generate`` that continues each prompt with the text following
    it in ``source``, from ``skip`` characters on (0: exactly what follows it). Prompts come as
    token ids, which for the char tokenizer are the characters' indices."""
    tok = CharTokenizer(TEXT)

    def generate(prompts, max_new_tokens, **options):
        prompts = [tok.decode(p) for p in prompts]
        assert all(source.count(p) == 1 for p in prompts)
        return [source[source.index(p) + len(p) + skip:][:max_new_tokens] for p in prompts]
    return generate


def test_references_are_the_text_after_each_prompt_and_passages_never_overlap():
    lm = tiny_lm()
    s = score_continuations(lm, TEXT, 20, seed=3)
    assert (s.n, s.prompt_tokens, s.new_tokens) == (20, BLOCK // 2, BLOCK // 2)  # defaults: half the context each
    ends = []
    for prompt, reference, generated in s.examples:
        assert len(prompt) == len(reference) == len(generated) == BLOCK // 2  # one token per character
        assert TEXT.count(prompt + reference) == 1
        start = TEXT.index(prompt + reference)
        assert not ends or start >= ends[-1]  # in text order, each after the one before
        ends.append(start + BLOCK)
    again = score_continuations(lm, TEXT, 20, seed=3)
    other = score_continuations(lm, TEXT, 20, seed=4)
    assert again.examples == s.examples
    assert [e[0] for e in other.examples] != [e[0] for e in s.examples]


@pytest.mark.parametrize("n_tokens, n, span", [(100, 1, 100), (100, 4, 25), (1000, 7, 30), (61, 3, 20), (5, 5, 1)])
def test_prompt_starts_fit_the_text_without_overlapping(n_tokens, n, span):
    for seed in range(20):
        starts = prompt_starts(n_tokens, n, span, seed)
        assert len(starts) == n and starts == prompt_starts(n_tokens, n, span, seed)
        assert starts[0] >= 0 and starts[-1] + span <= n_tokens
        assert all(b - a >= span for a, b in zip(starts, starts[1:]))


def test_prompt_starts_reach_every_placement():
    # Two spans of 4 in 10 tokens can sit in C(4, 2) = 6 ways; seeds should find them all.
    seen = {tuple(prompt_starts(10, 2, 4, seed)) for seed in range(200)}
    assert seen == {(0, 4), (0, 5), (0, 6), (1, 5), (1, 6), (2, 6)}


@pytest.mark.parametrize("skip", [None, 3])  # the tiny model itself, or a continuation off by 3 characters
def test_scores_are_sacrebleu_and_rouge_score_on_the_examples(skip, monkeypatch):
    lm = tiny_lm()
    if skip is not None:
        monkeypatch.setattr(lm, "generate", continue_from(TEXT, skip))
    s = score_continuations(lm, TEXT, 12, prompt_tokens=10, max_new_tokens=20, seed=1)
    _, refs, hyps = zip(*s.examples)
    assert s.bleu == pytest.approx(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for kind in ("rouge1", "rouge2", "rougeL"):
        want = 100 * sum(scorer.score(r, h)[kind].fmeasure for r, h in zip(refs, hyps)) / len(refs)
        assert getattr(s, kind) == pytest.approx(want)
    if skip is not None:  # shared words: scores that show a swapped or unscaled number
        assert 0 < s.bleu < 100 and 0 < s.rouge2 < s.rouge1 < 100
    assert s.to_row() == {"generate": 12, "prompt_tokens": 10, "new_tokens": 20, "bleu": s.bleu,
                          "rouge1": s.rouge1, "rouge2": s.rouge2, "rougeL": s.rougeL}


def test_continuing_the_text_scores_100_and_continuing_it_off_by_some_characters_less(monkeypatch):
    lm = tiny_lm()
    monkeypatch.setattr(lm, "generate", continue_from(TEXT))
    perfect = score_continuations(lm, TEXT, 10, prompt_tokens=8, max_new_tokens=24, batch_size=4)
    assert all(reference == generated for _, reference, generated in perfect.examples)
    assert perfect.bleu == pytest.approx(100) and perfect.rouge1 == perfect.rouge2 == perfect.rougeL == 100
    scores = []
    for skip in (2, 6, 24):  # 24: the text after the reference, sharing a short word at most
        monkeypatch.setattr(lm, "generate", continue_from(TEXT, skip))
        off = score_continuations(lm, TEXT, 10, prompt_tokens=8, max_new_tokens=24, batch_size=4)
        assert [e[:2] for e in off.examples] == [e[:2] for e in perfect.examples]
        scores.append((off.bleu, off.rouge1, off.rouge2, off.rougeL))
    for kind in range(4):  # further off, lower on every metric
        assert 100 > scores[0][kind] > scores[1][kind] > scores[2][kind]
    assert scores[0][2] > 50 and scores[-1][2] == 0  # no word pair in common


def test_generation_is_greedy_and_the_same_in_any_batch():
    lm = tiny_lm()
    s = score_continuations(lm, TEXT, 6, max_new_tokens=4, batch_size=6)
    assert score_continuations(lm, TEXT, 6, max_new_tokens=4, batch_size=6).examples == s.examples
    assert score_continuations(lm, TEXT, 6, max_new_tokens=4, batch_size=1).examples == s.examples
    for prompt, _, generated in s.examples:  # each character is the model's likeliest next one
        ids = lm.tokenizer.encode(prompt)
        for _ in range(4):
            with torch.no_grad():
                ids.append(int(lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert lm.tokenizer.decode(ids[-4:]) == generated


def test_bad_requests_are_one_line_errors(monkeypatch):
    lm = tiny_lm()
    with pytest.raises(TinyGPTError, match=r"need 3200 tokens of text and it has \d+: .*--generate.*--max-chars"):
        score_continuations(lm, TEXT, 100)
    for bad, match in [(dict(n=0), "--generate must be at least 1"),
                       (dict(max_new_tokens=BLOCK), "--max-new-tokens must be between 1 and 31"),
                       (dict(max_new_tokens=20, prompt_tokens=13), "--prompt-tokens must be between 1 and 12"),
                       (dict(batch_size=0), "--batch-size must be at least 1")]:
        with pytest.raises(TinyGPTError, match=match) as err:
            score_continuations(lm, TEXT, **{"n": 2, **bad})
        assert "\n" not in str(err.value)
    monkeypatch.setitem(__import__("sys").modules, "sacrebleu", None)  # as if it were not installed
    with pytest.raises(TinyGPTError, match=r"pip install 'tinygpt\[eval\]'"):
        score_continuations(lm, TEXT, 2, max_new_tokens=2)
