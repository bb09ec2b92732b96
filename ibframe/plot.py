"""The paper's figures from estimator results, with matplotlib, headless.

Each figure kind is a function that takes a results Dataset (as :func:`ibframe.engine.estimate`
returns it) and returns a :class:`matplotlib.figure.Figure`; :data:`PLOT_KINDS` lists them and
:func:`plot_results` writes several at once as PNG, SVG or PDF files::

    from ibframe.plot import plot_results
    paths = plot_results("results.nc", ["mi-epochs", "distance-histograms"], "figures/")

Figures are built on :class:`~matplotlib.figure.Figure` directly, never through ``pyplot``, so
nothing depends on a display or on a global backend, and nothing is kept alive after saving.
A results Dataset that lacks what a figure needs raises
:class:`~ibframe.errors.ResultConventionError` naming the missing variable and the estimator that
makes it.
"""

from __future__ import annotations

import inspect
import os
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, SymLogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ibframe.engine import EpochSelection, select_epochs
from ibframe.errors import IbframeWarning, ParameterError, ResultConventionError
from ibframe.store import Run, open_run


class PlotWarning(IbframeWarning):
    """A figure that could have been drawn was skipped (its run store was not found, say)."""


#: The estimator that produces each variable a figure reads, for error messages.
_PRODUCERS: typing.Final = {
    "mi_x_t": "sp-mi",
    "mi_t_y": "sp-mi",
    "entropy_bin": "binned-entropy",
    "distance_density": "distance-histogram",
    "distance_scale": "distance-histogram",
    "unit_entropy_slope": "unit-entropy-slopes",
    "cosine_density": "cosine-similarity",
}
#: File formats :func:`plot_results` writes.
FORMATS: typing.Final = ("png", "svg", "pdf")
#: At most this many epochs side by side when a figure shows chosen epochs.
_MAX_EPOCHS: typing.Final = 4
_PANEL: typing.Final = 3.2  # inches per panel


def _require(results: xr.Dataset, kind: str, needs: dict[str, tuple[str, ...]]) -> None:
    """Raise ResultConventionError naming the first variable (or dimension) the results lack.

    ``needs`` maps each variable a figure reads to the dimensions it must have.
    """
    held = ", ".join(map(str, results.data_vars)) or "nothing"
    for name, dims in needs.items():
        if name not in results.data_vars:
            producer = _PRODUCERS.get(name)
            hint = f" (estimator {producer!r} computes it)" if producer else ""
            msg = f"plot {kind!r} needs variable {name!r}{hint}; the results hold: {held}"
            raise ResultConventionError(msg)
        missing = [d for d in dims if d not in results[name].dims]
        if missing:
            msg = (
                f"plot {kind!r}: variable {name!r} has dims {results[name].dims}, "
                f"without {missing[0]!r}"
            )
            raise ResultConventionError(msg)


def _layers(var: xr.DataArray, layers: Sequence[str] | None) -> list[str]:
    """The layers to draw: those asked for, else every layer where ``var`` holds a value."""
    if "layer" not in var.dims:
        msg = f"variable {var.name!r} has no 'layer' dimension"
        raise ResultConventionError(msg)
    known = [str(v) for v in var["layer"].values]
    if layers is not None:
        unknown = [name for name in layers if name not in known]
        if unknown:
            msg = f"no layer {unknown[0]!r} in the results (layers: {', '.join(known)})"
            raise ParameterError(msg)
        return list(layers)
    others = [d for d in var.dims if d != "layer"]
    present = var.notnull().any(others) if others else var.notnull()
    return [name for name, keep in zip(known, present.values, strict=True) if keep]


