"""The GPT model: sizes, the loss, init, validation, attention, causality, dropout,
determinism, loss masks and building without init (the cache, positions and packing: test_kvcache.py).
Parity with Hugging Face GPT-2 / Llama is in test_interop_hf.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import MODERN, TINY_MODEL, random_ids

from tinygpt.errors import TinyGPTError
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT, GPTConfig, record_attention
from tinygpt.presets import get_preset


def preset(name):
    return dict(get_preset(name).model)

# ---------------------------------------------------------------------------- helpers


def meta_model(cfg):
    with torch.device("meta"):
        return GPT(cfg)


def meta_count(model):
    return sum(p.numel() for p in model.parameters())


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
    assert out.loss is None and out.loss_sum is None and out.n_targets is None


def test_last_gives_the_last_positions_logits_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=65, logit_softcap=5.0)).eval()
    idx = random_ids((3, 8), vocab=65)
    with torch.no_grad():
        whole, last = model(idx).logits, model(idx, last=True).logits
    assert last.shape == (3, 1, 65)
    torch.testing.assert_close(last[:, 0], whole[:, -1], rtol=0, atol=1e-6)
    with pytest.raises(TinyGPTError, match="a loss needs them all"):
        model(idx, idx, last=True)


# ---------------------------------------------------------------------------- the loss


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
    (dict(logit_softcap=0.0), ["--logit-softcap"]),
    (dict(logit_softcap=-15.0), ["--logit-softcap"]),
    (dict(init_proj="small"), ["--init-proj", "small"]),
])
def test_config_validation(kwargs, names):
    with pytest.raises(TinyGPTError) as err:
        GPTConfig(**{**TINY_MODEL, **kwargs})
    msg = str(err.value)
    assert "\n" not in msg
    for name in names:
        assert name.lower() in msg.lower(), (name, msg)


# ---------------------------------------------------------------------------- modded-nanogpt's switches

MN_ALL = dict(mlp="relu2", logit_softcap=15.0, unet_skips=True, value_embeds=True, init_proj="zero")


def _twins(**switches):
    """A model with ``switches`` and one without them, holding the same shared weights."""
    torch.manual_seed(0)
    on = GPT(GPTConfig(**{**TINY_MODEL, "n_layer": 5, **switches})).eval()
    off = GPT(GPTConfig(**{**TINY_MODEL, "n_layer": 5})).eval()
    off.load_state_dict({k: v for k, v in on.state_dict().items() if k in off.state_dict()})
    return on, off


def test_relu2_mlp_is_the_square_of_relu():
    on, _ = _twins(mlp="relu2")
    mlp, x = on.transformer.h[0].mlp, torch.randn(2, 3, 32)
    assert torch.equal(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))


def test_zero_init_projections_start_every_block_as_the_identity_and_still_learn():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, init_proj="zero"))
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 2 * TINY_MODEL["n_layer"] and all(torch.count_nonzero(p) == 0 for p in projections)
    idx = random_ids((2, 8))
    t = model.transformer
    x = t.wte(idx) + t.wpe(torch.arange(8))
    assert torch.allclose(model(idx).logits, model.lm_head(t.ln_f(x))[..., :50], atol=1e-6)
    model(idx, idx).loss.backward()
    assert all(torch.count_nonzero(p.grad) > 0 for p in projections)  # the first step moves them
    assert torch.count_nonzero(t.h[0].attn.c_attn.weight.grad) == 0  # until then nothing reaches c_attn ...
    assert t.h[0].attn.c_attn.weight.std() > 0.01  # ... which keeps its usual init


def test_logit_softcap_squashes_the_logits_with_tanh():
    on, off = _twins(logit_softcap=2.0)
    idx = random_ids((2, 8))
    with torch.no_grad():  # logits large enough to reach the cap (the head is tied: scale the final norm)
        for model in (on, off):
            model.transformer.ln_f.weight.mul_(8)
    raw, capped = off(idx).logits, on(idx).logits
    assert torch.allclose(capped, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)
    assert capped.abs().max() <= 2.0 < raw.abs().max()


@pytest.mark.parametrize("switch", ["unet_skips", "value_embeds"])
def test_a_new_path_at_zero_weight_leaves_the_model_unchanged(switch):
    on, off = _twins(**{switch: True})
    idx = random_ids((2, 8))
    assert not torch.allclose(on(idx).logits, off(idx).logits, atol=1e-4)  # skips start at 1, embeddings random
    with torch.no_grad():
        for n, p in on.named_parameters():
            if n.startswith(("skip_weights", "value_embeds")):
                p.zero_()
    assert torch.equal(on(idx).logits, off(idx).logits)


def test_unet_skips_join_each_block_of_the_first_half_to_its_mirror():
    on, _ = _twins(unet_skips=True)  # 5 blocks: 0 -> 4, 1 -> 3, block 2 has no partner
    assert on.skip_weights.shape == (2,)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args, i=i: seen.append((i, args[0].clone())))
             for i, b in enumerate(on.transformer.h)]
    outs = []
    hooks += [b.register_forward_hook(lambda m, args, out: outs.append(out.clone())) for b in on.transformer.h]
    with torch.no_grad():
        on.skip_weights.copy_(torch.tensor([0.5, -2.0]))
        on(random_ids((1, 6)))
    for h in hooks:
        h.remove()
    inputs = [x for _, x in seen]
    assert torch.equal(inputs[2], outs[1])
    assert torch.allclose(inputs[3], outs[2] - 2.0 * outs[1], atol=1e-6)
    assert torch.allclose(inputs[4], outs[3] + 0.5 * outs[0], atol=1e-6)


def test_value_embeddings_need_token_ids_and_stay_off_muon():
    from tinygpt.train.optim import updated_by
    on, _ = _twins(value_embeds=True)
    assert [tuple(e.weight.shape) for e in on.value_embeds] == [(50, 32)] * 5  # not padded: a lookup
    with pytest.raises(TinyGPTError, match="value-embeds"):
        on(torch.randn(1, 4, 32))
    by = updated_by(on, "muon")
    assert {by[f"value_embeds.{i}.weight"] for i in range(5)} == {"adamw"}
    assert by["transformer.h.0.attn.c_attn.weight"] == "muon"


def test_every_switch_together_decodes_with_the_cache_as_it_computes_whole():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "n_layer": 5, "pos_emb": "rope", **MN_ALL})).eval()
    with torch.no_grad():  # zero-init projections would hide every block; give them weights
        for n, p in model.named_parameters():
            if n.endswith("c_proj.weight"):
                p.normal_(0, 0.02)
    idx = random_ids((2, 12))
    cache = KVCache(model.config, 2)
    with torch.no_grad():
        full = model(idx).logits
        steps = torch.cat([model(idx[:, :5], cache=cache).logits] +
                          [model(idx[:, t:t + 1], cache=cache).logits for t in range(5, 12)], dim=1)
    assert (steps - full).abs().max() < 1e-5


@pytest.mark.parametrize("switches", [dict(unet_skips=True), dict(value_embeds=True), MN_ALL])
def test_stored_params_counts_the_new_weights(switches):
    cfg = GPTConfig(**{**TINY_MODEL, "n_layer": 5, **switches})
    model = GPT(cfg)
    padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
    assert cfg.stored_params() == model.num_params() - padding


def test_odd_head_size_is_fine_without_rope():
    assert GPTConfig(**{**TINY_MODEL, "n_embd": 12, "n_head": 4}).head_size == 3


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
    """The recorded weights are the ones SDPA used: weights @ v reproduces its output."""
    idx = random_ids((2, 16))
    seen = []
    attend = tiny_model.transformer.h[1].attn.attend
    handle = attend.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    with torch.no_grad(), record_attention(tiny_model) as maps:
        plain = tiny_model(idx).logits
    handle.remove()
    (q, k, v, mask, causal), y = seen[0]
    assert causal and mask is None and len(maps) == 2
    assert (maps[1] @ v - y).abs().max() < 1e-6
    with torch.no_grad():
        assert torch.equal(tiny_model(idx).logits, plain)  # recording changes nothing, and the hooks are gone
    assert not attend._forward_hooks


def test_explicit_attention_path_with_cache(tiny_model):
    idx = random_ids((1, 12))
    cache = KVCache(tiny_model.config, 1)
    with torch.no_grad():
        tiny_model(idx[:, :5], cache=cache)
        with record_attention(tiny_model) as maps:
            out = tiny_model(idx[:, 5:], cache=cache)  # 7 queries over 12 keys
        full = tiny_model(idx)
    att = maps[0]
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


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, dropout=0.2))
    idx = random_ids((2, 16))
    model.train()
    a = model(idx).logits
    b = model(idx).logits
    assert (a - b).abs().max() > 1e-4
    model.eval()
    with torch.no_grad():
        c = model(idx).logits
        d = model(idx).logits
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


# ---------------------------------------------------------------------------- loss masks


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_loss_mask_equals_training_on_the_unmasked_half_alone(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, **(MODERN if variant == "modern" else {})))
    idx, targets = random_ids((4, 16), seed=2), random_ids((4, 16), seed=3)

    def grad_of(*args, **kwargs):
        model.zero_grad()
        out = model(*args, **kwargs)
        out.loss.backward()
        return out, grads(model)

    # Mask the second half of every sequence: causal, so it equals the first half alone.
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, :8] = True
    masked, g_masked = grad_of(idx, targets, loss_mask=mask)
    alone, g_alone = grad_of(idx[:, :8], targets[:, :8])
    assert masked.n_targets.item() == 32 and abs(masked.loss.item() - alone.loss.item()) < 1e-6
    assert_same_grads(g_masked, g_alone)
    # Mask two whole rows: equals the other two rows alone.
    rows = torch.tensor([True, False, True, False])[:, None].expand(4, 16)
    _, g_rows = grad_of(idx, targets, loss_mask=rows)
    _, g_two = grad_of(idx[[0, 2]], targets[[0, 2]])
    assert_same_grads(g_rows, g_two)
    full, g_full = grad_of(idx, targets)
    key = "transformer.wte.weight"  # the (possibly tied) embedding: every token touches it
    assert (g_full[key] - g_masked[key]).abs().max() > 1e-4  # the mask matters


def test_loss_is_returned_as_sum_and_count(tiny_model):
    idx, targets = random_ids((2, 16), seed=2), random_ids((2, 16), seed=3)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) > 0.3
    targets[0, 0] = -100  # an ignored target counts as masked
    with torch.no_grad():
        out = tiny_model(idx, targets, loss_mask=mask)
    counted = mask & (targets != -100)
    assert out.n_targets.item() == counted.sum().item()
    expected = F.cross_entropy(out.logits[counted], targets[counted], reduction="sum")
    assert abs(out.loss_sum.item() - expected.item()) < 1e-4
    assert out.loss.item() == (out.loss_sum / out.n_targets).item()


# ---------------------------------------------------------------------------- building without init


def test_a_meta_model_is_built_without_init_and_needs_a_vocabulary():
    with torch.device("meta"):
        model = GPT(GPTConfig(**TINY_MODEL, **MODERN))
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_buffers()
    assert not model.rotary.cos.is_meta
    torch.manual_seed(0)
    assert torch.equal(model.rotary.cos, GPT(GPTConfig(**TINY_MODEL, **MODERN)).rotary.cos)
    with pytest.raises(TinyGPTError, match="vocab_size is not set"):
        GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": None}))


# ---------------------------------------------------------------------------- what the file holds


def test_model_py_is_the_model_alone():
    """A learner reads model.py top to bottom: the GPT, without decode-speed code or anything of
    training, files, devices or adapters (those wrap the model from outside)."""
    import ast

    import tinygpt.model

    source = open(tinygpt.model.__file__, encoding="utf-8").read()
    assert len(source.splitlines()) <= 540  # 420 before modded-nanogpt's five switches, 470 before pruned widths,
    # 495 before mixture-of-experts and sparse attention (their math lives in moe.py and patterns.py)
    imported, names = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        names.add(getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "arg", None))
    assert imported == {"__future__", "math", "contextlib", "dataclasses", "typing", "torch", "torch.nn",
                        "torch.nn.functional", ".", ".config", ".errors", ".kernels", ".kvcache", ".patterns"}
    for speed_or_adapter in ("mkldnn", "mv", "pack", "packed_weights", "SoftPrompt", "prompt"):
        assert speed_or_adapter not in names

