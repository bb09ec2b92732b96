"""A pool of single-threaded torch workers that runs the mixture kernels' CPU blocks.

Every torch op on the CPU is parallel by default: all threads join each op and wait for the
slowest at its end. On a machine shared with other processes a descheduled thread stalls every
op: one ``exp`` on a busy 2-core machine ran at 2.2e7 elements/s on two threads against 7.6e8
on one. Here each worker runs whole blocks with one thread, and pulls the next block when it is
done, so a stalled worker delays only its own block.

The number of workers is ``IBFRAME_NUM_THREADS`` if set, else the CPUs this process may run on
(``os.sched_getaffinity``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

import torch

from ibframe.errors import ParameterError

__all__ = ["ENV_NUM_THREADS", "kernel_threads", "run_parallel", "single_threaded_caller"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

ENV_NUM_THREADS = "IBFRAME_NUM_THREADS"

_lock = threading.Lock()
_pool: _Pool | None = None
_worker = threading.local()
_section = threading.Lock()
_depth = 0
_saved_threads = 1


def kernel_threads() -> int:
    """Workers of the kernels' CPU pool: ``IBFRAME_NUM_THREADS``, else the usable CPUs."""
    value = os.environ.get(ENV_NUM_THREADS, "").strip()
    if value:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            msg = f"{ENV_NUM_THREADS} must be an integer >= 1, got {value!r}"
            raise ParameterError(msg)
        return count
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """torch ops run on one thread while any caller is inside (reference-counted).

    torch's thread count is one setting for the whole process (a worker's own
    ``set_num_threads(1)`` is undone by the next caller that sets it), so the section lowers it
    to 1 on the first entry and puts back what it was on the last exit: two callers that
    overlap (the engine's threads) cannot restore it under each other's blocks.
    """
    global _depth, _saved_threads
    with _section:
        if _depth == 0:
            _saved_threads = torch.get_num_threads()
            if _saved_threads != 1:
                torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _section:
            _depth -= 1
            if _depth == 0 and _saved_threads != 1:
                torch.set_num_threads(_saved_threads)


def single_threaded_caller(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func``'s own torch ops (set-up, reductions) and its blocks on one thread each.

    The blocks go to the pool; the ops around them are small, and parallel ones would stall
    under load like any other. The caller's setting is restored when the last overlapping
    caller returns.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if getattr(_worker, "active", False):
            return func(*args, **kwargs)
        with _single_threaded():
            return func(*args, **kwargs)

    return wrapper


def run_parallel(work: Callable[[Any], None], items: Iterable[Any]) -> None:
    """Run ``work(item)`` for every item on the pool and wait; re-raise the first error."""
    jobs = list(items)
    if not jobs:
        return
    if getattr(_worker, "active", False):  # called from a block: run inline, never wait on self
        for item in jobs:
            work(item)
        return
    with _single_threaded():
        _current_pool().run(work, jobs)


class _Pool:
    """Daemon workers fed from one queue; each has one intra-op torch thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # one thread per op comes from _single_threaded(), around every use of the pool
        ready = threading.Barrier(size + 1)
        for index in range(size):
            thread = threading.Thread(
                target=self._serve, args=(ready,), name=f"ibframe-kernel-{index}", daemon=True
            )
            thread.start()
        ready.wait()

    def _serve(self, ready: threading.Barrier) -> None:
        # subnormal results (terms below ~1e-38 of a point's own term) become 0: without this
        # float32 exp2 of far terms runs 2-3x slower; MXCSR is per thread, the caller's stays
        torch.set_flush_denormal(True)
        _worker.active = True
        ready.wait()
        while True:
            job = self._queue.get()
            if job is None:
                return
            job()

    def run(self, work: Callable[[Any], None], items: list[Any]) -> None:
        remaining = [len(items)]
        errors: list[BaseException] = []
        done = threading.Event()
        guard = threading.Lock()

        def job(item: Any) -> None:
            try:
                if not errors:
                    work(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
            finally:
                with guard:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

        for item in items:
            self._queue.put(lambda item=item: job(item))
        done.wait()
        if errors:
            raise errors[0]

    def close(self) -> None:
        for _ in range(self.size):
            self._queue.put(None)


def _current_pool() -> _Pool:
    """The pool for the current thread count, made anew after a fork or a change of count."""
    global _pool
    size = kernel_threads()
    with _lock:
        pool = _pool
        if pool is None or pool.size != size or pool.pid != os.getpid():
            if pool is not None and pool.pid == os.getpid():
                pool.close()
            pool = _pool = _Pool(size)
        return pool
