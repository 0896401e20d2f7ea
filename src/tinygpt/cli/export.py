"""``tinygpt export``: a run's model in another ecosystem's format."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import adapters
from ..checkpoint import weight_tensors
from ..errors import TinyGPTError
from ..interop import gguf_file, hf_dir, peft_adapter
from ..run import RunDir
from ..source import open_model
from .common import add_checkpoint_option, log

FORMATS = ("hf", "gguf")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's model for other tools (transformers, llama.cpp)",
                       description="Export a run: --to hf OUT_DIR writes a directory that transformers' "
                                   "AutoModelForCausalLM.from_pretrained loads (also read by llama.cpp's "
                                   "converter and mlx-lm); --to gguf FILE writes a llama.cpp model (GPT-2 "
                                   "architecture; --type f32, f16 or q8_0).")
    p.add_argument("run", metavar="RUN", help="run directory written by 'tinygpt train'")
    p.add_argument("--to", nargs=2, metavar=("FORMAT", "OUT"), required=True, help=f"format ({'|'.join(FORMATS)}) "
                   "and where to write it")
    add_checkpoint_option(p)
    p.add_argument("--type", default="f16", choices=gguf_file.TYPES, help="GGUF number format (default: f16)")
    p.add_argument("--merged", action="store_true", help="a LoRA fine-tune to hf: write the merged weights instead of "
                                                         "the base with the adapter in PEFT's format in OUT/adapter")
    p.add_argument("--force", action="store_true", help="write into OUT even if it exists and is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt, out = args.to
    if fmt not in FORMATS:
        raise TinyGPTError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run_dir = RunDir.open(args.run)
    opened = open_model(run_dir.path, args.checkpoint)
    model, info, path, tokenizer = opened.model, opened.info, opened.path, opened.tokenizer
    adapter = adapters.attached(model)
    lora_beside = adapter is not None and fmt == "hf" and not args.merged
    if adapter is not None and adapter.method != "lora":
        what = "an adapter fine-tune: {} models have no place for its bottleneck adapters" \
            if adapter.method == "adapter" else "a prompt fine-tune: {} models have no place for its soft prompt"
        raise TinyGPTError(f"{args.run} is {what.format(fmt)}; sample, eval and chat use it as it is (or fine-tune "
                           "with --method lora or full to export)")
    if lora_beside:
        config, tensors = model.config, adapters.base_tensors(model)
    elif adapter is not None:
        config, tensors = adapters.merge(model)
    else:
        config, tensors = model.config, weight_tensors(model)
    if fmt == "gguf":
        gguf_file.export(config, tensors, tokenizer, out, dtype=args.type, force=args.force, name=run_dir.path.name)
        log(f"{path} (step {info.step}) -> {out}: GGUF ({args.type}) for llama.cpp, e.g. llama-cli -m {out}")
        return 0
    arch = hf_dir.export(config, tensors, tokenizer, out, force=args.force)
    if lora_beside:
        where = Path(out) / "adapter"
        peft_adapter.write_peft_adapter(where, config, adapters.adapter_tensors(model), r=adapter.lora_rank,
                                        alpha=adapter.lora_alpha, dropout=adapter.lora_dropout, base=str(out),
                                        force=args.force)
        log(f"{path} (step {info.step}) -> {out}: {arch} base, LoRA adapter in PEFT's format in {where}; load "
            f"them with peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained("
            f"{str(out)!r}), {str(where)!r}) (or export --merged)")
        return 0
    log(f"{path} (step {info.step}) -> {out}: {arch}" + (" (LoRA merged)" if adapter else "") + "; load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
