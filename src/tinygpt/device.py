"""Where the math runs: device, number format and seed, decided once, from what the machine has."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch

from .config import check_choices, opt
from .errors import TinyGPTError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16", "fp16")
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
K = TypeVar("K")


@dataclass
class RuntimeConfig:
    """Options every command that runs a model shares; each context may set its own
    defaults with ``config.section`` (a training run seeds with 1337, sampling samples in fp32)."""
    device: str = opt("auto", "cpu, cuda, cuda:N or mps (auto: the best available)")
    dtype: str = opt("auto", "number format (auto: on a CPU the faster of fp32 and bf16, measured; bf16 on GPUs "
                             "that have it, else fp16)", choices=DTYPES)
    seed: int | None = opt(None, "seed of this command's randomness (none: fresh randomness)")
    threads: int | None = opt(None, "CPU threads PyTorch computes with (none: one per core that other processes "
                                    "leave free, measured as the command starts; a training run records its count "
                                    "and a resume keeps it)")

    def __post_init__(self) -> None:
        check_choices(self)
        device_kind(self.device)
        if self.threads is not None and self.threads < 1:
            raise TinyGPTError(f"--threads must be at least 1, got {self.threads}")


ALL_CORES = torch.get_num_threads()  # PyTorch's default as this process started: one per core


def use_threads(threads: int | None, log: Callable[[str], None] | None = None) -> int:
    """Compute with ``threads`` CPU threads from now on; returns the number. Set once as a
    command starts, before anything is measured (``--dtype auto`` times both formats with
    the threads it will run with).

    None: one per core that other processes leave free (:func:`free_cores`), unless
    OMP_NUM_THREADS chose already. Why not every core: PyTorch's threads meet at a barrier
    after each parallel piece of work, and a thread whose core another process holds makes
    the others wait. On a 2-core Xeon with one busy process beside it, a char-nano training
    step on 2 threads ran at 6,648 tokens/s and on 1 at 13,047 (25,522 alone on 2): the
    fair half of the machine, not a quarter of it."""
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS") or ALL_CORES < 2:
            return torch.get_num_threads()
        threads, busy = free_cores()
        if threads < ALL_CORES and log is not None:
            log(f"threads: {threads} of {ALL_CORES} (other processes keep {busy:.1f} cores busy; --threads N to "
                "choose)")
    torch.set_num_threads(threads)
    return threads


PROC_STAT = "/proc/stat"


def busy_elsewhere(window: float = 0.15) -> float | None:
    """Cores' worth of work that other processes did on the CPUs this process may use, over
    ``window`` seconds (Linux's /proc/stat, less this process's own CPU time); None where
    the system does not say."""
    try:
        cpus = os.sched_getaffinity(0)
        tick = os.sysconf("SC_CLK_TCK")

        def busy_ticks() -> int:
            total = 0
            with open(PROC_STAT, encoding="ascii") as f:
                for line in f:
                    name, *counts = line.split()
                    if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, counts[:8])
                        total += user + nice + system + irq + softirq + steal  # steal: a neighbour VM's
            return total

        b0, p0, t0 = busy_ticks(), time.process_time(), time.perf_counter()
        time.sleep(window)
        b1, p1, t1 = busy_ticks(), time.process_time(), time.perf_counter()
    except (OSError, ValueError, AttributeError):
        return None
    return max(0.0, ((b1 - b0) / tick - (p1 - p0)) / (t1 - t0))


def free_cores(window: float = 0.15) -> tuple[int, float]:
    """(threads worth computing with now, cores other processes keep busy): PyTorch's one
    per core, less the cores others hold (more than half a core's worth of other work
    takes one), at least 1. Measured over ``window`` seconds."""
    busy = busy_elsewhere(window)
    if busy is None:
        return ALL_CORES, 0.0
    return max(1, min(ALL_CORES, int(ALL_CORES - busy + 0.5))), busy


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (weights and dropout draw from them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fresh_seed() -> int:
    """A seed from the OS's entropy, for runs that asked for none (then recorded, so they resume)."""
    return random.SystemRandom().randrange(2**31)


