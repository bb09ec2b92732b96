"""An open run store: the committed epochs for readers, and appending for the one writer."""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.core.sync import sync

from ibframe.block import Block
from ibframe.errors import (
    ActivationError,
    IncompleteStoreError,
    StoreError,
    StoreNotFoundError,
)
from ibframe.store.integrity import (
    ArrayReader,
    Inspection,
    child_names,
    damaged,
    inspect,
    is_leftover,
    open_node,
)
from ibframe.store.layout import (
    ARRAY_CONFIG,
    CODECS,
    CREATING,
    FORMAT,
    READABLE_FORMATS,
    check_finite,
    check_name,
    check_names,
    default_noise_relation,
    ibframe_version,
    real_array,
    summarise_epochs,
)
from ibframe.store.location import Location, Where, storage_errors
from ibframe.store.lock import ObjectLock, WriterLock, acquire_writer_lock

#: Arrays whose fill value (NaN) no write can produce, NaN being refused: even in format 1, which
#: skipped chunks equal to the fill value, a missing chunk of theirs is damage. Format 2 writes
#: every chunk of every array.
_NEVER_FILL: typing.Final = frozenset({"S", "S_cond"})


def half_created_message(where: str, attrs: Mapping[str, Any]) -> str:
    """What ``open_run`` and ``create_run`` say about a store whose creation was interrupted."""
    info = attrs.get(CREATING)
    started = f" (started {info.get('started')})" if isinstance(info, dict) else ""
    return (
        f"{where} is a half-created run store: its create_run did not finish{started}; "
        "replace it with create_run(..., overwrite=True) or ibframe train --overwrite"
    )


def inspect_at(location: Location) -> Inspection:
    """What is at ``location``: raises unless it is a complete run store."""
    where = str(location)
    path = location.local
    if path is not None and not path.exists():
        msg = f"no run store at {where}"
        raise StoreNotFoundError(msg)
    if path is not None and not path.is_dir():
        msg = f"{where} is not an ibframe run store (it is a file, not a directory)"
        raise StoreError(msg)
    store = location.store(read_only=True)
    with storage_errors(location):
        found = inspect(store)
    if found.state == "run":
        return found
    if found.state == "empty":
        location.check_container(store)
        empty = " (an empty directory)" if path is not None else ""
        msg = f"no run store at {where}{empty}"
        raise StoreNotFoundError(msg)
    if found.state == "half-created":
        raise IncompleteStoreError(half_created_message(where, found.attrs))
    if found.state == "unreadable":
        raise damaged(where, found.reason)
    msg = f"{where} is not an ibframe run store ({found.reason})"
    raise StoreError(msg)


