"""``tinygpt export``: a run's model in another ecosystem's format."""

from __future__ import annotations

import argparse

from ..checkpoint import weight_tensors
from ..errors import TinyGPTError
from ..interop import gguf_file, hf_dir
from ..run import RunDir
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
    p.add_argument("--force", action="store_true", help="write into OUT even if it exists and is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt, out = args.to
    if fmt not in FORMATS:
        raise TinyGPTError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    source = RunDir.open(args.run)
    model, info, path = source.load_model(args.checkpoint)
    tensors, tokenizer = weight_tensors(model), source.load_tokenizer()
    if fmt == "gguf":
        gguf_file.export(model.config, tensors, tokenizer, out, dtype=args.type, force=args.force,
                         name=source.path.name)
        log(f"{path} (step {info.step}) -> {out}: GGUF ({args.type}) for llama.cpp, e.g. llama-cli -m {out}")
        return 0
    arch = hf_dir.export(model.config, tensors, tokenizer, out, force=args.force)
    log(f"{path} (step {info.step}) -> {out}: {arch}; load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
