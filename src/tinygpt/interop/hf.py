"""Hugging Face GPT-2 and Llama checkpoints <-> tinygpt, both ways.

Configs travel as plain dicts (``PretrainedConfig.to_dict()`` in, kwargs for
``GPT2Config(**d)`` / ``LlamaConfig(**d)`` out) and weights as state dicts, so this
module needs neither ``transformers`` nor any file format.

The name tables are all there is to know:

* GPT-2 uses our names already (ours were chosen to match). Its Conv1D layers store
  weights (in, out), the transpose of ``nn.Linear``, so those four get transposed.
* Llama keeps q/k/v and gate/up as separate matrices; we pack each group into one
  matmul on the output dim, so conversion concatenates / splits along dim 0.
  RoPE uses the same rotate-half convention on both sides: no q/k permutation.

Our embedding and head carry ``padded_vocab_size`` rows; HF carries ``vocab_size``.
Padding rows are zeros on the way in and dropped on the way out.
Anything we cannot represent is a ``TinyGPTError`` naming the option, raised as the
value comes in, rather than a model that loads but computes something else.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import torch

from ..errors import TinyGPTError
from ..model import GPT, GPTConfig

StateDict = dict[str, torch.Tensor]

# Our keys whose rows index the vocabulary (padded on our side only).
_VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")

# GPT-2's Conv1D weights, stored (in, out) by HF.
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Our module path -> HF module paths, concatenated in this order along dim 0.
_LLAMA_TOP = {"transformer.wte": ("model.embed_tokens",), "transformer.ln_f": ("model.norm",),
              "lm_head": ("lm_head",)}
_LLAMA_BLOCK = {
    "ln_1": ("input_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "ln_2": ("post_attention_layernorm",),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.c_proj": ("mlp.down_proj",),
}

# The architecture switches each format fixes: field -> required value.
# (init_proj is only how training starts: any value converts.)
# Neither has sparse attention (Mistral's sliding window would hold local; not mapped yet).
_NEITHER = {"qk_norm": False, "logit_softcap": None, "unet_skips": False, "value_embeds": False, "attention": "full",
            "moe_experts": None}
_GPT2_SHAPE = {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "n_kv_head": None, **_NEITHER}
_LLAMA_SHAPE = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", **_NEITHER}
# Mixtral: Llama's blocks with a mixture of experts for every MLP (top-k renormalised, as
# tinygpt's for k > 1), no biases, no shared expert; moe_experts and moe_top_k are checked apart.
_MIXTRAL_SHAPE = {**{k: v for k, v in _LLAMA_SHAPE.items() if k != "moe_experts"}, "bias": False,
                  "moe_every": 1, "moe_shared_expert": False}
_MIXTRAL_EXPERT = {"c_fc": ("w1", "w3"), "c_proj": ("w2",)}  # gate and up packed in our c_fc, as Mixtral's w1, w3

# GPT-2's activation names -> our gelu form (gelu_new and gelu_pytorch_tanh are both tanh).
_GPT2_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}

# HF options that change the computation in ways we do not model: key -> (default, allowed).
_GPT2_OPTIONS = {
    "activation_function": ("gelu_new", tuple(_GPT2_GELU)),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
    "reorder_and_upcast_attn": (False, (False,)),
}
_LLAMA_OPTIONS = {"hidden_act": ("silu", ("silu",))}

# Checkpoint entries that are not weights: GPT-2's causal-mask buffers and the RoPE
# frequencies that older Llama checkpoints saved. Both are rebuilt from the config.
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")
_LLAMA_BUFFERS = ("rotary_emb.inv_freq",)


# ---------------------------------------------------------------------------- configs

def _flag(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _require_shape(cfg: GPTConfig, shape: dict, family: str) -> None:
    if cfg.vocab_size is None:  # normally filled in from the tokenizer
        raise TinyGPTError(f"the model config has no vocab_size; set it (from the tokenizer) "
                           f"before converting to or from {family}")
    # Structured pruning: the same MLP width in every block is an ordinary width; fewer heads
    # of the same size, or blocks that differ, are shapes these formats have no field for.
    if cfg.layer_heads or len(set(cfg.layer_hidden or ())) > 1:
        raise TinyGPTError(f"{family} gives every block {cfg.n_head} heads of {cfg.head_size} and one MLP width, "
                           f"but this pruned model has heads {cfg.layer_heads or 'as usual'} and widths "
                           f"{cfg.layer_hidden or 'as usual'}; export the unpruned run, or prune --structured neurons "
                           "only, which keeps one width")
    for field, want in shape.items():
        got = getattr(cfg, field)
        if got != want:
            raise TinyGPTError(f"the {family} format needs {field}={_flag(want)} but this model has "
                               f"{field}={_flag(got)}; only models trained with --{field.replace('_', '-')} "
                               f"{_flag(want)} can be converted to {family}")


def _check_options(hf: dict, options: dict, family: str) -> None:
    model_type = hf.get("model_type")
    if model_type not in (None, family.lower().replace("-", "")):
        raise TinyGPTError(f"expected a {family} config but model_type is {model_type!r}; "
                           "use the converter for that model family")
    for key, (default, allowed) in options.items():
        value = hf.get(key, default)
        if value not in allowed:
            raise TinyGPTError(f"{family} option {key}={value!r} is not supported by tinygpt; "
                               f"only checkpoints with {key} in {list(allowed)} can be converted")


def _need(hf: dict, key: str, family: str):
    if hf.get(key) is None:
        raise TinyGPTError(f"the {family} config has no {key!r}; pass the checkpoint's full config "
                           "(config.json or config.to_dict())")
    return hf[key]


def gpt2_config_from_hf(hf: dict) -> GPTConfig:
    """A ``GPT2Config.to_dict()``-style dict -> our GPTConfig."""
    _check_options(hf, _GPT2_OPTIONS, "GPT-2")
    n_layer, n_head, n_embd, n_positions, vocab_size = (
        _need(hf, k, "GPT-2") for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"))
    return GPTConfig(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=n_positions, vocab_size=vocab_size,
        # One dropout for all three sites; GPT-2 checkpoints set them equal.
        dropout=hf.get("resid_pdrop", 0.0), mlp_hidden=hf.get("n_inner"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
        gelu=_GPT2_GELU[hf.get("activation_function", "gelu_new")], **_GPT2_SHAPE)


def require_gpt2_shape(cfg: GPTConfig, fmt: str = "GPT-2") -> None:
    """Raise unless ``cfg`` is GPT-2's architecture (what ``fmt``, a format that holds it, needs)."""
    _require_shape(cfg, _GPT2_SHAPE, fmt)


