"""Benchmark of ibframe's Gaussian-mixture entropy kernel against its peers; prints one JSON.

Every figure is a ratio measured in one run on one machine, so that a busy machine moves both
sides alike (timings are the best of a few repetitions):

* ``cases``: h(T) of tanh centres (n = 4096 and 16384, d = 3 and 10, beta = 0.01 and 0.1,
  4 MC points per centre) by ibframe and two peers on the same points: a straightforward
  **PyTorch** version (``torch.cdist`` + ``torch.logsumexp``, float32, chunked, torch's default
  threads: what a competent user writes) and a **NumPy/SciPy** one (``cdist`` + ``logsumexp``,
  float64; n = 4096 only). ``speedup_vs_torch``, ``speedup_vs_numpy``, the strategy ibframe
  chose, and the largest difference from the float64 peer.
* ``dense``: the unpruned path (``strategy="dense"``) at d = 3, 10, 16: mixture-component
  evaluations per second over the machine's ``exp`` throughput, measured in the same run on the
  same worker pool (each worker ``torch.exp`` in place on its own L2-sized block); with Numba,
  ibframe's figure (the fused loop where it measured faster on this CPU, ``fused_chosen``) and
  the torch path's (``IBFRAME_FUSED=0``) beside it.
* ``szt_kernel_epoch``: an SZT-sized epoch at the kernel level, every recorded draw pooled, as
  the sp-mi rewrite will need it: for each layer (widths 10-7-5-4-3) of a synthetic noisy tanh
  network on all 4096 12-bit inputs with 16 conditional draws each, h(T) of the pooled mixture
  of n (1 + 16) = 69,632 centres (each input's draws sharing weight 1/n) with its two class
  sub-mixtures and a half-of-the-inputs subsample as groups of one pass (2 points per input),
  and the 4096 conditional mixtures h(T|X=x) as a batch (1 point per draw). Two regimes: an
  early network (gain 1) and a late, saturated one (gain 5, tightly clustered centres), at
  beta = 0.005 and 0.1. Each layer's pooled pass is timed again with ``strategy="dense"``
  (``pooled_dense_s`` beside ``pooled_s``): what the chosen route saves.
* ``fig4_single_neuron``: h(T) of the single tanh neuron of the paper's Fig. 4, n = 4e6 samples
  of T at d = 1 (X uniform on {-3, -1, 1, 3}, beta = 0.01), to a standard error of 0.005.
* ``memory``: n = 10**6 centres at d = 10 (4096 points) in a fresh subprocess: its peak RSS,
  torch and SciPy included.
* ``loaded``: the ibframe cases again with CPU-bound processes (one per core) running beside
  them, and the slowdown against the idle figures.
* ``sp_mi_epoch``: the ``sp-mi`` estimator with its defaults on a synthetic SZT epoch of all
  4096 inputs recorded with the recorder's defaults (32 draws each: 135,168 pooled centres per
  noisy layer), through the run store and the engine, at beta = 0.005 and 0.1: the issue's
  "SZT epoch" figures (I(X;T) and I(T;Y) of 5 layers).

``--quick`` runs a small grid. On CUDA, GPU figures are added under ``"cuda"``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from ibframe.errors import QualityWarning
from ibframe.kernels import _fused as fused
from ibframe.kernels._engine import _fused_pays
from ibframe.kernels._threads import kernel_threads, run_parallel
from ibframe.kernels.mixture import (
    draw_points,
    gaussian_mixture_entropy,
    mc_entropy_estimate,
    mixture_log_density,
    stratified_stderr,
)

N_MC = 4
CHUNK = 2**22  # exponents per chunk of the peers (16 MiB float32)
SZT_WIDTHS = (10, 7, 5, 4, 3)
SZT_DRAWS = 16


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


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------------------------
# exp throughput


_scratch = threading.local()


def exp_throughput() -> dict[str, float]:
    """float32 ``exp`` elements/s on [-80, 0]: one default torch call on 2**21 elements, and the
    worker pool (each worker in place on its own 2**18-element block), the kernel's setting."""
    x = torch.empty(2**21).uniform_(-80.0, 0.0)
    out = torch.empty_like(x)
    single = x.numel() / best_time(lambda: torch.exp(x, out=out), 20)

    def block(_: int) -> None:
        src = getattr(_scratch, "src", None)
        if src is None:
            src = _scratch.src = torch.empty(2**18).uniform_(-80.0, 0.0)
            _scratch.out = torch.empty_like(src)
        torch.exp(src, out=_scratch.out)

    items = 64 * kernel_threads()
    pool = items * 2**18 / best_time(lambda: run_parallel(block, range(items)), 10)
    return {"torch_exp_per_s": float(f"{single:.3g}"), "pool_exp_per_s": float(f"{pool:.3g}")}


