"""Generation: sampling rules, the cached decode loop, streaming text and loading a run."""

import json

import pytest
import torch

import tinygpt
from conftest import TINY_MODEL
from tinygpt.checkpoint import save_weights
from tinygpt.config import to_dict
from tinygpt.errors import TinyGPTError
from tinygpt.generate import StreamDecoder, TinyGPT, generate, sample_next, start_ids
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer, GPT2Tokenizer, build_tokenizer


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def random_ids(shape, vocab=TINY_MODEL["vocab_size"], seed=1):
    return torch.randint(0, vocab, shape, generator=seeded(seed))


def scramble_(model, seed=0, scale=0.3, embedding_scale=0.1):
    """Large random weights, so greedy decoding wanders instead of repeating one token
    (at init, a tied model mostly predicts its own input) and a cache bug shows.
    Embeddings stay smaller than the blocks' weights: in a tied model a dominant token
    embedding makes every token predict itself again."""
    g = seeded(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = embedding_scale if name.startswith(("transformer.wte", "transformer.wpe")) else scale
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if ("norm" in name or ".ln_" in name) and name.endswith("weight") else noise)
    return model


def reference_greedy(model, idx, n):
    """The textbook loop: re-read the last block_size tokens, take the argmax."""
    block = model.config.block_size
    with torch.no_grad():
        for _ in range(n):
            nxt = model(idx[:, -block:]).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


# ---------------------------------------------------------------------------- sample_next

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
N_DRAWS = 20000


def draw(logits_row, n=N_DRAWS, seed=0, **kw):
    """n independent draws from one distribution (one row per draw, one call)."""
    return sample_next(logits_row.expand(n, -1), generator=seeded(seed), **kw).view(-1)


def freqs(ids, size=4):
    return torch.bincount(ids, minlength=size).float() / ids.numel()


