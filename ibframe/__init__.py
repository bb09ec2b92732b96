"""ibframe: measure information flow in noisy neural networks.

Record a network's hidden representations into a run store, then ask estimators about them::

    import ibframe
    with ibframe.create_run("r.zarr", x=X, y=y, beta=0.1, layers={"h1": 10}, draws=32) as run:
        run.append_epoch(0, {"h1": S1})
    ds = ibframe.estimate("r.zarr", ["sp-mi", "binned-entropy"])

Several runs (a list, or a glob) give a ``run`` dimension; :func:`aggregate` reduces it::

    ds = ibframe.estimate("runs/seed-*.zarr", ["sp-mi"])
    mean_sd = ibframe.aggregate(ds, over="run")          # mi_x_t (mean) and mi_x_t_sd
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

try:
    __version__ = _dist_version("ibframe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from ibframe.block import Block
from ibframe.errors import IbframeError, IbframeWarning
from ibframe.estimator import Estimator
from ibframe.hookspecs import hookimpl
from ibframe.store import Run, create_run, open_run

# Imported on first use: they pull in torch (and, for plot, matplotlib).
_LAZY = {
    "aggregate": "ibframe.runs",
    "run_metrics": "ibframe.runs",
    "estimate": "ibframe.engine",
    "load_results": "ibframe.results",
    "save_results": "ibframe.results",
    "to_bits": "ibframe.results",
    "gaussian_mixture_entropy": "ibframe.kernels.mixture",
    "plot_results": "ibframe.plot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'ibframe' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "Block",
    "Estimator",
    "IbframeError",
    "IbframeWarning",
    "Run",
    "__version__",
    "aggregate",
    "create_run",
    "estimate",
    "gaussian_mixture_entropy",
    "hookimpl",
    "load_results",
    "open_run",
    "plot_results",
    "run_metrics",
    "save_results",
    "to_bits",
]