def _edges(results: xr.Dataset, coord: str) -> np.ndarray:
    """Bin edges of a binned coordinate, from its bounds (or, without them, its centres)."""
    bounds = results[coord].attrs.get("bounds")
    if bounds in results.variables:
        pairs = results[bounds].values
        return np.append(pairs[:, 0], pairs[-1, 1])
    centres = results[coord].values
    half = np.diff(centres) / 2
    inner = centres[:-1] + half
    return np.concatenate([[centres[0] - half[0]], inner, [centres[-1] + half[-1]]])


def _pick_epochs(available: Sequence[int], epochs: EpochSelection | None) -> list[int]:
    """The epochs asked for (see :func:`ibframe.engine.select_epochs`), else up to four spread
    evenly on a log scale.

    Training changes fast early and slowly late, so log spacing (first, last, and between them
    geometrically) shows the stages the paper's figures show.
    """
    values = sorted(int(e) for e in available)
    if not values:
        msg = "the results hold no epoch"
        raise ResultConventionError(msg)
    if epochs is not None:
        return select_epochs(values, epochs, "the results")
    targets = np.geomspace(values[0] + 1, values[-1] + 1, min(_MAX_EPOCHS, len(values))) - 1
    chosen = {min(values, key=lambda v, t=t: abs(np.log1p(v) - np.log1p(t))) for t in targets}
    return sorted(chosen)


def _epoch_axis(ax: Axes, epochs: np.ndarray) -> None:
    """A log epoch axis (symmetric-log when epoch 0 is there) when epochs span decades."""
    low, high = float(np.min(epochs)), float(np.max(epochs))
    if high < 10 or (low > 0 and high / low < 10):
        ax.set_xscale("linear")
    elif low > 0:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("epoch")


def _epoch_norm(epochs: np.ndarray) -> Normalize:
    high = float(np.max(epochs))
    if high > 100:
        return SymLogNorm(linthresh=1.0, vmin=float(np.min(epochs)), vmax=high)
    return Normalize(vmin=float(np.min(epochs)), vmax=max(high, float(np.min(epochs)) + 1))


