"""tinygpt.interop.hf: exact logit/loss parity with real HF GPT-2 and Llama models after
conversion in both directions, exact round trips, and one-line errors for what we cannot map."""

import pytest
import torch
from helpers import TINY_MODEL, random_ids, randomize_

from tinygpt.errors import TinyGPTError
from tinygpt.interop import hf as interop
from tinygpt.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

HF_GPT2 = dict(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=50,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5)
HF_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=16, vocab_size=50, rms_norm_eps=1e-5,
                rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
LLAMA_SHAPE = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, mlp_hidden=64)

# family -> (HF model class, HF config class, config_from_hf, weights_from_hf, config_to_hf, weights_to_hf)
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", interop.gpt2_config_from_hf, interop.gpt2_weights_from_hf,
             interop.gpt2_config_to_hf, interop.gpt2_weights_to_hf),
    "llama": ("LlamaForCausalLM", "LlamaConfig", interop.llama_config_from_hf, interop.llama_weights_from_hf,
              interop.llama_config_to_hf, interop.llama_weights_to_hf),
}


def hf_model(family, seed=3, **overrides):
    model_cls, config_cls = (getattr(transformers, n) for n in FAMILIES[family][:2])
    kwargs = {**(HF_GPT2 if family == "gpt2" else HF_LLAMA), **overrides}
    torch.manual_seed(0)
    return randomize_(model_cls(config_cls(**kwargs)).eval(), seed=seed)


def load_ours(sd, cfg):
    """Our GPT carrying ``sd``: strict except for the tied head, which must be the only gap."""
    model = GPT(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == []
    assert missing == (["lm_head.weight"] if cfg.tie_embeddings else [])
    return model


def assert_same_logits(ours, hf, seed=5):
    idx = random_ids((3, 16), seed=seed)
    with torch.no_grad():
        ref, got = hf(idx).logits, ours(idx).logits
        assert got.shape == ref.shape == (3, 16, 50)
        assert ref.abs().max() > 0.5  # weights big enough for a wrong mapping to show
        assert (got - ref).abs().max() < 1e-5
        # A shorter prefix and a single token take other attention code paths.
        for t in (7, 1):
            assert (ours(idx[:, :t]).logits - hf(idx[:, :t]).logits).abs().max() < 1e-5


def assert_same_state(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------- HF -> ours parity

@pytest.mark.parametrize("family, tied, act", [("gpt2", True, "gelu_new"), ("gpt2", False, "gelu_new"),
                                               ("gpt2", True, "gelu"), ("llama", False, None), ("llama", True, None)])
def test_converted_hf_model_matches_logits_and_loss(family, tied, act):
    hf = hf_model(family, tie_word_embeddings=tied, **({"activation_function": act} if act else {}))
    _, _, config_from_hf, weights_from_hf, _, _ = FAMILIES[family]
    shape = LLAMA_SHAPE if family == "llama" else {"gelu": "exact" if act == "gelu" else "tanh"}
    expected = GPTConfig(**TINY_MODEL, tie_embeddings=tied, **shape)
    cfg = config_from_hf(hf.config.to_dict())
    assert cfg == expected
    ours = load_ours(weights_from_hf(hf.state_dict(), cfg), cfg)
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == tied
    assert_same_logits(ours, hf)
    idx = random_ids((3, 16), seed=5)
    with torch.no_grad():
        ref = hf(idx, labels=idx).loss  # HF shifts the labels itself
        got = ours(idx[:, :-1], idx[:, 1:]).loss
    assert abs(got.item() - ref.item()) < 1e-5


def test_vocab_rows_are_zero_padded_and_conv1d_weights_transposed():
    hf = hf_model("gpt2", tie_word_embeddings=False)
    cfg = interop.gpt2_config_from_hf(hf.config.to_dict())
    h = hf.state_dict()
    sd = interop.gpt2_weights_from_hf(h, cfg)
    for key in ("transformer.wte.weight", "lm_head.weight"):
        assert sd[key].shape == (64, 32)
        assert torch.equal(sd[key][:50], h[key]) and not sd[key][50:].any()
    assert torch.equal(sd["transformer.h.0.mlp.c_fc.weight"], h["transformer.h.0.mlp.c_fc.weight"].t())
    assert sd["transformer.h.0.mlp.c_fc.weight"].shape == (128, 32)


def test_gpt2_accepts_mask_buffers_and_a_tied_dict_without_head():
    hf = hf_model("gpt2")
    cfg = interop.gpt2_config_from_hf(hf.config.to_dict())
    h = dict(hf.state_dict())
    reference = interop.gpt2_weights_from_hf(h, cfg)
    del h["lm_head.weight"]  # as in checkpoints saved without the tied copy
    h["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16).tril()  # older transformers' buffers
    h["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    assert_same_state(interop.gpt2_weights_from_hf(h, cfg), reference)


def test_llama_config_reads_theta_and_bias_from_any_transformers_layout():
    base = hf_model("llama").config.to_dict()
    cfg = interop.llama_config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}})
    assert cfg.rope_theta == 500.0
    older = {k: v for k, v in base.items() if k != "rope_parameters"}
    assert interop.llama_config_from_hf({**older, "rope_theta": 123.0, "rope_scaling": None}).rope_theta == 123.0
    assert interop.llama_config_from_hf({**older, "rope_scaling": {"type": "default"}}).rope_theta == 10000.0
    assert interop.llama_config_from_hf({**base, "attention_bias": True, "mlp_bias": True}).bias is True


# ---------------------------------------------------------------------------- ours -> HF parity

@pytest.mark.parametrize("family, tied, extra", [
    ("gpt2", True, {}), ("gpt2", False, dict(norm_eps=1e-4, mlp_hidden=48)),
    ("llama", False, dict(rope_theta=500.0, norm_eps=1e-4)), ("llama", True, dict(bias=True, mlp_hidden=48)),
])
def test_exported_model_matches_in_transformers(family, tied, extra):
    model_cls, config_cls, _, _, config_to_hf, weights_to_hf = FAMILIES[family]
    shape = {**(LLAMA_SHAPE if family == "llama" else {}), **extra}
    cfg = GPTConfig(**TINY_MODEL, tie_embeddings=tied, **shape)
    torch.manual_seed(0)
    ours = randomize_(GPT(cfg).eval(), seed=7)
    hf = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config_to_hf(cfg))).eval()
    hf.load_state_dict(weights_to_hf(ours.state_dict(), cfg), strict=True)
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    assert_same_logits(ours, hf)


