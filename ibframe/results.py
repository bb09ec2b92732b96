"""Results files: write an estimate's Dataset to netCDF or Zarr, read it back, convert units."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ibframe.errors import ParameterError, StoreError, StoreNotFoundError


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
    """Write results to ``.nc`` (netCDF) or ``.zarr``, chosen by the suffix."""
    path = check_results_path(path, overwrite=overwrite)
    if path.suffix == ".nc":
        ds.to_netcdf(path)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


def load_results(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read results written by :func:`save_results` (or ``ibframe estimate -o``)."""
    path = Path(path)
    if not path.exists():
        msg = f"no results file at {path}"
        raise StoreNotFoundError(msg)
    try:
        if path.suffix == ".nc":
            return xr.load_dataset(path)
        return xr.open_zarr(path, consolidated=False).load()
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        msg = f"{path} is not a results file that xarray can read: {reason}"
        raise StoreError(msg) from err


def check_results_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The path as a Path, if its suffix is one :func:`save_results` writes (.nc or .zarr)."""
    path = Path(path)
    if path.suffix not in (".nc", ".zarr"):
        msg = f"results go to a .nc or .zarr path, got {str(path)!r}"
        raise ParameterError(msg)
    if path.exists() and not overwrite:
        msg = f"{path} already exists; pass --overwrite (overwrite=True) to replace it"
        raise StoreError(msg)
    return path


__all__ = ["check_results_path", "load_results", "save_results", "to_bits"]