def _grid(count: int, columns: int = 3, *, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    cols = min(count, columns)
    rows = -(-count // cols)
    fig = Figure(figsize=(_PANEL * cols + 0.8, _PANEL * 0.8 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


# -- figure kinds --------------------------------------------------------------------------------


def rename_layers(results: xr.Dataset, names: str | Sequence[str]) -> xr.Dataset:
    """The results with their layers renamed for figures: a prefix ``"T"`` gives T1, T2, ... in
    the results' layer order (the paper's T_l), a list gives one name per layer."""
    if "layer" not in results.coords:
        msg = "layer names were given, but the results have no layer coordinate"
        raise ResultConventionError(msg)
    count = results.sizes["layer"]
    new = [f"{names}{i + 1}" for i in range(count)] if isinstance(names, str) else list(names)
    if len(new) != count or len(set(new)) != count:
        msg = f"layer names need {count} distinct names (or one prefix such as T); got {names}"
        raise ParameterError(msg)
    return results.assign_coords(layer=new)


def plot_mi_epochs(
    results: xr.Dataset,
    *,
    layers: Sequence[str] | None = None,
    layer_names: str | Sequence[str] | None = None,
) -> Figure:
    """I(X;T_l) of each layer over epochs, above the train and test losses (Fig. 5, left).

    Needs ``mi_x_t`` (epoch, layer); draws ``loss_train`` and ``loss_test`` (epoch) when present.
    The epoch axis is logarithmic when the epochs span decades, as in the paper. With
    ``mi_x_t_stderr`` and ``mi_x_t_bias`` a band spans 2 standard errors around both the estimate
    and the estimate less its bias; epochs where ``converged`` is false get open markers.

    Results of several runs (a ``run`` dimension) are drawn as their mean with a band of ± one
    sd across runs (:func:`ibframe.aggregate`); an aggregate made with ``kind="quantile"`` is
    drawn as its median with the quantile band; the standard error of the mean's Monte Carlo
    part (``mi_x_t_stderr`` of the aggregate) is a darker band of ± 2 of it inside.

    ``layer_names`` renames the layers (:func:`rename_layers`): ``"T"`` labels them T1...TL;
    ``layers`` then takes the new names.
    """
    from ibframe.runs import aggregate, spread_band

    if "run" in results.dims:
        results = aggregate(results, over="run")
    if layer_names is not None:
        results = rename_layers(results, layer_names)
    _require(results, "mi-epochs", {"mi_x_t": ("epoch", "layer")})
    band = spread_band(results, "mi_x_t")
    mi = results["mi_x_t"]
    names = _layers(mi, layers)
    losses = [name for name in ("loss_train", "loss_test") if name in results.data_vars]
    fig = Figure(figsize=(6.4, 5.6 if losses else 4.0), layout="constrained")
    axes = fig.subplots(
        2 if losses else 1, 1, sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.4]} if losses else None,
    ).ravel()
    epochs = mi["epoch"].values
    stderr, bias = results.get("mi_x_t_stderr"), results.get("mi_x_t_bias")
    converged = results.get("converged")
    flagged = False
    for name in names:
        values = mi.sel(layer=name).values
        (line,) = axes[0].plot(epochs, values, marker=".", label=name)
        if band is not None:
            low, high = (b.sel(layer=name).values for b in band[:2])
            axes[0].fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, lw=0)
            if stderr is not None:
                spread = 2 * stderr.sel(layer=name).values
                axes[0].fill_between(epochs, values - spread, values + spread,
                                     color=line.get_color(), alpha=0.45, lw=0)
        elif stderr is not None:
            spread = 2 * np.nan_to_num(stderr.sel(layer=name).values)
            shift = 0.0 if bias is None else np.nan_to_num(bias.sel(layer=name).values)
            low = np.minimum(values, values - shift) - spread
            high = np.maximum(values, values - shift) + spread
            axes[0].fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, lw=0)
        if converged is not None and "epoch" in converged.dims:
            bad = ~converged.sel(layer=name).values.astype(bool)
            if bad.any():
                axes[0].plot(epochs[bad], values[bad], ls="none", marker="o", mfc="none",
                             color=line.get_color())
                flagged = True
    if flagged:
        axes[0].plot([], [], ls="none", marker="o", mfc="none", color="grey",
                     label="not converged")
    if band is not None and stderr is not None:
        axes[0].fill_between([], [], [], color="grey", alpha=0.45, lw=0,
                             label="± 2 stderr (estimator)")
    axes[0].set_ylabel(f"I(X;T_l) ({mi.attrs.get('units', 'nat')})")
    runs = results.attrs.get("aggregate") if band is not None else None
    axes[0].legend(title="layer" + (f"\n{runs}" if runs else ""), fontsize="small")
    axes[0].set_title("Mutual information between input and layer")
    for name in losses:
        (line,) = axes[1].plot(epochs, results[name].values, label=name.replace("loss_", ""))
        loss_band = spread_band(results, name)
        if loss_band is not None:
            axes[1].fill_between(epochs, loss_band[0].values, loss_band[1].values,
                                 color=line.get_color(), alpha=0.2, lw=0)
    if losses:
        axes[1].set_ylabel("loss")
        axes[1].legend(fontsize="small")
    for ax in axes:
        _epoch_axis(ax, epochs)
    return fig


