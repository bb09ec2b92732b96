"""The clustering estimators: distance histograms, per-unit entropy slopes, cosine similarity."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr
from scipy.spatial.distance import pdist

import ibframe
from ibframe.engine import estimate
from ibframe.errors import EstimatorRequirementError, ParameterError
from ibframe.estimator import Block
from ibframe.estimators.clustering import (
    CosineSimilarity,
    DistanceHistogramEstimator,
    UnitEntropySlopes,
)
from ibframe.plugins import estimator_registry
from ibframe.testing import EstimatorChecks, make_test_run, validate_result

EPOCHS = (0, 1, 3)


def _make_run(path, *, beta=0.0, seed=0, n=60, scale=1.0):
    """A small run: a tanh layer of 4 units and a ReLU layer of 3, three labelled classes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    y = np.arange(n) % 3
    run = ibframe.create_run(
        path,
        x=x,
        y=y,
        beta=beta,
        layers={
            "h1": {"shape": 4, "activation": "tanh"},
            "h2": {"shape": 3, "activation": "relu"},
        },
    )
    w1, w2 = rng.standard_normal((6, 4)), rng.standard_normal((4, 3))
    for epoch in EPOCHS:
        h1 = np.tanh((1 + epoch) * x @ w1)
        h2 = scale * np.maximum(h1 @ w2 * (1 + epoch), 0)
        run.append_epoch(epoch, {"h1": h1, "h2": h2}, metrics={"loss_train": 1.0 / (1 + epoch)})
    return run


@pytest.fixture
def run(tmp_path):
    return _make_run(tmp_path / "a.zarr")


def _block(run, estimator, layer, epoch):
    return run.block(layer, epoch, context=estimator.layer_context(run, layer))


def test_registered_through_the_builtin_plugin():
    registry = estimator_registry()
    for name in ("distance-histogram", "unit-entropy-slopes", "cosine-similarity"):
        assert registry.plugin_of(name) == "ibframe.estimators.clustering"


# -- distance-histogram --------------------------------------------------------------------------


def test_distance_histogram_matches_pdist(run):
    est = DistanceHistogramEstimator(bins=12)
    block = _block(run, est, "h1", 3)
    ds = est.compute(block)
    scale = float(ds["distance_scale"])
    assert scale == pytest.approx(2 * math.sqrt(4))  # tanh layer of 4 units: [-1, 1]^4
    distances = pdist(block.s.astype(np.float64))
    i, j = np.triu_indices(block.s.shape[0], k=1)
    same = block.y[i] == block.y[j]
    for kind, mask in (("within", same), ("between", ~same)):
        counts, _ = np.histogram(distances[mask], bins=12, range=(0, scale))
        np.testing.assert_array_equal(ds["distance_count"].sel(pair=kind), counts)
        assert int(ds["pair_count"].sel(pair=kind)) == mask.sum()
        assert float(ds["distance_mean"].sel(pair=kind)) == pytest.approx(distances[mask].mean())
        density = ds["distance_density"].sel(pair=kind)
        assert float((density * 1 / 12).sum()) == pytest.approx(1.0)  # all pairs in range


