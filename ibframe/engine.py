"""The engine: plan (estimator, layer, epoch) tasks, compute them in one Dask graph, assemble.

Results are cached in the run store under ``results/<estimator>/<key>/<layer>``, where the key
hashes the estimator's name, version, result-defining parameters and layer context. Asking again
returns the cached result; asking for more epochs computes only the new ones.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from ibframe.errors import (
    EstimatorRequirementError,
    IbframeWarning,
    ParameterError,
    ResultConventionError,
    StoreError,
)
from ibframe.estimator import Estimator, params_json
from ibframe.plugins import estimator_registry, plugin_version
from ibframe.store import Run, open_run

#: ``progress(done, total)``, called as tasks finish.
ProgressCallback = Callable[[int, int], None]


class CacheWarning(IbframeWarning):
    """Results could not be cached in the run store (read-only, say); they were still computed."""


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into ``"cuda"`` when a GPU is visible, else ``"cpu"``; check the rest."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if device != "cpu" and not torch.cuda.is_available():
            msg = f"device {device!r} was asked for, but torch sees no CUDA device"
            raise ParameterError(msg)
        if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
            msg = f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)"
            raise ParameterError(msg)
        return device
    msg = f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
    raise ParameterError(msg)


def build_estimators(
    estimators: Sequence[str | Estimator] | Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Estimator]:
    """Instances from names (with ``params[name]``), a {name: params} mapping, or instances."""
    params = dict(params or {})
    if isinstance(estimators, Mapping):
        params = {**{k: dict(v) for k, v in estimators.items()}, **params}
        estimators = list(estimators)
    if isinstance(estimators, str):
        estimators = [estimators]
    if not estimators:
        msg = "no estimator asked for; `ibframe estimators` lists them"
        raise ParameterError(msg)
    registry = estimator_registry()
    names = [e if isinstance(e, str) else e.name for e in estimators]
    stray = sorted(set(params) - set(names))
    if stray:
        msg = f"parameters given for {stray[0]!r}, which is not among the estimators asked for"
        raise ParameterError(msg)
    if len(set(names)) != len(names):
        msg = f"an estimator is named twice in {names}"
        raise ParameterError(msg)
    return [
        e if isinstance(e, Estimator) else registry.get(e).from_params(params.get(e))
        for e in estimators
    ]


def cache_key(estimator: Estimator, context: Mapping[str, Any]) -> str:
    """The hash that names an estimator's cached results for one layer."""
    payload = params_json(
        {
            "estimator": estimator.name,
            "version": estimator.version,
            "params": estimator.cache_params(),
            "context": context,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _compute_block(
    path: str, estimator: Estimator, layer: str, epoch: int, device: str, context: dict[str, Any]
) -> xr.Dataset:
    run = open_run(path)
    result = estimator.compute(run.block(layer, epoch, device=device, context=context))
    if not isinstance(result, xr.Dataset):
        msg = f"{estimator.name}.compute returned {type(result).__name__}, not an xarray.Dataset"
        raise ResultConventionError(msg)
    clash = {"epoch", "layer"} & set(result.dims)
    if clash:
        msg = f"{estimator.name}.compute returned dims {sorted(clash)}; the engine adds those"
        raise ResultConventionError(msg)
    return result.expand_dims(epoch=[int(epoch)]).load()


class _Job(typing.NamedTuple):
    estimator: Estimator
    layer: str
    context: dict[str, Any]
    group: str
    cached: xr.Dataset | None
    missing: list[int]


def estimate(
    run: Run | str | os.PathLike[str],
    estimators: Sequence[str | Estimator] | Mapping[str, Mapping[str, Any]],
    *,
    layers: Sequence[str] | None = None,
    epochs: Sequence[int] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    cache: bool = True,
    progress: ProgressCallback | None = None,
) -> xr.Dataset:
    """Run estimators on a run store and return their results as one labelled Dataset.

    Parameters
    ----------
    run
        A :class:`Run` or the path of a run store.
    estimators
        Registered names (``["sp-mi", "binned-entropy"]``), a ``{name: params}`` mapping, or
        estimator instances.
    layers, epochs
        What to estimate on; default every layer and every committed epoch.
    params
        ``{estimator name: {parameter: value}}``; strings are coerced to the declared types.
    scheduler
        None for Dask's local threaded scheduler, ``"synchronous"``/``"threads"``/``"processes"``,
        or the address of a dask.distributed scheduler (``"tcp://host:8786"``).
    device
        ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; tasks on a GPU
        carry a ``GPU`` resource annotation for dask.distributed.
    cache
        Read and write cached results in the run store.
    progress
        Called as ``progress(done, total)`` while tasks finish.

    Returns
    -------
    xarray.Dataset
        Dims ``epoch`` and ``layer`` (plus estimator-specific ones), the estimators' variables
        with ``long_name``, ``units``, ``estimator``, ``estimator_params``, ``estimator_version``
        attributes, and the run's metrics over the same epochs.
    """
    run = run if isinstance(run, Run) else open_run(Path(run))
    _check_scheduler(scheduler)
    instances = build_estimators(estimators, params)
    device = resolve_device(device)
    layer_names = _select_layers(run, layers)
    epoch_values = _select_epochs(run, epochs)
    for est in instances:
        _check(est, run, layer_names, epoch_values)

    jobs = [
        _plan(run, est, layer, epoch_values, cache)
        for est in instances
        for layer in layer_names
    ]
    path = str(run.path)
    annotations = {"resources": {"GPU": 1}} if device.startswith("cuda") else {}
    tasks = []
    with dask.annotate(**annotations):
        for job in jobs:
            tasks.extend(
                dask.delayed(_compute_block, pure=False)(
                    path, job.estimator, job.layer, epoch, device, job.context
                )
                for epoch in job.missing
            )
    computed = iter(_compute(tasks, scheduler, progress))
    pieces: dict[str, list[xr.Dataset]] = {}
    for job in jobs:
        new = [next(computed) for _ in job.missing]
        layer_ds = _merge_cached(run, job, new, cache)
        layer_ds = layer_ds.sel(epoch=epoch_values)
        layer_ds = job.estimator.finalize_layer(layer_ds).expand_dims(layer=[job.layer])
        pieces.setdefault(job.estimator.name, []).append(layer_ds)

    merged = []
    for est in instances:
        ds = xr.concat(pieces[est.name], dim="layer", join="outer", combine_attrs="override")
        merged.append(_label(ds, est))
    result = _merge_estimators(merged)
    metrics = run.metrics()
    if metrics.data_vars:
        result = result.merge(metrics.sel(epoch=epoch_values))
    result = result.assign_coords(layer=np.asarray(layer_names, dtype=object))
    result = result.transpose("epoch", "layer", ...)
    from ibframe import __version__

    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    result.attrs = {
        "title": f"ibframe estimates for {run.path.name}",
        "source": str(run.path),
        "history": f"{stamp} ibframe.estimate({[e.name for e in instances]})",
        "ibframe_version": __version__,
        "beta": run.beta,
    }
    return result


_LOCAL_SCHEDULERS: typing.Final = ("threads", "synchronous", "sync", "processes")


def _check_scheduler(scheduler: str | None) -> None:
    if scheduler is None or scheduler in _LOCAL_SCHEDULERS or "://" in scheduler:
        return
    msg = (
        f"unknown scheduler {scheduler!r}: use threads, synchronous, processes, or the address "
        "of a dask.distributed scheduler such as tcp://host:8786"
    )
    raise ParameterError(msg)


def _select_layers(run: Run, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        return run.layers
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        msg = "no layer selected; leave layers out for all of them"
        raise ParameterError(msg)
    unknown = [name for name in layers if name not in run.layers]
    if unknown:
        msg = f"run {run.path} has no layer {unknown[0]!r} (its layers: {', '.join(run.layers)})"
        raise ParameterError(msg)
    return layers


def _select_epochs(run: Run, epochs: Sequence[int] | None) -> list[int]:
    committed = run.epochs.tolist()
    if not committed:
        msg = f"run {run.path} has no recorded epoch yet"
        raise StoreError(msg)
    if epochs is None:
        return committed
    wanted = sorted({int(e) for e in epochs})
    if not wanted:
        msg = "no epoch selected; leave epochs out for all of them"
        raise ParameterError(msg)
    unknown = [e for e in wanted if e not in set(committed)]
    if unknown:
        msg = (
            f"run {run.path} has no epoch {unknown[0]} "
            f"(recorded: {committed[0]}..{committed[-1]}, {len(committed)} epochs)"
        )
        raise ParameterError(msg)
    return wanted


def _check(est: Estimator, run: Run, layers: list[str], epochs: list[int]) -> None:
    est.check_run(run, layers)
    if est.needs_epochs and len(epochs) < 2:
        msg = f"{est.name} looks across epochs and needs at least two; got {len(epochs)}"
        raise EstimatorRequirementError(msg)


def _plan(run: Run, est: Estimator, layer: str, epochs: list[int], cache: bool) -> _Job:
    context = est.layer_context(run, layer)
    group = f"results/{est.name}/{cache_key(est, context)}/{layer}"
    cached = _read_cache(run, group) if cache else None
    done = set() if cached is None else set(cached["epoch"].values.tolist())
    return _Job(est, layer, context, group, cached, [e for e in epochs if e not in done])


def _read_cache(run: Run, group: str) -> xr.Dataset | None:
    if not (run.path / group / "zarr.json").exists():
        return None
    try:
        return xr.open_zarr(run.path, group=group, consolidated=False, zarr_format=3).load()
    except (OSError, ValueError, KeyError) as err:
        warnings.warn(f"ignoring unreadable cached results {group}: {err}", CacheWarning, stacklevel=3)
        return None


def _merge_cached(run: Run, job: _Job, new: list[xr.Dataset], cache: bool) -> xr.Dataset:
    fresh = xr.concat(new, dim="epoch", join="outer") if new else None
    if fresh is not None and cache:
        _write_cache(run, job.group, fresh, append=job.cached is not None)
    parts = [p for p in (job.cached, fresh) if p is not None]
    combined = parts[0] if len(parts) == 1 else xr.concat(parts, dim="epoch", join="outer")
    return combined.sortby("epoch")


def _write_cache(run: Run, group: str, ds: xr.Dataset, append: bool) -> None:
    try:
        with warnings.catch_warnings():
            # fixed-width string coordinates (e.g. pair="within") have no ratified v3 dtype yet
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            if append:
                ds.to_zarr(run.path, group=group, mode="a", append_dim="epoch",
                           consolidated=False, zarr_format=3)
            else:
                ds.to_zarr(run.path, group=group, mode="w", consolidated=False, zarr_format=3)
    except (OSError, ValueError) as err:
        warnings.warn(
            f"could not cache results in {run.path} ({err}); they were computed but not stored",
            CacheWarning,
            stacklevel=4,
        )


def _compute(
    tasks: list[Any], scheduler: str | None, progress: ProgressCallback | None
) -> list[xr.Dataset]:
    total = len(tasks)
    if progress is not None:
        progress(0, total)
    if not tasks:
        return []
    if scheduler is not None and "://" in scheduler:
        return _compute_distributed(tasks, scheduler, progress)
    from dask.callbacks import Callback

    class _Progress(Callback):  # type: ignore[misc]  # dask's Callback is untyped
        def __init__(self) -> None:
            super().__init__()
            self.done = 0

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if isinstance(result, xr.Dataset) and progress is not None:
                self.done += 1
                progress(self.done, total)

    with _Progress():
        return list(dask.compute(*tasks, scheduler=scheduler or "threads"))


def _compute_distributed(
    tasks: list[Any], address: str, progress: ProgressCallback | None
) -> list[xr.Dataset]:
    try:
        from distributed import Client, as_completed
    except ImportError as err:
        msg = "a scheduler address needs dask.distributed: pip install 'ibframe[distributed]'"
        raise ParameterError(msg) from err
    try:
        client = Client(address, timeout="10s")
    except OSError as err:
        msg = f"could not reach the dask scheduler at {address}: {err}"
        raise ParameterError(msg) from err
    with client:
        futures = client.compute(tasks)
        for done, _ in enumerate(as_completed(futures), 1):
            if progress is not None:
                progress(done, len(futures))
        return list(client.gather(futures))


def _label(ds: xr.Dataset, est: Estimator) -> xr.Dataset:
    registry = estimator_registry()
    plugin = registry.plugin_of(est.name) if est.name in registry else "?"
    provenance = {
        "estimator": est.name,
        "estimator_params": params_json(est.params()),
        "estimator_version": est.version,
        "estimator_plugin": f"{plugin} {plugin_version(plugin)}",
    }
    for name, var in ds.data_vars.items():
        for required in ("long_name", "units"):
            if required not in var.attrs:
                msg = f"{est.name}: result variable {name!r} has no {required!r} attribute"
                raise ResultConventionError(msg)
        var.attrs.update(provenance)
    return ds


def _merge_estimators(datasets: list[xr.Dataset]) -> xr.Dataset:
    seen: dict[str, str] = {}
    for ds in datasets:
        for name, var in ds.data_vars.items():
            if name in seen:
                msg = (
                    f"estimators {seen[name]!r} and {var.attrs['estimator']!r} both return a "
                    f"variable {name!r}; ask for them in separate calls"
                )
                raise ResultConventionError(msg)
            seen[str(name)] = var.attrs["estimator"]
    return xr.merge(datasets, join="outer", combine_attrs="override")


__all__ = ["build_estimators", "cache_key", "estimate"]
