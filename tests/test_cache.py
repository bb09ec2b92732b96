"""The results cache: only committed, verified values are served; anything else is recomputed.

Crashes are real: a child process estimates with the cache and SIGKILLs itself at a chosen
write to the store (the harness of benchmarks/crash_estimate.py, which wraps Zarr's store, not
ibframe); damage is done by hand to the files, as a disk or a user would.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from ibframe.cache import CacheWarning
from ibframe.engine import estimate
from ibframe.errors import SampleSizeWarning
from ibframe.testing import make_test_run

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "crash_estimate.py"
BINNED = {"binned-entropy": {"bin_size": [0.1, 0.5]}}


@pytest.fixture
def run(tmp_path):
    return make_test_run(tmp_path / "r.zarr", epochs=4)


def _estimate(path, estimators=BINNED, **kwargs):
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        ds = estimate(path, estimators, device="cpu",
                      progress=lambda done, total: seen.append(total), **kwargs)
    return ds, seen[0]


def _entry(run, estimator="binned-entropy", layer="h2"):
    (path,) = (run.path / "results" / estimator).glob(f"*/{layer}")
    return path


def _same(ds, reference):
    for name, var in reference.data_vars.items():
        np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)


def test_a_tampered_value_is_detected_and_recomputed(run):
    reference, _ = _estimate(run, cache=False)
    _estimate(run)
    group = zarr.open_group(_entry(run), mode="r+")
    group["entropy_bin"][1] = 42.0  # by hand, as a user editing the store would
    with pytest.warns(CacheWarning, match=r"damaged values at epoch\(s\) \d"):
        ds, computed = _estimate(run)
    assert computed == 1
    assert not (ds["entropy_bin"] == 42.0).any()
    _same(ds, reference)
    ds, computed = _estimate(run)  # repaired: read back without a warning
    assert computed == 0
    _same(ds, reference)


def test_edited_coordinates_or_metadata_damage_the_entry(run):
    reference, _ = _estimate(run, cache=False)
    _estimate(run)
    group = zarr.open_group(_entry(run), mode="r+")
    group["bin_size"][0] = 0.2
    with pytest.warns(CacheWarning, match="coordinates or metadata changed"):
        ds, computed = _estimate(run)
    assert computed == len(run.epochs)
    _same(ds, reference)


@pytest.mark.parametrize("damage", ["delete", "garble", "truncate"])
def test_missing_or_damaged_chunks_are_never_read_as_values(run, damage):
    reference, _ = _estimate(run, cache=False)
    _estimate(run)
    chunks = sorted((_entry(run) / "entropy_bin" / "c").rglob("*"))
    chunk = [c for c in chunks if c.is_file()][2]
    if damage == "delete":
        chunk.unlink()  # a missing chunk reads as the fill value: the checksum catches it
    elif damage == "garble":
        chunk.write_bytes(bytes(255 - b for b in chunk.read_bytes()))
    else:
        chunk.write_bytes(chunk.read_bytes()[:3])
    with pytest.warns(CacheWarning, match="damaged values"):
        ds, computed = _estimate(run)
    assert computed == 1
    _same(ds, reference)


@pytest.mark.parametrize(
    "damage", ["no commit", "garbled commit", "repeated epoch", "garbled metadata"]
)
def test_incomplete_or_unreadable_entries_are_recomputed(run, damage):
    reference, _ = _estimate(run, cache=False)
    _estimate(run)
    entry = _entry(run)
    if damage == "no commit":  # what an interrupted writer, or an older ibframe, leaves
        shutil.rmtree(entry)
        reference.isel(layer=1).drop_vars(["loss_train", "loss_test", "layer"]).to_zarr(
            run.path, group=str(entry.relative_to(run.path)), zarr_format=3, consolidated=False
        )
    elif damage == "garbled commit":
        zarr.open_group(entry, mode="r+").attrs["ibframe_cache"] = {"format": 1, "epochs": "x"}
    elif damage == "repeated epoch":  # a commit naming one epoch twice
        group = zarr.open_group(entry, mode="r+")
        commit = dict(group.attrs["ibframe_cache"])
        commit["epochs"] = [*commit["epochs"], commit["epochs"][0]]
        group.attrs["ibframe_cache"] = commit
    else:
        (entry / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    with pytest.warns(CacheWarning, match="no commit|damaged|unreadable"):
        ds, computed = _estimate(run)
    assert computed == len(run.epochs)
    _same(ds, reference)
    assert _estimate(run)[1] == 0


@pytest.mark.slow
@pytest.mark.integration
def test_an_entry_killed_mid_write_is_never_served(tmp_path):
    """SIGKILL in a child at its first write of an array chunk: the entry has its arrays'
    metadata but no commit. The rerun warns, recomputes, and serves only right values."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("crash_estimate", HARNESS)
    harness = module_from_spec(spec)
    spec.loader.exec_module(harness)
    estimators = harness.QUICK_ESTIMATORS
    base = make_test_run(tmp_path / "base.zarr", n=48, widths=(5, 3, 2), epochs=4).path
    reference = harness._estimate(base, estimators, cache=False)

    def child(store, kill_at):  # the synchronous scheduler: the same writes in every run
        return harness.child_run(store, kill_at, "before", estimators, scheduler="sync")

    counting = tmp_path / "count.zarr"
    shutil.copytree(base, counting)
    with harness.cache_writes() as keys:  # the writes of a whole estimate, here, no kill
        harness._estimate(counting, estimators, scheduler="sync")
    first_chunk = next(i for i, key in enumerate(keys) if re.search(r"/c(/\d+)+$", key))

    store = tmp_path / "killed.zarr"
    shutil.copytree(base, store)
    killed = child(store, first_chunk + 1)
    assert killed.returncode == -signal.SIGKILL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = harness._estimate(store, estimators)
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert any("no commit" in m for m in messages), messages
    for name, var in reference.data_vars.items():
        np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)
    seen = []
    harness._estimate(store, estimators, progress=lambda done, total: seen.append(total))
    assert seen[0] == 0


@pytest.mark.slow
@pytest.mark.integration
def test_crash_campaign_quick_form():
    """benchmarks/crash_estimate.py --quick: kills at random cache writes, both before a write
    and with a torn one, from a cold and a warm cache. Nothing wrong is served, every killed
    estimate resumes, and a kill between atomic writes loses nothing committed."""
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--quick"],
        capture_output=True, text=True, check=False, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout)
    assert sum(counts["killed"].values()) == counts["trials"], counts
    assert counts["wrong_values_served"] == 0, counts
    assert counts["not_resumable"] == 0, counts
    assert counts["not_cached_after_rerun"] == 0, counts
    assert counts["committed_tasks_lost"]["before"] == 0, counts


def test_cached_and_fresh_results_are_identical(run):
    estimators = {
        "binned-entropy": {"bin_size": [0.1, 0.5]},
        "distance-histogram": {"bins": 8},  # string coordinates, bounds
        "unit-entropy-slopes": {"bin_sizes": [0.01, 0.1]},  # per unit, across epochs
    }
    fresh, _ = _estimate(run, estimators)
    cached, computed = _estimate(run, estimators)
    assert computed == 0
    xr.testing.assert_identical(fresh.drop_attrs(), cached.drop_attrs())
