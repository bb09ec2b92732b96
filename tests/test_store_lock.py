"""One writer at a time: a second writer is refused with one line naming the holder.

Writers (``create_run``, ``open_run(mode="a")``) hold an exclusive lock for their lifetime;
readers never take it. A writer killed with SIGKILL leaves nothing that blocks the next one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import xarray as xr

import ibframe
from ibframe.errors import StoreError


def _create(path, **kwargs):
    x = np.linspace(0, 1, 12, dtype=np.float32).reshape(6, 2)
    return ibframe.create_run(path, x=x, layers={"h1": 2}, **kwargs)


def _acts(value: float) -> dict[str, np.ndarray]:
    return {"h1": np.full((6, 2), value, np.float32)}


def test_a_second_writer_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / "r.zarr"
    first = _create(path)
    first.append_epoch(0, _acts(0))
    with pytest.raises(StoreError, match=f"pid {os.getpid()}.*{socket.gethostname()}.*since") as info:
        ibframe.open_run(path, mode="a")
    assert "\n" not in str(info.value) and "this process" in str(info.value)
    with pytest.raises(StoreError, match="pid"):
        _create(path, overwrite=True)
    # readers never need the lock
    assert ibframe.open_run(path).epochs.tolist() == [0]
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.append_epoch(1, _acts(1))
    with ibframe.open_run(path, mode="a") as second:
        second.append_epoch(1, _acts(1))
    assert ibframe.open_run(path).epochs.tolist() == [0, 1]


def test_the_lock_is_gone_after_close_and_xarray_sees_a_clean_store(tmp_path):
    path = tmp_path / "r.zarr"
    with _create(path) as run:
        run.append_epoch(0, _acts(0))
    assert sorted(p.name for p in path.iterdir()) == ["data", "layers", "metrics", "params", "zarr.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_datatree(path, engine="zarr", consolidated=False)


HOLDER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import ibframe

    run = ibframe.open_run(sys.argv[1], mode="a")
    print("holding", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.integration
def test_a_second_writer_process_is_refused_until_the_first_is_killed(tmp_path):
    path = tmp_path / "r.zarr"
    with _create(path) as run:
        run.append_epoch(0, _acts(0))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreError, match=f"pid {holder.pid} on host") as info:
            ibframe.open_run(path, mode="a")
        assert "\n" not in str(info.value)
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            _create(path, overwrite=True)
        assert ibframe.open_run(path).epochs.tolist() == [0]
        # a writer killed with SIGKILL: the kernel drops its lock, the next writer takes over
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert (path / "ibframe-writer.lock").exists()  # left behind, but stale
    with ibframe.open_run(path, mode="a") as run:
        run.append_epoch(1, _acts(1))
    assert ibframe.open_run(path).epochs.tolist() == [0, 1]
    assert not (path / "ibframe-writer.lock").exists()


TWO_WRITERS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ibframe
    from ibframe.errors import StoreError

    path, value = sys.argv[1], float(sys.argv[2])
    appended = refused = 0
    for attempt in range(400):
        try:
            with ibframe.open_run(path, mode="a") as run:
                epoch = int(run.epochs[-1]) + 1 if run.epochs.size else 0
                run.append_epoch(epoch, {"h1": np.full((6, 2), value + epoch, np.float32)})
                appended += 1
        except StoreError as err:
            assert "another writer" in str(err), err
            refused += 1
        if appended >= 15:
            break
    print(appended, refused)
    """
)


@pytest.mark.integration
def test_two_writer_processes_never_mix_their_epochs(tmp_path):
    """The issue's race: two appenders, each told every append succeeded, lost epochs."""
    path = tmp_path / "r.zarr"
    _create(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(path), str(v)],
                         stdout=subprocess.PIPE, text=True)
        for v in (1000.0, 2000.0)
    ]
    outputs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    appended = sum(int(out[0]) for out in outputs)
    run = ibframe.open_run(path)
    assert run.epochs.tolist() == list(range(appended))
    s = run.activations("h1").values
    for epoch in range(appended):
        value = s[epoch, 0, 0]
        assert value - epoch in (1000.0, 2000.0)
        assert np.all(s[epoch] == value)  # one writer's epoch, whole


def test_a_forked_child_neither_holds_nor_releases_the_lock(tmp_path):
    """Data-loader workers and the like are forked from the writer: they must not be writers,
    and their exit must not release the writer's lock (flock locks are shared across fork)."""
    path = tmp_path / "r.zarr"
    run = _create(path)
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            run.append_epoch(0, _acts(0))
            code = 1
        except StoreError as err:
            code = 0 if "does not hold the writer lock" in str(err) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with pytest.raises(StoreError, match="locked by another writer"):
        ibframe.open_run(path, mode="a")
    run.append_epoch(0, _acts(0))
    run.close()
    assert ibframe.open_run(path).epochs.tolist() == [0]


def test_a_refused_resume_releases_the_lock(tmp_path):
    from ibframe.recording.datasets import Dataset
    from ibframe.recording.nn import noisy_mlp
    from ibframe.recording.recorder import Recorder

    x = np.random.default_rng(0).integers(0, 2, (16, 6)).astype(np.float32)
    data = Dataset(x, np.arange(16) % 2, np.array(["train"] * 16), "bits", "random bits")
    path = tmp_path / "r.zarr"
    with Recorder.for_network(noisy_mlp((6, 4, 2), beta=0.1), path, data) as recorder:
        recorder.record(0)
    with pytest.raises(StoreError, match="cannot resume") as info:
        Recorder.for_network(noisy_mlp((6, 4, 3, 2), beta=0.1), path, data, resume=True)
    assert info.value is not None  # the failed recorder's frames are still alive here
    with ibframe.open_run(path, mode="a") as run:
        assert run.epochs.tolist() == [0]
