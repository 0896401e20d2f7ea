"""Soak test: kill -9 ``tinygpt train`` at random moments and check nothing is ever lost.

    python bench/soak_kill.py --trials 30            # ~10 s a trial on 2 cores

Each trial starts a run in a fresh directory and SIGKILLs it, in turn: at a random moment
of the run's wall time (start-up and data preparation included), the moment a checkpoint
write is under way (a temp file has appeared in the run directory), or the moment one has
just ended (its temp file gone: between a checkpoint's files, or between a checkpoint and
what follows it). Some trials also kill the first resume. Then it checks that:

- the run samples (or, killed before its first checkpoint, says so in one line);
- it resumes (``--resume``; or, killed before config.json existed, starts again in place)
  and the resumed run's weights and trainer state equal an uninterrupted run's, bitwise;
- no temp files remain after the resume;
- metrics.jsonl holds each step exactly once, in order, with the uninterrupted run's
  losses and best flags (a lost evaluation line, or one written twice, fails).

Not part of the test suite (it takes minutes); the counts go in the closing notes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "".join(f"{i} To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n"
               for i in range(2000))


def tinygpt(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinygpt", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock") if run.exists() \
        else []


def kill_at(proc: subprocess.Popen, run: Path, *, delay: float | None, nth_write: int | None,
            after: bool = False) -> str:
    """SIGKILL ``proc`` after ``delay`` seconds, or when its ``nth_write``-th checkpoint write
    is seen in progress (``after``: seen ended). Returns when it was killed ('write',
    'after write', 'time', or 'finished' first)."""
    started, writes, writing = time.perf_counter(), 0, False
    while proc.poll() is None:
        if delay is not None and time.perf_counter() - started >= delay:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "time"
        if nth_write is not None:
            now = bool(temp_files(run))
            if now and not writing:
                writes += 1
            if writes >= nth_write and (now if not after else writing and not now):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "after write" if after else "write"
            writing = now
        time.sleep(0.0005)
    return "finished"


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl's records without what depends on the clock."""
    keep = ("step", "tokens", "loss", "train_loss", "val_loss", "best", "lr")
    return [{k: r[k] for k in keep if k in r}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def load_state_tensors(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": state["model"], "optimizer": state["optimizer"], "step": state["step"]}


def same_state(a: Path, b: Path) -> bool:
    import torch

    sa, sb = load_state_tensors(a), load_state_tensors(b)

    def equal(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y))
        return x == y

    return equal(sa, sb)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-interval", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where to put the runs (default: a temp dir, removed at the end)")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tinygpt-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    env = {**os.environ, "TINYGPT_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    flags = ["--data", str(corpus), "--max-steps", str(args.steps), "--eval-interval", str(args.eval_interval),
             "--n-layer", "2", "--n-head", "4", "--n-embd", "128", "--block-size", "64", "--batch-size", "8",
             "--max-new-tokens", "0", "--progress", "false", "--device", "cpu",
             # Pinned: --dtype auto times bf16 against fp32 when a run starts, and on a busy
             # machine two fresh runs may choose differently (a resume keeps its run's choice).
             "--dtype", "fp32"]

    ref = work / "reference"
    t0 = time.perf_counter()
    code, log = finish(tinygpt("train", "--out", str(ref), *flags, env=env))
    wall = time.perf_counter() - t0
    if code != 0:
        print(log)
        return 1
    ref_weights = (ref / "last.safetensors").read_bytes()
    ref_metrics = metrics(ref)
    print(f"reference run: {args.steps} steps, checkpoint every {args.eval_interval}, {wall:.1f}s wall")

    counts = {k: 0 for k in ("trials", "killed in a checkpoint write", "killed just after a write",
                             "killed at a random moment",
                             "finished before the kill", "killed before the first checkpoint",
                             "resume also killed", "samples", "resumed", "bitwise equal", "no temp files",
                             "metrics exactly once, as uninterrupted")}
    failures = []
    for i in range(args.trials):
        run = work / f"trial-{i:03d}"
        mode = ("write", "after write", "time")[i % 3]
        proc = tinygpt("train", "--out", str(run), *flags, env=env)
        nth = rng.randint(1, 3 * (args.steps // args.eval_interval))
        when = kill_at(proc, run, delay=rng.uniform(0, wall * 1.1) if mode == "time" else None,
                       nth_write=nth if mode != "time" else None, after=mode == "after write")
        counts["trials"] += 1
        counts[{"write": "killed in a checkpoint write", "after write": "killed just after a write",
                "time": "killed at a random moment", "finished": "finished before the kill"}[when]] += 1
        problems = []

        has_checkpoint = (run / "trainer.pt").exists()
        counts["killed before the first checkpoint"] += not has_checkpoint
        has_weights = (run / "last.safetensors").exists() or (run / "model.safetensors").exists()
        if (run / "config.json").exists():
            code, out = finish(tinygpt("sample", str(run), "--max-new-tokens", "20", "--device", "cpu", env=env))
            one_line = code == 1 and "Traceback" not in out and sum(ln.startswith("error:")
                                                                    for ln in out.splitlines()) == 1
            if (code == 0) if has_weights else one_line:
                counts["samples"] += 1
            else:
                problems.append(f"sample rc={code}: {out.strip().splitlines()[-1:]}")
        else:
            counts["samples"] += 1  # nothing to sample yet: killed before the run existed

        def resume() -> subprocess.Popen:
            if (run / "config.json").exists():
                return tinygpt("train", "--resume", str(run), "--progress", "false", env=env)
            return tinygpt("train", "--out", str(run), *flags, env=env)  # never became a run: start in place

        if rng.random() < 0.3:  # a second fault: kill the resume too
            kill_at(resume(), run, delay=rng.uniform(0, wall), nth_write=None)
            counts["resume also killed"] += 1
        code, out = finish(resume())
        if code == 0:
            counts["resumed"] += 1
        else:
            problems.append(f"resume rc={code}: {out.strip().splitlines()[-1:]}")
        if code == 0:
            if (run / "last.safetensors").read_bytes() == ref_weights and same_state(run / "trainer.pt",
                                                                                     ref / "trainer.pt"):
                counts["bitwise equal"] += 1
            else:
                problems.append("weights or trainer state differ from the uninterrupted run")
        leftovers = temp_files(run)
        if not leftovers:
            counts["no temp files"] += 1
        else:
            problems.append(f"temp files left: {leftovers}")
        try:
            got = metrics(run)
        except (OSError, ValueError) as e:
            got = [{"unreadable": str(e)}]
        steps = [r.get("step") for r in got]
        if got == ref_metrics and steps == list(range(1, args.steps + 1)):
            counts["metrics exactly once, as uninterrupted"] += 1
        else:
            lost = sorted(set(range(1, args.steps + 1)) - set(steps))
            twice = sorted({s for s in steps if steps.count(s) > 1})
            problems.append(f"metrics: lost steps {lost}, repeated {twice}" if lost or twice else
                            "metrics differ from the uninterrupted run's")
        print(f"trial {i + 1:3d}: killed {'in a write' if when == 'write' else when:>11}, "
              f"{'checkpoint on disk' if has_checkpoint else 'no checkpoint yet':>18}: "
              + ("ok" if not problems else "FAILED " + "; ".join(problems)), flush=True)
        if problems:
            failures.append(i)
        else:
            shutil.rmtree(run)

    print("\n" + "\n".join(f"{k:>36}: {v}/{counts['trials']}" if k != "trials" else f"{k:>36}: {v}"
                           for k, v in counts.items()))
    if not args.workdir and not failures:
        shutil.rmtree(work)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
