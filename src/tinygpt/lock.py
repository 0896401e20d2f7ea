"""An exclusive lock on a directory, held for the life of the process.

The OS releases it when the process ends however it ends (kill -9 included), so a
crash never leaves a run locked. The holder writes its PID into the lock file, so a
second process can say who holds it.

Written here rather than taken from the ``filelock`` package because that one opens the
lock file with O_TRUNC on every attempt, which would erase the holder's PID; what we
need (non-blocking, one holder, PID readable) is a few lines over ``fcntl.flock``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TinyGPTError

# Locks this process holds, by lock-file path: taking one again is a no-op, so a library
# user may open the same run twice in one program (the lock guards against other processes).
_HELD: dict[Path, int] = {}

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    _PID_OFFSET = 16  # Windows locks are mandatory: keep the PID outside the locked byte

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    _PID_OFFSET = 0

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


def holder_pid(path: str | Path) -> int | None:
    """The PID written in a lock file (whether or not it is still held), if readable."""
    try:
        with open(path, "rb") as f:
            f.seek(_PID_OFFSET)
            return int(f.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def acquire(path: str | Path, what: str) -> None:
    """Lock ``path`` (created if absent) for the rest of this process, or raise a one-line
    error naming the process that holds it. ``what`` names the locked thing in that error."""
    path = Path(path).resolve()
    if path in _HELD:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        os.close(fd)
        pid = holder_pid(path)
        who = f"process {pid}" if pid else "another process"
        raise TinyGPTError(f"{what} is in use by {who} (another tinygpt command writing to it); wait for it to "
                           "finish or stop it, or choose another directory")
    os.ftruncate(fd, _PID_OFFSET)
    os.lseek(fd, _PID_OFFSET, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[path] = fd


def release(path: str | Path) -> None:
    """Give the lock back before the process ends (tests, long-lived programs)."""
    fd = _HELD.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def is_held(path: str | Path) -> bool:
    """Whether this process holds the lock at ``path``."""
    return Path(path).resolve() in _HELD
