"""Benchmark of ibframe's Gaussian-mixture entropy kernel; prints one JSON object.

For a grid of (n centres, d, n_mc draws per centre, batch of mixtures) it times
:func:`ibframe.kernels.mixture.gaussian_mixture_entropy` and a straightforward NumPy/SciPy
reference (``scipy.spatial.distance.cdist`` + ``scipy.special.logsumexp``, chunked, one mixture
at a time, with the same control variate) on the same machine in the same run, checks they
agree on the same MC points, and reports:

* ``speedup``: reference seconds / ibframe seconds;
* ``evals_per_s``: mixture-component evaluations per second, n_points x n_centres per mixture
  summed over mixtures, divided by ibframe's time;
* ``evals_per_exp``: that rate divided by the ``torch.exp`` elements/s measured in this run
  (float32, in-place on a 2**21-element block, best of many), since ``exp`` is the floor;
* peak memory of the n = 65536 case, run in a fresh subprocess: ``ru_maxrss`` of the whole
  process (torch and SciPy included) and the peak RSS during the kernel call alone;
* one synthetic SZT epoch (widths 10-7-5-4-3, n = 4096 12-bit inputs, 256 conditional draws
  per input, beta = 0.1), written to a run store and estimated by ``sp-mi`` through
  ``ibframe.engine.estimate`` (I(X;T) and I(T;Y), every layer): time and the standard error of
  every I(X;T_l) with the defaults.

The batched case's ``max_abs_diff_vs_reference_nats`` compares mixtures one at a time, while the
kernel fits the control-variate coefficient over the whole batch: it differs by MC noise, not by
error.

Timings are the best of several repetitions, because other work may share the machine; the
ratios measured in one run are what count. ``--quick`` runs a small grid. On CUDA, GPU timings
are added under ``"cuda"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from ibframe.errors import SampleSizeWarning
from ibframe.kernels.mixture import (
    DEFAULT_N_MC,
    DEFAULT_N_MC_BATCH,
    gaussian_mixture_entropy,
)

BETA = 0.1
REFERENCE_CHUNK = 2**22  # exponents per cdist/logsumexp chunk of the reference (32 MiB)
SZT_WIDTHS = (10, 7, 5, 4, 3)
SZT_DRAWS = 256


def best_time(run: Callable[[], Any], repeats: int, sync: bool = False) -> float:
    """Fastest of ``repeats`` wall-clock runs (after one warm-up run)."""
    run()
    best = math.inf
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def exp_throughput(device: str = "cpu") -> float:
    """float32 ``torch.exp`` elements per second, in place on a 2**21 block in [-80, 0]."""
    x = torch.empty(2**21, device=device).uniform_(-80.0, 0.0)
    out = torch.empty_like(x)
    return x.numel() / best_time(lambda: torch.exp(x, out=out), 30, sync=device != "cpu")


def reference_entropy(centers: np.ndarray, beta: float, noise: np.ndarray) -> float:
    """Straightforward float64 MC entropy of one mixture on the points centers + beta noise,
    with the same control variate as the kernel (q = ||z||^2 / 2 beta^2, mean d/2)."""
    n, _, d = noise.shape
    points = (centers[:, None, :] + beta * noise).reshape(-1, d)
    step = max(1, REFERENCE_CHUNK // n)
    pieces = []
    for start in range(0, points.shape[0], step):
        sq = cdist(points[start : start + step], centers, "sqeuclidean")
        pieces.append(logsumexp(-sq / (2.0 * beta**2), axis=1))
    const = math.log(n) + 0.5 * d * math.log(2 * math.pi * beta**2)
    ell = const - np.concatenate(pieces)
    quad = 0.5 * (noise**2).sum(-1).reshape(-1)
    q = quad - quad.mean()
    coefficient = float(q @ (ell - ell.mean()) / (q @ q)) if ell.size >= 16 else 0.0
    return float(np.mean(ell - coefficient * (quad - d / 2)))


def tanh_centres(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """tanh-range centres: tanh of Gaussian projections of random ±1 bit vectors."""
    *lead, d = shape
    bits = rng.choice([-1.0, 1.0], size=(*lead, 12))
    weights = rng.normal(size=(12, d)) * (2.0 / math.sqrt(12))
    return np.tanh(bits @ weights + 0.3 * rng.normal(size=(*lead, d)))


def run_case(n: int, d: int, n_mc: int, batch: int, beta: float, exp_rate: float) -> dict[str, Any]:
    """Time ibframe and the reference on one grid point and compare them on the same draws."""
    rng = np.random.default_rng(n + d + n_mc + batch)
    shape = (n, d) if batch == 1 else (batch, n, d)
    centers = tanh_centres(rng, shape)
    noise = rng.normal(size=(*shape[:-1], n_mc, d))
    evals = batch * n * n_mc * n
    mixtures = centers.reshape(batch, n, d)
    draws = noise.reshape(batch, n, n_mc, d)

    def ours_run() -> Any:
        return gaussian_mixture_entropy(centers, beta, n_mc=n_mc, seed=0)

    def reference_run() -> Any:
        return [reference_entropy(c, beta, z) for c, z in zip(mixtures, draws, strict=True)]

    # ibframe is timed before and after the (long) reference so that both see similar load
    ours = best_time(ours_run, 3)
    ref = min(best_time(reference_run, 1), best_time(reference_run, 1))
    ours = min(ours, best_time(ours_run, 3))
    ours_value = np.atleast_1d(gaussian_mixture_entropy(centers, beta, noise=noise))
    ref_value = np.array(reference_run())
    return {
        "n": n,
        "d": d,
        "n_mc": n_mc,
        "batch": batch,
        "beta": beta,
        "evals": evals,
        "ibframe_s": round(ours, 4),
        "reference_s": round(ref, 3),
        "speedup": round(ref / ours, 1),
        "evals_per_s": float(f"{evals / ours:.3g}"),
        "evals_per_exp": round(evals / ours / exp_rate, 3),
        "max_abs_diff_vs_reference_nats": float(f"{np.abs(ours_value - ref_value).max():.2g}"),
    }


def child(n: int, d: int, n_mc: int) -> None:
    """Subprocess body: run the kernel on ``n`` centres; print time and memory figures.

    ``ru_maxrss`` includes the peak of importing torch and SciPy. The kernel's own peak is read
    from ``VmHWM`` after resetting it (``/proc/self/clear_refs``), where Linux allows that.
    """
    centers = tanh_centres(np.random.default_rng(0), (n, d))
    before = _proc_status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak-RSS counter VmHWM
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    value = gaussian_mixture_entropy(centers, BETA, n_mc=n_mc, seed=0)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {
        "seconds": seconds,
        "entropy": value,
        "process_peak_mib": peak_kib / 1024,
        "rss_before_kernel_mib": before,
        "peak_during_kernel_mib": _proc_status_mib("VmHWM") if reset else None,
    }
    print(json.dumps(figures))


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_case(n: int, d: int, n_mc: int) -> dict[str, Any]:
    """Time and peak memory of the kernel on ``n`` centres, in a fresh subprocess."""
    args = [sys.executable, __file__, "--child", str(n), str(d), str(n_mc)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    ran = json.loads(out.stdout.strip().splitlines()[-1])
    evals = n * n_mc * n
    rounded = {k: None if v is None else round(v, 1) for k, v in ran.items() if k.endswith("mib")}
    return {
        "n": n,
        "d": d,
        "n_mc": n_mc,
        "beta": BETA,
        "seconds": round(ran["seconds"], 2),
        "evals_per_s": float(f"{evals / ran['seconds']:.3g}"),
        **rounded,
    }


def szt_network(n_bits: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Centres of a noisy tanh network on all 2**n_bits inputs.

    Returns, per layer, the unconditional centres ``(n, d)`` (one noise path per input) and the
    conditional ones ``(n, SZT_DRAWS, d)`` (independent noise paths), stored as float32.
    """
    inputs = ((np.arange(2**n_bits)[:, None] >> np.arange(n_bits)) & 1) * 2.0 - 1.0
    layers = []
    fan_in = n_bits
    for width in SZT_WIDTHS:
        layers.append(
            (
                rng.normal(size=(fan_in, width)) * 2.0 / math.sqrt(fan_in),
                rng.normal(size=width) * 0.3,
            )
        )
        fan_in = width
    single, cond = [], []
    t_single = inputs
    t_cond = np.repeat(inputs[:, None, :], SZT_DRAWS, axis=1)
    for weights, bias in layers:
        s_single = np.tanh(t_single @ weights + bias)
        s_cond = np.tanh(t_cond @ weights + bias)
        single.append(s_single.astype(np.float32))
        cond.append(s_cond.astype(np.float32))
        t_single = s_single + BETA * rng.normal(size=s_single.shape)
        t_cond = s_cond + BETA * rng.normal(size=s_cond.shape)
    return single, cond


