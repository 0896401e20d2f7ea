"""Which rank holds what: each parallel layout's split of a GPT, as masks and as a picture.

For every layout ``tinygpt train --parallel/--zero`` offers, :func:`holdings` says which
elements of every weight matrix a rank keeps between steps, as weights, as gradients and
as AdamW state, computed by the same code that splits the model for training (the tensor-
parallel row order, the pipeline's stages) or by the rule PyTorch's class follows (FSDP2
shards dim 0 into ``torch.chunk`` pieces; ZeroRedundancyOptimizer gives whole tensors to
ranks, largest first, each to the rank holding least so far). :func:`draw_layouts` draws
them side by side: the README's picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ..model import GPT, GPTConfig
from ..train.optim import adamw_groups
from ..train.parallel import row_order
from ..train.pipeline import stage_blocks
from .pictures import save

KINDS = ("weights", "gradients", "AdamW state")
MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # q/k/v, attention out, MLP in, MLP out
LAYOUTS = {
    "1 process": "everything whole",
    "DDP": "a whole copy on each rank; gradients all-reduced",
    "ZeRO-1": "AdamW state of whole tensors shared out (ZeroRedundancyOptimizer)",
    "ZeRO-2": "rows sharded (FSDP2); weights gathered once per step",
    "ZeRO-3": "rows sharded (FSDP2); each block's weights gathered as it runs",
    "TP": "rows of q/k/v and MLP-in by head/neuron, columns of the outputs",
    "PP": "whole blocks per stage; tied embedding/head on first and last",
}
RANK_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _rows(n: int, ranks: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s rows of ``n`` as ``torch.chunk`` (FSDP2's ``Shard(0)``) gives them."""
    mask = np.zeros(n, dtype=bool)
    start = 0
    for r, piece in enumerate(torch.arange(n).chunk(ranks)):
        if r == rank:
            mask[start:start + len(piece)] = True
        start += len(piece)
    return mask


def _zero1_owners(model: GPT, ranks: int) -> dict[str, int]:
    """Which rank steps each parameter under ZeroRedundancyOptimizer: per param group, the
    tensors largest first, each to the rank with the fewest elements so far."""
    params = dict(model.named_parameters())
    sizes, owner = [0] * ranks, {}
    for group in adamw_groups(model):
        for name in sorted(group, key=lambda n: params[n].numel(), reverse=True):
            rank = sizes.index(min(sizes))
            owner[name] = rank
            sizes[rank] += params[name].numel()
    return owner


