"""What the run store's integrity checks cost on a read of a whole SZT-sized run; prints JSON.

The run: 4096 samples of 12 bits, hidden layers 10-7-5-4-3, beta 0.1, 100 recorded epochs,
32 conditional draws for 512 of the inputs, four metrics and the 12 parameter arrays of the SZT
network per epoch (about 240 MB of float32 before compression). It is read whole in two ways:

* ``arrays``: every layer's ``activations`` and ``conditional`` in full, ``x``, ``y``,
  ``split``, ``metrics()`` and ``params(e)`` of every epoch (what an analysis notebook does);
* ``blocks``: ``Run.block(layer, epoch)`` for every layer and epoch, from one ``Run``;
* ``tasks``: the same, but each block from a freshly opened ``Run``, as each task of
  ``ibframe.estimate`` does (so opening, with its metadata checks, is counted 500 times).

Each way is timed through ``Run`` with the checks as shipped (a CRC-32C in every chunk; each
result scanned for the array's fill value, and where it holds one, a look at which of the chunks
read exist), against two baselines measured in the same run:

* ``no_checks``: the same run rewritten without the CRC-32C codec, read through ``Run`` with the
  chunk check switched off: the cost of reading before these checks existed;
* ``no_chunk_check``: the shipped store (CRC-32C on), chunk check off, to split the two.

Plain ``zarr`` reads of the two stores are reported too, outside ``Run``. Times are the medians
and minima of several alternating repetitions with a warm page cache, and the ratios of both
are reported: on a machine shared with other work the minima are the steadier.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

import ibframe
from ibframe.store import integrity

WIDTHS = (12, 10, 7, 5, 4, 3, 2)


def build(path: Path, samples: int, epochs: int, draws: int, conditional: int) -> None:
    """An SZT-sized run with smoothly changing activations (compressible like real ones)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (samples, WIDTHS[0])).astype(np.float32)
    y = (x[:, :3].sum(axis=1) % 2).astype(np.int64)
    split = np.where(np.arange(samples) < samples * 4 // 5, "train", "test")
    layers = {f"h{i}": w for i, w in enumerate(WIDTHS[1:-1], 1)}
    cond = np.sort(rng.choice(samples, conditional, replace=False))
    weights = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in itertools.pairwise(WIDTHS)]
    with ibframe.create_run(path, x=x, y=y, split=split, beta=0.1, draws=draws,
                            conditional_samples=cond, layers=layers) as run:
        for epoch in range(epochs):
            scale = 1 + epoch / 20
            t = x
            acts, conds = {}, {}
            for i, (name, w) in enumerate(zip(layers, weights, strict=False)):
                s = np.tanh(scale * t @ w).astype(np.float32)
                acts[name] = s
                noise = rng.standard_normal((conditional, draws, s.shape[1])).astype(np.float32)
                conds[name] = np.tanh(s[cond][:, None, :] + 0.1 * (i > 0) * noise)
                t = s + 0.1 * rng.standard_normal(s.shape).astype(np.float32)
            params = {}
            for i, w in enumerate(weights, 1):
                params[f"fc{i}.weight"] = (scale * w.T).astype(np.float32)
                params[f"fc{i}.bias"] = np.full(w.shape[1], 0.01 * epoch, np.float32)
            metrics = {"loss_train": 1 / scale, "loss_test": 1.1 / scale,
                       "accuracy_train": 1 - 0.5 / scale, "accuracy_test": 1 - 0.6 / scale}
            run.append_epoch(epoch, acts, conditional=conds, metrics=metrics, params=params)


def without_checksums(source: Path, target: Path) -> None:
    """A copy of ``source`` whose arrays are rewritten with zstd alone (no CRC-32C)."""
    import shutil

    shutil.copytree(source, target)
    root = zarr.open_group(target, mode="r+")
    for path, array in list(root.members(max_depth=None)):
        if not isinstance(array, zarr.Array):
            continue
        data = array[...]
        copy = root.create_array(
            path, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
            fill_value=array.fill_value, dimension_names=array.metadata.dimension_names,
            attributes=array.attrs.asdict(), compressors=(ZstdCodec(level=0),), overwrite=True,
            config={"write_empty_chunks": True},
        )
        copy[...] = data


@contextlib.contextmanager
def chunk_check(enabled: bool) -> Iterator[None]:
    """Switch the chunk check off (for the baselines only): no scan of results for the fill
    value, hence no look at which chunks exist."""
    original = integrity._holds
    if not enabled:
        integrity._holds = lambda values, fill: False
    try:
        yield
    finally:
        integrity._holds = original


