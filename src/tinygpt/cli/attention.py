"""``tinygpt attention``: what each layer and head of a model attends to, as pictures and text."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_checkpoint_option, log

DEFAULT_TEXT = "The cat sat on the mat. It was fluffy."


def add_parser(sub) -> None:
    p = sub.add_parser(
        "attention", help="draw and report a model's attention on a text",
        description="Capture the attention weights of every layer and head for a text and draw them: one head, "
                    "each layer's heads, all heads, attention rollout and entropy per head (PNGs); print the "
                    "most-attended tokens and the heads' roles (previous token, first token, self, induction).")
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="run directory, Hugging Face GPT-2 name or directory (or use --preset NAME --untrained)")
    p.add_argument("--text", default=DEFAULT_TEXT, help=f"the text to look at (default: {DEFAULT_TEXT!r})")
    add_checkpoint_option(p)
    p.add_argument("--preset", help="with --untrained: random weights of this preset's shape")
    p.add_argument("--untrained", action="store_true",
                   help="random weights (MODEL's or --preset's shape), to compare a trained model against")
    p.add_argument("--seed", type=int, default=0, help="seed of --untrained weights and of the induction test")
    p.add_argument("--layer", type=int, help="the layer to draw (default: every layer's grid)")
    p.add_argument("--head", type=int, help="also draw this head of --layer (default layer 0) on its own, labelled")
    p.add_argument("--top-k", type=int, default=3, help="most-attended tokens listed per token (default 3)")
    p.add_argument("--residual", type=float, default=0.5,
                   help="rollout: weight of the residual stream mixed into each layer (0: attention alone)")
    p.add_argument("--compare", nargs=2, metavar=("MODEL_A", "MODEL_B"),
                   help="draw --layer/--head (default 0/0) of two models side by side")
    p.add_argument("--out", help="folder for the pictures (default: RUN/attention, else ./attention)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--show", action="store_true", help="open the pictures in windows as well")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..analysis import attention, pictures, source
    from ..checkpoint import atomic_write_text
    from ..errors import TinyGPTError
    from ..run import RunDir

    if not args.text:
        raise TinyGPTError("the --text is empty; give the text whose attention to show")
    if args.top_k < 1:
        raise TinyGPTError(f"--top-k must be at least 1, got {args.top_k}")
    if args.compare:
        if args.model or args.preset:
            raise TinyGPTError("--compare takes its two models itself; drop MODEL / --preset")
        atts = []
        for m in args.compare:
            lm, name = source.open_model(m, checkpoint=args.checkpoint)
            atts.append(attention.capture(lm, args.text, name))
        out = Path(args.out or "attention")
        path = attention.compare(*atts, out, args.layer or 0, args.head or 0)
        log(f"wrote {path}")
        if args.show:
            pictures.show(path)
        return 0
    lm, name = source.open_model(args.model, checkpoint=args.checkpoint, preset=args.preset,
                                 untrained=args.untrained, seed=args.seed, text=args.text)
    att = attention.capture(lm, args.text, name)
    result = attention.analyse(lm, att, k=args.top_k, layer=args.layer)
    if args.out:
        out = Path(args.out)
    elif args.model and RunDir.is_run(args.model) and not args.untrained:
        out = RunDir(args.model).pictures_dir("attention")
    else:
        out = Path("attention")
    paths = attention.draw(att, out, layer=args.layer, head=args.head, residual=args.residual,
                           heads=result["heads"])
    print(attention.format_report(result))
    for p in paths:
        log(f"wrote {p}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    if args.show:
        for p in paths:
            pictures.show(p)
    return 0
