"""Crash campaign for the results cache: SIGKILL ``estimate`` at random cache writes.

Each trial copies a small recorded run store, then runs ``ibframe.estimate`` in a child process
(the default threaded scheduler, four estimators of every shape of result: scalars, per-bin,
per-unit, string coordinates, a summary across epochs) that kills itself with SIGKILL at its
k-th write to the store's ``results/`` (k uniform over the writes a whole estimate makes). The
kill is injected by wrapping Zarr's ``LocalStore._set`` in the child, never inside ibframe, in
one of two modes:

* ``before``: the k-th write never happens (Zarr's local store replaces each key atomically,
  so this is what any crash looks like on it);
* ``torn``: the k-th key gets the first half of its bytes, written in place, then the kill (a
  store without atomic writes, or a disk that lost the tail of a write).

Half of the trials start with the cache already holding the first two epochs (the kill then
falls among appends), half with no cache. After each kill the estimate is rerun here, in this
process, and compared value by value, bit for bit, with a reference computed without the cache;
then run once more, which must find everything cached and equal again. Prints one JSON object:

* ``wrong_values_served``: trials whose rerun returned any value that differs from the
  reference (the target is 0);
* ``not_resumable``: trials whose rerun raised (target 0);
* ``not_cached_after_rerun``: trials whose second rerun still had tasks to compute (target 0);
* ``committed_tasks_lost``, per mode: tasks whose results had been committed before the kill
  but were computed again (a torn commit or array header loses its entry's epochs: they are
  recomputed, not served; with atomic writes nothing committed is lost);
* the kills per mode, the warnings the reruns gave, and the fraction of tasks each rerun
  recomputed.

``--quick`` runs four trials without sp-mi (the test suite's form); ``--trials N`` sets the
number of trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ESTIMATORS: dict[str, dict[str, Any]] = {
    "binned-entropy": {"bin_size": [0.1, 0.5]},
    "distance-histogram": {"bins": 8},
    "unit-entropy-slopes": {"bin_sizes": [0.01, 0.1]},
    "sp-mi": {"n_points": 512},
}
#: ``--quick`` leaves out sp-mi, the slowest, and runs four trials.
QUICK_ESTIMATORS = {k: v for k, v in ESTIMATORS.items() if k != "sp-mi"}
EPOCHS = 4
WARM_EPOCHS = [0, 1]
MODES = ("before", "torn")


def _estimate(store: Path, estimators: dict[str, dict[str, Any]], **kwargs: Any) -> Any:
    import ibframe
    from ibframe.errors import SampleSizeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)  # 48 samples: a small test run
        return ibframe.estimate(store, estimators, device="cpu", **kwargs)


@contextlib.contextmanager
def cache_writes(kill_at: int = 0, mode: str = "before") -> Iterator[list[str]]:
    """Record the keys written under ``results/``; SIGKILL this process at the ``kill_at``-th.

    Wraps Zarr's ``LocalStore._set``, through which every write of the local store goes.
    """
    from zarr.storage import LocalStore

    original = LocalStore._set
    keys: list[str] = []

    async def set_or_die(self: LocalStore, key: str, value: Any, exclusive: bool = False) -> None:
        if key.startswith("results/"):
            keys.append(key)
            if len(keys) == kill_at:
                if mode == "torn":
                    target = Path(self.root) / key
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = value.to_bytes()
                    target.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        await original(self, key, value, exclusive=exclusive)

    LocalStore._set = set_or_die  # type: ignore[method-assign]
    try:
        yield keys
    finally:
        LocalStore._set = original  # type: ignore[method-assign]


def child(
    store: Path,
    kill_at: int,
    mode: str,
    estimators: dict[str, dict[str, Any]],
    scheduler: str | None = None,
) -> None:
    """Estimate with the cache, dying at the ``kill_at``-th cache write."""
    with cache_writes(kill_at, mode):
        _estimate(store, estimators, scheduler=scheduler)


def child_run(
    store: Path,
    kill_at: int,
    mode: str,
    estimators: dict[str, dict[str, Any]],
    scheduler: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run :func:`child` in a fresh interpreter."""
    spec = {"store": str(store), "kill_at": kill_at, "mode": mode, "estimators": estimators,
            "scheduler": scheduler}
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)


def _totals(into: list[int]) -> Any:
    """A progress callback that keeps each total: the first is the tasks to compute."""
    return lambda done, total: into.append(total)


