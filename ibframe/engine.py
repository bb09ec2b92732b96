"""The engine: plan (estimator, layer, epoch) tasks, compute them in one Dask graph, assemble.

Results are cached in the run store under ``results/<estimator>/<key>/<layer>``, where the key
hashes the estimator's name, version, result-defining parameters and layer context
(:mod:`ibframe.cache`). Asking again returns the cached result; asking for more epochs computes
only the new ones. Each task's result is cached as soon as it comes back, in the calling
process, so an interrupted or partly failed estimate resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import math
import os
import typing
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr
import zarr

from ibframe.block import Block
from ibframe.cache import CacheEntry, CacheWarning, Structure, check_storable
from ibframe.errors import (
    EstimationFailed,
    EstimatorRequirementError,
    IbframeWarning,
    ParameterError,
    QualityWarning,
    ResultConventionError,
    StoreError,
    TaskFailure,
)
from ibframe.estimator import Estimator, params_json
from ibframe.plugins import estimator_registry, plugin_version
from ibframe.runs import RunsLike, each_run, is_glob, run_name
from ibframe.store import Run, open_run
from ibframe.store.location import Location, storage_error

#: ``progress(done, total)``, called as tasks finish; ``progress(0, 0)`` when all was cached.
ProgressCallback = Callable[[int, int], None]
#: ``epochs=``: epoch numbers and ``slice(start, stop)`` ranges of recorded epochs (:func:`select_epochs`).
EpochSelection = Sequence[int | slice] | slice


class EstimationWarning(IbframeWarning):
    """A task failed and ``errors="warn"`` was asked for: its results are missing (NaN)."""


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


def _resolve_for(device: str, scheduler: str | None) -> str:
    """The device of the tasks. On a dask.distributed cluster a CUDA device is the GPU workers'
    to have, so a client without a GPU may ask for one; ``"auto"`` is resolved here."""
    on_cluster = scheduler is not None and "://" in scheduler
    if on_cluster and (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        return device
    return resolve_device(device)


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


@dataclasses.dataclass(frozen=True)
class _Failed:
    """What a task returns instead of raising: the error as one line (picklable for workers)."""

    error: str


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@dataclasses.dataclass(frozen=True)
class _BlockTask:
    """Which block a task reads and estimates, and on which device: all a worker needs."""

    location: Location
    estimator: Estimator
    layer: str
    epoch: int
    device: str
    context: dict[str, Any]

    def block(self) -> Block:
        """Open the store (by path or URL, wherever this runs) and read the block."""
        return open_run(self.location).block(self.layer, self.epoch, device=self.device,
                                             context=self.context)

    def checked(self, result: Any) -> xr.Dataset:
        """The estimator's result, its conventions checked, with its ``epoch``."""
        _check_result(result, self.estimator)
        return result.expand_dims(epoch=[int(self.epoch)]).load()


def _compute_block(task: _BlockTask) -> xr.Dataset | _Failed:
    """One task: read the block from the run store, estimate, check the result's conventions.

    Errors come back as :class:`_Failed` so that one failing task never stops the others.
    """
    try:
        return task.checked(task.estimator.compute(task.block()))
    except Exception as err:  # noqa: BLE001 - reported as a TaskFailure; the others go on
        return _Failed(_one_line(err))


def _compute_part(task: _BlockTask, stage: int, part: int, parts: int, carry: Any) -> Any:
    """One part of a split task's stage (:meth:`Estimator.compute_part`), on its own copy of
    the block; a failure upstream passes through."""
    if isinstance(carry, _Failed):
        return carry
    try:
        return task.estimator.compute_part(task.block(), stage, part, parts, carry)
    except Exception as err:  # noqa: BLE001 - reported as a TaskFailure; the others go on
        return _Failed(_one_line(err))


