"""Pipeline parallelism (GPipe / 1F1B), on ``torch.distributed.pipelining``.

The blocks are split by layer count into ``pp`` stages, one per rank: the first stage also
embeds the tokens, the last also holds the final norm and the head and computes the loss.
A step's micro-batches (the run's gradient accumulation) flow through the stages: rank r
sends each micro-batch's activations (B, T, C) to rank r+1 and receives their gradient
back. PyTorch's schedules decide the order:

- GPipe: every micro-batch forward, then every one backward. Simple, but each stage keeps
  all micro-batches' activations until the backward starts.
- 1F1B: after a short warm-up each stage alternates one forward with one backward, so it
  keeps at most ``pp`` micro-batches' activations whatever their number.

Both leave each rank idle for part of the step (the "bubble": the first stage waits for
the last to start the backward, the last waits for the first to fill the pipe): a
fraction (pp - 1) / (m + pp - 1) of the step with m micro-batches, which more
micro-batches shrink.

Each rank builds the whole model from the run's seed (so every stage starts from the
weights one process would), keeps its own blocks and drops the others. A tied embedding
and head live on the first and the last stage: their two gradients are added up after the
backward, so both copies take the same step (Megatron's way). A checkpoint is the
one-process file: rank 0 gathers each stage's weights and optimizer state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .. import kvcache, patterns
from ..errors import TinyGPTError
from ..model import GPT, IGNORE_INDEX
from .optim import adamw_groups


def stage_blocks(n_layer: int, pp: int) -> list[range]:
    """The blocks of each of ``pp`` stages: ``n_layer`` split as evenly as it goes, the
    earlier stages taking one more (the last stage also runs the head)."""
    base, extra = divmod(n_layer, pp)
    starts = [r * base + min(r, extra) for r in range(pp + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(pp)]


def bubble(pp: int, micro_batches: int) -> float:
    """The fraction of a step each stage idles under GPipe or 1F1B (equal work per stage)."""
    return (pp - 1) / (micro_batches + pp - 1)


class Stage(nn.Module):
    """One rank's part of the GPT: its blocks, with the embeddings before them on the first
    stage and the final norm and head after them on the last. The same math as
    ``GPT.forward`` for a training batch (no cache, positions 0..T-1)."""

    def __init__(self, model: GPT, blocks: range, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.blocks = nn.ModuleList(model.transformer.h[i] for i in blocks)
        self.layers = blocks  # their indices in the whole model (a sparse layer's pattern)
        self.wte = model.transformer.wte if first else None
        self.wpe = model.transformer.wpe if first and model.rotary is None else None
        self.drop = model.transformer.drop
        self.ln_f = model.transformer.ln_f if last else None
        self.lm_head = model.lm_head if last else None
        self.rotary = model.rotary  # sin/cos tables, no weights: every stage rotates its own queries
        self.config, self.n_positions = model.config, model.n_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """First stage: token ids (B, T); later ones: the residual stream (B, T, C). Returns
        the residual stream, or on the last stage the logits (B, T, vocab_size)."""
        B, T = x.shape[:2]
        pos, plan = kvcache.plan((B, T), x.device, None, None, self.n_positions, patterns.layer_patterns(self.config))
        rope = self.rotary(pos, plan.end > self.rotary.max_len) if self.rotary is not None else None
        if self.first:
            x = self.wte(x)  # (B, T, C)
            if self.wpe is not None:
                x = x + self.wpe(pos)
            if self.training:
                x = self.drop(x)
        for i, block in zip(self.layers, self.blocks):
            x = block(x, rope, plan.layer(i), None, None)
        if not self.last:
            return x
        logits = self.lm_head(self.ln_f(x))[..., :self.config.vocab_size]  # (B, T, vocab_size)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits


def check_pipeline(model: GPT, pp: int) -> None:
    c = model.config
    if pp > c.n_layer:
        raise TinyGPTError(f"--parallel pp={pp} needs at least {pp} blocks to share out; the model has {c.n_layer}")
    if model.skip_weights is not None or model.value_embeds is not None:
        raise TinyGPTError("pipeline parallel does not split a model with U-Net skips or value embeddings (they join "
                           "blocks of different stages); train it with --parallel tp or dp")


class Pipeline:
    """This rank's stage of ``model`` and the schedule that runs a step's micro-batches
    through every stage. Built without communicating (rank 0 builds its trainer before the
    other ranks know where the run is); the schedule's first step exchanges the shapes."""

    def __init__(self, model: GPT, pp: int, rank: int, micro_batches: int, schedule: str, device: torch.device):
        check_pipeline(model, pp)
        self.pp, self.rank, self.micro_batches, self.kind, self.device = pp, rank, micro_batches, schedule, device
        self.first, self.last = rank == 0, rank == pp - 1
        self.whole_params = model.num_params()  # before the other stages' blocks are dropped
        self.groups = adamw_groups(model)  # the one-process optimizer groups a checkpoint is saved in
        names = {id(p): n for n, p in model.named_parameters()}
        blocks = stage_blocks(model.config.n_layer, pp)
        self.stage = Stage(model, blocks[rank], self.first, self.last)
        # The stage's parameters by their names in the whole model (the tied head under the embedding's).
        self.owned = {names[id(p)]: p for p in self.stage.parameters()}
        self.tied = model.lm_head.weight is model.transformer.wte.weight
        for i in range(model.config.n_layer):  # the other stages' blocks are theirs alone
            if i not in blocks[rank]:
                model.transformer.h[i] = nn.Identity()
        self._schedule = None
        self._n_targets = torch.ones(())

    @property
    def schedule(self):
        if self._schedule is None:
            from torch.distributed.pipelining import (
                PipelineStage,
                Schedule1F1B,
                ScheduleGPipe,
            )

            stage = PipelineStage(self.stage, self.rank, self.pp, self.device)
            kind = Schedule1F1B if self.kind == "1f1b" else ScheduleGPipe
            # The loss is each micro-batch's summed cross-entropy over the step's target count,
            # as the one-process loop computes it: no further scaling of the gradients.
            self._schedule = kind(stage, self.micro_batches, loss_fn=self._loss, scale_grads=False)
        return self._schedule

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum") / self._n_targets

    def step(self, micro: list, n_targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the step's micro-batches through every stage; the step's
        loss (the same on every rank). Leaves this stage's gradients in place."""
        if any(b.input_pos is not None for b in micro):
            raise TinyGPTError("pipeline parallel trains on plain windows; packed documents (positions per token) "
                               "are not sent between stages yet: use --parallel tp or dp")
        self._n_targets = n_targets
        x = torch.cat([b.x for b in micro]).to(self.device)  # (m*B, T): the schedule splits it back
        y = torch.cat([b.y.masked_fill(~b.loss_mask.bool(), IGNORE_INDEX) if b.loss_mask is not None else b.y
                       for b in micro]).to(self.device)
        losses: list[torch.Tensor] = []
        if self.first:
            self.schedule.step(x, target=y if self.last else None, losses=losses)
        else:
            self.schedule.step(target=y if self.last else None, losses=losses)
        total = torch.stack(losses).sum().detach() if self.last else torch.zeros((), device=self.device)
        dist.all_reduce(total)  # from the last stage to every rank
        if self.tied:  # the embedding's gradient from the first stage, the head's from the last
            p = self.stage.wte.weight if self.first else (self.stage.lm_head.weight if self.last else None)
            grad = p.grad if p is not None and p.grad is not None else torch.zeros(
                self.stage.config.padded_vocab_size, self.stage.config.n_embd, device=self.device)
            dist.all_reduce(grad)
            if p is not None:
                p.grad = grad
        return total

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` over the whole model: each stage's squared norm, added up (a
        tied matrix once)."""
        grads = [p.grad for n, p in self.owned.items() if p.grad is not None
                 and not (self.tied and self.last and not self.first and n == "transformer.wte.weight")]
        sq = sum((g.float().pow(2).sum() for g in grads), torch.zeros((), device=self.device))
        dist.all_reduce(sq)
        total = sq.sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # as PyTorch's: 1e-6 keeps a zero norm finite
        for p in self.owned.values():
            if p.grad is not None:
                p.grad.mul_(coef)
        return total

    @torch.no_grad()
    def loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(summed cross-entropy, counted targets) of one batch, on every rank: a forward
        stage by stage (point to point, no schedule: nothing to overlap without a backward)."""
        h = x
        if not self.first:
            B, T = x.shape
            h = torch.empty(B, T, self.stage.config.n_embd, device=self.device)
            dist.recv(h, self.rank - 1)
        h = self.stage(h)
        if not self.last:
            dist.send(h.float().contiguous(), self.rank + 1)
            out = torch.zeros(2, device=self.device)
        else:
            loss = F.cross_entropy(h.reshape(-1, h.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            out = torch.stack([loss, (y != IGNORE_INDEX).sum().float()])
        dist.all_reduce(out)
        return out

    # ------------------------------------------------------------------ checkpoints

    def whole_weights(self) -> dict[str, torch.Tensor] | None:
        """Every stage's weights by name on rank 0 (None elsewhere). A collective."""
        mine = {n: p.detach().cpu() for n, p in self.owned.items()}
        parts = [None] * self.pp if self.first else None
        # Object collectives pickle, among this run's own processes only (nothing read from disk).
        dist.gather_object(mine, parts, dst=0)
        return {n: t for part in parts for n, t in part.items()} if self.first else None

    def whole_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
        """The optimizer state of every stage, index-keyed in the one-process groups, on rank 0."""
        from .sharding import by_index, regroup

        mine = _named_state(optimizer, model, set(self.owned))
        parts = [None] * self.pp if self.first else None
        dist.gather_object(mine, parts, dst=0)
        if not self.first:
            return {}
        state = {n: s for part in parts for n, s in part["state"].items()}
        settings = [g for part in parts for g in part["param_groups"]]
        return by_index(regroup({"state": state, "param_groups": settings}, self.groups))

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optimizer_state: dict) -> None:
        """This stage's weights and optimizer state from a whole checkpoint."""
        from .sharding import by_index, by_name, group_names, regroup

        ours = model.state_dict()
        missing = [n for n in self.owned if n not in weights]
        if missing:
            raise TinyGPTError(f"the checkpoint lacks {missing[0]}; it is not this model's")
        with torch.no_grad():
            for n, t in weights.items():
                if n in ours:
                    ours[n].copy_(t)
        own = group_names(model, optimizer)
        state = regroup(by_name(optimizer_state, self.groups), own)
        mine = {n for names in own for n in names}  # a checkpoint holds the other stages' state too
        optimizer.load_state_dict(by_index({"state": {n: s for n, s in state["state"].items() if n in mine},
                                            "param_groups": state["param_groups"]}))


def _named_state(optimizer: torch.optim.Optimizer, model: nn.Module, keep: set[str]) -> dict:
    """``optimizer``'s state for the parameters named in ``keep``, keyed by name, on the CPU."""
    from .sharding import by_name, group_names

    full = by_name(optimizer.state_dict(), group_names(model, optimizer))
    return {"state": {n: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                      for n, s in full["state"].items() if n in keep},
            "param_groups": [{**g, "params": [n for n in g["params"] if n in keep]} for g in full["param_groups"]]}
