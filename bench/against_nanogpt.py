"""tinygpt against the real nanoGPT on one CPU: loss in the same wall time, and training speed.

    python bench/against_nanogpt.py loss --nanogpt ~/src/nanoGPT --data shakespeare --time 300
    python bench/against_nanogpt.py speed --nanogpt ~/src/nanoGPT

nanoGPT is no dependency of tinygpt: point ``--nanogpt`` at a checkout of karpathy/nanoGPT.
Its train.py, model.py and configurator.py are copied into a scratch directory and run there
unchanged, with nothing else running.

``loss``: nanoGPT's README recipe for a CPU (train_shakespeare_char.py with the README's
flags: 4x128, context 64, batch 12, 2000 iterations, no dropout) against a plain
``tinygpt train --max-time T``. Both get the same text (tinygpt's reading of ``--data``) and
hold out the same tail (the last 10% of characters, each one's split). The recipe ends when
its 2000 iterations do; where that is sooner than T, a second nanoGPT run stretches the same
recipe (iterations and decay together) to fill T, so neither side is cut short. Each model
as its run ended is then scored the same way: mean cross-entropy in nats per character over
the whole held-out tail, in non-overlapping windows of its own context.

``speed``: training tokens/s on the baby shape (6x384, context 256, batch 16) through each
one's command line: nanoGPT's train.py at its defaults for a CPU (``--compile`` as it is,
turned off only if it fails) against ``tinygpt train --preset baby``. The time per step is
the difference between a long and a short run over the steps between them, which takes out
start-up, data loading, compilation and the evaluations both runs share; one untimed short
run of each engine goes first, so that no timed run compiles from a cold cache (nanoGPT
compiles by default: a cold first run made its short run slower than its long one).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinygpt.data.files import read_text
from tinygpt.device import cpu_name
from tinygpt.source import open_source

RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
          "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
          "--lr_decay_iters=2000", "--dropout=0.0"]
VAL_FRACTION = 0.1  # tinygpt's default, and nanoGPT's prepare.py's


def scratch_nanogpt(checkout: Path, work: Path, text: str) -> Path:
    """A copy of nanoGPT's scripts in ``work/nanogpt`` with ``text`` as its dataset ``side``,
    prepared as its data/shakespeare_char/prepare.py would (sorted characters, uint16 ids)."""
    root = work / "nanogpt"
    (root / "config").mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):
        if not (checkout / name).is_file():
            raise SystemExit(f"--nanogpt {checkout} has no {name}; point it at a checkout of karpathy/nanoGPT")
        shutil.copy(checkout / name, root / name)
    chars = sorted(set(text))
    if len(chars) > 65535:
        raise SystemExit(f"the text has {len(chars)} distinct characters; nanoGPT's uint16 ids hold 65535")
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    val_start = len(ids) - round(len(ids) * VAL_FRACTION)
    data = root / "data" / "side"
    data.mkdir(parents=True)
    ids[:val_start].tofile(data / "train.bin")
    ids[val_start:].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:  # nanoGPT reads its vocabulary from this pickle
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return root


def run_timed(cmd: list[str], cwd: Path | None = None, env: str | None = None) -> tuple[float, str]:
    """(wall seconds, stdout) of ``cmd``; ``env``: a src/ folder put first on PYTHONPATH."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([env, os.environ.get("PYTHONPATH", "")])} if env else None
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=environ)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return wall, proc.stdout


def run_nanogpt(root: Path, flags: list[str], out: str) -> tuple[float, str]:
    """nanoGPT's train.py at ``flags``; compile is left as given unless it fails, then off."""
    cmd = [sys.executable, "train.py", *flags, "--dataset=side", f"--out_dir={out}"]
    try:
        return run_timed(cmd, root)
    except RuntimeError as e:
        if "--compile=False" in flags:
            raise
        print(f"nanoGPT with torch.compile failed here ({str(e)[-200:]!r}); rerunning with --compile=False")
        return run_timed([*cmd, "--compile=False"], root)


@torch.no_grad()
def windowed_loss(logits_of, ids: torch.Tensor, context: int, batch: int = 64) -> float:
    """Mean next-token cross-entropy over ``ids`` (N,) in non-overlapping windows of ``context``."""
    n = (len(ids) - 1) // context
    x = ids[:n * context].view(n, context)            # (n, context)
    y = ids[1:n * context + 1].view(n, context)
    total = 0.0
    for i in range(0, n, batch):
        logits = logits_of(x[i:i + batch])              # (b, context, V)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i:i + batch].flatten(), reduction="sum").item()
    return total / (n * context)


