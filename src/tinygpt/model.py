"""The GPT: GPT-2's architecture exactly, plus independent modern switches.

Defaults reproduce GPT-2 (pre-LN blocks, LayerNorm with bias, learned absolute positions,
4x GELU MLP, tied embeddings, N(0, 0.02) init with residual projections scaled by
1/sqrt(2 * n_layer)). RoPE, RMSNorm, SwiGLU, bias-free linears, an untied head, QK-norm and
grouped-query attention can each be switched on by itself, as can modded-nanogpt's ReLU-squared
MLP, zero-initialised projections, logit soft-capping, U-net skips and value embeddings, and
sparse attention (local, strided or BigBird masks in some or all layers: :mod:`tinygpt.patterns`).
Parameter names follow the GPT-2 checkpoint (``transformer.wte``, ``h.0.attn.c_attn``, ``ln_f``
...): conversion is a renaming.

The forward contract: ``model(idx, targets, input_pos=, loss_mask=, cache=)``. Each token
has a position, shared (T,) or per row (B, T); negative marks padding (never cached or
attended), and a position that does not continue the one before starts a new sequence.
:mod:`tinygpt.kvcache` turns positions and the cache into masks and slots;
:mod:`tinygpt.kernels` holds the linear layers' faster inference routes. This module
knows nothing of training, files, devices or decoding speed.

Shapes: B batch, T new tokens, S keys attended, C n_embd, nh heads, hs head size, V vocabulary.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kvcache, moe
from .config import check_choices, opt
from .errors import TinyGPTError
from .kernels import Linear, quantized_weights
from .kvcache import KVCache, LayerKV, Plan
from .patterns import check_options, layer_patterns

IGNORE_INDEX = -100  # a target equal to this takes no part in the loss (as in PyTorch and HF)


@dataclass
class GPTConfig:
    n_layer: int = opt(6, "number of transformer blocks")
    n_head: int = opt(6, "attention heads per block")
    n_kv_head: int | None = opt(None, "key/value heads, shared by groups of query heads (grouped-query "
                                      "attention, as in Llama 2/3); default n_head")
    n_embd: int = opt(384, "width of the residual stream")
    block_size: int = opt(256, "context length in tokens")
    vocab_size: int | None = opt(None, "vocabulary size (taken from the tokenizer when the model is built)")
    dropout: float = opt(0.0, "dropout probability (attention, residual and embeddings)")
    bias: bool = opt(True, "bias in linear layers and LayerNorm (GPT-2: true)")
    norm: str = opt("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    pos_emb: str = opt("learned", "position encoding: learned absolute (GPT-2) or rotary", choices=("learned", "rope"))
    mlp: str = opt("gelu", "feed-forward block: GELU 4x (GPT-2), SwiGLU (Llama) or ReLU-squared 4x (modded-nanogpt)",
                   choices=("gelu", "swiglu", "relu2"))
    # Exact GELU is the default for new models: PyTorch's CPU kernel for the tanh form took
    # 2.3 vs 0.9 ms forward on char-nano's (32, 128, 512) activations (2-core Xeon), and the
    # two forms differ by at most 4.7e-4. GPT-2 checkpoints keep the tanh form they were trained with.
    gelu: str = opt("exact", "GELU form of the gelu MLP: exact (erf) or tanh (GPT-2's gelu_new)",
                    choices=("exact", "tanh"))
    mlp_hidden: int | None = opt(None, "feed-forward hidden width (default 4*n_embd; SwiGLU: 8/3*n_embd rounded to 64)")
    tie_embeddings: bool = opt(True, "share the token embedding with the output head (GPT-2: true)")
    qk_norm: bool = opt(False, "RMS-normalise queries and keys per head before attention")
    rope_theta: float = opt(10000.0, "RoPE base frequency")
    norm_eps: float = opt(1e-5, "epsilon of the normalisation layers")
    # modded-nanogpt's architecture changes, each off by default (GPT-2 has none of them).
    init_proj: str = opt("scaled", "initial residual projections: N(0, 0.02/sqrt(2*n_layer)) (GPT-2) or zero, "
                                   "so that each block starts as the identity (modded-nanogpt)",
                         choices=("scaled", "zero"))
    logit_softcap: float | None = opt(None, "squash the logits smoothly into (-c, c) with c*tanh(logits/c) "
                                            "(Gemma 2, modded-nanogpt: 15-30); default none")
    unet_skips: bool = opt(False, "add each of the first half's block outputs to the input of its mirror block in "
                                  "the second half, with a learned weight (modded-nanogpt's U-net skips)")
    value_embeds: bool = opt(False, "a token embedding per block added to its attention values "
                                    "(modded-nanogpt's value embeddings)")
    # Sparse attention (tinygpt.patterns says what each pattern sees); full by default, as GPT-2.
    attention: str = opt("full", "attention pattern: full (causal), local (sliding window), strided (window plus "
                                 "every W-th earlier token) or bigbird (window, global first block, random blocks)",
                         choices=("full", "local", "strided", "bigbird"))
    window: int | None = opt(None, "window W of a sparse --attention (local: the last W positions; "
                                   "bigbird: also the block size)")
    attention_pattern: str | None = opt(None, "which layers are sparse: S (--attention) and L (full) letters repeated "
                                              "over the layers, e.g. SSSL; default every layer --attention")
    # Mixture of experts (tinygpt.moe): E copies of the MLP and a router in every moe_every-th block.
    moe_experts: int | None = opt(None, "experts in each mixture-of-experts block (default none: dense MLPs)")
    moe_top_k: int = opt(2, "experts each token goes to (1: Switch, 2: Mixtral)")
    moe_every: int = opt(1, "experts in every N-th block, dense MLPs between (1: every block; 2: every other)")
    moe_shared_expert: bool = opt(False, "one more expert that every token goes through (DeepSeek-MoE)")
    moe_capacity: float | None = opt(None, "training only: an expert takes at most this factor of the balanced "
                                           "load, the rest is dropped and counted (1.25 is usual); default no limit")
    moe_aux_weight: float = opt(0.01, "weight of the router's load-balancing loss (Switch: 0.01)")
    moe_z_weight: float = opt(0.001, "weight of the router's z-loss, which keeps its logits small (ST-MoE: 0.001)")
    # Set by structured pruning (tinygpt prune --structured), not a training flag: blocks differ.
    layer_heads: list[int] | None = opt(None, "query heads of each block (a multiple of n_head/n_kv_head: heads go "
                                              "with their key/value head); default n_head in every block")
    layer_hidden: list[int] | None = opt(None, "feed-forward hidden width of each block; default hidden_size")
    # Derived, never set directly: the embedding/head row count, padded to a multiple of
    # 64 because matmuls with such shapes are markedly faster on GPUs.
    padded_vocab_size: int | None = field(init=False)
    hidden_size: int = field(init=False)

    def __post_init__(self) -> None:
        check_choices(self)
        check_options(self.attention, self.window, self.attention_pattern)
        for name in ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "vocab_size", "mlp_hidden"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise TinyGPTError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if self.n_embd % self.n_head:
            raise TinyGPTError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"e.g. --n-embd {self.n_embd // self.n_head * self.n_head or self.n_head} or a --n-head that divides it")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise TinyGPTError(f"--n-kv-head ({self.n_kv_head}) must divide --n-head ({self.n_head}); "
                               "each key/value head serves the same number of query heads")
        if self.pos_emb == "rope" and self.head_size % 2:
            raise TinyGPTError(f"RoPE needs an even head size, but n_embd/n_head = {self.head_size}; "
                               "change --n-embd or --n-head")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise TinyGPTError(f"--logit-softcap must be positive (15-30 is usual), got {self.logit_softcap}")
        if not 0.0 <= self.dropout < 1.0:
            raise TinyGPTError(f"--dropout must be in [0, 1), got {self.dropout}")
        group = self.n_head // self.kv_heads
        for name, top, step in (("layer_heads", self.n_head, group), ("layer_hidden", None, 1)):
            widths = getattr(self, name)
            if widths is not None and (len(widths) != self.n_layer or any(
                    not isinstance(w, int) or w <= 0 or w % step or (top and w > top) for w in widths)):
                raise TinyGPTError(f"{name} must give each of the {self.n_layer} blocks a positive width (heads: a "
                                   f"multiple of {group}, at most {self.n_head}), got {widths!r}")
        moe.check(self)
        self.padded_vocab_size = None if self.vocab_size is None else -(-self.vocab_size // 64) * 64
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

    def stored_params(self) -> int:
        """Parameters a file of this shape holds: one- and two-layer models on the meta device say."""
        try:
            with torch.device("meta"):  # the U-net's skip weights (one per pair of blocks) are added below
                if self.layer_heads or self.layer_hidden or self.moe_every > 1:  # blocks differ: count them all
                    n = GPT(replace(self, unet_skips=False)).num_params()
                else:
                    one, two = (GPT(replace(self, n_layer=n, unet_skips=False)).num_params() for n in (1, 2))
                    n = one + (self.n_layer - 1) * (two - one)
        except RuntimeError as e:  # "Storage size calculation overflowed": no file can hold it
            raise TinyGPTError(f"a model {self.n_embd} wide with {self.vocab_size} tokens is too large to exist") from e
        return (n + (self.n_layer // 2 if self.unet_skips else 0)
                - (self.padded_vocab_size - self.vocab_size) * self.n_embd * (1 if self.tie_embeddings else 2))

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def heads(self, layer: int) -> tuple[int, int]:
        """(query heads, key/value heads) of block ``layer``: fewer where structured pruning removed some."""
        nh = self.layer_heads[layer] if self.layer_heads else self.n_head
        return nh, nh * self.kv_heads // self.n_head

    def hidden(self, layer: int) -> int:
        return self.layer_hidden[layer] if self.layer_hidden else self.hidden_size


# ---------------------------------------------------------------------------- layers


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position encoding (rotate-half convention, as in Llama)."""

    def __init__(self, head_size: int, max_len: int, theta: float):
        super().__init__()
        self.head_size, self.max_len, self.theta = head_size, max_len, theta
        self.reset_tables()

    def reset_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the tables; a model built on the meta device calls this once real."""
        angles = self._angles(torch.arange(self.max_len, dtype=torch.float32, device=device))  # (T, hs)
        # Not persistent: derived from the config, so checkpoints stay pure weights.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def _angles(self, pos: torch.Tensor) -> torch.Tensor:
        """Rotation angles (..., hs) of positions ``pos`` (...), in ``pos``'s float dtype."""
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_size, 2, dtype=pos.dtype,
                                                      device=pos.device) / self.head_size))
        angles = pos[..., None] * inv_freq  # (..., hs/2)
        return torch.cat([angles, angles], dim=-1)

    def forward(self, pos: torch.Tensor, past_table: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions ``pos`` (T,) or (B, T); ``past_table``: some lie beyond
        the tables (a rolling cache), so compute them (in float64: large angles)."""
        if past_table:
            angles = self._angles(pos.double())
            cos, sin = angles.cos().to(self.cos.dtype), angles.sin().to(self.sin.dtype)
        else:
            cos, sin = self.cos[pos], self.sin[pos]  # (T, hs) or (B, T, hs)
        if pos.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs): broadcast over heads
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) queries or keys by their positions."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


class ScaledDotProduct(nn.Module):
    """SDPA (flash attention where available) as a module, so that forward hooks can see
    its inputs: :func:`record_attention` recomputes the weights from them."""

    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = dropout

    def forward(self, q, k, v, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              dropout_p=self.dropout if self.training else 0.0)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        (self.n_head, self.kv_heads), self.head_size = config.heads(layer), config.head_size
        # Queries, keys and values in one matmul: (C) -> (nh * hs + 2 * n_kv * hs); nh * hs = C unless pruned.
        self.q_width, self.kv_width = self.n_head * self.head_size, self.kv_heads * self.head_size
        self.c_attn = Linear(config.n_embd, self.q_width + 2 * self.kv_width, bias=config.bias)
        self.c_proj = Linear(self.q_width, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled = True  # see GPT._init_weights
        self.attend = ScaledDotProduct(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, plan: Plan,
                kv: LayerKV | None, ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([self.q_width, self.kv_width, self.kv_width], dim=2)
        if ve is not None:  # the block's value embedding of each token: (B, T, n_kv * hs)
            v = v + ve
        # (B, T, C) -> (B, nh, T, hs); keys and values (B, n_kv, T, hs)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:  # the cache stores the new keys and hands back all to attend: (B, n_kv, S, hs)
            k, v = kv.update(plan, k, v)
        if self.kv_heads != self.n_head:  # each key/value head serves a group of query heads
            k = k.repeat_interleave(self.n_head // self.kv_heads, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.n_head // self.kv_heads, dim=1)
        y = self.attend(q, k, v, plan.mask, plan.causal)
        y = y.transpose(1, 2).contiguous().view(B, T, self.q_width)  # (B, nh, T, hs) -> (B, T, nh * hs)
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y  # eval: not even the call


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        hidden = config.hidden(layer)
        self.swiglu, self.relu2 = config.mlp == "swiglu", config.mlp == "relu2"
        self.gelu_approximate = "tanh" if config.gelu == "tanh" else "none"  # torch's name for exact
        # SwiGLU packs gate and up projections into one matmul: (C) -> (2H).
        self.c_fc = Linear(config.n_embd, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.relu2:
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate=self.gelu_approximate)
        h = self.c_proj(h)
        return self.dropout(h) if self.training else h


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        moe_here = moe.is_moe_layer(config, layer)  # a mixture of copies of the MLP, or the MLP
        self.mlp = moe.MoE(config, lambda: MLP(config, layer)) if moe_here else MLP(config, layer)

    def forward(self, x, rope, plan: Plan, kv: LayerKV | None, ve: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, plan, kv, ve)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------- the model


class GPTOutput(NamedTuple):
    logits: torch.Tensor                 # (B, T, vocab_size)
    loss: torch.Tensor | None = None     # mean cross-entropy over the counted targets
    loss_sum: torch.Tensor | None = None  # summed cross-entropy (fp32), for averaging across batches
    n_targets: torch.Tensor | None = None  # how many targets were counted (int64)
    aux_loss: torch.Tensor | None = None   # mixture of experts: the routers' weighted balance + z losses


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise TinyGPTError("GPTConfig.vocab_size is not set; build the model with the tokenizer's size, "
                               "e.g. dataclasses.replace(config, vocab_size=tokenizer.vocab_size)")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=make_norm(config, config.n_embd),
        ))
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
            self.rotary = None
        else:
            self.rotary = RotaryEmbedding(config.head_size, config.block_size, config.rope_theta)
        if config.value_embeds:  # (V) -> (n_kv * hs) per block; top-level, so embeddings stay on AdamW under Muon.
            # Not padded: a lookup gains nothing from a round row count.
            self.value_embeds = nn.ModuleList(nn.Embedding(config.vocab_size, config.heads(i)[1] * config.head_size)
                                              for i in range(config.n_layer))
        else:
            self.value_embeds = None
        # Block i < n_layer//2 hands its output to block n_layer-1-i, which adds it, weighted, to its input.
        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2)) if config.unet_skips else None
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.tie_weights()
        if not any(p.is_meta for p in self.parameters()):  # a meta model gets its weights assigned later
            self.apply(self._init_weights)

    def tie_weights(self) -> None:
        """Share the embedding with the head (again, after weights were assigned)."""
        if self.config.tie_embeddings and self.lm_head.quant is None:  # a quantized head is its own copy
            self.lm_head.weight = self.transformer.wte.weight

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Compute the derived buffers (RoPE tables) for real: a model built on the meta
        device and given its weights by assignment still has them on meta."""
        if self.rotary is not None:
            self.rotary.reset_tables(device or self.transformer.wte.weight.device)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scaled", False) and self.config.init_proj == "zero":
                std = 0.0  # each block's residual contribution starts at zero: the network begins as the embeddings
            elif getattr(module, "residual_scaled", False):
                # Each block adds two residual contributions; scaling keeps the stream's
                # variance from growing with depth (GPT-2 paper, section 2.3).
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def n_positions(self) -> int:
        """Positions the position tables cover (a prefix in the cache takes the first of them)."""
        return self.rotary.max_len if self.rotary is not None else self.transformer.wpe.num_embeddings

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once, a quantized layer's weights as many as it holds);
        ``non_embedding`` drops the lookup-only tables (positions, value embeddings)."""
        n = sum(p.numel() for p in self.parameters()) + quantized_weights(self)
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and self.value_embeds is not None:
            n -= sum(p.numel() for p in self.value_embeds.parameters())
        return n

    def active_params(self, non_embedding: bool = False) -> int:
        """Parameters one token computes with: experts it is not routed to left out."""
        return self.num_params(non_embedding) - moe.expert_params(self)[1]

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N of the active parameters plus
        attention's score matmuls."""
        T, c = seq_len or self.config.block_size, self.config
        attended = sum(c.heads(i)[0] for i in range(c.n_layer)) * c.head_size  # n_layer * C unless pruned
        return 6 * self.active_params(non_embedding=True) + 12 * attended * T

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                input_pos: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, last: bool = False) -> GPTOutput:
        """idx (B, T) token ids -> logits (B, T, vocab_size); with targets (B, T), the loss.
        (idx may also be (B, T, C) input embeddings, as a soft prompt's vectors are.)

        ``input_pos``: each token's position, (T,) or (B, T); negative marks padding.
        Default: 0..T-1, or with ``cache`` the continuation at ``cache.length``.
        ``loss_mask`` (B, T): only targets where it is true count (as do targets equal
        to IGNORE_INDEX not); the loss is returned as mean, sum and count.
        ``last``: the last position's logits (B, 1, vocab_size) only, what decoding reads.
        """
        if last and targets is not None:
            raise TinyGPTError("last=True gives one position's logits; a loss needs them all")
        B, T = idx.shape[:2]
        pos, plan = kvcache.plan((B, T), idx.device, input_pos, cache, self.n_positions, layer_patterns(self.config))
        x = idx if idx.is_floating_point() else self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.rotary is not None:
            rope = self.rotary(pos, plan.end > self.rotary.max_len)
        else:
            x = x + self.transformer.wpe(pos)
        if self.training:
            x = self.transformer.drop(x)
        if self.value_embeds is not None and idx.is_floating_point():
            raise TinyGPTError("a model with value embeddings needs token ids, not input vectors (soft prompts); "
                               "train prompts on a model without --value-embeds")
        n, half = len(self.transformer.h), len(self.skip_weights) if self.skip_weights is not None else 0
        skips = []  # the outputs of blocks 0 .. half-1, (B, T, C) each
        for i, block in enumerate(self.transformer.h):
            if i >= n - half:  # block i mirrors block n-1-i of the first half
                x = x + self.skip_weights[n - 1 - i] * skips[n - 1 - i]
            ve = self.value_embeds[i](idx) if self.value_embeds is not None else None  # (B, T, n_kv * hs)
            x = block(x, rope, plan.layer(i), cache.layers[i] if cache is not None else None, ve)
            if i < half:
                skips.append(x)
        if last:
            x = x[:, -1:]  # (B, 1, C)
        x = self.transformer.ln_f(x)
        # The head computes all padded rows (the fast matmul shape); the padding columns
        # are dropped so that they take no part in the softmax, the loss or sampling.
        logits = self.lm_head(x)[..., :self.config.vocab_size]  # (B, T, vocab_size)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        aux = moe.aux_loss(self.transformer.h) if self.config.moe_experts else None
        if targets is None:
            return GPTOutput(logits, aux_loss=aux)
        if loss_mask is not None:
            targets = targets.masked_fill(~loss_mask.bool(), IGNORE_INDEX)
        targets = targets.reshape(-1)
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets,
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        n_targets = (targets != IGNORE_INDEX).sum()
        return GPTOutput(logits, loss_sum / n_targets, loss_sum, n_targets, aux)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, **forward_kwargs) -> list[torch.Tensor]:
        """Attention weights of every layer for ``idx`` (B, T): a list of (B, nh, T, S)."""
        with record_attention(self) as maps:
            self(idx, **forward_kwargs)
        return maps