def open_run(
    path: Where | Location,
    mode: Literal["r", "a"] = "r",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Run:
    """Open an existing run store, read-only (``"r"``) or to append epochs (``"a"``).

    ``path`` is a local path or a URL (``s3://bucket/prefix/run.zarr``, ``memory://...``, any
    fsspec protocol), with ``storage_options`` for fsspec (``endpoint_url``, ``key``, ...).

    A writer (``"a"``) takes the store's writer lock until :meth:`Run.close` (or the end of a
    ``with`` block, or the process); a second writer is refused. Readers take no lock.
    """
    return Run(path, mode=mode, storage_options=storage_options)


@dataclasses.dataclass(frozen=True)
class _Layer:
    attrs: dict[str, Any]
    s: zarr.Array
    s_cond: zarr.Array | None
    cond_sample: zarr.Array | None


class Run:
    """An open run store. Create one with :func:`create_run` or :func:`open_run`.

    Readers see the epochs committed when the store was opened (reopen to see newer ones); the
    views are lazy, dask-backed xarray objects. Every read checks that the chunks it needs exist
    and decode, and raises :class:`~ibframe.errors.StoreError` naming the store, the array and
    the epoch otherwise.

    Attributes
    ----------
    path
        The store's directory (a ``Path``), or its URL (a ``str``) on object storage.
    location
        Where the store is, with its storage options (:class:`~ibframe.store.location.Location`).
    store
        The underlying ``zarr.abc.store.Store``.
    mode
        "r" or "a".
    """

    path: Path | str
    location: Location
    store: Store
    mode: Literal["r", "a"]

    def __init__(
        self,
        path: Where | Location,
        mode: Literal["r", "a"] = "r",
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._open(Location.of(path, storage_options), mode, lock=None)

    @classmethod
    def _with_lock(cls, location: Location, lock: WriterLock | ObjectLock) -> Run:
        """A writer on a store whose lock the caller (``create_run``) already holds."""
        run = cls.__new__(cls)
        run._open(location, "a", lock)
        return run

    def _open(
        self, location: Location, mode: Literal["r", "a"], lock: WriterLock | ObjectLock | None
    ) -> None:
        if mode not in ("r", "a"):
            msg = f"mode must be 'r' or 'a', got {mode!r}"
            raise StoreError(msg)
        with storage_errors(location):
            self._open_at(location, mode, lock)

    def _open_at(
        self, location: Location, mode: Literal["r", "a"], lock: WriterLock | ObjectLock | None
    ) -> None:
        path = location.local
        self.location = location
        self.path = path if path is not None else location.url
        self.mode = mode
        self._where = str(location)
        self._nodes: dict[str, zarr.Array | zarr.Group] = {}
        self._layers: dict[str, _Layer] = {}
        self._cached: dict[str, npt.NDArray[Any]] = {}
        self._present: dict[str, bool] = {}
        self._closed = False
        self._lock: WriterLock | ObjectLock | None = None
        if path is not None and not path.exists():
            msg = f"no run store at {self._where}"
            raise StoreNotFoundError(msg)
        if mode == "a" and lock is None:
            inspect_at(location)  # before making a lock file in what may not be a run store
            lock = acquire_writer_lock(location, "open_run(mode='a')")
        self._lock = lock
        try:
            self.store = location.store(read_only=mode == "r")
            self._root, self._attrs = self._open_root()
            self._check_root()
            if mode == "a":
                self._repair()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            weakref.finalize(self, lock.release)

    def _open_root(self) -> tuple[zarr.Group, dict[str, Any]]:
        """The root group and its attributes, once they are those of a run.

        What was read decides: a half-created store is refused as such. A store that was not a
        run when read but is one now (created meanwhile) is read again.
        """
        for _ in range(2):
            try:
                root = zarr.open_group(self.store, mode="r+" if self.mode == "a" else "r")
                attrs = root.attrs.asdict()
            except (ValueError, OSError, zarr.errors.BaseZarrError):
                attrs = None
            if attrs is not None and "ibframe_format" in attrs and root.metadata.zarr_format == 3:
                return root, attrs
            if attrs is not None and CREATING in attrs:
                raise IncompleteStoreError(half_created_message(self._where, attrs))
            inspect_at(self.location)  # raises, saying what is there, unless a run is there now
        raise damaged(self._where, "its root metadata changed each time it was read")

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> typing.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer lock. Nothing is buffered: each append is on disk when it returns."""
        self._closed = True
        if self._lock is not None:
            self._lock.release()

    def __repr__(self) -> str:
        return (
            f"<ibframe.Run {self.path} layers={self.layers} epochs={len(self.epochs)} "
            f"beta={self.beta} draws={self.draws}>"
        )

    # -- validation ----------------------------------------------------------------------------

    def _invalid(self, key: str, expected: str) -> StoreError:
        value = repr(self._attrs.get(key))
        value = value if len(value) <= 60 else value[:57] + "..."
        return damaged(self._where, f"root attribute {key!r} must be {expected}, got {value}")

    def _check_root(self) -> None:
        """The root attributes a reader relies on, and a group for every layer."""
        fmt = self._attrs.get("ibframe_format")
        if not _is_int(fmt) or fmt not in READABLE_FORMATS:
            readable = " and ".join(map(str, READABLE_FORMATS))
            if _is_int(fmt) and fmt > FORMAT:
                msg = (
                    f"{self._where} has ibframe_format {fmt}, written by a newer ibframe; this "
                    f"ibframe ({ibframe_version()}) reads formats {readable}: upgrade ibframe to read it"
                )
            else:
                msg = (
                    f"{self._where} has ibframe_format {fmt!r}; this ibframe ({ibframe_version()}) "
                    f"reads formats {readable}"
                )
            raise StoreError(msg)
        checks: list[tuple[str, typing.Callable[[Any], bool], str]] = [
            ("epochs", _increasing_epochs, "a list of increasing epoch numbers"),
            ("layers", _layer_names, "a non-empty list of distinct layer names"),
            ("beta", lambda b: _is_real(b) and math.isfinite(b) and b >= 0, "a finite number >= 0"),
            ("draws", lambda d: _is_int(d) and d >= 0, "a whole number >= 0"),
        ]
        if fmt >= 2:
            checks += [(key, _names, "a list of names") for key in ("metrics", "params")]
        for key, valid, expected in checks:
            if not valid(self._attrs.get(key)):
                raise self._invalid(key, expected)
        self._group("layers")
        present = set(child_names(self.store, "layers"))
        for name in self._attrs["layers"]:
            if name not in present:
                raise damaged(
                    self._where,
                    f"root attribute 'layers' names {name}, which has no group layers/{name}",
                )

    def _node(self, path: str) -> zarr.Array | zarr.Group:
        node = self._nodes.get(path)
        if node is None:
            node = open_node(self._root, path, self._where)
            if self.mode == "a" and isinstance(node, zarr.Array):
                node = node.with_config(ARRAY_CONFIG)
            self._nodes[path] = node
        return node

    def _array(self, path: str) -> zarr.Array:
        node = self._node(path)
        if not isinstance(node, zarr.Array):
            raise damaged(self._where, f"{path} is a group where an array belongs")
        return node

    def _group(self, path: str) -> zarr.Group:
        node = self._node(path)
        if not isinstance(node, zarr.Group):
            raise damaged(self._where, f"{path} is an array where a group belongs")
        return node

    def _layer(self, layer: str) -> _Layer:
        """A layer's arrays, their shapes checked against its attributes and the epochs."""
        cached = self._layers.get(layer)
        if cached is not None:
            return cached
        if layer not in self.layers:
            msg = f"run {self.path} has no layer {layer!r} (its layers: {', '.join(self.layers)})"
            raise StoreError(msg)
        base = f"layers/{layer}"
        attrs = self._group(base).attrs.asdict()
        shape = attrs.get("shape")
        if not (
            isinstance(shape, list)
            and shape
            and all(_is_int(s) and s >= 1 for s in shape)
            and attrs.get("units") == math.prod(shape)
            and _is_int(attrs.get("index"))
            and isinstance(attrs.get("deterministic_given_x"), bool)
        ):
            raise damaged(self._where, f"the attributes of {base} (index, shape, units, "
                          "deterministic_given_x) are missing or inconsistent")
        units = attrs["units"]
        s = self._array(f"{base}/S")
        self._check_epoch_array(s, f"{base}/S", (units,), ndim=3)
        s_cond = cond_sample = None
        if self._has_draws(attrs):
            s_cond = self._array(f"{base}/S_cond")
            self._check_epoch_array(s_cond, f"{base}/S_cond", (self.draws, units), ndim=4)
            cond_sample = self._array(f"{base}/cond_sample")
            if tuple(cond_sample.shape) != (s_cond.shape[1],):
                raise damaged(self._where, f"{base}/cond_sample does not match {base}/S_cond")
        found = _Layer(attrs, s, s_cond, cond_sample)
        self._layers[layer] = found
        return found

    def _has_draws(self, layer_attrs: Mapping[str, Any]) -> bool:
        """Whether a layer holds conditional draws: every layer of a run with draws, except
        that from format 2 on a layer that is a function of x keeps none (they would be copies
        of S; format-1 stores hold those copies)."""
        return self.draws > 0 and (self.format < 2 or not layer_attrs["deterministic_given_x"])

    def _check_epoch_array(
        self, array: zarr.Array, path: str, tail: tuple[int, ...], ndim: int
    ) -> None:
        n = len(self._attrs["epochs"])
        if len(array.shape) != ndim or tuple(array.shape[ndim - len(tail) :]) != tail:
            raise damaged(self._where, f"{path} has shape {tuple(array.shape)}, which does not fit "
                          "the layer's attributes")
        if array.shape[0] < n:
            raise damaged(
                self._where,
                f"root attribute 'epochs' lists {n} epochs but {path} holds {array.shape[0]}",
            )

    def _reader(self, array: zarr.Array, path: str, by_epoch: bool = True) -> ArrayReader:
        complete = self.format >= 2 or path.rsplit("/", 1)[-1] in _NEVER_FILL
        epochs = tuple(self._attrs["epochs"]) if by_epoch else None
        return ArrayReader(array, path, self._where, epochs, complete)

    def _data(self, path: str) -> npt.NDArray[Any]:
        """A whole array written once at creation (data/*, cond_sample), read once per Run."""
        values = self._cached.get(path)
        if values is None:
            values = self._reader(self._array(path), path, by_epoch=False)[()]
            self._cached[path] = values
        return values.copy()

    def _committed(self, kind: Literal["metrics", "params"]) -> list[str]:
        """The metric or parameter arrays that belong to the committed epochs."""
        if self.format >= 2:
            return list(self._attrs[kind])
        names = child_names(self.store, kind)
        return sorted(n for n in names if n not in ("zarr.json", "epoch") and not is_leftover(n))

    def _series(self, kind: Literal["metrics", "params"], name: str) -> zarr.Array:
        path = f"{kind}/{name}"
        array = self._array(path)
        if len(array.shape) < 1 or array.shape[0] < len(self._attrs["epochs"]):
            raise damaged(
                self._where,
                f"root attribute 'epochs' lists {len(self._attrs['epochs'])} epochs but {path} "
                f"holds {array.shape[0] if array.shape else 0}",
            )
        return array

    # -- metadata ----------------------------------------------------------------------------

    @property
    def format(self) -> int:
        """The store's ``ibframe_format``."""
        return int(self._attrs["ibframe_format"])

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes (provenance and format)."""
        return dict(self._attrs)

    @property
    def layers(self) -> list[str]:
        """Hidden layer names, in the order of the network."""
        return list(self._attrs["layers"])

    @property
    def epochs(self) -> npt.NDArray[np.int64]:
        """The committed epochs, increasing."""
        return np.asarray(self._attrs["epochs"], dtype=np.int64)

    @property
    def beta(self) -> float:
        """The noise standard deviation (0 for a deterministic network)."""
        return float(self._attrs["beta"])

    @property
    def draws(self) -> int:
        """Conditional draws per conditional sample."""
        return int(self._attrs["draws"])

    @property
    def n_samples(self) -> int:
        """The number of recorded inputs."""
        return int(self._array("data/x").shape[0])

    @property
    def has_labels(self) -> bool:
        """Whether the run stores class labels ``y``."""
        return self._has_data("data/y")

    def _has_data(self, path: str) -> bool:
        """Whether an optional array written at creation (``data/y``, ``data/split``) exists."""
        present = self._present.get(path)
        if present is None:
            present = self._present[path] = bool(sync(self.store.exists(f"{path}/zarr.json")))
        return present

    def layer_attrs(self, layer: str) -> dict[str, Any]:
        """Stored attributes of one layer: index, shape, units, activation, kind, noise, ...

        ``noise`` (how T follows from S) is read as "additive" in a noisy store written before
        the attribute existed, "none" in a deterministic one.
        """
        attrs = dict(self._layer(layer).attrs)
        attrs.setdefault("noise", default_noise_relation(self.beta))
        return attrs

    # -- data ---------------------------------------------------------------------------------

    @property
    def x(self) -> npt.NDArray[Any]:
        """The inputs, (sample, feature...)."""
        return self._data("data/x")

    @property
    def y(self) -> npt.NDArray[np.int64] | None:
        """The integer class labels (sample,), or None."""
        if not self.has_labels:
            return None
        return self._data("data/y")

    @property
    def split(self) -> npt.NDArray[np.str_] | None:
        """"train" or "test" per sample (stored as 0 and 1), or None when the run has no split."""
        if not self._has_data("data/split"):
            return None
        codes = self._data("data/split")
        bad = set(np.unique(codes).tolist()) - {0, 1}
        if bad:
            raise damaged(self._where, f"data/split holds code(s) {sorted(bad)}; only 0 "
                          "(train) and 1 (test) are defined")
        return np.where(codes == 0, "train", "test")

    def _lazy(self, array: zarr.Array, path: str) -> da.Array:
        """A dask view of the committed epochs of ``array``, every chunk checked as it is read."""
        reader = self._reader(array, path)
        n = len(self._attrs["epochs"])
        meta = np.empty((0,) * reader.ndim, dtype=reader.dtype)
        return da.from_array(reader, chunks=array.chunks, name=False, meta=meta)[:n]

    def activations(self, layer: str) -> xr.DataArray:
        """Lazy unconditional S of one layer, dims (epoch, sample, unit)."""
        arrays = self._layer(layer)
        return xr.DataArray(
            self._lazy(arrays.s, f"layers/{layer}/S"),
            dims=("epoch", "sample", "unit"),
            coords={"epoch": self.epochs, "layer": layer},
            name="S",
            attrs=arrays.s.attrs.asdict(),
        )

    def conditional(self, layer: str) -> xr.DataArray | None:
        """Lazy conditional draws of one layer, dims (epoch, cond_sample, draw, unit), or None.

        The ``cond_sample`` coordinate holds each row's index into the samples.
        """
        arrays = self._layer(layer)
        if arrays.s_cond is None or arrays.cond_sample is None:
            return None
        return xr.DataArray(
            self._lazy(arrays.s_cond, f"layers/{layer}/S_cond"),
            dims=("epoch", "cond_sample", "draw", "unit"),
            coords={
                "epoch": self.epochs,
                "cond_sample": self._cond_index(layer),
                "layer": layer,
            },
            name="S_cond",
            attrs=arrays.s_cond.attrs.asdict(),
        )

    def _cond_index(self, layer: str) -> npt.NDArray[np.int64]:
        return self._data(f"layers/{layer}/cond_sample").astype(np.int64)

    def metrics(self, epochs: Sequence[int] | None = None) -> xr.Dataset:
        """The recorded metrics (loss_train, accuracy_test, ...) over the committed epochs, or
        over ``epochs`` only (each must be recorded): a metric is stored one chunk per epoch,
        so a few epochs read a few chunks."""
        if epochs is None:
            positions: slice | npt.NDArray[np.int64] = slice(0, len(self._attrs["epochs"]))
            labels = self.epochs
        else:
            positions = np.asarray([self._epoch_position(int(e)) for e in epochs], dtype=np.int64)
            labels = self.epochs[positions]
        variables = {
            name: ("epoch", self._reader(self._series("metrics", name), f"metrics/{name}")[positions])
            for name in self._committed("metrics")
        }
        return xr.Dataset(variables, coords={"epoch": labels})

    def params(self, epoch: int) -> dict[str, npt.NDArray[Any]]:
        """The model's parameters recorded at ``epoch``."""
        i = self._epoch_position(epoch)
        return {
            name: self._reader(self._series("params", name), f"params/{name}")[i]
            for name in self._committed("params")
        }

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
        arrays = self._layer(layer)
        i = self._epoch_position(epoch)
        has_cond = arrays.s_cond is not None and arrays.cond_sample is not None
        return Block(
            layer=layer,
            epoch=int(epoch),
            layer_index=int(arrays.attrs["index"]),
            s=self._reader(arrays.s, f"layers/{layer}/S")[i],
            s_cond=self._reader(arrays.s_cond, f"layers/{layer}/S_cond")[i] if has_cond else None,
            cond_index=self._cond_index(layer) if has_cond else None,
            y=self.y,
            beta=self.beta,
            deterministic_given_x=bool(arrays.attrs["deterministic_given_x"]),
            device=device,
            layer_attrs=self.layer_attrs(layer),
            context=dict(context or {}),
            run_path=str(self.location),
            storage_options=dict(self.location.storage_options) or None,
        )

    # -- writing ------------------------------------------------------------------------------

    def _require_writer(self) -> None:
        if self.mode != "a":
            msg = f"run {self.path} is open read-only; open it with mode='a' to append"
            raise StoreError(msg)
        if self._closed:
            msg = f"run {self.path} was closed; open it again with open_run(path, mode='a')"
            raise StoreError(msg)
        if self._lock is None or not self._lock.held:
            msg = (
                f"run {self.path}: this process does not hold the writer lock (a forked child "
                "of the writer?); open the run with open_run(path, mode='a') here"
            )
            raise StoreError(msg)

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
        (conditional sample, draws, unit...). Everything is checked before anything is written;
        the epoch is committed by one write of the root attributes once all of it is stored.
        """
        self._require_writer()
        epoch = _as_epoch(epoch)
        committed = self.epochs
        if committed.size and epoch <= committed[-1]:
            what = "was already recorded" if epoch in committed else "comes before the last one"
            msg = f"epoch {epoch} {what} (last recorded: {int(committed[-1])}); nothing was written"
            raise ActivationError(msg)
        extra = set(activations) - set(self.layers)
        extra |= set(conditional or {}) - set(self.layers)
        if extra:
            msg = f"unknown layer(s) {sorted(extra)}; the run's layers are {self.layers}"
            raise ActivationError(msg)
        prepared = {
            layer: self._prepare_layer(layer, activations, conditional) for layer in self.layers
        }
        metric_values = self._prepare_metrics(metrics or {})
        param_values = self._prepare_params(params or {}, epoch)

        n = committed.size
        for layer, (s, s_cond) in prepared.items():
            arrays = self._layer(layer)
            _append(arrays.s, n, s)
            if s_cond is not None and arrays.s_cond is not None:
                _append(arrays.s_cond, n, s_cond)
            _append(self._array(f"layers/{layer}/epoch"), n, np.int64(epoch))
        metric_names = _merged(self._committed("metrics"), metric_values)
        for name in metric_names:
            array = self._writable_series("metrics", name, n, np.dtype(np.float64), ())
            _append(array, n, np.float64(metric_values.get(name, np.nan)))
        _append(self._array("metrics/epoch"), n, np.int64(epoch))
        param_names = _merged(self._committed("params"), param_values)
        for name in param_names:
            given = param_values.get(name)
            if given is None:
                array = self._series("params", name)
                _append(array, n, np.full(array.shape[1:], np.nan))
            else:
                array = self._writable_series("params", name, n, given.dtype, given.shape)
                _append(array, n, given)
        _append(self._array("params/epoch"), n, np.int64(epoch))
        # The commit point: one write of the root metadata, after everything else is stored.
        commit: dict[str, Any] = {"epochs": [*committed.tolist(), epoch]}
        if self.format >= 2:
            commit |= {"metrics": metric_names, "params": param_names}
        self._root.update_attributes(commit)  # one write (attrs.update writes once per key)
        self._attrs.update(commit)

    def _writable_series(
        self, kind: Literal["metrics", "params"], name: str, n: int, dtype: np.dtype[Any],
        shape: tuple[int, ...],
    ) -> zarr.Array:
        """The array of a metric or parameter; a new one holds NaN for the earlier epochs.

        A new array replaces any leftover of an append that failed before its commit.
        """
        if name in self._committed(kind):
            return self._series(kind, name)
        fill = np.nan if dtype.kind in "fc" else 0
        array = self._group(kind).create_array(
            name, shape=(n, *shape), chunks=(1, *shape), dtype=dtype, fill_value=fill,
            dimension_names=["epoch", *[f"{name}_{i}" for i in range(len(shape))]],
            compressors=CODECS, config=ARRAY_CONFIG, overwrite=True,
        )
        if n:
            array[:n] = fill
        self._nodes[f"{kind}/{name}"] = array
        return array

    def _prepare_layer(
        self,
        layer: str,
        activations: Mapping[str, npt.ArrayLike],
        conditional: Mapping[str, npt.ArrayLike] | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        arrays = self._layer(layer)
        if layer not in activations:
            msg = f"activations for layer {layer!r} are missing; every epoch records every layer"
            raise ActivationError(msg)
        shape = tuple(arrays.attrs["shape"])
        units = int(arrays.attrs["units"])
        n = self.n_samples
        what = f"activations of layer {layer!r}"
        values = real_array(what, activations[layer]).astype(np.float32)
        cond_rows = None if arrays.cond_sample is None else self._cond_index(layer)
        s_cond = None
        if values.shape[:1] != (n,):
            msg = f"layer {layer!r}: expected {n} samples, got an array of shape {values.shape}"
            raise ActivationError(msg)
        if values.shape[1:] == shape or values.shape[1:] == (units,):
            s = values.reshape(n, units)
        elif values.shape[2:] in (shape, (units,)):
            s = values[:, 0].reshape(n, units)
            if values.shape[1] > 1:
                if self.draws == 0:
                    msg = f"layer {layer!r}: draws given, but the run was created with draws=0"
                    raise ActivationError(msg)
                if cond_rows is not None:  # else a deterministic layer: its draws are copies
                    s_cond = values[cond_rows, 1:].reshape(len(cond_rows), -1, units)
        else:
            msg = (
                f"layer {layer!r}: expected S of shape ({n}, {units}) or ({n}, 1+draws, {units})"
                f" (unit shape {list(shape)}), got {values.shape}"
            )
            raise ActivationError(msg)
        if conditional is not None and layer in conditional:
            if self.draws == 0:
                msg = f"layer {layer!r}: conditional draws given, but the run has draws=0"
                raise ActivationError(msg)
            what_c = f"conditional draws of layer {layer!r}"
            c = real_array(what_c, conditional[layer]).astype(np.float32)
            if cond_rows is None:  # a layer that is a function of x: its draws are not kept
                check_finite(what_c, c)
            else:
                s_cond = c.reshape(c.shape[0], c.shape[1], -1) if c.ndim >= 3 else c
        if cond_rows is not None:
            expected = (len(cond_rows), self.draws, units)
            if s_cond is None:
                msg = f"layer {layer!r}: the run records {self.draws} conditional draws; none given"
                raise ActivationError(msg)
            if s_cond.shape != expected:
                msg = f"layer {layer!r}: conditional draws must have shape {expected}, got {s_cond.shape}"
                raise ActivationError(msg)
            check_finite(f"conditional draws of layer {layer!r}", s_cond)
        check_finite(what, s)
        return s, s_cond

    def _prepare_metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        for name, value in metrics.items():
            _check_series_name("metric", name)
            number = np.asarray(value) if not isinstance(value, str) else np.asarray(None)
            if number.ndim != 0 or number.dtype.kind not in "biuf":
                msg = f"metric {name!r} must be a real number, got {value!r}"
                raise ActivationError(msg)
            out[name] = float(number)
        check_names("metric", [*self._committed("metrics"), *out], ActivationError)
        return out

    def _prepare_params(
        self, params: Mapping[str, npt.ArrayLike], epoch: int
    ) -> dict[str, npt.NDArray[Any]]:
        committed = self._committed("params")
        n = len(self._attrs["epochs"])
        out = {}
        for name, value in params.items():
            _check_series_name("parameter", name)
            try:
                arr = np.asarray(value)
            except (ValueError, TypeError) as err:
                msg = f"parameter {name!r} must hold numbers in a rectangular array ({err})"
                raise ActivationError(msg) from None
            if arr.dtype.kind not in "biufc":
                msg = f"parameter {name!r} must hold numbers, got {arr.dtype} values"
                raise ActivationError(msg)
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            if name in committed:
                stored = self._series("params", name)
                if tuple(stored.shape[1:]) != arr.shape:
                    msg = f"parameter {name!r} changed shape to {arr.shape}; stored {stored.shape[1:]}"
                    raise ActivationError(msg)
                if not np.can_cast(arr.dtype, stored.dtype, "same_kind"):
                    msg = f"parameter {name!r} changed type to {arr.dtype}; stored {stored.dtype}"
                    raise ActivationError(msg)
            elif n and arr.dtype.kind not in "fc":
                msg = (
                    f"parameter {name!r} holds integers and first appears at epoch {epoch}, after "
                    f"{n} recorded epoch(s), which would need a missing value integers lack; "
                    "record it from the first epoch"
                )
                raise ActivationError(msg)
            out[name] = arr
        check_names("parameter", [*committed, *out], ActivationError)
        for name in committed:
            if name not in out and self._series("params", name).dtype.kind not in "fc":
                msg = (
                    f"parameter {name!r} holds integers and is missing at epoch {epoch}; integers "
                    "have no missing value (NaN), so every epoch must record it"
                )
                raise ActivationError(msg)
        return out

    def _repair(self) -> None:
        """Undo what a writer killed mid-epoch left: uncommitted rows, arrays and temporary files.

        Temporary files are zarr's LocalStore's; on object storage each object is written whole.
        """
        if self.location.local is not None:
            root = self.location.local
            leftovers = [*root.glob("*.partial")]
            for group in ("data", "layers", "metrics", "params"):  # not results/: not ours
                leftovers += (root / group).rglob("*.partial")
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
        n = len(self._attrs["epochs"])
        arrays = [
            self._array(f"layers/{layer}/{name}")
            for layer in self.layers
            for name in ("S", "epoch", "S_cond")
            if name != "S_cond" or self._has_draws(self._layer(layer).attrs)
        ]
        for kind in ("metrics", "params"):
            names = set(child_names(self.store, kind)) - {"zarr.json"}
            committed = {*self._committed(kind), "epoch"}
            for name in sorted(names - committed):  # created by an append that never committed
                sync(self.store.delete_dir(f"{kind}/{name}"))
            arrays.extend(self._array(f"{kind}/{name}") for name in sorted(committed & names))
        for array in arrays:
            if array.shape and array.shape[0] > n:
                array.resize((n, *array.shape[1:]))


def _check_series_name(kind: str, name: str) -> None:
    """A valid name for a metric or parameter series, which cannot be its coordinate."""
    check_name(kind, name, ActivationError)
    if name == "epoch":
        msg = f"invalid {kind} name 'epoch': it is the coordinate of every {kind}"
        raise ActivationError(msg)


def _merged(committed: list[str], new: Mapping[str, Any]) -> list[str]:
    return [*committed, *(name for name in new if name not in committed)]


def _append(array: zarr.Array, n: int, value: Any) -> None:
    if array.shape[0] != n + 1:
        array.resize((n + 1, *array.shape[1:]))
    array[n] = value


def _as_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        msg = f"epoch must be a non-negative integer, got {epoch!r}"
        raise ActivationError(msg)
    return int(epoch)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _increasing_epochs(value: Any) -> bool:
    return (
        isinstance(value, list)
        and all(_is_int(e) and e >= 0 for e in value)
        and all(a < b for a, b in itertools.pairwise(value))
    )


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) for n in value)


def _layer_names(value: Any) -> bool:
    return (
        _names(value)
        and len(value) > 0
        and len(set(value)) == len(value)
        and all(n not in ("", ".", "..") and "/" not in n for n in value)
    )
