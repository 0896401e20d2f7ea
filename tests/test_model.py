"""The GPT model: preset sizes, exact parity with HF GPT-2 / Llama, init, validation,
attention, causality, dropout, determinism and the KV cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import MODERN, TINY_MODEL
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, PRESETS, GPTConfig, KVCache, preset

# ---------------------------------------------------------------------------- helpers


def random_ids(shape, vocab=TINY_MODEL["vocab_size"], seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


def meta_model(cfg):
    with torch.device("meta"):
        return GPT(cfg)


def meta_count(model):
    return sum(p.numel() for p in model.parameters())


def randomize_(model, seed=0, scale=0.2):
    """Overwrite every parameter with values big enough that a wrong mapping shows in the logits.

    Norm weights get 1 + noise (not plain noise) so the network stays well conditioned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)


def copy_padded_(dst, src):
    """Copy ``src`` into the first rows of ``dst``, zeroing the padding rows."""
    dst.zero_()
    dst[: src.shape[0]].copy_(src)


# ---------------------------------------------------------------------------- presets and sizes


def test_gpt2_preset_has_gpt2_shape_and_exact_parameter_count():
    cfg = GPTConfig(**preset("gpt2"), vocab_size=50257)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 1024)
    assert cfg.padded_vocab_size == 50304
    model = meta_model(cfg)
    # 124,439,808 (HF GPT-2, 50257 rows) + 47 padding rows of 768.
    assert model.num_params() == 124_475_904 == 124_439_808 + 47 * 768
    assert model.num_params(non_embedding=True) == 124_475_904 - 1024 * 768
    # Tied: the head adds nothing over the embedding table.
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape == (50304, 768)
    assert model.transformer.wpe.weight.shape == (1024, 768)
    assert model.flops_per_token() == 6 * (124_475_904 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert model.flops_per_token(256) == 6 * (124_475_904 - 1024 * 768) + 12 * 12 * 768 * 256


def test_gpt2_counts_match_huggingface_plus_padding():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_counts = {}
    for name, (n_layer, n_head, n_embd) in {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024)}.items():
        with torch.device("meta"):
            hf = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
        hf_counts[name] = meta_count(hf)  # parameters() yields the tied head once
        ours = meta_model(GPTConfig(**preset(name), vocab_size=50257))
        assert ours.num_params() == hf_counts[name] + 47 * n_embd, name
    # The published sizes, independently of our model.
    assert hf_counts == {"gpt2": 124_439_808, "gpt2-medium": 354_823_168}


def test_small_presets_shapes():
    baby = GPTConfig(**preset("baby"), vocab_size=65)
    assert (baby.n_layer, baby.n_head, baby.n_embd, baby.block_size) == (6, 6, 384, 256)
    llama = GPTConfig(**preset("baby-llama"), vocab_size=65)
    assert (llama.pos_emb, llama.norm, llama.mlp, llama.bias, llama.tie_embeddings) == (
        "rope", "rmsnorm", "swiglu", False, False)
    # SwiGLU default hidden width: 8/3 * 384 = 1024, already a multiple of 64.
    assert llama.hidden_size == 1024 and baby.hidden_size == 4 * 384
    for name in PRESETS:  # every preset is a valid config
        GPTConfig(**preset(name), vocab_size=50257)


def test_preset_returns_a_copy():
    p = preset("baby")
    p["n_layer"] = 99
    assert preset("baby")["n_layer"] == 6


def test_untied_rope_model_counts_head_separately():
    cfg = GPTConfig(**TINY_MODEL, **MODERN)
    model = GPT(cfg)
    C, V, L, H = 32, 64, 2, cfg.hidden_size
    per_block = (C + C) + (3 * C * C + C * C) + 2 * (C // 4) + (C * 2 * H + H * C)  # norms, attn, qk-norm, mlp
    assert model.num_params() == V * C * 2 + L * per_block + C
    assert model.num_params(non_embedding=True) == model.num_params()  # no position table to drop
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("vocab, padded", [(65, 128), (64, 64), (1, 64), (50257, 50304), (129, 192)])
def test_vocab_padding(vocab, padded):
    assert GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=vocab).padded_vocab_size == padded


