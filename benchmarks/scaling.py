"""Estimation beyond one process, measured on one machine; prints one JSON object.

An SZT run (the real data when ``--data`` is given, else ibframe's SZT-style stand-in) is
recorded once, then:

* ``ways``: estimated with ``sp-mi`` and ``binned-entropy`` three ways, each measured in this
  process: Dask's local threads; a ``LocalCluster`` of worker processes reading the store from
  local disk; the same cluster reading it from moto's S3 server on localhost. Wall seconds,
  speedup against threads, tasks, and what each task costs over threads,
  ``(wall - wall_threads) * workers / tasks`` (with binned entropy, whose tasks are cheap, the
  per-task overhead of the cluster).
* ``split``: the costliest (layer, epoch) block of ``sp-mi`` (timed unsplit) in a second run, of
  ``--split-samples`` inputs (default all 4,096) and 2 recorded epochs, split into k = 1, 2, 4, 8 parts,
  on the cluster (wall seconds on this machine's cores), and each part, combine and finish
  timed in this process, from which the wall time on k devices is predicted as
  ``sum over stages (slowest part + combine + 2 overheads) + finish + overhead`` with the
  measured per-task overhead; ``predicted_speedup_8`` is that prediction for 8 GPUs against one
  task, assuming a GPU runs each part as much faster as it runs the whole (CPU timings).
* ``reading``: one epoch's blocks read from the S3 store and from local disk, as a task reads
  them (opening the run, then ``Run.block``): seconds per block and requests per block.

Usage: ``python benchmarks/scaling.py [--data DIR] [--samples 1024] [--epochs 50]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import ibframe
from ibframe.engine import build_estimators

ESTIMATORS = ["sp-mi", "binned-entropy"]


@contextlib.contextmanager
def moto_s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on a free localhost port, and the storage options that reach it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench"}
    finally:
        server.stop()


def record(out: Path, args: argparse.Namespace, samples: int, epochs: int) -> None:
    """Train the SZT network and record ``epochs`` epochs of ``samples`` inputs into ``out``."""
    command = [sys.executable, "-c", "from ibframe.cli import main; main()", "train", "szt",
               "--out", str(out), "--epochs", str(args.train_epochs),
               "--record", f"log:{epochs}", "--samples", str(samples), "--seed", "0"]
    if args.data:
        command += ["--data", args.data]
    subprocess.run(command, check=True, capture_output=True)


def upload(local: Path, options: dict[str, Any]) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bench")
    fs.put(str(local), "bench/run.zarr", recursive=True)
    return "s3://bench/run.zarr"


def timed(run: Any, estimators: Any, **kwargs: Any) -> tuple[float, int]:
    """Wall seconds of one uncached estimate, and its number of graph calls."""
    totals: list[int] = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ibframe.estimate(run, estimators, cache=False, device="cpu",
                         progress=lambda done, total: totals.append(total), **kwargs)
    return time.perf_counter() - start, (totals[0] if totals else 0)


def warm(local: Path, address: str) -> None:
    """Every worker imports torch and runs a kernel once before anything is timed."""
    run = ibframe.open_run(local)
    timed(local, ESTIMATORS, layers=run.layers[:1], epochs=[int(run.epochs[0])],
          scheduler=address, split=4)


def ways(local: Path, url: str, options: dict[str, Any], workers: int) -> dict[str, Any]:
    import distributed

    out: dict[str, Any] = {}
    for name, estimators in (("sp-mi", ["sp-mi"]), ("binned-entropy", ["binned-entropy"])):
        threads, tasks = timed(local, estimators, scheduler="threads")
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
            address = cluster.scheduler_address
            warm(local, address)
            disk, _ = timed(local, estimators, scheduler=address)
            s3, _ = timed(url, estimators, scheduler=address, storage_options=options)

        def extra(wall: float, tasks: int = tasks, threads: float = threads) -> float:
            return 1e3 * (wall - threads) * workers / tasks

        out[name] = {
            "tasks": tasks,
            "threads_s": round(threads, 3),
            "cluster_disk_s": round(disk, 3),
            "cluster_s3_s": round(s3, 3),
            "speedup_cluster_disk": round(threads / disk, 3),
            "speedup_cluster_s3": round(threads / s3, 3),
            "extra_ms_per_task_over_threads": {
                "cluster_disk": round(extra(disk), 1), "cluster_s3": round(extra(s3), 1),
            },
        }
    return out


def costliest_block(run: Any) -> tuple[str, int]:
    """The (layer, epoch) whose sp-mi task takes longest here, among every layer at the first
    and the last recorded epoch (timed unsplit, in this process)."""
    est = build_estimators(["sp-mi"])[0]
    seconds = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in (int(run.epochs[0]), int(run.epochs[-1])):
            for layer in run.layers:
                block = run.block(layer, epoch)
                start = time.perf_counter()
                est.compute(block)
                seconds[layer, epoch] = time.perf_counter() - start
    return max(seconds, key=lambda key: seconds[key])


def split(local: Path, workers: int, overhead_s: float) -> dict[str, Any]:
    import distributed

    run = ibframe.open_run(local)
    layer, epoch = costliest_block(run)
    est = build_estimators(["sp-mi"])[0]
    block = run.block(layer, epoch)
    walls: dict[str, float] = {}
    predicted: dict[str, float] = {}
    in_process: dict[str, Any] = {}
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        warm(local, cluster.scheduler_address)
        for k in (1, 2, 4, 8):
            walls[str(k)] = round(min(timed(local, ["sp-mi"], layers=[layer], epochs=[epoch],
                                            scheduler=cluster.scheduler_address, split=k)[0]
                                      for _ in range(2)), 3)
            carry: Any = None
            total = overhead_s
            stages = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for stage in range(est.split_stages):
                    parts = []
                    results = []
                    for p in range(k):
                        start = time.perf_counter()
                        results.append(est.compute_part(block, stage, p, k, carry))
                        parts.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    carry = est.combine_parts(stage, results, carry)
                    combine = time.perf_counter() - start
                    stages.append({"parts_s": [round(t, 4) for t in parts],
                                   "combine_s": round(combine, 4)})
                    total += max(parts) + combine + 2 * overhead_s
                start = time.perf_counter()
                est.finish(block, carry)
                finish = time.perf_counter() - start
            total += finish
            predicted[str(k)] = round(total, 3)
            in_process[str(k)] = {"stages": stages, "finish_s": round(finish, 4)}
    return {
        "block": {"layer": layer, "epoch": epoch, "centres": int(block.s.shape[0])
                  * (1 + (0 if block.s_cond is None else block.s_cond.shape[1]))},
        "cluster_wall_s": walls,
        "speedup_on_cluster": {k: round(walls["1"] / v, 3) for k, v in walls.items()},
        "in_process": in_process,
        "predicted_wall_on_k_devices_s": predicted,
        "predicted_speedup_8": round(predicted["1"] / predicted["8"], 3),
    }


def reading(local: Path, url: str, options: dict[str, Any]) -> dict[str, Any]:
    import zarr.storage

    requests: list[str] = []
    original = zarr.storage.FsspecStore.get

    async def counting_get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        requests.append(key)
        return await original(self, key, *args, **kwargs)

    out: dict[str, Any] = {}
    for name, where, opts in (("local", local, None), ("s3", url, options)):
        run = ibframe.open_run(where, storage_options=opts)
        epoch = int(run.epochs[-1])
        layers = run.layers
        zarr.storage.FsspecStore.get = counting_get
        try:
            requests.clear()
            start = time.perf_counter()
            for layer in layers:  # as a task does: open the run, read its block
                ibframe.open_run(where, storage_options=opts).block(layer, epoch)
            seconds = time.perf_counter() - start
            with_open = len(requests)
            requests.clear()
            for layer in layers:
                run.block(layer, epoch)
            block_only = len(requests)
            requests.clear()
            run.block(layers[-1], epoch)
            keys = sorted(requests)
        finally:
            zarr.storage.FsspecStore.get = original
        entry = {"seconds_per_block": round(seconds / len(layers), 4)}
        if name == "s3":
            entry["requests_per_block_with_open"] = round(with_open / len(layers), 1)
            entry["requests_per_block"] = round(block_only / len(layers), 1)
            entry["requests_of_one_block"] = keys
        out[name] = entry
    out["s3_over_local"] = round(out["s3"]["seconds_per_block"]
                                 / out["local"]["seconds_per_block"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="directory of var_u.mat (default: the SZT stand-in)")
    parser.add_argument("--samples", type=int, default=1024, help="recorded inputs")
    parser.add_argument("--epochs", type=int, default=50, help="recorded epochs")
    parser.add_argument("--train-epochs", type=int, default=300, help="training epochs")
    parser.add_argument("--split-samples", type=int, default=4096,
                        help="recorded inputs of the run whose costliest block is split")
    parser.add_argument("--workers", type=int, default=2, help="cluster worker processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as options:
        local = Path(tmp) / "run.zarr"
        record(local, args, args.samples, args.epochs)
        big = Path(tmp) / "big.zarr"
        record(big, args, args.split_samples, 2)
        url = upload(local, options)
        run = ibframe.open_run(local)
        by_way = ways(local, url, options, args.workers)
        extra = by_way["binned-entropy"]["extra_ms_per_task_over_threads"]["cluster_disk"]
        overhead = max(0.0, extra) / 1e3
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average": [round(v, 2) for v in os.getloadavg()]},
            "run": {"data": args.data or "SZT stand-in", "samples": run.n_samples,
                    "layers": run.layers, "epochs": len(run.epochs),
                    "draws": int(np.max([run.conditional(n).sizes["draw"]
                                         for n in run.layers
                                         if run.conditional(n) is not None]))},
            "workers": args.workers,
            "ways": by_way,
            "split": split(big, args.workers, overhead),
            "reading": reading(local, url, options),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
