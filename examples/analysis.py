"""The xarray queries people write on ibframe results: several runs in one Dataset, the epoch of
maximum I(X;T) per layer, estimators side by side, a beta sweep with seed bands, and pandas.

Trains SZT runs at two or three noise levels and several seeds (the generated SZT-style data, or
--data DIR with var_u.mat), estimates them in one call, then asks questions of the result.

    python examples/analysis.py [--quick] [--out DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from matplotlib.figure import Figure

import ibframe
from ibframe.recording.experiments import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (seconds each)")
    parser.add_argument("--out", type=Path, default=Path("analysis-out"), help="output directory")
    parser.add_argument("--data", type=Path, help="directory with var_u.mat (default: generated data)")
    args = parser.parse_args()
    started = time.perf_counter()
    betas, seeds = ((0.05, 0.1), (0, 1)) if args.quick else ((0.02, 0.05, 0.1), (0, 1, 2))
    settings = ({"epochs": 40, "lr": 8e-3, "record": "log:5", "samples": 128, "draws": 8}
                if args.quick else {"epochs": 1000, "lr": 4e-3, "record": "log:20", "samples": 1024})
    data = None if args.data is None else args.data / "var_u.mat"
    for beta in betas:
        for seed in seeds:
            store = args.out / f"beta-{beta}" / f"seed-{seed}.zarr"
            if not store.exists():
                train("szt", out=store, data=data, beta=beta, seed=seed, **settings)

    # One call over every run: dims (run, epoch, layer), with seed and beta coordinates on run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ibframe.IbframeWarning)  # per-cell quality notes
        ds = ibframe.estimate(str(args.out / "beta-*" / "seed-*.zarr"),
                              ["sp-mi", "binned-entropy", "ksg-mi"], progress=False)
    print(f"dims: {dict(ds.sizes)}; run coordinates: {sorted(ds['run'].coords)}")

    # 1. The epoch of maximum I(X;T) per layer, for every run.
    peak = ds["mi_x_t"].idxmax("epoch").astype(int)
    print("epoch of maximum I(X;T) (rows: runs, columns: layers):")
    print(peak.to_pandas().to_string())

    # 2. Estimators side by side at the last epoch, for the runs at the smallest beta.
    last = ds.isel(epoch=-1).sel(beta=betas[0])
    side = last[["mi_x_t", "mi_x_t_ksg", "entropy_bin"]].mean("run").squeeze(drop=True)
    print(f"last epoch, beta {betas[0]}, mean over seeds: SP, KSG and binned (nat):")
    print(side.to_dataframe().round(3).to_string())

    # 3. A beta sweep: mean and sd over seeds per beta, I(X;T) of the deepest layer.
    deepest = str(ds["layer"].values[-1])
    sweep = ibframe.aggregate(ds[["mi_x_t", "mi_x_t_stderr"]], over="run", by="beta")
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for beta in sweep["beta"].values:
        mean = sweep["mi_x_t"].sel(beta=beta, layer=deepest)
        sd = sweep["mi_x_t_sd"].sel(beta=beta, layer=deepest)
        (line,) = ax.plot(mean["epoch"], mean, label=f"beta = {beta:g}")
        ax.fill_between(mean["epoch"], mean - sd, mean + sd, color=line.get_color(), alpha=0.25, lw=0)
        print(f"beta {beta:g}: I(X;T) of {deepest} at the end {float(mean[-1]):.2f} ± {float(sd[-1]):.2f} nat "
              f"(sd over {len(seeds)} seeds)")
    ax.set(xscale="symlog", xlabel="epoch", ylabel=f"I(X;T) of {deepest} (nat)",
           title=f"beta sweep, mean ± sd over {len(seeds)} seeds")
    ax.legend(fontsize="small")
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "beta_sweep.png", dpi=70)
    print(f"figure: {args.out / 'beta_sweep.png'}")

    # 4. To pandas: one row per (run, epoch, layer), the run's seed and beta as columns.
    frame = ds[["mi_x_t", "mi_x_t_stderr", "mi_x_t_bias", "mi_t_y"]].to_dataframe().reset_index()
    frame = frame.join(ds["seed"].to_series(), on="run").join(ds["beta"].to_series(), on="run")
    frame.to_csv(args.out / "mi.csv", index=False)
    print(f"table: {args.out / 'mi.csv'} ({len(frame)} rows, columns {list(frame.columns)})")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
