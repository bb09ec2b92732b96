"""I(X;T_l) of a trained SZT run at today's recording and sp-mi defaults: the DPI check and Fig. 5.

The run must hold its parameters (any ``ibframe train`` run does). Its recorded epochs are
recorded again from those parameters with the recorder's defaults (``DEFAULT_DRAWS``
conditional draws for every input the store budget allows; the draws of the original recording
do not matter), and ``sp-mi`` with its defaults estimates every ``--every``-th of them. Printed:

* per epoch, I(X;T_l) ± standard error (sampling bias) of every layer, ``!`` where sp-mi says it
  did not converge;
* the data-processing check: I(X;T_{l+1}) <= I(X;T_l) within 2 combined standard errors plus
  both layers' |bias|, with every violation named;
* per layer, I(X;T_l) at the first epoch, its peak (and epoch) and at the last epoch: the
  numbers of Fig. 5(a) (tanh) and (b) (orthonormal), to compare with the paper;
* the wall time of the estimation per epoch (all layers).

    python benchmarks/szt_information.py RUN.zarr [--every 3] [--last 3000] [--out DIR]

The output ends with one JSON object of every number printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ibframe
from ibframe.errors import QualityWarning
from ibframe.recording.nn import noisy_mlp
from ibframe.recording.recorder import Recorder


def rerecord(run: ibframe.Run, epochs: list[int], out: Path) -> ibframe.Run:
    """Record ``epochs`` of ``run`` again, from its stored parameters, with default draws."""
    model = run.attrs["model"]
    network = noisy_mlp(tuple(model["widths"]), beta=run.beta,
                        activation=model.get("activation", "tanh"))
    metrics = run.metrics()
    with Recorder(
        network.model, out, x=run.x, y=run.y, split=run.split, layers=network.layers,
        noise=network.noise_modules, beta=run.beta, schedule=",".join(map(str, epochs)),
        model_info=model, dataset=run.attrs.get("dataset"), overwrite=True,
    ) as recorder:
        print(f"# {recorder.plan}", flush=True)
        for epoch in epochs:
            state = {k: torch.as_tensor(v) for k, v in run.params(epoch).items()}
            network.model.load_state_dict(state)
            stored = {k: float(v.sel(epoch=epoch)) for k, v in metrics.data_vars.items()}
            recorder.record(epoch, metrics=stored)
    return ibframe.open_run(out)


def dpi_violations(values: dict[str, dict[str, float]], layers: list[str]) -> list[str]:
    """Pairs of adjacent layers where I(X;T) rises beyond 2 standard errors plus |biases|."""
    found = []
    for upper, lower in itertools.pairwise(layers):
        a, b = values[upper], values[lower]
        slack = 2 * math.hypot(a["se"], b["se"]) + abs(a["bias"]) + abs(b["bias"])
        if b["mi"] - a["mi"] > slack:
            found.append(f"{lower} {b['mi']:.3f} > {upper} {a['mi']:.3f} + {slack:.3f}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--every", type=int, default=1, help="estimate every k-th epoch")
    parser.add_argument("--last", type=int, default=None, help="only epochs up to this one")
    parser.add_argument("--out", default=None, help="directory of the re-recorded store")
    args = parser.parse_args()
    source = ibframe.open_run(args.run)
    epochs = [int(e) for e in source.epochs if args.last is None or e <= args.last]
    chosen = sorted({*epochs[:: args.every], epochs[-1]})
    out = Path(args.out or Path(args.run).parent) / (Path(args.run).stem + "-defaults.zarr")
    started = time.perf_counter()
    run = rerecord(source, chosen, out)
    recording = time.perf_counter() - started
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QualityWarning)
        results = ibframe.estimate(run, ["sp-mi"], device="cpu", cache=False)
    estimating = time.perf_counter() - started
    for warning in caught:
        print(f"# warning: {warning.message}")
    layers = [str(layer) for layer in results["layer"].values]
    report: dict = {"run": args.run, "epochs": {}, "layers": layers,
                    "record_s": recording, "estimate_s_per_epoch": estimating / len(chosen)}
    violations = []
    for epoch in chosen:
        at = results.sel(epoch=epoch)
        values = {
            layer: {
                "mi": float(at["mi_x_t"].sel(layer=layer)),
                "se": float(at["mi_x_t_stderr"].sel(layer=layer)),
                "bias": float(at["mi_x_t_bias"].sel(layer=layer)),
                "converged": bool(at["converged"].sel(layer=layer)),
            }
            for layer in layers
        }
        report["epochs"][epoch] = values
        cells = "  ".join(
            f"{layer} {v['mi']:.3f}±{v['se']:.3f} ({v['bias']:+.3f}){'' if v['converged'] else '!'}"
            for layer, v in values.items()
        )
        print(f"epoch {epoch:>5}  {cells}")
        violations += [f"epoch {epoch}: {v}" for v in dpi_violations(values, layers)]
    print(f"\nDPI: {len(violations)} violation(s) in {len(chosen)} epochs x {len(layers) - 1} "
          "layer pairs (2 standard errors + |bias| of each layer)")
    for line in violations:
        print(f"  {line}")
    report["dpi_violations"] = violations
    print("\nlayer  start        peak (epoch)          end       converged epochs")
    summary = {}
    for layer in layers:
        series = np.array([report["epochs"][e][layer]["mi"] for e in chosen])
        peak = int(np.argmax(series))
        ok = sum(report["epochs"][e][layer]["converged"] for e in chosen)
        summary[layer] = {"start": float(series[0]), "peak": float(series[peak]),
                          "peak_epoch": chosen[peak], "end": float(series[-1]),
                          "converged": ok}
        print(f"{layer:<6} {series[0]:.3f}  {series[peak]:.3f} ({chosen[peak]:>5})  "
              f"{series[-1]:.3f}  {ok}/{len(chosen)}")
    report["summary"] = summary
    print(f"\nre-recording: {recording:.0f} s; sp-mi: {estimating / len(chosen):.1f} s per "
          f"epoch ({len(layers)} layers, {torch.get_num_threads()} torch threads)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
