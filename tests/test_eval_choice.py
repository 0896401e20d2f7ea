"""Multiple choice in HellaSwag's format: questions, token pairs, log-likelihoods, the three picks."""

import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, make_run, randomize_

from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.eval import choice
from tinygpt.eval.choice import (
    Likelihood,
    Question,
    encode_pair,
    loglikelihoods,
    multiple_choice,
    read_questions,
)
from tinygpt.generation import TinyGPT
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer, GPT2Tokenizer

# HellaSwag's own records (WikiHow's bracket artifacts, an empty ctx_b, ctx_b to capitalise) and plain ones.
HELLASWAG_DOCS = [
    {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window.",
     "ctx_b": "then", "ctx": "Then, the man writes over the snow covering the window. then",
     "endings": [", the man adds wax to the windshield.", ", a person boards a ski lift.",
                 ", the man puts on a coat.", ", the man continues removing the snow on his car."], "label": "3"},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot.",
     "ctx_b": "", "ctx": "[header] How to grow tomatoes [title] Pick a sunny spot. ",
     "endings": ["[step] Tomatoes need six hours of sun.", "[title] Water the   plants [step] Twice a day.",
                 "Eat them all [substeps] at once.", "Paint the fence."], "label": 0},
    {"activity_label": "Playing guitar", "ctx_a": "A boy sits on a chair holding a guitar.", "ctx_b": "the boy",
     "ctx": "A boy sits on a chair holding a guitar. the boy",
     "endings": ["strums the strings.", "eats the guitar.", "naïve café — plays a song.", "tunes it, then plays."],
     "label": 3},
]
PLAIN_DOCS = [
    {"context": "The capital of France is ", "endings": ["Paris.", "London.", "a cheese."], "label": 0},
    {"context": "Counting: one, two, thr", "endings": ["ee", "ow", "ough"], "label": 0},
]


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def char_lm(text="abcdefgh .,", seed=0, block=16):
    tok = CharTokenizer(text)
    model = GPT(GPTConfig(**{**TINY_MODEL, "block_size": block, "vocab_size": tok.vocab_size}))
    return TinyGPT(randomize_(model, seed, scale=0.3).eval(), tok)


def test_hellaswag_records_become_the_harness_tasks_text():
    import datasets
    from lm_eval.tasks.hellaswag import utils as harness

    theirs = harness.process_docs(datasets.Dataset.from_list([{**d, "label": str(d["label"])} for d in HELLASWAG_DOCS]))
    for doc, their in zip(HELLASWAG_DOCS, theirs):
        q = choice.question(doc)
        assert (q.context, q.endings, q.label) == (their["query"], their["choices"], their["gold"])
    q = choice.question(HELLASWAG_DOCS[1])
    assert q.context == "Home and Garden: How to grow tomatoes. Pick a sunny spot."  # artifacts gone
    assert q.endings[1] == " Water the  plants Twice a day."  # the harness's clean-up, quirks and all
    assert choice.question(HELLASWAG_DOCS[0], "llmc").context == HELLASWAG_DOCS[0]["ctx"]  # llm.c: raw ctx
    assert choice.question(PLAIN_DOCS[0], "llmc") == Question("The capital of France is ", ["Paris.", "London.",
                                                                                          "a cheese."], 0)


def test_context_and_continuation_split_where_the_contexts_own_tokens_end():
    tok = GPT2Tokenizer()
    ctx, cont = encode_pair(tok, "The capital of France is ", " Paris.")
    assert ctx == tok.encode("The capital of France is")  # the trailing space moved to the continuation
    assert ctx + cont == tok.encode("The capital of France is  Paris.")
    # "thr" + "ee" merge across the boundary: the pair is the whole text's tokens, split after the context's count.
    whole = tok.encode("Counting: one, two, three")
    ctx, cont = encode_pair(tok, "Counting: one, two, thr", "ee")
    assert ctx + cont == whole and len(ctx) == len(tok.encode("Counting: one, two, thr"))
    assert tok.encode("Counting: one, two, thr") + tok.encode("ee") != whole  # what encoding apart would score
    assert encode_pair(tok, "", "Hello") == ([tok.eot_id], tok.encode("Hello"))  # empty context: end-of-text
    ctx, cont = choice.choice_pairs(tok, choice.question({"context": "Line one\n", "endings": ["Two", "2"],
                                                          "label": 0, "delimiter": ""}))[0]
    assert ctx == tok.encode("Line one") and ctx + cont == tok.encode("Line one\nTwo")  # no " " between them
    llmc = choice.choice_pairs(tok, Question("A man", ["walks."], 0), "llmc")
    assert llmc == [(tok.encode("A man"), tok.encode(" walks."))]


