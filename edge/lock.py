"""One agent per outbox: an exclusive `flock` on a lock file beside it.

Two agents on the same config would share a node id, so the broker would hand the MQTT session
from one to the other every second, each kicking the other off. The kernel drops the lock when its
holder exits, however it exits (kill -9 included), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["OutboxInUse", "OutboxLock", "lock_holder"]


class OutboxInUse(RuntimeError):
    """Another running agent holds the outbox."""

    def __init__(self, outbox: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(
            f"outbox {outbox} is in use by another agent ({who}): stop that one first, "
            "or give this box its own node_id and outbox"
        )
        self.pid = pid


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class OutboxLock:
    def __init__(self, path: Path, outbox: Path) -> None:
        self.path = path
        self.outbox = outbox
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `OutboxInUse` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxInUse(self.outbox, _read_pid(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


def lock_holder(path: Path) -> int | None:
    """The pid of the agent holding the lock, or None if no agent holds it (for `edge status`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