def _combine_parts(estimator: Estimator, stage: int, results: list[Any], carry: Any) -> Any:
    """A split task's stage put together (:meth:`Estimator.combine_parts`); the first failure
    among its inputs passes through."""
    failed = [r for r in [carry, *results] if isinstance(r, _Failed)]
    if failed:
        return failed[0]
    try:
        return estimator.combine_parts(stage, results, carry)
    except Exception as err:  # noqa: BLE001 - reported as a TaskFailure; the others go on
        return _Failed(_one_line(err))


def _finish_block(task: _BlockTask, carry: Any) -> xr.Dataset | _Failed:
    """The result of a split task from its last stage (:meth:`Estimator.finish`)."""
    if isinstance(carry, _Failed):
        return carry
    try:
        return task.checked(task.estimator.finish(task.block(), carry))
    except Exception as err:  # noqa: BLE001 - reported as a TaskFailure; the others go on
        return _Failed(_one_line(err))


def _check_result(result: Any, estimator: Estimator) -> None:
    if not isinstance(result, xr.Dataset):
        msg = f"{estimator.name}.compute returned {type(result).__name__}, not an xarray.Dataset"
        raise ResultConventionError(msg)
    clash = {"epoch", "layer"} & set(result.dims)
    if clash:
        msg = f"{estimator.name}.compute returned dims {sorted(clash)}; the engine adds those"
        raise ResultConventionError(msg)
    for name, var in result.data_vars.items():
        for required in ("long_name", "units"):
            if required not in var.attrs:
                msg = f"{estimator.name}: result variable {name!r} has no {required!r} attribute"
                raise ResultConventionError(msg)
    check_storable(result)


@dataclasses.dataclass
class _Job:
    """One (estimator, layer): what the cache holds, what is missing, what came back."""

    estimator: Estimator
    layer: str
    context: dict[str, Any]
    entry: CacheEntry | None
    cached: xr.Dataset | None
    missing: list[int]
    structure: Structure | None
    fresh: dict[int, xr.Dataset] = dataclasses.field(default_factory=dict)
    failed: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Task:
    job: _Job
    epoch: int
    parts: int = 1
    """Parts each stage of a splittable estimator runs in (1: one task computes it all)."""


