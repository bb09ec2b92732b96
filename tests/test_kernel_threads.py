"""The kernels' worker pool: its size, the caller's torch threads, errors, forks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from ibframe.errors import ParameterError
from ibframe.kernels._threads import ENV_NUM_THREADS, kernel_threads, run_parallel
from ibframe.kernels.mixture import gaussian_mixture_entropy


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    merged = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=True, timeout=300, env=merged)
    return out.stdout.strip()


def test_thread_count_follows_the_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_NUM_THREADS, "3")
    assert kernel_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(ENV_NUM_THREADS, bad)
        with pytest.raises(ParameterError, match=ENV_NUM_THREADS):
            kernel_threads()
    monkeypatch.delenv(ENV_NUM_THREADS)
    assert kernel_threads() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_pool_respects_the_cpu_affinity_and_the_override() -> None:
    code = """
        import os, threading
        import numpy as np
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        from ibframe.kernels.mixture import gaussian_mixture_entropy
        gaussian_mixture_entropy(np.random.default_rng(0).normal(size=(3000, 3)), 0.1, seed=0)
        print(sum(t.name.startswith("ibframe-kernel-") for t in threading.enumerate()))
    """
    assert run_python(code) == "1"
    assert run_python(code, {ENV_NUM_THREADS: "3"}) == "3"


def test_caller_keeps_its_torch_threads() -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gaussian_mixture_entropy(np.random.default_rng(0).normal(size=(3000, 3)), 0.1, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_errors_in_a_block_reach_the_caller_and_the_pool_survives() -> None:
    def work(item: int) -> None:
        if item == 3:
            msg = "block 3 failed"
            raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="block 3 failed"):
        run_parallel(work, range(8))
    seen: list[int] = []
    run_parallel(seen.append, range(5))
    assert sorted(seen) == list(range(5))


def test_blocks_run_single_threaded_and_nested_calls_run_inline() -> None:
    threads: list[int] = []

    def inner(item: int) -> None:
        threads.append(torch.get_num_threads())

    def outer(item: int) -> None:
        threads.append(torch.get_num_threads())
        run_parallel(inner, range(2))

    run_parallel(outer, range(3))
    assert threads == [1] * 9


def test_a_forked_child_gets_a_pool_of_its_own() -> None:
    code = """
        import multiprocessing as mp
        import numpy as np
        from ibframe.kernels.mixture import gaussian_mixture_entropy
        centres = np.random.default_rng(0).normal(size=(3000, 3))
        def child(queue):
            queue.put(gaussian_mixture_entropy(centres, 0.1, seed=0))
        parent = gaussian_mixture_entropy(centres, 0.1, seed=0)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        process = ctx.Process(target=child, args=(queue,))
        process.start()
        value = queue.get(timeout=120)
        process.join(timeout=60)
        print(value == parent)
    """
    assert run_python(code) == "True"


def test_overlapping_callers_keep_blocks_single_threaded_and_restore_the_setting() -> None:
    """torch's thread count is one process-wide setting: two callers whose blocks overlap
    (the engine's threads) must not put it back under each other's blocks."""
    before = torch.get_num_threads()
    seen: list[int] = []
    started = threading.Barrier(2)

    def block(item: int) -> None:
        time.sleep(0.02)
        seen.append(torch.get_num_threads())

    def caller(delay: float) -> None:
        started.wait()
        time.sleep(delay)
        run_parallel(block, range(6))

    threads = [threading.Thread(target=caller, args=(delay,)) for delay in (0.0, 0.03)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [1] * 12
    assert torch.get_num_threads() == before