def gpt2_config_to_hf(cfg: GPTConfig) -> dict:
    """Our GPTConfig -> kwargs for ``transformers.GPT2Config``."""
    _require_shape(cfg, _GPT2_SHAPE, "GPT-2")
    # <|endoftext|> is 50256 only in GPT-2's own BPE; otherwise the tokenizer is unknown here.
    eot = 50256 if cfg.vocab_size == 50257 else None
    return dict(
        model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        n_inner=cfg.hidden(0) if cfg.layer_hidden else cfg.mlp_hidden,
        activation_function="gelu_new" if cfg.gelu == "tanh" else "gelu",
        layer_norm_epsilon=cfg.norm_eps,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eot, eos_token_id=eot)


def llama_config_from_hf(hf: dict, family: str = "Llama") -> GPTConfig:
    """A ``LlamaConfig.to_dict()``-style dict -> our GPTConfig (RoPE, RMSNorm, SwiGLU);
    ``family="Mixtral"``: a ``MixtralConfig``'s, whose MLPs are mixtures of experts."""
    _check_options(hf, _LLAMA_OPTIONS, family)
    if family == "Mixtral":
        experts = dict(moe_experts=_need(hf, "num_local_experts", family), moe_top_k=hf.get("num_experts_per_tok", 2),
                       moe_aux_weight=hf.get("router_aux_loss_coef", 0.001), moe_z_weight=0.0)
        if experts["moe_top_k"] < 2:
            raise TinyGPTError("Mixtral with num_experts_per_tok=1 renormalises one probability to 1, which tinygpt's "
                               "top-1 routing (Switch: the raw probability) does not; only top-2 and more convert")
    else:
        experts = {}
    n_embd, n_head = _need(hf, "hidden_size", "Llama"), _need(hf, "num_attention_heads", "Llama")
    kv_heads = hf.get("num_key_value_heads") or n_head
    head_dim = hf.get("head_dim") or n_embd // n_head
    if head_dim * n_head != n_embd:
        raise TinyGPTError(f"Llama head_dim={head_dim} times num_attention_heads={n_head} is not "
                           f"hidden_size={n_embd}; only checkpoints with head_dim = hidden_size / heads convert")
    # Older transformers: top-level rope_theta plus an optional rope_scaling dict ("type" or
    # "rope_type"); 5.x: a rope_parameters dict holding rope_theta and rope_type.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type != "default":
        raise TinyGPTError(f"Llama rope scaling type {rope_type!r} is not supported; "
                           "only checkpoints with plain RoPE (rope_type 'default') can be converted")
    # One flag in tinygpt covers every linear layer's bias.
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise TinyGPTError(f"Llama attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported; "
                           "tinygpt's --bias applies to both, so they must be equal")
    return GPTConfig(
        n_layer=_need(hf, "num_hidden_layers", "Llama"), n_head=n_head, n_embd=n_embd,
        n_kv_head=None if kv_heads == n_head else kv_heads,
        block_size=_need(hf, "max_position_embeddings", "Llama"), vocab_size=_need(hf, "vocab_size", "Llama"),
        dropout=hf.get("attention_dropout", 0.0), bias=bool(attention_bias),
        mlp_hidden=_need(hf, "intermediate_size", "Llama"), tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6), **{**_LLAMA_SHAPE, **experts})


