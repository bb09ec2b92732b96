"""Several runs at once: resolve paths and globs, stack per-run results along ``run``, aggregate.

A single run store gives a result without a ``run`` dimension, as it always did. A list of runs
(or a glob string such as ``"runs/seed-*.zarr"``) gives one Dataset with a ``run`` dimension, whose
coordinates say what each run was (:func:`run_coords`): its ``seed``, ``beta``, ``experiment`` and
``dataset``, and every training setting that differs between the runs (``activation``,
``orthonormal``, ``lr``, ...). ``seed``, ``beta`` and ``experiment`` are indexed, so one selection
picks runs out::

    ds = ibframe.estimate("runs/*.zarr", ["sp-mi"])     # dims (run, epoch, layer)
    ds.sel(beta=0.1)                                     # the runs at beta 0.1
    ibframe.aggregate(ds)                                # mean and sd over the runs
    ibframe.aggregate(ds, by="beta")                     # ... per beta: dims (beta, epoch, layer)

:func:`aggregate` reduces over runs: the central value keeps the variable's name (the mean, or the
median) and the spread is a variable beside it (``NAME_sd``, or ``NAME_low`` and ``NAME_high``),
so everything that reads a single run's results (the summary table, the figures) reads an
aggregate too.
"""

from __future__ import annotations

import glob
import json
import os
import typing
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from ibframe.errors import IbframeWarning, ParameterError
from ibframe.results import index_runs
from ibframe.store import Run, open_run
from ibframe.store.location import Location

#: One run (a :class:`Run`, a path or a URL), a list of them, or a glob string.
RunsLike = Run | str | os.PathLike[str] | Sequence[Run | str | os.PathLike[str]]
#: A run as resolved: open, a local path, or a URL (kept as given: ``Path`` would fold ``//``).
Resolved = Run | Path | str

#: Coordinates every multi-run result has along ``run`` (those indexed: results.RUN_INDEXES).
RUN_COORDS: typing.Final = ("seed", "beta", "experiment", "dataset")

_GLOB_CHARS: typing.Final = frozenset("*?[")


class RunsDifferWarning(IbframeWarning):
    """Runs stacked along ``run`` differ in their epochs or layers: the result is their union."""


