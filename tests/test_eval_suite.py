"""What tinygpt eval runs: its options checked where they enter, and the text it scores."""

import pytest

from tinygpt.errors import TinyGPTError
from tinygpt.eval import perplexity
from tinygpt.eval.suite import EvalOptions, evaluate_models, text_to_score


@pytest.mark.parametrize("name", ["batch_size", "max_chars", "limit", "generate", "stride", "prompt_tokens",
                                  "max_new_tokens"])
def test_counts_must_be_at_least_one(name):
    with pytest.raises(TinyGPTError, match=f"--{name.replace('_', '-')} must be at least 1, got 0"):
        EvalOptions(**{name: 0})
    EvalOptions(**{name: 1})


def test_which_scores_read_a_text():
    assert EvalOptions().scores_text and EvalOptions().needs_text  # bits per byte by default
    questions = EvalOptions(choices="q.jsonl")
    assert not questions.scores_text and not questions.needs_text  # only questions: no text read
    assert EvalOptions(choices="q.jsonl", generate=3).needs_text
    assert EvalOptions(choices="q.jsonl", data="t.txt").scores_text  # a text given is scored
    generate = EvalOptions(generate=5)
    assert not generate.scores_text and generate.needs_text  # only what was asked: no bits per byte first
    assert not EvalOptions(generate=5, data="t.txt").scores_text  # its --data is where the prompts come from


def test_generate_alone_runs_only_the_generation(tiny_run):
    opts = EvalOptions(generate=2, prompt_tokens=4, max_new_tokens=3)
    tables, text, _ = evaluate_models([str(tiny_run)], opts, device="cpu")
    assert tables["perplexity"] == [] and len(tables["generate"]) == 1 and text


def test_the_text_is_data_else_the_first_models_validation_split(trained_run, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcdef" * 10)
    assert text_to_score(["whatever"], EvalOptions(data=str(text), max_chars=7)) == ("abcdefa", str(text))
    got, where = text_to_score([str(trained_run), "other"], EvalOptions(max_chars=50))
    assert got == perplexity.validation_text(trained_run)[:50]
    assert where == f"validation split of {trained_run.resolve().name}"  # its folder's name, however it was typed
    assert text_to_score([str(trained_run)], EvalOptions(choices="q.jsonl")) == (None, None)
    with pytest.raises(TinyGPTError, match="gpt2 is not a tinygpt run, so it has no validation split; give --data"):
        text_to_score(["gpt2"], EvalOptions())


def test_bad_files_fail_before_any_model_loads(tmp_path):
    with pytest.raises(TinyGPTError, match="not a file"):  # the questions are read first: no model named exists
        evaluate_models([str(tmp_path / "no-model")], EvalOptions(data=__file__, choices=str(tmp_path / "q.jsonl")))
    with pytest.raises(TinyGPTError, match="one or more models"):
        evaluate_models([], EvalOptions())
