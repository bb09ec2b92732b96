"""Helpers for testing estimators: the result-convention validator and a conformance suite.

A plugin author checks an estimator by subclassing :class:`EstimatorChecks` in their tests::

    from ibframe.testing import EstimatorChecks

    class TestMyEstimator(EstimatorChecks):
        estimator_class = MyEstimator
        params = {"k": 3}
"""

from __future__ import annotations

import itertools
import json
import typing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from ibframe.cache import Structure, check_storable
from ibframe.errors import ResultConventionError
from ibframe.estimator import Estimator

if typing.TYPE_CHECKING:
    from ibframe.store import Run

_REQUIRED_VAR_ATTRS = ("long_name", "units", "estimator", "estimator_params", "estimator_version")


def validate_result(ds: xr.Dataset) -> None:
    """Raise :class:`ResultConventionError` where ``ds`` breaks the result conventions.

    Checks: ``epoch`` and ``layer`` dims on every estimator variable (``epoch`` may be missing
    only from summaries across epochs, marked ``over_epochs=1``), no positional ``dim_N``
    names, the required variable attributes with JSON ``estimator_params``, ``units="nat"``
    rather than ``"nit"``, and consistent bin bounds (``<q>_bin`` with ``bounds`` naming a
    ``(<q>_bin, nv)`` variable whose midpoints are the bin centres).
    """
    for dim in ds.dims:
        if str(dim).startswith("dim_"):
            msg = f"positional dimension name {dim!r}; name every dimension"
            raise ResultConventionError(msg)
    for name, var in ds.data_vars.items():
        if str(name).endswith("_bounds"):
            continue
        if "estimator" not in var.attrs:
            continue  # run metrics (loss_train, ...) carried along
        for attr in _REQUIRED_VAR_ATTRS:
            if attr not in var.attrs:
                msg = f"variable {name!r} lacks the {attr!r} attribute"
                raise ResultConventionError(msg)
        if "layer" not in var.dims:
            msg = f"variable {name!r} has dims {var.dims}; it needs 'layer'"
            raise ResultConventionError(msg)
        if "epoch" not in var.dims and not var.attrs.get("over_epochs"):
            msg = (
                f"variable {name!r} has no 'epoch' dim; only summaries across epochs (made in "
                "finalize_layer, with attribute over_epochs=1) may lack it"
            )
            raise ResultConventionError(msg)
        if var.attrs["units"] == "nit":
            msg = f"variable {name!r}: information is in 'nat', never 'nit'"
            raise ResultConventionError(msg)
        try:
            json.loads(var.attrs["estimator_params"])
        except (TypeError, ValueError) as err:
            msg = f"variable {name!r}: estimator_params is not JSON"
            raise ResultConventionError(msg) from err
    for coord_name, coord in ds.coords.items():
        bounds = coord.attrs.get("bounds")
        if bounds is None:
            continue
        if bounds not in ds.variables:
            msg = f"coordinate {coord_name!r} names bounds {bounds!r}, which is missing"
            raise ResultConventionError(msg)
        edges = ds[bounds]
        if edges.dims != (coord_name, "nv") or edges.sizes["nv"] != 2:
            msg = f"bounds {bounds!r} must have dims ({coord_name!r}, 'nv') with nv = 2"
            raise ResultConventionError(msg)
        mids = edges.values.mean(axis=1)
        if not np.allclose(mids, coord.values):
            msg = f"coordinate {coord_name!r} is not the midpoint of its bounds {bounds!r}"
            raise ResultConventionError(msg)


