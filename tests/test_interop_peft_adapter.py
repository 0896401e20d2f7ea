"""A tinygpt LoRA written as a PEFT adapter: transformers + peft load it onto the exported base (GPT-2's Conv1D,
Llama's split q/k/v and gate/up, grouped-query attention, the padded head) with every key used and our logits."""

import json
import warnings

import pytest
import torch
from helpers import TINY_MODEL, random_ids, randomize_, seeded

from tinygpt.checkpoint import weight_tensors
from tinygpt.errors import TinyGPTError
from tinygpt.interop import hf_dir
from tinygpt.interop.peft_adapter import to_peft, write_peft_adapter
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

R, ALPHA = 4, 8
TARGETS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head"]
LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
CASES = {"gpt2": {}, "gpt2-untied": dict(tie_embeddings=False), "llama": LLAMA, "llama-gqa": {**LLAMA, "n_kv_head": 2}}


def adapted(cfg: GPTConfig, targets=TARGETS, seed: int = 0):
    """(our model with a LoRA whose B is non-zero, the base weights, the adapter as tinygpt keeps it)."""
    model = randomize_(GPT(cfg), seed, embedding_scale=0.1)
    base = weight_tensors(model)
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets)
    peft.inject_adapter_in_model(config, model)
    g = seeded(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:  # B starts at zero, which would hide any mistake in it
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), base, peft.get_peft_model_state_dict(model, save_embedding_layers=False)


def export_base(cfg: GPTConfig, base, out) -> None:
    hf_dir.export(cfg, base, CharTokenizer(chr(c) for c in range(ord("!"), ord("!") + cfg.vocab_size)), out)


@pytest.mark.parametrize("case", CASES)
def test_peft_loads_the_adapter_onto_the_exported_base_with_our_logits(tmp_path, case):
    cfg = GPTConfig(**TINY_MODEL, **CASES[case])
    model, base, lora = adapted(cfg)
    idx = random_ids((2, 12), seed=3)
    with torch.no_grad():
        ours = model(idx).logits
    export_base(cfg, base, tmp_path / "base")
    base_dir = str(tmp_path / "base")
    out = write_peft_adapter(tmp_path / "adapter", cfg, lora, r=R, alpha=ALPHA, dropout=0.0, base=base_dir)
    assert out == tmp_path / "adapter"

    config = json.loads((out / "adapter_config.json").read_text())
    llama = case.startswith("llama")
    assert config["target_modules"] == (["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj",
                                         "v_proj"] if llama else ["c_attn", "c_fc", "c_proj", "lm_head"])
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == ("LORA", "CAUSAL_LM", R, 8)
    assert config["fan_in_fan_out"] is not llama and config["base_model_name_or_path"] == base_dir

    hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        without = hf(idx).logits
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Found missing adapter keys")
        lm = peft.PeftModel.from_pretrained(hf, out).eval()
    # Every tensor of the file is an adapter weight of the model, and every adapter weight came from the file.
    from safetensors.torch import load_file

    written = load_file(str(out / "adapter_model.safetensors"))
    loaded = peft.get_peft_model_state_dict(lm, save_embedding_layers=False)
    assert loaded.keys() == written.keys() and all(torch.equal(loaded[k], written[k]) for k in written)
    assert len(written) == 2 * (cfg.n_layer * (7 if llama else 4) + 1)
    with torch.no_grad():
        theirs = lm(idx).logits
    assert (without - ours).abs().max() > 0.1  # the adapter matters
    assert (theirs - ours).abs().max() < 1e-5
    if not cfg.tie_embeddings:  # merging a LoRA on a tied head would change the embedding too
        with torch.no_grad():
            merged = lm.merge_and_unload()(idx).logits
        assert (merged - ours).abs().max() < 1e-4  # W + s B A rounded once per weight: 1e-5 off measured


