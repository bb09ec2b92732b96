"""Crashes and concurrency: SIGKILL inside ``create_run`` and while recording, and a reader
process running beside an appender process.

The full crash campaign is ``benchmarks/crash_record.py`` (90 kills); here it runs in its quick
form, at five chosen kill points. Kills are real SIGKILLs of real subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ibframe
from ibframe.errors import IncompleteStoreError, StoreError, StoreNotFoundError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


KILLED_CREATE = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import zarr.storage
    import ibframe

    path, kill_at = sys.argv[1], int(sys.argv[2])
    original, writes = zarr.storage.LocalStore.set, [0]

    async def dying_set(self, key, value):
        writes[0] += 1
        if writes[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, key, value)

    zarr.storage.LocalStore.set = dying_set
    x = np.linspace(0, 1, 40, dtype=np.float32).reshape(20, 2)
    ibframe.create_run(path, x=x, y=np.arange(20) % 2, beta=0.1, draws=2,
                       layers={"a": 3, "b": 2}, overwrite=True)
    print(writes[0])
    """
)


def _create_killed_at(path: Path, write: int) -> int:
    proc = subprocess.run([sys.executable, "-c", KILLED_CREATE, str(path), str(write)],
                          capture_output=True, text=True, check=False)
    return proc.returncode