def estimate(
    run: Run | str | os.PathLike[str] | Location | Sequence[Run | str | os.PathLike[str]],
    estimators: Sequence[str | Estimator] | Mapping[str, Mapping[str, Any]],
    *,
    layers: Sequence[str] | None = None,
    epochs: EpochSelection | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    cache: bool = True,
    progress: ProgressCallback | Literal[False] | None = None,
    errors: Literal["raise", "warn"] = "raise",
    storage_options: Mapping[str, Any] | None = None,
    split: int | None = None,
) -> xr.Dataset:
    """Run estimators on a run store and return their results as one labelled Dataset.

    Parameters
    ----------
    run
        A :class:`Run`, or the path or URL (``s3://bucket/prefix/run.zarr``) of a run store; or
        several runs, as a list of them or a glob string (``"runs/seed-*.zarr"``), which gives a
        ``run`` dimension (docs/results.md, "Several runs"; :func:`estimate_runs`).
    estimators
        Registered names (``["sp-mi", "binned-entropy"]``), a ``{name: params}`` mapping, or
        estimator instances.
    layers, epochs
        What to estimate on; default every layer and every committed epoch. ``epochs`` lists
        epoch numbers (each must be recorded) and ``slice(start, stop)`` ranges, which pick the
        recorded epochs ``start <= e < stop`` (``slice(1, None)``: all from epoch 1 on).
    params
        ``{estimator name: {parameter: value}}``; strings are coerced to the declared types, and
        a single value is accepted where a list is declared.
    scheduler
        None for Dask's local threaded scheduler, ``"synchronous"``/``"threads"``/``"processes"``,
        or the address of a dask.distributed scheduler (``"tcp://host:8786"``), which is
        connected to first, even when everything is cached, so an unreachable one is an error.
    device
        ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; tasks on a GPU
        carry a ``GPU`` resource annotation for dask.distributed.
    cache
        Read and write cached results in the run store. Each task's result is cached as it
        comes back, so an interrupted or failed call resumes where it stopped.
    progress
        Called as ``progress(done, total)`` while tasks finish, first as ``progress(0, total)``;
        ``progress(0, 0)`` means everything was read from the cache. None or False: silent.
    errors
        What to do when tasks raise. Every task runs either way; those that succeed are cached
        and assembled, the failed (layer, epoch) cells are NaN. ``"raise"`` (default) then
        raises :class:`~ibframe.errors.EstimationFailed` carrying ``.failures`` (one
        :class:`~ibframe.errors.TaskFailure` per failed task) and ``.result`` (the Dataset of
        what succeeded, or None); ``"warn"`` returns that Dataset with one
        :class:`EstimationWarning` per failure (and raises only if nothing succeeded).
    storage_options
        fsspec's options for a run store given by URL (``endpoint_url``, ``key``, ...). Tasks on
        dask.distributed workers open the store by URL with them, so workers need no shared disk.
    split
        Parts to split each (layer, epoch) task of a splittable estimator (``sp-mi``,
        ``distance-histogram``) into, so that one big block occupies several workers; the
        result is the same to float precision, and is cached under the same key. None (default):
        chosen from the tasks' estimated costs and the cluster's size on a dask.distributed
        cluster (docs/scaling.md), no split on the local schedulers; 1: never split.

    Returns
    -------
    xarray.Dataset
        Dims ``epoch`` and ``layer`` (plus estimator-specific ones; ``run`` first for several
        runs, with coordinates ``seed``, ``beta``, ``experiment``, ...), the estimators' variables
        with ``long_name``, ``units``, ``estimator``, ``estimator_params``, ``estimator_version``
        attributes, and the run's metrics over the same epochs.

    Raises
    ------
    ParameterError
        Before anything is computed: unknown estimators, parameters, layers or epochs, an
        unreachable scheduler, or work that cannot fit in memory.
    EstimationFailed
        After every task ran, when some failed (``errors="raise"``).
    KeyboardInterrupt
        Passed on once the tasks that finished are cached.
    """
    if errors not in ("raise", "warn"):
        msg = f"errors must be 'raise' or 'warn', got {errors!r}"
        raise ParameterError(msg)
    if not isinstance(run, Run | Location) and (
        not isinstance(run, str | os.PathLike) or is_glob(run)
    ):
        return estimate_runs(
            run, estimators, layers=layers, epochs=epochs, params=params, scheduler=scheduler,
            device=device, cache=cache, progress=progress, errors=errors, split=split,
            storage_options=storage_options,
        )
    report = progress or None
    run = run if isinstance(run, Run) else open_run(run, storage_options=storage_options)
    _check_scheduler(scheduler)
    if split is not None and (isinstance(split, bool) or not isinstance(split, int) or split < 1):
        msg = f"split must be a number of parts >= 1 (or None to choose), got {split!r}"
        raise ParameterError(msg)
    instances = build_estimators(estimators, params)
    device = _resolve_for(device, scheduler)
    layer_names = _select_layers(run, layers)
    epoch_values = _select_epochs(run, epochs)
    for est in instances:
        _check(est, run, layer_names, epoch_values)

    with _connect(scheduler) as client:
        _check_memory(instances, run, layer_names, device, client)
        store = _cache_store(run) if cache else None
        jobs = [
            _plan(run, est, layer, epoch_values, store)
            for est in instances
            for layer in layer_names
        ]
        parts = _split_parts(run, jobs, device, client, split)
        tasks = [_Task(job, epoch, parts[i]) for i, job in enumerate(jobs) for epoch in job.missing]
        failures = _run_tasks(run, tasks, device, client, scheduler, report)

    result = _assemble(run, instances, jobs, layer_names, epoch_values)
    if result is None or (failures and errors == "raise"):
        raise EstimationFailed(failures, result)
    for failure in failures:
        warnings.warn(str(failure), EstimationWarning, stacklevel=2)
    for message in quality_messages(result):
        warnings.warn(message, QualityWarning, stacklevel=2)
    return result


