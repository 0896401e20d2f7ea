"""Write a HellaSwag-format JSONL of next-line questions cut from a text: each context is the
text before a line, the right ending is that line, and the wrong ones are other lines of the
same text. ``tinygpt eval RUN --choices OUT`` then says how often a model picks the real line.

    python bench/cloze_choices.py TEXT OUT.jsonl [--questions 200] [--endings 4] [--seed 0]

TEXT is anything ``tinygpt eval --data`` reads (e.g. a run's held-out text saved to a file)."""

from __future__ import annotations

import argparse
import json
import random

from tinygpt.data import read_text


def questions(text: str, n: int, endings: int, seed: int, context_chars: int = 400) -> list[dict]:
    lines = text.split("\n")
    starts, at = [], 0
    for line in lines:  # offset of each line in the text
        starts.append(at)
        at += len(line) + 1
    # Lines worth asking about: real verse or prose, with enough text before them.
    usable = [i for i, line in enumerate(lines) if 20 <= len(line.strip()) <= 80 and starts[i] >= context_chars]
    rng = random.Random(seed)
    out = []
    for i in rng.sample(usable, min(n, len(usable))):
        context = text[starts[i] - context_chars:starts[i]]
        wrong = rng.sample([j for j in usable if lines[j].strip() != lines[i].strip()], endings - 1)
        options = [lines[i]] + [lines[j] for j in wrong]
        order = list(range(endings))
        rng.shuffle(order)
        # The context ends with the newline before the line; nothing goes between them.
        out.append({"context": context, "endings": [options[k] for k in order], "label": order.index(0),
                    "delimiter": ""})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("text")
    p.add_argument("out")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--endings", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    qs = questions(read_text(args.text), args.questions, args.endings, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q) + "\n" for q in qs)
    print(f"wrote {len(qs)} questions to {args.out}")


if __name__ == "__main__":
    main()