# ---------------------------------------------------------------------------- looking inside


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The explicit attention path: softmax(q k^T / sqrt(hs)) under the mask, (B, nh, T, S).

    The same math SDPA does internally; used only to look at attention."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


@contextmanager
def record_attention(model: GPT) -> Iterator[list[torch.Tensor]]:
    """Collect each layer's attention weights (B, nh, T, S) during the forwards inside, over
    the input's own keys (a soft prompt's prefix left out: rows then sum to less than 1).

    Hooks on every layer's SDPA module recompute the weights from its inputs; hooks on the
    model record only inside its forwards, after the pre-hooks that run first (a soft
    prompt's keys, computed there, are not recorded) and see the cache's prefix."""
    maps: list[torch.Tensor] = []
    recording = {"on": False, "skip": 0}

    def start(module, args, kwargs):
        cache = kwargs.get("cache")
        recording.update(on=True, skip=cache.prefix_length if cache is not None else 0)

    def stop(module, args, kwargs, output):
        recording["on"] = False

    def hook(module, args, output):
        if recording["on"]:
            q, k, _, mask, causal = args
            maps.append(attention_probs(q, k, mask, causal)[..., recording["skip"]:].detach())

    handles = [model.register_forward_pre_hook(start, with_kwargs=True),
               model.register_forward_hook(stop, with_kwargs=True, always_call=True)]
    handles += [block.attn.attend.register_forward_hook(hook) for block in model.transformer.h]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