def plot_information_plane(
    results: xr.Dataset, *, layers: Sequence[str] | None = None
) -> Figure:
    """The information plane: I(X;T_l) against I(T_l;Y), one path per layer, coloured by epoch.

    Needs ``mi_x_t`` and ``mi_t_y`` (epoch, layer).
    """
    _require(
        results, "info-plane", {"mi_x_t": ("epoch", "layer"), "mi_t_y": ("epoch", "layer")}
    )
    mi_x, mi_y = results["mi_x_t"], results["mi_t_y"]
    names = _layers(mi_x, layers)
    epochs = mi_x["epoch"].values
    norm, cmap = _epoch_norm(epochs), colormaps["viridis"]
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    markers = "osD^v<>ph*"
    for i, name in enumerate(names):
        x, y = mi_x.sel(layer=name).values, mi_y.sel(layer=name).values
        ax.plot(x, y, color="0.7", linewidth=0.8, zorder=1)
        ax.scatter(x, y, c=epochs, cmap=cmap, norm=norm, s=18, zorder=2,
                   marker=markers[i % len(markers)], label=name, edgecolors="none")
    ax.set_xlabel(f"I(X;T_l) ({mi_x.attrs.get('units', 'nat')})")
    ax.set_ylabel(f"I(T_l;Y) ({mi_y.attrs.get('units', 'nat')})")
    ax.set_title("Information plane")
    legend = ax.legend(title="layer", fontsize="small")
    for handle in legend.legend_handles:
        if handle is not None:
            handle.set_color("0.3")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="epoch")
    return fig


def plot_binned_entropy(
    results: xr.Dataset, *, layers: Sequence[str] | None = None, n_inputs: int | None = None
) -> Figure:
    """H(Bin(T_l)) of each layer over epochs, one panel per bin size (Fig. 1; Fig. 5, bottom).

    Needs ``entropy_bin`` (epoch, layer[, bin_size]). The panels share their y axis, and a
    dashed line marks H(X) = ln n, the most a binned entropy of n equally likely inputs can
    reach; ``n_inputs`` is n, by default the inputs of the run store the results name in
    ``source`` (no line when that store is not found).
    """
    _require(results, "binned-entropy", {"entropy_bin": ("epoch", "layer")})
    entropy = results["entropy_bin"]
    names = _layers(entropy, layers)
    extra = [d for d in entropy.dims if d not in ("epoch", "layer")]
    if len(extra) > 1:
        msg = f"plot 'binned-entropy': entropy_bin has unexpected dimensions {extra}"
        raise ResultConventionError(msg)
    panels = (
        [(f"{extra[0]} = {v:g}", entropy.sel({extra[0]: v})) for v in entropy[extra[0]].values]
        if extra
        else [("", entropy)]
    )
    if n_inputs is None and _lost_source(results) is None and results.attrs.get("source"):
        n_inputs = open_run(results.attrs["source"]).n_samples
    units = entropy.attrs.get("units", "nat")
    ceiling = None if n_inputs is None else np.log(n_inputs) / (np.log(2) if units == "bit" else 1)
    fig, axes = _grid(len(panels), sharey=True)
    epochs = entropy["epoch"].values
    for ax, (title, values) in zip(axes, panels, strict=True):
        for name in names:
            ax.plot(epochs, values.sel(layer=name).values, label=name)
        if ceiling is not None:
            ax.axhline(ceiling, color="0.4", linestyle="--", linewidth=0.9,
                       label=f"H(X) = ln {n_inputs}")
        _epoch_axis(ax, epochs)
        ax.set_title(title, fontsize="medium")
    for ax in axes[:: min(len(axes), 3)]:
        ax.set_ylabel(f"H(Bin(T_l)) ({units})")
    axes[0].legend(title="layer", fontsize="small")
    fig.suptitle("Binned entropy over training")
    return fig


