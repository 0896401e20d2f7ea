"""An exclusive lock on a directory, held for the life of the process.

The OS releases it when the process ends however it ends (kill -9 included), so a
crash never leaves a run locked. The holder writes its PID into the lock file, so a
second process can say who holds it.

Written here rather than taken from the ``filelock`` package because that one opens the
lock file with O_TRUNC on every attempt, which would erase the holder's PID; what we
need (non-blocking, one holder, PID readable) is a few lines over ``fcntl.flock``.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import TinyGPTError

# Locks this process holds, by lock-file path: taking one again is a no-op, so a library
# user may open the same run twice in one program (the lock guards against other processes).
_HELD: dict[Path, int] = {}

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    _PID_OFFSET = 16  # Windows locks are mandatory: keep the PID outside the locked byte

    def _try_lock(fd: int, wait: bool = False) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
else:
    import fcntl

    _PID_OFFSET = 0

    def _try_lock(fd: int, wait: bool = False) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
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


def held_by(path: str | Path) -> int | None:
    """The PID of another process holding the lock at ``path`` now, else None (free, absent,
    or held by this process). Looks without taking it: the lock is tried, then let go."""
    path = _key(path)
    if path in _HELD or not path.is_file() or path.is_symlink():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        free = _try_lock(fd)
    finally:
        os.close(fd)  # a lock taken to look is dropped with the descriptor
    return None if free else (holder_pid(path) or -1)


def _key(path: str | Path) -> Path:
    """The lock file's path with its directory resolved, never the file's own link."""
    path = Path(path)
    return path.parent.resolve() / path.name


def _open_lock_file(path: Path, what: str) -> int:
    """The lock file opened for writing, refusing a link or anything but a regular file of
    ours: a ``.lock`` symlinked elsewhere would otherwise have its target truncated."""
    refuse = TinyGPTError(f"{path} is not a plain lock file (a link, or not a regular file of this user); "
                          f"{what} may have been tampered with: remove {path} if you trust the rest of it")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                     0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR) or path.is_symlink():
            raise refuse from None
        raise TinyGPTError(f"cannot open the lock file {path}: {e.strerror or e}; check the directory's "
                           "permissions") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        os.close(fd)
        raise refuse
    return fd


def acquire(path: str | Path, what: str) -> None:
    """Lock ``path`` (created if absent) for the rest of this process, or raise a one-line
    error naming the process that holds it. ``what`` names the locked thing in that error."""
    path = _key(path)
    if path in _HELD:
        return
    fd = _open_lock_file(path, what)
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


@contextmanager
def briefly(path: str | Path, what: str) -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` block, waiting for it if another process
    has it: for a short read-modify-write of a file several processes add to (results),
    not for a run's one writer (:func:`acquire`)."""
    path = _key(path)
    fd = _open_lock_file(path, what)
    try:
        _try_lock(fd, wait=True)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def release(path: str | Path) -> None:
    """Give the lock back before the process ends (tests, long-lived programs)."""
    fd = _HELD.pop(_key(path), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def is_held(path: str | Path) -> bool:
    """Whether this process holds the lock at ``path``."""
    return _key(path) in _HELD