def mixtral_config_from_hf(hf: dict) -> GPTConfig:
    return llama_config_from_hf(hf, "Mixtral")


def mixtral_config_to_hf(cfg: GPTConfig) -> dict:
    """Our GPTConfig (a mixture of experts in every block, top-2 or more) -> kwargs for
    ``transformers.MixtralConfig``."""
    _require_mixtral(cfg)
    out = _llama_like_config(cfg)
    for key in ("attention_bias", "mlp_bias"):  # Mixtral has no biases, hence no such options
        del out[key]
    return {**out, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
            "num_local_experts": cfg.moe_experts, "num_experts_per_tok": cfg.moe_top_k,
            "router_aux_loss_coef": cfg.moe_aux_weight, "output_router_logits": False, "sliding_window": None}


def _require_mixtral(cfg: GPTConfig) -> None:
    if cfg.moe_experts is None or cfg.moe_top_k < 2:
        raise TinyGPTError("the Mixtral format needs a mixture of experts with --moe-top-k 2 or more (top-1 routing "
                           "weighs by the raw probability, which Mixtral renormalises to 1); this model has "
                           f"moe_experts={cfg.moe_experts}, moe_top_k={cfg.moe_top_k}")
    _require_shape(cfg, _MIXTRAL_SHAPE, "Mixtral")


def llama_config_to_hf(cfg: GPTConfig) -> dict:
    """Our GPTConfig -> kwargs for ``transformers.LlamaConfig``."""
    _require_shape(cfg, _LLAMA_SHAPE, "Llama")
    return _llama_like_config(cfg)


def _llama_like_config(cfg: GPTConfig) -> dict:
    return dict(
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd, intermediate_size=cfg.hidden(0), num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_size,
        max_position_embeddings=cfg.block_size, hidden_act="silu", rms_norm_eps=cfg.norm_eps,
        # Top-level rope_theta is accepted by every transformers version (5.x moves it into
        # rope_parameters itself); a rope_parameters dict would be ignored by 4.x.
        rope_theta=cfg.rope_theta, attention_bias=cfg.bias, mlp_bias=cfg.bias,
        attention_dropout=cfg.dropout, tie_word_embeddings=cfg.tie_embeddings,
        # Special tokens belong to the tokenizer, which this function does not know.
        bos_token_id=None, eos_token_id=None)


