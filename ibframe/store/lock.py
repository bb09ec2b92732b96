"""The writer lock of a local run store: one writer at a time, released when the writer dies.

A writer holds ``fcntl.flock(LOCK_EX)`` on ``RUN.zarr/ibframe-writer.lock`` for its lifetime. The
kernel drops the lock when the writer closes the file or dies, however it dies (SIGKILL
included), so a killed writer's lock is free at once: the next writer takes it over with no pid
checks and no race, and simply rewrites the file's contents (pid, host, start time: what the
refusal names). ``flock`` locks belong to an open file description, so a second ``open`` in the
same process is refused too.

On release the file is unlinked before it is closed, so a store has no lock file unless a writer
is at work or one died (plain zarr listings then warn about the stray object). A writer that
acquired the lock on a file unlinked meanwhile notices (the path no longer names its inode) and
starts over on a fresh file.

Forked children do not inherit the lock: their copies of its descriptors are closed after
``fork``, leaving the parent's lock alone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import weakref
from pathlib import Path
from typing import Any

from ibframe.errors import StoreError, StoreLockedError

LOCK_NAME = "ibframe-writer.lock"

_HELD: weakref.WeakSet[WriterLock] = weakref.WeakSet()


class WriterLock:
    """An exclusive lock on a run store directory, held until :meth:`release`."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: Path, where: str, purpose: str) -> WriterLock:
        """Take the lock of ``directory`` (which must exist), or refuse naming its holder."""
        path = directory / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                msg = f"cannot write to {where}: {err.strerror} (creating its writer lock {path})"
                raise StoreError(msg) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreLockedError(_refusal(where, holder)) from None
            except OSError as err:
                os.close(fd)
                msg = (
                    f"cannot lock {where} for writing: its file system does not support "
                    f"flock ({err.strerror}); write run stores on a local disk"
                )
                raise StoreError(msg) from None
            if _still_linked(fd, path):
                break
            os.close(fd)  # released and unlinked by its last holder meanwhile: start over
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "by": purpose,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        lock = cls(fd, path)
        _HELD.add(lock)
        return lock

    @property
    def held(self) -> bool:
        """Whether this lock is still held (not released, not a forked child's copy)."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and release the lock; idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
        _HELD.discard(self)

    def _forget(self) -> None:
        """In a forked child: close the inherited descriptor without touching the parent's lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _still_linked(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(where: str, holder: dict[str, Any]) -> str:
    if not holder:  # the holder has not written its name yet
        who = "another writer"
    else:
        who = (
            f"another writer: pid {holder.get('pid')} on host {holder.get('host')} "
            f"since {holder.get('since')} ({holder.get('by')})"
        )
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            who += ", in this process: close that Run first"
    return (
        f"run store {where} is locked by {who}; one writer at a time. Wait for it to finish or "
        "stop it (a writer that dies releases its lock); readers need no lock"
    )


def _forget_locks_in_child() -> None:
    for lock in list(_HELD):
        lock._forget()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)