# ---------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_query_attention_llama_matches_and_round_trips(kv_heads):
    hf = hf_model("llama", num_key_value_heads=kv_heads)
    cfg = interop.llama_config_from_hf(hf.config.to_dict())
    assert cfg.n_kv_head == kv_heads and cfg.kv_heads == kv_heads
    h = hf.state_dict()
    assert h["model.layers.0.self_attn.k_proj.weight"].shape == (kv_heads * 8, 32)
    ours = load_ours(interop.llama_weights_from_hf(h, cfg), cfg)
    assert_same_logits(ours, hf)
    assert_same_state(interop.llama_weights_to_hf(ours.state_dict(), cfg), h)
    assert interop.llama_config_to_hf(cfg)["num_key_value_heads"] == kv_heads


@pytest.mark.parametrize("family, tied", [("gpt2", True), ("gpt2", False), ("llama", False), ("llama", True)])
def test_round_trips_are_exact(family, tied):
    _, _, config_from_hf, weights_from_hf, config_to_hf, weights_to_hf = FAMILIES[family]
    hf = hf_model(family, tie_word_embeddings=tied)
    cfg = config_from_hf(hf.config.to_dict())
    # HF -> ours -> HF
    h = hf.state_dict()
    assert_same_state(weights_to_hf(weights_from_hf(h, cfg), cfg), h)
    # ours -> HF -> ours (padding rows are zero in a converted model, and dropped on export)
    ours = load_ours(weights_from_hf(h, cfg), cfg)
    sd = {k: v for k, v in ours.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert_same_state(weights_from_hf(weights_to_hf(ours.state_dict(), cfg), cfg), sd)
    # Config: ours -> HF -> ours
    assert config_from_hf(config_to_hf(cfg)) == cfg


def test_exported_weights_are_contiguous_and_drop_padding():
    cfg = GPTConfig(**TINY_MODEL, **LLAMA_SHAPE)
    out = interop.llama_weights_to_hf(randomize_(GPT(cfg)).state_dict(), cfg)
    assert out["model.embed_tokens.weight"].shape == out["lm_head.weight"].shape == (50, 32)
    assert out["model.layers.0.self_attn.k_proj.weight"].shape == (32, 32)
    assert out["model.layers.0.mlp.up_proj.weight"].shape == (64, 32)
    assert all(t.is_contiguous() for t in out.values())


# ---------------------------------------------------------------------------- errors

def one_line_error(fn, *args, names=()):
    with pytest.raises(TinyGPTError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message


@pytest.mark.parametrize("change, names", [
    (dict(activation_function="relu"), ["activation_function", "relu"]),
    (dict(scale_attn_by_inverse_layer_idx=True), ["scale_attn_by_inverse_layer_idx"]),
    (dict(reorder_and_upcast_attn=True), ["reorder_and_upcast_attn"]),
    (dict(scale_attn_weights=False), ["scale_attn_weights"]),
    (dict(model_type="llama"), ["model_type", "llama"]),
    (dict(n_layer=None), ["n_layer"]),
])
def test_unsupported_gpt2_configs_raise(change, names):
    hf = {**transformers.GPT2Config(**HF_GPT2).to_dict(), **change}
    one_line_error(interop.gpt2_config_from_hf, hf, names=names)


@pytest.mark.parametrize("change, names", [
    (dict(num_key_value_heads=3), ["--n-kv-head (3) must divide --n-head (4)"]),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), ["rope", "linear"]),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}), ["rope", "dynamic"]),
    (dict(hidden_act="gelu"), ["hidden_act", "gelu"]),
    (dict(head_dim=16), ["head_dim"]),
    (dict(attention_bias=True), ["attention_bias", "mlp_bias"]),
    (dict(model_type="mistral"), ["model_type", "mistral"]),
])
def test_unsupported_llama_configs_raise(change, names):
    hf = {**transformers.LlamaConfig(**HF_LLAMA).to_dict(), **change}
    one_line_error(interop.llama_config_from_hf, hf, names=names)


