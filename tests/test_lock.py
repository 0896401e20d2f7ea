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


@pytest.mark.parametrize("make", ["symlink", "dangling", "hardlink", "fifo", "directory"])
def test_a_lock_file_that_is_not_a_plain_file_of_ours_is_refused_and_nothing_outside_is_touched(tmp_path, make):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT\n")
    path = run / ".lock"
    if make == "symlink":
        path.symlink_to(victim)
    elif make == "dangling":
        path.symlink_to(tmp_path / "absent")
    elif make == "hardlink":
        os.link(victim, path)
    elif make == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(TinyGPTError, match=rf"{path} is not a plain lock file .*remove {path} if you trust"):
        lock.acquire(path, "the run X")
    assert victim.read_text() == "IMPORTANT\n" and not (tmp_path / "absent").exists()
    assert not lock.is_held(path)


def test_the_resume_of_a_run_whose_lock_links_out_leaves_the_target_alone(tiny_run, tmp_path, capsys):
    import shutil

    from tinygpt.cli import main
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    (run / ".lock").unlink(missing_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT\n")
    (run / ".lock").symlink_to(victim)
    assert main(["train", "--resume", str(run), "--max-steps", "1000"]) == 1
    assert "r/.lock is a link out of the run (to " in capsys.readouterr().err  # refused before the lock is taken
    assert victim.read_text() == "IMPORTANT\n"