def device_kind(name: str) -> str:
    """'cuda:1' -> 'cuda'; TinyGPTError for a name that is no device at all."""
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise TinyGPTError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    return kind


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit choice must exist on this machine."""
    kind = device_kind(name)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise TinyGPTError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu "
                           "(or install a CUDA build of torch)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise TinyGPTError("--device mps was asked for but this machine has no usable MPS; use --device cpu")
    return torch.device(name)


@functools.cache
def cpu_name() -> str:
    """This CPU as a benchmark table names it: its model, the cores this process may use,
    and the vector features that decide kernel speed (what the OS reports; on a VM the
    host may differ)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    features = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                        ("amx_tile", "AMX")) if flag in flags]
    if flags and "amx_tile" not in flags:
        features.append("no AMX")
    return f"{model or 'unknown CPU'} ({cores} cores" + (f"; {', '.join(features)})" if features else ")")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this PyTorch can run bf16 on this CPU at all (oneDNN's check); whether it
    is *fast* is measured (:func:`fastest`): without AVX512-BF16/AMX it is emulated, and
    even with them small models can train faster in fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fastest(options: dict[K, Callable[[], object]], device: torch.device, reps: int = 3) -> tuple[K, dict[K, float]]:
    """The key whose callable runs fastest, and each one's seconds: one warm-up call each,
    then ``reps`` rounds alternating between them (so that a shared machine's noise falls
    on all alike), best time of each."""
    for f in options.values():
        f()
    times = {k: float("inf") for k in options}
    for _ in range(reps):
        for k, f in options.items():
            times[k] = min(times[k], timed(f, device))
    return min(times, key=times.get), times


def timed(f: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``f`` takes on ``device``, its queued GPU work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    f()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


@functools.cache
def cpu_inference_dtype() -> torch.dtype:
    """bf16 or fp32 weights for CPU decoding, whichever reads a weight matrix faster here
    (a 4096 x 4096 matrix-vector product, measured once per process)."""
    if not cpu_has_bf16():
        return torch.float32
    w32, x32 = torch.randn(4096, 4096), torch.randn(4096)
    w16, x16 = w32.bfloat16(), x32.bfloat16()
    best, _ = fastest({torch.float32: lambda: torch.mv(w32, x32), torch.bfloat16: lambda: torch.mv(w16, x16)},
                      torch.device("cpu"))
    return best


def resolve_dtype(name: str, device: torch.device, *, inference: bool = False) -> torch.dtype:
    """The dtype for 'auto'/'fp32'/'bf16'/'fp16' on ``device``: for training, autocast's
    (fp32 = none); for ``inference``, the weights'. 'auto' on a CPU: for inference, the
    measured faster of bf16 and fp32; for training, fp32 here, and where bf16 runs at all
    tinygpt.train.resolve measures the run's model instead (once; config.json records it)."""
    if name not in DTYPES:
        raise TinyGPTError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TinyGPTError("this GPU does not support bf16; use --dtype fp16 (with loss scaling) or fp32")
        return _TORCH_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and inference:
        return cpu_inference_dtype()
    # MPS autocast support varies across macOS/PyTorch versions; fp32 always works.
    return torch.float32


def dtype_candidates(device: torch.device) -> tuple[str, ...]:
    """The number formats ``--dtype auto`` chooses among on ``device``, fp32 first: on a GPU,
    fp32 and its half format (bf16 where supported, else fp16); on a CPU that runs bf16,
    fp32 and bf16 (which is faster is measured); elsewhere fp32."""
    if device.type == "cuda":
        return ("fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if device.type == "cpu" and cpu_has_bf16():
        return ("fp32", "bf16")
    return ("fp32",)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _TORCH_DTYPES.items()}[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for forward passes; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device) -> None:
    """Let fp32 matmuls use TF32 tensor cores on CUDA (~free speed, ample precision for training)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