@pytest.mark.parametrize("family, change, field", [
    ("gpt2", dict(pos_emb="rope"), "pos_emb"), ("gpt2", dict(norm="rmsnorm"), "norm"),
    ("gpt2", dict(mlp="swiglu"), "mlp"), ("gpt2", dict(bias=False), "bias"), ("gpt2", dict(qk_norm=True), "qk_norm"),
    ("gpt2", dict(n_kv_head=2), "n_kv_head"),
    ("llama", dict(pos_emb="learned"), "pos_emb"), ("llama", dict(norm="layernorm"), "norm"),
    ("llama", dict(mlp="gelu"), "mlp"), ("llama", dict(qk_norm=True), "qk_norm"),
    *[(family, {field: value}, field) for family in ("gpt2", "llama") for field, value in
      [("logit_softcap", 15.0), ("unet_skips", True), ("value_embeds", True)]],
    ("gpt2", dict(mlp="relu2"), "mlp"),
])
def test_exporting_a_model_of_the_wrong_shape_raises(family, change, field):
    _, _, _, weights_from_hf, config_to_hf, weights_to_hf = FAMILIES[family]
    cfg = GPTConfig(**TINY_MODEL, **{**(LLAMA_SHAPE if family == "llama" else {}), **change})
    one_line_error(config_to_hf, cfg, names=[field, f"--{field.replace('_', '-')}"])
    # The weight converters check the config they are handed, too.
    one_line_error(weights_to_hf, GPT(cfg).state_dict(), cfg, names=[field])
    one_line_error(weights_from_hf, {}, cfg, names=[field])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_config_without_vocab_size_is_refused(family):
    _, _, _, weights_from_hf, config_to_hf, weights_to_hf = FAMILIES[family]
    cfg = GPTConfig(**{**TINY_MODEL, "vocab_size": None}, **(LLAMA_SHAPE if family == "llama" else {}))
    for fn, args in ((config_to_hf, (cfg,)), (weights_to_hf, ({}, cfg)), (weights_from_hf, ({}, cfg))):
        one_line_error(fn, *args, names=["vocab_size"])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_state_dict_mismatches_name_the_key(family):
    _, _, config_from_hf, weights_from_hf, _, weights_to_hf = FAMILIES[family]
    hf = hf_model(family)
    cfg = config_from_hf(hf.config.to_dict())
    h = dict(hf.state_dict())
    key = next(k for k in h if k.endswith("c_fc.weight") or k.endswith("up_proj.weight"))

    missing = {k: v for k, v in h.items() if k != key}
    one_line_error(weights_from_hf, missing, cfg, names=[key, "lacks"])
    one_line_error(weights_from_hf, {**h, key: h[key][:-1]}, cfg, names=[key, "shape"])
    one_line_error(weights_from_hf, {**h, "model.extra.weight": h[key]}, cfg, names=["model.extra.weight"])
    if not cfg.tie_embeddings:  # an untied config needs the head
        one_line_error(weights_from_hf, {k: v for k, v in h.items() if k != "lm_head.weight"}, cfg,
                       names=["lm_head.weight"])

    sd = weights_from_hf(h, cfg)
    ours = "transformer.h.1.attn.c_proj.weight"
    one_line_error(weights_to_hf, {k: v for k, v in sd.items() if k != ours}, cfg, names=[ours])
    one_line_error(weights_to_hf, {**sd, ours: sd[ours][:, :-1]}, cfg, names=[ours, "shape"])
    one_line_error(weights_to_hf, {**sd, "transformer.h.2.ln_1.weight": sd[ours][0]}, cfg,
                   names=["transformer.h.2.ln_1.weight"])
    # A config that disagrees with the checkpoint (one layer too many) names the first absent tensor.
    deeper = GPTConfig(**{**TINY_MODEL, "n_layer": 3}, **(LLAMA_SHAPE if family == "llama" else {}))
    one_line_error(weights_from_hf, h, deeper, names=[".2."])
