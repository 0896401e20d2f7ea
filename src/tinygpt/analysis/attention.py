"""Attention as numbers: capture every layer's and head's weights for a text, and what
they say (entropy, rollout, most-attended tokens, head roles). Entropy is the training
health probe's own measure (:func:`tinygpt.train.health.attention_entropy`).

The weights come from the model's own explicit attention path (``GPT.attention_maps``:
forward hooks on each layer's SDPA inputs, recomputed as softmax(q k^T / sqrt(d)) under
the same mask), so what is drawn is what the model computes; training and generation
keep SDPA. Pictures of these numbers are in :mod:`tinygpt.analysis.pictures`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import patterns
from ..config import check_choices, like, opt
from ..device import fresh_seed
from ..errors import TinyGPTError
from ..generation import TinyGPT
from ..source import ModelSource
from ..train.config import RunSection
from ..train.health import attention_entropy as entropy

# A head takes a role when its score for it (the mean weight on the role's key) is at
# least this; trained GPT-2's previous-token and induction heads score well above it.
ROLE_THRESHOLD = 0.4
DEFAULT_TEXT = "The cat sat on the mat. It was fluffy."


@dataclass
class AttentionOptions:
    """What ``tinygpt attention`` looks at and draws."""
    model: str | None = like(ModelSource, "model", None)
    text: str = opt(DEFAULT_TEXT, "the text to look at")
    preset: str | None = like(RunSection, "preset", None, shown="none; with --untrained, random weights of this "
                                                                   "preset's shape instead of MODEL")
    untrained: bool = opt(False, "random weights (MODEL's or --preset's shape, from --seed), to compare a trained "
                                 "model against")
    layer: int | None = opt(None, "the layer to draw (none: every layer's grid)")
    head: int | None = opt(None, "also draw this head of --layer (default layer 0) on its own, labelled")
    top_tokens: int = opt(3, "most-attended tokens listed per token", aliases=("--top-k",))
    residual: float = opt(0.5, "rollout: weight of the residual stream mixed into each layer (0: attention alone)")
    compare: list[str] = opt([], "draw --layer/--head (default 0/0) of two models side by side", nargs=2,
                             metavar=("MODEL_A", "MODEL_B"))

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.text:
            raise TinyGPTError("the --text is empty; give the text whose attention to show")
        if self.top_tokens < 1:
            raise TinyGPTError(f"--top-tokens must be at least 1, got {self.top_tokens}")
        if self.compare and (self.model or self.preset):
            raise TinyGPTError("--compare takes its two models itself; drop MODEL / --preset")


@dataclass
class Attention:
    """One text's attention in one model."""
    ids: list[int]
    labels: list[str]           # each token as text, whitespace made visible
    maps: torch.Tensor          # (n_layer, n_head, T, T) float32, row i = query token i
    source: str                 # which model, for titles
    cropped: int = 0            # tokens dropped from the front to fit the context
    masks: dict[int, tuple[str, torch.Tensor]] = field(default_factory=dict)  # sparse layer -> (pattern, (T, T) bool)

    @property
    def n_layer(self) -> int:
        return self.maps.shape[0]

    @property
    def n_head(self) -> int:
        return self.maps.shape[1]


def token_label(text: str) -> str:
    """A token's text with whitespace made visible (a tick label of only spaces shows nothing)."""
    return text.replace(" ", "\u2423").replace("\n", "\u23ce").replace("\t", "\u21e5") or "\u2205"


@torch.no_grad()
def capture(lm: TinyGPT, text: str, source: str = "") -> Attention:
    """Every layer's and head's attention weights for ``text`` (its last context-full of tokens)."""
    ids = lm.tokenizer.encode(text)
    if not ids:
        raise TinyGPTError("the --text is empty; give the text whose attention to show")
    block = lm.model.config.block_size
    cropped = max(0, len(ids) - block)
    ids = ids[cropped:]
    labels = [token_label(lm.tokenizer.decode([i])) for i in ids]
    masks = {i: (pattern_name(p), patterns.square(p, len(ids)))
             for i, p in enumerate(patterns.layer_patterns(lm.model.config)) if p is not None}
    return Attention(ids, labels, _maps(lm, torch.tensor([ids])), source or str(lm.checkpoint or "model"), cropped,
                     masks)