@pytest.mark.integration
def test_create_run_killed_anywhere_leaves_nothing_or_a_recognisable_half_store(tmp_path):
    """The issue: a kill inside create_run left ibframe_format on a store without its groups."""
    probe = tmp_path / "probe.zarr"
    proc = subprocess.run([sys.executable, "-c", KILLED_CREATE, str(probe), "0"],
                          capture_output=True, text=True, check=True)
    writes = int(proc.stdout)
    assert ibframe.open_run(probe).layers == ["a", "b"]
    for write in sorted({1, 2, writes // 2, writes - 1, writes}):
        path = tmp_path / f"killed{write}.zarr"
        assert _create_killed_at(path, write) == -9
        if write == 1:  # killed before its first write: a directory holding the stale lock
            with pytest.raises(StoreNotFoundError, match="empty"):
                ibframe.open_run(path)
            ibframe.create_run(path, x=np.zeros((20, 2)), layers={"a": 3}).close()
            continue
        with pytest.raises(StoreError) as info:
            ibframe.open_run(path)
        assert isinstance(info.value, IncompleteStoreError), info.value
        message = str(info.value)
        assert "half-created" in message and "overwrite=True" in message and "\n" not in message
        with pytest.raises(IncompleteStoreError, match=r"overwrite=True.*--overwrite"):
            ibframe.create_run(path, x=np.zeros((20, 2)), layers={"a": 3})
        with ibframe.create_run(path, x=np.zeros((20, 2)), layers={"a": 3}, overwrite=True) as run:
            run.append_epoch(0, {"a": np.ones((20, 3))})
        assert ibframe.open_run(path).epochs.tolist() == [0]


@pytest.mark.integration
def test_overwrite_killed_midway_never_leaves_the_old_run_looking_whole(tmp_path):
    path = tmp_path / "r.zarr"
    with ibframe.create_run(path, x=np.zeros((20, 2)), layers={"old": 3}) as run:
        run.append_epoch(0, {"old": np.ones((20, 3))})
    assert _create_killed_at(path, 2) == -9  # after the old run was marked as being replaced
    with pytest.raises(IncompleteStoreError):
        ibframe.open_run(path)


@pytest.mark.slow
@pytest.mark.integration
def test_quick_crash_campaign():
    """benchmarks/crash_record.py --quick: kills inside create_run and while recording."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "crash_record.py"), "--quick"],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["failures"] == []
    assert report["sigkills"] >= 4 and report["sigkills_in_create_run"] >= 2
    assert report["unreadable"] == report["acked_lost"] == report["wrong_values"] == 0
    assert report["not_resumable"] == 0
    assert report["stores_half_created"] >= 1 and report["stores_run"] >= 2


APPENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import ibframe

    path, epochs, counter = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    reads = lambda: int(counter.read_text()) if counter.exists() else 0
    seen = 0
    x = np.linspace(0, 1, 64 * 3, dtype=np.float32).reshape(64, 3)
    with ibframe.create_run(path, x=x, y=np.arange(64) % 4, beta=0.1, draws=3,
                            layers={"a": 5, "b": 2}) as run:
        for epoch in range(epochs):
            base = np.arange(64 * 4, dtype=np.float32).reshape(64, 4, 1) / 1000 + epoch
            metrics = {"loss": float(epoch)}
            if epoch >= 10:
                metrics["late"] = float(-epoch)  # a metric that appears mid-run
            params = {"w": np.full((3, 3), epoch, np.float32)}
            if epoch >= 20:
                params["late_w"] = np.full(2, epoch, np.float32)
            run.append_epoch(epoch, {"a": np.repeat(base, 5, axis=2), "b": base[..., [0, 0]]},
                             metrics=metrics, params=params)
            if epoch % 8 == 7:  # let the reader finish one more read while this run is open
                deadline = time.monotonic() + 120
                while reads() <= seen and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen = reads()
    """
)

READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    import ibframe
    from ibframe.errors import IncompleteStoreError, StoreNotFoundError

    path, epochs, counter = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    reads = errors = torn = 0
    first_error = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            run = ibframe.open_run(path)
        except (StoreNotFoundError, IncompleteStoreError):
            continue  # not created yet: not an error
        try:
            committed = run.epochs.tolist()
            metrics = run.metrics()
            s = run.activations("a").values
            for i, epoch in enumerate(committed):
                block = run.block("b", epoch)
                base = np.arange(64 * 4, dtype=np.float32).reshape(64, 4) / 1000 + epoch
                ok = np.array_equal(block.s, base[:, [0, 0]])
                ok &= np.array_equal(block.s_cond, np.repeat(base[:, 1:, None], 2, axis=2))
                ok &= np.array_equal(s[i], np.repeat(base[:, :1], 5, axis=1))
                ok &= metrics["loss"].values[i] == epoch
                if "late" in metrics:
                    late = metrics["late"].values[i]
                    ok &= late == -epoch if epoch >= 10 else np.isnan(late)
                params = run.params(epoch)
                ok &= np.array_equal(params["w"], np.full((3, 3), epoch))
                if "late_w" in params:
                    late_w = params["late_w"]
                    ok &= np.array_equal(late_w, np.full(2, epoch)) if epoch >= 20 else np.isnan(late_w).all()
                torn += not ok
            reads += 1
            counter.with_suffix(".tmp").write_text(str(reads))
            counter.with_suffix(".tmp").replace(counter)
        except Exception as err:
            errors += 1
            first_error = first_error or f"{type(err).__name__}: {err}"
        if len(committed) == epochs:
            break
    print(json.dumps({"reads": reads, "errors": errors, "torn": torn, "first_error": first_error}))
    """
)


@pytest.mark.slow
@pytest.mark.integration
def test_a_reader_beside_an_appender_sees_only_whole_epochs(tmp_path):
    """The appender waits for the reader's next read every 8 epochs, so reads overlap appends."""
    path, epochs, counter = tmp_path / "r.zarr", 40, tmp_path / "reads"
    args = [str(path), str(epochs), str(counter)]
    reader = subprocess.Popen([sys.executable, "-c", READER, *args], stdout=subprocess.PIPE,
                              text=True)
    appender = subprocess.run([sys.executable, "-c", APPENDER, *args], capture_output=True,
                              text=True, check=False)
    out, _ = reader.communicate(timeout=180)
    assert appender.returncode == 0, appender.stderr
    report = json.loads(out)
    assert report["errors"] == 0, report["first_error"]
    assert report["torn"] == 0
    assert report["reads"] >= 5
    assert ibframe.open_run(path).epochs.tolist() == list(range(epochs))


def test_the_next_writer_removes_what_a_killed_write_left(tmp_path):
    """zarr writes each object to a ``*.partial`` file renamed into place; a kill between the two
    leaves the temporary file, which plain zarr listings then warn about."""
    path = tmp_path / "r.zarr"
    with ibframe.create_run(path, x=np.zeros((4, 2)), layers={"a": 1}) as run:
        run.append_epoch(0, {"a": np.ones((4, 1))})
    leftovers = [path / "zarr.0123456789abcdef0123456789abcdef.partial",
                 path / "layers" / "a" / "S" / "c" / "0" / "0" / "0.00112233445566778899aabbccddeeff.partial"]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
    assert ibframe.open_run(path).epochs.tolist() == [0]  # readers ignore them
    ibframe.open_run(path, mode="a").close()
    assert not any(leftover.exists() for leftover in leftovers)
