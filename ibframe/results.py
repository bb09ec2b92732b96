"""Results files: write an estimate's Dataset to netCDF or Zarr, read it back, convert units.

Writing never destroys a run store, and never replaces anything but an earlier results file,
and that only when asked (``overwrite=True``, ``ibframe estimate --overwrite``). The path is
checked whole by :func:`check_results_path`, which the command line calls before computing, so
that a bad path costs nothing. A file is written beside its target and moved into place, so
that a failed write leaves the earlier file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from zarr.core.sync import sync

from ibframe.errors import ParameterError, StoreError, StoreNotFoundError
from ibframe.store.location import Location, storage_errors

SUFFIXES = (".nc", ".zarr")


def to_bits(ds: xr.Dataset) -> xr.Dataset:
    """Convert every variable in nats to bits (divide by ln 2; ``units`` becomes ``"bit"``)."""
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if var.attrs.get("units") == "nat":
            out[name] = var / np.log(2)
            out[name].attrs = {**var.attrs, "units": "bit"}
    return out


def save_results(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | str:
    """Write results to ``.nc`` (netCDF) or ``.zarr``, chosen by the suffix.

    Refuses, with one line, what :func:`check_results_path` refuses: above all a run store,
    which is never written over. An existing results file is replaced only with
    ``overwrite=True``. Missing parent directories are created. A URL (``s3://...``, with
    ``storage_options``) writes to object storage (:func:`_save_remote`).
    """
    from ibframe import __version__

    location = Location.of(path, storage_options)
    if location.local is None:
        return _save_remote(ds, location, overwrite)
    path = check_results_path(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ds.copy()
    ds.attrs.setdefault("ibframe_version", __version__)  # marks a results file we wrote
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if path.suffix == ".nc":
            ds.to_netcdf(temporary)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
                ds.to_zarr(temporary, mode="w-", consolidated=False, zarr_format=3)
        _replace(temporary, path)
    finally:
        _remove(temporary)
    return path


def _replace(new: Path, path: Path) -> None:
    """Move ``new`` to ``path``; an earlier results file there is removed once ``new`` is in."""
    if not path.is_dir():
        new.replace(path)  # atomic for a file, also over an earlier file
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    path.rename(old)
    try:
        new.rename(path)
    except OSError:
        old.rename(path)
        raise
    shutil.rmtree(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def load_results(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """Read results written by :func:`save_results` (or ``ibframe estimate -o``), by path or URL.

    Results of several runs get their ``seed``, ``beta`` and ``experiment`` indexes back
    (:func:`index_runs`), which a file does not keep.
    """
    location = Location.of(path, storage_options)
    if location.local is None:
        return index_runs(_load_remote(location))
    path = Path(path)
    if not path.exists():
        msg = f"no results file at {path}"
        raise StoreNotFoundError(msg)
    try:
        if path.suffix == ".nc":
            ds = xr.load_dataset(path)
        else:
            ds = xr.open_zarr(path, consolidated=False).load()
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        msg = f"{path} is not a results file that xarray can read: {reason}"
        raise StoreError(msg) from err
    return index_runs(ds)  # several runs: ds.sel(beta=...) as on the estimate's own result


#: Coordinates along ``run`` that results of several runs index, so ``ds.sel(beta=0.1)`` works.
RUN_INDEXES: typing.Final = ("seed", "beta", "experiment")


def index_runs(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its ``seed``, ``beta`` and ``experiment`` coordinates along ``run`` indexed.

    Then ``ds.sel(beta=0.1)`` picks runs out. A file keeps coordinates but not indexes:
    :func:`load_results` calls this on what it reads.
    """
    for name in RUN_INDEXES:
        if name in ds.coords and ds[name].dims == ("run",) and name not in ds.xindexes:
            ds = ds.set_xindex(name)
    return ds


