"""How many noisy realisations does the SP estimator need? Bias against draws on a trained run.

For a run recorded with its parameters (any ``ibframe train`` run), this re-creates chosen epochs'
networks from the stored parameters and feeds every input through them again with fresh noise:

* h(T_l) from K realisations of S_l per input (K = 1, 2, 4, ...), pooled into one mixture whose
  inputs each carry weight 1/n, estimated by Monte Carlo at M points;
* h(T_l | X) from D conditional draws (D = 4 ... 512) for a seeded subset of inputs.

Each value's bias is measured against the largest sample, extrapolated to infinitely many draws
with the 1/K law that the plug-in estimator's first-order bias follows; the nested-halves
diagnostic that ``sp-mi`` reports (estimate at half the draws minus the estimate) is printed
beside it. The output is one JSON object and a table per run; docs/sp-estimator.md quotes it.

    python benchmarks/sp_convergence.py RUN.zarr [RUN.zarr ...] [--epochs 30,300,3000,10000]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ibframe
from ibframe.recording.nn import noisy_mlp
from ibframe.recording.recorder import Recorder


def _network(run: ibframe.Run) -> tuple[torch.nn.Module, list, list[str]]:
    model = run.attrs["model"]
    widths = tuple(model.get("widths") or model.get("sizes"))
    network = noisy_mlp(widths, beta=run.beta, activation=model.get("activation", "tanh"))
    return network, network.layers, network.noise_modules


def realisations(run: ibframe.Run, epoch: int, draws: int, subset: int | None, seed: int) -> dict:
    """S of every hidden layer, (inputs, draws, units), for ``draws`` fresh noisy passes."""
    network, _, _ = _network(run)
    state = {k: torch.as_tensor(v) for k, v in run.params(epoch).items()}
    network.model.load_state_dict(state)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(
            network.model, Path(tmp) / "r.zarr", x=run.x, layers=network.layers,
            noise=network.noise_modules, beta=run.beta, draws=draws,
            conditional_samples=subset, seed=seed, record_params=False,
        )
        _, conditional, _ = rec.capture(epoch)
        rec.close()
    return conditional


def pooled_entropy(s: np.ndarray, beta: float, points: int, seed: int) -> tuple[float, float]:
    """h of the mixture (1/(nK)) sum N(s_ik, beta^2 I) of s (n, K, d), by MC at ``points`` points.

    Points are stratified over inputs (each input equally often), drawn from a random one of its
    realisations; -log g is evaluated against every centre in float64 blocks, with the control
    variate ||z||^2/2 (mean d/2).
    """
    n, k, d = s.shape
    rng = np.random.default_rng(seed)
    centres = torch.as_tensor(s.reshape(n * k, d), dtype=torch.float64)
    centres = centres - centres.mean(0)
    rows = np.resize(rng.permutation(n), points)
    cols = rng.integers(0, k, points)
    z = torch.as_tensor(rng.standard_normal((points, d)))
    p = centres[torch.as_tensor(rows * k + cols)] + beta * z
    scale = 0.5 / beta**2
    c_sq = (centres * centres).sum(1)
    lse = torch.full((points,), -math.inf, dtype=torch.float64)
    for j0 in range(0, centres.shape[0], 16384):
        c = centres[j0 : j0 + 16384]
        for i0 in range(0, points, 2048):
            q = p[i0 : i0 + 2048]
            e = -scale * ((q * q).sum(1)[:, None] - 2 * q @ c.T + c_sq[j0 : j0 + 16384][None])
            lse[i0 : i0 + 2048] = torch.logaddexp(lse[i0 : i0 + 2048], torch.logsumexp(e, 1))
    const = math.log(n * k) + 0.5 * d * math.log(2 * math.pi * beta**2)
    ell = (const - lse).numpy()
    quad = 0.5 * (z * z).sum(1).numpy()
    cov = np.cov(ell, quad)
    coef = cov[0, 1] / cov[1, 1] if cov[1, 1] > 0 else 0.0
    adjusted = ell - coef * (quad - 0.5 * d)
    return float(adjusted.mean()), float(adjusted.std(ddof=1) / math.sqrt(points))


def conditional_entropy(s: np.ndarray, beta: float, seed: int) -> tuple[float, float]:
    """Mean over inputs of h(mixture of each input's draws), s (m, D, d)."""
    from ibframe.kernels.mixture import gaussian_mixture_entropy

    h, se = gaussian_mixture_entropy(s, beta, n_mc=4, seed=seed, return_stderr=True)
    m = s.shape[0]
    return float(np.mean(h)), float(math.sqrt(np.sum(np.square(se)) / m**2 + np.var(h) / m))


def measure(path: str, epochs: list[int] | None, k_max: int, d_max: int, subset: int,
            points: int) -> dict:
    run = ibframe.open_run(path)
    chosen = epochs or [int(e) for e in run.epochs[np.linspace(0, len(run.epochs) - 1, 4).astype(int)]]
    chosen = [int(run.epochs[np.argmin(np.abs(run.epochs - e))]) for e in chosen]
    beta = run.beta
    out: dict = {"run": path, "beta": beta, "epochs": {}}
    for epoch in chosen:
        started = time.perf_counter()
        pooled = realisations(run, epoch, k_max, None, seed=1)
        cond = realisations(run, epoch, d_max, subset, seed=2)
        per_layer = {}
        for layer in run.layers[1:]:  # layer 1 is deterministic given x: nothing to pool
            ks = [2**i for i in range(int(math.log2(k_max)) + 1)]
            h_t = {k: pooled_entropy(pooled[layer][:, :k], beta, points, seed=k) for k in ks}
            ds = [2**i for i in range(2, int(math.log2(d_max)) + 1)]
            h_c = {dd: conditional_entropy(cond[layer][:, :dd], beta, seed=dd) for dd in ds}
            per_layer[layer] = {"h_t": h_t, "h_t_given_x": h_c}
        out["epochs"][epoch] = per_layer
        print(f"# {path} epoch {epoch}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _limit(values: dict[int, tuple[float, float]]) -> float:
    """Extrapolate to infinitely many draws from the two largest samples, by the 1/K law."""
    k = sorted(values)
    big, half = values[k[-1]][0], values[k[-2]][0]
    return 2 * big - half


def table(result: dict) -> str:
    lines = [f"## {result['run']} (beta = {result['beta']})", ""]
    for epoch, layers in result["epochs"].items():
        for layer, parts in layers.items():
            for name, values in parts.items():
                limit = _limit(values)
                cells = []
                for k, (value, se) in sorted(values.items()):
                    half = values.get(k // 2)
                    predicted = f"{half[0] - value:+.3f}" if half and k > 1 else "   -  "
                    cells.append(f"{k}: {value - limit:+.3f}±{se:.3f} ({predicted})")
                lines.append(f"epoch {epoch:>5} {layer} {name:<12} " + "  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--epochs", default=None, help="comma-separated (nearest recorded)")
    parser.add_argument("--k-max", type=int, default=32, help="realisations per input for h(T)")
    parser.add_argument("--d-max", type=int, default=512, help="draws per input for h(T|X)")
    parser.add_argument("--subset", type=int, default=128, help="inputs for h(T|X)")
    parser.add_argument("--points", type=int, default=4096, help="MC points for h(T)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else None
    results = [measure(p, epochs, args.k_max, args.d_max, args.subset, args.points)
               for p in args.runs]
    for result in results:
        print(table(result))
    print(json.dumps(results, default=lambda o: list(o)))


if __name__ == "__main__":
    main()