def plot_distance_histograms(
    results: xr.Dataset,
    *,
    layers: Sequence[str] | None = None,
    epochs: EpochSelection | None = None,
) -> Figure:
    """Within-class and between-class pairwise-distance histograms, layers by epochs (Figs. 6, 8).

    Needs ``distance_density`` (epoch, layer, pair, distance_bin) and ``distance_scale``
    (epoch, layer) from ``distance-histogram``; the x axis is the distance itself
    (``distance_bin * distance_scale``) and the y axis its probability density.
    """
    _require(
        results,
        "distance-histograms",
        {
            "distance_density": ("epoch", "layer", "pair", "distance_bin"),
            "distance_scale": ("epoch", "layer"),
        },
    )
    density, scale = results["distance_density"], results["distance_scale"]
    names = _layers(density, layers)
    chosen = _pick_epochs(density["epoch"].values, epochs)
    fig = Figure(
        figsize=(_PANEL * len(chosen) + 0.6, _PANEL * 0.7 * len(names) + 0.6),
        layout="constrained",
    )
    axes = fig.subplots(len(names), len(chosen), squeeze=False)
    colours = {"within": "tab:blue", "between": "tab:orange"}
    relative_edges = _edges(results, "distance_bin")
    for row, name in enumerate(names):
        for col, epoch in enumerate(chosen):
            ax = axes[row, col]
            d = float(scale.sel(layer=name, epoch=epoch))
            for pair in density["pair"].values:
                # density per unit of relative distance -> per unit of distance
                values = density.sel(layer=name, epoch=epoch, pair=pair).values / d
                colour = colours.get(str(pair))
                ax.stairs(values, relative_edges * d, fill=True, alpha=0.35, color=colour,
                          label=f"{pair}-class")
                ax.stairs(values, relative_edges * d, color=colour, linewidth=0.8)
            ax.set_title(f"{name}, epoch {epoch}", fontsize="medium")
            ax.set_xlim(0, d)
            if row == len(names) - 1:
                ax.set_xlabel("pairwise distance")
            if col == 0:
                ax.set_ylabel("density")
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Pairwise distances between samples' representations")
    return fig


def plot_unit_slopes(results: xr.Dataset, *, layers: Sequence[str] | None = None) -> Figure:
    """Slopes of per-unit binned entropy over epochs, per bin size, with mean ± std (Sec. 5.2).

    Needs ``unit_entropy_slope`` (layer, unit_bin_size, unit) from ``unit-entropy-slopes``. Each
    dot is a unit; the bar is the layer's mean slope ± one standard deviation. Negative slopes
    are units that compress.
    """
    _require(results, "unit-slopes", {"unit_entropy_slope": ("layer", "unit_bin_size", "unit")})
    slopes = results["unit_entropy_slope"]
    names = _layers(slopes, layers)
    fig, axes = _grid(len(names))
    sizes = slopes["unit_bin_size"].values
    positions = np.arange(sizes.size)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, slopes.sizes["unit"])
    for ax, name in zip(axes, names, strict=True):
        layer = slopes.sel(layer=name)
        for i, size in enumerate(sizes):
            values = layer.sel(unit_bin_size=size).values
            ax.scatter(positions[i] + jitter, values, s=6, color="tab:blue", alpha=0.5)
        mean = layer.mean("unit").values
        std = layer.std("unit").values
        ax.errorbar(positions, mean, yerr=std, fmt="o", color="black", capsize=3,
                    label="mean ± std")
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xticks(positions, [f"{s:g}" for s in sizes])
        ax.set_xlabel("bin size")
        ax.set_ylabel(f"entropy slope ({slopes.attrs.get('units', 'nat/epoch')})")
        ax.set_title(f"layer {name}", fontsize="medium")
    axes[0].legend(fontsize="small")
    fig.suptitle("Per-unit binned entropy slopes over training")
    return fig