# ---------------------------------------------------------------------------- weights

def _gpt2_names(key: str) -> tuple[tuple[str, ...], bool]:
    return (key,), key.endswith(_GPT2_CONV1D)


def _llama_names(key: str) -> tuple[tuple[str, ...], bool]:
    module, param = key.rsplit(".", 1)
    block = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", module)
    if block:
        parts = tuple(f"model.layers.{block[1]}.{p}" for p in _LLAMA_BLOCK[block[2]])
    else:
        parts = _LLAMA_TOP[module]
    return tuple(f"{p}.{param}" for p in parts), False


def _mixtral_names(key: str) -> tuple[tuple[str, ...], bool]:
    module, param = key.rsplit(".", 1)
    moe = re.fullmatch(r"transformer\.h\.(\d+)\.mlp\.(router|experts\.(\d+)\.(c_fc|c_proj))", module)
    if not moe:
        return _llama_names(key)
    at = f"model.layers.{moe[1]}.block_sparse_moe"  # the hub's layout (transformers 5 fuses it when loading)
    if moe[2] == "router":
        return (f"{at}.gate.{param}",), False
    return tuple(f"{at}.experts.{moe[3]}.{w}.{param}" for w in _MIXTRAL_EXPERT[moe[4]]), False


class _Family(NamedTuple):
    name: str                            # as users know it, for messages
    shape: dict                          # the architecture switches the format fixes
    names: Callable[[str], tuple[tuple[str, ...], bool]]  # our key -> (its HF keys, transposed)
    buffers: tuple[str, ...]             # HF state-dict entries that are not weights


_GPT2 = _Family("GPT-2", _GPT2_SHAPE, _gpt2_names, _GPT2_BUFFERS)
_LLAMA = _Family("Llama", _LLAMA_SHAPE, _llama_names, _LLAMA_BUFFERS)
_MIXTRAL = _Family("Mixtral", _MIXTRAL_SHAPE, _mixtral_names, _LLAMA_BUFFERS)


def _plan(cfg: GPTConfig, names) -> list[tuple[str, torch.Size, tuple[str, ...], bool]]:
    """(our key, our shape, HF keys, transposed) for every tensor the config implies."""
    # The model itself is the one source of truth for our names and shapes; built on the
    # meta device it allocates nothing.
    with torch.device("meta"):
        ours = GPT(cfg).state_dict()
    if cfg.tie_embeddings:
        del ours["lm_head.weight"]  # the same tensor as wte: converted once
    return [(key, t.shape, *names(key)) for key, t in ours.items()]


