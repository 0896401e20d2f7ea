"""``tinygpt sample``: load a model, stream its continuation of a prompt to stdout."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

from ..config import add_command, section
from ..console import log
from ..data import instruct as ins
from ..device import RuntimeConfig
from ..generation import GenerationConfig, load
from ..generation.prompts import PromptOptions
from ..source import ModelSource


@dataclass
class SampleCommand:
    source: ModelSource = field(default_factory=ModelSource)
    prompt: PromptOptions = field(default_factory=PromptOptions)
    layout: ins.InstructOptions = field(default_factory=ins.InstructOptions)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    runtime: RuntimeConfig = section(RuntimeConfig, dtype="fp32")  # exact logits unless asked otherwise


def add_parser(sub) -> None:
    add_command(sub, "sample", SampleCommand, run, help="generate text from a trained run",
                description="Generate text from MODEL: a run directory written by 'tinygpt train' or "
                            "'tinygpt finetune', a Hugging Face model directory or a hub name.")


def run(cmd: SampleCommand) -> int:
    prompts = cmd.prompt.prompts()
    lm = load(cmd.source.model, checkpoint=cmd.source.checkpoint, device=cmd.runtime.device, dtype=cmd.runtime.dtype)
    generation, layout = cmd.generation, ""
    if cmd.prompt.instruct:
        template = ins.run_template(lm.config, cmd.layout.template, lm.tokenizer)
        prompts = [ins.prompt_text(template, p, system=cmd.layout.system) for p in prompts]
        generation = dataclasses.replace(generation, stop=generation.stop + ins.stop_strings(template, lm.tokenizer))
        layout = f" | {template} template"
    log(f"{lm.checkpoint}" + (f": step {lm.step}" if lm.step is not None else "")
        + (f", val loss {lm.val_loss:.4f}" if lm.val_loss is not None else "")
        + f" | {lm.model.num_params() / 1e6:.2f}M parameters on {lm.device}{layout}")
    echoes = []
    for prompt in prompts:
        ids, cropped = lm.encode_prompt(prompt)
        if cropped:
            log(f"notice: a prompt is longer than the context; using its last {lm.model.config.block_size} tokens")
        echoes.append(lm.tokenizer.decode(ids[0].tolist()) if prompt and not cmd.prompt.instruct else "")
    n = generation.num_samples
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
    texts = lm.generate(prompts[0] if len(prompts) == 1 else prompts, config=generation, seed=cmd.runtime.seed,
                        on_text=on_text)
    sys.stdout.write("\n")
    for i in range(1, rows):
        header(i)
        sys.stdout.write(texts[i] + "\n")
    sys.stdout.flush()
    return 0
