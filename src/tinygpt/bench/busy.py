"""Speed on a busy machine: the same work timed alone and beside other busy processes.

People train and decode while using their laptop. ``--busy 0,1,2`` in ``tinygpt bench
train`` and ``bench generate`` times one piece of work (a training step, a decoded token)
beside that many processes each spinning on a core, with every core's worth of threads
(PyTorch's default) and with the threads ``use_threads`` picks (one per core the others
leave free, measured as the command starts), and prints each against the work alone.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..config import opt, parse_ints
from ..device import ALL_CORES, cpu_name, free_cores

SPIN = "while True: pass"  # one core's worth of another program's work


@dataclass
class BusyOptions:
    busy: tuple[int, ...] = opt((), "instead of the usual table, time the work (a training step; tinygpt's fp32 "
                                    "decoding at the first batch size) beside this many busy processes, e.g. "
                                    "0,1,2, on every core and on the cores they leave free", parse=parse_ints)


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """``n`` other processes, each keeping one core busy, until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def contention(work: Callable[[], float], busy: tuple[int, ...], unit: str,
               log: Callable[[str], None] = print) -> list[dict]:
    """``work()`` (one timed piece, returning its rate in ``unit``) beside each count of busy
    processes, on every core and on the free cores; the median of 5 pieces after 1 untimed.
    Prints the table and returns its rows."""
    before = torch.get_num_threads()
    rows = []
    try:
        for n in busy:
            with busy_processes(n):
                free, load = free_cores(0.3)  # the spinners are up and measured as a command would
                row = {"busy": n, "load": load}
                for policy, threads in (("every core", ALL_CORES), ("free cores", free)):
                    torch.set_num_threads(threads)
                    work()
                    row[policy] = (threads, statistics.median(work() for _ in range(5)))
                rows.append(row)
    finally:
        torch.set_num_threads(before)
    # Alone, both policies run the same threads: the faster of the two is the yardstick.
    alone = next((max(r["every core"][1], r["free cores"][1]) for r in rows if r["busy"] == 0), None)
    log(f"beside busy processes, each spinning on a core; {cpu_name()}; {unit}:")
    log(f"{'busy':>5} {'measured':>9}  {'every core (threads)':>22} {'slowdown':>9}  {'free cores (threads)':>22} "
        f"{'slowdown':>9}")
    for r in rows:
        cells = []
        for policy in ("every core", "free cores"):
            threads, rate = r[policy]
            cells.append(f"{rate:>17,.0f} ({threads})" + (f" {alone / rate:>8.2f}x" if alone else f" {'-':>9}"))
        log(f"{r['busy']:>5} {r['load']:>9.1f}  " + "  ".join(cells))
    return rows