def test_distance_bins_are_relative_with_bounds(run):
    est = DistanceHistogramEstimator(bins=4)
    ds = est.compute(_block(run, est, "h1", 0))
    np.testing.assert_allclose(ds["distance_bin"], [0.125, 0.375, 0.625, 0.875])
    assert ds["distance_bin"].attrs["bounds"] == "distance_bin_bounds"
    np.testing.assert_allclose(ds["distance_bin_bounds"][:, 0], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(ds["distance_bin_bounds"][:, 1], [0.25, 0.5, 0.75, 1.0])
    assert list(ds["pair"].values) == ["within", "between"]
    for var in ds.data_vars.values():
        assert {"long_name", "units"} <= set(var.attrs)


def test_unbounded_layer_range_bounds_every_epoch(run):
    est = DistanceHistogramEstimator()
    context = est.layer_context(run, "h2")
    largest = max(pdist(run.block("h2", e).s.astype(np.float64)).max() for e in EPOCHS)
    assert largest <= context["max_distance"] <= 2 * largest
    for epoch in EPOCHS:  # so no pair of any epoch is out of range
        ds = est.compute(run.block("h2", epoch, context=context))
        assert int(ds["distance_count"].sum()) == int(ds["pair_count"].sum())


def test_max_distance_parameter_and_squared_metric(run):
    assert DistanceHistogramEstimator(max_distance=7.5).layer_context(run, "h2") == {
        "max_distance": 7.5,
        "range_from": "parameter",
    }
    squared = DistanceHistogramEstimator(metric="sqeuclidean").layer_context(run, "h1")
    assert squared["max_distance"] == pytest.approx(16.0)
    assert DistanceHistogramEstimator(metric="cosine").layer_context(run, "h2")["max_distance"] == 2


def test_subsampling_is_seeded_and_shared_across_epochs(run):
    est = DistanceHistogramEstimator(max_samples=20, seed=5)
    first = est.compute(_block(run, est, "h1", 0))
    again = est.compute(_block(run, est, "h1", 0))
    xr.testing.assert_identical(first, again)
    assert int(first["pair_count"].sum()) == 20 * 19 // 2
    other_seed = DistanceHistogramEstimator(max_samples=20, seed=6)
    assert not first.identical(other_seed.compute(_block(run, other_seed, "h1", 0)))


def test_noisy_distances_need_noise_and_are_seeded(tmp_path, run):
    est = DistanceHistogramEstimator(noisy=True)
    with pytest.raises(EstimatorRequirementError, match="beta = 0"):
        est.check_run(run, ["h1"])
    noisy_run = _make_run(tmp_path / "noisy.zarr", beta=0.3)
    est.check_run(noisy_run, ["h1"])
    context = est.layer_context(noisy_run, "h1")
    assert context["max_distance"] > 4.0  # widened for the noise
    a = est.compute(noisy_run.block("h1", 1, context=context))
    b = est.compute(noisy_run.block("h1", 1, context=context))
    clean = DistanceHistogramEstimator().compute(noisy_run.block("h1", 1, context=context))
    xr.testing.assert_identical(a, b)
    assert float(a["distance_mean"].sel(pair="within")) > float(
        clean["distance_mean"].sel(pair="within")
    )


@pytest.mark.parametrize(
    "params",
    [{"bins": 0}, {"metric": "l1"}, {"max_distance": -1.0}, {"max_samples": 1}],
)
def test_distance_histogram_validates_parameters(params):
    with pytest.raises(ParameterError):
        DistanceHistogramEstimator(**params)


def test_distance_histogram_needs_labels():
    block = Block(
        layer="h",
        epoch=0,
        layer_index=1,
        s=np.zeros((3, 2), np.float32),
        s_cond=None,
        cond_index=None,
        y=None,
        beta=0.0,
        deterministic_given_x=True,
        context={"max_distance": 1.0},
    )
    with pytest.raises(EstimatorRequirementError, match="labels"):
        DistanceHistogramEstimator().compute(block)


# -- unit-entropy-slopes -------------------------------------------------------------------------


def _slope_block(epoch, s):
    return Block(
        layer="h",
        epoch=epoch,
        layer_index=1,
        s=s.astype(np.float32),
        s_cond=None,
        cond_index=None,
        y=None,
        beta=0.0,
        deterministic_given_x=True,
    )


def test_unit_entropy_slopes_match_polyfit_on_linearly_falling_entropy():
    """Unit 0 takes 2^(8 - e) equally likely values at epoch e: H = (8 - e) ln 2, exactly linear.

    The epochs are not evenly spaced, so the slope against the epoch number (-ln 2 per epoch)
    differs from one against the position in the list: this pins the documented choice.
    """
    n, epochs = 256, [0, 1, 3, 4]
    rng = np.random.default_rng(1)
    est = UnitEntropySlopes(bin_sizes=[0.5, 1.0])
    pieces = []
    for epoch in epochs:
        falling = np.arange(n) % 2 ** (8 - epoch)
        noise = rng.integers(0, 1 + epoch, n)  # a unit with an irregular trend
        pieces.append(est.compute(_slope_block(epoch, np.stack([falling, noise], axis=1))))
    ds = est.finalize_layer(xr.concat(pieces, dim="epoch").assign_coords(epoch=epochs))
    entropy = ds["unit_entropy"].sel(unit_bin_size=1.0)
    np.testing.assert_allclose(entropy.sel(unit=0), [(8 - e) * np.log(2) for e in epochs])
    slopes = ds["unit_entropy_slope"]
    assert float(slopes.sel(unit_bin_size=1.0, unit=0)) == pytest.approx(-np.log(2))
    for size in (0.5, 1.0):
        for unit in (0, 1):
            expected = np.polyfit(epochs, ds["unit_entropy"].sel(unit_bin_size=size, unit=unit), 1)[0]
            assert float(slopes.sel(unit_bin_size=size, unit=unit)) == pytest.approx(expected)
        per_unit = slopes.sel(unit_bin_size=size).values
        assert float(ds["unit_entropy_slope_mean"].sel(unit_bin_size=size)) == pytest.approx(
            per_unit.mean()
        )
        assert float(ds["unit_entropy_slope_std"].sel(unit_bin_size=size)) == pytest.approx(
            per_unit.std()
        )
        assert float(ds["unit_entropy_slope_negative"].sel(unit_bin_size=size)) == pytest.approx(
            np.mean(per_unit < 0)
        )
    assert slopes.attrs["units"] == "nat/epoch"


def test_unit_entropy_uses_the_floor_grid():
    est = UnitEntropySlopes(bin_sizes=[0.1])
    s = np.array([[0.01, 0.0], [0.05, 0.0], [0.15, 0.0], [0.25, 0.0]])
    ds = est.compute(_slope_block(0, s))
    expected = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    np.testing.assert_allclose(ds["unit_entropy"].sel(unit_bin_size=0.1), [expected, 0.0])
    assert list(ds["unit"].values) == [0, 1]


@pytest.mark.parametrize("sizes", [[], [0.0], [1e-3, 1e-3], [float("nan")]])
def test_unit_entropy_slopes_validate_bin_sizes(sizes):
    with pytest.raises(ParameterError, match="bin_sizes"):
        UnitEntropySlopes(bin_sizes=sizes)


def test_unit_entropy_slopes_from_cli_strings():
    est = UnitEntropySlopes.from_params({"bin_sizes": "1e-3,1e-2"})
    assert est.bin_sizes == (1e-3, 1e-2)
    assert est.params()["bin_sizes"] == [1e-3, 1e-2]


# -- cosine-similarity ---------------------------------------------------------------------------


def test_cosine_similarity_between_runs(tmp_path, run):
    twin = _make_run(tmp_path / "b.zarr", scale=2.5)  # same inputs, h2 scaled: cosine 1
    est = CosineSimilarity(other=str(twin.path), bins=4)
    est.check_run(run, ["h1", "h2"])
    ds = est.compute(_block(run, est, "h2", 1))
    defined = int(ds["cosine_count"].sum())
    assert int(ds["cosine_count"][-1]) == defined  # all in the last bin, [0.5, 1]
    assert float(ds["cosine_mean"]) == pytest.approx(1.0)
    assert float(ds["cosine_std"]) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(ds["cosine_bin"], [-0.75, -0.25, 0.25, 0.75])
    assert ds["cosine_bin"].attrs["bounds"] == "cosine_bin_bounds"


def test_cosine_similarity_matches_direct_computation(tmp_path, run):
    rng = np.random.default_rng(9)
    # Another network on the same inputs, with unrelated activations.
    other = ibframe.create_run(tmp_path / "c.zarr", x=run.x, y=run.y, layers={"h1": 4, "h2": 3})
    s_other = rng.standard_normal((run.n_samples, 4))
    other.append_epoch(1, {"h1": s_other, "h2": rng.standard_normal((run.n_samples, 3))})
    est = CosineSimilarity(other=str(other.path), bins=10)
    ds = est.compute(_block(run, est, "h1", 1))
    s = run.block("h1", 1).s.astype(np.float64)
    cos = np.sum(s * s_other, 1) / np.linalg.norm(s, axis=1) / np.linalg.norm(s_other, axis=1)
    np.testing.assert_array_equal(ds["cosine_count"], np.histogram(cos, 10, range=(-1, 1))[0])
    assert float(ds["cosine_mean"]) == pytest.approx(cos.mean(), rel=1e-5)
    with pytest.raises(EstimatorRequirementError, match="epoch 0 is not recorded"):
        est.compute(_block(run, est, "h1", 0))


def test_cosine_similarity_refuses_mismatched_runs(tmp_path, run):
    with pytest.raises(ParameterError, match="other=PATH"):
        CosineSimilarity().check_run(run, ["h1"])
    different_inputs = _make_run(tmp_path / "d.zarr", seed=1)
    with pytest.raises(EstimatorRequirementError, match="same inputs"):
        CosineSimilarity(other=str(different_inputs.path)).check_run(run, ["h1"])
    narrow = ibframe.create_run(tmp_path / "e.zarr", x=run.x, y=run.y, layers={"h1": 2})
    with pytest.raises(EstimatorRequirementError, match="4 units"):
        CosineSimilarity(other=str(narrow.path)).check_run(run, ["h1"])
    with pytest.raises(EstimatorRequirementError, match="not in"):
        CosineSimilarity(other=str(narrow.path)).layer_context(run, "h2")
    with pytest.raises(ibframe.errors.StoreNotFoundError):
        CosineSimilarity(other=str(tmp_path / "missing.zarr")).check_run(run, ["h1"])


# -- through the engine --------------------------------------------------------------------------


def test_estimate_assembles_the_clustering_results(tmp_path, run):
    twin = _make_run(tmp_path / "b.zarr")
    ds = estimate(
        run,
        ["distance-histogram", "unit-entropy-slopes", "cosine-similarity"],
        params={
            "distance-histogram": {"bins": 8},
            "unit-entropy-slopes": {"bin_sizes": [0.01, 0.1]},
            "cosine-similarity": {"other": str(twin.path), "bins": 5},
        },
        device="cpu",
        scheduler="synchronous",
    )
    assert ds["distance_count"].sizes == {"epoch": 3, "layer": 2, "pair": 2, "distance_bin": 8}
    assert ds["unit_entropy_slope"].sizes == {"layer": 2, "unit_bin_size": 2, "unit": 4}
    assert bool(ds["unit_entropy_slope"].sel(layer="h2", unit=3).isnull().all())  # 3 units
    assert float(ds["cosine_mean"].min()) == pytest.approx(1.0)
    assert ds["distance_count"].attrs["estimator"] == "distance-histogram"
    validate_result(ds)  # the slopes summarise all epochs: over_epochs=1, no epoch dim
    again = estimate(run, {"distance-histogram": {"bins": 8}}, device="cpu")  # from the cache
    xr.testing.assert_equal(again["distance_count"], ds["distance_count"])


def test_slopes_need_two_epochs(run):
    with pytest.raises(EstimatorRequirementError, match="two"):
        estimate(run, ["unit-entropy-slopes"], epochs=[1], device="cpu")


def test_block_without_context_takes_its_own_range(run):
    block = run.block("h2", 3)  # no layer context: the bounding box of this epoch
    ds = DistanceHistogramEstimator(bins=10).compute(block)
    largest = pdist(block.s.astype(np.float64)).max()
    assert largest <= float(ds["distance_scale"]) <= 2 * largest
    assert "epoch 3 only" in ds["distance_scale"].attrs["comment"]
    assert int(ds["distance_count"].sum()) == int(ds["pair_count"].sum())


class TestDistanceHistogramConformance(EstimatorChecks):
    estimator_class = DistanceHistogramEstimator
    params: ClassVar[dict] = {"bins": 16, "max_samples": 40}


class TestUnitEntropySlopesConformance(EstimatorChecks):
    estimator_class = UnitEntropySlopes
    params: ClassVar[dict] = {"bin_sizes": [0.01, 0.1]}

    def test_slopes_alone_have_no_epoch(self, tmp_path):
        run = make_test_run(tmp_path / "conformance.zarr")
        ds = estimate(run, [UnitEntropySlopes(bin_sizes=(0.01, 0.1))], cache=False, device="cpu")
        across = [name for name in ds.data_vars if str(name).startswith("unit_entropy_slope")]
        assert across
        assert all("epoch" not in ds[name].dims and "layer" in ds[name].dims for name in across)
        assert all(ds[name].attrs["over_epochs"] == 1 for name in across)
