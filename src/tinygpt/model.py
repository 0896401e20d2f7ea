"""The GPT: GPT-2's architecture exactly, plus independent modern switches.

Defaults reproduce GPT-2 (pre-LN blocks, LayerNorm with bias, learned absolute
positions, 4x GELU MLP, tied input/output embeddings, N(0, 0.02) init with residual
projections scaled by 1/sqrt(2 * n_layer)). Each of RoPE, RMSNorm, SwiGLU, bias-free
linears, an untied head and QK-norm can be switched on by itself.

Parameter names follow the GPT-2 checkpoint (``transformer.wte``, ``h.0.attn.c_attn``,
``ln_f`` ...) so weight conversion is a renaming, not a reshuffle.

Positions are explicit: ``forward(idx, input_pos=...)`` takes one position per token,
shared (T,) or per row (B, T), and the attention mask follows from them, so one batch
can hold sequences of different lengths. A negative position marks padding: a pad is
never cached and never attended to. A position that does not continue the one before
it (back to 0) starts a new sequence in the row: packed examples never attend across
their boundary. The KV cache is per layer, slot = position.

A model may carry a soft prompt (:class:`SoftPrompt`, prompt tuning): learned vectors
read before every sequence at positions 0..n-1, so the caller's tokens sit n positions
later and ``config.block_size`` is what is left of the context for them.

This module knows nothing of training, files or devices.
Shape legend: B batch, T time (new tokens), S keys attended (cached + new),
C n_embd, nh heads, hs head size, V vocabulary.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_choices, opt
from .errors import TinyGPTError

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
    mlp: str = opt("gelu", "feed-forward block: GELU 4x (GPT-2) or SwiGLU", choices=("gelu", "swiglu"))
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
    # Derived, never set directly: the embedding/head row count, padded to a multiple of
    # 64 because matmuls with such shapes are markedly faster on GPUs.
    padded_vocab_size: int | None = field(init=False)
    hidden_size: int = field(init=False)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be positive, got {value}")
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
        if not 0.0 <= self.dropout < 1.0:
            raise TinyGPTError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_hidden is not None and self.mlp_hidden <= 0:
            raise TinyGPTError(f"--mlp-hidden must be positive, got {self.mlp_hidden}")
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

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head


# ---------------------------------------------------------------------------- KV cache


class LayerKV:
    """One layer's cached keys and values, (B, n_kv, max_len + 1, hs); slot s holds position s.

    The extra last slot takes the writes of padding tokens, so a batch with pads needs
    no data-dependent indexing; attention never reads it."""

    def __init__(self, shape: tuple[int, ...], device, dtype):
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def write(self, slots: torch.Tensor | int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, nh, T, hs) at ``slots``: a start position shared by all rows, or (B, T)."""
        B, T = k.shape[0], k.shape[2]
        if isinstance(slots, int):
            self.k[:B, :, slots:slots + T] = k
            self.v[:B, :, slots:slots + T] = v
        else:
            rows = torch.arange(B, device=k.device)[:, None]  # (B, 1) with slots (B, T)
            self.k[rows, :, slots] = k.transpose(1, 2)  # indexed view is (B, T, nh, hs)
            self.v[rows, :, slots] = v.transpose(1, 2)


