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

**Object stores** (S3 and other fsspec URLs) have no ``flock``. There the lock is the object
``ibframe-writer.lock`` itself, created with a conditional write (``If-None-Match: *``, fsspec's
``pipe_file(mode="create")``) that fails if it exists, so of two writers starting together one
is refused. A writer that closes deletes it; one that dies leaves it, and the next writer takes
it over only when it names a process on the same host that no longer runs. Otherwise it is
refused, naming the holder and the object to delete once that writer is known to be gone. The
single-writer rule then rests on that: a lock deleted while its writer still runs lets a second
writer in, and of two writers' epochs only the last commit's list is kept (docs/store-format.md).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import typing
import uuid
import weakref
from pathlib import Path
from typing import Any

from zarr.core.sync import sync
from zarr.storage import FsspecStore

from ibframe.errors import StoreError, StoreLockedError

if typing.TYPE_CHECKING:
    from ibframe.store.location import Location

LOCK_NAME = "ibframe-writer.lock"

_HELD: weakref.WeakSet[WriterLock | ObjectLock] = weakref.WeakSet()


def acquire_writer_lock(location: Location, purpose: str) -> WriterLock | ObjectLock:
    """The writer lock of the store at ``location`` (which must exist, locally), or refuse."""
    if location.local is not None:
        return WriterLock.acquire(location.local, str(location), purpose)
    return ObjectLock.acquire(location, purpose)


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
        holder = _holder(purpose)
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


class ObjectLock:
    """The writer lock of a store on object storage: an object created only if absent."""

    def __init__(self, store: FsspecStore, key: str, token: str) -> None:
        self._store: FsspecStore | None = store
        self._key = key
        self._token = token

    @classmethod
    def acquire(cls, location: Location, purpose: str) -> ObjectLock:
        """Create the lock object, or take over a dead local writer's, or refuse naming it."""
        from ibframe.store.location import storage_errors

        store = location.store(read_only=False)
        if not isinstance(store, FsspecStore):  # pragma: no cover - URLs give FsspecStore
            msg = f"no writer lock for {location}: not an fsspec store"
            raise StoreError(msg)
        fs, key = store.fs, f"{store.path}/{LOCK_NAME}"
        token = uuid.uuid4().hex
        holder = {**_holder(purpose), "token": token}
        with storage_errors(location):
            for _ in range(2):
                try:
                    sync(fs._pipe_file(key, json.dumps(holder).encode(), mode="create"))
                except FileExistsError:
                    current = _parse(_get(fs, key))
                    if not _dead_here(current):
                        gone = (
                            f"a writer that died on another host leaves {location}/{LOCK_NAME}: "
                            "delete it once that writer is gone"
                        )
                        raise StoreLockedError(_refusal(str(location), current, gone)) from None
                    sync(fs._rm(key))  # its writer died on this host: take it over
                    continue
                lock = cls(store, key, token)
                _HELD.add(lock)
                return lock
        raise StoreLockedError(_refusal(str(location), {}))

    @property
    def held(self) -> bool:
        """Whether this lock is still held (not released, not a forked child's copy)."""
        return self._store is not None

    def release(self) -> None:
        """Delete the lock object if it is still this writer's; idempotent, never raises."""
        store, self._store = self._store, None
        _HELD.discard(self)
        if store is None:
            return
        with contextlib.suppress(Exception):  # at exit the event loop may be gone: the next
            # writer on this host then takes the lock over
            if _parse(_get(store.fs, self._key)).get("token") == self._token:
                sync(store.fs._rm(self._key))

    def _forget(self) -> None:
        self._store = None


def _get(fs: Any, key: str) -> bytes:
    try:
        return bytes(sync(fs._cat_file(key)))
    except FileNotFoundError:
        return b"{}"


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` names a process on this host that no longer runs."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _holder(purpose: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "by": purpose,
    }


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


def _refusal(
    where: str, holder: dict[str, Any], gone: str = "a writer that dies releases its lock"
) -> str:
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
        f"stop it ({gone}); readers need no lock"
    )


def _forget_locks_in_child() -> None:
    for lock in list(_HELD):
        lock._forget()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)