def test_temperature_zero_is_argmax():
    logits = torch.randn(6, 50, generator=seeded(0))
    for t in (0, 0.0, -1.0):
        out = sample_next(logits, temperature=t, top_k=5, top_p=0.1)
        assert out.shape == (6, 1) and out.dtype == torch.long
        assert torch.equal(out, logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_argmax(temperature):
    logits = torch.randn(64, 50, generator=seeded(1))
    out = sample_next(logits, temperature=temperature, top_k=1, generator=seeded(2))
    assert torch.equal(out, logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("k", [2, 5, 17])
def test_top_k_never_leaves_the_top_k(k):
    logits = torch.randn(1, 50, generator=seeded(3))
    top = set(torch.topk(logits[0], k).indices.tolist())
    ids = draw(logits, n=5000, temperature=3.0, top_k=k)
    assert set(ids.tolist()) == top  # nothing outside, and every member does get drawn


def test_top_k_applies_per_row():
    logits = torch.randn(2, 50, generator=seeded(4))
    tops = [set(torch.topk(row, 3).indices.tolist()) for row in logits]
    ids = sample_next(logits.repeat(2000, 1), temperature=2.0, top_k=3, generator=seeded(5)).view(2000, 2)
    for row in range(2):
        assert set(ids[:, row].tolist()) == tops[row]


@pytest.mark.parametrize("top_p, allowed", [(0.7, {0, 1}), (0.5, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (0.2, {0})])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, allowed):
    ids = draw(PROBS.log().unsqueeze(0), top_p=top_p)
    assert set(ids.tolist()) == allowed
    kept = torch.tensor(sorted(allowed))
    expected = torch.zeros(4)
    expected[kept] = PROBS[kept] / PROBS[kept].sum()  # renormalised over the kept set
    assert (freqs(ids) - expected).abs().max() < 0.02


def test_top_p_applies_per_row():
    # Row 1 is row 0 reversed: the kept ids must follow each row's own ordering.
    logits = torch.stack([PROBS, PROBS.flip(0)]).log()
    ids = sample_next(logits.repeat(5000, 1), top_p=0.7, generator=seeded(6)).view(5000, 2)
    assert set(ids[:, 0].tolist()) == {0, 1}
    assert set(ids[:, 1].tolist()) == {2, 3}


@pytest.mark.parametrize("top_p", [None, 1.0])
def test_draws_follow_the_distribution(top_p):
    ids = draw(PROBS.log().unsqueeze(0), top_p=top_p, top_k=None)
    assert (freqs(ids) - PROBS).abs().max() < 0.02


def test_temperature_reshapes_the_distribution():
    # logits / 2 -> probabilities proportional to sqrt(p).
    ids = draw(PROBS.log().unsqueeze(0), temperature=2.0)
    expected = PROBS.sqrt() / PROBS.sqrt().sum()
    assert (freqs(ids) - expected).abs().max() < 0.02
    cold = draw(PROBS.log().unsqueeze(0), temperature=0.25)
    assert (freqs(cold) - PROBS ** 4 / (PROBS ** 4).sum()).abs().max() < 0.02


def test_top_k_then_top_p():
    # top_k=3 renormalises to [0.526, 0.316, 0.158]; top_p=0.8 then keeps {0, 1}.
    ids = draw(PROBS.log().unsqueeze(0), top_k=3, top_p=0.8)
    assert set(ids.tolist()) == {0, 1}


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits = torch.randn(8, 50, generator=seeded(7))
    a = sample_next(logits, temperature=1.3, top_k=20, top_p=0.9, generator=seeded(11))
    b = sample_next(logits, temperature=1.3, top_k=20, top_p=0.9, generator=seeded(11))
    assert torch.equal(a, b)
    runs = {tuple(sample_next(logits, generator=seeded(s)).view(-1).tolist()) for s in range(5)}
    assert len(runs) > 1


def test_half_precision_logits_are_sampled_in_fp32():
    logits = torch.randn(4, 50, generator=seeded(8))
    for dtype in (torch.float16, torch.bfloat16):
        out = sample_next(logits.to(dtype), temperature=0)
        assert torch.equal(out, logits.to(dtype).float().argmax(-1, keepdim=True))


# ---------------------------------------------------------------------------- generate


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_cached_equals_uncached_past_the_context(tiny_model, batch):
    model = scramble_(tiny_model)
    prompt = random_ids((batch, 5))
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    uncached = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert cached.shape == (batch, 35)
    assert torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, reference_greedy(model, prompt, 30))
    for row in cached:
        assert len(set(row[5:].tolist())) >= 5  # a real walk, not one repeated token


@pytest.mark.parametrize("prompt_len", [1, 15, 16, 20])
def test_greedy_cache_at_and_beyond_the_context_edge(tiny_model, prompt_len):
    model = scramble_(tiny_model, seed=1)
    prompt = random_ids((2, prompt_len), seed=prompt_len)
    cached = generate(model, prompt, 6, temperature=0, use_cache=True)
    assert cached.shape == (2, prompt_len + 6)
    assert torch.equal(cached, generate(model, prompt, 6, temperature=0, use_cache=False))
    assert torch.equal(cached, reference_greedy(model, prompt, 6))


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=10), dict(temperature=1.5, top_p=0.9)])
def test_seeded_sampling_same_with_and_without_cache(tiny_model, kw):
    model = scramble_(tiny_model, seed=2)
    prompt = random_ids((2, 5))
    cached = generate(model, prompt, 25, generator=seeded(5), use_cache=True, **kw)
    uncached = generate(model, prompt, 25, generator=seeded(5), use_cache=False, **kw)
    assert cached.shape == (2, 30)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, generate(model, prompt, 25, generator=seeded(5), **kw))
    others = [generate(model, prompt, 25, generator=seeded(s), **kw) for s in (6, 7)]
    assert any(not torch.equal(cached, o) for o in others)


def test_generate_applies_top_k_and_top_p(tiny_model):
    model = scramble_(tiny_model, seed=5)
    prompt = random_ids((2, 5))
    greedy = generate(model, prompt, 12, temperature=0)
    assert not torch.equal(generate(model, prompt, 12, temperature=1.0, generator=seeded(0)), greedy)
    assert torch.equal(generate(model, prompt, 12, temperature=1.0, top_k=1, generator=seeded(0)), greedy)
    assert torch.equal(generate(model, prompt, 12, temperature=1.0, top_p=1e-6, generator=seeded(0)), greedy)


