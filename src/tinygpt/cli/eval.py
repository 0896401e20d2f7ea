"""``tinygpt eval``: loss, perplexity and bits per byte over a text, multiple choice
(HellaSwag), and BLEU/ROUGE of generated continuations, for one or more models."""

from __future__ import annotations

import argparse

from .common import add_checkpoint_option, log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="score models: bits per byte, HellaSwag-style multiple choice, BLEU/ROUGE",
        description="Score every token of a text (sliding windows, --stride) with each model; with --choices, "
                    "answer multiple-choice questions; with --generate N, continue N held-out prompts and score "
                    "them with BLEU and ROUGE. One table per kind; runs also keep the rows in their eval.json.")
    p.add_argument("models", metavar="MODEL", nargs="+", help="run directories, Hugging Face names or directories")
    p.add_argument("--data", help="a file, folder, glob or shakespeare (default: the first run's validation split)")
    p.add_argument("--stride", type=int, help="tokens between window starts (default: the context, no overlap); "
                                              "each scored token then sees at least context - stride tokens")
    p.add_argument("--max-chars", type=int, help="score only the first N characters of the text")
    p.add_argument("--batch-size", type=int, default=8, help="windows (or endings, or prompts) per forward")
    add_checkpoint_option(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", metavar="FILE", help="also write the tables as JSON")
    g = p.add_argument_group("multiple choice")
    g.add_argument("--choices", metavar="JSONL", help="questions: hellaswag (the official validation set, "
                                                      "downloaded once) or a JSONL of context, endings, label")
    g.add_argument("--protocol", default="harness", choices=("harness", "llmc"),
                   help="how questions become tokens: lm-evaluation-harness's (default) or llm.c's script")
    g.add_argument("--limit", type=int, help="only the first N questions")
    g = p.add_argument_group("generation")
    g.add_argument("--generate", type=int, metavar="N", help="continue N held-out prompts greedily; BLEU and ROUGE")
    g.add_argument("--prompt-tokens", type=int, help="tokens per prompt (default: half the context)")
    g.add_argument("--new-tokens", type=int, help="tokens to generate and compare (default: 64, or less)")
    g.add_argument("--seed", type=int, default=0, help="picks the prompts (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import atomic_write_text
    from ..data import read_text
    from ..errors import TinyGPTError
    from ..eval import choice, continuations, perplexity
    from ..eval.report import open_model
    from ..run import RunDir

    for flag in ("batch_size", "max_chars", "limit", "generate"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise TinyGPTError(f"--{flag.replace('_', '-')} must be at least 1")
    # Bits per byte unless only questions were asked for; a text for it and for --generate.
    score_text = args.data is not None or args.choices is None
    text = where = None
    if args.data:
        text, where = read_text(args.data, args.max_chars, log=log), args.data
    elif score_text or args.generate:
        if not RunDir.is_run(args.models[0]):
            raise TinyGPTError(f"{args.models[0]} is not a tinygpt run, so it has no validation split; give --data")
        # Named by the run's folder, not the path as typed, so that evaluations from anywhere line up.
        name = RunDir(args.models[0]).path.resolve().name
        text, where = perplexity.validation_text(args.models[0], log), f"validation split of {name}"
        text = text[:args.max_chars] if args.max_chars else text
    # Read before any model loads, so that a bad file fails at once.
    questions = choice.read_questions(args.choices, args.protocol, args.limit, log) if args.choices else None
    tables: dict[str, list[dict]] = {"perplexity": [], "multiple_choice": [], "generate": []}
    for source in args.models:
        lm = open_model(source, checkpoint=args.checkpoint, device=args.device)
        if score_text:
            tables["perplexity"].append(perplexity.evaluate(source, text, where, lm=lm, stride=args.stride,
                                                            batch_size=args.batch_size))
        if questions:
            tables["multiple_choice"].append(choice.evaluate(source, questions, args.choices, lm=lm,
                                                             protocol=args.protocol, batch_size=args.batch_size)[0])
        if args.generate:
            tables["generate"].append(continuations.evaluate(
                source, text, where, args.generate, lm=lm, seed=args.seed, prompt_tokens=args.prompt_tokens,
                new_tokens=args.new_tokens, batch_size=args.batch_size)[0])
    if tables["perplexity"]:
        print_perplexity(tables["perplexity"])
        log(f"scored {where}: {len(text):,} characters, stride {args.stride or 'context'}")
    if tables["multiple_choice"]:
        print_choices(tables["multiple_choice"])
    if tables["generate"]:
        print_generation(tables["generate"])
        log(f"generated for {args.generate} prompts from {where} (seed {args.seed}), greedy")
    if args.json:
        atomic_write_text(args.json, json.dumps({k: v for k, v in tables.items() if v}, indent=1) + "\n")
    return 0


def print_perplexity(rows: list[dict]) -> None:
    print(f"{'model':40} {'tokenizer':>9} {'tokens':>10} {'loss':>8} {'ppl':>9} {'bits/byte':>10} {'s':>7}")
    for r in rows:
        print(f"{r['model'][-40:]:40} {r['tokenizer']:>9} {r['tokens']:10,d} {r['loss']:8.4f} {r['perplexity']:9.3f} "
              f"{r['bits_per_byte']:10.4f} {r['seconds']:7.1f}")
    if len({r["tokenizer"] for r in rows}) > 1:
        print("models with different tokenizers compare only in bits per byte (loss and perplexity are per token)")


def print_choices(rows: list[dict]) -> None:
    print(f"{'model':40} {'protocol':>8} {'questions':>9} {'acc':>7} {'acc_norm':>8} {'acc_token':>9} {'s':>7}")
    for r in rows:
        print(f"{r['model'][-40:]:40} {r['protocol']:>8} {r['questions']:9,d} {100 * r['acc']:7.2f} "
              f"{100 * r['acc_norm']:8.2f} {100 * r['acc_token']:9.2f} {r['seconds']:7.1f}")
    print("acc: largest summed log-likelihood; acc_norm: per character of the ending (lm-evaluation-harness's "
          "acc_norm); acc_token: per token (what llm.c and build-nanogpt call acc_norm)")


def print_generation(rows: list[dict]) -> None:
    print(f"{'model':40} {'prompts':>7} {'BLEU':>6} {'ROUGE-1':>7} {'ROUGE-2':>7} {'ROUGE-L':>7} {'s':>7}")
    for r in rows:
        print(f"{r['model'][-40:]:40} {r['generate']:7d} {r['bleu']:6.2f} {r['rouge1']:7.2f} {r['rouge2']:7.2f} "
              f"{r['rougeL']:7.2f} {r['seconds']:7.1f}")
