"""The run lock: one writer per run, its PID in the error, and freed by the OS when the holder dies."""

import os
import signal
import subprocess
import sys

import pytest
from helpers import hold_lock

from tinygpt import lock
from tinygpt.errors import TinyGPTError


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    path = tmp_path / ".lock"
    lock.acquire(path, "the run X")
    try:
        assert lock.holder_pid(path) == os.getpid() and lock.is_held(path)
        lock.acquire(path, "the run X")  # again in the same process: already ours
        script = f"from tinygpt import lock; lock.acquire({str(path)!r}, 'the run X')"
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert other.returncode == 1
        assert (f"TinyGPTError: the run X is in use by process {os.getpid()} (another tinygpt command writing to "
                "it); wait for it to finish or stop it") in other.stderr
    finally:
        lock.release(path)
    assert not lock.is_held(path)


def test_a_killed_holder_never_leaves_the_lock_stuck(tmp_path):
    path = tmp_path / ".lock"
    holder = hold_lock(path)
    try:
        with pytest.raises(TinyGPTError, match=f"in use by process {holder.pid} "):
            lock.acquire(path, "the run X")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    lock.acquire(path, "the run X")  # the OS dropped the dead process's lock
    assert lock.holder_pid(path) == os.getpid()
    lock.release(path)