def test_logits_cover_the_real_vocabulary_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=65)).eval()
    assert model.transformer.wte.weight.shape[0] == 128 and model.lm_head.weight.shape[0] == 128
    out = model(random_ids((2, 8), vocab=65))
    assert out.logits.shape == (2, 8, 65)
    assert out.loss is None and out.attentions is None


# ---------------------------------------------------------------------------- HF parity

HF_GPT2 = dict(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=50,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5)


@pytest.fixture(scope="module")
def gpt2_pair():
    """A random HF GPT-2 and our GPT carrying the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**HF_GPT2)).eval()
    randomize_(hf, seed=3)
    ours = GPT(GPTConfig(**TINY_MODEL)).eval()
    sd = ours.state_dict()
    copied = set()
    with torch.no_grad():
        for key, value in hf.state_dict().items():
            if key.endswith((".attn.bias", ".attn.masked_bias")):  # HF's causal-mask buffers
                continue
            if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                value = value.t()  # HF Conv1D stores (in, out)
            if key in ("transformer.wte.weight", "lm_head.weight"):
                copy_padded_(sd[key], value)
            else:
                sd[key].copy_(value)
            copied.add(key)
    assert copied == set(sd)  # every one of our tensors came from HF, nothing left over
    return hf, ours


def test_gpt2_logits_match_huggingface(gpt2_pair):
    hf, ours = gpt2_pair
    idx = random_ids((3, 16), seed=5)
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx).logits
    assert got.shape == ref.shape == (3, 16, 50)
    assert ref.abs().max() > 0.5  # the weights are big enough for a wrong mapping to show
    assert (got - ref).abs().max() < 1e-5
    # A shorter sequence and a single token take other attention code paths.
    with torch.no_grad():
        assert (ours(idx[:, :7]).logits - hf(idx[:, :7]).logits).abs().max() < 1e-5
        assert (ours(idx[:, :1]).logits - hf(idx[:, :1]).logits).abs().max() < 1e-5


def test_gpt2_loss_matches_huggingface(gpt2_pair):
    hf, ours = gpt2_pair
    idx = random_ids((3, 16), seed=5)
    with torch.no_grad():
        ref = hf(idx, labels=idx).loss  # HF shifts the labels itself
        got = ours(idx[:, :-1].contiguous(), idx[:, 1:].contiguous()).loss
    assert abs(got.item() - ref.item()) < 1e-5


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_loss_is_cross_entropy_of_the_returned_logits(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, **(MODERN if variant == "modern" else {}))).eval()
    idx, targets = random_ids((2, 16), seed=2), random_ids((2, 16), seed=3)
    with torch.no_grad():
        out = model(idx, targets)
    expected = F.cross_entropy(out.logits.reshape(-1, 50), targets.reshape(-1))
    assert abs(out.loss.item() - expected.item()) < 1e-5


def test_loss_ignores_ignore_index_and_ranks_a_good_prediction_lower():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL)).eval()
    idx, targets = random_ids((2, 16), seed=2), random_ids((2, 16), seed=3)
    masked = targets.clone()
    masked[:, 8:] = -100
    with torch.no_grad():
        full = model(idx, targets).loss
        half = model(idx, masked).loss
        first = model(idx[:, :8].contiguous(), targets[:, :8].contiguous()).loss
    assert full.shape == () and torch.isfinite(full)
    # Causal: the first 8 positions see the same tokens, so the masked loss is their loss.
    assert abs(half.item() - first.item()) < 1e-6
    assert abs(full.item() - half.item()) > 1e-4


def test_loss_accepts_non_contiguous_targets():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL)).eval()
    idx = random_ids((2, 16), seed=2)
    with torch.no_grad():
        got = model(idx[:, :-1], idx[:, 1:]).loss
        ref = model(idx[:, :-1].contiguous(), idx[:, 1:].contiguous()).loss
    assert torch.equal(got, ref)


def test_llama_style_options_match_huggingface_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=16, vocab_size=50, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False)).eval()
    randomize_(hf, seed=4)
    ours = GPT(GPTConfig(**TINY_MODEL, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                         tie_embeddings=False, qk_norm=False, mlp_hidden=64)).eval()
    h = hf.state_dict()
    mapped = {
        "transformer.wte.weight": h["model.embed_tokens.weight"],
        "lm_head.weight": h["lm_head.weight"],
        "transformer.ln_f.weight": h["model.norm.weight"],
    }
    for i in range(2):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        mapped[dst + "attn.c_attn.weight"] = torch.cat(
            [h[src + "self_attn.q_proj.weight"], h[src + "self_attn.k_proj.weight"], h[src + "self_attn.v_proj.weight"]])
        mapped[dst + "attn.c_proj.weight"] = h[src + "self_attn.o_proj.weight"]
        mapped[dst + "mlp.c_fc.weight"] = torch.cat([h[src + "mlp.gate_proj.weight"], h[src + "mlp.up_proj.weight"]])
        mapped[dst + "mlp.c_proj.weight"] = h[src + "mlp.down_proj.weight"]
        mapped[dst + "ln_1.weight"] = h[src + "input_layernorm.weight"]
        mapped[dst + "ln_2.weight"] = h[src + "post_attention_layernorm.weight"]
    sd = ours.state_dict()
    assert set(mapped) == set(sd)
    with torch.no_grad():
        for key, value in mapped.items():
            if key in ("transformer.wte.weight", "lm_head.weight"):
                copy_padded_(sd[key], value)
            else:
                sd[key].copy_(value)
        idx = random_ids((3, 16), seed=6)
        ref = hf(idx).logits
        got = ours(idx).logits
        assert ref.abs().max() > 0.5
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 1e-5
        # Position-dependence really is RoPE's: shifting the sequence changes the logits.
        assert (ours(idx[:, 1:]).logits - got[:, 1:]).abs().max() > 1e-3


# ---------------------------------------------------------------------------- init


def test_init_statistics():
    torch.manual_seed(0)
    n_layer = 4
    model = GPT(GPTConfig(n_layer=n_layer, n_head=4, n_embd=256, block_size=64, vocab_size=512))
    resid_std = 0.02 / math.sqrt(2 * n_layer)

    def pooled(suffix):
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith(suffix)])

    for suffix, std in [("attn.c_attn.weight", 0.02), ("mlp.c_fc.weight", 0.02), ("wte.weight", 0.02),
                        ("wpe.weight", 0.02), ("attn.c_proj.weight", resid_std), ("mlp.c_proj.weight", resid_std)]:
        w = pooled(suffix)
        assert abs(w.std().item() - std) < 0.02 * std, suffix
        assert abs(w.mean().item()) < 0.05 * std, suffix
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            assert torch.count_nonzero(p) == 0, n
        if ".ln_" in n and n.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), n


def test_init_of_modern_norms_and_tying():
    torch.manual_seed(0)
    modern = GPT(GPTConfig(**TINY_MODEL, **MODERN))
    for n, p in modern.named_parameters():
        assert not n.endswith("bias"), n
        if "norm" in n or ".ln_" in n:
            assert torch.equal(p, torch.ones_like(p)), n
    assert modern.transformer.h[0].attn.q_norm is not None
    assert modern.lm_head.weight.data_ptr() != modern.transformer.wte.weight.data_ptr()
    assert not torch.equal(modern.lm_head.weight, modern.transformer.wte.weight)

    tied = GPT(GPTConfig(**TINY_MODEL))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    with torch.no_grad():
        tied.transformer.wte.weight[3, 0] = 7.0
    assert tied.lm_head.weight[3, 0].item() == 7.0  # one storage
    assert "wpe" not in modern.transformer and "wpe" in tied.transformer


# ---------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("kwargs, names", [
    (dict(n_embd=30, n_head=4), ["n_embd", "n_head"]),
    (dict(n_embd=12, n_head=4, pos_emb="rope"), ["rope", "even head size", "n-embd", "n-head"]),
    (dict(norm="batchnorm"), ["--norm", "batchnorm"]),
    (dict(mlp="relu"), ["--mlp", "relu"]),
    (dict(pos_emb="alibi"), ["--pos-emb", "alibi"]),
    (dict(n_layer=0), ["--n-layer"]),
    (dict(n_head=0), ["--n-head"]),
    (dict(n_head=-2), ["--n-head"]),
    (dict(n_embd=-32), ["--n-embd"]),
    (dict(block_size=0), ["--block-size"]),
    (dict(vocab_size=0), ["--vocab-size"]),
    (dict(mlp_hidden=0), ["--mlp-hidden"]),
    (dict(dropout=1.0), ["--dropout"]),
    (dict(dropout=-0.1), ["--dropout"]),
    (dict(dropout=float("nan")), ["--dropout"]),
])
def test_config_validation(kwargs, names):
    with pytest.raises(TinyGPTError) as err:
        GPTConfig(**{**TINY_MODEL, **kwargs})
    msg = str(err.value)
    assert "\n" not in msg
    for name in names:
        assert name.lower() in msg.lower(), (name, msg)


def test_odd_head_size_is_fine_without_rope():
    assert GPTConfig(**{**TINY_MODEL, "n_embd": 12, "n_head": 4}).head_size == 3


def test_unknown_preset():
    with pytest.raises(TinyGPTError) as err:
        preset("gpt3")
    msg = str(err.value)
    assert "\n" not in msg and "'gpt3'" in msg and "gpt2-medium" in msg


# ---------------------------------------------------------------------------- attention


def test_attention_maps(tiny_model):
    idx = random_ids((2, 16))
    maps = tiny_model.attention_maps(idx)
    assert len(maps) == 2
    upper = torch.ones(16, 16, dtype=torch.bool).triu(1)
    for att in maps:
        assert att.shape == (2, 4, 16, 16)
        assert (att.sum(-1) - 1).abs().max() < 1e-6
        assert torch.count_nonzero(att[..., upper]) == 0
        assert (att[..., ~upper] > 0).all()
    assert maps[0][:, :, 0, 0].eq(1).all()  # the first token only sees itself


def test_explicit_attention_path_matches_sdpa(tiny_model):
    idx = random_ids((2, 16))
    with torch.no_grad():
        fast = tiny_model(idx)
        slow = tiny_model(idx, need_weights=True)
    assert fast.attentions is None and len(slow.attentions) == 2
    assert (fast.logits - slow.logits).abs().max() < 1e-5


def test_explicit_attention_path_with_cache(tiny_model):
    idx = random_ids((1, 12))
    cache = KVCache(tiny_model.config, 1)
    with torch.no_grad():
        tiny_model(idx[:, :5], cache=cache)
        out = tiny_model(idx[:, 5:], cache=cache, need_weights=True)  # 7 queries over 12 keys
        full = tiny_model(idx)
    att = out.attentions[0]
    assert att.shape == (1, 4, 7, 12)
    assert torch.count_nonzero(att[..., torch.ones(7, 12, dtype=torch.bool).triu(6)]) == 0
    assert (att.sum(-1) - 1).abs().max() < 1e-6
    assert (out.logits - full.logits[:, 5:]).abs().max() < 1e-5


# ---------------------------------------------------------------------------- causality, dropout, determinism


@pytest.mark.parametrize("t", [0, 1, 7, 15])
def test_causality(tiny_model, t):
    idx = random_ids((2, 16))
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 50
    with torch.no_grad():
        a = tiny_model(idx).logits
        b = tiny_model(changed).logits
    assert torch.equal(a[:, :t], b[:, :t])
    assert (a[:, t] - b[:, t]).abs().max() > 1e-6  # the changed position itself does move


@pytest.mark.parametrize("need_weights", [False, True])
def test_dropout_only_in_train_mode(need_weights):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, dropout=0.2))
    idx = random_ids((2, 16))
    model.train()
    a = model(idx, need_weights=need_weights).logits
    b = model(idx, need_weights=need_weights).logits
    assert (a - b).abs().max() > 1e-4
    model.eval()
    with torch.no_grad():
        c = model(idx, need_weights=need_weights).logits
        d = model(idx, need_weights=need_weights).logits
    assert torch.equal(c, d)


def test_embedding_dropout_reaches_the_first_block():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, dropout=0.5))
    seen = []
    model.transformer.h[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    idx = random_ids((4, 16))
    model.eval()
    model(idx)
    model.train()
    model(idx)
    clean, dropped = seen
    kept = dropped != 0
    assert 0.4 < kept.float().mean().item() < 0.6
    # Inverted dropout: survivors are scaled by 1 / (1 - p).
    assert (dropped[kept] - 2 * clean[kept]).abs().max() < 1e-6


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_blind_to_query_and_key_scale(qk_norm):
    # RMS-normalised queries and keys do not change when q_proj / k_proj are scaled;
    # without QK-norm the same scaling sharpens the attention.
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, **{**MODERN, "qk_norm": qk_norm}, norm_eps=1e-12)).eval()
    idx = random_ids((2, 16))
    with torch.no_grad():
        before = model(idx).logits
        for block in model.transformer.h:
            w = block.attn.c_attn.weight
            w[:32] *= 3.0  # queries
            w[32:64] *= 5.0  # keys
        after = model(idx).logits
    diff = (after - before).abs().max().item()
    if qk_norm:
        assert diff < 1e-5
    else:
        assert diff > 1e-4


def test_same_seed_same_model_and_logits():
    def build(seed):
        torch.manual_seed(seed)
        return GPT(GPTConfig(**TINY_MODEL, **MODERN)).eval()

    a, b, c = build(7), build(7), build(8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["transformer.wte.weight"], sc["transformer.wte.weight"])
    idx = random_ids((2, 16))
    with torch.no_grad():
        assert torch.equal(a(idx).logits, b(idx).logits)
        assert not torch.equal(a(idx).logits, c(idx).logits)


def test_context_overflow(tiny_model):
    with pytest.raises(TinyGPTError) as err:
        tiny_model(random_ids((1, 17)))
    assert "16" in str(err.value) and "\n" not in str(err.value)
    tiny_model(random_ids((1, 16)))  # exactly the context is fine
    cache = KVCache(tiny_model.config, 1)
    tiny_model(random_ids((1, 10)), cache=cache)
    with pytest.raises(TinyGPTError):
        tiny_model(random_ids((1, 7)), cache=cache)
    tiny_model(random_ids((1, 6)), cache=cache)
    assert cache.pos == 16


def test_cache_shorter_than_context_overflows_with_a_clear_error():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL)).eval()
    cache = KVCache(model.config, 1, max_len=4)
    with pytest.raises(TinyGPTError):
        model(random_ids((1, 6)), cache=cache)


# ---------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("chunks", [[16], [1] * 16, [3, 1, 5, 1, 1, 4, 1], [2, 7, 1, 6]])
def test_kv_cache_reproduces_the_full_forward(tiny_model, chunks):
    idx = random_ids((2, 16))
    cache = KVCache(tiny_model.config, 2)
    pieces, pos = [], 0
    with torch.no_grad():
        full = tiny_model(idx).logits
        for n in chunks:
            pieces.append(tiny_model(idx[:, pos:pos + n], cache=cache).logits)
            pos += n
            assert cache.pos == pos
    got = torch.cat(pieces, dim=1)
    assert got.shape == full.shape
    assert (got - full).abs().max() < 1e-5


def test_kv_cache_layout(tiny_model):
    cache = KVCache(tiny_model.config, 3, max_len=10)
    assert cache.k.shape == cache.v.shape == (2, 3, 4, 10, 8)
    assert cache.max_len == 10 and cache.pos == 0
    assert KVCache(tiny_model.config, 1).max_len == 16


def test_kv_cache_reorder_keeps_the_chosen_rows(tiny_model):
    idx = random_ids((3, 9))
    cache = KVCache(tiny_model.config, 3)
    with torch.no_grad():
        tiny_model(idx[:, :8], cache=cache)
        before_k, before_v = cache.k.clone(), cache.v.clone()
        order = torch.tensor([2, 0])
        cache.reorder(order)
        assert cache.pos == 8
        assert torch.equal(cache.k, before_k[:, order]) and torch.equal(cache.v, before_v[:, order])
        step = tiny_model(idx[order, 8:], cache=cache).logits
        full = tiny_model(idx[order]).logits
    assert (step[:, 0] - full[:, 8]).abs().max() < 1e-5