# --------------------------------------------------------------------------------------------
# peers


def torch_peer(centers: torch.Tensor, beta: float, noise: torch.Tensor) -> float:
    """cdist + logsumexp in float32, chunked, with the same control variate."""
    n, _, d = noise.shape
    points = (centers[:, None, :] + beta * noise).reshape(-1, d)
    step = max(1, CHUNK // n)
    pieces = [
        torch.logsumexp(torch.cdist(points[s:s + step], centers).square_().mul_(-0.5 / beta**2),
                        dim=1)
        for s in range(0, points.shape[0], step)
    ]
    ell = (math.log(n) + 0.5 * d * math.log(2 * math.pi * beta**2) - torch.cat(pieces)).double()
    quad = 0.5 * (noise.double() ** 2).sum(-1).reshape(-1) - d / 2
    q = quad - quad.mean()
    coefficient = float(q @ (ell - ell.mean()) / (q @ q))
    return float((ell - coefficient * quad).mean())


def numpy_peer(centers: np.ndarray, beta: float, noise: np.ndarray) -> float:
    """cdist + logsumexp in float64, chunked, with the same control variate."""
    n, _, d = noise.shape
    points = (centers[:, None, :] + beta * noise).reshape(-1, d)
    step = max(1, CHUNK // n)
    pieces = [
        logsumexp(-cdist(points[s:s + step], centers, "sqeuclidean") / (2.0 * beta**2), axis=1)
        for s in range(0, points.shape[0], step)
    ]
    ell = math.log(n) + 0.5 * d * math.log(2 * math.pi * beta**2) - np.concatenate(pieces)
    quad = 0.5 * (noise**2).sum(-1).reshape(-1) - d / 2
    q = quad - quad.mean()
    coefficient = float(q @ (ell - ell.mean()) / (q @ q))
    return float(np.mean(ell - coefficient * quad))


def tanh_centres(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """tanh-range centres: tanh of Gaussian projections of random ±1 bit vectors."""
    bits = rng.choice([-1.0, 1.0], size=(n, 12))
    weights = rng.normal(size=(12, d)) * (2.0 / math.sqrt(12))
    return np.tanh(bits @ weights + 0.3 * rng.normal(size=(n, d)))


def kernel_case(n: int, d: int, beta: float, peers: bool, numpy_too: bool) -> dict[str, Any]:
    """ibframe (and the peers) on one mixture, all on the same MC points."""
    rng = np.random.default_rng(n + d)
    centers = tanh_centres(rng, n, d)
    noise = rng.normal(size=(n, N_MC, d))
    evals = n * N_MC * n

    def ours() -> float:
        return gaussian_mixture_entropy(centers, beta, noise=noise)  # type: ignore[return-value]

    seconds = best_time(ours, 3)
    row: dict[str, Any] = {
        "n": n, "d": d, "beta": beta, "n_mc": N_MC,
        "ibframe_s": round(seconds, 4),
        "strategy": _strategy(centers, beta, noise),
        "evals_per_s": float(f"{evals / seconds:.3g}"),
    }
    if peers:
        c32, z32 = torch.from_numpy(centers).float(), torch.from_numpy(noise).float()
        peer_s = best_time(lambda: torch_peer(c32, beta, z32), 1)
        seconds = min(seconds, best_time(ours, 2))  # again, after the (long) peer
        row["ibframe_s"] = round(seconds, 4)
        row["torch_s"] = round(peer_s, 3)
        row["speedup_vs_torch"] = round(peer_s / seconds, 1)
        if numpy_too:
            start = time.perf_counter()
            reference = numpy_peer(centers, beta, noise)
            numpy_s = time.perf_counter() - start
            row["numpy_s"] = round(numpy_s, 3)
            row["speedup_vs_numpy"] = round(numpy_s / seconds, 1)
        else:
            reference = torch_peer(torch.from_numpy(centers), beta, torch.from_numpy(noise))
        row["max_abs_diff_vs_float64_nats"] = float(f"{abs(ours() - reference):.2g}")
    return row


def _strategy(centers: np.ndarray, beta: float, noise: np.ndarray) -> str:
    n, n_mc, d = noise.shape
    points = draw_points(np.ones(n), n * n_mc, d, seed=0)
    return mixture_log_density(centers, beta, points).strategy


@contextmanager
def torch_path() -> Iterator[None]:
    """The dense passes on torch (``IBFRAME_FUSED=0``), the fused loop's fallback."""
    saved = os.environ.get(fused.ENV_FUSED)
    os.environ[fused.ENV_FUSED] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[fused.ENV_FUSED]
        else:
            os.environ[fused.ENV_FUSED] = saved


def dense_case(n: int, d: int) -> dict[str, Any]:
    """The unpruned path: evaluations per second against the exp throughput, both measured
    in turn three times (the fastest of each), so that both see the same load; with the fused
    loop, the torch path's figure beside it."""
    rng = np.random.default_rng(d)
    centers = tanh_centres(rng, n, d)
    evals = n * N_MC * n

    def run() -> float:
        return gaussian_mixture_entropy(centers, 0.1, n_mc=N_MC, seed=0, strategy="dense")

    seconds, torch_seconds, exp_rate = math.inf, math.inf, 0.0
    for _ in range(3):
        exp_rate = max(exp_rate, *exp_throughput().values())
        seconds = min(seconds, best_time(run, 2))
        if fused.enabled():
            with torch_path():
                torch_seconds = min(torch_seconds, best_time(run, 2))
    row = {
        "n": n, "d": d, "beta": 0.1, "fused": fused.enabled(),
        # the dense pass takes the fused loop where it measured faster than torch's blocks
        "fused_chosen": fused.enabled() and _fused_pays(d + 2, torch.float32),
        "seconds": round(seconds, 4),
        "evals_per_s": float(f"{evals / seconds:.3g}"),
        "exp_per_s": float(f"{exp_rate:.3g}"),
        "evals_per_exp": round(evals / seconds / exp_rate, 3),
    }
    if math.isfinite(torch_seconds):
        row["torch_path_seconds"] = round(torch_seconds, 4)
        row["torch_path_evals_per_exp"] = round(evals / torch_seconds / exp_rate, 3)
    return row


# --------------------------------------------------------------------------------------------
# the SZT-sized pooled mixture


def szt_layers(gain: float, beta: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per layer, ``(4096, 1 + SZT_DRAWS, d)``: draw 0 and the conditional draws of S_l on all
    12-bit inputs of a noisy tanh network (noise beta after every layer)."""
    inputs = ((np.arange(4096)[:, None] >> np.arange(12)) & 1) * 2.0 - 1.0
    t = np.repeat(inputs[:, None, :], 1 + SZT_DRAWS, axis=1)
    fan_in, layers = 12, []
    for width in SZT_WIDTHS:
        weights = rng.normal(size=(fan_in, width)) * gain / math.sqrt(fan_in)
        s = np.tanh(t @ weights + 0.3 * rng.normal(size=width))
        layers.append(s)
        t = s + beta * rng.normal(size=s.shape)
        fan_in = width
    return layers


def szt_kernel_epoch(gain: float, beta: float) -> dict[str, Any]:
    """One epoch at the kernel level, every draw pooled (module notes)."""
    rng = np.random.default_rng(int(gain * 10) + int(1 / beta))
    layers = szt_layers(gain, beta, rng)
    n = 4096
    labels = rng.permutation(np.arange(n) % 2)
    per_input = 1 + SZT_DRAWS
    owner = np.repeat(np.arange(n), per_input)
    groups = np.stack([labels[owner] == 0, labels[owner] == 1, owner < n // 2])
    weights = np.full(n * per_input, 1.0 / (n * per_input))
    rows, total = [], 0.0
    for index, s in enumerate(layers):
        d = s.shape[2]
        pooled = s.reshape(-1, d)
        start = time.perf_counter()
        points = draw_points(weights, 2 * n, d, seed=index)
        density = mixture_log_density(pooled, beta, points, weights=weights, groups=groups)
        pooled_seconds = time.perf_counter() - start
        log_g = density.log_density
        own_class = torch.from_numpy(labels[owner])[points.centre[0]]
        # h(T) and I(T;Y) from the same points: paired per-point differences
        h, h_se, _ = mc_entropy_estimate(log_g, points)
        h_t = float(h[0])
        pairs = torch.where(own_class == 0, log_g[:, 1], log_g[:, 2]) - log_g[:, 0]
        h_cond, h_cond_se = gaussian_mixture_entropy(s[:, 1:], beta, n_mc=1, seed=index,
                                                     return_stderr=True)
        seconds = time.perf_counter() - start
        total += seconds
        dense_seconds = best_time(functools.partial(
            mixture_log_density, pooled, beta, points, weights=weights, groups=groups,
            strategy="dense"), 1)
        rows.append({
            "layer": f"h{index + 1}", "d": d, "centres": pooled.shape[0],
            "points": points.n_points, "strategy": density.strategy,
            "seconds": round(seconds, 3),
            "pooled_s": round(pooled_seconds, 3), "pooled_dense_s": round(dense_seconds, 3),
            "h_t": round(h_t, 3),
            "h_t_stderr": round(float(h_se[0]), 4),
            "mi_t_y": round(float(pairs.mean()), 3),
            "mi_t_y_stderr": round(float(stratified_stderr(pairs, points)[0]), 4),
            "mi_x_t": round(h_t - float(np.mean(h_cond)), 3),
            "h_t_given_x_stderr": round(float(np.sqrt(np.sum(h_cond_se**2))) / n, 4),
        })
    return {"gain": gain, "beta": beta, "draws_per_input": SZT_DRAWS, "seconds": round(total, 3),
            "layers": rows}


# --------------------------------------------------------------------------------------------
# Fig. 4 and memory


def fig4_single_neuron(n_samples: int) -> dict[str, Any]:
    """h(T) of the paper's single tanh neuron, n samples of T = tanh(w X + b) + Z, d = 1."""
    rng = np.random.default_rng(4)
    w = 2.0
    x = rng.choice([-3.0, -1.0, 1.0, 3.0], size=n_samples)
    samples = np.tanh(w * x - 2.3 * w)[:, None]
    start = time.perf_counter()
    h, se = gaussian_mixture_entropy(samples, 0.01, target_stderr=0.005, seed=0,
                                     return_stderr=True)
    seconds = time.perf_counter() - start
    return {"n_samples": n_samples, "d": 1, "beta": 0.01, "seconds": round(seconds, 3),
            "h_t": round(h, 4), "stderr": round(se, 5)}


def child(n: int, d: int, n_points: int) -> None:
    """Subprocess body: the kernel on ``n`` centres; print time and peak memory (MiB)."""
    centers = tanh_centres(np.random.default_rng(0), n, d)
    start = time.perf_counter()
    value = gaussian_mixture_entropy(centers, 0.1, n_points=n_points, seed=0)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "entropy": value, "process_peak_mib": _peak_mib()}))


def _peak_mib() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss would also count the parent's memory at
    the fork, which Linux keeps across exec)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_case(n: int, d: int, n_points: int) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", str(n), str(d), str(n_points)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    ran = json.loads(out.stdout.strip().splitlines()[-1])
    return {"n": n, "d": d, "n_points": n_points, "beta": 0.1,
            "seconds": round(ran["seconds"], 2),
            "process_peak_mib": round(ran["process_peak_mib"], 1)}


