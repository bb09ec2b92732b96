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
import typing
import uuid
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ibframe.errors import ParameterError, StoreError, StoreNotFoundError

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
    ds: xr.Dataset, path: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write results to ``.nc`` (netCDF) or ``.zarr``, chosen by the suffix.

    Refuses, with one line, what :func:`check_results_path` refuses: above all a run store,
    which is never written over. An existing results file is replaced only with
    ``overwrite=True``. Missing parent directories are created.
    """
    from ibframe import __version__

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


def load_results(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read results written by :func:`save_results` (or ``ibframe estimate -o``).

    Results of several runs get their ``seed``, ``beta`` and ``experiment`` indexes back
    (:func:`index_runs`), which a file does not keep.
    """
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


def check_results_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The path as a Path, if :func:`save_results` may write there; else one clear error.

    Checks, without writing anything: the suffix (``.nc`` or ``.zarr``); that the path is not
    a run store, nor inside one, nor any directory other than a ``.zarr`` results file that
    ibframe wrote; that it exists only with ``overwrite=True``; that its parent directory
    exists or can be created; and that it can be written.
    """
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


__all__ = ["check_results_path", "load_results", "save_results", "to_bits"]
