"""Fine-tune one base with each method on the same instruction set, side by side in one run:
time, trainable parameters, what the run saves, held-out loss before and after, and how
often the greedy answer to a held-out instruction is exactly right.

    python bench/finetune_methods.py BASE OUT_DIR [--steps 150] [--methods full,lora,adapter,prompt]

The instruction set is made here: "Spell the word: king" -> "k i n g", over words of BASE's own
training text (so a char model knows every character), held-out words never trained on. The
simple template keeps to letters, ':' and newlines, which a Shakespeare char model knows."""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import tinygpt
from tinygpt.data import instruct as ins
from tinygpt.finetune import FinetuneSession
from tinygpt.train import run_data


def spelling_set(base: str, path: Path, n: int = 600, seed: int = 0) -> None:
    text = run_data(base, log=lambda m: None).tokenizer.decode(run_data(base, log=lambda m: None).train[:400_000])
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{3,9}", text)})
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for w in rng.sample(words, n):
            f.write(json.dumps({"instruction": f"Spell the word: {w}", "response": " ".join(w)}) + "\n")


def exact_answers(run: Path, examples: list, template: str) -> float:
    lm = tinygpt.load(run)
    prompts = [ins.prompt_text(template, e.turns[0].user) for e in examples]
    answers = lm.generate(prompts, 40, temperature=0.0, stop=ins.stop_strings(template, lm.tokenizer))
    return sum(a.strip() == e.turns[0].assistant for a, e in zip(answers, examples)) / len(examples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--methods", default="full,lora,adapter,prompt")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "spelling.jsonl"
    spelling_set(args.base, data)
    rows = []
    for method in args.methods.split(","):
        session = FinetuneSession.start(args.base, {
            "data": str(data), "template": "simple", "method": method, "out": str(out / method),
            "max_steps": args.steps, "eval_interval": 50, "progress": False, "max_new_tokens": 0,
            "soft_prompt_init": "User:\nSpell the word: king\n\nAssistant:\nk i n g"}, force=True, log=lambda m: None)
        tr = session.trainer
        before = tr.evaluate(session.batches("val", session.cfg.runtime.seed + 2), session.cfg.train.eval_batches)
        started = time.perf_counter()
        summary = session.fit()
        seconds = time.perf_counter() - started
        trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
        saved = session.run.weights_path("best")
        accuracy = exact_answers(out / method, session.data.val_examples, "simple")
        rows.append({"method": method, "seconds": round(seconds, 1), "trainable": trainable,
                     "saved_bytes": saved.stat().st_size, "saved": saved.name, "val_before": round(before, 4),
                     "val_after": round(summary["best_val"], 4), "exact": accuracy,
                     "lr": session.cfg.train.lr, "dtype": str(tr.dtype)})
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