# --------------------------------------------------------------------------------------------
# load


def _spin(stop: Any) -> None:
    x = 1.0
    while not stop.is_set():
        for _ in range(10000):
            x = x * 1.0000001 + 1e-9


@contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """``processes`` CPU-bound processes running beside the block."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    workers = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)


# --------------------------------------------------------------------------------------------
# sp-mi through the engine (today's estimator)


def sp_mi_epoch(n_bits: int, beta: float) -> dict[str, Any]:
    """Time one synthetic SZT epoch from a run store to the ``sp-mi`` result, defaults all."""
    import ibframe
    from ibframe.engine import estimate
    from ibframe.recording.recorder import DEFAULT_DRAWS

    rng = np.random.default_rng(0)
    inputs = ((np.arange(2**n_bits)[:, None] >> np.arange(n_bits)) & 1) * 2.0 - 1.0
    n = 2**n_bits
    single, cond, fan_in = [], [], n_bits
    t_single, t_cond = inputs, np.repeat(inputs[:, None, :], DEFAULT_DRAWS, axis=1)
    for width in SZT_WIDTHS:
        weights = rng.normal(size=(fan_in, width)) * 2.0 / math.sqrt(fan_in)
        bias = rng.normal(size=width) * 0.3
        s_single, s_cond = np.tanh(t_single @ weights + bias), np.tanh(t_cond @ weights + bias)
        single.append(s_single.astype(np.float32))
        cond.append(s_cond.astype(np.float32))
        t_single = s_single + beta * rng.normal(size=s_single.shape)
        t_cond = s_cond + beta * rng.normal(size=s_cond.shape)
        fan_in = width
    y = np.random.default_rng(1).permutation(np.arange(n) % 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "szt.zarr"
        layers = {f"h{i + 1}": s.shape[1] for i, s in enumerate(single)}
        with ibframe.create_run(path, x=np.zeros((n, n_bits), np.float32), y=y, beta=beta,
                                layers=layers, draws=DEFAULT_DRAWS) as run:
            run.append_epoch(0, {name: np.concatenate([s[:, None], c], axis=1)
                                 for name, s, c in zip(layers, single, cond, strict=True)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QualityWarning)

            def epoch() -> Any:
                return estimate(path, ["sp-mi"], cache=False)

            result = epoch()
            seconds = best_time(epoch, 2)
    return {"n_inputs": n, "draws": DEFAULT_DRAWS, "beta": beta, "seconds": round(seconds, 3),
            "max_mi_x_t_stderr": round(float(result["mi_x_t_stderr"].max()), 4),
            "n_points": [int(v) for v in result["n_points"].isel(epoch=0).values]}


# --------------------------------------------------------------------------------------------
# CUDA


def cuda_figures(quick: bool) -> dict[str, Any]:
    """ibframe and the PyTorch peer on the GPU, on the same points."""
    rows = []
    grid = [(4096, 10, 0.01), (4096, 10, 0.1)] if quick else [
        (n, d, beta) for beta in (0.01, 0.1) for n in (4096, 16384) for d in (3, 10)]
    for n, d, beta in grid:
        rng = np.random.default_rng(n + d)
        centers = torch.from_numpy(tanh_centres(rng, n, d)).cuda()
        noise = torch.from_numpy(rng.normal(size=(n, N_MC, d))).cuda()
        ours = best_time(lambda c=centers, z=noise, b=beta: gaussian_mixture_entropy(
            c, b, noise=z), 3, sync=True)
        c32, z32 = centers.float(), noise.float()
        peer = best_time(lambda c=c32, z=z32, b=beta: torch_peer(c, b, z), 3, sync=True)
        rows.append({"n": n, "d": d, "beta": beta, "ibframe_s": round(ours, 4),
                     "torch_s": round(peer, 4), "speedup_vs_torch": round(peer / ours, 1)})
    return {"device": torch.cuda.get_device_name(), "cases": rows}


# --------------------------------------------------------------------------------------------
# report


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, evaluated on this run's measurements."""
    cases = report["cases"]
    small = [c for c in cases if c["beta"] <= 0.01 and "speedup_vs_torch" in c]
    large = [c for c in cases if c["beta"] == 0.1 and "speedup_vs_torch" in c]
    table: dict[str, dict[str, Any]] = {
        "speedup_vs_torch_beta_le_0.01": {
            "value": min(c["speedup_vs_torch"] for c in small), "target": 20.0},
        "speedup_vs_torch_beta_0.1": {
            "value": min(c["speedup_vs_torch"] for c in large), "target": 2.0},
        "dense_evals_per_exp_d_le_16": {
            "value": min(c["evals_per_exp"] for c in report["dense"]), "target": 0.6},
        "fig4_seconds_n_4e6": {"value": report["fig4_single_neuron"]["seconds"],
                               "target_below": 10.0},
        "memory_mib_n_1e6_d10": {"value": report["memory"]["process_peak_mib"],
                                 "target_below": 2048.0},
    }
    if report.get("loaded"):
        table["worst_slowdown_under_load"] = {
            "value": max(r["slowdown"] for r in report["loaded"]["cases"]), "target_below": 3.0}
    for row in table.values():
        if "target" in row:
            row["met"] = row["value"] >= row["target"]
        else:
            row["met"] = row["value"] < row["target_below"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid (seconds, not minutes)")
    parser.add_argument("--no-load", action="store_true", help="skip the pass under load")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    started = load_average()
    rates = exp_throughput()
    if args.quick:
        grid = [(1024, 10, 0.01), (1024, 3, 0.1)]
        dense_grid = [(1024, 10)]
        epochs = [(5.0, 0.005)]
        fig4_n, memory, spmi_bits = 10**5, (10**5, 10, 1024), 8
    else:
        grid = [(n, d, beta) for beta in (0.01, 0.1) for n in (4096, 16384) for d in (3, 10)]
        dense_grid = [(4096, 3), (4096, 10), (4096, 16)]
        epochs = [(1.0, 0.005), (5.0, 0.005), (1.0, 0.1), (5.0, 0.1)]
        fig4_n, memory, spmi_bits = 4 * 10**6, (10**6, 10, 4096), 12
    print(f"load {started}; peers ...", file=sys.stderr, flush=True)
    cases = [kernel_case(n, d, beta, peers=True, numpy_too=n == 4096) for n, d, beta in grid]
    report: dict[str, Any] = {
        "benchmark": "ibframe.kernels.mixture.gaussian_mixture_entropy",
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "kernel_threads": kernel_threads(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "fused_loop": fused.enabled(),
            "load_average_1min_at_start": started,
        },
        "exp": rates,
        "cases": cases,
        "dense": [dense_case(n, d) for n, d in dense_grid],
        "szt_kernel_epoch": [szt_kernel_epoch(gain, beta) for gain, beta in epochs],
        "fig4_single_neuron": fig4_single_neuron(fig4_n),
        "memory": memory_case(*memory),
        "sp_mi_epoch": [sp_mi_epoch(spmi_bits, beta) for beta in (0.005, 0.1)],
    }
    report["machine"]["load_average_1min_after_idle_pass"] = load_average()
    if not args.no_load:
        with cpu_load(kernel_threads()):
            load = load_average()
            again = [kernel_case(c["n"], c["d"], c["beta"], peers=False, numpy_too=False)
                     for c in cases]
            epoch = szt_kernel_epoch(*epochs[0])
            load = max(load, load_average())
        report["loaded"] = {
            "extra_cpu_bound_processes": kernel_threads(),
            "load_average_1min": load,
            "cases": [
                {"n": c["n"], "d": c["d"], "beta": c["beta"], "idle_s": c["ibframe_s"],
                 "loaded_s": a["ibframe_s"], "slowdown": round(a["ibframe_s"] / c["ibframe_s"], 2)}
                for c, a in zip(cases, again, strict=True)
            ],
            "szt_kernel_epoch_s": {"idle": report["szt_kernel_epoch"][0]["seconds"],
                                   "loaded": epoch["seconds"]},
        }
    report["targets"] = targets(report)
    report["cuda"] = (cuda_figures(args.quick) if torch.cuda.is_available()
                      else "unmeasured: no GPU in this run")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
