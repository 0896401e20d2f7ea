"""A model written for other tools: a Hugging Face directory (transformers, llama.cpp's
converter, mlx-lm) or a GGUF file (llama.cpp).

What a fine-tune's adapter becomes is decided here, once: a LoRA goes to a Hugging Face
directory as the base plus the adapter in PEFT's format (or merged into the weights when
asked), and into GGUF merged; bottleneck adapters and soft prompts have no place in either
format, so such a fine-tune is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import adapters, quant
from ..checkpoint import weight_tensors
from ..config import check_choices, opt
from ..device import resolve_device, resolve_dtype
from ..errors import TinyGPTError
from ..model import GPT, GPTConfig
from ..source import open_source
from . import gguf_file, hf_dir, peft_adapter

FORMATS = ("hf", "gguf")


@dataclass
class ExportOptions:
    to: list[str] = opt([], f"the format ({'|'.join(FORMATS)}) and where to write it", nargs=2,
                        metavar=("FORMAT", "OUT"), required=True)
    type: str = opt("f16", "GGUF number format", choices=gguf_file.TYPES)
    merged: bool = opt(False, "a LoRA fine-tune to hf: write the merged weights instead of the base with the "
                              "adapter in PEFT's format in OUT/adapter")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.to and len(self.to) != 2:
            raise TinyGPTError("give the format and where to write it: --to hf OUT_DIR or --to gguf FILE")
        if self.to and self.to[0] not in FORMATS:
            raise TinyGPTError(f"unknown export format {self.to[0]!r}; choose one of: {', '.join(FORMATS)}")


@dataclass
class Exported:
    """What an export wrote, for its report."""
    format: str
    out: Path
    weights: Path                       # the weights file (or directory) the model was read from
    step: int | None
    architecture: str = ""              # hf: GPT2LMHeadModel or LlamaForCausalLM
    adapter: Path | None = None         # hf of a LoRA fine-tune: the adapter in PEFT's format
    merged: bool = False                # a LoRA fine-tune's weights were merged


def float_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights, a quantized layer's as its dequantized weight (what it computes with)."""
    tensors = weight_tensors(model)
    for name, layer in quant.linears(model, head=True):
        if layer.quant is not None:
            for part in ("qweight", "scales", "input_scale"):
                tensors.pop(f"{name}.{part}", None)
            tensors[f"{name}.weight"] = quant.weight_of(layer).to(layer.bias.dtype if layer.bias is not None
                                                                   else torch.float32)
    return tensors


def q4_0_ready(model: GPT) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{weight name: (codes, scales)} of the layers already on q4_0's grid: int4 in groups of
    32 with no input scale, written into a q4_0 GGUF without rounding again."""
    out = {}
    for name, layer in quant.linears(model, head=True):
        spec = layer.quant
        if spec is not None and (spec.bits, spec.group_size) == (4, 32) and getattr(layer, "input_scale", None) is None:
            out[f"{name}.weight"] = (quant.unpack_int4(layer.qweight), layer.scales)
    return out


def tensors_to_write(model: GPT, fmt: str, *, merged: bool = False, name: str = "the model"
                     ) -> tuple[GPTConfig, dict[str, torch.Tensor], adapters.AdapterConfig | None]:
    """(config, weights to write, the LoRA to write beside them or None) for ``fmt``. A LoRA
    fine-tune to hf is its base plus the adapter, unless ``merged``; to gguf it is merged.
    Other adapters are refused: neither format has a place for them."""
    adapter = adapters.attached(model)
    if adapter is None:
        return model.config, float_tensors(model), None
    if adapter.method != "lora":
        what = "an adapter fine-tune: {} models have no place for its bottleneck adapters" \
            if adapter.method == "adapter" else "a prompt fine-tune: {} models have no place for its soft prompt"
        raise TinyGPTError(f"{name} is {what.format(fmt)}; sample, eval and chat use it as it is (or fine-tune "
                           "with --method lora or full to export)")
    if fmt == "hf" and not merged:
        return model.config, adapters.base_tensors(model), adapter
    config, tensors = adapters.merge(model)
    return config, tensors, None


def export_model(source: str | Path, fmt: str, out: str | Path, *, checkpoint: str = "best", gguf_type: str = "f16",
                 merged: bool = False, force: bool = False, device: str = "cpu", dtype: str = "fp32") -> Exported:
    """Write the model at ``source`` (a run, an adapter fine-tune, a Hugging Face directory or
    hub name) as ``fmt`` ('hf' or 'gguf') to ``out``. The weights are loaded on ``device`` in
    ``dtype`` and written as held (GGUF converts them to ``gguf_type``); ``force`` writes over
    what is at ``out``."""
    if fmt not in FORMATS:
        raise TinyGPTError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    opened = open_source(source, checkpoint)
    dev = resolve_device(device)
    model = opened.model.to(dev, resolve_dtype(dtype, dev, inference=True))
    config, tensors, lora = tensors_to_write(model, fmt, merged=merged, name=str(source))
    done = Exported(fmt, Path(out), opened.path, opened.info.step, merged=adapters.attached(model) is not None
                    and lora is None)
    if fmt == "gguf":
        name = Path(source).resolve().name if Path(source).exists() else str(source)  # a hub name as it is
        gguf_file.export(config, tensors, opened.tokenizer, out, dtype=gguf_type, force=force, name=name,
                         int4=q4_0_ready(model))
        return done
    done.architecture = hf_dir.export(config, tensors, opened.tokenizer, out, force=force)
    if lora is not None:
        done.adapter = Path(out) / "adapter"
        peft_adapter.write_peft_adapter(done.adapter, config, adapters.adapter_tensors(model), r=lora.lora_rank,
                                        alpha=lora.lora_alpha, dropout=lora.lora_dropout, base=str(out), force=force)
    return done
