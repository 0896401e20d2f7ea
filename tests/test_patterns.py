"""Sparse attention patterns: the masks, and the model, its cache and its decoders under them."""

import re

import pytest
import torch
from helpers import TINY_MODEL, random_ids, randomize_

from tinygpt import patterns
from tinygpt.errors import TinyGPTError
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT, GPTConfig
from tinygpt.patterns import Pattern

KINDS = ("local", "strided", "bigbird")


def sparse_model(kind, pos_emb="learned", window=3, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**TINY_MODEL, "n_layer": 3, "pos_emb": pos_emb, "attention": kind, "window": window, **kw})
    return randomize_(GPT(cfg), seed=seed, scale=0.3, embedding_scale=0.1).eval()


def by_hand(kind, W, layer, q, k):
    """Whether query position q may attend key position k, written out from the definitions."""
    if k > q or k < 0:
        return False
    if q - k < W:
        return True
    if kind == "strided":
        return (q - k) % W == 0
    if kind == "bigbird":
        return k < W or k // W in patterns.random_blocks(layer, q // W)
    return False


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("W", [1, 3, 4])
def test_each_mask_equals_its_direct_construction(kind, W):
    T = 40
    pos = torch.arange(-2, T)  # two pads first: never keys
    for layer in (0, 1, 5):
        got = patterns.allowed(Pattern(kind, W, layer), pos[:, None], pos[None, :])
        want = torch.tensor([[by_hand(kind, W, layer, int(q), int(k)) for k in pos] for q in pos])
        assert torch.equal(got, want)
        assert all(got[i, i] for i in range(2, len(pos)))  # a real query always sees itself


def test_bigbird_reads_a_few_random_earlier_blocks_fixed_by_the_layer():
    blocks = [patterns.random_blocks(0, b) for b in range(12)]
    assert blocks[0] == blocks[1] == [] and blocks[2] == [1, 1]
    assert all(len(r) == patterns.RANDOM_BLOCKS and all(1 <= x < b for x in r) for b, r in enumerate(blocks) if b >= 2)
    assert patterns.random_blocks(0, 9) == patterns.random_blocks(0, 9)  # a pure function: cached = uncached
    assert any(patterns.random_blocks(0, b) != patterns.random_blocks(1, b) for b in range(3, 12))  # layers differ
    assert len({x for b in range(3, 40) for x in patterns.random_blocks(0, b)}) > 10  # spread, not one block


def test_which_layers_are_sparse():
    cfg = GPTConfig(**{**TINY_MODEL, "n_layer": 5, "attention": "bigbird", "window": 4, "attention_pattern": "SSL"})
    assert patterns.layer_patterns(cfg) == (Pattern("bigbird", 4, 0), Pattern("bigbird", 4, 1), None,
                                Pattern("bigbird", 4, 3), Pattern("bigbird", 4, 4))
    local = GPTConfig(**{**TINY_MODEL, "attention": "local", "window": 4})
    assert patterns.layer_patterns(local) == (Pattern("local", 4, 0),) * 2  # one mask serves both layers
    assert patterns.layer_patterns(GPTConfig(**TINY_MODEL)) == (None, None)
    assert patterns.layer_patterns(GPTConfig(**{**TINY_MODEL, "attention": "strided", "window": 16})) == (None, None)


@pytest.mark.parametrize("kind", KINDS)
def test_a_window_as_long_as_the_context_is_full_attention_exactly(kind):
    idx = random_ids((2, 16))
    full = sparse_model("full", window=None)(idx).logits
    assert torch.equal(sparse_model(kind, window=16)(idx).logits, full)
    assert not torch.allclose(sparse_model(kind, window=3)(idx).logits, full)  # a short window does change them
    pos = torch.arange(16)
    assert torch.equal(patterns.allowed(Pattern(kind, 16, 0), pos[:, None], pos[None, :]),
                       torch.ones(16, 16, dtype=torch.bool).tril())


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("kind", KINDS)
def test_decoding_with_a_cache_equals_the_uncached_windowed_forward(kind, pos_emb):
    model = sparse_model(kind, pos_emb, attention_pattern="SLS")
    idx = random_ids((2, 16))
    with torch.no_grad():
        want = model(idx).logits
        for pieces in ([1] * 16, [5] + [1] * 6 + [4, 1]):  # token by token; a prompt, tokens, a chunk, tokens
            cache = KVCache(model.config, 2)
            got, at = [], 0
            for n in pieces + [16 - sum(pieces)] * (sum(pieces) < 16):
                got.append(model(idx[:, at:at + n], cache=cache).logits)
                at += n
            assert (torch.cat(got, 1) - want).abs().max() < 1e-5


