"""What a mixture-of-experts model's routers did over one training step, for metrics.jsonl.

The MoE blocks (:mod:`tinygpt.moe`) keep the last forward's assignment counts, dropped
assignments and auxiliary loss; this adds them up over a step's micro-batches and ranks.
``expert_load`` is, per MoE block, the fraction of the step's token-to-expert assignments
each expert got (a balanced router gives 1/E each); ``tinygpt diagnose`` draws it over
training as a heatmap (analysis/experts.py).
"""

from __future__ import annotations

import torch

from ..moe import moe_layers


class ExpertLoad:
    """One step's routing statistics, summed over its micro-batches."""

    def __init__(self, model: torch.nn.Module):
        self.layers = moe_layers(model)
        E = self.layers[0].n_experts if self.layers else 0
        self.load = torch.zeros(len(self.layers), E, dtype=torch.float64)  # (MoE blocks, E) assignments
        self.dropped = torch.zeros((), dtype=torch.float64)
        self.aux = torch.zeros((), dtype=torch.float64)

    def add(self, aux_loss: torch.Tensor) -> torch.Tensor:
        """Count the last forward's routing; returns ``aux_loss`` (the loss to add, with its graph)."""
        if self.layers:
            self.load += torch.stack([m.load for m in self.layers]).cpu().double()
            self.dropped += sum(m.dropped for m in self.layers).cpu().double()
            self.aux += aux_loss.detach().cpu().double()
        return aux_loss

    def record(self, dist, n_micro: int) -> dict:
        """The step's record: load fractions per block, the fraction dropped, the mean aux loss."""
        packed = dist.sum_across_ranks(torch.cat([self.load.reshape(-1), self.dropped[None], self.aux[None]]))
        load = packed[:-2].view_as(self.load)
        assigned = load.sum().clamp(min=1)
        fractions = load / load.sum(dim=1, keepdim=True).clamp(min=1)
        return {"expert_load": [[round(f, 4) for f in row] for row in fractions.tolist()],
                "moe_dropped": round(float(packed[-2] / assigned), 5),
                "aux_loss": float(packed[-1]) / (n_micro * dist.data_ranks)}