def is_glob(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a glob pattern (has ``*``, ``?`` or ``[``) rather than a store's path
    (a local path that exists is a path, whatever its name)."""
    text = os.fspath(path)
    return bool(_GLOB_CHARS & set(text)) and (_is_url(text) or not Path(text).exists())


def _is_url(text: str) -> bool:
    """Whether ``text`` names object storage, by the stores' own rule (:meth:`Location.of`)."""
    return Location.of(text).local is None


def _one(where: str | os.PathLike[str]) -> Path | str:
    text = os.fspath(where)
    return text if isinstance(where, str) and _is_url(text) else Path(text)


def _matches(pattern: str, storage_options: Mapping[str, Any] | None) -> list[Path | str]:
    """The stores a glob names, sorted: local files, or objects through fsspec for a URL."""
    if not _is_url(pattern):
        return [Path(m) for m in sorted(glob.glob(pattern))]
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern, **dict(storage_options or {}))
    return [fs.unstrip_protocol(m) for m in sorted(fs.glob(path))]


def resolve_runs(
    runs: RunsLike, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[Resolved], bool]:
    """The runs named by ``runs``, and whether they are "several" (a list or a glob).

    A list, or a glob string, gives several runs even when it holds or matches one, so that the
    shape of a result depends on how runs were asked for, never on how many there happen to be.
    A glob matches in sorted order, on object storage too (``s3://bucket/runs/seed-*.zarr``,
    through fsspec with ``storage_options``); one that matches nothing, or an empty list, is a
    :class:`~ibframe.errors.ParameterError`. URLs stay strings.
    """
    if isinstance(runs, Run):
        return [runs], False
    if isinstance(runs, str | os.PathLike):
        if not is_glob(runs):
            return [_one(runs)], False
        pattern = os.fspath(runs)
        matches = _matches(pattern, storage_options)
        if not matches:
            msg = f"no run store matches {pattern!r}"
            raise ParameterError(msg)
        return matches, True
    items = list(runs)
    if not items:
        msg = "no run given: pass a run store's path, a list of them, or a glob such as 'runs/*.zarr'"
        raise ParameterError(msg)
    resolved: list[Resolved] = []
    for item in items:
        if isinstance(item, Run):
            resolved.append(item)
        elif isinstance(item, str | os.PathLike) and is_glob(item):
            resolved.extend(resolve_runs(item, storage_options)[0])
        elif isinstance(item, str | os.PathLike):
            resolved.append(_one(item))
        else:
            msg = f"a run is a Run or a path, got {type(item).__name__}"
            raise ParameterError(msg)
    names = [run_name(r) for r in resolved]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        msg = f"run {twice[0]} is given twice"
        raise ParameterError(msg)
    return resolved, True


def run_name(run: Resolved) -> str:
    """The value of the ``run`` coordinate: the store's path or URL as given."""
    where = run.path if isinstance(run, Run) else run
    return where if isinstance(where, str) else where.as_posix()


def _open(run: Resolved, storage_options: Mapping[str, Any] | None) -> Run:
    if isinstance(run, Run):
        return run
    return open_run(run, storage_options=storage_options if isinstance(run, str) else None)


def run_coords(runs: Sequence[Run]) -> dict[str, tuple[str, Any]]:
    """Coordinates along ``run`` for the stores ``runs``, from their root attributes.

    ``seed`` (int; -1 where a store records none), ``beta`` (float), ``experiment`` and
    ``dataset`` (str; "" where a store records none), then each setting of the ``training``
    attribute (:class:`ibframe.recording.spec.TrainSettings`) whose value differs between the
    runs, named as the setting (``activation``, ``orthonormal``, ``lr``, ...); a setting that is
    None in some runs is NaN there when numeric, else every value is written as text.
    """
    coords: dict[str, tuple[str, Any]] = {
        "seed": ("run", np.array([_seed(r) for r in runs], dtype=np.int64)),
        "beta": ("run", np.array([r.beta for r in runs], dtype=np.float64)),
        "experiment": ("run", np.array([str(r.attrs.get("experiment") or "") for r in runs])),
        "dataset": ("run", np.array([str(r.attrs.get("dataset") or "") for r in runs])),
    }
    trainings = [r.attrs.get("training") or {} for r in runs]
    keys = dict.fromkeys(k for t in trainings for k in t)
    for key in keys:
        if key in coords or key == "seed":
            continue
        values = [t.get(key) for t in trainings]
        if all(json.dumps(v, sort_keys=True) == json.dumps(values[0], sort_keys=True)
               for v in values):
            continue
        coords[key] = ("run", _column(values))
    return coords


def _seed(run: Run) -> int:
    seed = run.attrs.get("seed")
    return -1 if seed is None else int(seed)


def _column(values: list[Any]) -> np.ndarray:
    """One coordinate's values: numbers (None as NaN) when they all are, else text."""
    numbers = [v for v in values if v is not None]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
        return np.array([np.nan if v is None else float(v) for v in values])
    return np.array(["" if v is None else str(v) for v in values])


def stack_runs(
    results: Sequence[xr.Dataset], runs: Sequence[Resolved], stores: Sequence[Run]
) -> xr.Dataset:
    """One Dataset with a ``run`` dimension from per-run results, with :func:`run_coords`.

    Runs that differ in their epochs or layers are joined on the union (NaN where a run has no
    value), with one :class:`RunsDifferWarning` saying how they differ.
    """
    names = [run_name(r) for r in runs]
    union: dict[str, list[Any]] = {}
    differ = ""
    for key, what in (("epoch", "epochs"), ("layer", "layers")):
        if not all(key in ds.coords for ds in results):
            continue
        own = [ds[key].values.tolist() for ds in results]
        union[key] = sorted({v for values in own for v in values}) if key == "epoch" else list(
            dict.fromkeys(v for values in own for v in values))
        odd = next((i for i, values in enumerate(own) if values != union[key]), None)
        if odd is not None and not differ:
            differ = f"{what} ({names[odd]} has {len(own[odd])} of {len(union[key])})"
    if differ:
        warnings.warn(
            f"the runs differ in their {differ}; the result holds the union of epochs and "
            "layers, NaN where a run has no value",
            RunsDifferWarning,
            stacklevel=3,
        )
    if "layer" in union:
        union["layer"] = np.asarray(union["layer"], dtype=object)
    aligned = [ds.reindex(union) for ds in results]
    stacked = xr.concat(
        aligned, dim="run", data_vars="all", coords="minimal", compat="override",
        join="outer", combine_attrs="drop_conflicts",
    )
    stacked = stacked.assign_coords(run=np.asarray(names, dtype=object), **run_coords(stores))
    stacked = stacked.transpose("run", ...)
    stacked = index_runs(stacked)
    stacked.attrs.pop("source", None)
    stacked.attrs.pop("beta", None)
    stacked.attrs["title"] = f"ibframe results of {len(names)} runs"
    stacked.attrs["sources"] = "\n".join(
        s.path if isinstance(s.path, str) else str(s.path.absolute()) for s in stores
    )
    return stacked


def each_run(
    runs: RunsLike,
    compute: Callable[[Run], xr.Dataset],
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """``compute`` on each run; the single result as it is, or several stacked along ``run``.
    ``storage_options`` open (and glob) the runs given by URL."""
    resolved, several = resolve_runs(runs, storage_options)
    stores = [_open(r, storage_options) for r in resolved]
    results = [compute(store) for store in stores]
    if not several:
        return results[0]
    return stack_runs(results, resolved, stores)


def run_metrics(runs: RunsLike, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The recorded metrics (``loss_train``, ``accuracy_test``, ...) of one run or of several.

    One run gives :meth:`Run.metrics` (dim ``epoch``); several (a list or a glob) give dims
    (``run``, ``epoch``) with the coordinates of :func:`run_coords`, so test errors over seeds are::

        m = ibframe.run_metrics("runs/seed-*.zarr")
        error = 1 - m["accuracy_test"].isel(epoch=-1)      # per run
        float(error.mean()), float(error.std(ddof=1))
    """
    return each_run(runs, lambda run: run.metrics(), storage_options)


# -- aggregation ----------------------------------------------------------------------------------


def aggregate(
    ds: xr.Dataset,
    over: str = "run",
    kind: Literal["sd", "quantile"] = "sd",
    *,
    quantiles: tuple[float, float] = (0.1, 0.9),
    by: str | None = None,
) -> xr.Dataset:
    """Mean and spread of every variable over ``over`` (default: the runs).

    ``kind="sd"``: each numeric variable with the dimension ``over`` becomes its mean over it
    (NaN skipped), under its own name, with ``NAME_sd`` beside it: the sample standard deviation
    (ddof=1; NaN where fewer than two values). ``kind="quantile"``: the median, with
    ``NAME_low`` and ``NAME_high`` at ``quantiles``. Spread variables have role ``spread`` and
    the units of their variable.

    Standard errors (``NAME_stderr``, the Monte Carlo error of each run's estimate) are not
    averaged: with ``kind="sd"`` they become the standard error of the mean's Monte Carlo part,
    sqrt(sum of squares) / n, which says how much of ``NAME_sd`` the estimator's own noise could
    explain; with ``kind="quantile"`` they are dropped (a median has no such simple error).
    Spreads are given for estimates and their components (role ``estimate``, ``component``, or
    none, as the run's metrics); diagnostics (role ``diagnostic``, such as ``NAME_bias`` and the
    sample sizes) get their mean alone: the bias of a mean is the mean bias. Quality flags (role
    ``quality``, such as ``converged``, True when fine) are true only where they are true in every
    run; other flags (``saturated``) are true where they are true in any.
    Coordinates along ``over`` (``seed``, ``beta``, ...) are dropped, except ``by``: with
    ``by="beta"`` the runs are grouped by their beta and aggregated per group, giving a
    ``beta`` dimension, named in the attribute ``grouped_by`` (the figures draw one line per
    group).
    """
    if over not in ds.dims:
        msg = f"cannot aggregate over {over!r}: the dataset's dims are {', '.join(map(str, ds.dims))}"
        raise ParameterError(msg)
    if kind not in ("sd", "quantile"):
        msg = f"kind must be 'sd' or 'quantile', got {kind!r}"
        raise ParameterError(msg)
    low, high = quantiles
    if not 0 <= low < high <= 1:
        msg = f"quantiles must be two numbers 0 <= low < high <= 1, got {quantiles}"
        raise ParameterError(msg)
    if by is not None:
        if by not in ds.coords or ds[by].dims != (over,):
            msg = f"cannot group by {by!r}: it is not a coordinate along {over!r}"
            raise ParameterError(msg)
        plain = ds.drop_indexes([n for n in ds.xindexes if n != over and ds[n].dims == (over,)])
        grouped = plain.groupby(by).map(
            lambda group: aggregate(group, over, kind, quantiles=quantiles)
        )
        sizes = sorted({group.sizes[over] for _, group in plain.groupby(by)})
        count_text = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        how = "mean ± sd" if kind == "sd" else f"median, {low:g}-{high:g} quantiles"
        grouped.attrs["aggregate"] = f"{how} over {count_text} {over}s per {by}"
        grouped.attrs["grouped_by"] = by
        return grouped
    out = xr.Dataset(attrs=dict(ds.attrs))
    count = ds.sizes[over]
    for name, var in ds.data_vars.items():
        if over not in var.dims:
            out[name] = var
            continue
        role = var.attrs.get("role")
        base = str(name)
        if role == "stderr" or (base.endswith("_stderr") and base[:-7] in ds.data_vars):
            if kind == "sd":
                valid = var.notnull().sum(over)
                out[name] = (np.sqrt((var**2).sum(over)) / valid).where(valid > 0)
                out[name].attrs = {**var.attrs, "aggregate": f"MC standard error of the mean over {over}"}
            continue
        if var.dtype.kind == "b" or role == "quality":
            flags = var.astype(bool)
            out[name] = flags.all(over) if role == "quality" else flags.any(over)
            out[name].attrs = dict(var.attrs)
            continue
        if var.dtype.kind not in "iuf":
            continue  # text or times: no mean
        values = var.astype(np.float64)
        if role not in (None, "estimate", "component"):  # diagnostics, biases: the mean alone
            out[name] = values.mean(over, skipna=True)
            out[name].attrs = {**var.attrs, "aggregate": f"mean over {count} {over}s"}
            continue
        if kind == "sd":
            centre = values.mean(over, skipna=True)
            spread = {f"{name}_sd": (values.std(over, ddof=1, skipna=True), "sd")}
            how = "mean"
        else:
            centre = values.median(over, skipna=True)
            bounds = values.quantile([low, high], dim=over, skipna=True).drop_vars("quantile")
            spread = {
                f"{name}_low": (bounds.isel(quantile=0), f"{low:g} quantile"),
                f"{name}_high": (bounds.isel(quantile=1), f"{high:g} quantile"),
            }
            how = "median"
        out[name] = centre
        out[name].attrs = {**var.attrs, "aggregate": f"{how} over {count} {over}s"}
        for spread_name, (data, what) in spread.items():
            out[spread_name] = data
            out[spread_name].attrs = {
                **{k: v for k, v in var.attrs.items() if k != "role"},
                "long_name": f"{var.attrs.get('long_name', name)} ({what} over {over}s)",
                "role": "spread",
            }
    dropped = [n for n in out.coords if over in out[n].dims]
    out = out.drop_vars(dropped)
    out.attrs["aggregate"] = (
        f"{'mean ± sd' if kind == 'sd' else f'median, {low:g}-{high:g} quantiles'} "
        f"over {count} {over}s"
    )
    return out


def spread_band(
    ds: xr.Dataset, name: Hashable
) -> tuple[xr.DataArray, xr.DataArray, str] | None:
    """The band an aggregate holds around ``name`` (low, high, what it is), or None."""
    if f"{name}_sd" in ds.data_vars:
        sd = ds[f"{name}_sd"].fillna(0)
        return ds[name] - sd, ds[name] + sd, "± sd"
    if f"{name}_low" in ds.data_vars and f"{name}_high" in ds.data_vars:
        return ds[f"{name}_low"], ds[f"{name}_high"], "quantiles"
    return None


__all__ = [
    "RunsDifferWarning",
    "RunsLike",
    "aggregate",
    "each_run",
    "resolve_runs",
    "run_coords",
    "run_metrics",
    "run_name",
    "stack_runs",
]