def test_a_local_layer_caches_only_its_window():
    model = sparse_model("local", window=3, attention_pattern="SSL")
    cache = KVCache(model.config, 2)
    assert [layer.k.shape[2] for layer in cache.layers] == [4, 4, 17]  # W (+ the spare slot); full: the context
    idx = random_ids((2, 16))
    with torch.no_grad():
        want = model(idx).logits
        model(idx[:, :9], cache=cache)  # a chunk longer than the window: only its last 3 keys are kept
        got = [model(idx[:, t:t + 1], cache=cache).logits for t in range(9, 16)]
    assert (torch.cat(got, 1) - want[:, 9:]).abs().max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_a_soft_prompt_longer_than_the_window_is_seen_whole_by_every_query(kind):
    from tinygpt import adapters
    from tinygpt.adapters import AdapterConfig

    model = adapters.attach(sparse_model(kind, "rope", seed=14), AdapterConfig(method="prompt", soft_prompt_tokens=5),
                            prompt_ids=[3, 1, 4, 1, 5]).eval()
    idx = random_ids((2, 11), seed=15)
    with torch.no_grad():
        want = model(idx).logits
        cache = KVCache(model.config, 2)
        got = [model(idx[:, :4], cache=cache).logits] + [model(idx[:, t:t + 1], cache=cache).logits
                                                         for t in range(4, 11)]
    assert (torch.cat(got, 1) - want).abs().max() < 1e-5


def padded(prompts):
    T = max(map(len, prompts))
    ids, pos = torch.zeros(len(prompts), T, dtype=torch.long), torch.full((len(prompts), T), -1)
    for b, p in enumerate(prompts):  # left-padded: each row's last token in the last column
        ids[b, T - len(p):], pos[b, T - len(p):] = torch.tensor(p), torch.arange(len(p))
    return ids, pos


@pytest.mark.parametrize("kind", KINDS)
def test_batched_rows_of_different_lengths_equal_each_row_alone(kind):
    model = sparse_model(kind, "rope", seed=4)
    prompts = [random_ids((1, 11), seed=5)[0].tolist(), random_ids((1, 4), seed=6)[0].tolist(), [7]]
    ids, pos = padded(prompts)
    with torch.no_grad():
        uncached = model(ids, input_pos=pos).logits
        cache = KVCache(model.config, 3)
        cached = [model(ids, input_pos=pos, cache=cache).logits[:, -1]]
        nxt = torch.tensor([[3], [9], [21]])
        for step in range(4):  # each row on at its own position
            cached.append(model(nxt, input_pos=torch.tensor([len(p) + step for p in prompts])[:, None],
                                cache=cache).logits[:, -1])
        assert torch.isfinite(uncached).all()  # pad queries never NaN
        for b, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt + [int(nxt[b])] * 4])).logits[0]
            assert (uncached[b, pos[b] >= 0] - alone[:len(prompt)]).abs().max() < 1e-5
            assert (torch.stack([c[b] for c in cached]) - alone[len(prompt) - 1:]).abs().max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_the_decoder_gives_the_uncached_tokens(kind):
    from tinygpt.generation.decoder import decode

    model = sparse_model(kind, "rope", seed=7)
    prompts = [random_ids((1, 6), seed=8)[0].tolist(), [4, 2]]
    cached = decode(model, prompts, 12, greedy=True)  # past the context of 16: exact mode re-reads the last block
    assert cached == decode(model, prompts, 12, greedy=True, use_cache=False)
    assert decode(model, prompts[:1], 12, greedy=True) == cached[:1]


def test_a_long_prompt_read_in_chunks_beside_a_decoding_row_gives_its_tokens_alone():
    from tinygpt.generation.decoder import Decoder, decode
    from tinygpt.generation.sampling import Sampling

    model = sparse_model("local", "rope", seed=11)  # chunks longer than the window: its buffer rolls within one
    short, long = random_ids((1, 2), seed=12)[0].tolist(), random_ids((1, 13), seed=13)[0].tolist()
    rule = Sampling(greedy=True, max_new_tokens=8)
    with Decoder(model, device="cpu", dtype=torch.float32, chunk=5) as d:
        rows = {d.add(short, rule): [], d.add(long, rule): []}
        while d.busy:
            for t in d.step():
                rows[t.row].append(t.id)
    assert list(rows.values()) == [decode(model, [p], 8, greedy=True)[0] for p in (short, long)]