def szt_epoch(n_bits: int, device: str = "cpu") -> dict[str, Any]:
    """Time one synthetic SZT epoch from a run store to the ``sp-mi`` result, at the defaults.

    The activations are written to a temporary run store (draw 0 and SZT_DRAWS conditional
    draws for every input), then ``ibframe.engine.estimate`` runs ``sp-mi`` (I(X;T) and I(T;Y))
    on every layer, without the cache, under each local scheduler.
    """
    import ibframe
    from ibframe.engine import estimate

    single, cond = szt_network(n_bits, np.random.default_rng(0))
    n = 2**n_bits
    y = np.random.default_rng(1).permutation(np.arange(n) % 2)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "szt.zarr"
        layers = {f"h{i + 1}": s.shape[1] for i, s in enumerate(single)}
        with ibframe.create_run(path, x=np.zeros((n, n_bits), np.float32), y=y, beta=BETA,
                                layers=layers, draws=SZT_DRAWS) as run:
            run.append_epoch(0, {name: np.concatenate([s[:, None], c], axis=1)
                                 for name, s, c in zip(layers, single, cond, strict=True)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SampleSizeWarning)
            for scheduler in ("threads", "synchronous"):
                def epoch(scheduler: str = scheduler) -> Any:
                    return estimate(path, ["sp-mi"], cache=False, device=device,
                                    scheduler=scheduler)
                result = epoch()
                rows[scheduler] = round(best_time(epoch, 2, sync=device != "cpu"), 3)
    mi = result["mi_x_t"].isel(epoch=0)
    se = result["mi_x_t_stderr"].isel(epoch=0)
    return {
        "n_inputs": n,
        "widths": list(SZT_WIDTHS),
        "conditional_draws_per_input": SZT_DRAWS,
        "conditional_inputs_m": n,
        "n_mc_unconditional": DEFAULT_N_MC,
        "n_mc_conditional": DEFAULT_N_MC_BATCH,
        "beta": BETA,
        "path": "run store -> ibframe.engine.estimate(['sp-mi']) -> Dataset, I(X;T) and I(T;Y)",
        "seconds": min(rows.values()),
        "seconds_by_scheduler": rows,
        "max_stderr_nats": round(float(se.max()), 4),
        "layers": [
            {"layer": str(layer), "mi_x_t_nats": round(float(mi.sel(layer=layer)), 4),
             "stderr_nats": round(float(se.sel(layer=layer)), 4),
             "mi_t_y_nats": round(float(result["mi_t_y"].isel(epoch=0).sel(layer=layer)), 4)}
            for layer in mi["layer"].values
        ],
    }


def cuda_figures(quick: bool) -> dict[str, Any]:
    """GPU exp throughput, kernel rates and the SZT epoch time on CUDA."""
    exp_rate = exp_throughput("cuda")
    cases = []
    grid = (
        [(4096, 10, 8, 1), (256, 10, 1, 1024)]
        if quick
        else [(4096, 10, 8, 1), (65536, 10, 1, 1), (256, 10, 1, 4096)]
    )
    for n, d, n_mc, batch in grid:
        rng = np.random.default_rng(0)
        shape = (n, d) if batch == 1 else (batch, n, d)
        centers = torch.from_numpy(tanh_centres(rng, shape)).cuda()
        seconds = best_time(
            lambda c=centers, k=n_mc: gaussian_mixture_entropy(c, BETA, n_mc=k, seed=0),
            3,
            sync=True,
        )
        evals = batch * n * n_mc * n
        cases.append(
            {
                "n": n,
                "d": d,
                "n_mc": n_mc,
                "batch": batch,
                "seconds": round(seconds, 4),
                "evals_per_s": float(f"{evals / seconds:.3g}"),
                "evals_per_exp": round(evals / seconds / exp_rate, 3),
            }
        )
    return {
        "device": torch.cuda.get_device_name(),
        "exp_per_s": float(f"{exp_rate:.3g}"),
        "cases": cases,
        "szt_epoch": szt_epoch(10 if quick else 12, device="cuda"),
    }


def full_grid_targets(
    cases: list[dict[str, Any]], mem: dict[str, Any], epoch: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The targets of the issue, evaluated on the full grid's measurements."""
    single = max(c["evals_per_s"] for c in cases if c["batch"] == 1 and c["d"] == 10)
    low_d = [c for c in cases if c["d"] <= 16 and c["beta"] == BETA]
    batched = next(c for c in cases if c["batch"] > 1)
    head = cases[0]
    targets = {
        "speedup_n4096_d10_nmc8": {"value": head["speedup"], "target": 30.0},
        "min_evals_per_exp_single_mixture_d_le_16": {
            "value": min(c["evals_per_exp"] for c in low_d if c["batch"] == 1),
            "target": 0.4,
        },
        "evals_per_exp_batched_d10": {"value": batched["evals_per_exp"], "target": 0.4},
        "batched_over_single_evals_per_s": {
            "value": round(batched["evals_per_s"] / single, 3),
            "target": 0.5,
        },
        "peak_rss_mib_n65536": {"value": mem["process_peak_mib"], "target_below": 2048.0},
        "szt_epoch_seconds": {"value": epoch["seconds"], "target_below": 3.0},
        "szt_max_stderr_nats": {"value": epoch["max_stderr_nats"], "target_below": 0.02},
    }
    for target in targets.values():
        if "target" in target:
            target["met"] = target["value"] >= target["target"]
        else:
            target["met"] = target["value"] < target["target_below"]
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid (seconds, not minutes)")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    exp_rate = exp_throughput()
    if args.quick:
        grid = [(1024, 10, 8, 1, BETA), (1024, 3, 8, 1, BETA), (256, 10, 1, 256, BETA)]
        memory = (16384, 10, 1)
        n_bits = 10
    else:
        grid = [
            (4096, 10, 8, 1, BETA),
            (4096, 16, 8, 1, BETA),
            (4096, 3, 8, 1, BETA),
            (4096, 10, 8, 1, 0.01),  # small beta: exponents formed in float64
            (4096, 128, 2, 1, BETA),
            (16384, 10, 1, 1, BETA),
            (256, 10, 1, 4096, BETA),
        ]
        memory = (65536, 10, 1)
        n_bits = 12
    cases = [run_case(*point, exp_rate) for point in grid]
    mem = memory_case(*memory)
    epoch = szt_epoch(n_bits)
    exp_rate = max(exp_rate, exp_throughput())  # the machine may have been busier at the start
    for case in cases:
        case["evals_per_exp"] = round(case["evals_per_s"] / exp_rate, 3)

    targets = None if args.quick else full_grid_targets(cases, mem, epoch)
    report = {
        "benchmark": "ibframe.kernels.mixture.gaussian_mixture_entropy",
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "exp_per_s": float(f"{exp_rate:.3g}"),
        "cases": cases,
        "memory": mem,
        "szt_epoch": epoch,
        "targets": targets,
        "cuda": cuda_figures(args.quick) if torch.cuda.is_available() else None,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
