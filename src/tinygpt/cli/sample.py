"""``tinygpt sample``: load a run, stream its continuation of a prompt to stdout."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import add_arguments, cli_values, from_dict, opt, replace, section
from ..data import instruct as ins
from ..device import RuntimeConfig
from ..errors import TinyGPTError
from ..generation import GenerationConfig, load
from .common import log


@dataclass
class PromptOptions:
    prompt: str = opt("", "text to continue (default: start of a document)")
    prompt_file: str | None = opt(None, "read the prompt from this file instead")
    prompts_file: str | None = opt(None, "a file of prompts, one per line, generated as one batch")
    checkpoint: str = opt("best", "which weights: best (lowest val loss), last, or a .safetensors path")
    instruct: bool = opt(False, "the prompt is an instruction: lay it out in the fine-tune's prompt template and "
                                "print the response, which ends at the end-of-text token")
    template: str | None = opt(None, "--instruct: the template (default: the one the run was fine-tuned with, "
                                     "else alpaca)", choices=tuple(ins.TEMPLATES))
    system: str | None = opt(None, "--instruct: a system message")


@dataclass
class SampleCommand:
    prompt: PromptOptions = field(default_factory=PromptOptions)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    runtime: RuntimeConfig = section(RuntimeConfig, dtype="fp32")  # exact logits unless asked otherwise


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run directory written by 'tinygpt train'.")
    p.add_argument("run", metavar="RUN", help="run directory, e.g. runs/shakespeare-char-tiny-...")
    add_arguments(p, SampleCommand)
    p.set_defaults(func=run)


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TinyGPTError(f"cannot read {flag} {path}: {e}; give a UTF-8 text file") from None


def run(args: argparse.Namespace) -> int:
    cmd = from_dict(SampleCommand, cli_values(SampleCommand, args))
    prompts = [cmd.prompt.prompt]
    if cmd.prompt.prompt_file:
        prompts = [_read(cmd.prompt.prompt_file, "--prompt-file")]
    if cmd.prompt.prompts_file:
        prompts = [line for line in _read(cmd.prompt.prompts_file, "--prompts-file").splitlines() if line.strip()]
        if not prompts:
            raise TinyGPTError(f"--prompts-file {cmd.prompt.prompts_file} has no prompts; write one per line")
    lm = load(args.run, checkpoint=cmd.prompt.checkpoint, device=cmd.runtime.device, dtype=cmd.runtime.dtype)
    if cmd.prompt.instruct:
        template = instruct_template(lm.config, cmd.prompt.template)
        prompts = [ins.prompt_text(template, p, system=cmd.prompt.system) for p in prompts]
        cmd.generation = replace(cmd.generation, {"stop": cmd.generation.stop + ins.stop_strings(template,
                                                                                                  lm.tokenizer)})
    log(f"{lm.checkpoint}" + (f": step {lm.step}" if lm.step is not None else "")
        + (f", val loss {lm.val_loss:.4f}" if lm.val_loss is not None else "")
        + f" | {lm.model.num_params() / 1e6:.2f}M parameters on {lm.device}")
    echoes = []
    for prompt in prompts:
        ids, cropped = lm.encode_prompt(prompt)
        if cropped:
            log(f"notice: a prompt is longer than the context; using its last {lm.model.config.block_size} tokens")
        echoes.append(lm.tokenizer.decode(ids[0].tolist()) if prompt and not cmd.prompt.instruct else "")
    n = cmd.generation.num_samples
    rows = len(prompts) * n

    def header(i: int) -> None:
        if len(prompts) > 1:
            sys.stdout.write(f"--- prompt {i // n + 1}" + (f", sample {i % n + 1}" if n > 1 else "") + " ---\n")
        elif n > 1:
            sys.stdout.write(f"--- sample {i + 1} ---\n")
        sys.stdout.write(echoes[i // n])
        sys.stdout.flush()

    # All rows are drawn as one batch; the first streams as it is generated, the others
    # print when it is done (the same text tinygpt.load(...).generate(...) returns).
    def on_text(i: int, piece: str) -> None:
        if i == 0:
            sys.stdout.write(piece)
            sys.stdout.flush()

    header(0)
    texts = lm.generate(prompts[0] if len(prompts) == 1 else prompts, config=cmd.generation, seed=cmd.runtime.seed,
                        on_text=on_text)
    sys.stdout.write("\n")
    for i in range(1, rows):
        header(i)
        sys.stdout.write(texts[i] + "\n")
    sys.stdout.flush()
    return 0


def instruct_template(config: dict, given: str | None) -> str:
    """The template to lay instructions out in: ``given``, else the fine-tune's own, else the default."""
    return given or config.get("finetune", {}).get("template") or ins.DEFAULT_TEMPLATE
