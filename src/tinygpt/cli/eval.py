"""``tinygpt eval``: loss, perplexity and bits per byte over a text, multiple choice
(HellaSwag), and BLEU/ROUGE of generated continuations, for one or more models."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..checkpoint import atomic_write_text
from ..config import add_command, like, section
from ..console import log
from ..device import RuntimeConfig
from ..eval.suite import EvalOptions, evaluate_models
from ..options import OutputOptions
from ..source import ModelSource


@dataclass
class EvalCommand:
    models: list[str] = like(ModelSource, "model", [])
    source: ModelSource = section(ModelSource, only=("checkpoint",))
    scores: EvalOptions = field(default_factory=EvalOptions)
    runtime: RuntimeConfig = section(RuntimeConfig, dtype="fp32", seed=0)  # exact scores; the same prompts
    output: OutputOptions = section(OutputOptions, only=("json",))


def add_parser(sub) -> None:
    add_command(sub, "eval", EvalCommand, run,
                help="score models: bits per byte, HellaSwag-style multiple choice, BLEU/ROUGE",
                description="Score every token of a text (sliding windows, --stride) with each MODEL; with "
                            "--choices, answer multiple-choice questions; with --generate N, continue N held-out "
                            "prompts (picked by --seed) and score them with BLEU and ROUGE. One table per kind; "
                            "runs also keep the rows in their eval.json.")


def run(cmd: EvalCommand) -> int:
    opts = cmd.scores
    tables, text, where = evaluate_models(cmd.models, opts, checkpoint=cmd.source.checkpoint,
                                          device=cmd.runtime.device, dtype=cmd.runtime.dtype,
                                          seed=cmd.runtime.seed, log=log)
    if tables["perplexity"]:
        print_perplexity(tables["perplexity"])
        log(f"scored {where}: {len(text):,} characters, stride {opts.stride or 'context'}")
    if tables["multiple_choice"]:
        print_choices(tables["multiple_choice"])
    if tables["generate"]:
        print_generation(tables["generate"])
        log(f"generated for {opts.generate} prompts from {where} (seed {cmd.runtime.seed}), greedy")
    if cmd.output.json:
        atomic_write_text(cmd.output.json, json.dumps({k: v for k, v in tables.items() if v}, indent=1) + "\n")
    return 0


def _width(rows: list[dict]) -> int:
    # Names are shown whole (a path cut at its start reads as another one), the column as wide as the longest.
    return max(len("model"), *(len(r["model"]) for r in rows))


def print_perplexity(rows: list[dict]) -> None:
    w = _width(rows)
    print(f"{'model':{w}} {'tokenizer':>9} {'tokens':>10} {'loss':>8} {'ppl':>9} {'bits/byte':>10} {'s':>7}")
    for r in rows:
        print(f"{r['model']:{w}} {r['tokenizer']:>9} {r['tokens']:10,d} {r['loss']:8.4f} {r['perplexity']:9.3f} "
              f"{r['bits_per_byte']:10.4f} {r['seconds']:7.1f}")
    if len({r["tokenizer"] for r in rows}) > 1:
        print("models with different tokenizers compare only in bits per byte (loss and perplexity are per token)")


def print_choices(rows: list[dict]) -> None:
    w = _width(rows)
    print(f"{'model':{w}} {'protocol':>8} {'questions':>9} {'acc':>7} {'acc_norm':>8} {'acc_token':>9} {'s':>7}")
    for r in rows:
        print(f"{r['model']:{w}} {r['protocol']:>8} {r['questions']:9,d} {100 * r['acc']:7.2f} "
              f"{100 * r['acc_norm']:8.2f} {100 * r['acc_token']:9.2f} {r['seconds']:7.1f}")
    print("acc: largest summed log-likelihood; acc_norm: per character of the ending (lm-evaluation-harness's "
          "acc_norm); acc_token: per token (what llm.c and build-nanogpt call acc_norm)")


def print_generation(rows: list[dict]) -> None:
    w = _width(rows)
    print(f"{'model':{w}} {'prompts':>7} {'BLEU':>6} {'ROUGE-1':>7} {'ROUGE-2':>7} {'ROUGE-L':>7} {'s':>7}")
    for r in rows:
        print(f"{r['model']:{w}} {r['generate']:7d} {r['bleu']:6.2f} {r['rouge1']:7.2f} {r['rouge2']:7.2f} "
              f"{r['rougeL']:7.2f} {r['seconds']:7.1f}")
