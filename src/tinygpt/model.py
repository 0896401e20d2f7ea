"""The GPT: GPT-2's architecture exactly, plus independent modern switches.

Defaults reproduce GPT-2 (pre-LN blocks, LayerNorm with bias, learned absolute
positions, 4x GELU MLP, tied input/output embeddings, N(0, 0.02) init with residual
projections scaled by 1/sqrt(2 * n_layer)). Each of RoPE, RMSNorm, SwiGLU, bias-free
linears, an untied head and QK-norm can be switched on by itself.

Parameter names follow the GPT-2 checkpoint (``transformer.wte``, ``h.0.attn.c_attn``,
``ln_f`` ...) so weight conversion is a renaming, not a reshuffle.

This module knows nothing of training, files or devices.
Shape legend: B batch, T time (new tokens), S keys attended (cached + new),
C n_embd, nh heads, hs head size, V padded vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_choices, opt
from .errors import TinyGPTError


@dataclass
class GPTConfig:
    n_layer: int = opt(6, "number of transformer blocks")
    n_head: int = opt(6, "attention heads per block")
    n_embd: int = opt(384, "width of the residual stream")
    block_size: int = opt(256, "context length in tokens")
    vocab_size: int = opt(50257, "tokenizer vocabulary size (set from the tokenizer when training)")
    dropout: float = opt(0.0, "dropout probability (attention, residual and embeddings)")
    bias: bool = opt(True, "bias in linear layers and LayerNorm (GPT-2: true)")
    norm: str = opt("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    pos_emb: str = opt("learned", "position encoding: learned absolute (GPT-2) or rotary", choices=("learned", "rope"))
    mlp: str = opt("gelu", "feed-forward block: GELU 4x (GPT-2) or SwiGLU", choices=("gelu", "swiglu"))
    mlp_hidden: int | None = opt(None, "feed-forward hidden width (default 4*n_embd; SwiGLU: 8/3*n_embd rounded to 64)")
    tie_embeddings: bool = opt(True, "share the token embedding with the output head (GPT-2: true)")
    qk_norm: bool = opt(False, "RMS-normalise queries and keys per head before attention")
    rope_theta: float = opt(10000.0, "RoPE base frequency")
    norm_eps: float = opt(1e-5, "epsilon of the normalisation layers")
    # Derived, never set directly: the embedding/head row count, padded to a multiple of
    # 64 because matmuls with such shapes are markedly faster on GPUs.
    padded_vocab_size: int = field(init=False)
    hidden_size: int = field(init=False)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise TinyGPTError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"e.g. --n-embd {self.n_embd // self.n_head * self.n_head or self.n_head} or a --n-head that divides it")
        if self.pos_emb == "rope" and self.head_size % 2:
            raise TinyGPTError(f"RoPE needs an even head size, but n_embd/n_head = {self.head_size}; "
                               "change --n-embd or --n-head")
        if not 0.0 <= self.dropout < 1.0:
            raise TinyGPTError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_hidden is not None and self.mlp_hidden <= 0:
            raise TinyGPTError(f"--mlp-hidden must be positive, got {self.mlp_hidden}")
        self.padded_vocab_size = -(-self.vocab_size // 64) * 64
        if self.mlp_hidden is not None:
            self.hidden_size = self.mlp_hidden
        elif self.mlp == "swiglu":
            # 2/3 of 4C keeps the parameter count of the 4x GELU MLP despite the third matrix.
            self.hidden_size = -(-int(8 * self.n_embd / 3) // 64) * 64
        else:
            self.hidden_size = 4 * self.n_embd

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


# n_layer, n_head, n_embd, block_size (+ any other GPTConfig field).
PRESETS: dict[str, dict] = {
    "char-tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "char-small": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "baby": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "baby-llama": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, pos_emb="rope", norm="rmsnorm",
                       mlp="swiglu", bias=False, tie_embeddings=False),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}


def preset(name: str) -> dict:
    """Model settings of a named preset (a dict to lay under user overrides)."""
    if name not in PRESETS:
        raise TinyGPTError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


class KVCache:
    """Preallocated keys/values of every layer for incremental decoding.

    ``k``/``v`` are (n_layer, B, nh, max_len, hs); ``pos`` counts the filled positions.
    The model writes new keys at ``pos`` and advances it once per forward.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        max_len = max_len or config.block_size
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses between steps)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position encoding (rotate-half convention, as in Llama)."""

    def __init__(self, head_size: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
        # Not persistent: derived from the config, so checkpoints stay pure weights.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[pos], self.sin[pos]  # each (T, hs)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) queries or keys by their positions."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_size = config.n_head, config.head_size
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled = True  # see GPT._init_weights
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, need_weights: bool = False):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        start = 0
        if cache is not None:
            start = cache.pos
            cache.k[layer, :B, :, start:start + T] = k
            cache.v[layer, :B, :, start:start + T] = v
            k, v = cache.k[layer, :B, :, :start + T], cache.v[layer, :B, :, :start + T]  # (B, nh, S, hs)

        # Query i (absolute position start+i) may see keys 0..start+i. A lone new query
        # sees everything cached, and an uncached prefix is plain causal: both avoid a mask.
        mask, causal = None, False
        if T > 1 and start == 0:
            causal = True
        elif T > 1:
            S = start + T
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=start)

        att = None
        if need_weights:
            # Explicit path, used only to look at attention: same math as SDPA.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # (B, nh, T, S)
            if causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            att = scores.softmax(dim=-1)
            y = F.dropout(att, self.dropout, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y)), att


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU packs gate and up projections into one matmul: (C) -> (2H).
        width = 2 * config.hidden_size if self.swiglu else config.hidden_size
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, layer=0, need_weights=False):
        a, att = self.attn(self.ln_1(x), rope, cache, layer, need_weights)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPTOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, vocab_size)
    loss: torch.Tensor | None
    attentions: list[torch.Tensor] | None  # per layer (B, nh, T, S), only when asked


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config, config.n_embd),
        ))
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
            self.rotary = None
        else:
            self.rotary = RotaryEmbedding(config.head_size, config.block_size, config.rope_theta)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scaled", False):
                # Each block adds two residual contributions; scaling keeps the stream's
                # variance from growing with depth (GPT-2 paper, section 2.3).
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` drops the position table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention's score matmuls."""
        T = seq_len or self.config.block_size
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, need_weights: bool = False,
                ignore_index: int = -100) -> GPTOutput:
        """idx (B, T) token ids -> logits (B, T, vocab_size) and, given targets (B, T), the mean loss.

        With ``cache`` the tokens continue the cached sequence at position ``cache.pos``.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise TinyGPTError(f"the KV cache holds {cache.max_len} positions but {start + T} were asked for; "
                               "make a larger KVCache (max_len) or crop the input")
        if start + T > self.config.block_size:
            raise TinyGPTError(f"sequence of {start + T} tokens exceeds the context of "
                               f"{self.config.block_size}; crop the input to the last block")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.rotary is not None:
            rope = self.rotary(pos)
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        attentions = [] if need_weights else None
        for layer, block in enumerate(self.transformer.h):
            x, att = block(x, rope, cache, layer, need_weights)
            if need_weights:
                attentions.append(att)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        # The head computes all V padded rows (the fast matmul shape); the padding columns
        # are dropped so that they take no part in the softmax, the loss or sampling.
        logits = self.lm_head(x)[..., :self.config.vocab_size]  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=ignore_index)
        return GPTOutput(logits, loss, attentions)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer for ``idx`` (B, T): a list of (B, nh, T, T)."""
        return self.forward(idx, need_weights=True).attentions