def plot_cosine_similarity(
    results: xr.Dataset,
    *,
    layers: Sequence[str] | None = None,
    epochs: EpochSelection | None = None,
) -> Figure:
    """Histograms of the per-input cosine similarity between two runs, per layer (Fig. 3).

    Needs ``cosine_density`` (epoch, layer, cosine_bin) from ``cosine-similarity``; one curve per
    chosen epoch.
    """
    _require(
        results, "cosine-similarity", {"cosine_density": ("epoch", "layer", "cosine_bin")}
    )
    density = results["cosine_density"]
    names = _layers(density, layers)
    chosen = _pick_epochs(density["epoch"].values, epochs)
    fig, axes = _grid(len(names))
    norm, cmap = _epoch_norm(np.asarray(chosen)), colormaps["viridis"]
    edges = _edges(results, "cosine_bin")
    for ax, name in zip(axes, names, strict=True):
        for epoch in chosen:
            ax.stairs(density.sel(layer=name, epoch=epoch).values, edges,
                      color=cmap(norm(epoch)), label=f"epoch {epoch}")
        ax.set_xlim(-1, 1)
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.set_title(f"layer {name}", fontsize="medium")
    axes[0].legend(fontsize="small")
    fig.suptitle("Cosine similarity between the two runs' representations")
    return fig


def plot_activation_scatter(
    results: xr.Dataset | None = None,
    *,
    run: Run | str | os.PathLike[str] | None = None,
    layers: Sequence[str] | None = None,
    epochs: EpochSelection | None = None,
    max_points: int = 2000,
) -> Figure:
    """Scatter of 2- or 3-unit layers' S at chosen epochs, coloured by class (Fig. 5, right).

    Reads the run store: ``run``, else the results' ``source`` attribute. One row per layer of
    ``layers``, by default the deepest layer of 2 or 3 units; one column per epoch of ``epochs``
    (:func:`ibframe.engine.select_epochs`), by default up to four of the results' epochs (the
    run's when no results are given), spread on a log scale. Each row's axes span the layer's
    activations over all its epochs, so movement between epochs is movement in the figure. At
    most ``max_points`` samples are drawn (a seeded subset), which keeps the figure light.
    """
    store = _scatter_run(results, run)
    widths = {name: int(store.layer_attrs(name)["units"]) for name in store.layers}
    if layers is None:
        small = [name for name, units in widths.items() if units in (2, 3)]
        if not small:  # the run lacks what the figure needs, as a result lacks a variable
            listing = ", ".join(f"{k} ({v})" for k, v in widths.items())
            msg = f"plot 'scatter' needs a layer of 2 or 3 units; run {store.path} has {listing}"
            raise ResultConventionError(msg)
        layers = [small[-1]]
    for layer in layers:
        if layer not in widths:
            msg = f"no layer {layer!r} in run {store.path} (layers: {', '.join(widths)})"
            raise ParameterError(msg)
        if widths[layer] not in (2, 3):
            msg = f"plot 'scatter' draws layers of 2 or 3 units; {layer!r} has {widths[layer]}"
            raise ParameterError(msg)
    available = (
        results["epoch"].values if results is not None and "epoch" in results.coords
        else store.epochs
    )
    chosen = _pick_epochs(available, epochs)
    labels = store.y
    n = store.n_samples
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))
    fig = Figure(
        figsize=(_PANEL * len(chosen) + 1.6, (_PANEL + 0.2) * len(layers) + 0.4),
        layout="constrained",
    )
    cmap = colormaps["tab10"]
    classes = np.unique(labels[rows]) if labels is not None else np.array([], dtype=int)
    colours = cmap(labels[rows] % 10) if labels is not None else "tab:blue"
    for r, layer in enumerate(layers):
        dims = widths[layer]
        activations = store.activations(layer)
        points = [np.asarray(activations.sel(epoch=e).values)[rows] for e in chosen]
        low = np.min([p.min(axis=0) for p in points], axis=0)
        high = np.max([p.max(axis=0) for p in points], axis=0)
        pad = 0.05 * np.maximum(high - low, 1e-6)
        limits = list(zip(low - pad, high + pad, strict=True))
        for c, (epoch, s) in enumerate(zip(chosen, points, strict=True)):
            extra = {"projection": "3d"} if dims == 3 else {}
            ax = fig.add_subplot(len(layers), len(chosen), r * len(chosen) + c + 1, **extra)
            ax.scatter(*s.T, c=colours, s=4, alpha=0.6,
                       **({"depthshade": False} if dims == 3 else {}))
            ax.set_xlim(*limits[0])
            ax.set_ylim(*limits[1])
            ax.set_title(f"{layer}, epoch {epoch}", fontsize="medium")
            ax.set_xlabel("unit 0")
            ax.set_ylabel("unit 1")
            if dims == 3:
                ax.set_zlim(*limits[2])
                ax.set_zlabel("unit 2")
                for axis in (ax.xaxis, ax.yaxis, ax.zaxis):  # few ticks, none over the labels
                    axis.set_major_locator(MaxNLocator(3))
                ax.tick_params(labelsize="small", pad=0)
                ax.set_box_aspect(None, zoom=0.8)  # room for the labels inside the panel
    if classes.size:
        handles = [
            Line2D([], [], ls="none", marker="o", markersize=5, color=cmap(k % 10),
                   label=f"class {k}")
            for k in classes
        ]
        fig.legend(handles=handles, loc="outside right center", fontsize="small",
                   title="class")
    fig.suptitle(f"Representations of layer{'s' if len(layers) > 1 else ''} "
                 f"{', '.join(layers)}, coloured by class")
    return fig