def _part_rows(cfg: GPTConfig, key: str, rows: int, n_parts: int) -> list[int]:
    """How a packed tensor's rows split into its HF parts: q, k, v (k and v are narrower
    with grouped-query attention); anything else (SwiGLU's gate and up) evenly."""
    if n_parts == 3 and ".attn.c_attn." in key:
        kv = cfg.kv_heads * cfg.head_size
        return [rows - 2 * kv, kv, kv]
    return [rows // n_parts] * n_parts


def _hf_shapes(cfg: GPTConfig, key: str, shape: torch.Size, n_parts: int, transposed: bool) -> list[tuple]:
    rows = cfg.vocab_size if key in _VOCAB_ROWS else shape[0]
    parts = [(r, *shape[1:]) for r in _part_rows(cfg, key, rows, n_parts)]
    return [p[::-1] if transposed else p for p in parts]


def _check(sd: StateDict, expected: dict[str, tuple], ignored, source: str) -> None:
    """Same keys (up to ``ignored``) and same shapes, or a TinyGPTError naming the first bad key."""
    hint = "the config does not match the checkpoint (check n_layer, bias and tie_embeddings)"
    for key, shape in expected.items():
        if key not in sd:
            raise TinyGPTError(f"the {source} state dict lacks {key!r}; {hint}")
        if tuple(sd[key].shape) != tuple(shape):
            raise TinyGPTError(f"{source} tensor {key!r} has shape {tuple(sd[key].shape)} but the config "
                               f"implies {tuple(shape)}; {hint}")
    for key in sd:
        if key not in expected and not ignored(key):
            raise TinyGPTError(f"unexpected key {key!r} in the {source} state dict; {hint}")


def _from_hf(hf_sd: StateDict, cfg: GPTConfig, family: _Family) -> StateDict:
    _require_shape(cfg, family.shape, family.name)
    names, buffers = family.names, family.buffers
    plan = _plan(cfg, names)
    expected = {}
    for key, shape, parts, transposed in plan:
        expected.update(zip(parts, _hf_shapes(cfg, key, shape, len(parts), transposed)))
    # HF state dicts repeat a tied head as lm_head.weight; some saved files leave it out.
    _check(hf_sd, expected, lambda k: k.endswith(buffers) or (cfg.tie_embeddings and k == "lm_head.weight"),
           f"Hugging Face {family.name}")
    out = {}
    for key, shape, parts, transposed in plan:
        tensors = [hf_sd[p].t() if transposed else hf_sd[p] for p in parts]
        t = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        if key in _VOCAB_ROWS:  # (vocab_size, C) -> (padded_vocab_size, C), zero rows
            t = torch.cat([t, t.new_zeros(shape[0] - t.shape[0], *t.shape[1:])])
        out[key] = t.contiguous()
    return out


def _to_hf(sd: StateDict, cfg: GPTConfig, family: _Family) -> StateDict:
    _require_shape(cfg, family.shape, family.name)
    names = family.names
    plan = _plan(cfg, names)
    # model.state_dict() of a tied model lists the head too; it is wte, so ignore it.
    _check(sd, {key: shape for key, shape, _, _ in plan},
           lambda k: cfg.tie_embeddings and k == "lm_head.weight", "tinygpt")
    out = {}
    for key, _, parts, transposed in plan:
        t = sd[key]
        if key in _VOCAB_ROWS:
            t = t[:cfg.vocab_size]  # (padded_vocab_size, C) -> (vocab_size, C)
        for part, chunk in zip(parts, t.split(_part_rows(cfg, key, t.shape[0], len(parts)))):
            out[part] = (chunk.t() if transposed else chunk).contiguous()
    if cfg.tie_embeddings:  # as in HF's own state_dict(), which load_state_dict(strict=True) expects
        out["lm_head.weight"] = out[names("transformer.wte.weight")[0][0]]
    return out


def gpt2_weights_from_hf(hf_sd: StateDict, cfg: GPTConfig) -> StateDict:
    """HF GPT2LMHeadModel state dict -> ours (no lm_head.weight when tied: it is wte)."""
    return _from_hf(hf_sd, cfg, _GPT2)


def gpt2_weights_to_hf(sd: StateDict, cfg: GPTConfig) -> StateDict:
    """Our state dict -> HF GPT2LMHeadModel's."""
    return _to_hf(sd, cfg, _GPT2)


def llama_weights_from_hf(hf_sd: StateDict, cfg: GPTConfig) -> StateDict:
    """HF LlamaForCausalLM state dict -> ours (no lm_head.weight when tied: it is wte)."""
    return _from_hf(hf_sd, cfg, _LLAMA)


def llama_weights_to_hf(sd: StateDict, cfg: GPTConfig) -> StateDict:
    """Our state dict -> HF LlamaForCausalLM's."""
    return _to_hf(sd, cfg, _LLAMA)


def mixtral_weights_from_hf(hf_sd: StateDict, cfg: GPTConfig) -> StateDict:
    """A Mixtral checkpoint's tensors (the hub layout: per-expert w1/w2/w3) -> ours."""
    _require_mixtral(cfg)
    return _from_hf(hf_sd, cfg, _MIXTRAL)


def mixtral_weights_to_hf(sd: StateDict, cfg: GPTConfig) -> StateDict:
    """Our state dict -> a Mixtral checkpoint's tensors in the hub layout."""
    _require_mixtral(cfg)
    return _to_hf(sd, cfg, _MIXTRAL)