def _committed(store: Path) -> int:
    """Tasks the cache commits name, read straight from the metadata (no checks)."""
    total = 0
    for meta in (store / "results").rglob("zarr.json"):
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
            total += len(attrs.get("ibframe_cache", {}).get("epochs", []))
        except (OSError, ValueError, AttributeError):
            continue
    return total


def _differs(ds: Any, reference: Any) -> list[str]:
    return [
        str(name)
        for name, var in reference.data_vars.items()
        if name not in ds
        or ds[name].shape != var.shape
        or not np.array_equal(ds[name].values, var.values, equal_nan=True)
    ]


def campaign(
    trials: int, seed: int, workdir: Path, estimators: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Run the trials; the counts described at the top of this file."""
    from ibframe.testing import make_test_run

    started = time.perf_counter()
    rng = random.Random(seed)
    cold = workdir / "cold.zarr"
    make_test_run(cold, n=48, widths=(5, 3, 2), epochs=EPOCHS)
    reference = _estimate(cold, estimators, cache=False)
    warm = workdir / "warm.zarr"
    shutil.copytree(cold, warm)
    _estimate(warm, estimators, epochs=WARM_EPOCHS)
    tasks_total = len(estimators) * 3 * EPOCHS

    writes = {}
    for name, base in (("cold", cold), ("warm", warm)):
        probe = workdir / f"probe-{name}.zarr"
        shutil.copytree(base, probe)
        with cache_writes() as keys:
            _estimate(probe, estimators)
        writes[name] = len(keys)

    counts: dict[str, Any] = {
        "trials": trials,
        "killed": dict.fromkeys(MODES, 0),
        "not_killed": 0,
        "wrong_values_served": 0,
        "not_resumable": 0,
        "not_cached_after_rerun": 0,
        "committed_tasks_lost": dict.fromkeys(MODES, 0),
        "rerun_warnings": 0,
    }
    recomputed_fractions = []
    examples: list[str] = []
    for trial in range(trials):
        start = "warm" if trial % 2 else "cold"
        mode = MODES[(trial // 2) % 2]
        store = workdir / f"trial-{trial}.zarr"
        shutil.copytree(warm if start == "warm" else cold, store)
        kill_at = rng.randint(1, writes[start])
        killed = child_run(store, kill_at, mode, estimators)
        if killed.returncode != -signal.SIGKILL:
            counts["not_killed"] += 1
            examples.append(f"trial {trial}: child exited {killed.returncode}: {killed.stderr[-300:]}")
            continue
        counts["killed"][mode] += 1
        committed = _committed(store)
        seen: list[int] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = _estimate(store, estimators, progress=_totals(seen))
            except Exception as err:  # noqa: BLE001 - counted: a rerun must never fail
                counts["not_resumable"] += 1
                examples.append(f"trial {trial} ({start}, {mode}, k={kill_at}): {err!r}")
                continue
        counts["rerun_warnings"] += sum(
            1 for w in caught if "SampleSize" not in type(w.message).__name__
        )
        recomputed = seen[0]
        recomputed_fractions.append(recomputed / tasks_total)
        counts["committed_tasks_lost"][mode] += max(0, recomputed - (tasks_total - committed))
        wrong = _differs(ds, reference)
        if wrong:
            counts["wrong_values_served"] += 1
            examples.append(f"trial {trial} ({start}, {mode}, k={kill_at}): wrong {wrong}")
        again: list[int] = []
        ds = _estimate(store, estimators, progress=_totals(again))
        if again[0] != 0 or _differs(ds, reference):
            counts["not_cached_after_rerun"] += 1
        shutil.rmtree(store)
    counts.update(
        {
            "estimators": list(estimators),
            "cache_writes_per_estimate": writes,
            "tasks_per_estimate": tasks_total,
            "recomputed_fraction_mean": round(float(np.mean(recomputed_fractions)), 3)
            if recomputed_fractions
            else None,
            "examples": examples[:5],
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="a few trials, for the test suite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON, from child_run
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child(Path(spec["store"]), spec["kill_at"], spec["mode"], spec["estimators"],
              spec["scheduler"])
        return
    trials, estimators = (4, QUICK_ESTIMATORS) if args.quick else (args.trials, ESTIMATORS)
    with tempfile.TemporaryDirectory(prefix="ibframe-crash-") as where:
        print(json.dumps(campaign(trials, args.seed, Path(where), estimators), indent=1))


if __name__ == "__main__":
    main()
