"""``ibframe demo``: the whole pipeline on the embedded default, in about 75 s on 2 CPU cores.

Train the noisy tanh SZT network (12-10-7-5-4-3-2, beta = 0.05) on the generated SZT-style data,
record a seeded 512 of its 4096 inputs as the paper defines (S before the noise, the
recorder's default 32 conditional draws for each, at 25 log-spaced epochs), estimate I(X;T_l)
and I(T_l;Y) with ``sp-mi``, H(Bin(T_l)) with ``binned-entropy`` and the within/between-class
distance histograms with ``distance-histogram``, and draw the figures: compression of I(X;T)
next to the clustering that explains it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ibframe.engine import ProgressCallback, estimate, resolve_device
from ibframe.plot import plot_results
from ibframe.recording.experiments import demo_config, train
from ibframe.results import save_results


@dataclass(frozen=True)
class DemoOutputs:
    """Where the demo put everything."""

    run: Path
    results: Path
    figures: list[Path]


def run_demo(
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
    on_estimate: ProgressCallback | None = None,
    on_info: Callable[[str], None] | None = None,
    device: str = "auto",
) -> DemoOutputs:
    """Train, record, estimate and plot into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)  # an unusable device is refused before training, not after
    config = demo_config()
    if epochs is not None:
        config["epochs"] = epochs
    run_path = train(**config, out=out / "run.zarr", overwrite=True, on_epoch=on_epoch,
                     on_info=on_info)
    results = estimate(
        run_path, ["sp-mi", "binned-entropy", "distance-histogram"],
        params={
            "sp-mi": {"target_stderr": 0.02},  # a demo: half the default's precision, 1/4 the time
            "binned-entropy": {"bin_size": [0.01, 0.07, 0.3]},
            "distance-histogram": {"max_samples": 1024, "bins": 60},
        },
        device=device, progress=on_estimate,
    )
    results_path = save_results(results, out / "results.nc", overwrite=True)  # as the run
    kinds = ["mi-epochs", "info-plane", "binned-entropy", "distance-histograms", "scatter"]
    figures = plot_results(results, kinds, out_dir=out / "figures", run=run_path)
    return DemoOutputs(run=run_path, results=results_path, figures=figures)
