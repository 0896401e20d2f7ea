"""``tinygpt makemore``: character-level name models, rung by rung, into one comparison table."""

from __future__ import annotations

import argparse

from .common import log

MODELS = ("bigram", "mlp", "mlp-bn", "wavenet", "gpt", "all")


def add_parser(sub) -> None:
    p = sub.add_parser("makemore", help="character-level name models: bigram, MLP, BatchNorm, WaveNet, GPT",
                       description="Train one rung of the makemore ladder on a list of words (built-in: 91k first "
                                   "names), print its train/val/test loss, sample new words, draw its pictures and "
                                   "add its row to OUT/ladder.md and OUT/ladder.png. Unset sizes take the rung's "
                                   "defaults, which train in under a minute on a laptop CPU.")
    p.add_argument("--model", choices=MODELS, default="mlp", help="the rung; 'all' climbs every one (default mlp)")
    p.add_argument("--data", default="names", help="'names' (built in) or a text file with one word per line")
    p.add_argument("--out", default="makemore", help="folder for the table and pictures (default ./makemore)")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--batch-size", type=int, help="examples per step (gpt: words per step)")
    p.add_argument("--lr", type=float, help="learning rate (SGD; gpt: AdamW)")
    p.add_argument("--block-size", type=int, help="context in characters (wavenet: a power of two)")
    p.add_argument("--n-embd", type=int, help="embedding width per character")
    p.add_argument("--n-hidden", type=int, help="hidden layer width (mlp, mlp-bn, wavenet)")
    p.add_argument("--layers", type=int, help="hidden layers (mlp, mlp-bn)")
    p.add_argument("--n-layer", type=int, help="transformer blocks (gpt)")
    p.add_argument("--n-head", type=int, help="attention heads (gpt)")
    p.add_argument("--backward", choices=("autograd", "manual"), default="autograd",
                   help="mlp-bn: 'manual' trains with the hand-written backward pass, checked against autograd")
    p.add_argument("--samples", type=int, default=20, help="new words to sample (default 20)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split, the initialisation and the batches")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..learn.makemore.rungs import RUNGS, MakemoreConfig
    from ..learn.makemore.rungs import run as run_rung

    settings = {k: getattr(args, k) for k in ("data", "out", "steps", "batch_size", "lr", "block_size", "n_embd",
                                              "n_hidden", "layers", "n_layer", "n_head", "backward", "samples",
                                              "seed")}
    configs = [MakemoreConfig(model=m, **settings) for m in (RUNGS if args.model == "all" else (args.model,))]
    files = []
    for cfg in configs:
        log(f"== makemore {cfg.model}" + (" (manual backward)" if cfg.backward == "manual" else ""))
        results, files = run_rung(cfg, log)
        for r in results:
            print(f"{r.rung}: {r.params:,} parameters, {r.steps:,} steps in {r.seconds:.1f}s; "
                  f"loss train {r.train:.4f}  val {r.val:.4f}  test {r.test:.4f}")
            if r.samples:
                print(f"  samples: {', '.join(r.samples)}")
            for path in r.pictures:
                log(f"wrote {path}")
    for path in files:
        log(f"wrote {path}")
    return 0