def test_stop_id_stops_early(tiny_model):
    model = scramble_(tiny_model, seed=3)
    prompt = random_ids((1, 4))
    full = generate(model, prompt, 20, temperature=0)
    new = full[0, 4:].tolist()
    stop = new[3]
    first = new.index(stop)
    out = generate(model, prompt, 20, temperature=0, stop_id=stop)
    assert out.shape == (1, 4 + first + 1)
    assert torch.equal(out, full[:, :4 + first + 1])
    absent = next(t for t in range(50) if t not in new)
    assert torch.equal(generate(model, prompt, 20, temperature=0, stop_id=absent), full)


def test_stop_id_waits_for_every_row(tiny_model):
    model = scramble_(tiny_model, seed=4)
    prompt = random_ids((2, 4), seed=9)
    full = generate(model, prompt, 20, temperature=0)
    rows = [r[4:].tolist() for r in full]
    both = [t for t in set(rows[0]) & set(rows[1]) if rows[0].index(t) != rows[1].index(t)]
    assert both, "test setup: need a token both rows produce at different steps"
    stop = both[0]
    last = max(rows[0].index(stop), rows[1].index(stop))
    out = generate(model, prompt, 20, temperature=0, stop_id=stop)
    assert torch.equal(out, full[:, :4 + last + 1])


def test_on_token_sees_each_new_column(tiny_model):
    seen = []
    prompt = random_ids((2, 3))
    out = generate(tiny_model, prompt, 7, temperature=0, on_token=seen.append)
    assert len(seen) == 7 and all(t.shape == (2, 1) for t in seen)
    assert torch.equal(torch.cat(seen, dim=1), out[:, 3:])


def test_zero_new_tokens_returns_the_prompt(tiny_model):
    prompt = random_ids((2, 3))
    assert torch.equal(generate(tiny_model, prompt, 0), prompt)


def test_training_flag_is_restored():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, dropout=0.5))
    prompt = random_ids((1, 4))
    model.train()
    a = generate(model, prompt, 10, temperature=0)
    assert model.training and all(m.training for m in model.modules())
    b = generate(model, prompt, 10, temperature=0)
    model.eval()
    c = generate(model, prompt, 10, temperature=0)
    assert not model.training
    # Decoding always runs without dropout, whatever mode the model was in.
    assert torch.equal(a, b) and torch.equal(a, c)

    model.train()

    def boom(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(model, prompt, 10, on_token=boom)
    assert model.training


# ---------------------------------------------------------------------------- start_ids and streaming


def test_start_ids():
    with_newline = CharTokenizer("\tab\n")  # sorted: \t \n a b, so "\n" is id 1, not the fallback 0
    assert start_ids(with_newline) == [1]
    assert start_ids(CharTokenizer("xyz")) == [0]
    assert start_ids(GPT2Tokenizer()) == [50256]
    corpus = lambda: iter(["hello world\nthe end\n"] * 20)  # noqa: E731
    bpe = build_tokenizer("bpe", corpus, vocab_size=300)
    assert bpe.eot_id is not None and start_ids(bpe) == [bpe.eot_id]
    plain = build_tokenizer("bpe", corpus, vocab_size=300, special_tokens=())
    assert plain.eot_id is None
    assert start_ids(plain) == plain.encode("\n") and plain.decode(start_ids(plain)) == "\n"


def stream(tokenizer, ids):
    dec = StreamDecoder(tokenizer)
    pieces = [dec.push(i) for i in ids]
    return pieces, dec.flush()


@pytest.mark.parametrize("text", [
    "Hi 😀 世界 👩‍👩‍👧‍👦 café 🇫🇷! done",
    "日本語のテキスト",
    "emoji at the end 🤖",
])
def test_stream_decoder_gpt2_never_prints_half_characters(text):
    tok = GPT2Tokenizer()
    ids = tok.encode(text)
    # The text really is split mid-character by the byte-level tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    pieces, rest = stream(tok, ids)
    assert "".join(pieces) + rest == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces + [rest])
    assert rest == ""  # every character was complete by the last token
    assert sum(1 for p in pieces if p) > 1  # it streams, not everything at the end


def test_stream_decoder_keeps_real_replacement_characters():
    tok = GPT2Tokenizer()
    for text in ("a \ufffd b", "ends with \ufffd"):
        pieces, rest = stream(tok, tok.encode(text))
        assert "".join(pieces) + rest == text


