"""ibframe: measure information flow in noisy neural networks.

Record a network's hidden representations into a run store, then ask estimators about them::

    import ibframe
    with ibframe.create_run("r.zarr", x=X, y=y, beta=0.1, layers={"h1": 10}) as run:
        run.append_epoch(0, {"h1": S1})
    ds = ibframe.estimate("r.zarr", ["binned-entropy"])
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

try:
    __version__ = _dist_version("ibframe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from ibframe.errors import IbframeError, IbframeWarning
from ibframe.estimator import Block, Estimator
from ibframe.store import Run, create_run, open_run

__all__ = [
    "Block",
    "Estimator",
    "IbframeError",
    "IbframeWarning",
    "Run",
    "__version__",
    "create_run",
    "open_run",
]