def test_fast_decoding_past_the_context_keeps_each_local_layers_window_rolling():
    from tinygpt.generation.decoder import decode

    model = sparse_model("local", "rope", seed=9, attention_pattern="SSL")
    prompt = random_ids((1, 5), seed=10)[0].tolist()
    fast = decode(model, [prompt], 30, greedy=True, past_context="fast")[0]
    exact = decode(model, [prompt], 30, greedy=True)[0]
    assert len(fast) == 30 and fast[:16 - len(prompt)] == exact[:16 - len(prompt)]  # equal within the context


def test_pipeline_stages_give_the_sparse_models_logits():
    from tinygpt.train.pipeline import Stage

    model = sparse_model("bigbird", n_layer=4, attention_pattern="SL")
    idx = random_ids((2, 16))
    first, last = Stage(model, range(0, 2), True, False).eval(), Stage(model, range(2, 4), False, True).eval()
    assert torch.equal(last(first(idx)), model(idx).logits)


def test_a_run_saved_before_sparse_attention_loads_as_full(tmp_path):
    import json

    from helpers import make_run

    import tinygpt

    make_run(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("attention", "window", "attention_pattern"):
        del config["model"][key]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    cfg = tinygpt.load(tmp_path / "run").model.config
    assert (cfg.attention, cfg.window, cfg.attention_pattern) == ("full", None, None)


@pytest.mark.parametrize("kw, message", [
    (dict(attention="local"), "--attention local needs --window"),
    (dict(attention="local", window=0), "--window must be a positive"),
    (dict(attention="bigbird", window=4, attention_pattern="SXL"), "letters S (sparse) and L (full) only"),
    (dict(attention_pattern="SL"), "--attention-pattern mixes a sparse --attention"),
    (dict(window=4), "--window 4 applies to a sparse --attention"),
    (dict(attention="random", window=4), "unknown value 'random' for --attention"),
])
def test_bad_options_are_one_line_errors(kw, message):
    with pytest.raises(TinyGPTError, match=re.escape(message)) as e:
        GPTConfig(**{**TINY_MODEL, **kw})
    assert "\n" not in str(e.value)


def test_export_refuses_sparse_attention():
    from tinygpt.interop import gguf_file, hf

    cfg = GPTConfig(**{**TINY_MODEL, "attention": "local", "window": 4})
    with pytest.raises(TinyGPTError, match="needs attention=full but this model has attention=local"):
        hf.gpt2_config_to_hf(cfg)
    assert "attention=full" in gguf_file.require_gguf_shape(cfg)


def test_train_resume_and_the_attention_pictures_of_a_local_model(tmp_path, capsys):
    from conftest import ROMEO, TINY_TRAIN

    from tinygpt.cli import main

    corpus = tmp_path / "romeo.txt"
    corpus.write_text(ROMEO)
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(run), "--max-steps", "2", "--eval-interval", "2",
                 "--max-new-tokens", "0", *TINY_TRAIN, "--block-size", "24", "--attention", "local",
                 "--window", "8"]) == 0
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--progress", "false"]) == 0
    assert main(["train", "--resume", str(run), "--window", "4"]) == 1  # a changed shape is refused
    assert main(["attention", str(run), "--text", "ROMEO: line", "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "layer_0.png").stat().st_size > 1000
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "bad"), "--attention", "strided",
                 *TINY_TRAIN]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "--attention strided needs --window" in err[-1]


def test_the_captured_masks_and_the_readmes_picture(tmp_path):
    from tinygpt.analysis import attention
    from tinygpt.generation import TinyGPT
    from tinygpt.tokenizer import CharTokenizer

    lm = TinyGPT(sparse_model("bigbird", attention_pattern="LS"), CharTokenizer("abcdefghij "))
    att = attention.capture(lm, "abc defg hij")
    assert list(att.masks) == [1] and att.masks[1][0] == "bigbird, W=3"
    assert torch.all(att.maps[1][:, ~att.masks[1][1]] == 0)  # no weight outside the mask
    assert attention.draw_patterns(tmp_path / "p.png").stat().st_size > 1000
