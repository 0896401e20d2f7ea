"""``tinygpt chat``: talk to an instruction-tuned run, turn by turn, in its prompt template."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

from ..config import add_command, section
from ..console import log
from ..data import instruct as ins
from ..device import RuntimeConfig
from ..errors import TinyGPTError
from ..generation import GenerationConfig, load
from ..source import ModelSource


@dataclass
class ChatCommand:
    source: ModelSource = field(default_factory=ModelSource)
    layout: ins.InstructOptions = field(default_factory=ins.InstructOptions)
    generation: GenerationConfig = section(GenerationConfig, max_new_tokens=256)
    runtime: RuntimeConfig = section(RuntimeConfig, dtype="fp32")


def add_parser(sub) -> None:
    add_command(sub, "chat", ChatCommand, run, help="talk to an instruction-tuned run",
                description="A conversation with MODEL (a fine-tuned run, or any model tinygpt sample takes): "
                            "each line you type is a user message; the reply is generated from the whole "
                            "conversation laid out in the run's prompt template, and ends at the end-of-text "
                            "token. /reset starts over; an empty line, Ctrl+D or /quit ends.")


def run(cmd: ChatCommand) -> int:
    lm = load(cmd.source.model, checkpoint=cmd.source.checkpoint, device=cmd.runtime.device, dtype=cmd.runtime.dtype)
    template = ins.run_template(lm.config, cmd.layout.template, lm.tokenizer)  # refused now, not at the first turn
    generation = dataclasses.replace(cmd.generation,
                                     stop=cmd.generation.stop + ins.stop_strings(template, lm.tokenizer))
    opening = [{"role": "system", "content": cmd.layout.system}] if cmd.layout.system else []
    messages = list(opening)
    log(f"{lm.checkpoint} | {template} template | /reset starts over, an empty line ends")
    turn = 0
    while True:
        if sys.stdin.isatty():
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        text = line.strip()
        if not text or text == "/quit":
            return 0
        if text == "/reset":
            messages = list(opening)
            continue
        try:
            lm.tokenizer.encode(text)
        except TinyGPTError as err:  # one unwritable message is not the end of the conversation
            log(f"notice: {err}; the message is dropped, the conversation goes on")
            continue
        messages.append({"role": "user", "content": text})
        prompt = ins.chat_prompt(template, messages, lm.tokenizer)
        if lm.encode_prompt(prompt)[1]:  # cropped to the context
            log(f"notice: the conversation is longer than the context; the model reads its last "
                f"{lm.model.config.block_size} tokens")
        reply = lm.generate(prompt, config=generation, seed=None if cmd.runtime.seed is None
                            else cmd.runtime.seed + turn, on_text=lambda i, piece: _write(piece))[0]
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not reply:
            log("notice: the reply is empty: the model ended its response at once; ask again, or /reset to "
                "start over")
        messages.append({"role": "assistant", "content": reply})
        turn += 1


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