def test_stream_decoder_char_tokenizer_emits_one_char_per_id():
    tok = CharTokenizer("abc\n")
    pieces, rest = stream(tok, tok.encode("ab\nca"))
    assert pieces == ["a", "b", "\n", "c", "a"] and rest == ""


# ---------------------------------------------------------------------------- load()

CHARS = "abcdefghijklmnopqrstuvwxyz \n.,"


def model_config(vocab_size, **kw):
    return GPTConfig(**{**TINY_MODEL, "vocab_size": vocab_size, **kw})


def make_run(run_dir, *, seed=0, metadata=None, config_overrides=None, weights="model.safetensors", **model_kw):
    """A run directory as 'tinygpt train' leaves it: config.json, tokenizer, weights."""
    tok = CharTokenizer(CHARS)
    cfg = model_config(tok.vocab_size, **model_kw)
    torch.manual_seed(seed)
    model = GPT(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok.save(run_dir)
    model_section = {**to_dict(cfg), **(config_overrides or {})}
    config = {"model": model_section, "tokenizer": tok.to_dict()}
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    meta = {"step": 120, "val_loss": 1.75} if metadata is None else metadata
    save_weights(model, run_dir / weights, meta)
    return model, config


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_a_run(tmp_path):
    run = tmp_path / "run"
    saved, config = make_run(run)
    lm = tinygpt.load(run, device="cpu")
    assert isinstance(lm, TinyGPT)
    assert same_weights(lm.model, saved)
    assert not lm.model.training
    assert lm.tokenizer.kind == "char" and lm.tokenizer.vocab_size == len(CHARS)
    assert lm.config == config
    assert lm.checkpoint == run / "model.safetensors"
    assert lm.step == 120 and isinstance(lm.step, int)
    assert lm.val_loss == 1.75
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert lm.model.lm_head.weight is lm.model.transformer.wte.weight  # tying survives the round trip


def test_load_without_metadata(tmp_path):
    make_run(tmp_path / "run", metadata={})
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    assert lm.step is None and lm.val_loss is None


def test_load_modern_untied_run(tmp_path):
    saved, _ = make_run(tmp_path / "run", pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                        tie_embeddings=False, qk_norm=True)
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    assert same_weights(lm.model, saved)
    assert lm.model.lm_head.weight.data_ptr() != lm.model.transformer.wte.weight.data_ptr()


def test_generate_is_reproducible_and_matches_the_loop(tmp_path):
    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    a = lm.generate("the cat", 20, seed=3)
    assert a == lm.generate("the cat", 20, seed=3)
    assert len(a) == 1 and len(a[0]) == 20  # one char per token, prompt not included
    assert any(lm.generate("the cat", 20, seed=s) != a for s in (4, 5, 6))
    # Same tokens as calling generate() with a generator seeded the same way.
    ids = torch.tensor([lm.tokenizer.encode("the cat")])
    out = generate(lm.model, ids, 20, temperature=0.8, top_k=200, generator=seeded(3))
    assert a[0] == lm.tokenizer.decode(out[0, ids.size(1):].tolist())
    many = lm.generate("the cat", 12, num_samples=3, seed=3, temperature=1.0)
    assert len(many) == 3 and all(len(s) == 12 for s in many)


def test_generate_streams_the_same_text(tmp_path):
    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    pieces = []
    texts = lm.generate("ab", 15, seed=1, on_text=lambda i, piece: pieces.append((i, piece)))
    assert {i for i, _ in pieces} == {0}
    assert "".join(p for _, p in pieces) == texts[0]
    # Several samples stream side by side, each piece tagged with its sample.
    pieces.clear()
    texts = lm.generate("ab", 15, seed=1, num_samples=3, temperature=1.0,
                        on_text=lambda i, piece: pieces.append((i, piece)))
    assert len(set(texts)) > 1
    for i, text in enumerate(texts):
        assert "".join(p for j, p in pieces if j == i) == text


def test_empty_prompt_starts_from_start_ids(tmp_path):
    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    ids, cropped = lm.encode_prompt("")
    assert ids.tolist() == [[CharTokenizer(CHARS).encode("\n")[0]]] and not cropped
    assert lm.generate("", 5, temperature=0) == lm.generate("\n", 5, temperature=0)


def test_long_prompt_is_cropped_to_the_context(tmp_path):
    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    prompt = "the quick brown fox jumps over the lazy dog"
    ids, cropped = lm.encode_prompt(prompt)
    assert cropped and ids.shape == (1, 16)
    assert ids[0].tolist() == lm.tokenizer.encode(prompt)[-16:]
    ids, cropped = lm.encode_prompt(prompt[:16])
    assert not cropped and ids.shape == (1, 16)
    ids, cropped = lm.encode_prompt(prompt[:17])
    assert cropped and ids.shape == (1, 16)
    out = lm.generate(prompt, 10, seed=0)
    assert len(out[0]) == 10
    assert out == lm.generate(prompt[-16:], 10, seed=0)


def test_checkpoint_choice(tmp_path):
    run = tmp_path / "run"
    best, _ = make_run(run)
    with pytest.raises(TinyGPTError) as err:
        tinygpt.load(run, checkpoint="last", device="cpu")
    assert "last.safetensors" in str(err.value) and "\n" not in str(err.value)

    torch.manual_seed(1)
    last = GPT(model_config(len(CHARS)))
    save_weights(last, run / "last.safetensors", {"step": 200, "val_loss": None})
    lm = tinygpt.load(run, checkpoint="last", device="cpu")
    assert lm.checkpoint == run / "last.safetensors" and lm.step == 200 and lm.val_loss is None
    assert same_weights(lm.model, last)
    lm = tinygpt.load(run, device="cpu")  # 'best' by default
    assert lm.checkpoint == run / "model.safetensors" and same_weights(lm.model, best)
    lm = tinygpt.load(run, checkpoint=str(run / "last.safetensors"), device="cpu")
    assert same_weights(lm.model, last)

    (run / "model.safetensors").unlink()  # no best yet: fall back to last
    lm = tinygpt.load(run, checkpoint="best", device="cpu")
    assert lm.checkpoint == run / "last.safetensors" and same_weights(lm.model, last)
    (run / "last.safetensors").unlink()
    with pytest.raises(TinyGPTError, match="model.safetensors"):
        tinygpt.load(run, device="cpu")


def test_truncated_weights(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    path = run / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TinyGPTError) as err:
        tinygpt.load(run, device="cpu")
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "truncated or corrupt" in msg


def test_config_that_does_not_match_the_weights(tmp_path):
    run = tmp_path / "run"
    make_run(run, config_overrides={"n_embd": 48})
    with pytest.raises(TinyGPTError) as err:
        tinygpt.load(run, device="cpu")
    msg = str(err.value)
    assert "the config does not match the weights" in msg and "\n" not in msg
    make_run(run, config_overrides={"n_layer": 3})
    with pytest.raises(TinyGPTError, match="does not match config.json"):
        tinygpt.load(run, device="cpu")


def test_untied_weights_with_a_tied_config_are_rejected(tmp_path):
    run = tmp_path / "run"
    make_run(run, tie_embeddings=False, config_overrides={"tie_embeddings": True})
    with pytest.raises(TinyGPTError):
        tinygpt.load(run, device="cpu")


def test_broken_run_directories(tmp_path):
    with pytest.raises(TinyGPTError) as err:
        tinygpt.load(tmp_path / "missing", device="cpu")
    assert "missing" in str(err.value) and "\n" not in str(err.value)

    run = tmp_path / "run"
    make_run(run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({"tokenizer": config["tokenizer"]}))
    with pytest.raises(TinyGPTError, match="no model section"):
        tinygpt.load(run, device="cpu")

    (run / "config.json").write_text(json.dumps({"model": {**config["model"], "vocab_size": 31}}))
    with pytest.raises(TinyGPTError, match="inconsistent"):
        tinygpt.load(run, device="cpu")

    (run / "config.json").unlink()
    with pytest.raises(TinyGPTError, match="config.json"):
        tinygpt.load(run, device="cpu")


def test_unseeded_generate_leaves_the_global_rng_alone(tmp_path):
    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    lm.generate("ab", 3)
    assert torch.equal(torch.rand(4), expected)
