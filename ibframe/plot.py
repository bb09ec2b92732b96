"""The paper's figures from estimator results, with matplotlib, headless.

Each figure kind is a function that takes a results Dataset (as :func:`ibframe.engine.estimate`
returns it) and returns a :class:`matplotlib.figure.Figure`; :data:`PLOT_KINDS` lists them and
:func:`plot_results` writes several at once as PNG, SVG or PDF files::

    from ibframe.plot import plot_results
    paths = plot_results("results.nc", ["mi-epochs", "distance-histograms"], "figures/")

Some kinds read the run store the results came from (``source``, or ``run=``): ``scatter``,
``density-epochs``, ``activation-histograms`` and ``input-distances``. Those and ``mi-epochs``
draw ``into=`` a subfigure when given one, so that a paper figure is composed of several kinds.

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
import numpy.typing as npt
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize, SymLogNorm
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ibframe.engine import EpochSelection, select_epochs
from ibframe.errors import IbframeWarning, ParameterError, ResultConventionError
from ibframe.kernels.distances import pairwise_distance_histogram
from ibframe.store import Run, open_run
from ibframe.store.location import Location


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


def _canvas(into: SubFigure | None, figsize: tuple[float, float]) -> tuple[Figure, Figure | SubFigure]:
    """The figure to return and the (sub)figure to draw on: ``into`` and the figure that holds
    it, else a new figure of ``figsize`` inches."""
    if into is not None:
        return into.get_figure(root=True), into
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig


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


def _format_setting(value: typing.Any) -> str:
    if isinstance(value, float | np.floating):
        return "none" if np.isnan(value) else f"{float(value):g}"
    return str(value)


def _settings(results: xr.Dataset) -> list[tuple[str, xr.Dataset, float | None]]:
    """The results split by setting: (label, results without ``run``, beta) per setting.

    Without a ``run`` dimension, the results themselves. With one, the runs are grouped by the
    coordinates along ``run`` that differ between them, other than ``seed`` (a beta sweep,
    tanh against orthonormal); each group of several runs (seeds) becomes their aggregate
    (:func:`ibframe.aggregate`: mean and sd), a group of one run that run. The label names the
    group's settings ("beta = 0.1"), empty when all runs share them. Results already grouped
    (``ibframe.aggregate(ds, by="beta")``) are split along their ``grouped_by`` dimension.
    """
    from ibframe.runs import aggregate

    by = results.attrs.get("grouped_by")
    if "run" not in results.dims and by in results.dims:
        return [
            (f"{by} = {_format_setting(value)}",
             results.sel({by: value}).drop_vars(by),
             float(value) if by == "beta" else results.attrs.get("beta"))
            for value in results[by].values
        ]
    if "run" not in results.dims:
        beta = results.attrs.get("beta")
        return [("", results, None if beta is None else float(beta))]
    along = [
        str(name) for name, coord in results.coords.items()
        if name not in ("run", "seed") and coord.dims == ("run",)
    ]
    columns = {name: [_format_setting(v) for v in results[name].values] for name in along}
    differing = [name for name in along if len(set(columns[name])) > 1]
    keys = [tuple(columns[name][i] for name in differing) for i in range(results.sizes["run"])]
    groups = []
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        part = results.isel(run=rows)
        betas = np.unique(part["beta"].values) if "beta" in part.coords else []
        beta = float(betas[0]) if len(betas) == 1 else None
        if len(rows) > 1:
            part = aggregate(part, over="run")
        else:
            part = part.isel(run=0).drop_vars(
                [n for n in part.coords if "run" in part[n].dims], errors="ignore"
            )
        label = ", ".join(f"{name} = {value}" for name, value in zip(differing, key, strict=True))
        groups.append((label, part, beta))
    return groups


def _entropy_at_ten_beta(results: xr.Dataset, beta: float | None) -> xr.DataArray | None:
    """``entropy_bin`` at the recorded bin size nearest B = 10 beta (Fig. 5, bottom), or None."""
    if "entropy_bin" not in results.data_vars or beta is None or beta <= 0:
        return None
    entropy = results["entropy_bin"]
    if "bin_size" in entropy.dims:
        sizes = entropy["bin_size"].values
        entropy = entropy.sel(bin_size=sizes[int(np.argmin(np.abs(np.log(sizes / (10 * beta)))))])
    extra = [d for d in entropy.dims if d not in ("epoch", "layer")]
    return None if extra else entropy


_STYLES: typing.Final = ("-", "--", ":", "-.")


def plot_mi_epochs(
    results: xr.Dataset,
    *,
    layers: Sequence[str] | None = None,
    layer_names: str | Sequence[str] | None = None,
    arrows: EpochSelection | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """I(X;T_l) of each layer over epochs, above the train and test losses and H(Bin(T_l)) (Fig. 5).

    Needs ``mi_x_t`` (epoch, layer); draws ``loss_train`` and ``loss_test`` (epoch) when present,
    and, when the results hold ``entropy_bin`` and the run's beta is known, a bottom panel with
    H(Bin(T_l)) at the recorded bin size nearest B = 10 beta, as the paper draws it.
    The epoch axis is logarithmic when the epochs span decades, as in the paper. With
    ``mi_x_t_stderr`` and ``mi_x_t_bias`` a band spans 2 standard errors around both the estimate
    and the estimate less its bias; epochs where ``converged`` is false get open markers.

    ``arrows`` (epochs, as :func:`ibframe.engine.select_epochs` takes them) marks those epochs
    with arrows on the curve of the last layer drawn, labelled with the epoch, to match them with
    :func:`plot_activation_scatter` panels at the same epochs (Fig. 5).

    Results of several runs (a ``run`` dimension) are grouped by the settings that differ between
    them (:func:`_settings`): the seeds of one setting are drawn as their mean with a band of ±
    one sd across runs (:func:`ibframe.aggregate`), and settings that differ (a beta sweep,
    tanh against orthonormal) as one line each, named in the legend (with one layer drawn,
    a colour per setting; else a colour per layer and a line style per setting). An aggregate
    made with ``kind="quantile"`` is drawn as its median with the quantile band; the standard
    error of a mean's Monte Carlo part (``mi_x_t_stderr`` of the aggregate) is a darker band of
    ± 2 of it inside.

    ``layer_names`` renames the layers (:func:`rename_layers`): ``"T"`` labels them T1...TL;
    ``layers`` then takes the new names. ``into`` draws into that subfigure of a larger figure
    (and returns the larger figure).
    """
    from ibframe.runs import spread_band

    if layer_names is not None:
        results = rename_layers(results, layer_names)
    _require(results, "mi-epochs", {"mi_x_t": ("epoch", "layer")})
    groups = _settings(results)
    names = _layers(groups[0][1]["mi_x_t"], layers)
    losses = [name for name in ("loss_train", "loss_test") if name in results.data_vars]
    binned = [_entropy_at_ten_beta(part, beta) for _, part, beta in groups]
    rows = [3.0] + ([1.4] if losses else []) + ([1.6] if any(b is not None for b in binned) else [])
    fig, canvas = _canvas(into, (6.4, 4.0 + 1.6 * (len(rows) - 1)))
    axes = canvas.subplots(
        len(rows), 1, sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": rows} if len(rows) > 1 else None,
    ).ravel()
    ax_loss = axes[1] if losses else None
    ax_bin = axes[-1] if len(rows) > 1 and any(b is not None for b in binned) else None
    by_setting = len(groups) > 1 and len(names) == 1
    flagged = False
    epochs = results["epoch"].values
    for g, (setting, part, _) in enumerate(groups):
        mi = part["mi_x_t"]
        band = spread_band(part, "mi_x_t")
        stderr, bias = part.get("mi_x_t_stderr"), part.get("mi_x_t_bias")
        converged = part.get("converged")
        style = "-" if by_setting else _STYLES[g % len(_STYLES)]
        for i, name in enumerate(names):
            colour = f"C{g if by_setting else i}"
            label = ", ".join(filter(None, [None if by_setting else name, setting]))
            values = mi.sel(layer=name).values
            axes[0].plot(epochs, values, marker=".", color=colour, ls=style, label=label)
            if band is not None:
                low, high = (b.sel(layer=name).values for b in band[:2])
                axes[0].fill_between(epochs, low, high, color=colour, alpha=0.2, lw=0)
                if stderr is not None:
                    spread = 2 * stderr.sel(layer=name).values
                    axes[0].fill_between(epochs, values - spread, values + spread,
                                         color=colour, alpha=0.45, lw=0)
            elif stderr is not None:
                spread = 2 * np.nan_to_num(stderr.sel(layer=name).values)
                shift = 0.0 if bias is None else np.nan_to_num(bias.sel(layer=name).values)
                low = np.minimum(values, values - shift) - spread
                high = np.maximum(values, values - shift) + spread
                axes[0].fill_between(epochs, low, high, color=colour, alpha=0.2, lw=0)
            if converged is not None and "epoch" in converged.dims:
                bad = ~converged.sel(layer=name).values.astype(bool)
                if bad.any():
                    axes[0].plot(epochs[bad], values[bad], ls="none", marker="o", mfc="none",
                                 color=colour)
                    flagged = True
            if ax_bin is not None and binned[g] is not None:
                ax_bin.plot(epochs, binned[g].sel(layer=name).values, color=colour, ls=style)
        for k, loss in enumerate(losses if ax_loss is not None else []):
            colour = f"C{g}" if by_setting else f"C{k}"
            kind = loss.replace("loss_", "")
            ax_loss.plot(epochs, part[loss].values, color=colour,
                         ls=_STYLES[k] if by_setting else style,
                         label=", ".join(filter(None, [kind, setting])))
            loss_band = spread_band(part, loss)
            if loss_band is not None:
                ax_loss.fill_between(epochs, loss_band[0].values, loss_band[1].values,
                                     color=colour, alpha=0.2, lw=0)
    if flagged:
        axes[0].plot([], [], ls="none", marker="o", mfc="none", color="grey",
                     label="not converged")
    if any(spread_band(part, "mi_x_t") is not None and "mi_x_t_stderr" in part
           for _, part, _ in groups):
        axes[0].fill_between([], [], [], color="grey", alpha=0.45, lw=0,
                             label="± 2 stderr (estimator)")
    if arrows is not None:
        _mark_epochs(axes[0], groups[0][1]["mi_x_t"].sel(layer=names[-1]), arrows)
    units = groups[0][1]["mi_x_t"].attrs.get("units", "nat")
    axes[0].set_ylabel(f"I(X;T_l) ({units})")
    runs = [part.attrs.get("aggregate") for _, part, _ in groups if "aggregate" in part.attrs]
    title = "setting" if by_setting else "layer"
    if len(set(runs)) == 1:
        title += f"\n{runs[0]}"
    axes[0].legend(title=title, fontsize="small")
    axes[0].set_title("Mutual information between input and layer")
    if ax_loss is not None:
        ax_loss.set_ylabel("loss")
        ax_loss.legend(fontsize="small")
    if ax_bin is not None:
        sizes = sorted({float(b["bin_size"]) for b in binned if b is not None and "bin_size" in b.coords})
        ax_bin.set_ylabel(f"H(Bin(T_l)) ({results['entropy_bin'].attrs.get('units', 'nat')})")
        at = f" at B = {', '.join(f'{b:g}' for b in sizes)} (nearest 10β)" if sizes else ""
        ax_bin.set_title(f"binned entropy{at}", fontsize="small")
    for ax in axes:
        _epoch_axis(ax, epochs)
    return fig


def _mark_epochs(ax: Axes, curve: xr.DataArray, arrows: EpochSelection) -> None:
    """Arrows down onto ``curve`` (over epochs) at the epochs ``arrows`` picks, labelled; the
    labels of neighbouring arrows alternate between two heights, so that epochs close on the
    axis (9261 and 10000 on a log axis) do not print over each other."""
    for i, epoch in enumerate(select_epochs(curve["epoch"].values, arrows, "the results")):
        value = float(curve.sel(epoch=epoch))
        ax.annotate(
            str(epoch), xy=(epoch, value), xytext=(0, 22 + 14 * (i % 2)),
            textcoords="offset points",
            ha="center", fontsize="small", color="0.2",
            arrowprops={"arrowstyle": "->", "color": "0.2", "lw": 0.9},
        )


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
    if n_inputs is None and (named := _named_run(results)) is not None:
        n_inputs = named.n_samples
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
    into: SubFigure | None = None,
) -> Figure:
    """Scatter of 2- or 3-unit layers' S at chosen epochs, coloured by class (Fig. 5, right).

    Reads the run store: ``run``, else the results' ``source`` attribute. One row per layer of
    ``layers``, by default the deepest layer of 2 or 3 units; one column per epoch of ``epochs``
    (:func:`ibframe.engine.select_epochs`), by default up to four of the results' epochs (the
    run's when no results are given), spread on a log scale. Each row's axes span the layer's
    activations over all its epochs, so movement between epochs is movement in the figure. At
    most ``max_points`` samples are drawn (a seeded subset), which keeps the figure light.
    ``into`` draws into that subfigure of a larger figure (and returns the larger figure).
    """
    store = _run_store(results, run, "scatter")
    widths = {name: int(store.layer_attrs(name)["units"]) for name in store.layers}
    if layers is None:
        small = [name for name, units in widths.items() if units in (2, 3)]
        if not small:  # the run lacks what the figure needs, as a result lacks a variable
            listing = ", ".join(f"{k} ({v})" for k, v in widths.items())
            msg = f"plot 'scatter' needs a layer of 2 or 3 units; run {store.path} has {listing}"
            raise ResultConventionError(msg)
        layers = [small[-1]]
    _check_layers(store, layers, "scatter", widths=(2, 3), what="2 or 3 units")
    chosen = _pick_epochs(_drawn_epochs(results, store), epochs)
    labels = store.y
    n = store.n_samples
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))
    fig, canvas = _canvas(
        into, (_PANEL * len(chosen) + 1.6, (_PANEL + 0.2) * len(layers) + 0.4)
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
            ax = canvas.add_subplot(len(layers), len(chosen), r * len(chosen) + c + 1, **extra)
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
        canvas.legend(handles=handles, loc="outside right center", fontsize="small",
                      title="class")
    canvas.suptitle(f"Representations of layer{'s' if len(layers) > 1 else ''} "
                 f"{', '.join(layers)}, coloured by class")
    return fig


def mixture_density(centres: npt.ArrayLike, beta: float, grid: npt.ArrayLike) -> np.ndarray:
    """The density on ``grid`` of T = S + Z for S drawn uniformly from ``centres`` and
    Z ~ N(0, beta^2): the equal-weight Gaussian mixture (1/n) sum_i N(centres_i, beta^2)."""
    z = (np.asarray(grid, np.float64)[:, None] - np.asarray(centres, np.float64)[None, :]) / beta
    return np.exp(-0.5 * z**2).mean(axis=1) / (beta * np.sqrt(2 * np.pi))


def plot_density_epochs(
    results: xr.Dataset | None = None,
    *,
    run: Run | str | os.PathLike[str] | None = None,
    layers: Sequence[str] | None = None,
    epochs: EpochSelection | None = None,
    points: int = 400,
    into: SubFigure | None = None,
) -> Figure:
    """The density of a 1-unit noisy layer's T over epochs (Fig. 4a, b), from the run store.

    At each epoch, T = S + Z with S uniform over the recorded values S_i of the n inputs and
    Z ~ N(0, beta^2) (beta from the run's noise), so its density is the mixture
    (1/n) sum_i N(S_i, beta^2) (:func:`mixture_density`). One row per layer (default: every
    layer of one unit): on the left the density at the epochs of ``epochs`` (default up to four,
    log-spaced), on the right an image of it over every epoch (of the results when given, else
    the run's) against t, on a log epoch axis and a log colour scale. t spans the layer's
    recorded S over those epochs, widened by 4 beta. Reads the run store: ``run``, else the
    results' ``source``.
    """
    store = _run_store(results, run, "density-epochs")
    widths = {name: int(store.layer_attrs(name)["units"]) for name in store.layers}
    if layers is None:
        layers = [name for name, units in widths.items() if units == 1]
        if not layers:
            listing = ", ".join(f"{k} ({v})" for k, v in widths.items())
            msg = f"plot 'density-epochs' needs a layer of 1 unit; run {store.path} has {listing}"
            raise ResultConventionError(msg)
    _check_layers(store, layers, "density-epochs", widths=(1,), what="1 unit")
    beta = store.beta
    if beta <= 0:
        msg = f"plot 'density-epochs' needs a noisy run; run {store.path} has beta = 0"
        raise ResultConventionError(msg)
    over = [int(e) for e in _drawn_epochs(results, store)]
    chosen = _pick_epochs(over, epochs)
    fig, canvas = _canvas(into, (2 * _PANEL + 1.6, (_PANEL * 0.9) * len(layers) + 0.4))
    axes = canvas.subplots(len(layers), 2, squeeze=False)
    norm_epochs, cmap = _epoch_norm(np.asarray(chosen)), colormaps["viridis"]
    for row, layer in enumerate(layers):
        s = np.asarray(store.activations(layer).sel(epoch=over).values, np.float64)[..., 0]
        grid = np.linspace(s.min() - 4 * beta, s.max() + 4 * beta, points)
        image = np.stack([mixture_density(centres, beta, grid) for centres in s], axis=1)
        ax_at, ax_over = axes[row]
        for epoch in chosen:
            ax_at.plot(grid, image[:, over.index(epoch)], color=cmap(norm_epochs(epoch)),
                       label=f"epoch {epoch}")
        ax_at.set(xlabel="t", ylabel="density p_T(t)", title=f"{layer}: density of T")
        ax_at.legend(fontsize="small")
        top = float(image.max())
        mesh = ax_over.pcolormesh(
            over, grid, image, shading="nearest", cmap="magma",
            norm=LogNorm(vmin=top * 1e-4, vmax=top), rasterized=True,
        )
        ax_over.set_facecolor(colormaps["magma"](0.0))  # densities of 0 (no log) as the least
        _epoch_axis(ax_over, np.asarray(over))
        ax_over.set(ylabel="t", title=f"{layer}: density of T over epochs")
        canvas.colorbar(mesh, ax=ax_over, label="p_T(t)")
    canvas.suptitle(f"Density of the noisy layer T = S + Z, beta = {beta:g}")
    return fig


def _value_range(store: Run, layer: str, values: np.ndarray) -> tuple[float, float]:
    """The histogram range of a layer's S: its activation's range, else what was recorded."""
    activation = store.layer_attrs(layer).get("activation")
    if activation == "tanh":
        return -1.0, 1.0
    if activation in ("sigmoid", "logistic"):
        return 0.0, 1.0
    low, high = float(np.min(values)), float(np.max(values))
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def plot_activation_histograms(
    results: xr.Dataset | None = None,
    *,
    run: Run | str | os.PathLike[str] | None = None,
    layers: Sequence[str] | None = None,
    epochs: EpochSelection | None = None,
    bins: int = 40,
    value_range: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """Histograms of each layer's recorded S, all units together, at chosen epochs (Fig. 10).

    Saturation shows as mass piling up at the ends of a tanh layer's [-1, 1] (or at 0 for ReLU).
    One column per layer (default all), one row per epoch of ``epochs`` (default up to four,
    log-spaced); ``bins`` equal bins over ``value_range``, by default the activation's range
    (tanh [-1, 1], sigmoid [0, 1]), else the layer's recorded range over the epochs drawn. Values
    outside the range are counted in the end bins, and the title says so. Reads the run store:
    ``run``, else the results' ``source``.
    """
    store = _run_store(results, run, "activation-histograms")
    layers = list(store.layers) if layers is None else list(layers)
    _check_layers(store, layers, "activation-histograms")
    if value_range is not None and not value_range[0] < value_range[1]:
        msg = f"value_range must be (low, high) with low < high, got {value_range}"
        raise ParameterError(msg)
    chosen = _pick_epochs(_drawn_epochs(results, store), epochs)
    fig, canvas = _canvas(into, (2.4 * len(layers) + 0.4, 1.9 * len(chosen) + 0.6))
    axes = canvas.subplots(len(chosen), len(layers), squeeze=False)
    for col, layer in enumerate(layers):
        s = np.asarray(store.activations(layer).sel(epoch=chosen).values, np.float64)
        low, high = value_range or _value_range(store, layer, s)
        edges = np.linspace(low, high, bins + 1)
        for row, epoch in enumerate(chosen):
            values = np.clip(s[row].ravel(), low, high)
            ax = axes[row, col]
            ax.hist(values, edges, color="tab:blue")
            ax.set_xlim(low, high)
            ax.set_title(f"{layer}, epoch {epoch}", fontsize="small")
            ax.tick_params(labelsize="x-small")
            if row == len(chosen) - 1:
                ax.set_xlabel("S")
            if col == 0:
                ax.set_ylabel("count")
    canvas.suptitle("Activations of each layer (values beyond the range in the end bins)")
    return fig


def input_distances(
    run: Run | str | os.PathLike[str], bins: int = 60, max_samples: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, within, between): densities of the within- and between-class Euclidean distances
    between a run's recorded inputs, flattened (what ``input-distances`` draws).

    The ``bins`` bins span [0, D], D the largest distance: a first pass of 1,000 bins over the
    inputs' bounding-box diameter (which bounds every distance) finds the last bin with a pair,
    and the histogram is then taken over [0, upper edge of that bin]. Above ``max_samples``
    inputs, a seeded subset of that many is used (as the ``distance-histogram`` estimator does).
    """
    store = run if isinstance(run, Run) else open_run(run)
    if store.y is None:
        msg = f"plot 'input-distances' needs class labels; run {store.path} has none"
        raise ResultConventionError(msg)
    n = store.n_samples
    rows = np.arange(n)
    if n > max_samples:
        rows = np.sort(np.random.default_rng(0).choice(n, max_samples, replace=False))
    x = np.asarray(store.x, np.float64).reshape(n, -1)[rows]
    y = np.asarray(store.y)[rows]
    diameter = float(np.sqrt(np.sum((x.max(axis=0) - x.min(axis=0)) ** 2)))
    if diameter <= 0:
        msg = "plot 'input-distances': all the inputs are equal, so every distance is 0"
        raise ResultConventionError(msg)
    coarse = pairwise_distance_histogram(x, y, bins=1000, max_distance=diameter)
    filled = np.flatnonzero(coarse.counts.sum(axis=0))
    upper = diameter * (int(filled[-1]) + 1) / 1000
    hist = pairwise_distance_histogram(x, y, bins=bins, max_distance=upper)
    edges = np.linspace(0.0, upper, bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        density = hist.counts / (hist.n_pairs[:, None] * np.diff(edges)[None, :])
    within, between = np.where(hist.n_pairs[:, None] > 0, density, np.nan)
    return edges, within, between


def plot_input_distances(
    results: xr.Dataset | None = None,
    *,
    run: Run | str | os.PathLike[str] | None = None,
    bins: int = 60,
    max_samples: int = 4096,
    into: SubFigure | None = None,
) -> Figure:
    """Within- and between-class pairwise distances of the recorded inputs X (Fig. 8, input).

    The reference the layers' ``distance-histograms`` are read against: how far apart the
    classes are before the network acts. Euclidean distances of the flattened inputs, by
    :func:`ibframe.kernels.distances.pairwise_distance_histogram`, as densities in ``bins`` bins
    over [0, the largest distance] (:func:`input_distances`). Reads the run store: ``run``, else
    the results' ``source``.
    """
    store = _run_store(results, run, "input-distances")
    edges, within, between = input_distances(store, bins, max_samples)
    fig, canvas = _canvas(into, (_PANEL + 1.2, _PANEL * 0.8 + 0.4))
    ax = canvas.subplots()
    for values, pair, colour in ((within, "within", "tab:blue"), (between, "between", "tab:orange")):
        ax.stairs(values, edges, fill=True, alpha=0.35, color=colour, label=f"{pair}-class")
        ax.stairs(values, edges, color=colour, linewidth=0.8)
    ax.set_xlim(0, edges[-1])
    ax.set(xlabel="pairwise distance of the inputs", ylabel="density")
    ax.legend(fontsize="small")
    canvas.suptitle(f"Pairwise distances between inputs ({min(store.n_samples, max_samples)} samples)")
    return fig


def _check_layers(
    store: Run, layers: Sequence[str], kind: str, *, widths: Sequence[int] = (), what: str = ""
) -> None:
    """Refuse a layer the run lacks, or (with ``widths``) one of another number of units."""
    for layer in layers:
        if layer not in store.layers:
            msg = f"no layer {layer!r} in run {store.path} (layers: {', '.join(store.layers)})"
            raise ParameterError(msg)
        units = int(store.layer_attrs(layer)["units"])
        if widths and units not in widths:
            msg = f"plot {kind!r} draws layers of {what}; {layer!r} has {units}"
            raise ParameterError(msg)


def _drawn_epochs(results: xr.Dataset | None, store: Run) -> np.ndarray:
    """The epochs a figure of the run store chooses from: the results', else the run's."""
    if results is not None and "epoch" in results.coords:
        return np.asarray(results["epoch"].values)
    return np.asarray(store.epochs)


def _run_store(
    results: xr.Dataset | None, run: Run | str | os.PathLike[str] | None, kind: str
) -> Run:
    """The run store a figure reads: ``run``, else the one the results name in ``source``."""
    if isinstance(run, Run):
        return run
    if run is not None:
        return open_run(run)
    named = _named_run(results)
    if named is None:
        source = None if results is None else results.attrs.get("source")
        where = f"the run store {source} they name was not found" if source else "they name no run"
        msg = f"plot {kind!r} needs the run store: pass run=PATH (--run on the command line; {where})"
        raise ResultConventionError(msg)
    return named


def _reason(err: ResultConventionError, kind: str) -> str:
    """The error's message without its leading ``plot 'KIND'``, for a line that names the kind."""
    text = str(err)
    for prefix in (f"plot {kind!r}: ", f"plot {kind!r} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _for_url(
    where: str | os.PathLike[str], storage_options: typing.Mapping[str, typing.Any] | None
) -> typing.Mapping[str, typing.Any] | None:
    """``storage_options`` where ``where`` is a URL; None for a local path."""
    return storage_options if Location.of(str(where)).local is None else None


def _named_run(
    results: xr.Dataset | None, storage_options: typing.Mapping[str, typing.Any] | None = None
) -> Run | None:
    """The run store the results name in ``source`` (a path or a URL, opened with
    ``storage_options``); None where they name none or it is not found."""
    source = None if results is None else results.attrs.get("source")
    if not isinstance(source, str) or not source:
        return None
    if Location.of(source).local is not None and not Path(source).exists():
        return None
    try:
        return open_run(source, storage_options=_for_url(source, storage_options))
    except OSError:  # no store there (StoreNotFoundError), or no access to it
        return None


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
    "density-epochs": (
        plot_density_epochs,
        "density of a 1-unit noisy layer at chosen epochs and over epochs (Fig. 4a, b; the run)",
    ),
    "activation-histograms": (
        plot_activation_histograms,
        "histograms of each layer's activations at chosen epochs (Fig. 10; needs the run)",
    ),
    "input-distances": (
        plot_input_distances,
        "within/between-class pairwise distances of the inputs (Fig. 8, input; needs the run)",
    ),
}
#: Figure functions that draw results of several runs themselves (one line per setting); every
#: other figure is given the runs' mean (:func:`ibframe.aggregate`).
_DRAWS_RUNS: typing.Final = frozenset({plot_mi_epochs})


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
    arrows: EpochSelection | None = None,
    storage_options: typing.Mapping[str, typing.Any] | None = None,
) -> list[Path]:
    """Draw figure kinds and write each as ``OUT_DIR/KIND.FORMAT``.

    Parameters
    ----------
    results
        A results Dataset, or the path of one written by :func:`ibframe.save_results`. Results
        of several runs: ``mi-epochs`` draws one line per setting that differs between the runs
        (beta, activation, ...), the seeds of a setting as their mean with a band of ± one sd;
        every other figure draws the mean over all the runs (:func:`ibframe.aggregate`).
    kinds
        Names from :data:`PLOT_KINDS`. ``None`` draws every kind the results hold the variables
        for (and, for ``scatter``, whose run has a layer of 2 or 3 units; for
        ``density-epochs``, a noisy layer of 1 unit), skipping each other
        kind with a :class:`PlotWarning` that says why, and raises only if there is none; a kind
        named explicitly that cannot be drawn raises
        :class:`~ibframe.errors.ResultConventionError`.
    out_dir
        Directory for the files, created if needed.
    formats
        Any of ``"png"``, ``"svg"``, ``"pdf"``.
    run
        The run store, for the kinds drawn from it (``scatter``, ``density-epochs``,
        ``activation-histograms``, ``input-distances``); default the results' ``source``,
        a path or a URL (opened with ``storage_options``: ``endpoint_url``, ``key``, ...).
    epochs
        Epoch numbers and ``slice(start, stop)`` ranges of the results' epochs
        (:func:`ibframe.engine.select_epochs`): figures over epochs draw only these, and figures
        at chosen epochs (``distance-histograms``, ``cosine-similarity``, ``scatter``,
        ``density-epochs``, ``activation-histograms``) draw each of them. Default: every epoch, and up to four chosen on a log scale.
    layers
        The layers every figure draws (default: each figure's own choice; ``scatter`` takes
        layers of 2 or 3 units).
    layer_names
        Names for the results' layers in every figure drawn from them (:func:`rename_layers`):
        ``"T"`` gives T1...TL as in the paper. ``layers`` may then use either name; figures
        drawn from the run store (``scatter``, ``density-epochs``, ``activation-histograms``,
        ``input-distances``) keep the run's layer names in their titles.
    arrows
        Epochs that ``mi-epochs`` marks with arrows (to match ``scatter`` panels at them).
    storage_options
        fsspec options for the results, the run and the results' ``source`` where they are URLs.

    Returns
    -------
    list of pathlib.Path
        The files written, kind by kind, format by format.
    """
    if not isinstance(results, xr.Dataset):
        from ibframe.results import load_results

        results = load_results(results, storage_options=_for_url(results, storage_options))
    unknown = [k for k in (kinds or []) if k not in PLOT_KINDS]
    if unknown:
        msg = f"unknown plot kind {unknown[0]!r}; known kinds: {', '.join(PLOT_KINDS)}"
        raise ParameterError(msg)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        msg = f"plot formats must be among {', '.join(FORMATS)}; got {list(formats)}"
        raise ParameterError(msg)
    run_names: dict[str, str] = {}  # a figure's layer name -> the run store's
    if layer_names is not None:
        original = [str(v) for v in results["layer"].values] if "layer" in results.coords else []
        results = rename_layers(results, layer_names)
        run_names = dict(zip(map(str, results["layer"].values), original, strict=True))
    chosen = None
    if epochs is not None:
        if "epoch" not in results.coords:
            msg = "epochs were asked for, but the results have no epoch coordinate"
            raise ResultConventionError(msg)
        chosen = select_epochs(results["epoch"].values, epochs, "the results")
        results = results.sel(epoch=chosen)
    # several runs: mi-epochs draws one line per setting, every other figure their mean (and band)
    mean = results
    if "run" in results.dims:
        from ibframe.runs import aggregate

        mean = aggregate(results, over="run")
    if run is not None and not isinstance(run, Run):
        run = open_run(run, storage_options=_for_url(run, storage_options))
    named = _named_run(results, storage_options) if run is None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    for kind in kinds if kinds is not None else list(PLOT_KINDS):
        function = PLOT_KINDS[kind][0]
        accepted = inspect.signature(function).parameters
        takes_run = "run" in accepted
        options: dict[str, typing.Any] = {"run": run or named} if takes_run else {}
        if chosen is not None and "epochs" in accepted:
            options["epochs"] = chosen
        if layers is not None and "layers" in accepted:
            # figures drawn from the run store select its own layer names; the others, the
            # results' (renamed) ones; either name is accepted for either kind
            if takes_run:
                options["layers"] = [run_names.get(name, name) for name in layers]
            else:
                shown = {old: new for new, old in run_names.items()}
                options["layers"] = [shown.get(name, name) for name in layers]
        if arrows is not None and "arrows" in accepted:
            options["arrows"] = arrows
        if "n_inputs" in accepted and named is not None:
            options["n_inputs"] = named.n_samples
        lost = takes_run and run is None and named is None and kinds is None
        try:
            if lost and results.attrs.get("source"):
                msg = (
                    f"the run store {results.attrs['source']} named by the results was not "
                    "found; pass the run (run=PATH, or ibframe plot --run PATH)"
                )
                raise ResultConventionError(msg)
            fig = function(results if function in _DRAWS_RUNS else mean, **options)
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
