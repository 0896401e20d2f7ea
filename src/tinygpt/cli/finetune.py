"""``tinygpt finetune``: adapt a base model to new text or instructions (the library's FinetuneSession)."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from shlex import quote

from ..compress import QuantizeOptions, quantize_run
from ..config import add_command, like, sections_of
from ..console import log
from ..finetune import FinetuneRunConfig, FinetuneSession
from ..finetune.config import NOT_FLAGS
from ..source import ModelSource
from ..train import SessionOptions, fit_and_report


@dataclass
class BaseModel:
    """The model to fine-tune (its --checkpoint is the finetune section's): left out with --resume."""
    model: str | None = like(ModelSource, "model", None)


# The base, how the session starts, and the fine-tune's sections less what it takes from the base.
FinetuneCommand = make_dataclass("FinetuneCommand", [
    ("base", BaseModel, field(default_factory=BaseModel)),
    ("session", SessionOptions, field(default_factory=SessionOptions)),
    *sections_of(FinetuneRunConfig, leave=NOT_FLAGS)])


def add_parser(sub) -> None:
    add_command(sub, "finetune", FinetuneCommand, run, given=FinetuneRunConfig,
                help="fine-tune a run, GPT-2 or a Hugging Face model on text or instructions",
                description="Fine-tune MODEL (a tinygpt run, a Hugging Face GPT-2 / Llama directory, or a hub "
                            "name such as gpt2) on --data: text (a file, folder or shakespeare) or "
                            "instruction data (.jsonl of instruction/input/response or chat messages; the "
                            "loss covers the responses only). --method full trains every weight; lora, "
                            "adapter and prompt train a small adapter saved alone. The result is a run: "
                            "sample, eval, chat, attention and export take it.")


def run(cmd, given: dict) -> int:
    session = FinetuneSession.from_options(cmd.session, given, base=cmd.base.model, log=log)
    code = fit_and_report(session, resumed=bool(cmd.session.resume), log=log)
    ft = session.cfg.finetune
    if code == 0 and ft.qat is not None and session.dist.is_main:  # the quantized run it trained for
        opts = QuantizeOptions(scheme=ft.qat, group_size=ft.group_size, quantize_head=ft.quantize_head)
        out = quantize_run(session.run.path, None, opts, method="qat", log=log)
        log(f"quantized as trained ({ft.qat}) -> {out}; try: tinygpt sample {quote(str(out))}")
    return code
