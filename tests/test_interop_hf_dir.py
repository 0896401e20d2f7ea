"""Hugging Face model directories in and out: transformers' own saves (GPT-2, Llama with GQA) load with the
same logits and the same greedy text, from safetensors, a .bin, or unprefixed tensor names."""

import json
import sys

import pytest
import torch
from conftest import ROMEO
from helpers import random_ids
from test_interop_hf import hf_model

import tinygpt
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.interop import hf_dir

transformers = pytest.importorskip("transformers")
# 49 characters + <unk>: the test models' 50 ids.
CHARS = ([chr(c) for c in range(ord("a"), ord("a") + 26)] + [chr(c) for c in range(ord("A"), ord("A") + 20)]
         + list(" .\n"))


def char_tokenizer_json(path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(CHARS)} | {"<unk>": 49}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(path))


def saved(tmp_path, family, safe=True, **overrides):
    hf = hf_model(family, seed=6, **overrides)
    out = tmp_path / family
    hf.save_pretrained(out)
    if not safe:  # as older transformers saved: a pickled state dict
        torch.save(hf.state_dict(), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    char_tokenizer_json(out / "tokenizer.json")
    return hf, out


def same_as_hf(lm, hf):
    idx = random_ids((2, 12), seed=3)
    with torch.no_grad():
        assert (lm.model(idx).logits - hf(idx).logits).abs().max() < 1e-5
    prompt = "hello world"
    ids = lm.tokenizer.encode(prompt)
    want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       do_sample=False, max_new_tokens=5, pad_token_id=0, eos_token_id=None)[0, len(ids):]
    got = lm.generate(prompt, 5, greedy=True)[0]
    assert got == lm.tokenizer.decode([i for i in want.tolist()])


@pytest.mark.parametrize("family, overrides", [("gpt2", {}), ("llama", {"num_key_value_heads": 2})])
def test_a_transformers_directory_loads_with_the_same_logits_and_text(tmp_path, family, overrides):
    hf, out = saved(tmp_path, family, **overrides)
    lm = tinygpt.load(out, device="cpu")
    assert lm.model.config.kv_heads == overrides.get("num_key_value_heads", 4)
    same_as_hf(lm, hf)


def test_pickled_weights_load_without_unpickling_code(tmp_path):
    hf, out = saved(tmp_path, "gpt2", safe=False)
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    same_as_hf(tinygpt.load(out, device="cpu"), hf)


def test_unprefixed_tensor_names_load(tmp_path):
    # OpenAI's gpt2 upload names tensors "h.0.attn.c_attn.weight", "wte.weight" ...
    from safetensors.torch import load_file, save_file

    hf, out = saved(tmp_path, "gpt2")
    sd = load_file(str(out / "model.safetensors"))
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, str(out / "model.safetensors"))
    same_as_hf(tinygpt.load(out, device="cpu"), hf)


