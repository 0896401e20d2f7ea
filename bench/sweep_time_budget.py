"""Which model, batch and learning rate reach the lowest validation loss in a time budget?

    python bench/sweep_time_budget.py --time 300 --out sweep.json            # the built-in grid
    python bench/sweep_time_budget.py --time 300 --only small-256,tiny        # some of it
    python bench/sweep_time_budget.py --time 300 --data books/ --out b.json   # another corpus

Each candidate is a whole ``tinygpt train`` run (the real loop: data, evaluation,
checkpoints) with ``--max-time``; its last validation loss (the loss on the held-out
tail of the corpus, nats per token) is what the candidate scores. Runs go one after
another, never side by side, so each has the machine to itself (and computes on every core:
a momentary load as one starts must not halve its threads); results are appended to
``--out`` as they finish, so a long sweep can be stopped and read at any time.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinygpt.device import ALL_CORES
from tinygpt.run import RunDir

# name -> tinygpt train flags. Shapes keep a head size of 64 where they can: at these
# widths it trained faster per token than 32 on a 2-core AMX CPU.
GRID = {
    "tiny": [],  # what tinygpt train picks itself (--preset auto)
    "tiny-adamw": ["--optimizer", "adamw"],  # char-tiny as it was before
    "small-256": ["--preset", "char-small", "--batch-size", "16"],
    "small-128": ["--preset", "char-small", "--block-size", "128", "--batch-size", "32"],
    "small-256-lr3e-3": ["--preset", "char-small", "--batch-size", "16", "--lr", "3e-3"],
    "small-256-lr1e-3": ["--preset", "char-small", "--batch-size", "16", "--lr", "1e-3"],
    "deep-256": ["--preset", "char-small", "--n-layer", "6", "--batch-size", "16"],
    "baby": ["--preset", "baby", "--batch-size", "16"],
    "tiny-muon": ["--optimizer", "muon"],
    "tiny-wsd": ["--schedule", "wsd"],
    "tiny-muon-wsd": ["--optimizer", "muon", "--schedule", "wsd"],
    "tiny-b16": ["--batch-size", "16"],
    "tiny-lr1e-2": ["--lr", "1e-2"],
    "tiny-muon-lr1e-2": ["--optimizer", "muon", "--lr", "1e-2"],
    # modded-nanogpt's changes that tinygpt's flags already offer, one at a time on the
    # default (char-tiny, Muon, the preset pinned so that every run trains the same shape).
    # 5 minutes on Shakespeare, 2-core AMX Xeon, val loss: base 1.4530, qknorm 1.4661,
    # untied 1.4546, rope 1.4526, rmsnorm 1.4704, all 1.4800 (qk-norm and RMSNorm cost
    # 12-19% of the steps): none won, the defaults stay.
    "mn-base": ["--preset", "char-tiny"],
    "mn-qknorm": ["--preset", "char-tiny", "--qk-norm", "true"],
    "mn-untied": ["--preset", "char-tiny", "--tie-embeddings", "false"],
    "mn-rope": ["--preset", "char-tiny", "--pos-emb", "rope"],
    "mn-rmsnorm": ["--preset", "char-tiny", "--norm", "rmsnorm"],
    "mn-all": ["--preset", "char-tiny", "--qk-norm", "true", "--tie-embeddings", "false", "--pos-emb", "rope",
               "--norm", "rmsnorm"],
    # The ones that needed model code (round two of issue 23), on the same base.
    "mn-relu2": ["--preset", "char-tiny", "--mlp", "relu2"],
    "mn-zero-init": ["--preset", "char-tiny", "--init-proj", "zero"],
    "mn-softcap": ["--preset", "char-tiny", "--logit-softcap", "15"],
    "mn-unet": ["--preset", "char-tiny", "--unet-skips", "true"],
    "mn-value-embeds": ["--preset", "char-tiny", "--value-embeds", "true"],
    # Batch and window warmup (tinygpt.train.curriculum): a quarter, then half of the batch
    # or window over the first 30% of the budget.
    "mn-batch-warmup": ["--preset", "char-tiny", "--batch-warmup", "0.3"],
    "mn-window-warmup": ["--preset", "char-tiny", "--window-warmup", "0.3"],
    # The same at an equal number of steps (the schedule laid over 700 steps, no time limit):
    # free of the machine's speed, which moved 5-minute runs of one shape by 8% in steps.
    "steps-base": ["--preset", "char-tiny", "--max-steps", "700", "--max-time", "1h"],
    "steps-value-embeds": ["--preset", "char-tiny", "--value-embeds", "true", "--max-steps", "700", "--max-time", "1h"],
    **{f"steps-{name}": ["--preset", "char-tiny", *flags, "--max-steps", "700", "--max-time", "1h"]
       for name, flags in {"qknorm": ["--qk-norm", "true"], "untied": ["--tie-embeddings", "false"],
                           "rope": ["--pos-emb", "rope"], "rmsnorm": ["--norm", "rmsnorm"]}.items()},
    # torch.compile: the first run fills inductor's on-disk cache, the second reuses it.
    "mn-compile": ["--preset", "char-tiny", "--compile", "true"],
    "mn-compile-warm": ["--preset", "char-tiny", "--compile", "true"],
    "tiny-muon-wsd-lr1e-2": ["--optimizer", "muon", "--schedule", "wsd", "--lr", "1e-2"],
    "tiny-muon-b16": ["--optimizer", "muon", "--batch-size", "16"],
    "mid-192": ["--n-embd", "192", "--n-head", "3"],
    "mid-192-muon-wsd": ["--n-embd", "192", "--n-head", "3", "--optimizer", "muon", "--schedule", "wsd"],
    # Second round, on top of char-tiny with Muon and exact GELU: position encoding, norms, width, depth.
    "tiny-rope": ["--pos-emb", "rope"],
    "tiny-llama": ["--pos-emb", "rope", "--norm", "rmsnorm", "--bias", "false"],
    "tiny-rope-qknorm": ["--pos-emb", "rope", "--qk-norm", "true"],
    "tiny-6l": ["--n-layer", "6"],
    "tiny-192": ["--n-embd", "192", "--n-head", "3"],
    "tiny-t256-b16": ["--block-size", "256", "--batch-size", "16"],
    # Third round: width at a fixed budget (Muon, context 128, batch 32), for the tokens-per-parameter rule.
    "tiny-192-rope": ["--n-embd", "192", "--n-head", "3", "--pos-emb", "rope"],
    "tiny-256": ["--n-embd", "256", "--n-head", "4"],
    "tiny-256-rope": ["--n-embd", "256", "--n-head", "4", "--pos-emb", "rope"],
}
# The tiny-* variants were measured on the 128-wide model, called char-tiny then and
# char-nano now; pin it, or --preset auto would size them to the budget first.
GRID = {name: flags if name == "tiny" or "--preset" in flags else ["--preset", "char-nano", *flags]
        for name, flags in GRID.items()}


def run_one(name: str, flags: list[str], data: str, seconds: float, workdir: Path) -> dict:
    out = workdir / name
    cmd = [sys.executable, "-m", "tinygpt", "train", "--data", data, "--out", str(out), "--max-time", str(seconds),
           "--progress", "false", "--max-new-tokens", "0", "--threads", str(ALL_CORES), *flags]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"name": name, "flags": flags, "error": proc.stderr.strip().splitlines()[-1:]}
    run = RunDir.open(out)
    records = run.read_metrics()
    evals = [r for r in records if "val_loss" in r]
    config = run.read_config()
    last = records[-1]
    return {"name": name, "flags": flags, "val_loss": evals[-1]["val_loss"], "train_loss": evals[-1].get("train_loss"),
            "steps": last["step"], "tokens": last["tokens"], "wall_s": round(wall, 1),
            "dtype": config["runtime"]["dtype"], "threads": config["runtime"]["threads"], "model": config["model"],
            "lr": config["train"]["lr"], "evals": [[r["step"], r["val_loss"]] for r in evals],
            "batch_size": config["train"]["batch_size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=300, help="seconds per run (default 300)")
    ap.add_argument("--data", default="shakespeare")
    ap.add_argument("--only", help="comma-separated names from the grid")
    ap.add_argument("--out", default="sweep.json")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(GRID)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            r = run_one(name, GRID[name], args.data, args.time, Path(tmp))
            r.update(time_budget=args.time, data=args.data)
            results.append(r)
            out.write_text(json.dumps(results, indent=1) + "\n")
            if "error" in r:
                print(f"{name:<20} failed: {r['error']}", flush=True)
            else:
                print(f"{name:<20} val {r['val_loss']:.4f}  train {r['train_loss']:.4f}  {r['steps']} steps  "
                      f"{r['tokens']:,} tokens  {r['dtype']}", flush=True)


if __name__ == "__main__":
    main()