def check_results_path(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | str:
    """The path as a Path, if :func:`save_results` may write there; else one clear error.

    Checks, without writing anything: the suffix (``.nc`` or ``.zarr``); that the path is not
    a run store, nor inside one, nor any directory other than a ``.zarr`` results file that
    ibframe wrote; that it exists only with ``overwrite=True``; that its parent directory
    exists or can be created; and that it can be written. A URL gets the same checks that
    object storage allows (:func:`_check_remote`), and is returned as it is.
    """
    location = Location.of(path, storage_options)
    if location.local is None:
        return _check_remote(location, overwrite).url
    path = Path(path)
    if path.suffix not in SUFFIXES:
        msg = f"results go to a .nc or .zarr path, got {str(path)!r}"
        raise ParameterError(msg)
    for place in (path, *path.absolute().parents):
        if _zarr_attrs(place).get("ibframe_format") is not None:
            where = "is a run store" if place == path else f"is inside the run store {place}"
            msg = f"{path} {where}; results never go there: choose another path"
            raise StoreError(msg)
    if path.exists() or path.is_symlink():
        _check_replaceable(path, overwrite)
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        msg = f"cannot write {path}: {parent} is not a directory"
        raise StoreError(msg)
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
        msg = f"cannot write {path}: {target} is not writable"
        raise StoreError(msg)
    return path


def _check_replaceable(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        if path.suffix == ".nc":
            msg = f"{path} is a directory, not a .nc file: choose another path"
            raise StoreError(msg)
        attrs = _zarr_attrs(path)
        if "ibframe_version" not in attrs:
            msg = (
                f"{path} is a directory that is not a results file written by ibframe; "
                "it is never replaced: choose another path"
            )
            raise StoreError(msg)
    elif path.suffix == ".zarr":
        msg = f"{path} is a file, not a .zarr results directory: choose another path"
        raise StoreError(msg)
    if not overwrite:
        msg = (
            f"{path} already exists; pass overwrite=True (ibframe estimate --overwrite) to "
            "replace it"
        )
        raise StoreError(msg)


def _zarr_attrs(path: Path) -> dict[str, object]:
    """The attributes of the Zarr v3 group at ``path``, or {} if there is none."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (where missing directories would start)."""
    for place in (path, *path.parents):
        if place.exists():
            return place
    return Path.cwd()


# -- results on object storage ------------------------------------------------------------------


def _check_remote(location: Location, overwrite: bool) -> Location:
    """:func:`check_results_path` for a URL: the suffix, no run store there or above it, and an
    existing object replaced only with ``overwrite`` (and a ``.zarr`` only if ibframe wrote it)."""
    where = str(location)
    suffix = Path(location.name).suffix
    if suffix not in SUFFIXES:
        msg = f"results go to a .nc or .zarr path, got {where!r}"
        raise ParameterError(msg)
    store = location.store(read_only=True)
    fs, key = store.fs, store.path  # type: ignore[attr-defined]
    with storage_errors(location):
        location.check_container(store)
        parts = key.split("/")
        for depth in range(len(parts), 1, -1):  # the URL and each prefix above, up to the bucket
            meta = _remote_attrs(fs, "/".join(parts[:depth]))
            if meta.get("ibframe_format") is not None:
                above = "/".join(parts[:depth])
                what = (
                    "is a run store" if depth == len(parts) else f"is inside the run store {above}"
                )
                msg = f"{where} {what}; results never go there: choose another path"
                raise StoreError(msg)
        exists = sync(fs._exists(key))
    if exists:
        if suffix == ".zarr" and "ibframe_version" not in _remote_attrs(fs, key):
            msg = (
                f"{where} exists and is not a results file written by ibframe; it is never "
                "replaced: choose another path"
            )
            raise StoreError(msg)
        if not overwrite:
            msg = (
                f"{where} already exists; pass overwrite=True (ibframe estimate --overwrite) to "
                "replace it"
            )
            raise StoreError(msg)
    return location


def _save_remote(ds: xr.Dataset, location: Location, overwrite: bool) -> str:
    """Write results to object storage.

    A ``.nc`` file is written locally, then uploaded as one object: readers see the old file
    or the new one, never a part. A ``.zarr`` is many objects with no rename to publish them
    at once: an earlier one is removed first, and a write that fails leaves a partial one.
    """
    from ibframe import __version__

    _check_remote(location, overwrite)
    ds = ds.copy()
    ds.attrs.setdefault("ibframe_version", __version__)
    store = location.store(read_only=False)
    fs, key = store.fs, store.path  # type: ignore[attr-defined]
    with storage_errors(location):
        if location.name.endswith(".nc"):
            with tempfile.TemporaryDirectory() as scratch:
                local = Path(scratch) / location.name
                ds.to_netcdf(local)
                sync(fs._pipe_file(key, local.read_bytes()))
        else:
            if sync(fs._exists(key)):
                sync(store.delete_dir(""))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not have a Zarr V3 specification.*")
                ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    return location.url


def _load_remote(location: Location) -> xr.Dataset:
    where = str(location)
    store = location.store(read_only=True)
    fs, key = store.fs, store.path  # type: ignore[attr-defined]
    with storage_errors(location):
        if not sync(fs._exists(key)):
            location.check_container(store)
            msg = f"no results file at {where}"
            raise StoreNotFoundError(msg)
        try:
            if location.name.endswith(".nc"):
                with tempfile.TemporaryDirectory() as scratch:
                    local = Path(scratch) / location.name
                    local.write_bytes(sync(fs._cat_file(key)))
                    return xr.load_dataset(local)
            return xr.open_zarr(store, consolidated=False).load()
        except (ValueError, KeyError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            msg = f"{where} is not a results file that xarray can read: {reason}"
            raise StoreError(msg) from err


def _remote_attrs(fs: Any, key: str) -> dict[str, object]:
    """The attributes of the Zarr v3 group whose prefix is ``key``, or {} if there is none."""
    try:
        meta = json.loads(sync(fs._cat_file(f"{key}/zarr.json")))
    except (FileNotFoundError, ValueError):
        return {}
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else {}


__all__ = ["check_results_path", "load_results", "save_results", "to_bits"]