def test_sample_takes_a_hugging_face_directory(tmp_path, capsys):
    _, out = saved(tmp_path, "llama", num_key_value_heads=1)
    assert main(["sample", str(out), "--prompt", "abc", "--max-new-tokens", "6", "--greedy"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("abc") and "step None" not in captured.err
    assert captured.out == "abc" + tinygpt.load(out).generate("abc", 6, greedy=True)[0] + "\n"


def test_bad_directories_are_one_line_errors(tmp_path):
    hf, out = saved(tmp_path, "gpt2")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(TinyGPTError, match="holds a 'bert' model; tinygpt loads the gpt2, llama and mixtral"):
        tinygpt.load(out)
    (out / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(TinyGPTError, match="the config declares a model of [0-9,]+ parameters but the weights hold"):
        tinygpt.load(out)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").unlink()
    with pytest.raises(TinyGPTError, match="has no model.safetensors"):
        tinygpt.load(out)


def test_hub_names_are_told_apart_from_paths(tmp_path):
    assert hf_dir.looks_like_hub_name("gpt2") and hf_dir.looks_like_hub_name("HuggingFaceTB/SmolLM2-135M")
    assert not hf_dir.looks_like_hub_name("runs/a/b") and not hf_dir.looks_like_hub_name("./gpt2")
    (tmp_path / "gpt2").mkdir()
    assert not hf_dir.looks_like_hub_name(str(tmp_path / "gpt2"))


def test_a_hub_name_without_huggingface_hub_names_the_extra(tmp_path, monkeypatch, capsys):
    # huggingface_hub is the [hub] extra; a None entry in sys.modules makes its import fail.
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.chdir(tmp_path)  # "gpt2" must not be a directory here
    with pytest.raises(TinyGPTError, match=r"needs huggingface_hub: pip install 'tinygpt\[hub\]'"):
        tinygpt.load("gpt2")
    assert main(["sample", "owner/model", "--prompt", "a", "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 'owner/model' is not a run directory") and err.count("\n") == 1
    assert "pip install 'tinygpt[hub]'" in err


def test_ids_the_tokenizer_lacks_are_never_generated(tmp_path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    _, out = saved(tmp_path, "gpt2")
    small = Tokenizer(models.WordLevel({c: i for i, c in enumerate("abcdefghij")} | {"<unk>": 10}, unk_token="<unk>"))
    small.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    small.decoder = decoders.Fuse()
    small.save(str(out / "tokenizer.json"))  # 11 ids for a 50-id model, as padded checkpoints have
    lm = tinygpt.load(out)
    texts = lm.generate("abc", 40, temperature=2.0, top_k=None, num_samples=4, seed=0)
    # Without the limit, 39 of the model's 50 ids would be drawn and fail to decode.
    assert all(t and set(t.replace("<unk>", "")) <= set("abcdefghij") for t in texts)


# ---------------------------------------------------------------------------- out


def _hf_logits(out, idx):
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        return model, model(idx).logits


def test_export_a_gpt2_run_that_transformers_loads(trained_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(trained_run), "--to", "hf", str(out)]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().err
    lm = tinygpt.load(trained_run)
    idx = torch.tensor([lm.tokenizer.encode("ROMEO: what")])  # within the 16-token context
    model, logits = _hf_logits(out, idx)
    assert type(model).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        assert (logits - lm.model(idx).logits).abs().max() < 1e-5
    # What llama.cpp and mlx-lm need: n_ctx, architectures, unprefixed names, no tied head.
    config = json.loads((out / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 16 and config["architectures"] == ["GPT2LMHeadModel"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "wte.weight" in names and "h.0.attn.c_attn.weight" in names
    assert not any(n.startswith("transformer.") for n in names) and "lm_head.weight" not in names
    # The tokenizer.json gives our ids.
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(ROMEO[:300]).ids == lm.tokenizer.encode(ROMEO[:300])
    # And it comes back in as the same model.
    back = tinygpt.load(out)
    assert back.generate("ROMEO:", 10, greedy=True) == lm.generate("ROMEO:", 10, greedy=True)
    # Never over an existing export without --force.
    assert main(["export", str(trained_run), "--to", "hf", str(out)]) == 1
    assert "is not empty; choose a new or empty directory, or pass --force" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--to", "hf", str(out), "--force"]) == 0


@pytest.mark.parametrize("tied, kv", [(False, None), (True, 2)])
def test_export_a_llama_shaped_model(tmp_path, tied, kv):
    from helpers import make_run

    make_run(tmp_path / "run", pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=tied,
             n_kv_head=kv)
    assert main(["export", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 0
    lm = tinygpt.load(tmp_path / "run")
    idx = random_ids((2, 12), seed=1, vocab=lm.tokenizer.vocab_size)
    model, logits = _hf_logits(tmp_path / "hf", idx)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == (kv or 4)
    with torch.no_grad():
        assert (logits - lm.model(idx).logits).abs().max() < 1e-5


def test_a_mixture_of_experts_exports_as_mixtral_and_comes_back(tmp_path, capsys):
    from helpers import make_run

    llama = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2)
    make_run(tmp_path / "run", **llama, moe_experts=4, moe_top_k=2)
    assert main(["export", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 0
    lm = tinygpt.load(tmp_path / "run")
    idx = random_ids((2, 12), seed=1, vocab=lm.tokenizer.vocab_size)
    model, logits = _hf_logits(tmp_path / "hf", idx)
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_local_experts == 4
    with torch.no_grad():
        assert (logits - lm.model(idx).logits).abs().max() < 1e-5
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:  # the hub's per-expert layout
        assert {"model.layers.1.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.experts.3.w2.weight"} \
            <= set(f.keys())
    back = tinygpt.load(tmp_path / "hf")
    assert back.model.config.moe_experts == 4
    with torch.no_grad():
        assert torch.equal(back.model(idx).logits, lm.model(idx).logits)
    # Top-1 routing weighs by the raw probability, which Mixtral would renormalise to 1: refused.
    make_run(tmp_path / "top1", **llama, moe_experts=4, moe_top_k=1)
    assert main(["export", str(tmp_path / "top1"), "--to", "hf", str(tmp_path / "hf1")]) == 1
    err = capsys.readouterr().err
    assert "--moe-top-k 2 or more" in err and not (tmp_path / "hf1").exists()


def test_gpt2_tokenizer_exports_as_gpt2s_own_ids():
    from tokenizers import Tokenizer

    from tinygpt.tokenizer import GPT2Tokenizer

    ours = GPT2Tokenizer()
    theirs = Tokenizer.from_str(hf_dir.tokenizer_json(ours))
    text = "Hello world! <|endoftext|> Café  naïve\n\n  spaces   and 123456 tabs\t. 's 're"
    assert theirs.encode(text).ids == ours.encode(text) and theirs.get_vocab_size() == 50257


def test_a_model_with_no_hf_architecture_is_refused(tmp_path, capsys):
    from helpers import make_run

    make_run(tmp_path / "run", pos_emb="rope")  # RoPE with LayerNorm and GELU: neither GPT-2 nor Llama
    assert main(["export", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 1
    assert "no Hugging Face architecture has pos_emb=rope, norm=layernorm, mlp=gelu" in capsys.readouterr().err
    make_run(tmp_path / "run2", qk_norm=True)
    assert main(["export", str(tmp_path / "run2"), "--to", "hf", str(tmp_path / "hf")]) == 1
    assert "qk_norm" in capsys.readouterr().err and not (tmp_path / "hf").exists()