def read_arrays(path: Path) -> float:
    run = ibframe.open_run(path)
    total = 0.0
    for layer in run.layers:
        total += float(run.activations(layer).values.sum())
        total += float(run.conditional(layer).values.sum())
    total += float(run.x.sum()) + float(run.y.sum()) + len(run.split)
    total += float(sum(v.values.sum() for v in run.metrics().data_vars.values()))
    for epoch in run.epochs.tolist():
        total += float(sum(p.sum() for p in run.params(epoch).values()))
    return total


def read_blocks(path: Path) -> float:
    run = ibframe.open_run(path)
    total = 0.0
    for layer in run.layers:
        for epoch in run.epochs.tolist():
            block = run.block(layer, epoch)
            total += float(block.s.sum()) + float(block.s_cond.sum())
    return total


def read_tasks(path: Path) -> float:
    run = ibframe.open_run(path)
    pairs = [(layer, epoch) for layer in run.layers for epoch in run.epochs.tolist()]
    total = 0.0
    for layer, epoch in pairs:
        block = ibframe.open_run(path).block(layer, epoch)
        total += float(block.s.sum()) + float(block.s_cond.sum())
    return total


def read_zarr(path: Path) -> float:
    """Every array of the store through plain zarr (no ibframe)."""
    root = zarr.open_group(path, mode="r")
    return float(sum(np.asarray(a[...], dtype=np.float64).sum()
                     for _, a in root.members(max_depth=None) if isinstance(a, zarr.Array)))


def timed(reps: int, cases: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Alternate the cases ``reps`` times (after one warm-up each); seconds per repetition."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    results = {name: fn() for name, fn in cases.items()}  # warm-up, and the checksum of the data
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            value = fn()
            times[name].append(time.perf_counter() - start)
            assert math.isclose(value, results[name], rel_tol=1e-6)  # same data each time
    return times


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--conditional", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ibframe-store-read-") as tmp:
        checked, plain = Path(tmp) / "checked.zarr", Path(tmp) / "plain.zarr"
        start = time.perf_counter()
        build(checked, args.samples, args.epochs, args.draws, args.conditional)
        build_seconds = time.perf_counter() - start
        without_checksums(checked, plain)

        def case(path: Path, check: bool, read: Callable[[Path], float]) -> Callable[[], float]:
            def run() -> float:
                with chunk_check(check):
                    return read(path)

            return run

        times = timed(args.reps, {
            "arrays_checked": case(checked, True, read_arrays),
            "arrays_no_chunk_check": case(checked, False, read_arrays),
            "arrays_no_checks": case(plain, False, read_arrays),
            "blocks_checked": case(checked, True, read_blocks),
            "blocks_no_chunk_check": case(checked, False, read_blocks),
            "blocks_no_checks": case(plain, False, read_blocks),
            "tasks_checked": case(checked, True, read_tasks),
            "tasks_no_checks": case(plain, False, read_tasks),
            "zarr_crc32c": lambda: read_zarr(checked),
            "zarr_plain": lambda: read_zarr(plain),
        })
        sizes = {"checked_mb": round(size_mb(checked), 1), "plain_mb": round(size_mb(plain), 1)}

    median = {name: statistics.median(t) for name, t in times.items()}
    fastest = {name: min(t) for name, t in times.items()}
    pairs = {
        "arrays_checked_vs_no_checks": ("arrays_checked", "arrays_no_checks"),
        "arrays_crc_only_vs_no_checks": ("arrays_no_chunk_check", "arrays_no_checks"),
        "blocks_checked_vs_no_checks": ("blocks_checked", "blocks_no_checks"),
        "blocks_crc_only_vs_no_checks": ("blocks_no_chunk_check", "blocks_no_checks"),
        "tasks_checked_vs_no_checks": ("tasks_checked", "tasks_no_checks"),
        "zarr_crc32c_vs_plain": ("zarr_crc32c", "zarr_plain"),
    }
    report: dict[str, Any] = {
        "config": {**vars(args), "widths": list(WIDTHS), "build_seconds": round(build_seconds, 1)},
        "machine": platform.platform(),
        "store": sizes,
        "seconds_median": {k: round(v, 4) for k, v in median.items()},
        "seconds_min": {k: round(min(t), 4) for k, t in times.items()},
        "ratios_of_medians": {k: round(median[a] / median[b], 3) for k, (a, b) in pairs.items()},
        "ratios_of_minima": {k: round(fastest[a] / fastest[b], 3) for k, (a, b) in pairs.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
