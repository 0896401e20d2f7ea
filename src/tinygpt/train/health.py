"""Training health as numbers: activation, gradient and update statistics per layer, as
the makemore lectures read them, and the callback that records them during training.

The statistics live here, not in analysis/, because the training-time probe needs them
and train/ never imports analysis/; ``tinygpt diagnose`` (analysis/health.py) computes the
same numbers from a checkpoint, judges them and draws them.

What is measured on one probe batch (forward and backward in eval mode: no dropout, no
random draws, so a probed run trains exactly like an unprobed one):

- per block, the MLP's pre-activation (the input of GELU / SiLU / ReLU²): mean, std, the
  fraction in the activation's flat region (x < -3, where GELU's output and gradient are
  within 1.2% of zero; x < 0 for ReLU²) and the fraction of dead hidden units, flat for
  >= 99% of the tokens (the analogue of a saturated tanh: GELU is flat on one side only, so
  half of the inputs there is normal, sparse activation; a unit that is never on learns
  nothing), the block's output (residual stream) mean and std, and the attention's mean
  normalised entropy (0: each query looks at one key; 1: at all keys alike);
- per weight matrix: weight std, gradient mean and std, log10 of the gradient-to-weight
  ratio std(grad) / std(w), and, given the weights one optimizer step earlier, log10 of
  the update-to-weight ratio std(w_now - w_before) / std(w_before), with the optimizer
  that made the update (its healthy range depends on it: see analysis/health.py).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import torch

from ..data import Batch
from ..device import autocast
from ..model import GPT, record_attention
from .callbacks import Callback
from .optim import updated_by

if TYPE_CHECKING:
    from .trainer import Trainer

FLAT_BELOW = -3.0  # GELU(x) and GELU'(x) are within 1.2% of 0 below this
# Each MLP's activation and where it is flat: --mlp -> (name, pre-activations below this pass
# (almost) nothing). SwiGLU's gate is read like GELU; ReLU-squared is exactly 0 below 0.
FLAT_REGION = {"gelu": ("GELU", FLAT_BELOW), "swiglu": ("SiLU", FLAT_BELOW), "relu2": ("ReLU²", 0.0)}
DEAD_SHARE = 0.99  # a hidden unit flat for this share of the probe's tokens is dead: it passes (almost) nothing
HIST_BINS = 80


def _log10(x: float) -> float | None:
    return math.log10(x) if x > 0 and math.isfinite(x) else None  # None: zero (e.g. a frozen weight) or not finite


def weight_matrices(model: GPT) -> dict[str, torch.nn.Parameter]:
    """The 2-D weights whose ratios are read (embeddings included, tied weights once)."""
    return {n: p for n, p in model.named_parameters() if p.dim() == 2}


def update_ratios(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """log10 std(after - before) / std(before) per weight (None where nothing moved)."""
    return {n: _log10(float((after[n].float() - before[n].float()).std() / before[n].float().std()))
            for n in before}


def probe(model: GPT, batch: Batch, device: torch.device, dtype: torch.dtype, *,
          histograms: bool = False) -> dict:
    """Statistics of one forward and backward of ``batch`` (see the module docstring).

    Gradients are computed into fresh ``.grad`` fields and removed afterwards; the model
    is left in the mode it was in. With ``histograms``, value histograms (counts, edges)
    of each pre-activation and each weight's gradient come too."""
    was_training = model.training
    activation, flat_below = FLAT_REGION[model.config.mlp]
    saved_grads = {n: p.grad for n, p in model.named_parameters()}
    model.eval()
    pre: dict[int, list[torch.Tensor]] = {}  # per block, per expert (a dense MLP is one): (..., hidden)
    out: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.transformer.h):
        for mlp in getattr(block.mlp, "experts", [block.mlp]):
            hooks.append(mlp.c_fc.register_forward_hook(
                lambda m, a, o, i=i: pre.setdefault(i, []).append(o.detach().flatten(0, -2))))
        hooks.append(block.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o.detach())))
    try:
        for p in model.parameters():
            p.grad = None
        b = batch.to(device)
        with record_attention(model) as maps, autocast(device, dtype):
            loss = model(b.x, b.y, loss_mask=b.loss_mask, input_pos=b.input_pos).loss
        loss.backward()
        layers = []
        for i in range(len(model.transformer.h)):
            xs = [x.float() for x in pre[i]]  # (tokens, hidden) each; an expert sees only its tokens
            if model.config.mlp == "swiglu":
                xs = [x[..., :x.shape[-1] // 2] for x in xs]  # the gate half goes through SiLU
            x = torch.cat(xs)
            y = out[i].float()
            flats = [(x < flat_below).float() for x in xs]  # (tokens, hidden units)
            flat = torch.cat(flats)
            # A unit is dead when flat for nearly all the tokens its own expert saw.
            dead = torch.cat([f.mean(0) >= DEAD_SHARE for f in flats if len(f)]).float().mean()
            layer = {"layer": i, "pre_mean": float(x.mean()), "pre_std": float(x.std()),
                     "flat": float(flat.mean()), "dead": float(dead),
                     "out_mean": float(y.mean()),
                     "out_std": float(y.std()), "attn_entropy": float(attention_entropy(maps[i])[1].mean())}
            if histograms:
                layer["pre_hist"] = histogram(x)
            layers.append(layer)
        weights = []
        for name, p in weight_matrices(model).items():
            g, w = p.grad.float(), p.detach().float()
            row = {"name": name, "w_std": float(w.std()), "grad_mean": float(g.mean()), "grad_std": float(g.std()),
                   "grad_to_weight": _log10(float(g.std() / w.std()))}
            if histograms:
                row["grad_hist"] = histogram(g)
            weights.append(row)
        return {"loss": loss.item(), "layers": layers, "weights": weights, "activation": activation,
                "flat_below": flat_below}
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.grad = saved_grads[n]
        model.train(was_training)


def attention_entropy(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean entropy in nats, mean normalised entropy in [0, 1]) of causal attention
    weights (..., T, S), over the query rows, one value per leading index.

    Rows 1.. only: the first query has one key and no choice. Normalised divides each row
    by its largest possible entropy, log(keys it may see), so rows of every length compare:
    near 0 a sharp head (one key), near 1 a diffuse one (all keys alike)."""
    p = maps[..., 1:, :].float()  # (..., T-1, S)
    if p.shape[-2] == 0:
        zero = torch.zeros(maps.shape[:-2])
        return zero, zero
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (..., T-1)
    keys = torch.arange(2, p.shape[-2] + 2, dtype=h.dtype, device=h.device).clamp(max=p.shape[-1])
    return h.mean(-1), (h / torch.log(keys)).mean(-1)


def histogram(x: torch.Tensor) -> dict:
    """Counts of ``x``'s values in HIST_BINS equal bins, as {"counts", "lo", "hi"} (JSON-ready)."""
    x = x.flatten().float()
    # The body of the distribution, +-6 std around the mean: a few outliers would otherwise
    # stretch the bins until the body falls into one or two of them.
    mean, std = float(x.mean()), float(x.std())
    lo, hi = max(float(x.min()), mean - 6 * std), min(float(x.max()), mean + 6 * std)
    if lo == hi:
        lo, hi = lo - 1e-6, hi + 1e-6
    counts = torch.histc(x, bins=HIST_BINS, min=lo, max=hi)
    return {"counts": counts.tolist(), "lo": lo, "hi": hi}


class HealthProbe(Callback):
    """``--diagnostics N``: every N steps, :func:`probe` on a fixed batch of training data,
    plus each weight's update-to-weight ratio over the step just taken, appended as one
    JSON line to the run's diagnostics.jsonl."""

    def __init__(self, path, every: int, batch: Batch):
        self.path, self.every, self.batch = path, every, batch
        self.before: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.before = self._snapshot(trainer)

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        step = trainer.state.step
        if self.before is not None and step % self.every == 0:
            result = probe(trainer.model, self.batch, trainer.device, trainer.dtype)
            ratios = update_ratios(self.before, {n: p.detach() for n, p in weight_matrices(trainer.model).items()})
            by = updated_by(trainer.model, trainer.cfg.optimizer)
            for row in result["weights"]:
                row["update_to_weight"] = ratios[row["name"]]
                row["optimizer"] = by[row["name"]]  # the healthy ratio depends on it
            # The step's learning rate and the peak: an update ratio scales with the rate, so
            # one taken late in a decayed schedule is judged at the peak rate it stands for
            # (one taken in warmup, while the weights are still near their init, is not judged).
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "lr": record.get("lr"), "peak_lr": trainer.cfg.lr,
                                    "warmup": trainer.in_warmup(), **result}) + "\n")
        self.before = self._snapshot(trainer)

    def _snapshot(self, trainer: Trainer) -> dict[str, torch.Tensor] | None:
        """The weights now when the next step is a probe's (its update is measured against
        them), else None: nothing is copied on the other steps."""
        if (trainer.state.step + 1) % self.every:
            return None
        return {n: p.detach().clone() for n, p in weight_matrices(trainer.model).items()}