class KVCache:
    """Keys and values of every layer for incremental decoding.

    ``length`` is one past the highest position written: attention reads slots
    [0, length). Without explicit positions, a forward continues every row at ``length``.

    ``rolling`` (RoPE models only): positions may go past ``max_len``; position p lives in
    slot p % max_len, overwriting the oldest, so a one-token step attends the last
    ``max_len`` positions. The keys kept were computed when their own context was longer
    than the window is now: cheap, but not equal to re-reading the window (see
    generation.engine's fast mode).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 rolling: bool = False):
        if rolling and config.pos_emb != "rope":
            raise TinyGPTError("a rolling KV cache needs rotary positions (pos_emb rope): learned position "
                               "embeddings end at block_size")
        self.max_len = max_len or config.block_size
        self.rolling = rolling
        shape = (batch_size, config.kv_heads, self.max_len + 1, config.head_size)
        self.layers = [LayerKV(shape, device, dtype) for _ in range(config.n_layer)]
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0]

    def put_row(self, row: int, source: "KVCache", length: int) -> None:
        """Copy slots [0, length) of ``source``'s first row into row ``row`` (a row re-read by itself)."""
        for mine, theirs in zip(self.layers, source.layers):
            mine.k[row, :, :length] = theirs.k[0, :, :length]
            mine.v[row, :, :length] = theirs.v[0, :, :length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses between steps)."""
        for layer in self.layers:
            layer.k, layer.v = layer.k.index_select(0, index), layer.v.index_select(0, index)


class _Attend(NamedTuple):
    """How one forward's queries attend, worked out once for all layers."""
    slots: torch.Tensor | int | None  # where new keys go in the cache (None: no cache)
    length: int                       # keys attended: S
    end: int                          # one past the highest position
    mask: torch.Tensor | None         # bool, True = may attend: (T, S) or (B, 1, T, S)
    causal: bool                      # plain causal over T == S keys (SDPA's fast path)
    prompt: KVCache | None = None     # a soft prompt's keys and values, read before the S keys


def _after_prompt(how: _Attend, n: int, T: int, device: torch.device) -> _Attend:
    """``how`` with a soft prompt's n keys before its S keys, visible to every query."""
    if how.mask is None and not how.causal:
        return how  # a lone new query already sees every key
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril() if how.mask is None else how.mask
    prompt = torch.ones(*mask.shape[:-1], n, dtype=torch.bool, device=device)
    return how._replace(mask=torch.cat([prompt, mask], dim=-1), causal=False)  # (..., T, n + S)


class SoftPrompt(nn.Module):
    """Prompt tuning (Lester et al. 2021): ``n`` learned vectors in the embedding space that
    the model reads before every sequence, as if they were the embeddings of n tokens at
    positions 0..n-1. Their keys and values do not depend on the input, so inference
    computes them once per weight version (training recomputes them, for the gradients)."""

    def __init__(self, n: int, n_embd: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, n_embd))  # (n, C)
        self._memo: tuple[tuple, KVCache] | None = None

    @property
    def n(self) -> int:
        return self.weight.shape[0]


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


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The explicit attention path: softmax(q k^T / sqrt(hs)) under the mask, (B, nh, T, S).

    The same math SDPA does internally; used only to look at attention."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


class Linear(nn.Linear):
    """``nn.Linear`` with the CPU inference routes of decoding.

    Generating a token multiplies each weight matrix by one vector per row, a read of the
    whole matrix, so decoding speed is the speed of reading weights. Two routes beat
    PyTorch's ``linear`` there (GPT-2 small, 2 AVX-512 cores, measured in the decode loop):

    - One row of half-precision weights: ``linear`` reaches about half the bandwidth of
      the matrix-vector kernel, so it takes ``mv`` (a 15.5 ms step became 12.1 ms of mv).
    - Several rows (batched decoding): oneDNN's prepacked (blocked) weights, the layout
      ``torch.compile``'s CPU freezing uses, run a batch-8 step in 35.5 instead of 59.7 ms
      (fp32) and 19.5 instead of 25 ms (bf16). :func:`packed_weights` makes them; one
      row keeps the plain routes, which were as fast or faster (fp32: 23 vs 27 ms).

    Same parameters, same math; training (gradients on) pays one test per call."""

    _packed: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (weight, its _version, oneDNN copy)

    def pack(self) -> bool:
        """Make oneDNN's blocked copy of the weight for batched CPU inference; False where
        this PyTorch build cannot (the plain routes stay)."""
        w = self.weight
        if self._packed is not None and self._packed[0] is w and self._packed[1] == w._version:
            return True
        try:
            # The batch-size hint picks oneDNN's layout; 8 measured best for 2 to 64 rows.
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8)
        except (AttributeError, RuntimeError):
            return False
        self._packed = (w, w._version, packed)
        return True

    def unpack(self) -> None:
        self._packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == self.weight.dtype:
            if x.numel() == x.shape[-1]:
                if x.dtype in (torch.bfloat16, torch.float16):
                    y = torch.mv(self.weight, x.reshape(-1))
                    if self.bias is not None:
                        y = y + self.bias
                    return y.view(*x.shape[:-1], -1)
            elif self._packed is not None:
                w, version, packed = self._packed
                if w is self.weight and version == w._version:  # a changed weight falls back to linear
                    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@contextmanager
