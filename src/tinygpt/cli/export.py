"""``tinygpt export``: a model in another ecosystem's format."""

from __future__ import annotations

from dataclasses import dataclass, field
from shlex import quote

from ..config import add_command, section
from ..console import log
from ..device import RuntimeConfig
from ..interop.export import ExportOptions, export_model
from ..options import OutputOptions
from ..source import ModelSource


@dataclass
class ExportCommand:
    source: ModelSource = field(default_factory=ModelSource)
    export: ExportOptions = field(default_factory=ExportOptions)
    output: OutputOptions = section(OutputOptions, only=("force",))
    runtime: RuntimeConfig = section(RuntimeConfig, only=("device", "dtype", "threads"), device="cpu", dtype="fp32")


def add_parser(sub) -> None:
    add_command(sub, "export", ExportCommand, run, help="write a model for other tools (transformers, llama.cpp)",
                description="Export MODEL: --to hf OUT_DIR writes a directory that transformers' "
                            "AutoModelForCausalLM.from_pretrained loads (also read by llama.cpp's converter and "
                            "mlx-lm), in --dtype; --to gguf FILE writes a llama.cpp model (GPT-2 architecture; "
                            "--type f32, f16 or q8_0).")


def run(cmd: ExportCommand) -> int:
    (fmt, out), src = cmd.export.to, cmd.source.model
    done = export_model(src, fmt, out, checkpoint=cmd.source.checkpoint, gguf_type=cmd.export.type,
                        merged=cmd.export.merged, force=cmd.output.force, device=cmd.runtime.device,
                        dtype=cmd.runtime.dtype)
    read = f"{done.weights}" + (f" (step {done.step})" if done.step is not None else "")
    if fmt == "gguf":
        log(f"{read} -> {out}: GGUF ({cmd.export.type}) for llama.cpp, e.g. llama-cli -m {quote(str(out))}")
    elif done.adapter is not None:
        log(f"{read} -> {out}: {done.architecture} base, LoRA adapter in PEFT's format in {done.adapter}; load "
            f"them with peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained("
            f"{str(out)!r}), {str(done.adapter)!r}) (or export --merged)")
    else:
        log(f"{read} -> {out}: {done.architecture}" + (" (LoRA merged)" if done.merged else "") + "; load it with "
            f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
