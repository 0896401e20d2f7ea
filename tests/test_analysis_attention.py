"""Attention capture, its numbers (entropy, rollout, roles) and `tinygpt attention`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, random_ids

from tinygpt.analysis import attention
from tinygpt.cli import main
from tinygpt.generation import TinyGPT
from tinygpt.model import GPT, GPTConfig, record_attention
from tinygpt.tokenizer import CharTokenizer

CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"


def gpt2_style(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY_MODEL, **kw})).eval()


def manual_maps(model, idx):
    """softmax(q k^T / sqrt(d)) per layer from the model's own weights, causal, by hand."""
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.transformer.h]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    out = []
    B, T = idx.shape
    C, nh = model.config.n_embd, model.config.n_head
    for block, x in zip(model.transformer.h, inputs):
        h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias, model.config.norm_eps)
        qkv = h @ block.attn.c_attn.weight.T + block.attn.c_attn.bias
        q, k = qkv[..., :C], qkv[..., C:2 * C]
        q = q.view(B, T, nh, C // nh).transpose(1, 2)
        k = k.view(B, T, nh, C // nh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // nh)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out.append(torch.softmax(scores, -1))
    return out


def test_captured_weights_are_causal_distributions_equal_to_a_manual_softmax():
    model = gpt2_style()
    idx = random_ids((2, 12))
    maps = model.attention_maps(idx)
    want = manual_maps(model, idx)
    assert len(maps) == len(want) == TINY_MODEL["n_layer"]
    for got, ref in zip(maps, want):
        assert got.shape == (2, TINY_MODEL["n_head"], 12, 12)
        assert torch.allclose(got.sum(-1), torch.ones(2, TINY_MODEL["n_head"], 12), atol=1e-6)
        assert torch.all(got.triu(1) == 0)  # exactly zero above the diagonal
        assert (got - ref).abs().max() < 1e-6


def test_capturing_changes_no_logits(tiny_model):
    idx = random_ids((2, 10))
    with torch.no_grad():
        plain = tiny_model(idx).logits
        with record_attention(tiny_model) as maps:
            watched = tiny_model(idx).logits
    assert len(maps) == tiny_model.config.n_layer
    assert torch.equal(plain, watched)


def previous_token_model():
    """One layer whose head 0 looks at the previous position (from position codes alone)."""
    T, C = 16, 32
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=C, block_size=T, vocab_size=len(CHARS) + 1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.h[0].ln_1.weight.fill_(1.0)
        model.transformer.h[0].ln_2.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.wpe.weight.copy_(torch.eye(T, C))  # position p: unit vector e_p
        w = model.transformer.h[0].attn.c_attn.weight  # (3C, C): rows q, k, v
        for p in range(T):
            w[p, p] = 4.0  # head 0's query of position p points along e_p ...
            if p + 1 < T:  # ... and the key of position p along e_(p+1): q_i . k_j peaks at j = i - 1
                w[C + p + 1, p] = 4.0
    tok = CharTokenizer(CHARS)
    return TinyGPT(model, tok)


def test_the_role_detector_finds_a_previous_token_head():
    lm = previous_token_model()
    att = attention.capture(lm, "the cat sat on it")
    scores = attention.role_scores(att.maps)
    assert scores["previous"][0, 0] > 0.95
    assert scores["previous"][0, 1] < 0.3  # head 1 (all zeros) spreads evenly
    roles = {(h["layer"], h["head"]): h["role"] for h in attention.head_roles(scores)}
    assert roles == {(0, 0): "previous", (0, 1): None}


def test_induction_scores_read_the_token_after_the_earlier_occurrence(monkeypatch):
    lm = previous_token_model()
    n = 6
    maps = torch.zeros(1, 2, 2 * n, 2 * n)
    maps[0, 0, 0, 0] = 1
    for i in range(1, 2 * n):
        maps[0, 0, i, i - n + 1 if i >= n else i] = 1  # head 0: induction; head 1: self
        maps[0, 1, i, i] = 1
    monkeypatch.setattr(lm.model, "attention_maps", lambda ids: [maps])
    scores = attention.induction_scores(lm, length=n)
    assert scores.tolist() == [[1.0, 0.0]]


def test_entropy_and_rollout_on_known_matrices():
    T = 5
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    sharp = torch.eye(T)
    maps = torch.stack([uniform, sharp]).view(1, 2, T, T)
    nats, norm = attention.entropy(maps)
    assert torch.allclose(norm, torch.tensor([[1.0, 0.0]]), atol=1e-6)
    assert abs(nats[0, 0] - sum(math.log(k) for k in range(2, T + 1)) / (T - 1)) < 1e-6
    two = torch.stack([maps[0], maps[0].flip(0)])  # (L=2, nh=2, T, T)
    mean = (uniform + sharp) / 2
    assert torch.allclose(attention.rollout(two, residual=0.0), mean @ mean, atol=1e-6)
    mixed = attention.rollout(two, residual=0.5)
    a = 0.5 * torch.eye(T) + 0.5 * mean
    assert torch.allclose(mixed, a @ a, atol=1e-6)
    assert torch.allclose(mixed.sum(-1), torch.ones(T), atol=1e-6)


def test_top_attended_lists_the_heaviest_keys():
    lm = previous_token_model()
    att = attention.capture(lm, "abcdef")
    top = attention.top_attended(att, k=2, layer=0)
    assert [j for j, _ in top[0]] == [0]
    # head 0 puts ~all weight on i-1, head 1 spreads it evenly: i-1 leads for every row.
    assert all(row[0][0] == i - 1 for i, row in enumerate(top) if i > 0)


def test_attention_command_on_a_tiny_run(trained_run, tmp_path, capsys):
    out = tmp_path / "pics"
    assert main(["attention", str(trained_run), "--text", "to be or not", "--layer", "0", "--head", "1",
                 "--out", str(out), "--json", str(tmp_path / "a.json")]) == 0
    text = capsys.readouterr().out
    assert "most-attended tokens" in text and "previous" in text
    for name in ("head_L0_H1", "layer_0", "all_heads", "rollout", "entropy"):
        assert (out / f"{name}.png").stat().st_size > 1000
    data = json.loads((tmp_path / "a.json").read_text())
    assert len(data["tokens"]) == len("to be or not") and len(data["heads"]) == 2
    # --compare of a run against itself, and --untrained of its shape
    assert main(["attention", "--compare", str(trained_run), str(trained_run), "--text", "to be",
                 "--out", str(out)]) == 0
    assert (out / "compare_L0_H0.png").stat().st_size > 1000
    assert main(["attention", str(trained_run), "--untrained", "--text", "to be", "--out", str(tmp_path / "u")]) == 0
    assert (tmp_path / "u" / "all_heads.png").is_file()
    assert main(["attention", str(trained_run), "--text", "ab", "--out", str(tmp_path / "d")]) == 0
    assert (trained_run / "attention").exists() is False  # --out given: nothing in the run


def test_attention_command_on_a_local_gpt2_directory_and_an_untrained_preset(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    hf.save_pretrained(tmp_path / "gpt2-local")
    assert main(["attention", str(tmp_path / "gpt2-local"), "--out", str(tmp_path / "g")]) == 0
    assert "The" in capsys.readouterr().out  # GPT-2's BPE labels
    assert (tmp_path / "g" / "entropy.png").stat().st_size > 1000
    assert main(["attention", "--preset", "char-tiny", "--untrained", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "layer_3.png").is_file()


@pytest.mark.parametrize("argv, problem", [
    (["attention"], "give a MODEL"),
    (["attention", "--preset", "char-tiny"], "add --untrained"),
    (["attention", "--preset", "char-tiny", "--untrained", "--layer", "9"], "--layer 9 is out of range"),
    (["attention", "--preset", "char-tiny", "--untrained", "--text", ""], "the --text is empty"),
])
def test_attention_command_errors_are_one_line(argv, problem, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("options, message", [
    (dict(text=""), "the --text is empty"),
    (dict(top_tokens=0), "--top-tokens must be at least 1"),
    (dict(compare=["a", "b"], model="c"), "--compare takes its two models itself"),
    (dict(compare=["a", "b"], preset="char-tiny"), "--compare takes its two models itself"),
    (dict(preset="nano"), "unknown value 'nano' for --preset"),
])
def test_attention_options_are_checked_where_they_enter(options, message):
    from tinygpt.errors import TinyGPTError

    with pytest.raises(TinyGPTError, match=message):
        attention.AttentionOptions(**options)


def test_an_untrained_preset_is_seeded_and_auto_is_this_devices_preset():
    from tinygpt.analysis.source import titled_model
    from tinygpt.presets import resolve_preset

    a, name = titled_model(None, preset="auto", untrained=True, seed=3, text="abc")
    b, _ = titled_model(None, preset=resolve_preset("auto", "cpu"), untrained=True, seed=3, text="abc")
    assert name == f"preset {resolve_preset('auto', 'cpu')} (untrained, seed 3)"
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_compare_draws_beside_the_first_run_not_in_the_working_directory(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["attention", "--compare", str(tiny_run), str(tiny_run), "--text", "to be"]) == 0
    assert (tiny_run / "attention" / "compare_L0_H0.png").stat().st_size > 1000
    assert not (tmp_path / "attention").exists()