def test_loglikelihoods_equal_a_direct_computation_from_the_logits():
    lm = char_lm()
    enc = lm.tokenizer.encode
    pairs = [(enc("abc"), enc("de")), (enc("h"), enc("a, b.")), (enc("abcdefgh" * 2), enc("ab")),  # > context
             (enc("ba"), enc("c"))]
    block = lm.model.config.block_size
    for batch_size in (1, 3, 8):
        got = loglikelihoods(lm, pairs, batch_size=batch_size)
        for (ctx, cont), s in zip(pairs, got):
            whole = torch.tensor(ctx + cont)[-(block + 1):]
            with torch.no_grad():
                logp = F.log_softmax(lm.model(whole[None, :-1]).logits[0].double(), -1)[-len(cont):]
            target = torch.tensor(cont)
            assert s.logprob == pytest.approx(logp.gather(-1, target[:, None]).sum().item(), rel=1e-5, abs=1e-5)
            assert s.tokens == len(cont) and s.greedy == bool((logp.argmax(-1) == target).all())
    # A continuation that is the model's own greedy choice is reported as greedy.
    with torch.no_grad():
        best = lm.model(torch.tensor([enc("abc")])).logits[0, -1].argmax().item()
    assert loglikelihoods(lm, [(enc("abc"), [best])])[0].greedy
    with pytest.raises(TinyGPTError, match="more than the model's context"):
        loglikelihoods(lm, [(enc("a"), enc("abcdefgh" * 3))])


def test_acc_acc_norm_and_acc_token_each_pick_by_their_own_rule(monkeypatch):
    questions = [Question("ctx", ["aaaa", "bbbbbbbbbb", "cc"], 0), Question("ctx", ["x", "y"], 1)]
    # Ending 0: most likely in total; ending 1: per character; ending 2: per token. Question 2: a tie.
    fake = [Likelihood(-4.0, 4, False), Likelihood(-4.5, 10, False), Likelihood(-5.0, 20, False),
            Likelihood(-1.0, 1, False), Likelihood(-1.0, 1, False)]
    monkeypatch.setattr(choice, "loglikelihoods", lambda lm, pairs, **kw: fake[:len(pairs)])
    s = multiple_choice(char_lm("abcxyt "), questions)
    picks = [(e["pred"], e["pred_norm"], e["pred_token"]) for e in s.examples]
    assert picks == [(0, 1, 2), (0, 0, 0)]  # per char -1, -0.45, -2.5; per token -1, -0.45, -0.25; ties: the first
    assert (s.questions, s.acc, s.acc_norm, s.acc_token) == (2, 0.5, 0.0, 0.0)


def test_reading_questions_and_their_errors(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", HELLASWAG_DOCS + PLAIN_DOCS)
    assert [q.label for q in read_questions(path)] == [3, 0, 3, 0, 0]
    assert len(read_questions(path, limit=2)) == 2
    bad = write_jsonl(tmp_path / "bad.jsonl", PLAIN_DOCS + [{"context": "x", "endings": ["a", "b"], "label": 2}])
    with pytest.raises(TinyGPTError, match=r"bad.jsonl, line 3: .*label 2 is not an index of its 2 endings"):
        read_questions(bad)
    (tmp_path / "junk.jsonl").write_text("{\"context\": \n", encoding="utf-8")
    with pytest.raises(TinyGPTError, match="line 1: not a multiple-choice question"):
        read_questions(tmp_path / "junk.jsonl")
    with pytest.raises(TinyGPTError, match="is not a file"):
        read_questions(tmp_path / "missing.jsonl")
    with pytest.raises(TinyGPTError, match="unknown multiple-choice protocol"):
        read_questions(path, "nanogpt")


def test_hellaswag_is_downloaded_once_and_offline_says_where_to_put_it(monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(TinyGPTError, match=r"could not download HellaSwag \(no network\); download https://"):
        read_questions("hellaswag")

    class Response:
        def __init__(self, url, timeout):
            assert url == choice.HELLASWAG_URL
            self.data = "".join(json.dumps(d) + "\n" for d in HELLASWAG_DOCS).encode()

        def read(self):
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", Response)
    assert len(read_questions("hellaswag")) == 3
    monkeypatch.setattr("urllib.request.urlopen", offline)  # the cached copy needs no network
    assert [q.label for q in read_questions("hellaswag")] == [3, 0, 3]


def test_eval_choices_prints_the_table_and_keeps_the_row(tmp_path, capsys):
    make_run(tmp_path / "run", randomize=True)
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"context": "the cat sat on the", "endings": [" mat.", " dog,", " zzzz"], "label": 0},
        {"context": "a b c", "endings": [" d", " e f g"], "label": 1}])
    assert main(["eval", str(tmp_path / "run"), "--choices", str(path), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "acc_norm" in out and "llm.c" in out and "bits/byte" not in out  # no --data: no perplexity table
    row = json.loads((tmp_path / "t.json").read_text())["multiple_choice"][0]
    kept = json.loads((tmp_path / "run" / "eval.json").read_text())[-1]
    assert kept["kind"] == "multiple_choice" and kept["acc"] == row["acc"] and row["questions"] == 2
    lm = TinyGPT(*_load(tmp_path / "run"))
    want = multiple_choice(lm, read_questions(path))
    assert (row["acc"], row["acc_norm"], row["acc_token"]) == (want.acc, want.acc_norm, want.acc_token)
    assert main(["eval", str(tmp_path / "run"), "--choices", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl is not a file" in capsys.readouterr().err


def _load(run):
    from tinygpt.run import RunDir

    r = RunDir.open(run)
    return r.load_model()[0].eval(), r.load_tokenizer()
