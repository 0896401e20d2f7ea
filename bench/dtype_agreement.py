"""Do a bf16 run and an fp32 run from the same seed end at the same loss? (full scale)

    python bench/dtype_agreement.py                                  # char-tiny on Shakespeare
    python bench/dtype_agreement.py --preset baby --batch-size 16    # the baby preset

Each dtype is a whole ``tinygpt train`` run of ``--steps`` optimizer steps from the same
seed (same weights, same batches); the runs go one after the other. Reported: the mean
training loss over the last 20 steps, the final validation loss, and their bf16 / fp32
ratios (the target is within 2%). tests/test_train_trainer.py checks the same at tiny scale.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tinygpt.run import RunDir


def run(dtype: str, args, workdir: Path) -> dict:
    out = workdir / dtype
    cmd = [sys.executable, "-m", "tinygpt", "train", "--data", args.data, "--out", str(out), "--preset", args.preset,
           "--max-steps", str(args.steps), "--eval-interval", str(args.steps), "--dtype", dtype, "--seed", "1337",
           "--progress", "false", "--max-new-tokens", "0", *(["--batch-size", str(args.batch_size)]
                                                             if args.batch_size else [])]
    subprocess.run(cmd, check=True, capture_output=True)
    records = RunDir.open(out).read_metrics()
    steps = [r for r in records if "loss" in r]
    return {"train_loss": sum(r["loss"] for r in steps[-20:]) / len(steps[-20:]),
            "val_loss": [r for r in records if "val_loss" in r][-1]["val_loss"],
            "tok_per_s": steps[-1].get("tok_per_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="char-tiny")
    ap.add_argument("--data", default="shakespeare")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        got = {dtype: run(dtype, args, Path(tmp)) for dtype in ("fp32", "bf16")}
    print(f"{args.preset}, {args.steps} steps on {args.data}")
    print(f"{'':6} {'train (last 20)':>16} {'val':>8}")
    for dtype, r in got.items():
        print(f"{dtype:6} {r['train_loss']:16.4f} {r['val_loss']:8.4f}")
    ratio = {k: got["bf16"][k] / got["fp32"][k] for k in ("train_loss", "val_loss")}
    print(f"{'ratio':6} {ratio['train_loss']:16.4f} {ratio['val_loss']:8.4f}   (bf16 / fp32; target within 2%)")


if __name__ == "__main__":
    main()
