"""Loss, perplexity and bits per byte over a text, in sliding windows, and `tinygpt eval`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL

from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.eval import score, windows
from tinygpt.generation import TinyGPT
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. ünïcödé too!\n" * 3  # multi-byte characters: bytes != chars


def tiny_lm(seed=0):
    tok = CharTokenizer(TEXT)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": tok.vocab_size})).eval()
    return TinyGPT(model, tok)


def nll(model, x, y):
    """Summed -log p(y | x) from one forward's logits."""
    with torch.no_grad():
        logp = F.log_softmax(model(x.unsqueeze(0)).logits[0].double(), -1)
    return -logp.gather(-1, y.unsqueeze(-1)).sum().item()


def test_one_window_equals_a_direct_computation_from_the_logits():
    lm = tiny_lm()
    ids = lm.tokenizer.encode(TEXT[:12])  # shorter than the context of 16
    s = score(lm, ids)
    data = torch.tensor(ids)
    want = nll(lm.model, data[:-1], data[1:])
    assert s.tokens == len(ids) - 1
    assert s.loss_sum == pytest.approx(want, rel=1e-6)
    assert s.perplexity == pytest.approx(math.exp(want / (len(ids) - 1)), rel=1e-6)
    n_bytes = len(TEXT[1:12].encode())
    assert s.bytes == n_bytes and s.bits_per_byte == pytest.approx(want / math.log(2) / n_bytes, rel=1e-6)


def test_stride_equal_to_the_context_is_the_non_overlapping_computation():
    lm = tiny_lm()
    ids = lm.tokenizer.encode(TEXT)
    T = lm.model.config.block_size
    data = torch.tensor(ids)
    want = 0.0
    for start in range(0, len(ids) - 1, T):
        end = min(start + T, len(ids) - 1)
        want += nll(lm.model, data[start:end], data[start + 1:end + 1])
    for batch_size in (1, 3, 64):  # batching and the padded last window change nothing
        s = score(lm, ids, stride=T, batch_size=batch_size)
        assert s.tokens == len(ids) - 1 and s.loss_sum == pytest.approx(want, rel=1e-6)
    assert s.bytes == len(TEXT[1:].encode()) > len(TEXT) - 1


@pytest.mark.parametrize("n, block, stride", [(40, 16, 16), (40, 16, 5), (40, 16, 1), (17, 16, 4), (5, 16, 3)])
def test_windows_score_every_token_once_with_at_least_block_minus_stride_of_context(n, block, stride):
    seen = []
    for start, end, first in windows(n, block, stride):
        assert end - start <= block
        for target in range(max(first, start + 1), end + 1):
            seen.append(target)
            if start > 0:
                assert target - start >= block - stride  # context before the target
    assert sorted(seen) == seen == list(range(1, n))


def test_a_smaller_stride_scores_the_same_tokens_with_more_context():
    lm = tiny_lm()
    ids = lm.tokenizer.encode(TEXT)
    full, sliding = score(lm, ids), score(lm, ids, stride=4)
    assert sliding.tokens == full.tokens == len(ids) - 1 and sliding.bytes == full.bytes
    assert sliding.loss_sum != pytest.approx(full.loss_sum, rel=1e-6)  # other contexts, other numbers
    with pytest.raises(TinyGPTError, match="--stride must be between 1 and the context"):
        score(lm, ids, stride=17)
    with pytest.raises(TinyGPTError, match="fewer than two tokens"):
        score(lm, ids[:1])


def test_eval_command_table_and_eval_json(tiny_run, tmp_path, capsys):
    import shutil

    text = tmp_path / "held_out.txt"
    text.write_text("ROMEO: what light through yonder window breaks?\n" * 20)
    twin = shutil.copytree(tiny_run, tmp_path / "twin")  # evaluating writes to the run: not the shared one
    assert main(["eval", str(twin), str(tiny_run), "--data", str(text), "--stride", "8",
                 "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and len(out.strip().splitlines()) == 3
    assert len(str(twin)) > 40 and f"\n{twin} " in out  # the whole name, not its last 40 characters
    rows = json.loads((tmp_path / "e.json").read_text())["perplexity"]
    assert rows[0]["tokens"] == rows[1]["tokens"] == len(text.read_text()) - 1
    assert rows[0]["loss"] == rows[1]["loss"]  # the same weights
    assert main(["eval", str(tiny_run), "--max-chars", "500"]) == 0  # its own validation split
    kept = json.loads((tiny_run / "eval.json").read_text())
    assert [k["stride"] for k in kept] == [8, 16] and kept[1]["chars"] == 500 and "versions" in kept[1]


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--data", "x.txt"]) == 1
    assert main(["eval", str(tmp_path), "--batch-size", "0"]) == 1
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2