def packed_weights(model: nn.Module) -> Iterator[bool]:
    """Inside, batched CPU inference uses oneDNN-packed copies of every :class:`Linear`'s
    weight (see there). Copies made here are dropped on leaving, as they cost a second
    copy of those weights in memory; a caller that serves many batches (a server) enters
    once around them all, and inner entries reuse its copies. Yields whether packing was
    possible on this build."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    mine = [m for m in linears if m._packed is None]
    try:
        yield all([m.pack() for m in linears])
    finally:
        for m in mine:
            m.unpack()


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
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_size, self.kv_heads = config.n_head, config.head_size, config.kv_heads
        # Queries, keys and values in one matmul: (C) -> (C + 2 * n_kv * hs).
        self.kv_width = config.kv_heads * config.head_size
        self.c_attn = Linear(config.n_embd, config.n_embd + 2 * self.kv_width, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled = True  # see GPT._init_weights
        self.attend = ScaledDotProduct(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                how: _Attend, kv: LayerKV | None, prompt: LayerKV | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([C, self.kv_width, self.kv_width], dim=2)
        # (B, T, C) -> (B, nh, T, hs); keys and values (B, n_kv, T, hs)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            kv.write(how.slots, k, v)
            k, v = kv.k[:B, :, :how.length], kv.v[:B, :, :how.length]  # (B, n_kv, S, hs)
        if prompt is not None:  # the soft prompt's keys come first: (B, n_kv, n + S, hs)
            n = prompt.k.shape[2] - 1  # its spare slot is never read
            k = torch.cat([prompt.k[:, :, :n].to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([prompt.v[:, :, :n].to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        if self.kv_heads != self.n_head:  # each key/value head serves a group of query heads
            k = k.repeat_interleave(self.n_head // self.kv_heads, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.n_head // self.kv_heads, dim=1)
        y = self.attend(q, k, v, how.mask, how.causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y  # eval: not even the call


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.gelu_approximate = "tanh" if config.gelu == "tanh" else "none"  # torch's name for exact
        # SwiGLU packs gate and up projections into one matmul: (C) -> (2H).
        width = 2 * config.hidden_size if self.swiglu else config.hidden_size
        self.c_fc = Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = Linear(config.hidden_size, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.gelu_approximate)
        h = self.c_proj(h)
        return self.dropout(h) if self.training else h


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope, how: _Attend, kv: LayerKV | None, prompt: LayerKV | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, how, kv, prompt)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------- the model


class GPTOutput(NamedTuple):
    logits: torch.Tensor                 # (B, T, vocab_size)
    loss: torch.Tensor | None = None     # mean cross-entropy over the counted targets
    loss_sum: torch.Tensor | None = None  # summed cross-entropy (fp32), for averaging across batches
    n_targets: torch.Tensor | None = None  # how many targets were counted (int64)


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
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config, config.n_embd),
        ))
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
            self.rotary = None
        else:
            self.rotary = RotaryEmbedding(config.head_size, config.block_size, config.rope_theta)
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.prompt: SoftPrompt | None = None  # prompt tuning attaches one (tinygpt.adapters)
        self.tie_weights()
        if not any(p.is_meta for p in self.parameters()):  # a meta model gets its weights assigned later
            self.apply(self._init_weights)

    def tie_weights(self) -> None:
        """Share the embedding with the head (again, after weights were assigned)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Compute the derived buffers (RoPE tables) for real: a model built on the meta
        device and given its weights by assignment still has them on meta."""
        if self.rotary is not None:
            self.rotary.reset_tables(device or self.transformer.wte.weight.device)

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
                input_pos: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> GPTOutput:
        """idx (B, T) token ids -> logits (B, T, vocab_size); with targets (B, T), the loss.

        ``input_pos``: each token's position, (T,) or (B, T); negative marks padding.
        Default: 0..T-1, or with ``cache`` the continuation at ``cache.length``.
        ``loss_mask`` (B, T): only targets where it is true count (as do targets equal
        to IGNORE_INDEX not); the loss is returned as mean, sum and count.
        """
        B, T = idx.shape
        pos, how = self._plan(idx, input_pos, cache)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.prompt is not None:  # the caller's tokens follow the soft prompt's n positions
            how = _after_prompt(how, self.prompt.n, T, idx.device)._replace(prompt=self._prompt_kv(x.dtype))
            pos = pos + self.prompt.n
        x, rope = self._positions(x, pos, how.end + (self.prompt.n if self.prompt is not None else 0))
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, how, cache.layers[i] if cache is not None else None,
                      how.prompt.layers[i] if how.prompt is not None else None)
        if cache is not None:
            cache.length = how.end
        x = self.transformer.ln_f(x)
        # The head computes all padded rows (the fast matmul shape); the padding columns
        # are dropped so that they take no part in the softmax, the loss or sampling.
        logits = self.lm_head(x)[..., :self.config.vocab_size]  # (B, T, vocab_size)
        if targets is None:
            return GPTOutput(logits)
        if loss_mask is not None:
            targets = targets.masked_fill(~loss_mask.bool(), IGNORE_INDEX)
        targets = targets.reshape(-1)
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets,
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        n_targets = (targets != IGNORE_INDEX).sum()
        return GPTOutput(logits, loss_sum / n_targets, loss_sum, n_targets)

    def _positions(self, x: torch.Tensor, pos: torch.Tensor, end: int
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Add learned position embeddings to x (B, T, C), or make RoPE's cos/sin; then
        embedding dropout. ``end`` is one past the highest position."""
        rope = None
        if self.rotary is not None:
            rope = self.rotary(pos, end > self.rotary.max_len)
        else:
            x = x + self.transformer.wpe(pos)
        return (self.transformer.drop(x) if self.training else x), rope

    def _prompt_kv(self, dtype: torch.dtype) -> KVCache:
        """Every layer's keys and values of the soft prompt, (1, n_kv, n, hs) each: the prompt
        read alone at positions 0..n-1 (nothing before it to attend)."""
        prompt = self.prompt
        w = prompt.weight
        autocast_on = torch.is_autocast_enabled(w.device.type)
        key = (w._version, w.data_ptr(), dtype, autocast_on and torch.get_autocast_dtype(w.device.type))
        memo = not torch.is_grad_enabled() and not self.training  # dropout and gradients: compute afresh
        if memo and prompt._memo is not None and prompt._memo[0] == key:
            return prompt._memo[1]
        n = prompt.n
        cache = KVCache(self.config, 1, n, device=w.device, dtype=dtype)
        x, rope = self._positions(w[None].to(dtype), torch.arange(n, device=w.device), n)  # (1, n, C)
        how = _Attend(0, n, n, None, n > 1)
        for block, kv in zip(self.transformer.h, cache.layers):
            x = block(x, rope, how, kv)
        prompt._memo = (key, cache) if memo else None
        return cache

    def _plan(self, idx: torch.Tensor, input_pos: torch.Tensor | None,
              cache: KVCache | None) -> tuple[torch.Tensor, _Attend]:
        """Positions for the embeddings and how attention reads, from input_pos and the cache."""
        B, T = idx.shape
        if cache is not None and B > cache.batch_size:
            raise TinyGPTError(f"the KV cache holds {cache.batch_size} rows but the batch has {B}; make a larger KVCache")
        if input_pos is None:
            # One position counter for all rows: the fast paths, no mask tensor at all.
            start = cache.length if cache is not None else 0
            end = start + T
            self._check_length(end, T, cache)
            pos = torch.arange(start, end, device=idx.device)
            if cache is None or start == 0:
                how = _Attend(None if cache is None else 0, end, end, None, T > 1)
            elif T == 1:  # a lone new query sees everything cached (rolling: every slot, once full)
                how = _Attend(start % cache.max_len, min(end, cache.max_len), end, None, False)
            else:  # query i (position start+i) sees keys 0..start+i
                mask = torch.ones(T, end, dtype=torch.bool, device=idx.device).tril(diagonal=start)
                how = _Attend(start, end, end, mask, False)
            return pos, how

        input_pos = input_pos.to(device=idx.device, dtype=torch.long)
        if input_pos.shape not in ((T,), (B, T)):
            raise TinyGPTError(f"input_pos has shape {tuple(input_pos.shape)}; it must be ({T},) or ({B}, {T}) "
                               "to match the tokens")
        input_pos = input_pos.expand(B, T)
        pad = input_pos < 0
        highest = int(input_pos.max()) if T else -1  # one sync: bounds and the span to attend
        end = max(highest + 1, cache.length if cache is not None else 0)
        self._check_length(highest + 1, T, cache)
        pos = input_pos.clamp(min=0)
        if cache is None:
            # Keys are this batch's tokens: causal by index, never a pad, and of the same
            # sequence: a position that does not continue the one before it begins a new one
            # (a packed example), numbered by counting those starts along the row.
            starts = torch.ones(B, T, dtype=torch.bool, device=idx.device)
            starts[:, 1:] = input_pos[:, 1:] != input_pos[:, :-1] + 1
            seq = starts.cumsum(dim=1)  # (B, T)
            same = seq[:, :, None] == seq[:, None, :]
            mask = same & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril() & ~pad[:, None, :]  # (B, T, T)
            slots, span, end = None, T, T
        else:
            # Keys are cache slots = positions: a query at position p sees slots 0..p (so,
            # past the end of a rolling cache, every slot).
            span = min(end, cache.max_len)
            mask = torch.arange(span, device=idx.device) <= input_pos[..., None]  # (B, T, S)
            slots = (input_pos % cache.max_len).masked_fill(pad, cache.max_len)  # pads write to the spare slot
        # A pad query may attend anything: it must not be a row of -inf (NaN softmax),
        # and what it computes goes nowhere.
        mask = mask | pad[..., None]
        return pos, _Attend(slots, span, end, mask.unsqueeze(1), False)  # (B, 1, T, S)

    def _check_length(self, end: int, T: int, cache: KVCache | None) -> None:
        """Positions up to ``end`` must fit the cache and the context; a rolling cache takes
        any position one token (T = 1) at a time."""
        if cache is not None and cache.rolling and (T == 1 or end <= cache.max_len):
            return
        if cache is not None and end > cache.max_len:
            raise TinyGPTError(f"the KV cache holds {cache.max_len} positions but {end} were asked for; "
                               "make a larger KVCache (max_len) or crop the input")
        if end > self.config.block_size:
            raise TinyGPTError(f"sequence of {end} tokens exceeds the context of {self.config.block_size}; "
                               "crop the input to the last block")

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, **forward_kwargs) -> list[torch.Tensor]:
        """Attention weights of every layer for ``idx`` (B, T): a list of (B, nh, T, S)."""
        with record_attention(self) as maps:
            self.forward(idx, **forward_kwargs)
        return maps


@contextmanager
def record_attention(model: GPT) -> Iterator[list[torch.Tensor]]:
    """Collect each layer's attention weights (B, nh, T, S) during the forwards inside
    (a soft prompt's keys left out).

    A forward hook on every layer's SDPA module recomputes the weights from its inputs
    through :func:`attention_probs`; the forward itself is unchanged."""
    maps: list[torch.Tensor] = []
    n = 0
    if model.prompt is not None:
        # A soft prompt's keys and values, computed now (and memoized), so the hooks see only
        # the input's forward; its n keys are then left out of the maps, which stay (T, S)
        # over the input's own tokens (rows then sum to what the input took, not 1).
        with torch.no_grad():
            model._prompt_kv(model.transformer.wte.weight.dtype)
        n = model.prompt.n

    def hook(module, args, output):
        q, k, _, mask, causal = args
        maps.append(attention_probs(q, k, mask, causal)[..., n:].detach())

    handles = [block.attn.attend.register_forward_hook(hook) for block in model.transformer.h]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
