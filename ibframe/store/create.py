"""Creating a run store: everything checked first, then built under the writer lock, then
committed by one write of the root attributes."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from ibframe.errors import ActivationError, IncompleteStoreError, StoreError
from ibframe.store.integrity import inspect, remove_children
from ibframe.store.layout import (
    ARRAY_CONFIG,
    CODECS,
    CREATING,
    FORMAT,
    NOISE_RELATIONS,
    check_finite,
    check_names,
    chunks,
    default_noise_relation,
    ibframe_version,
    json_value,
    real_array,
    user_attrs,
)
from ibframe.store.location import Location, Where, storage_errors
from ibframe.store.lock import LOCK_NAME, acquire_writer_lock
from ibframe.store.run import Run, half_created_message

_SPLIT_CODES = {"train": 0, "test": 1}


def create_run(
    path: Where | Location,
    *,
    x: npt.ArrayLike,
    layers: Mapping[str, Any],
    y: npt.ArrayLike | None = None,
    split: npt.ArrayLike | None = None,
    beta: float = 0.0,
    draws: int = 0,
    conditional_samples: npt.ArrayLike | None = None,
    model: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Run:
    """Create a run store and return it open for appending epochs (holding the writer lock).

    Everything is checked before anything is written. The store is built under the writer lock
    and becomes a run only at its last write, the root attributes with ``ibframe_format``: a
    creation that is interrupted leaves nothing, an empty directory, or a store that
    :func:`open_run` recognises as half-created and ``overwrite=True`` replaces.

    Parameters
    ----------
    path
        Where the ``.zarr`` directory goes. An empty directory is used as it is. A URL
        (``s3://bucket/prefix/run.zarr``, ``memory://...``) puts it on object storage.
    x, y, split
        The inputs (sample, feature...) as real numbers, integer labels (sample,) and
        "train"/"test" (or booleans, True = train) per sample.
    layers
        Hidden layers in order: ``{name: units}``, ``{name: (channels, h, w)}``, or
        ``{name: {"shape": ..., "activation": "tanh", "deterministic_given_x": bool,
        "noise": "additive"}}``. By default the first layer's S is deterministic given x when
        ``beta > 0``, and every layer's is when ``beta == 0``; ``noise`` says how T follows from S
        ("additive", "before-pooling" or "none"; by default "additive" when ``beta > 0``, else
        "none"). Names: 1-200 of ``A-Z a-z 0-9 _ . -``, not starting with '.', '-' or '__'.
    beta
        Standard deviation of the Gaussian noise added after each hidden layer; 0 = deterministic.
    draws
        Conditional draws n_x recorded per conditional sample (0 for none; must be 0 if beta is 0).
    conditional_samples
        Indices of the samples that get conditional draws; all samples when ``draws > 0`` and None.
    model, dataset, seed, attrs
        Provenance kept in the root attributes; ``model`` and ``attrs`` must be JSON (numpy
        numbers are converted), and ``attrs`` may not use ibframe's own keys.
    overwrite
        Replace an existing run store (complete or half-created) at ``path`` instead of refusing.
        Anything that is not a run store is never replaced.
    storage_options
        For a URL: fsspec's options (``endpoint_url``, ``key``, ``secret``, ``profile``...).
        They are never written into the store.
    """
    location = Location.of(path, storage_options)
    x_arr = real_array("x", x)
    if x_arr.ndim < 2 or x_arr.shape[0] == 0:
        msg = f"x must be (sample, feature...) with at least one sample, got shape {x_arr.shape}"
        raise ActivationError(msg)
    n = x_arr.shape[0]
    check_finite("x", x_arr)
    y_arr = _labels(y, n)
    split_codes = _split_codes(split, n)
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta) or beta < 0:
        msg = f"beta must be a finite number >= 0, got {beta!r}"
        raise StoreError(msg)
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 0 or (
        draws > 0 and beta == 0
    ):
        msg = f"draws must be >= 0, and 0 for a deterministic run (beta=0); got {draws!r}"
        raise StoreError(msg)
    cond = _conditional_index(conditional_samples, n, int(draws))
    if not layers:
        msg = "a run needs at least one layer"
        raise StoreError(msg)
    check_names("layer", list(layers))
    specs = {name: _layer_spec(name, spec, i, beta) for i, (name, spec) in enumerate(layers.items(), 1)}
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        msg = f"seed must be an integer or None, got {seed!r}"
        raise StoreError(msg)
    if dataset is not None and not isinstance(dataset, str):
        msg = f"dataset must be a string or None, got {dataset!r}"
        raise StoreError(msg)
    root_attrs = {
        "ibframe_format": FORMAT,
        "ibframe_version": ibframe_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "beta": float(beta),
        "noise": "gaussian" if beta > 0 else "none",
        "draws": int(draws),
        "layers": list(specs),
        "epochs": [],
        "metrics": [],
        "params": [],
        "model": json_value("model", dict(model or {})),
        "dataset": dataset,
        "seed": None if seed is None else int(seed),
        **user_attrs(attrs),
    }
    specs = {name: json_value(f"the attributes of layer {name!r}", spec) for name, spec in specs.items()}

    with storage_errors(location):
        return _create(location, root_attrs, specs, x_arr, y_arr, split_codes, int(draws), cond,
                       overwrite)


def _create(
    location: Location,
    root_attrs: dict[str, Any],
    specs: dict[str, dict[str, Any]],
    x_arr: npt.NDArray[Any],
    y_arr: npt.NDArray[np.int64] | None,
    split_codes: npt.NDArray[np.uint8] | None,
    draws: int,
    cond: npt.NDArray[np.int64] | None,
    overwrite: bool,
) -> Run:
    """Build the store under the writer lock; ``create_run`` checked everything first."""
    _check_replaceable(location, overwrite)
    if location.local is not None:
        location.local.mkdir(parents=True, exist_ok=True)
    lock = acquire_writer_lock(location, "create_run")
    try:
        store = location.store(read_only=False)
        state = _check_replaceable(location, overwrite)  # again, now that no other writer can act
        marker = {CREATING: {"started": root_attrs["created"], "ibframe_version": ibframe_version()}}
        if state == "empty":
            remove_children(store, keep=[LOCK_NAME])
            root = zarr.create_group(store, zarr_format=3, attributes=marker)
        else:
            root = zarr.open_group(store, mode="r+", zarr_format=3)
            root.attrs.put(marker)  # from here on the old run is no longer a run
            remove_children(store, keep=["zarr.json", LOCK_NAME])
        _build(root, x_arr, y_arr, split_codes, specs, draws, cond)
        root.attrs.put(root_attrs)  # the commit: the store is a run from this write on
        return Run._with_lock(location, lock)
    except BaseException:
        lock.release()
        raise


def _check_replaceable(location: Location, overwrite: bool) -> str:
    """What is at ``location``: absent, empty, or a run store ``overwrite`` may replace."""
    where = str(location)
    path = location.local
    if path is not None and not path.exists():
        return "absent"
    if path is not None and not path.is_dir():
        msg = f"{where} exists and is not an ibframe run store (a file); refusing to overwrite it"
        raise StoreError(msg)
    store = location.store(read_only=True)
    found = inspect(store)
    if found.state == "empty":
        location.check_container(store)  # a missing bucket is an error, not a place to create
        return "empty"
    if found.state in ("foreign", "unreadable"):
        msg = f"{where} exists and is not an ibframe run store ({found.reason}); refusing to overwrite it"
        raise StoreError(msg)
    if not overwrite:
        if found.state == "half-created":
            raise IncompleteStoreError(half_created_message(where, found.attrs))
        msg = (
            f"{where} already exists: pass overwrite=True (ibframe train --overwrite) to replace "
            f"it, or append to it with open_run(path, mode='a')"
        )
        raise StoreError(msg)
    return found.state


def _build(
    root: zarr.Group,
    x: npt.NDArray[Any],
    y: npt.NDArray[np.int64] | None,
    split: npt.NDArray[np.uint8] | None,
    specs: Mapping[str, dict[str, Any]],
    draws: int,
    cond: npt.NDArray[np.int64] | None,
) -> None:
    """Every group and array of a new run, with no epoch yet."""
    n = x.shape[0]
    data = root.create_group("data")
    x_dims = ["sample", "feature"] if x.ndim == 2 else ["sample"] + [
        f"feature_{i}" for i in range(1, x.ndim)
    ]
    _array(data, "x", data=x, dimension_names=x_dims)
    if y is not None:
        _array(data, "y", data=y, dimension_names=["sample"])
    if split is not None:
        _array(data, "split", data=split, dimension_names=["sample"],
               attributes={"flag_values": [0, 1], "flag_meanings": "train test"})
    layers_group = root.create_group("layers")
    for name, spec in specs.items():
        group = layers_group.create_group(name, attributes=spec)
        units = spec["units"]
        _epoch_coordinate(group)
        shape = (0, n, units)
        _array(group, "S", shape=shape, chunks=chunks(shape), dtype="float32",
               dimension_names=["epoch", "sample", "unit"], fill_value=np.nan,
               attributes={"long_name": f"pre-noise output S of layer {name}"})
        # S of a layer that is a function of x alone has one realisation per input: its
        # conditional draws would be copies of S
        if draws > 0 and cond is not None and not spec["deterministic_given_x"]:
            _array(group, "cond_sample", data=cond, dimension_names=["cond_sample"])
            shape_c = (0, len(cond), draws, units)
            _array(group, "S_cond", shape=shape_c, chunks=chunks(shape_c), dtype="float32",
                   dimension_names=["epoch", "cond_sample", "draw", "unit"], fill_value=np.nan,
                   attributes={"long_name": f"conditional draws of S of layer {name}"})
    for name in ("metrics", "params"):
        _epoch_coordinate(root.create_group(name))


def _array(group: zarr.Group, name: str, **kwargs: Any) -> zarr.Array:
    return group.create_array(name, compressors=CODECS, config=ARRAY_CONFIG, **kwargs)


def _epoch_coordinate(group: zarr.Group) -> None:
    _array(group, "epoch", shape=(0,), chunks=(1,), dtype="int64", dimension_names=["epoch"])


def _layer_spec(name: str, spec: Any, position: int, beta: float) -> dict[str, Any]:
    """Normalise a layer declaration (units, a shape, or a mapping) to the stored attributes."""
    raw = dict(spec) if isinstance(spec, Mapping) else {"shape": spec}
    shape_value = raw.pop("shape", raw.pop("units", None))
    if shape_value is None:
        msg = f"layer {name!r} needs a shape or a number of units"
        raise StoreError(msg)
    try:
        shape = [int(shape_value)] if np.ndim(shape_value) == 0 else [int(s) for s in shape_value]
    except (TypeError, ValueError):
        shape = []
    if not shape or min(shape) < 1:
        msg = f"layer {name!r} has an invalid shape {shape_value!r}"
        raise StoreError(msg)
    deterministic = raw.pop("deterministic_given_x", beta == 0 or position == 1)
    noise = raw.pop("noise", default_noise_relation(beta))
    if noise not in NOISE_RELATIONS or (beta == 0 and noise != "none"):
        msg = (
            f"layer {name!r}: noise must be one of {', '.join(NOISE_RELATIONS)} (\"none\" in a "
            f"deterministic run), got {noise!r}"
        )
        raise StoreError(msg)
    clash = sorted({"index", "beta"} & set(raw))
    if clash:
        msg = f"layer {name!r}: {clash} are set by ibframe, not in the layer declaration"
        raise StoreError(msg)
    return {
        "index": position,
        "shape": shape,
        "units": math.prod(shape),
        "activation": raw.pop("activation", None),
        "kind": raw.pop("kind", "dense" if len(shape) == 1 else "conv"),
        "deterministic_given_x": bool(deterministic),
        "noise": noise,
        "beta": float(beta),
        **raw,
    }


def _per_sample(values: npt.ArrayLike, n: int, what: str, holding: str) -> npt.NDArray[Any]:
    """``values`` as a flat array of one value per sample, else refuse."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as err:
        msg = f"{what} must be {holding} in a flat array ({err})"
        raise ActivationError(msg) from None
    if array.shape != (n,):
        msg = f"{what} must have shape ({n},) to match x, got {array.shape}"
        raise ActivationError(msg)
    return array


def _labels(y: npt.ArrayLike | None, n: int) -> npt.NDArray[np.int64] | None:
    if y is None:
        return None
    labels = _per_sample(y, n, "labels y", "integer class indices")
    if labels.dtype.kind in "biu":
        return labels.astype(np.int64)
    kind = {"c": "complex", "U": "str", "S": "bytes", "O": "object"}.get(labels.dtype.kind)
    if kind is not None:
        msg = f"labels y must be integer class indices, got {kind} values ({labels.dtype})"
        raise ActivationError(msg)
    if not np.all(np.isfinite(labels)) or not np.all(np.equal(np.mod(labels, 1), 0)):
        msg = "labels y must be integer class indices; got non-whole or NaN values"
        raise ActivationError(msg)
    return labels.astype(np.int64)


def _split_codes(split: npt.ArrayLike | None, n: int) -> npt.NDArray[np.uint8] | None:
    if split is None:
        return None
    values = _per_sample(split, n, "split", "'train'/'test' values")
    if values.dtype.kind in "US":
        unknown = set(np.unique(values.astype(str))) - set(_SPLIT_CODES)
        if unknown:
            msg = f"split values must be 'train' or 'test', got {sorted(unknown)}"
            raise ActivationError(msg)
        return np.array([_SPLIT_CODES[v] for v in values.astype(str)], dtype=np.uint8)
    if values.dtype == bool:
        return (~values).astype(np.uint8)  # True = train
    msg = "split must hold 'train'/'test' strings or booleans (True = train)"
    raise ActivationError(msg)


def _conditional_index(
    samples: npt.ArrayLike | None, n: int, draws: int
) -> npt.NDArray[np.int64] | None:
    if draws == 0:
        if samples is not None:
            msg = "conditional_samples given, but draws is 0"
            raise StoreError(msg)
        return None
    if samples is None:
        return np.arange(n, dtype=np.int64)
    try:
        idx = np.asarray(samples)
    except (ValueError, TypeError):
        idx = np.asarray([])
    if (
        idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu"
        or idx.min() < 0 or idx.max() >= n
    ):
        msg = f"conditional_samples must be a non-empty list of indices in [0, {n})"
        raise StoreError(msg)
    if np.unique(idx).size != idx.size:
        msg = "conditional_samples must not repeat an index"
        raise StoreError(msg)
    return idx.astype(np.int64)
