"""The engine: one graph, result conventions, caching, schedulers, and its refusals."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr

from ibframe.engine import estimate
from ibframe.errors import (
    EstimatorNotFoundError,
    EstimatorRequirementError,
    ParameterError,
    ResultConventionError,
)
from ibframe.estimator import Block, Estimator
from ibframe.results import load_results, save_results, to_bits
from ibframe.testing import make_test_run, validate_result

CALLS: list[tuple[str, int]] = []
_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class MeanS(Estimator):
    """Counts its calls, so tests can see what the cache saved."""

    name: ClassVar[str] = "mean-s"
    description: ClassVar[str] = "Mean of S, for engine tests."
    scale: float = field(default=1.0, metadata={"help": "multiplies the mean"})

    def compute(self, block: Block) -> xr.Dataset:
        with _lock:
            CALLS.append((block.layer, block.epoch))
        value = self.scale * float(block.s.mean())
        return xr.Dataset({"mean_s": ((), value, {"long_name": "mean of S", "units": "1"})})


@pytest.fixture
def run(tmp_path):
    CALLS.clear()
    return make_test_run(tmp_path / "r.zarr", epochs=4)


def test_results_follow_the_conventions(run):
    ds = estimate(run, ["binned-entropy", MeanS()], device="cpu")
    validate_result(ds)
    assert ds["entropy_bin"].dims == ("epoch", "layer", "bin_size")
    assert list(ds["layer"].values) == run.layers
    assert ds["epoch"].values.tolist() == run.epochs.tolist()
    assert ds["loss_train"].dims == ("epoch",)
    assert ds.attrs["source"] == str(run.path)
    assert "ibframe_version" in ds.attrs and "history" in ds.attrs
    attrs = ds["mean_s"].attrs
    assert attrs["estimator"] == "mean-s" and attrs["estimator_params"] == '{"scale":1.0}'
    expected = run.activations("h2").sel(epoch=2).values.mean()
    assert ds["mean_s"].sel(layer="h2", epoch=2).item() == pytest.approx(expected, rel=1e-6)


def test_cached_results_are_not_recomputed_and_new_epochs_only_are(run):
    first = estimate(run, [MeanS()], epochs=[0, 1], device="cpu")
    assert sorted(CALLS) == [(layer, e) for layer in run.layers for e in (0, 1)]
    CALLS.clear()
    again = estimate(run, [MeanS()], epochs=[0, 1], device="cpu")
    assert CALLS == []
    xr.testing.assert_identical(first.drop_attrs(), again.drop_attrs())
    everything = estimate(run, [MeanS()], device="cpu")
    assert sorted(CALLS) == [(layer, e) for layer in run.layers for e in (2, 3)]
    xr.testing.assert_allclose(everything.sel(epoch=[0, 1])["mean_s"], first["mean_s"])
    CALLS.clear()
    estimate(run, [MeanS(scale=2.0)], epochs=[0], device="cpu")  # other parameters, other key
    assert len(CALLS) == len(run.layers)
    CALLS.clear()
    estimate(run, [MeanS()], epochs=[0], cache=False, device="cpu")
    assert len(CALLS) == len(run.layers)


def test_layers_and_epochs_select(run):
    ds = estimate(run, [MeanS()], layers=["h3", "h1"], epochs=[3, 1], device="cpu")
    assert list(ds["layer"].values) == ["h3", "h1"]
    assert ds["epoch"].values.tolist() == [1, 3]


def test_refusals_name_the_problem(run):
    with pytest.raises(EstimatorNotFoundError, match=r"known estimators: .*binned-entropy"):
        estimate(run, ["no-such"])
    with pytest.raises(ParameterError, match="has no parameter 'bins'"):
        estimate(run, ["binned-entropy"], params={"binned-entropy": {"bins": 3}})
    with pytest.raises(ParameterError, match="expects list"):
        estimate(run, ["binned-entropy"], params={"binned-entropy": {"bin_size": "wide"}})
    with pytest.raises(ParameterError, match="not among the estimators"):
        estimate(run, ["binned-entropy"], params={"sp-mi": {"n_mc": 1}})
    with pytest.raises(ParameterError, match="no layer 'h9'"):
        estimate(run, [MeanS()], layers=["h9"])
    with pytest.raises(ParameterError, match="no epoch 99"):
        estimate(run, [MeanS()], epochs=[99])
    with pytest.raises(ParameterError, match="device must be"):
        estimate(run, [MeanS()], device="tpu")


def test_requirements_are_checked_before_computing(tmp_path):
    import ibframe

    x = np.random.default_rng(0).random((10, 2))
    with ibframe.create_run(tmp_path / "nolabels.zarr", x=x, layers={"h": 2}) as bare:
        bare.append_epoch(0, {"h": x})

    @dataclass(frozen=True, kw_only=True)
    class NeedsLabels(MeanS):
        name: ClassVar[str] = "needs-labels"
        needs_labels: ClassVar[bool] = True

    @dataclass(frozen=True, kw_only=True)
    class NeedsEpochs(MeanS):
        name: ClassVar[str] = "needs-epochs"
        needs_epochs: ClassVar[bool] = True

    with pytest.raises(EstimatorRequirementError, match="needs class labels"):
        estimate(bare, [NeedsLabels()])
    with pytest.raises(EstimatorRequirementError, match="at least two"):
        estimate(bare, [NeedsEpochs()])


def test_colliding_variable_names_are_refused(run):
    @dataclass(frozen=True, kw_only=True)
    class Twin(MeanS):
        name: ClassVar[str] = "twin"

    with pytest.raises(ResultConventionError, match="both return a variable 'mean_s'"):
        estimate(run, [MeanS(), Twin()], device="cpu")


def test_progress_is_reported(run):
    seen = []
    estimate(run, [MeanS()], progress=lambda done, total: seen.append((done, total)), cache=False)
    total = len(run.layers) * len(run.epochs)
    assert seen[0] == (0, total) and seen[-1] == (total, total)


def test_unwritable_store_still_computes(run, monkeypatch):
    from ibframe.engine import CacheWarning

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(run.path))

    # a store on a read-only mount; tests run as root, so chmod cannot stand in for it
    monkeypatch.setattr(xr.Dataset, "to_zarr", refuse)
    with pytest.warns(CacheWarning, match="computed but not stored"):
        ds = estimate(run, [MeanS()], epochs=[0])
    assert ds["mean_s"].notnull().all()
    assert not (run.path / "results").exists()


def test_to_bits_and_file_round_trips(run, tmp_path):
    ds = estimate(run, ["binned-entropy"], device="cpu")
    bits = to_bits(ds)
    assert bits["entropy_bin"].attrs["units"] == "bit"
    np.testing.assert_allclose(bits["entropy_bin"] * np.log(2), ds["entropy_bin"])
    for name in ("out.nc", "out.zarr"):
        path = save_results(ds, tmp_path / name)
        back = load_results(path)
        np.testing.assert_allclose(back["entropy_bin"], ds["entropy_bin"])
        assert back["entropy_bin"].attrs["estimator"] == "binned-entropy"
    with pytest.raises(ParameterError, match=r"\.nc or \.zarr"):
        save_results(ds, tmp_path / "out.csv")


@pytest.mark.integration
def test_distributed_cluster_gives_the_threaded_result(run):
    distributed = pytest.importorskip("distributed")
    threaded = estimate(run, ["binned-entropy"], cache=False, device="cpu")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = estimate(run, ["binned-entropy"], cache=False, device="cpu",
                          scheduler=cluster.scheduler_address)
    xr.testing.assert_identical(threaded.drop_attrs(), remote.drop_attrs())
