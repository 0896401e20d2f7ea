"""Mixture of experts: a router sends each token to k of E expert MLPs (Switch, GShard, Mixtral).

An MoE block holds E copies of the model's MLP (each exactly the dense MLP, so one expert
with k=1 *is* the dense block) and a router, a bias-free (C) -> (E) matrix computed in fp32
under any autocast: small logit differences pick different experts, and bf16's 8 bits of
mantissa flip near-ties from step to step. Each token goes to its k most probable experts;
their outputs are mixed by the router's probabilities: for k=1 the raw probability (Switch:
renormalising one probability would make it 1 and cut the router off from the loss), for
k>1 renormalised over the k chosen (Mixtral), so an exported model computes what
transformers' Mixtral does.

Two auxiliary losses keep the router healthy, returned by the model beside the language
model loss and weighted by ``moe_aux_weight`` / ``moe_z_weight``:

- load balancing (Switch Transformer eq. 4): ``E * sum_i f_i * P_i``, where ``f_i`` is the
  fraction of the step's token-to-expert assignments that went to expert i and ``P_i`` the
  mean over tokens of the router's *full* softmax probability of i. Using the top-k
  renormalised probabilities instead (a common slip) makes P depend on the choice itself
  and the loss stops measuring imbalance. It is 1 for a perfectly balanced router, more the
  more the router favours the experts it already uses.
- z-loss (ST-MoE): the mean squared log-sum-exp of the router logits, which keeps them small
  so that the fp32 softmax stays well-conditioned.

Capacity (``moe_capacity``, a factor): during training each expert takes at most
``ceil(factor * N * k / E)`` of a batch's N*k assignments, first choices before second
ones, earlier tokens first; the rest are dropped (the token's residual stream passes the
block unchanged for that expert) and counted. Inference never drops: a token's output must
not depend on which other tokens share its batch (batched rows equal alone, cached decoding
equals the uncached forward).

Dispatch sorts the assignments by expert once (one host sync for the per-expert counts) and
runs each expert on its contiguous slice; every expert is called, even on zero rows, so its
parameters always take part in the graph (DDP expects every parameter to get a gradient);
without gradients (inference) an expert no token chose is skipped.

Shapes: N = B*T tokens, C n_embd, E experts, k experts per token.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import TinyGPTError


def check(config) -> None:
    """The MoE fields of a GPTConfig, with one-line errors (called from its __post_init__)."""
    E, k = config.moe_experts, config.moe_top_k
    if E is None:
        return
    if not isinstance(E, int) or isinstance(E, bool) or E < 1:
        raise TinyGPTError(f"--moe-experts must be a positive whole number of experts, got {E!r}")
    if not isinstance(k, int) or not 1 <= k <= E:
        raise TinyGPTError(f"--moe-top-k must be between 1 and --moe-experts ({E}), got {k!r}")
    if not isinstance(config.moe_every, int) or not 1 <= config.moe_every <= config.n_layer:
        raise TinyGPTError(f"--moe-every must be between 1 (every block) and n_layer ({config.n_layer}), "
                           f"got {config.moe_every!r}")
    if config.moe_capacity is not None and not config.moe_capacity > 0:
        raise TinyGPTError(f"--moe-capacity is a factor of the balanced load (1.0-2.0 is usual), "
                           f"got {config.moe_capacity}")
    for name in ("moe_aux_weight", "moe_z_weight"):
        if not getattr(config, name) >= 0:
            raise TinyGPTError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(config, name)}")
    if config.layer_hidden is not None:
        raise TinyGPTError("structured pruning of mixture-of-experts blocks is not supported; prune a dense model")


def is_moe_layer(config, layer: int) -> bool:
    """Whether block ``layer`` has experts: every ``moe_every``-th block, counting from the
    last of each group (moe_every=2: blocks 1, 3, 5, ... as in GShard's every other layer)."""
    return config.moe_experts is not None and (layer + 1) % config.moe_every == 0


class MoE(nn.Module):
    """E expert MLPs (made by ``make_expert``, the dense block's own class), a router, and an
    optional shared expert that every token goes through (DeepSeek-MoE)."""

    def __init__(self, config, make_expert: Callable[[], nn.Module]):
        super().__init__()
        self.n_experts, self.top_k, self.capacity = config.moe_experts, config.moe_top_k, config.moe_capacity
        self.aux_weight, self.z_weight = config.moe_aux_weight, config.moe_z_weight
        # A plain nn.Linear: the kernels' quantized routes are for the big matrices, and a
        # router that picks experts must not be rounded.
        self.router = nn.Linear(config.n_embd, self.n_experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(self.n_experts))
        self.shared = make_expert() if config.moe_shared_expert else None
        # What the last forward did, read by training's metrics (detached, never saved):
        self.aux_loss: torch.Tensor | None = None  # weighted balance + z loss of the last forward (with its graph)
        self.load: torch.Tensor | None = None      # (E,) assignments per expert, before capacity
        self.dropped: torch.Tensor | None = None   # assignments dropped by capacity (int64 scalar)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (N, C) -> router logits (N, E) in fp32, their softmax (N, E), gates (N, k)
        and expert ids (N, k)."""
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        gates = top_p if self.top_k == 1 else top_p / top_p.sum(dim=-1, keepdim=True)
        return logits, probs, gates, top_i

    def balance_loss(self, probs: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
        """Switch's load-balancing loss from the full softmax ``probs`` (N, E) and the
        assignments per expert ``load`` (E,): 1 when balanced."""
        f = load.float() / max(probs.shape[0] * self.top_k, 1)  # (E,) fraction of the assignments
        return self.n_experts * (f * probs.mean(dim=0)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        N, k = flat.shape[0], self.top_k
        logits, probs, gates, top_i = self.route(flat)
        expert = top_i.reshape(-1)  # (N*k,) assignment j is token j // k's (j % k)-th choice
        load = torch.bincount(expert, minlength=self.n_experts)  # (E,) before capacity
        self.aux_loss = (self.aux_weight * self.balance_loss(probs, load)
                         + self.z_weight * torch.logsumexp(logits, dim=-1).square().mean())
        self.load = load
        token = torch.arange(N, device=x.device).repeat_interleave(k)  # (N*k,)
        gate = gates.reshape(-1)
        if self.capacity is not None and self.training:
            keep = self.within_capacity(top_i, N)
            self.dropped = (~keep).sum()
            expert, token, gate = expert[keep], token[keep], gate[keep]
            load = torch.bincount(expert, minlength=self.n_experts)  # what the experts take
        else:
            self.dropped = torch.zeros((), dtype=torch.long, device=x.device)
        order = torch.argsort(expert, stable=True)  # assignments grouped by expert, token order within
        token, gate = token[order], gate[order]
        counts = load.tolist()  # the one host sync
        parts = flat[token].split(counts)
        # Every expert runs on its rows, when training even on none (see the module docstring);
        # without gradients an idle expert is skipped (int8/int4 kernels refuse zero rows).
        y = torch.cat([e(part) if len(part) or torch.is_grad_enabled() else part
                       for e, part in zip(self.experts, parts)])  # (assignments, C)
        out = torch.zeros_like(flat).index_add_(0, token, (y * gate[:, None]).to(flat.dtype))
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(B, T, C)

    def within_capacity(self, top_i: torch.Tensor, N: int) -> torch.Tensor:
        """(N*k,) whether each assignment fits its expert's capacity, first choices first."""
        E, k = self.n_experts, self.top_k
        capacity = math.ceil(self.capacity * N * k / E)
        by_rank = top_i.t().reshape(-1)  # (k*N,) all first choices, then all second ...
        onehot = F.one_hot(by_rank, E)  # (k*N, E)
        seat = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # place in its expert's queue
        return (seat < capacity).view(k, N).t().reshape(-1)  # back to token-major order


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def aux_loss(blocks: nn.ModuleList) -> torch.Tensor | None:
    """The weighted auxiliary losses of the last forward, summed over the MoE ``blocks``'
    MLPs (the blocks only, not a walk of every module: this runs in every forward)."""
    losses = [b.mlp.aux_loss for b in blocks if isinstance(b.mlp, MoE) and b.mlp.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def expert_params(model: nn.Module) -> tuple[int, int]:
    """(parameters in routed experts, of those the ones a token does not use): total minus
    the second is the active count, what FLOPs per token are made of."""
    total = idle = 0
    for m in moe_layers(model):
        per_expert = sum(p.numel() for p in m.experts[0].parameters())
        total += per_expert * m.n_experts
        idle += per_expert * (m.n_experts - m.top_k)
    return total, idle