def score_nanogpt(root: Path, out: str) -> float:
    sys.path.insert(0, str(root))
    try:
        from model import GPT as NanoGPT  # nanoGPT's own model.py
        from model import GPTConfig as NanoConfig
    finally:
        sys.path.remove(str(root))
    ckpt = torch.load(root / out / "ckpt.pt", map_location="cpu", weights_only=True)
    model = NanoGPT(NanoConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    val = torch.from_numpy(np.fromfile(root / "data" / "side" / "val.bin", dtype=np.uint16).astype(np.int64))
    # nanoGPT's forward returns only the last position's logits without targets; pass the
    # targets so that it computes every position, and ignore its loss.
    return windowed_loss(lambda x: model(x, torch.zeros_like(x))[0], val, model.config.block_size)


def score_tinygpt(run: Path, text: str) -> tuple[float, dict]:
    opened = open_source(run, "last")
    tok = opened.tokenizer
    if tok.kind != "char":
        raise SystemExit(f"tinygpt trained a {tok.kind} tokenizer; the comparison is per character (--tokenizer char)")
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    val = ids[len(ids) - round(len(ids) * VAL_FRACTION):]
    return windowed_loss(lambda x: opened.model(x).logits, val, opened.model.config.block_size), opened.config


def loss(args, work: Path) -> dict:
    text = read_text(args.data)
    root = scratch_nanogpt(Path(args.nanogpt).expanduser(), work, text)
    rows = []
    if "nanogpt" in args.engines:
        rows += nanogpt_recipe(root, args.time)
    if "tinygpt" in args.engines:
        run = work / "tinygpt"
        wall, _ = run_timed([sys.executable, "-m", "tinygpt", "train", "--data", args.data, "--out", str(run),
                             "--max-time", str(args.time), "--progress", "false", "--max-new-tokens", "0", *args.flags])
        score, config = score_tinygpt(run, text)
        rows.append({"engine": f"tinygpt train --max-time {args.time:.0f} {' '.join(args.flags)}".strip(),
                     "preset": config["run"]["preset"], "wall_s": round(wall, 1), "val_nats_per_char": score})
        print(json.dumps(rows[-1]), flush=True)
    return {"what": "loss", "data": args.data, "chars": len(text), "time_budget": args.time, "rows": rows}


def nanogpt_recipe(root: Path, budget: float) -> list[dict]:
    rows = []
    wall, log = run_nanogpt(root, RECIPE, "recipe")
    iters = [float(ms) for ms in re.findall(r"^iter \d+: .* time ([\d.]+)ms", log, re.M)]
    rows.append({"engine": "nanoGPT README CPU recipe", "iterations": 2000, "wall_s": round(wall, 1),
                 "val_nats_per_char": score_nanogpt(root, "recipe")})
    print(json.dumps(rows[-1]), flush=True)
    if wall < budget * 0.95:
        # Stretch the recipe to the budget: as many iterations as its own pace allows, a
        # multiple of its 250-iteration evaluation interval (it saves its model there).
        per_iter = float(np.median(iters)) / 1000 if iters else wall / 2000
        n = max(250, int((budget - (wall - 2000 * per_iter)) / per_iter) // 250 * 250)
        flags = [f for f in RECIPE if not f.startswith(("--max_iters", "--lr_decay_iters"))]
        wall, _ = run_nanogpt(root, [*flags, f"--max_iters={n}", f"--lr_decay_iters={n}"], "filled")
        rows.append({"engine": f"nanoGPT recipe, {n} iterations to fill {budget:.0f} s", "iterations": n,
                     "wall_s": round(wall, 1), "val_nats_per_char": score_nanogpt(root, "filled")})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def speed(args, work: Path) -> dict:
    text = read_text(args.data)
    root = scratch_nanogpt(Path(args.nanogpt).expanduser(), work, text)
    short, long = args.steps
    tokens_per_step = 16 * 256
    # Its config's shape at batch 16; one evaluation batch (it evaluates once, at iteration 0,
    # in both runs alike): nothing that changes a training step.
    nano = ["config/train_shakespeare_char.py", "--device=cpu", "--batch_size=16", "--eval_interval=100000",
            "--eval_iters=1", "--log_interval=100000"]
    engines = {"nanoGPT": None, "tinygpt": (None, "--max-new-tokens")}
    if args.old:  # another checkout's tinygpt (its src/), from before --max-new-tokens was the flag's name
        engines[f"tinygpt at {args.old_name}"] = (str(Path(args.old).expanduser().resolve()), "--sample-tokens")
    rows = []
    for rep in range(-1, args.reps):  # rep -1, untimed: fills torch.compile's and the data caches for all
        for engine, tiny in engines.items():
            walls = []
            for steps in (short, long) if rep >= 0 else (short,):
                if tiny is None:
                    walls.append(run_nanogpt(root, [*nano, f"--max_iters={steps}"], f"speed{steps}")[0])
                    continue
                src, no_sample = tiny
                out = work / f"{engine.replace(' ', '-')}-{rep}-{steps}"
                walls.append(run_timed([sys.executable, "-m", "tinygpt", "train", "--data", args.data, "--preset",
                                        "baby", "--batch-size", "16", "--max-steps", str(steps), "--out", str(out),
                                        "--progress", "false", no_sample, "0", *args.flags], env=src)[0])
            if rep < 0:
                continue
            per_step = (walls[1] - walls[0]) / (long - short)
            rows.append({"engine": engine, "rep": rep, "s_per_step": per_step,
                         "tokens_per_s": tokens_per_step / per_step})
            print(json.dumps(rows[-1]), flush=True)
    return {"what": "speed", "steps": [short, long], "rows": rows, "old": args.old_name if args.old else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("loss", "speed"))
    ap.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--data", default="shakespeare", help="what tinygpt train --data takes")
    ap.add_argument("--time", type=float, default=300, help="loss: the wall-time budget in seconds")
    ap.add_argument("--engines", default="nanogpt,tinygpt", help="loss: which to run")
    ap.add_argument("--steps", type=lambda s: [int(n) for n in s.split(",")], default=[10, 40],
                    help="speed: the short and the long run's steps")
    ap.add_argument("--old", help="speed: also time the tinygpt of this src/ folder (an older checkout)")
    ap.add_argument("--old-name", default="the older commit", help="speed: what to call it")
    ap.add_argument("--reps", type=int, default=2, help="speed: alternating repetitions")
    ap.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more tinygpt train flags, last")
    ap.add_argument("--out", help="append the result to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = (loss if args.what == "loss" else speed)(args, Path(tmp))
    result.update(cpu=cpu_name(), torch=torch.__version__)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps([*(json.loads(out.read_text()) if out.exists() else []), result], indent=1) + "\n")


if __name__ == "__main__":
    main()
