"""A tinygpt LoRA adapter -> a PEFT adapter for the Hugging Face model ``hf_dir.export`` writes.

tinygpt fine-tunes with peft's own LoRA injected into our GPT, so the adapter we keep is
``get_peft_model_state_dict(model)``: ``<our module>.lora_A.weight`` (r, in) and
``<our module>.lora_B.weight`` (out, r) for the linear layers. The same adapter on the
exported model is a renaming plus two exact rewrites, because a LoRA adds ``B A x * alpha / r``
to a layer's output and nothing else:

* A fused layer (Llama's q/k/v in our ``attn.c_attn``, gate/up in ``mlp.c_fc``) is several HF
  layers reading the same input, each owning a block of the output rows. Each gets the
  shared A and its block of B's rows: ``B_q A x`` is exactly the q rows of ``B A x``. (Only
  training would tell them apart: peft draws a LoRA dropout mask per HF layer, we draw one.)
* The head's B loses our vocabulary padding rows, as the head's weight does on export.

Which HF layers and row blocks a tinygpt layer becomes is ``hf.py``'s knowledge (its weight
name functions and row split), used here rather than repeated. GPT-2's HF layers are Conv1D,
weights stored (in, out); peft still keeps their lora_A / lora_B as ``nn.Linear`` (r, in) and
(out, r), and only transposes when merging, which ``fan_in_fan_out=True`` tells it.

The files are what ``PeftModel.save_pretrained`` writes for a causal LM: ``adapter_config.json``
from peft's own ``LoraConfig`` and ``adapter_model.safetensors`` with names
``base_model.model.<HF module>.lora_A.weight``, so ``PeftModel.from_pretrained``, vLLM and
llama.cpp's LoRA converter read them as any other adapter.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..errors import TinyGPTError
from ..model import GPT, GPTConfig
from . import hf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModelForCausalLM's path to the wrapped HF model

# What get_peft_model_state_dict names a plain LoRA's tensors (the adapter name removed).
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
_HINT = ("pass get_peft_model_state_dict(model, save_embedding_layers=False) of a plain LoRA "
         "(no DoRA, no lora_bias) on attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj or lm_head")


class _Layer(NamedTuple):
    fan_in: int                   # A's columns
    rows: int                     # B's rows on our side (padded_vocab_size for the head)
    parts: tuple[str, ...]        # the HF modules it becomes, in row order
    part_rows: tuple[int, ...]    # B's rows each one takes (summing to vocab_size for the head)


def _family(cfg: GPTConfig) -> hf._Family:
    # As hf_dir.export decides: GPT-2's switches make a GPT-2, anything else must be a Llama.
    gpt2 = (cfg.pos_emb, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu")
    family = hf._GPT2 if gpt2 else hf._LLAMA
    hf._require_shape(cfg, family.shape, family.name)
    return family


def _layers(cfg: GPTConfig, family: hf._Family) -> dict[str, _Layer]:
    """Our linear layers (the modules a LoRA can target) -> their HF modules and row split."""
    with torch.device("meta"):  # the model knows our names and shapes; on meta it allocates nothing
        model = GPT(cfg)
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        key = f"{name}.weight"
        hf_keys, _ = family.names(key)
        rows_out, fan_in = module.weight.shape  # (out, in)
        # The HF side has vocab_size head rows; our padding rows go, as on export.
        rows = cfg.vocab_size if key in hf._VOCAB_ROWS else rows_out
        out[name] = _Layer(fan_in, rows_out, tuple(k.removesuffix(".weight") for k in hf_keys),
                           tuple(hf._part_rows(cfg, key, rows, len(hf_keys))))
    return out


def _pairs(lora: dict[str, torch.Tensor], layers: dict[str, _Layer],
           r: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Our module -> (A, B), every tensor checked to be a LoRA weight of a known layer, of rank ``r``."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in lora.items():
        m = _LORA_KEY.fullmatch(key)
        if m is None or m["module"] not in layers:
            if ".base_layer." in key or re.search(r"\.lora_[AB]\.[^.]+\.weight$", key):
                raise TinyGPTError(f"{key!r} is a name from model.state_dict(), not an adapter file; {_HINT}")
            raise TinyGPTError(f"{key!r} is not a LoRA weight of a tinygpt linear layer; {_HINT}")
        module, ab = m["module"], m["ab"]
        layer = layers[module]
        want = (r, layer.fan_in) if ab == "A" else (layer.rows, r)  # A: (r, in); B: (out, r)
        if tuple(t.shape) != want:
            raise TinyGPTError(f"LoRA tensor {key!r} has shape {tuple(t.shape)} but rank r={r} on this model implies "
                               f"{want}; pass the r the adapter was trained with and the model's own config")
        found.setdefault(module, {})[ab] = t
    if not found:
        raise TinyGPTError(f"the LoRA state dict holds no LoRA weights; {_HINT}")
    for module, ab in found.items():
        if len(ab) != 2:
            (have,) = ab
            lacking = "B" if have == "A" else "A"
            raise TinyGPTError(f"the LoRA state dict has {module}.lora_{have}.weight but no lora_{lacking}; {_HINT}")
    return {module: (ab["A"], ab["B"]) for module, ab in found.items()}


def _matches(target: str, module: str) -> bool:
    # peft's rule for a list of target_modules: the whole name or a dotted suffix of it.
    return module == target or module.endswith(f".{target}")


def _target_modules(adapted: set[str], every: set[str]) -> list[str]:
    """The shortest names (peft's usual ``q_proj``, ``c_attn``) that select exactly the adapted HF
    modules out of ``every`` linear one. A LoRA on some blocks only gets full paths for those, as
    a shared name would make peft add zero-initialised LoRA layers to the other blocks too."""
    targets = set()
    for module in adapted:
        words = module.split(".")
        # Names within a block ("attn.c_proj", never "0.attn.c_proj"), else the whole path.
        block = next((i + 1 for i, w in enumerate(words) if w.isdigit()), 0)
        suffixes = [".".join(words[-n:]) for n in range(1, len(words) - block + 1)] + [module]
        targets.add(next(s for s in suffixes if all(m in adapted for m in every if _matches(s, m))))
    return sorted(targets)


def _plain(value):
    """peft's config values as JSON: sets as sorted lists (as save_pretrained writes, but stable),
    enums (peft_type, task_type) as their strings."""
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_peft(cfg: GPTConfig, lora: dict[str, torch.Tensor], *, r: int, alpha: float, dropout: float,
            base: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json contents, adapter_model.safetensors tensors): the LoRA ``lora``
    (``get_peft_model_state_dict`` of our GPT, scaling ``alpha / r``) as a PEFT adapter for the HF
    model that ``hf_dir.export`` writes for ``cfg``, which ``base`` (hub name or path) names."""
    family = _family(cfg)
    layers = _layers(cfg, family)
    tensors = {}
    for module, (a, b) in _pairs(lora, layers, r).items():
        layer = layers[module]
        b = b[:sum(layer.part_rows)]  # the head: (padded_vocab_size, r) -> (vocab_size, r)
        for part, b_part in zip(layer.parts, b.split(layer.part_rows)):
            # Own copies, not views: safetensors' writer refuses shared storage, and q/k/v share A.
            tensors[f"{PREFIX}{part}.lora_A.weight"] = a.detach().contiguous().clone()       # (r, in)
            tensors[f"{PREFIX}{part}.lora_B.weight"] = b_part.detach().contiguous().clone()  # (rows, r)
    try:
        from peft import LoraConfig
    except ImportError:
        raise TinyGPTError("writing a PEFT adapter needs peft: pip install peft") from None
    adapted = {k.removeprefix(PREFIX).rsplit(".lora_", 1)[0] for k in tensors}
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base,
        target_modules=_target_modules(adapted, {p for layer in layers.values() for p in layer.parts}),
        # GPT-2's layers are Conv1D (weights (in, out)); peft flips the flag back for its nn.Linear head.
        fan_in_fan_out=family is hf._GPT2,
        inference_mode=True)  # as PeftModel.save_pretrained writes it
    return {k: _plain(v) for k, v in config.to_dict().items()}, tensors


def write_peft_adapter(out_dir: str | Path, cfg: GPTConfig, lora: dict[str, torch.Tensor], *, r: int, alpha: float,
                       dropout: float, base: str, force: bool = False) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (see :func:`to_peft`) into
    ``out_dir``, each atomically; returns the directory, what ``PeftModel.from_pretrained`` takes.
    An adapter already there is replaced only with ``force``."""
    from ..checkpoint import atomic_write_json, save_tensors

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TinyGPTError(f"{out} is a file, not a directory; choose a directory for the adapter")
    existing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (out / name).exists()]
    if existing and not force:
        raise TinyGPTError(f"{out} already holds {existing[0]}; choose another directory, or pass --force to "
                           "replace the adapter")
    config, tensors = to_peft(cfg, lora, r=r, alpha=alpha, dropout=dropout, base=base)
    out.mkdir(parents=True, exist_ok=True)
    # Weights first: a directory with a config but no weights would look like a complete adapter.
    save_tensors(tensors, out / ADAPTER_WEIGHTS, plain={"format": "pt"})
    atomic_write_json(out / ADAPTER_CONFIG, config)
    return out