def pattern_name(pattern: patterns.Pattern | None) -> str:
    return "full" if pattern is None else f"{pattern.kind}, W={pattern.window}"


def _maps(lm: TinyGPT, ids: torch.Tensor) -> torch.Tensor:
    """(L, nh, T, T) float32 on the CPU: every layer's weights for one row of ``ids`` (1, T),
    taken in eval mode (no attention dropout), the model left in the mode it was in."""
    was_training = lm.model.training
    lm.model.eval()
    try:
        maps = lm.model.attention_maps(ids.to(lm.device))
    finally:
        lm.model.train(was_training)
    if len({m.shape[1] for m in maps}) > 1:
        raise TinyGPTError(f"this model was pruned to different heads per block ({lm.model.config.layer_heads}); "
                           "the pictures lay every block's heads in one grid: look at the unpruned run")
    return torch.stack([m[0].float().cpu() for m in maps])


def rollout(maps: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token's last-layer
    representation draws on each input token, (T, T).

    Each layer's head-averaged weights are mixed with the identity, ``residual * I +
    (1 - residual) * A``, to stand for the residual stream that carries each token past
    attention (0 follows attention alone; the paper uses 0.5), and the layers' matrices
    are multiplied from the first layer up. Rows stay distributions."""
    if not 0.0 <= residual <= 1.0:
        raise TinyGPTError(f"--residual must be in [0, 1], got {residual}")
    T = maps.shape[-1]
    eye = torch.eye(T, dtype=maps.dtype)
    out = eye
    for layer in maps:
        a = residual * eye + (1 - residual) * layer.mean(0)
        out = a @ out
    return out


def top_attended(att: Attention, k: int = 3, layer: int | None = None) -> list[list[tuple[int, float]]]:
    """For each query token, its ``k`` most-attended tokens (index, weight), weights
    averaged over heads, in one layer or averaged over all layers."""
    m = att.maps[layer] if layer is not None else att.maps.mean(0)  # (nh, T, T)
    avg = m.mean(0)  # (T, T)
    out = []
    for i in range(avg.shape[0]):
        w, j = avg[i, :i + 1].topk(min(k, i + 1))
        out.append([(int(a), float(b)) for a, b in zip(j, w)])
    return out


def role_scores(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer and head (L, nh): the mean weight each query (rows 1..) puts on the
    previous token, the first token (attention sinks), and itself."""
    L, H, T, _ = maps.shape
    if T < 2:
        raise TinyGPTError("role scores need a text of at least two tokens")
    rows = torch.arange(1, T)
    return {"previous": maps[:, :, rows, rows - 1].mean(-1),
            "first": maps[:, :, 1:, 0].mean(-1),
            "self": maps[:, :, rows, rows].mean(-1)}


@torch.no_grad()
def induction_scores(lm: TinyGPT, length: int = 50, seed: int | None = 0) -> torch.Tensor:
    """(L, nh): on random tokens repeated twice, the mean weight each token of the second
    copy puts on the token that followed its first occurrence, where an induction head
    ("after A came B before, so look at B") looks. Random tokens leave nothing else to
    predict with, so only copying from the first half helps."""
    block = lm.model.config.block_size
    n = min(length, block // 2)
    if n < 2:
        raise TinyGPTError(f"the context ({block} tokens) is too short to test for induction heads")
    g = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    first = torch.randint(lm.tokenizer.vocab_size, (n,), generator=g)
    maps = _maps(lm, torch.cat([first, first]).unsqueeze(0))  # (L, nh, 2n, 2n)
    rows = torch.arange(n, 2 * n)
    return maps[:, :, rows, rows - n + 1].mean(-1)


def head_roles(scores: dict[str, torch.Tensor], threshold: float = ROLE_THRESHOLD) -> list[dict]:
    """Each head's scores and its role: the highest-scoring one at or above ``threshold``,
    else none. ``scores`` maps role name -> (L, nh) scores."""
    names = list(scores)
    L, H = scores[names[0]].shape
    out = []
    for layer in range(L):
        for head in range(H):
            s = {r: float(scores[r][layer, head]) for r in names}
            best = max(s, key=s.get)
            out.append({"layer": layer, "head": head, "role": best if s[best] >= threshold else None, **s})
    return out


# ---------------------------------------------------------------------------- report and pictures

def analyse(lm: TinyGPT, att: Attention, *, k: int = 3, layer: int | None = None,
            induction_length: int = 50, seed: int | None = 0) -> dict:
    """Everything the text report says, as plain data (what ``--json`` writes)."""
    if layer is not None and not 0 <= layer < att.n_layer:
        raise TinyGPTError(f"--layer {layer} is out of range; the model has layers 0..{att.n_layer - 1}")
    scores = role_scores(att.maps) if len(att.ids) > 1 else {}
    if lm.model.config.block_size >= 4:
        scores["induction"] = induction_scores(lm, induction_length, seed)
    ent, norm = entropy(att.maps)
    heads = head_roles(scores) if scores else []
    for h in heads:
        h["entropy"], h["entropy_norm"] = float(ent[h["layer"], h["head"]]), float(norm[h["layer"], h["head"]])
    top = top_attended(att, k, layer)
    return {"model": att.source, "tokens": att.labels, "cropped": att.cropped,
            "top_attended": {"layer": "mean" if layer is None else layer,
                             "rows": [[[att.labels[j], j, round(w, 4)] for j, w in row] for row in top]},
            "heads": heads, "role_threshold": ROLE_THRESHOLD}


def format_report(result: dict) -> str:
    """The text report: most-attended tokens per token, then each head's scores and role."""
    lines = [f"model: {result['model']} | {len(result['tokens'])} tokens"
             + (f" (the first {result['cropped']} dropped to fit the context)" if result["cropped"] else "")]
    where = result["top_attended"]["layer"]
    scope = "all layers averaged" if where == "mean" else f"layer {where}"
    lines.append(f"most-attended tokens, heads averaged, {scope}:")
    for i, (label, row) in enumerate(zip(result["tokens"], result["top_attended"]["rows"])):
        lines.append(f"  {i:4d} {label:>8}  " + "  ".join(f"{t}@{j} {w:.2f}" for t, j, w in row))
    if result["heads"]:
        roles = [r for r in ("previous", "first", "self", "induction") if r in result["heads"][0]]
        lines.append(f"heads (mean weight on each role's key; a role needs >= {result['role_threshold']}; "
                     "entropy normalised: 0 sharp, 1 diffuse):")
        lines.append("  layer head " + " ".join(f"{r:>9}" for r in roles) + "   entropy  role")
        for h in result["heads"]:
            lines.append(f"  {h['layer']:5d} {h['head']:4d} " + " ".join(f"{h[r]:9.3f}" for r in roles)
                         + f"   {h['entropy_norm']:7.3f}  {h['role'] or '-'}")
    return "\n".join(lines)


def draw(att: Attention, out: Path, *, layer: int | None = None, head: int | None = None,
         residual: float = 0.5, heads: list[dict] | None = None) -> list[Path]:
    """The pictures of ``att`` under ``out``: the chosen head (``layer`` and ``head``), the
    heads of the chosen layer (all layers' grids when none is chosen), every head on one
    page (each titled with its role when ``heads``, :func:`analyse`'s list, gives one),
    attention rollout, and entropy per head."""
    from . import pictures

    maps = att.maps.numpy()
    L, H = att.n_layer, att.n_head
    layers = [layer] if layer is not None else list(range(L))
    for value, flag, top in ((layer, "--layer", L), (head, "--head", H)):
        if value is not None and not 0 <= value < top:
            raise TinyGPTError(f"{flag} {value} is out of range; the model has {top} (0..{top - 1})")
    role = {(h["layer"], h["head"]): f" ({h['role']} {h[h['role']]:.2f})" for h in heads or [] if h["role"]}
    paths = []
    if head is not None:
        lay = layer if layer is not None else 0
        paths.append(pictures.heatmap(maps[lay, head], att.labels, out / f"head_L{lay}_H{head}.png",
                                      f"{att.source}: layer {lay}, head {head}"))
    for lay in layers:
        names = [f"head {h}{role.get((lay, h), '')}" for h in range(H)]
        if lay in att.masks:  # a sparse layer: what its heads may attend, first
            kind, mask = att.masks[lay]
            panels = np.concatenate([mask.float().numpy()[None], maps[lay]])
            paths.append(pictures.grid(panels, out / f"layer_{lay}.png", f"{att.source}: the {kind} mask and "
                                       f"the heads of layer {lay}", names=[f"may attend ({kind})"] + names,
                                       labels=att.labels))
        else:
            paths.append(pictures.grid(maps[lay], out / f"layer_{lay}.png", f"{att.source}: the heads of layer {lay}",
                                       names=names, labels=att.labels))
    paths.append(pictures.grid(maps.reshape(L * H, *maps.shape[2:]), out / "all_heads.png",
                               f"{att.source}: every head (rows: layers 0..{L - 1}, columns: heads 0..{H - 1})",
                               names=[f"L{lay} H{h}{role.get((lay, h), '')}" for lay in range(L) for h in range(H)],
                               rows=L))
    paths.append(pictures.heatmap(rollout(att.maps, residual).numpy(), att.labels, out / "rollout.png",
                                  f"{att.source}: attention rollout over {L} layers (residual weight {residual})",
                                  ylabel="token (last layer)", xlabel="input token it draws on",
                                  colorbar="share of the representation"))
    _, norm = entropy(att.maps)
    paths.append(pictures.layer_head_table(norm.numpy(), out / "entropy.png",
                                           f"{att.source}: attention entropy per head (0 sharp, 1 diffuse)",
                                           label="mean entropy / its maximum"))
    return paths


def draw_patterns(path: str | Path, T: int = 64, window: int = 8) -> Path:
    """The README's picture: the keys each query may attend under every pattern, side by side."""
    from . import pictures

    kinds = [None] + [patterns.Pattern(kind, window, 0) for kind in patterns.KINDS[1:]]
    masks = np.stack([patterns.square(p, T).numpy() for p in kinds])
    return pictures.masks(masks, [pattern_name(p) for p in kinds], path,
                          f"Which keys (columns) each query (rows) may attend: {T} positions, window {window}")


def compare(a: Attention, b: Attention, out: Path, layer: int, head: int) -> Path:
    """The same head of two models on the same text, side by side."""
    from . import pictures

    if a.labels != b.labels:
        raise TinyGPTError("--compare needs two models with the same tokenizer (the text must split into the "
                           "same tokens); compare runs of one model family")
    for value, flag, top in ((layer, "--layer", min(a.n_layer, b.n_layer)), (head, "--head", min(a.n_head, b.n_head))):
        if not 0 <= value < top:
            raise TinyGPTError(f"{flag} {value} is out of range for these models (0..{top - 1})")
    return pictures.side_by_side(a.maps[layer, head].numpy(), b.maps[layer, head].numpy(), a.labels,
                                 out / f"compare_L{layer}_H{head}.png", f"layer {layer}, head {head}",
                                 (a.source, b.source))


if __name__ == "__main__":  # python -m tinygpt.analysis.attention PATH: the README's picture of the patterns
    import sys

    print(draw_patterns(sys.argv[1] if len(sys.argv) > 1 else "attention_patterns.png"))
