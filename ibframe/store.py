"""The run store: one training run as a Zarr v3 group that plain xarray can open.

Layout (``ibframe_format`` 1; docs/store-format.md is the reference)::

    RUN.zarr/                 attrs: ibframe_format, ibframe_version, created, beta, noise, draws,
                                     layers, epochs (the committed epochs), model, dataset, seed, ...
      data/                   x (sample, feature...), y (sample), split (sample; 0 train, 1 test)
      layers/<name>/          epoch (epoch), S (epoch, sample, unit): pre-noise outputs, draw 0
                              S_cond (epoch, cond_sample, draw, unit): the conditional draws,
                              cond_sample (cond_sample): the sample index of each conditional row
      metrics/                epoch (epoch), <metric> (epoch)
      params/                 epoch (epoch), <parameter> (epoch, ...)
      results/<estimator>/<key>/<layer>/   cached estimator results (see ibframe.engine)

Every array's chunks have length 1 along ``epoch``, so appending an epoch writes new chunks and
never rewrites old ones. An epoch is committed by appending it to the root attribute ``epochs``
after all of its arrays are written: a writer killed mid-epoch leaves arrays one epoch longer
than ``epochs``; readers slice to the committed length and a writer reopening the run trims them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr

from ibframe.block import Block
from ibframe.errors import ActivationError, StoreError, StoreNotFoundError

FORMAT: typing.Final = 1
_CHUNK_BYTES: typing.Final = 8 * 2**20
_SPLIT_CODES: typing.Final = {"train": 0, "test": 1}


def _version() -> str:
    from ibframe import __version__

    return __version__


def _layer_spec(name: str, spec: Any, position: int, beta: float) -> dict[str, Any]:
    """Normalise a layer declaration (units, a shape, or a mapping) to the stored attributes."""
    raw = dict(spec) if isinstance(spec, Mapping) else {"shape": spec}
    shape_value = raw.pop("shape", raw.pop("units", None))
    if shape_value is None:
        msg = f"layer {name!r} needs a shape or a number of units"
        raise StoreError(msg)
    shape = [int(shape_value)] if np.ndim(shape_value) == 0 else [int(s) for s in shape_value]
    if not shape or min(shape) < 1:
        msg = f"layer {name!r} has an invalid shape {shape_value!r}"
        raise StoreError(msg)
    deterministic = raw.pop("deterministic_given_x", beta == 0 or position == 1)
    return {
        "index": position,
        "shape": shape,
        "units": math.prod(shape),
        "activation": raw.pop("activation", None),
        "kind": raw.pop("kind", "dense" if len(shape) == 1 else "conv"),
        "deterministic_given_x": bool(deterministic),
        "beta": beta,
        **raw,
    }


def _chunks(shape: Sequence[int], itemsize: int = 4) -> tuple[int, ...]:
    """Chunks of one epoch each, splitting the last (unit) axis to stay near 8 MiB."""
    per_unit = itemsize * math.prod(shape[1:-1])
    units = shape[-1]
    unit_chunk = max(1, min(units, _CHUNK_BYTES // max(per_unit, 1)))
    return (1, *shape[1:-1], unit_chunk)


def create_run(
    path: str | Path,
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
) -> Run:
    """Create a run store and return it open for appending epochs.

    Parameters
    ----------
    path
        Where the ``.zarr`` directory goes.
    x, y, split
        The inputs (sample, feature...), integer labels (sample,) and "train"/"test" per sample.
    layers
        Hidden layers in order: ``{name: units}``, ``{name: (channels, h, w)}``, or
        ``{name: {"shape": ..., "activation": "tanh", "deterministic_given_x": bool}}``. By default
        the first layer's S is deterministic given x when ``beta > 0``, and every layer's is when
        ``beta == 0``.
    beta
        Standard deviation of the Gaussian noise added after each hidden layer; 0 = deterministic.
    draws
        Conditional draws n_x recorded per conditional sample (0 for none; must be 0 if beta is 0).
    conditional_samples
        Indices of the samples that get conditional draws; all samples when ``draws > 0`` and None.
    model, dataset, seed, attrs
        Provenance kept in the root attributes (``attrs`` must be JSON-serialisable).
    overwrite
        Replace an existing store at ``path`` instead of refusing.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{path} already exists; open it with open_run(path, mode='a') or pass overwrite=True"
        raise StoreError(msg)
    x_arr = np.asarray(x)
    n = x_arr.shape[0] if x_arr.ndim else 0
    if x_arr.ndim < 2 or n == 0:
        msg = f"x must be (sample, feature...) with at least one sample, got shape {x_arr.shape}"
        raise ActivationError(msg)
    _check_finite("x", x_arr)
    y_arr = None if y is None else np.asarray(y)
    if y_arr is not None:
        if y_arr.shape != (n,):
            msg = f"labels y must have shape ({n},) to match x, got {y_arr.shape}"
            raise ActivationError(msg)
        if not np.issubdtype(y_arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(y_arr, 1), 0)):
                msg = "labels y must be integer class indices"
                raise ActivationError(msg)
            y_arr = y_arr.astype(np.int64)
    split_codes = _split_codes(split, n)
    if beta < 0 or not math.isfinite(beta):
        msg = f"beta must be a finite number >= 0, got {beta!r}"
        raise StoreError(msg)
    if draws < 0 or (draws > 0 and beta == 0):
        msg = f"draws must be >= 0, and 0 for a deterministic run (beta=0); got {draws}"
        raise StoreError(msg)
    cond = _conditional_index(conditional_samples, n, draws)
    if not layers:
        msg = "a run needs at least one layer"
        raise StoreError(msg)
    specs = {name: _layer_spec(name, spec, i, beta) for i, (name, spec) in enumerate(layers.items(), 1)}
    for name in specs:
        if not name or "/" in name or name.startswith("__"):
            msg = f"invalid layer name {name!r}: no '/', not empty, not starting with '__'"
            raise StoreError(msg)

    if path.exists():
        _remove_run_store(path)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs.update(
        {
            "ibframe_format": FORMAT,
            "ibframe_version": _version(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "beta": float(beta),
            "noise": "gaussian" if beta > 0 else "none",
            "draws": int(draws),
            "layers": list(specs),
            "epochs": [],
            "model": json.loads(json.dumps(model or {})),
            "dataset": dataset,
            "seed": seed,
            **json.loads(json.dumps(dict(attrs or {}))),
        }
    )
    data = root.create_group("data")
    x_dims = ["sample", "feature"] if x_arr.ndim == 2 else ["sample"] + [
        f"feature_{i}" for i in range(1, x_arr.ndim)
    ]
    data.create_array("x", data=x_arr, dimension_names=x_dims)
    if y_arr is not None:
        data.create_array("y", data=y_arr.astype(np.int64), dimension_names=["sample"])
    if split_codes is not None:
        data.create_array(
            "split",
            data=split_codes,
            dimension_names=["sample"],
            attributes={"flag_values": [0, 1], "flag_meanings": "train test"},
        )
    layers_group = root.create_group("layers")
    for name, spec in specs.items():
        group = layers_group.create_group(name, attributes=spec)
        units = spec["units"]
        group.create_array("epoch", shape=(0,), chunks=(1,), dtype="int64", dimension_names=["epoch"])
        shape = (0, n, units)
        group.create_array(
            "S", shape=shape, chunks=_chunks(shape), dtype="float32",
            dimension_names=["epoch", "sample", "unit"], fill_value=np.nan,
            attributes={"long_name": f"pre-noise output S of layer {name}"},
        )
        if draws > 0 and cond is not None:
            group.create_array("cond_sample", data=cond, dimension_names=["cond_sample"])
            shape_c = (0, len(cond), draws, units)
            group.create_array(
                "S_cond", shape=shape_c, chunks=_chunks(shape_c), dtype="float32",
                dimension_names=["epoch", "cond_sample", "draw", "unit"], fill_value=np.nan,
                attributes={"long_name": f"conditional draws of S of layer {name}"},
            )
    for name in ("metrics", "params"):
        group = root.create_group(name)
        group.create_array("epoch", shape=(0,), chunks=(1,), dtype="int64", dimension_names=["epoch"])
    return Run(path, mode="a")


def _remove_run_store(path: Path) -> None:
    """Delete ``path`` for ``overwrite=True``, but only if it is an ibframe run store."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        meta = {}
    if not path.is_dir() or "ibframe_format" not in meta.get("attributes", {}):
        msg = f"{path} exists and is not an ibframe run store; refusing to overwrite it"
        raise StoreError(msg)
    shutil.rmtree(path)


def open_run(path: str | Path, mode: Literal["r", "a"] = "r") -> Run:
    """Open an existing run store, read-only (``"r"``) or to append epochs (``"a"``)."""
    return Run(Path(path), mode=mode)


def _split_codes(split: npt.ArrayLike | None, n: int) -> npt.NDArray[np.uint8] | None:
    if split is None:
        return None
    values = np.asarray(split)
    if values.shape != (n,):
        msg = f"split must have shape ({n},) to match x, got {values.shape}"
        raise ActivationError(msg)
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
    idx = np.asarray(samples, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        msg = f"conditional_samples must be a non-empty list of indices in [0, {n})"
        raise StoreError(msg)
    if np.unique(idx).size != idx.size:
        msg = "conditional_samples must not repeat an index"
        raise StoreError(msg)
    return idx


def _check_finite(what: str, values: npt.NDArray[Any]) -> None:
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        msg = f"{what} holds {bad} NaN/inf value(s); nothing was written"
        raise ActivationError(msg)


class Run:
    """An open run store. Create one with :func:`create_run` or :func:`open_run`.

    Readers see only committed epochs; the views are lazy, dask-backed xarray objects.
    """

    def __init__(self, path: Path, mode: Literal["r", "a"] = "r") -> None:
        if mode not in ("r", "a"):
            msg = f"mode must be 'r' or 'a', got {mode!r}"
            raise StoreError(msg)
        self.path = Path(path)
        self.mode = mode
        if not self.path.exists():
            msg = f"no run store at {self.path}"
            raise StoreNotFoundError(msg)
        try:
            self._root = zarr.open_group(self.path, mode="r+" if mode == "a" else "r")
        except (FileNotFoundError, ValueError, zarr.errors.BaseZarrError) as err:
            msg = f"{self.path} is not a Zarr v3 group, so not an ibframe run store ({err})"
            raise StoreError(msg) from err
        fmt = self._root.attrs.get("ibframe_format")
        if fmt is None or self._root.metadata.zarr_format != 3:
            msg = f"{self.path} is a Zarr group but not an ibframe run store (no ibframe_format)"
            raise StoreError(msg)
        if fmt != FORMAT:
            msg = (
                f"{self.path} has ibframe_format {fmt}; this ibframe "
                f"({_version()}) reads format {FORMAT}"
            )
            raise StoreError(msg)
        if mode == "a":
            self._trim_uncommitted()

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> typing.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is buffered: each append is on disk when it returns. Kept for ``with``."""

    def __repr__(self) -> str:
        return (
            f"<ibframe.Run {self.path} layers={self.layers} epochs={len(self.epochs)} "
            f"beta={self.beta} draws={self.draws}>"
        )

    # -- metadata ----------------------------------------------------------------------------

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes (provenance and format)."""
        return dict(self._root.attrs)

    @property
    def layers(self) -> list[str]:
        """Hidden layer names, in the order of the network."""
        return list(self._root.attrs["layers"])

    @property
    def epochs(self) -> npt.NDArray[np.int64]:
        """The committed epochs, increasing."""
        return np.asarray(self._root.attrs["epochs"], dtype=np.int64)

    @property
    def beta(self) -> float:
        """The noise standard deviation (0 for a deterministic network)."""
        return float(self._root.attrs["beta"])

    @property
    def draws(self) -> int:
        """Conditional draws per conditional sample."""
        return int(self._root.attrs["draws"])

    @property
    def n_samples(self) -> int:
        return int(self._root["data/x"].shape[0])

    @property
    def has_labels(self) -> bool:
        return "y" in self._root["data"]

    def layer_attrs(self, layer: str) -> dict[str, Any]:
        """Stored attributes of one layer: index, shape, units, activation, kind, ..."""
        return dict(self._layer_group(layer).attrs)

    def _layer_group(self, layer: str) -> zarr.Group:
        if layer not in self.layers:
            msg = f"run {self.path} has no layer {layer!r} (its layers: {', '.join(self.layers)})"
            raise StoreError(msg)
        return typing.cast(zarr.Group, self._root[f"layers/{layer}"])

    # -- data ---------------------------------------------------------------------------------

    @property
    def x(self) -> npt.NDArray[Any]:
        return np.asarray(self._root["data/x"][...])

    @property
    def y(self) -> npt.NDArray[np.int64] | None:
        return np.asarray(self._root["data/y"][...]) if self.has_labels else None

    @property
    def split(self) -> npt.NDArray[np.str_] | None:
        if "split" not in self._root["data"]:
            return None
        codes = np.asarray(self._root["data/split"][...])
        return np.where(codes == 0, "train", "test")

    def activations(self, layer: str) -> xr.DataArray:
        """Lazy unconditional S of one layer, dims (epoch, sample, unit)."""
        group = self._layer_group(layer)
        n = len(self.epochs)
        data = da.from_zarr(group["S"])[:n]
        return xr.DataArray(
            data,
            dims=("epoch", "sample", "unit"),
            coords={"epoch": self.epochs, "layer": layer},
            name="S",
            attrs=dict(group["S"].attrs),
        )

    def conditional(self, layer: str) -> xr.DataArray | None:
        """Lazy conditional draws of one layer, dims (epoch, cond_sample, draw, unit), or None.

        The ``cond_sample`` coordinate holds each row's index into the samples.
        """
        group = self._layer_group(layer)
        if "S_cond" not in group:
            return None
        n = len(self.epochs)
        data = da.from_zarr(group["S_cond"])[:n]
        return xr.DataArray(
            data,
            dims=("epoch", "cond_sample", "draw", "unit"),
            coords={
                "epoch": self.epochs,
                "cond_sample": np.asarray(group["cond_sample"][...]),
                "layer": layer,
            },
            name="S_cond",
            attrs=dict(group["S_cond"].attrs),
        )

    def metrics(self) -> xr.Dataset:
        """The recorded metrics over the committed epochs (loss_train, accuracy_test, ...)."""
        group = typing.cast(zarr.Group, self._root["metrics"])
        n = len(self.epochs)
        variables = {
            name: ("epoch", np.asarray(arr[:n]))
            for name, arr in group.arrays()
            if name != "epoch"
        }
        return xr.Dataset(variables, coords={"epoch": self.epochs})

    def params(self, epoch: int) -> dict[str, npt.NDArray[Any]]:
        """The model's parameters recorded at ``epoch``."""
        i = self._epoch_position(epoch)
        group = typing.cast(zarr.Group, self._root["params"])
        return {name: np.asarray(arr[i]) for name, arr in group.arrays() if name != "epoch"}

    def _epoch_position(self, epoch: int) -> int:
        matches = np.flatnonzero(self.epochs == epoch)
        if matches.size == 0:
            msg = f"run {self.path} has no epoch {epoch} (recorded: {summarise_epochs(self.epochs)})"
            raise StoreError(msg)
        return int(matches[0])

    def block(
        self,
        layer: str,
        epoch: int,
        device: str = "cpu",
        context: Mapping[str, Any] | None = None,
    ) -> Block:
        """Everything an estimator needs for one (layer, epoch), as numpy arrays."""
        group = self._layer_group(layer)
        i = self._epoch_position(epoch)
        attrs = group.attrs
        has_cond = "S_cond" in group
        return Block(
            layer=layer,
            epoch=int(epoch),
            layer_index=int(attrs["index"]),
            s=np.asarray(group["S"][i]),
            s_cond=np.asarray(group["S_cond"][i]) if has_cond else None,
            cond_index=np.asarray(group["cond_sample"][...]) if has_cond else None,
            y=self.y,
            beta=self.beta,
            deterministic_given_x=bool(attrs["deterministic_given_x"]),
            device=device,
            layer_attrs=dict(attrs),
            context=dict(context or {}),
            run_path=str(self.path),
        )

    # -- writing ------------------------------------------------------------------------------

    def append_epoch(
        self,
        epoch: int,
        activations: Mapping[str, npt.ArrayLike],
        *,
        conditional: Mapping[str, npt.ArrayLike] | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, npt.ArrayLike] | None = None,
    ) -> None:
        """Record one epoch: S of every layer, conditional draws, metrics and parameters.

        ``activations[layer]`` is S as (sample, unit...) for the unconditional pass, or
        (sample, 1 + draws, unit...) with draw 0 the unconditional pass and draws 1.. the
        conditional ones for every sample (subset to the run's conditional samples when stored).
        ``conditional[layer]`` gives the conditional draws directly as
        (conditional sample, draws, unit...). Everything is checked before anything is written.
        """
        if self.mode != "a":
            msg = f"run {self.path} is open read-only; open it with mode='a' to append"
            raise StoreError(msg)
        epoch = _as_epoch(epoch)
        committed = self.epochs
        if committed.size and epoch <= committed[-1]:
            what = "was already recorded" if epoch in committed else "comes before the last one"
            msg = f"epoch {epoch} {what} (last recorded: {int(committed[-1])}); nothing was written"
            raise ActivationError(msg)
        prepared = {
            layer: self._prepare_layer(layer, activations, conditional) for layer in self.layers
        }
        extra = set(activations) - set(self.layers)
        extra |= set(conditional or {}) - set(self.layers)
        if extra:
            msg = f"unknown layer(s) {sorted(extra)}; the run's layers are {self.layers}"
            raise ActivationError(msg)
        metric_values = _prepare_metrics(metrics or {})
        param_values = self._prepare_params(params or {})

        n = committed.size
        for layer, (s, s_cond) in prepared.items():
            group = self._layer_group(layer)
            _append(group["S"], n, s)
            if s_cond is not None:
                _append(group["S_cond"], n, s_cond)
            _append(group["epoch"], n, np.int64(epoch))
        metrics_group = typing.cast(zarr.Group, self._root["metrics"])
        for name in metric_values:
            if name not in metrics_group:
                metrics_group.create_array(
                    name, shape=(n,), chunks=(1,), dtype="float64",
                    dimension_names=["epoch"], fill_value=np.nan,
                )
        for name, arr in metrics_group.arrays():
            if name != "epoch":
                _append(arr, n, np.float64(metric_values.get(name, np.nan)))
        _append(metrics_group["epoch"], n, np.int64(epoch))
        params_group = typing.cast(zarr.Group, self._root["params"])
        for name, value in param_values.items():
            if name not in params_group:
                params_group.create_array(
                    name, shape=(n, *value.shape), chunks=(1, *value.shape), dtype=value.dtype,
                    dimension_names=["epoch", *[f"{name}_{i}" for i in range(value.ndim)]],
                    fill_value=np.nan if value.dtype.kind == "f" else 0,
                )
        for name, arr in params_group.arrays():
            if name != "epoch":
                fill = param_values.get(name)
                _append(arr, n, fill if fill is not None else np.full(arr.shape[1:], np.nan))
        _append(params_group["epoch"], n, np.int64(epoch))
        # The commit point: only now does the epoch exist for readers.
        self._root.attrs["epochs"] = [*committed.tolist(), epoch]

    def _prepare_layer(
        self,
        layer: str,
        activations: Mapping[str, npt.ArrayLike],
        conditional: Mapping[str, npt.ArrayLike] | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        group = self._layer_group(layer)
        if layer not in activations:
            msg = f"activations for layer {layer!r} are missing; every epoch records every layer"
            raise ActivationError(msg)
        shape = tuple(group.attrs["shape"])
        units = int(group.attrs["units"])
        n = self.n_samples
        values = np.asarray(activations[layer], dtype=np.float32)
        cond_rows = np.asarray(group["cond_sample"][...]) if "S_cond" in group else None
        s_cond = None
        if values.shape[:1] != (n,):
            msg = f"layer {layer!r}: expected {n} samples, got an array of shape {values.shape}"
            raise ActivationError(msg)
        if values.shape[1:] == shape or values.shape[1:] == (units,):
            s = values.reshape(n, units)
        elif values.shape[2:] in (shape, (units,)):
            s = values[:, 0].reshape(n, units)
            if values.shape[1] > 1:
                if cond_rows is None:
                    msg = f"layer {layer!r}: draws given, but the run was created with draws=0"
                    raise ActivationError(msg)
                s_cond = values[cond_rows, 1:].reshape(len(cond_rows), -1, units)
        else:
            msg = (
                f"layer {layer!r}: expected S of shape ({n}, {units}) or ({n}, 1+draws, {units})"
                f" (unit shape {list(shape)}), got {values.shape}"
            )
            raise ActivationError(msg)
        if conditional is not None and layer in conditional:
            if cond_rows is None:
                msg = f"layer {layer!r}: conditional draws given, but the run has draws=0"
                raise ActivationError(msg)
            c = np.asarray(conditional[layer], dtype=np.float32)
            s_cond = c.reshape(c.shape[0], c.shape[1], -1) if c.ndim >= 3 else c
        if cond_rows is not None:
            expected = (len(cond_rows), self.draws, units)
            if s_cond is None:
                msg = f"layer {layer!r}: the run records {self.draws} conditional draws; none given"
                raise ActivationError(msg)
            if s_cond.shape != expected:
                msg = f"layer {layer!r}: conditional draws must have shape {expected}, got {s_cond.shape}"
                raise ActivationError(msg)
            _check_finite(f"conditional draws of layer {layer!r}", s_cond)
        _check_finite(f"activations of layer {layer!r}", s)
        return s, s_cond

    def _prepare_params(self, params: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[Any]]:
        group = typing.cast(zarr.Group, self._root["params"])
        out = {}
        for name, value in params.items():
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            if "/" in name or name == "epoch":
                msg = f"invalid parameter name {name!r}"
                raise ActivationError(msg)
            if name in group and tuple(group[name].shape[1:]) != arr.shape:
                msg = f"parameter {name!r} changed shape to {arr.shape}; stored {group[name].shape[1:]}"
                raise ActivationError(msg)
            out[name] = arr
        return out

    def _trim_uncommitted(self) -> None:
        """Cut arrays back to the committed epochs after a writer died mid-epoch."""
        n = len(self.epochs)
        for group_path in ["metrics", "params", *[f"layers/{name}" for name in self.layers]]:
            group = typing.cast(zarr.Group, self._root[group_path])
            for _, array in group.arrays():
                dims = array.metadata.dimension_names or ()
                if dims[:1] == ("epoch",) and array.shape[0] > n:
                    array.resize((n, *array.shape[1:]))


def _append(array: zarr.Array, n: int, value: Any) -> None:
    array.resize((n + 1, *array.shape[1:]))
    array[n] = value


def _as_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        msg = f"epoch must be a non-negative integer, got {epoch!r}"
        raise ActivationError(msg)
    return int(epoch)


def _prepare_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for name, value in metrics.items():
        if "/" in name or name == "epoch":
            msg = f"invalid metric name {name!r}"
            raise ActivationError(msg)
        try:
            out[name] = float(value)
        except (TypeError, ValueError) as err:
            msg = f"metric {name!r} must be a number, got {value!r}"
            raise ActivationError(msg) from err
    return out


def summarise_epochs(epochs: npt.NDArray[np.int64]) -> str:
    """A short description of a list of epochs for messages: all of them, or the span."""
    if epochs.size == 0:
        return "none"
    if epochs.size <= 8:
        return ", ".join(map(str, epochs.tolist()))
    return f"{epochs.size} epochs from {epochs[0]} to {epochs[-1]}"