def test_fused_layers_split_exactly_and_the_head_loses_its_padding():
    cfg = GPTConfig(**TINY_MODEL, **LLAMA, n_kv_head=2)
    _, _, lora = adapted(cfg)
    _, tensors = to_peft(cfg, lora, r=R, alpha=ALPHA, dropout=0.0, base="base")
    attn, mlp = "base_model.model.model.layers.1.self_attn.", "base_model.model.model.layers.1.mlp."
    ours_b = lora["transformer.h.1.attn.c_attn.lora_B.weight"]  # (32 + 2 * 16, r): q rows, then k, then v
    assert torch.equal(torch.cat([tensors[f"{attn}{p}_proj.lora_B.weight"] for p in "qkv"]), ours_b)
    assert [tensors[f"{attn}{p}_proj.lora_B.weight"].shape[0] for p in "qkv"] == [32, 16, 16]
    for p in "qkv":
        assert torch.equal(tensors[f"{attn}{p}_proj.lora_A.weight"], lora["transformer.h.1.attn.c_attn.lora_A.weight"])
    gate, up = tensors[f"{mlp}gate_proj.lora_B.weight"], tensors[f"{mlp}up_proj.lora_B.weight"]
    assert torch.equal(torch.cat([gate, up]), lora["transformer.h.1.mlp.c_fc.lora_B.weight"])
    head = tensors["base_model.model.lm_head.lora_B.weight"]
    assert head.shape == (50, R) and torch.equal(head, lora["lm_head.lora_B.weight"][:50])


def test_a_lora_on_some_blocks_only_targets_those_modules(tmp_path):
    cfg = GPTConfig(**TINY_MODEL)
    _, _, lora = adapted(cfg, targets=["h.0.attn.c_proj", "mlp.c_fc"])
    config, tensors = to_peft(cfg, lora, r=R, alpha=ALPHA, dropout=0.0, base="base")
    # "c_proj" or "attn.c_proj" would also select h.1's: a full path instead, so nothing else gets a LoRA.
    assert config["target_modules"] == ["c_fc", "transformer.h.0.attn.c_proj"]
    assert len(tensors) == 6


def test_what_is_not_a_tinygpt_lora_is_a_one_line_error(tmp_path):
    cfg = GPTConfig(**TINY_MODEL)
    _, _, lora = adapted(cfg, targets=["c_attn"])
    kw = dict(r=R, alpha=ALPHA, dropout=0.0, base="base")
    a = lora["transformer.h.0.attn.c_attn.lora_A.weight"]
    with pytest.raises(TinyGPTError, match=r"'transformer.wte.lora_embedding_A' is not a LoRA weight of a tinygpt"):
        to_peft(cfg, {**lora, "transformer.wte.lora_embedding_A": a}, **kw)
    with pytest.raises(TinyGPTError, match=r"is a name from model.state_dict\(\), not an adapter file; pass get_peft"):
        to_peft(cfg, {"transformer.h.0.attn.c_attn.lora_A.default.weight": a}, **kw)
    with pytest.raises(TinyGPTError, match=r"has transformer.h.1.attn.c_attn.lora_A.weight but no lora_B"):
        to_peft(cfg, {k: v for k, v in lora.items() if k != "transformer.h.1.attn.c_attn.lora_B.weight"}, **kw)
    with pytest.raises(TinyGPTError, match=r"has shape \(4, 32\) but rank r=8 on this model implies \(8, 32\)"):
        to_peft(cfg, lora, **{**kw, "r": 8})
    with pytest.raises(TinyGPTError, match="holds no LoRA weights"):
        to_peft(cfg, {}, **kw)
    with pytest.raises(TinyGPTError, match="the GPT-2 format needs qk_norm=false"):
        to_peft(GPTConfig(**TINY_MODEL, qk_norm=True), lora, **kw)
    write_peft_adapter(tmp_path, cfg, lora, **kw)
    with pytest.raises(TinyGPTError, match="already holds adapter_config.json; choose another directory, or pass"):
        write_peft_adapter(tmp_path, cfg, lora, **kw)
    write_peft_adapter(tmp_path, cfg, lora, **kw, force=True)
