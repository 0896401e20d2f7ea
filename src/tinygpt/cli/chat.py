"""``tinygpt chat``: talk to an instruction-tuned run, turn by turn, in its prompt template."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from ..config import add_arguments, cli_values, from_dict, opt, replace, section
from ..data import instruct as ins
from ..device import RuntimeConfig
from ..generation import GenerationConfig, load
from .common import log
from .sample import instruct_template


@dataclass
class ChatOptions:
    system: str | None = opt(None, "a system message that opens the conversation")
    template: str | None = opt(None, "prompt template (default: the one the run was fine-tuned with, else alpaca)",
                               choices=tuple(ins.TEMPLATES))
    checkpoint: str = opt("best", "which weights: best (lowest val loss), last, or a .safetensors path")


@dataclass
class ChatCommand:
    chat: ChatOptions = field(default_factory=ChatOptions)
    generation: GenerationConfig = section(GenerationConfig, max_new_tokens=256)
    runtime: RuntimeConfig = section(RuntimeConfig, dtype="fp32")


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to an instruction-tuned run",
                       description="A conversation with RUN: each line you type is a user message; the reply is "
                                   "generated from the whole conversation laid out in the run's prompt template, "
                                   "and ends at the end-of-text token. /reset starts over; an empty line, "
                                   "Ctrl+D or /quit ends.")
    p.add_argument("run", metavar="RUN", help="a fine-tuned run (or any model tinygpt sample takes)")
    add_arguments(p, ChatCommand)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cmd = from_dict(ChatCommand, cli_values(ChatCommand, args))
    lm = load(args.run, checkpoint=cmd.chat.checkpoint, device=cmd.runtime.device, dtype=cmd.runtime.dtype)
    template = instruct_template(lm.config, cmd.chat.template)
    generation = replace(cmd.generation, {"stop": cmd.generation.stop + ins.stop_strings(template, lm.tokenizer)})
    opening = [{"role": "system", "content": cmd.chat.system}] if cmd.chat.system else []
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
        messages.append({"role": "user", "content": text})
        prompt = ins.chat_prompt(template, messages, lm.tokenizer)
        if lm.encode_prompt(prompt)[1]:  # cropped to the context
            log(f"notice: the conversation is longer than the context; the model reads its last "
                f"{lm.model.config.block_size} tokens")
        reply = lm.generate(prompt, config=generation, seed=None if cmd.runtime.seed is None
                            else cmd.runtime.seed + turn, on_text=lambda i, piece: _write(piece))[0]
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})
        turn += 1


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
