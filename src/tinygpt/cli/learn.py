"""``tinygpt learn``: the from-scratch rungs of the ladder to GPT (micrograd, BPE).

Each lesson's options are the library's config (``tinygpt.learn.micrograd.MicrogradConfig``,
``tinygpt.learn.bpe_compare.BPELessonConfig``); the work is the library's too. The makemore
rungs have their own command, ``tinygpt makemore``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import add_command, add_group, section
from ..console import log
from ..learn.bpe import render
from ..learn.bpe_compare import BPELessonConfig
from ..learn.bpe_compare import run_lesson as bpe_lesson
from ..learn.micrograd import MicrogradConfig, Step
from ..learn.micrograd import run_lesson as micrograd_lesson
from ..options import OutputOptions

EXAMPLE = "The quick brown fox can't jump 32.5 feet! Ünïcödé, 東京 and 🙂.<|endoftext|>"


@dataclass
class MicrogradCommand:
    lesson: MicrogradConfig = field(default_factory=MicrogradConfig)
    output: OutputOptions = section(OutputOptions, only=("out",), out="learn/micrograd")


@dataclass
class BPECommand:
    lesson: BPELessonConfig = field(default_factory=BPELessonConfig)
    output: OutputOptions = section(OutputOptions, only=("out",), out="learn/bpe")


def add_parser(sub) -> None:
    lessons = add_group(sub, "learn", help="the ladder to GPT: micrograd, BPE from scratch",
                        description="Small, readable from-scratch versions of what tinygpt uses, runnable and "
                                    "checked against the real libraries: a scalar autograd engine (micrograd) and "
                                    "the byte-level BPE tokenizer. See also 'tinygpt makemore'.")
    add_command(lessons, "micrograd", MicrogradCommand, run_micrograd,
                help="a scalar autograd engine and a tiny MLP trained on it",
                description="Train a small MLP made of scalar Values (micrograd: every +, *, tanh records itself, "
                            "and backward() applies the chain rule over that record) to separate two 2-D classes, "
                            "printing loss and accuracy; then draw its decision boundary and the computation "
                            "graph of one neuron as PNGs into --out.")
    add_command(lessons, "bpe", BPECommand, run_bpe,
                help="byte-level BPE from scratch, checked against tokenizers and GPT-2",
                description="Train the byte-level BPE tokenizer written plainly in tinygpt.learn.bpe_train on a "
                            "text, then compare it with the tokenizers library trained on the same settings "
                            "(merge by merge) and with GPT-2's tokenizer (bytes per token). Writes the merges "
                            "(bpe.json) and a readable vocabulary (vocab.txt) into --out.")


def run_micrograd(cmd: MicrogradCommand) -> int:
    cfg = cmd.lesson
    every = max(1, cfg.max_steps // 10)
    log(f"{cfg.dataset}: {cfg.samples} points, MLP {'-'.join(map(str, cfg.sizes))}, {cfg.max_steps} steps")

    def progress(s: Step) -> None:
        if s.step == 1 or s.step % every == 0:
            log(f"step {s.step:4d}  loss {s.loss:.4f}  accuracy {s.accuracy:6.1%}  lr {s.lr:.3f}")

    result = micrograd_lesson(cfg, cmd.output.out, on_step=progress)
    print(f"final: loss {result.loss:.4f}, accuracy {result.accuracy:.1%} "
          f"({round(result.accuracy * cfg.samples)}/{cfg.samples} points)")
    for path in result.pictures:
        print(path)
    return 0


def run_bpe(cmd: BPECommand) -> int:
    cfg = cmd.lesson
    result = bpe_lesson(cfg, log=log)
    bpe, merges = result.bpe, result.merges

    def show(pairs, start):
        return "\n".join(f"  {start + n:5d}  {render(a)} + {render(b)} -> {render(a + b)}"
                         for n, (a, b) in enumerate(pairs))

    print(f"trained {len(merges)} merges on {result.text_bytes / 1e6:.2f} MB of text "
          f"(split {cfg.split}) in {result.seconds:.1f}s")
    print(f"first merges:\n{show(merges[:8], 256)}")
    print(f"last merges:\n{show(merges[-8:], 256 + max(len(merges) - 8, 0))}")
    rate = result.bytes_per_token
    print(f"bytes per token on this text: ours {rate['ours']:.3f}, tokenizers library {rate['tokenizers']:.3f} "
          f"(same vocab size), GPT-2 {rate['gpt2']:.3f} (50257 tokens)")
    ids = bpe.encode(EXAMPLE, allowed_special="all")
    print(f"example: {len(EXAMPLE.encode('utf-8'))} bytes -> {len(ids)} tokens: "
          + " ".join(render(bpe.vocab[i]) for i in ids))
    agree, theirs = result.agree, len(result.library_merges)
    if agree == len(merges) == theirs:
        print(f"merges equal to the tokenizers library's: all {agree}, in the same order")
    else:
        print(f"merges equal to the tokenizers library's: the first {agree} of {len(merges)} (it made {theirs})")
    for path in bpe.save(cmd.output.out):
        log(f"wrote {path}")
    return 0
