"""A real full disk: train on a tiny tmpfs and check what the user sees and what survives.

    sudo python bench/disk_full.py          # needs permission to mount a tmpfs (root)

1. A run whose second checkpoint does not fit: the error must name the disk, the file,
   what it needs and what is free; the first checkpoint must be intact. After the tmpfs
   is enlarged, ``--resume`` must finish with weights bitwise equal to an uninterrupted run.
2. The kernel's own ENOSPC in the middle of a write (the free-space pre-check bypassed), for
   safetensors weights and a torch.save trainer state: recognised as a full disk, the old
   file untouched, no temp file left.

Not part of the test suite (the tests simulate ENOSPC with a writer that fails at a
chosen byte); this checks the same paths against a real filesystem.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TEXT = "".join(f"{i} To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n"
               for i in range(2000))


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def tinygpt(*args: str, env: dict) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "tinygpt", *args], env=env, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="tinygpt-diskfull-"))
    mnt = work / "disk"
    mnt.mkdir()
    corpus = work / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    env = {**os.environ, "TINYGPT_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    flags = ["--data", str(corpus), "--max-steps", "20", "--eval-interval", "10", "--n-layer", "2", "--n-head", "4",
             "--n-embd", "128", "--block-size", "64", "--batch-size", "8", "--max-new-tokens", "0",
             "--progress", "false", "--device", "cpu"]
    code, log = tinygpt("train", "--out", str(work / "reference"), *flags, env=env)
    assert code == 0, log
    weights = (work / "reference" / "last.safetensors").stat().st_size
    state = (work / "reference" / "trainer.pt").stat().st_size
    # Room for one checkpoint (best + last + state) and a little more, not for a second's temp file.
    size_kb = (2 * weights + state) // 1024 + weights // 2048 + 64
    try:
        sh("mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt))
    except (subprocess.CalledProcessError, FileNotFoundError):
        print("cannot mount a tmpfs here (needs root); the tests' simulated ENOSPC still covers these paths")
        return 0
    ok = True
    try:
        run = mnt / "run"
        code, log = tinygpt("train", "--out", str(run), *flags, env=env)
        error = [ln for ln in log.splitlines() if ln.startswith("error:")]
        print(f"1. tmpfs of {size_kb} KB, weights {weights / 1e6:.2f} MB, state {state / 1e6:.2f} MB: exit {code}")
        print("   " + (error[0] if error else "(no error line)"))
        first = (run / "trainer.pt").read_bytes()
        checks = {
            "one-line error naming the full disk": code == 1 and len(error) == 1 and "the disk is full" in error[0]
                                                   and "Traceback" not in log,
            "no temp files left": not [p for p in run.iterdir() if p.name.endswith(".tmp")],
        }
        sh("mount", "-o", f"remount,size={4 * size_kb}k", str(mnt))
        code, log = tinygpt("sample", str(run), "--max-new-tokens", "10", "--device", "cpu", env=env)
        checks["the first checkpoint samples"] = code == 0
        code, log = tinygpt("train", "--resume", str(run), "--progress", "false", env=env)
        checks["resumes once there is space"] = code == 0
        checks["resumed weights equal the uninterrupted run's"] = (
            (run / "last.safetensors").read_bytes() == (work / "reference" / "last.safetensors").read_bytes())
        checks["the first checkpoint was intact"] = len(first) > 0
        for name, good in checks.items():
            print(f"   {'ok' if good else 'FAILED'}: {name}")
            ok &= good

        # 2. The kernel's ENOSPC mid-write, no pre-check.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        import torch

        from tinygpt import checkpoint as ckpt

        for p in list(run.iterdir()):
            p.unlink()
        sh("mount", "-o", f"remount,size={weights // 1024 + 200}k", str(mnt))
        tensors = {"w": torch.randn(weights // 4)}
        ckpt.save_tensors({"w": torch.zeros(1000)}, mnt / "old.safetensors")
        ckpt.save_state({"x": torch.zeros(1000)}, mnt / "old.pt")
        before = {p.name: p.read_bytes() for p in mnt.iterdir() if p.is_file()}
        print("2. ENOSPC from the kernel mid-write:")
        for name, write in (("safetensors", lambda: ckpt.atomic_write(
                                 mnt / "old.safetensors",
                                 lambda f: ckpt.write_safetensors(f, {**tensors, "v": torch.randn(weights // 4)}, {}))),
                            ("torch.save", lambda: ckpt.atomic_write(
                                 mnt / "old.pt", lambda f: torch.save({"a": tensors["w"], "b": tensors["w"] * 2}, f)))):
            try:
                write()
                good, what = False, "no error"
            except ckpt.DiskFullError as e:
                good, what = True, str(e)
            except Exception as e:  # noqa: BLE001 - reporting what came out instead
                good, what = False, f"{type(e).__name__}: {e}"
            after = {p.name: p.read_bytes() for p in mnt.iterdir() if p.is_file()}
            good &= after == before
            print(f"   {'ok' if good else 'FAILED'}: {name}: {what[:160]}")
            ok &= good
    finally:
        sh("umount", str(mnt))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