def make_test_run(
    path: str | Path,
    *,
    n: int = 64,
    widths: tuple[int, ...] = (6, 4, 2),
    epochs: int = 3,
    beta: float = 0.1,
    draws: int = 4,
    seed: int = 0,
) -> Run:
    """A small noisy tanh network recorded as the paper defines it, for estimator tests.

    Inputs are 8 random bits, labels a parity-like function; each layer is tanh(W T + b) with
    T the noisy output of the layer before, the weights growing with the epoch so that
    representations change. Conditional draws repeat each input with fresh noise upstream.
    """
    from ibframe.store import create_run

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(n, 8)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) % 2).astype(np.int64)
    sizes = (8, *widths)
    weights = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in itertools.pairwise(sizes)]
    layers = {f"h{i + 1}": {"shape": w, "activation": "tanh"} for i, w in enumerate(widths)}
    run = create_run(path, x=x, y=y, beta=beta, layers=layers, draws=draws, seed=seed, overwrite=True)
    for epoch in range(epochs):
        scale = 1.0 + epoch
        t = np.repeat(x[:, None, :], 1 + draws, axis=1)  # draw 0 and the conditional draws
        outputs = {}
        for i, w in enumerate(weights):
            s = np.tanh(scale * t @ w)
            outputs[f"h{i + 1}"] = s
            t = s + beta * rng.standard_normal(s.shape)
        run.append_epoch(epoch, outputs, metrics={"loss_train": 1.0 / scale, "loss_test": 1.2 / scale})
    return run


class EstimatorChecks:
    """Conformance checks every estimator should pass. Subclass and set ``estimator_class``."""

    estimator_class: ClassVar[type[Estimator]]
    #: Parameters for the checks (as Python values).
    params: ClassVar[dict[str, Any]] = {}

    def _run(self, tmp_path: Path) -> Run:
        return make_test_run(tmp_path / "conformance.zarr")

    def test_metadata(self) -> None:
        from ibframe.registry import EstimatorRegistry

        registry = EstimatorRegistry()
        registry.add(self.estimator_class)  # the host's own validation
        assert self.estimator_class.name in registry

    def test_parameters_round_trip_through_strings(self) -> None:
        est = self.estimator_class.from_params(self.params)
        as_strings = {
            k: ",".join(map(str, v)) if isinstance(v, list) else str(v)
            for k, v in est.params().items()
            if v is not None
        }
        assert self.estimator_class.from_params(as_strings).params() == est.params()

    def test_compute_returns_labelled_dataset(self, tmp_path: Path) -> None:
        run = self._run(tmp_path)
        est = self.estimator_class.from_params(self.params)
        block = run.block(run.layers[-1], int(run.epochs[-1]))
        ds = est.compute(block)
        assert isinstance(ds, xr.Dataset)
        assert ds.data_vars, "compute returned no variable"
        for name, var in ds.data_vars.items():
            assert "long_name" in var.attrs, name
            assert "units" in var.attrs, name
            assert not {"epoch", "layer"} & set(var.dims), name

    def test_compute_has_one_structure_at_every_epoch(self, tmp_path: Path) -> None:
        """The same variables, dims, sizes, dtypes and coordinates at the first and last epoch,
        storable in the results cache, and a memory estimate the engine can check."""
        run = self._run(tmp_path)
        est = self.estimator_class.from_params(self.params)
        layer = run.layers[-1]
        first, last = (est.compute(run.block(layer, int(e))) for e in run.epochs[[0, -1]])
        check_storable(first)
        one, other = (Structure.of(ds.expand_dims(epoch=[0])) for ds in (first, last))
        assert one == other, f"{one.describe()} at the first epoch, {other.describe()} at the last"
        assert est.memory_bytes(run, layer) > 0

    def test_compute_is_reproducible(self, tmp_path: Path) -> None:
        run = self._run(tmp_path)
        est = self.estimator_class.from_params(self.params)
        block = run.block(run.layers[-1], int(run.epochs[-1]))
        xr.testing.assert_identical(est.compute(block), est.compute(block))

    def test_estimate_follows_conventions(self, tmp_path: Path) -> None:
        from ibframe.engine import estimate

        run = self._run(tmp_path)
        est = self.estimator_class.from_params(self.params)
        ds = estimate(run, [est], cache=False, device="cpu")
        validate_result(ds)
        assert list(ds["layer"].values) == run.layers
        assert ds.sizes["epoch"] == len(run.epochs)