def holdings(config: GPTConfig, layout: str, ranks: int, rank: int) -> dict[str, dict[str, np.ndarray]]:
    """{kind: {parameter name: bool mask of its elements}} that rank ``rank`` of ``ranks``
    keeps under ``layout`` (a key of LAYOUTS), for every matrix of the blocks and the
    token embedding (the head, where tied)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    params = {n: p for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n}
    whole = {n: np.ones(tuple(p.shape), dtype=bool) for n, p in params.items()}
    none = {n: np.zeros(tuple(p.shape), dtype=bool) for n, p in params.items()}
    if layout in ("1 process", "DDP") or (layout != "1 process" and ranks == 1):
        return {k: whole for k in KINDS}
    if layout == "ZeRO-1":
        owners = _zero1_owners(model, ranks)
        return {"weights": whole, "gradients": whole,
                "AdamW state": {n: whole[n] if owners[n] == rank else none[n] for n in params}}
    if layout in ("ZeRO-2", "ZeRO-3"):
        rows = {n: np.repeat(_rows(p.shape[0], ranks, rank)[:, None], p.shape[1], axis=1) for n, p in params.items()}
        return {k: rows for k in KINDS}
    if layout == "TP":
        orders = row_order(model, ranks)
        held = dict(whole)  # embeddings and head replicated
        for name, p in params.items():
            if name in orders:  # column-wise: this rank's rows, in the model's own order
                n = p.shape[0]
                mine = orders[name][rank * n // ranks:(rank + 1) * n // ranks].numpy()
                mask = np.zeros(p.shape, dtype=bool)
                mask[mine] = True
                held[name] = mask
            elif name.endswith("c_proj.weight"):  # row-wise: the input columns of its heads / neurons
                mask = np.zeros(p.shape, dtype=bool)
                k = p.shape[1]
                mask[:, rank * k // ranks:(rank + 1) * k // ranks] = True
                held[name] = mask
        return {k: held for k in KINDS}
    if layout == "PP":
        blocks = stage_blocks(config.n_layer, ranks)[rank]
        held = {}
        for name in params:
            if ".h." in f".{name}":
                mine = int(name.split(".")[2]) in blocks
            elif "wte" in name:  # the first stage embeds; the last stage's head is the same matrix when tied
                mine = rank == 0 or (rank == ranks - 1 and config.tie_embeddings)
            else:  # an untied head
                mine = rank == ranks - 1
            held[name] = whole[name] if mine else none[name]
        return {k: held for k in KINDS}
    raise ValueError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")


def _mosaic(config: GPTConfig, masks: dict[str, np.ndarray]) -> np.ndarray:
    """One array for a panel: the embedding on top, then each block's four matrices side by
    side ([out, in] each); 1 held, 0 not, NaN between."""
    gap = 2
    items = [[n for n in masks if "wte" in n]] + [
        [f"transformer.h.{i}.{m}.weight" for m in MATRICES] for i in range(config.n_layer)]
    rows = []
    for names in items:
        height = max(masks[n].shape[0] for n in names)
        pieces = []
        for n in names:
            m = masks[n].astype(float)
            pad = np.full((height - m.shape[0], m.shape[1]), np.nan)
            pieces += [np.vstack([m, pad]), np.full((height, gap), np.nan)]
        rows.append(np.hstack(pieces))
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        out += [np.hstack([r, np.full((r.shape[0], width - r.shape[1]), np.nan)]), np.full((gap, width), np.nan)]
    return np.vstack(out)


def draw_layouts(path: str | Path, config: GPTConfig | None = None, ranks: int = 2) -> Path:
    """The picture: one row per layout, per rank its weights, gradients and AdamW state."""
    config = config or GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=16, vocab_size=24)
    fig = Figure(figsize=(2.2 * 3 * ranks, 2.1 * len(LAYOUTS)), layout="constrained")
    axes = fig.subplots(len(LAYOUTS), 3 * ranks, squeeze=False)
    for i, (layout, how) in enumerate(LAYOUTS.items()):
        for rank in range(ranks):
            held = holdings(config, layout, ranks, rank)
            cmap = ListedColormap(["#e8e8e8", RANK_COLOURS[rank % len(RANK_COLOURS)]]).with_extremes(bad="white")
            for j, kind in enumerate(KINDS):
                ax = axes[i, 3 * rank + j]
                shown = layout != "1 process" or rank == 0
                ax.imshow(np.ma.masked_invalid(_mosaic(config, held[kind])) if shown else np.full((1, 1), np.nan),
                          cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                if i == 0:
                    ax.set_title(f"rank {rank}: {kind}", fontsize=9)
                if rank == 0 and j == 0:
                    ax.set_ylabel(layout, fontsize=11, fontweight="bold")
            axes[i, 0].text(0, -0.08, how, transform=axes[i, 0].transAxes, fontsize=8, va="top")
    fig.suptitle(f"What each of {ranks} ranks keeps between steps: in each panel the token embedding "
                 f"(= head), then per block q/k/v | attention out | MLP in | MLP out ([out, in] each); "
                 "coloured: held", fontsize=10)
    return save(fig, path)


if __name__ == "__main__":  # python -m tinygpt.analysis.layouts PATH: the README's picture
    import sys

    print(draw_layouts(sys.argv[1] if len(sys.argv) > 1 else "parallel_layouts.png"))