def estimate_runs(
    runs: RunsLike,
    estimators: Any,
    *,
    progress: Callable[[int, int], None] | Literal[False] | None = None,
    errors: Literal["raise", "warn"] = "raise",
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> xr.Dataset:
    """:func:`ibframe.estimate` on several runs, one after the other, stacked along ``run``.

    Each run's results are cached in its own store, so asking again computes nothing. Progress
    counts the tasks of every run planned so far (its total grows run by run);
    ``progress(0, 0)`` comes once, at the end, when every run was read from the cache. When
    tasks fail, the other runs still run; ``errors="raise"`` then raises one
    :class:`~ibframe.errors.EstimationFailed` whose failures name their run.
    """
    report = progress or None
    counted = [0, 0]  # tasks finished and planned in the runs before this one
    failures: list[TaskFailure] = []

    def compute(store: Run) -> xr.Dataset:
        before = list(counted)

        def relay(done: int, total: int) -> None:
            counted[:] = [before[0] + done, before[1] + total]
            if report is not None and total:
                report(*counted)

        where = run_name(store)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return estimate(store, estimators, progress=relay, errors="raise", **options)
        except EstimationFailed as failed:
            failures.extend(dataclasses.replace(f, run=where) for f in failed.failures)
            if failed.result is None:
                raise EstimationFailed(failures) from None
            return failed.result
        finally:
            for warning in caught:  # said again, naming the run
                warnings.warn(f"{where}: {warning.message}", warning.category, stacklevel=4)

    result = each_run(runs, compute, storage_options)
    if report is not None and counted[1] == 0:
        report(0, 0)
    if failures and errors == "raise":
        raise EstimationFailed(failures, result)
    for failure in failures:
        warnings.warn(str(failure), EstimationWarning, stacklevel=2)
    return result


def quality_messages(ds: xr.Dataset) -> list[str]:
    """One line per quality flag that is false somewhere, naming the layers and epochs.

    A quality flag is a boolean result variable with ``role="quality"`` (True: fine), such as
    ``sp-mi``'s ``converged``; its ``advice`` attribute says what to do about it.
    """
    lines = []
    for name, var in ds.data_vars.items():
        if var.attrs.get("role") != "quality" or not {"epoch", "layer"} <= set(var.dims):
            continue
        failed = (var == 0).any([d for d in var.dims if d not in ("epoch", "layer")])
        where = []
        for layer in failed["layer"].values:
            bad = failed.sel(layer=layer)
            epochs = bad["epoch"].values[bad.values.astype(bool)]
            if epochs.size == 0:
                continue
            total = int(np.isfinite(var.sel(layer=layer).astype(float)).sum())
            span = f"{epochs[0]}" if epochs.size == 1 else f"{epochs[0]}..{epochs[-1]}"
            count = f"all {total} epochs" if epochs.size == total else (
                f"{epochs.size} of {total} epochs ({span})")
            where.append(f"{layer} at {count}")
        if where:
            owner = var.attrs.get("estimator", "?")
            what = var.attrs.get("long_name", str(name))
            advice = var.attrs.get("advice")
            lines.append(f"{owner}: not {name} ({what}) for " + ", ".join(where)
                         + (f"; {advice}" if advice else ""))
    return lines


def _run_tasks(
    run: Run,
    tasks: list[_Task],
    device: str,
    client: Any,
    scheduler: str | None,
    report: ProgressCallback | None,
) -> list[TaskFailure]:
    """Compute the tasks; each result is checked and cached here, in this process, as it comes."""
    failures: list[TaskFailure] = []
    warned = False
    done = 0
    graph = _graph(run.location, tasks, device) if tasks else []

    def ticked() -> None:
        nonlocal done
        done += 1
        if report is not None:
            report(done, len(graph))

    def finished(task: _Task | None, outcome: Any) -> None:
        nonlocal warned
        if task is None:  # a part of a split task, or its combine step
            ticked()
            return
        job = task.job
        error = _accept(job, task.epoch, outcome)
        if error is not None:
            job.failed.append(task.epoch)
            failures.append(TaskFailure(job.estimator.name, job.layer, task.epoch, error))
        elif job.entry is not None:
            try:
                job.entry.write(job.fresh[task.epoch])
            except Exception as err:
                if storage_error(err, run.location) is None and not isinstance(
                    err, OSError | ValueError | TypeError | zarr.errors.BaseZarrError
                ):
                    raise
                job.entry = None  # this entry is not written again; the others still try
                if not warned:
                    warned = True
                    warnings.warn(
                        f"could not cache results in {run.path} ({_one_line(err)}); they are "
                        "computed but not stored",
                        CacheWarning,
                        stacklevel=2,
                    )
        ticked()

    if report is not None:
        report(0, len(graph))
    if graph:
        if client is not None:
            _compute_distributed(client, graph, finished)
        else:
            _compute_local(graph, scheduler, finished)
    # in the order of the tasks (estimator, layer, epoch), whatever order they finished in
    order = {(t.job.estimator.name, t.job.layer, t.epoch): i for i, t in enumerate(tasks)}
    return sorted(failures, key=lambda f: order[f.estimator, f.layer, f.epoch])


def _accept(job: _Job, epoch: int, outcome: Any) -> str | None:
    """Keep a task's result in its job; the error as one line if it failed or broke a rule."""
    if isinstance(outcome, _Failed):
        return outcome.error
    structure = Structure.of(outcome)
    if job.structure is None:
        job.structure = structure
    elif structure != job.structure:
        # every epoch kept so far has the job's structure
        seen = min([*job.fresh, *([] if job.cached is None else job.cached["epoch"].values)])
        what = (
            f"other coordinate values than at epoch {int(seen)}"
            if structure.variables == job.structure.variables
            else f"{structure.describe()}, where epoch {int(seen)} had {job.structure.describe()}"
        )
        msg = (
            f"{job.estimator.name} returned {what}; an estimator must return the same "
            "variables, dims and coordinates at every epoch (and bump its version when its "
            "results change)"
        )
        return _one_line(ResultConventionError(msg))
    job.fresh[epoch] = outcome
    return None


#: Every delayed call: (key, its task, value); the task is None for the parts of a split task
#: and their combine steps, which only count for progress.
_Graph = list[tuple[str, _Task | None, Any]]


def _graph(location: Location, tasks: list[_Task], device: str) -> _Graph:
    """The delayed calls of the tasks, under keys unique to this call (a cluster keeps old keys).

    A task in one part is one call. A split task is, per stage, its parts and a combine step
    that waits for them (and hands on to the next stage's parts), then a call that finishes
    it under the task's key.
    """
    token = uuid.uuid4().hex
    graph: _Graph = []
    for i, task in enumerate(tasks):
        key = f"ibframe-task-{token}-{i}"
        job = task.job
        where = _device_for(job.estimator, device)
        block = _BlockTask(location, job.estimator, job.layer, task.epoch, where, job.context)
        # only tasks that compute on a GPU wait for a worker with one
        gpu = {"resources": {"GPU": 1}} if where.startswith("cuda") else {}
        if task.parts == 1:
            with dask.annotate(**gpu):
                value = dask.delayed(_compute_block, pure=False)(block, dask_key_name=key)
            graph.append((key, task, value))
            continue
        carry: Any = None
        for stage in range(job.estimator.split_stages):
            with dask.annotate(**gpu):
                parts = [
                    dask.delayed(_compute_part, pure=False)(
                        block, stage, part, task.parts, carry, dask_key_name=f"{key}-{stage}-{part}"
                    )
                    for part in range(task.parts)
                ]
            carry = dask.delayed(_combine_parts, pure=False)(
                job.estimator, stage, parts, carry, dask_key_name=f"{key}-{stage}-combine"
            )
            graph.extend((value.key, None, value) for value in [*parts, carry])
        with dask.annotate(**gpu):
            value = dask.delayed(_finish_block, pure=False)(block, carry, dask_key_name=key)
        graph.append((key, task, value))
    return graph


#: The shortest part worth a task of its own on a cluster (estimated CPU seconds).
_MIN_PART_SECONDS: typing.Final = 2.0


def _split_parts(
    run: Run, jobs: list[_Job], device: str, client: Any, split: int | None
) -> list[int]:
    """Parts per task of each job: ``split`` for splittable estimators when given; otherwise,
    on a cluster, enough that no task runs much longer than an even share of all the work
    among the workers (parts of at least ``_MIN_PART_SECONDS``), and 1 on local schedulers,
    whose threads the kernels already use."""
    splittable = [job.estimator.split_stages > 0 for job in jobs]
    if split is not None:
        return [split if s else 1 for s in splittable]
    if client is None:
        return [1] * len(jobs)
    costs = [(job.estimator.cost_seconds(run, job.layer) or 0.0) if s else 0.0
             for job, s in zip(jobs, splittable, strict=True)]
    workers = client.scheduler_info().get("workers", {}).values()
    gpu = device.startswith("cuda")
    slots = sum(int(w.get("resources", {}).get("GPU", 0)) if gpu else int(w.get("nthreads", 1))
                for w in workers)
    return choose_parts(costs, [len(job.missing) for job in jobs], slots)


def choose_parts(costs: Sequence[float], tasks: Sequence[int], slots: int) -> list[int]:
    """Parts for the tasks of each job, given one task's estimated cost (seconds; 0 for
    tasks that cannot split), the job's number of tasks and the cluster's worker slots.

    A task longer than an even share of all the work (total / slots) would hold up the end
    while other slots idle: it is cut into about cost / share parts, at most one per slot,
    none shorter than ``_MIN_PART_SECONDS``.
    """
    total = sum(c * t for c, t in zip(costs, tasks, strict=True))
    if slots <= 1 or total <= 0:
        return [1] * len(costs)
    share = total / slots
    return [
        max(1, min(slots, math.ceil(cost / share), int(cost // _MIN_PART_SECONDS)))
        if cost > share else 1
        for cost in costs
    ]


def _device_for(estimator: Estimator, device: str) -> str:
    """The device of an estimator's tasks: ``device`` if it uses a GPU, else the CPU."""
    return device if estimator.uses_gpu else "cpu"


def _compute_local(
    graph: _Graph, scheduler: str | None, finished: Callable[[_Task, Any], None]
) -> None:
    from dask.callbacks import Callback

    by_key = {key: task for key, task, _ in graph}

    class _Finished(Callback):  # type: ignore[misc]  # dask's Callback is untyped
        # dask calls _posttask in the thread that runs the scheduler: the caller's.
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in by_key:
                finished(by_key[key], result)

    with _Finished():
        # the parts are computed as the tasks' inputs, and not kept once those are done
        finals = [value for _, task, value in graph if task is not None]
        dask.compute(*finals, scheduler=scheduler or "threads")


def _compute_distributed(
    client: Any, graph: _Graph, finished: Callable[[_Task, Any], None]
) -> None:
    from distributed import as_completed

    by_key = {key: task for key, task, _ in graph}
    # a future for every call, so that the parts of split tasks count for progress; each is
    # let go once seen, and only the tasks' results come back to this process
    done = as_completed(client.compute([value for _, _, value in graph]), loop=client.loop)
    for future in done:
        task = by_key[future.key]
        # the tasks return their own errors; these are the cluster's (a worker lost, say)
        if future.status == "error":
            outcome: Any = _Failed(_one_line(future.exception()))
        elif future.status == "cancelled":
            outcome = _Failed("CancelledError: dask.distributed cancelled the task")
        else:
            outcome = future.result() if task is not None else None
        finished(task, outcome)


_LOCAL_SCHEDULERS: typing.Final = ("threads", "synchronous", "sync", "processes")


def _check_scheduler(scheduler: str | None) -> None:
    if scheduler is None or scheduler in _LOCAL_SCHEDULERS or "://" in scheduler:
        return
    msg = (
        f"unknown scheduler {scheduler!r}: use threads, synchronous, processes, or the address "
        "of a dask.distributed scheduler such as tcp://host:8786"
    )
    raise ParameterError(msg)


@contextlib.contextmanager
def _connect(scheduler: str | None) -> Iterator[Any]:
    """A dask.distributed client for a scheduler address (None for the local schedulers).

    Connecting is the check that the address is right, so it happens even when nothing needs
    computing. The wait is dask's ``distributed.comm.timeouts.connect`` setting.
    """
    if scheduler is None or "://" not in scheduler:
        yield None
        return
    try:
        from distributed import Client
    except ImportError as err:
        msg = "a scheduler address needs dask.distributed: pip install 'ibframe[distributed]'"
        raise ParameterError(msg) from err
    try:
        client = Client(scheduler, set_as_default=False)
    except (OSError, ValueError) as err:
        msg = f"could not reach the dask scheduler at {scheduler}: {_one_line(err)}"
        raise ParameterError(msg) from err
    with client:
        yield client


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


def _select_epochs(run: Run, epochs: EpochSelection | None) -> list[int]:
    committed = run.epochs.tolist()
    if not committed:
        msg = f"run {run.path} has no recorded epoch yet"
        raise StoreError(msg)
    if epochs is None:
        return committed
    return select_epochs(committed, epochs, f"run {run.path}")


def select_epochs(recorded: Sequence[int], wanted: EpochSelection, where: str) -> list[int]:
    """The epochs ``wanted`` picks among ``recorded``, sorted, each once.

    An ``int`` must be recorded; a ``slice(start, stop)`` (no step) picks the recorded epochs
    ``start <= e < stop``, either end open when ``None``, so ``slice(1, None)`` is every
    recorded epoch from 1 on. ``where`` names the recorded epochs' owner in error messages.
    """
    values = sorted(int(e) for e in recorded)
    span = f"recorded: {values[0]}..{values[-1]}, {len(values)} epochs" if values else "none"
    chosen: set[int] = set()
    for item in [wanted] if isinstance(wanted, slice) else wanted:
        if isinstance(item, slice):
            if item.step is not None:
                msg = f"an epoch range picks the recorded epochs and takes no step; got {item}"
                raise ParameterError(msg)
            low = -np.inf if item.start is None else item.start
            high = np.inf if item.stop is None else item.stop
            chosen.update(e for e in values if low <= e < high)
        elif int(item) in values:
            chosen.add(int(item))
        else:
            msg = f"{where} has no epoch {int(item)} ({span})"
            raise ParameterError(msg)
    if not chosen:
        msg = f"no epoch selected in {where} ({span}); leave epochs out for all of them"
        raise ParameterError(msg)
    return sorted(chosen)


def _check(est: Estimator, run: Run, layers: list[str], epochs: list[int]) -> None:
    est.check_run(run, layers)
    if est.needs_epochs and len(epochs) < 2:
        msg = f"{est.name} looks across epochs and needs at least two; got {len(epochs)}"
        raise EstimatorRequirementError(msg)


def _check_memory(
    instances: list[Estimator], run: Run, layers: list[str], device: str, client: Any
) -> None:
    """Refuse, before starting, a task that needs more memory than where it would run has."""
    for est in instances:
        limit, where = _memory_limit(_device_for(est, device), client)
        if limit is None:
            continue
        for layer in layers:
            need = est.memory_bytes(run, layer)
            if need > limit:
                msg = (
                    f"{est.name} on layer {layer!r} needs about {_bytes(need)} of memory per task,"
                    f" more than the {_bytes(limit)} of {where}; lower the sample sizes in its "
                    f"parameters ({params_json(est.params())})"
                )
                raise ParameterError(msg)


def _memory_limit(device: str, client: Any) -> tuple[int | None, str]:
    """The memory a task can use and where, or None when it cannot be told."""
    if device.startswith("cuda"):
        if client is not None:  # the GPU workers' memory is not known here
            return None, ""
        import torch

        index = int(device[5:]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory), f"GPU {device}"
    if client is not None:
        workers = client.scheduler_info().get("workers", {}).values()
        limits = [int(w.get("memory_limit") or 0) for w in workers]
        return (max(limits), "the largest dask worker") if limits and min(limits) > 0 else (None, "")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None, ""


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover - the loop always returns


def _cache_store(run: Run) -> Any:
    """The run store's Zarr store, for the cache to read and write through."""
    return run.location.store(read_only=False)


def _plan(run: Run, est: Estimator, layer: str, epochs: list[int], store: Any) -> _Job:
    context = est.layer_context(run, layer)
    entry = None
    cached = None
    if store is not None:
        entry = CacheEntry(store, f"results/{est.name}/{cache_key(est, context)}/{layer}")
        cached = entry.read()
    done = set() if cached is None else set(cached["epoch"].values.tolist())
    structure = None if cached is None else Structure.of(cached.isel(epoch=[0]))
    missing = [e for e in epochs if e not in done]
    if entry is not None:
        entry.reserve(len(done) + len(missing))  # rows for every epoch: no resize per write
    return _Job(est, layer, context, entry, cached, missing, structure)


def _assemble(
    run: Run,
    instances: list[Estimator],
    jobs: list[_Job],
    layer_names: list[str],
    epoch_values: list[int],
) -> xr.Dataset | None:
    """The Dataset of everything that succeeded, or None when nothing did."""
    pieces: dict[str, list[xr.Dataset]] = {}
    for job in jobs:
        layer_ds = _layer_result(job, epoch_values)
        if layer_ds is not None:
            pieces.setdefault(job.estimator.name, []).append(layer_ds)
    merged = [
        _label(xr.concat(pieces[est.name], dim="layer", join="outer", combine_attrs="override"), est)
        for est in instances
        if est.name in pieces
    ]
    if not merged:
        return None
    result = _merge_estimators(merged).reindex(epoch=epoch_values, layer=layer_names)
    metrics = run.metrics(epochs=epoch_values)
    if metrics.data_vars:
        result = result.merge(metrics)
    result = result.assign_coords(layer=np.asarray(layer_names, dtype=object))
    result = result.transpose("epoch", "layer", ...)
    from ibframe import __version__

    names = [e.name for e in instances]
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    result.attrs = {
        "title": f"ibframe estimates for {run.location.name}",
        "source": run.location.absolute(),
        "history": f"{stamp} ibframe.estimate({names})",
        "ibframe_version": __version__,
        "beta": run.beta,
    }
    return result


def _layer_result(job: _Job, epochs: list[int]) -> xr.Dataset | None:
    """One (estimator, layer): the cached and fresh epochs asked for, finalized, with ``layer``."""
    parts = []
    if job.cached is not None:
        wanted = [e for e in job.cached["epoch"].values.tolist() if e in set(epochs)]
        parts.append(job.cached.sel(epoch=wanted))
    parts.extend(job.fresh[e] for e in sorted(job.fresh))
    parts = [p for p in parts if p.sizes["epoch"]]
    if not parts:
        return None
    # every part has the job's Structure, so their other coordinates are equal (one part, the
    # common case of a fresh estimate, needs no concatenation: xarray's costs 10-50 ms a layer)
    layer_ds = parts[0] if len(parts) == 1 else xr.concat(
        parts, dim="epoch", join="override", combine_attrs="override")
    if not layer_ds.indexes["epoch"].is_monotonic_increasing:
        layer_ds = layer_ds.sortby("epoch")
    if job.failed:
        # What is left of a layer whose tasks failed may be too little for finalize_layer
        # (fewer than two epochs, say); the per-epoch results stand, the failures are reported.
        with contextlib.suppress(Exception):
            layer_ds = job.estimator.finalize_layer(layer_ds)
    else:
        layer_ds = job.estimator.finalize_layer(layer_ds)
    return layer_ds.expand_dims(layer=[job.layer])


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


__all__ = [
    "CacheWarning",
    "EstimationWarning",
    "build_estimators",
    "cache_key",
    "choose_parts",
    "estimate",
    "estimate_runs",
]
