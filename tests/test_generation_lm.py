"""TinyGPT and load(): a run directory back as a model with generate(), seeds, prompts, errors."""

import json

import pytest
import torch
from helpers import CHARS, TINY_MODEL, make_run, same_weights, seeded

import tinygpt
from tinygpt.errors import TinyGPTError
from tinygpt.generation import TinyGPT, generate, start_ids
from tinygpt.model import GPT, GPTConfig
from tinygpt.run import CheckpointInfo, RunDir
from tinygpt.tokenizer import CharTokenizer, GPT2Tokenizer, build_tokenizer


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
    make_run(tmp_path / "run", info=CheckpointInfo())
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
    last = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": len(CHARS)}))
    RunDir(run).save_weights(last, "last", CheckpointInfo(step=200))
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
    make_run(tmp_path / "deeper", config_overrides={"n_layer": 3})
    with pytest.raises(TinyGPTError, match="declares a model of [0-9,]+ parameters but the weights hold [0-9,]+; the config does not match"):
        tinygpt.load(tmp_path / "deeper", device="cpu")


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


def test_sample_i_is_the_sample_seeded_seed_plus_i(tmp_path):
    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    many = lm.generate("the", 15, num_samples=3, seed=40, temperature=1.0)
    assert len(set(many)) == 3
    assert many == [lm.generate("the", 15, seed=40 + i, temperature=1.0)[0] for i in range(3)]


def test_generation_options_come_from_one_config(tmp_path):
    from tinygpt.generation import GenerationConfig

    make_run(tmp_path / "run")
    lm = tinygpt.load(tmp_path / "run", device="cpu")
    cfg = GenerationConfig(max_new_tokens=9, temperature=0.5, top_k=5)
    assert lm.generate("ab", config=cfg, seed=1) == lm.generate("ab", 9, temperature=0.5, top_k=5, seed=1)
    assert len(lm.generate("ab", seed=1)[0]) == GenerationConfig().max_new_tokens  # one default, everywhere
    with pytest.raises(TinyGPTError, match="unknown option 'temprature'.*--temperature"):
        lm.generate("ab", 5, temprature=0.5)
    with pytest.raises(TinyGPTError, match="--top-p must be in"):
        GenerationConfig(top_p=1.5)


def test_half_precision_inference_holds_its_weights_in_that_dtype(tmp_path):
    make_run(tmp_path / "run", which=("best",))
    exact = tinygpt.load(tmp_path / "run", device="cpu", dtype="fp32")
    half = tinygpt.load(tmp_path / "run", device="cpu", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        a, b = exact.model(idx).logits, half.model(idx).logits.float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert len(half.generate("ab", 12, greedy=True)[0]) == 12


def test_ids_past_a_narrower_tokenizer_are_never_drawn():
    """A model with more rows than its tokenizer has ids (a padded checkpoint): those rows
    are never sampled, whatever their logits, with plain sampling and with beams."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": len(CHARS) + 12})).eval()

    def padded_rows_lead(module, args, out):  # the rows past the tokenizer, the likeliest by far
        out = out.clone()
        out[..., len(CHARS):] = out.max() + 20
        return out

    model.lm_head.register_forward_hook(padded_rows_lead)
    lm = TinyGPT(model, CharTokenizer(CHARS))
    text, = lm.generate([[1, 2, 3]], max_new_tokens=40, temperature=2.0, seed=0)
    assert len(text) == 40 and set(text) <= set(CHARS)
    beams, = lm.generate([[1, 2, 3]], max_new_tokens=10, beams=3)
    assert len(beams) == 10 and set(beams) <= set(CHARS)