def _scatter_run(results: xr.Dataset | None, run: Run | str | os.PathLike[str] | None) -> Run:
    if isinstance(run, Run):
        return run
    if run is not None:
        return open_run(run)
    source = None if results is None else results.attrs.get("source")
    if not source or not Path(source).exists():
        where = f"the run store {source} they name was not found" if source else "they name no run"
        msg = f"plot 'scatter' needs the run store: pass run=PATH (--run on the command line; {where})"
        raise ResultConventionError(msg)
    return open_run(source)


def _reason(err: ResultConventionError, kind: str) -> str:
    """The error's message without its leading ``plot 'KIND'``, for a line that names the kind."""
    text = str(err)
    for prefix in (f"plot {kind!r}: ", f"plot {kind!r} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _lost_source(results: xr.Dataset) -> str | None:
    """The run store the results name in ``source``, when it cannot be found."""
    source = results.attrs.get("source")
    return source if source and not Path(source).exists() else None


#: Figure kinds: name -> (function, description). Each function takes the results Dataset first.
PLOT_KINDS: dict[str, tuple[Callable[..., Figure], str]] = {
    "mi-epochs": (plot_mi_epochs, "I(X;T_l) per layer over epochs with train/test loss (Fig. 5)"),
    "info-plane": (plot_information_plane, "I(X;T_l) against I(T_l;Y), coloured by epoch"),
    "binned-entropy": (plot_binned_entropy, "H(Bin(T_l)) over epochs per bin size (Fig. 1)"),
    "distance-histograms": (
        plot_distance_histograms,
        "within/between-class pairwise-distance histograms at chosen epochs (Figs. 6, 8)",
    ),
    "unit-slopes": (plot_unit_slopes, "per-unit binned-entropy slopes, mean ± std (Sec. 5.2)"),
    "cosine-similarity": (
        plot_cosine_similarity,
        "per-input cosine similarity between two runs' representations (Fig. 3)",
    ),
    "scatter": (
        plot_activation_scatter,
        "a 2- or 3-unit layer at chosen epochs coloured by class (Fig. 5, right; needs the run)",
    ),
}


def plot_results(
    results: xr.Dataset | str | os.PathLike[str],
    kinds: Sequence[str] | None = None,
    out_dir: str | os.PathLike[str] = ".",
    formats: Sequence[str] = ("png",),
    run: Run | str | os.PathLike[str] | None = None,
    *,
    epochs: EpochSelection | None = None,
    layers: Sequence[str] | None = None,
    layer_names: str | Sequence[str] | None = None,
) -> list[Path]:
    """Draw figure kinds and write each as ``OUT_DIR/KIND.FORMAT``.

    Parameters
    ----------
    results
        A results Dataset, or the path of one written by :func:`ibframe.save_results`. Results
        of several runs are drawn as their mean over runs, with a band of ± one sd where a
        figure draws bands (``mi-epochs``); see :func:`ibframe.aggregate`.
    kinds
        Names from :data:`PLOT_KINDS`. ``None`` draws every kind the results hold the variables
        for (and, for ``scatter``, whose run has a layer of 2 or 3 units), skipping each other
        kind with a :class:`PlotWarning` that says why, and raises only if there is none; a kind
        named explicitly that cannot be drawn raises
        :class:`~ibframe.errors.ResultConventionError`.
    out_dir
        Directory for the files, created if needed.
    formats
        Any of ``"png"``, ``"svg"``, ``"pdf"``.
    run
        The run store, for ``scatter``; default the results' ``source`` attribute.
    epochs
        Epoch numbers and ``slice(start, stop)`` ranges of the results' epochs
        (:func:`ibframe.engine.select_epochs`): figures over epochs draw only these, and figures
        at chosen epochs (``distance-histograms``, ``cosine-similarity``, ``scatter``) draw each
        of them. Default: every epoch, and up to four chosen on a log scale.
    layers
        The layers every figure draws (default: each figure's own choice; ``scatter`` takes
        layers of 2 or 3 units).
    layer_names
        Names for the results' layers in every figure drawn from them (:func:`rename_layers`):
        ``"T"`` gives T1...TL as in the paper.

    Returns
    -------
    list of pathlib.Path
        The files written, kind by kind, format by format.
    """
    if not isinstance(results, xr.Dataset):
        from ibframe.results import load_results

        results = load_results(results)
    if "run" in results.dims:  # several runs: every figure draws their mean (and band)
        from ibframe.runs import aggregate

        results = aggregate(results, over="run")
    unknown = [k for k in (kinds or []) if k not in PLOT_KINDS]
    if unknown:
        msg = f"unknown plot kind {unknown[0]!r}; known kinds: {', '.join(PLOT_KINDS)}"
        raise ParameterError(msg)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        msg = f"plot formats must be among {', '.join(FORMATS)}; got {list(formats)}"
        raise ParameterError(msg)
    if layer_names is not None:
        results = rename_layers(results, layer_names)
    chosen = None
    if epochs is not None:
        if "epoch" not in results.coords:
            msg = "epochs were asked for, but the results have no epoch coordinate"
            raise ResultConventionError(msg)
        chosen = select_epochs(results["epoch"].values, epochs, "the results")
        results = results.sel(epoch=chosen)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    for kind in kinds if kinds is not None else list(PLOT_KINDS):
        function = PLOT_KINDS[kind][0]
        accepted = inspect.signature(function).parameters
        takes_run = "run" in accepted
        options: dict[str, typing.Any] = {"run": run} if takes_run else {}
        if chosen is not None and "epochs" in accepted:
            options["epochs"] = chosen
        if layers is not None and "layers" in accepted:
            options["layers"] = list(layers)
        lost = _lost_source(results) if takes_run and run is None and kinds is None else None
        try:
            if lost is not None:
                msg = (
                    f"the run store {lost} named by the results was not found; pass the run "
                    "(run=PATH, or ibframe plot --run PATH)"
                )
                raise ResultConventionError(msg)
            fig = function(results, **options)
        except ResultConventionError as err:
            if kinds is not None:
                raise
            warnings.warn(f"plot {kind!r} skipped: {_reason(err, kind)}", PlotWarning,
                          stacklevel=2)
            skipped.append(f"{kind}: {_reason(err, kind)}")
            continue
        for fmt in formats:
            path = out / f"{kind}.{fmt}"
            fig.savefig(path, dpi=150)
            written.append(path)
    if not written:
        msg = "the results hold nothing to plot:\n  " + "\n  ".join(skipped)
        raise ResultConventionError(msg)
    return written
