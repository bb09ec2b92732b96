"""The engine: one graph, result conventions, caching, schedulers, and its refusals."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr

from ibframe.engine import EstimationWarning, estimate
from ibframe.errors import (
    EstimationFailed,
    EstimatorNotFoundError,
    EstimatorRequirementError,
    ParameterError,
    ResultConventionError,
    TaskFailure,
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
    assert ds.attrs["source"] == str(run.path.absolute())
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
        estimate(run, ["binned-entropy"], params={"sp-mi": {"n_points": 512}})
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
    from zarr.storage import LocalStore

    from ibframe.engine import CacheWarning

    async def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(run.path))

    # a store on a read-only mount; tests run as root, so chmod cannot stand in for it
    monkeypatch.setattr(LocalStore, "_set", refuse)
    with pytest.warns(CacheWarning, match="computed but not stored") as caught:
        ds = estimate(run, [MeanS()], epochs=[0, 1])
    assert len(caught) == 1  # one warning, not one per task
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


# -- partial failures -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FailsOnce(MeanS):
    """Raises on one (layer, epoch), as a plugin with a bug would."""

    name: ClassVar[str] = "fails-once"
    layer: str = field(default="h2", metadata={"help": "where it fails"})
    epoch: int = field(default=2, metadata={"help": "when it fails"})

    def compute(self, block: Block) -> xr.Dataset:
        if (block.layer, block.epoch) == (self.layer, self.epoch):
            with _lock:
                CALLS.append((block.layer, block.epoch))
            msg = "no convergence\nsecond line of the message"
            raise FloatingPointError(msg)
        return super().compute(block)


def test_a_failing_task_keeps_every_other_result(run):
    with pytest.raises(EstimationFailed) as caught:
        estimate(run, [FailsOnce(), "binned-entropy"], device="cpu")
    (failure,) = caught.value.failures
    assert failure == TaskFailure("fails-once", "h2", 2, "FloatingPointError: no convergence")
    assert str(failure) == (
        "fails-once failed on layer 'h2' at epoch 2: FloatingPointError: no convergence"
    )
    result = caught.value.result
    assert result["entropy_bin"].notnull().all()
    mean = result["mean_s"]
    assert np.isnan(mean.sel(layer="h2", epoch=2))
    assert int(mean.notnull().sum()) == len(run.layers) * len(run.epochs) - 1
    expected = run.activations("h3").sel(epoch=2).values.mean()
    assert mean.sel(layer="h3", epoch=2).item() == pytest.approx(expected, rel=1e-6)

    CALLS.clear()
    with pytest.warns(EstimationWarning, match="fails-once failed on layer 'h2' at epoch 2"):
        again = estimate(run, [FailsOnce(), "binned-entropy"], device="cpu", errors="warn")
    assert CALLS == [("h2", 2)]  # the rest was cached as it finished
    xr.testing.assert_identical(again.drop_attrs(), result.drop_attrs())


def test_nothing_succeeding_raises_even_when_warning(run):
    for errors in ("raise", "warn"):
        with pytest.raises(EstimationFailed) as caught:
            estimate(run, [FailsOnce()], layers=["h2"], epochs=[2], errors=errors)
        assert caught.value.result is None
    with pytest.raises(ParameterError, match="errors must be 'raise' or 'warn'"):
        estimate(run, [MeanS()], errors="ignore")


@dataclass(frozen=True, kw_only=True)
class Wobbly(MeanS):
    """Returns one more unit from epoch 2 on: dims that change between epochs."""

    name: ClassVar[str] = "wobbly"

    def compute(self, block: Block) -> xr.Dataset:
        units = 3 if block.epoch < 2 else 4
        values = np.full(units, float(block.s.mean()))
        return xr.Dataset(
            {"per_unit": ("unit", values, {"long_name": "a value per unit", "units": "1"})},
            coords={"unit": np.arange(units)},
        )


def test_dims_that_change_between_epochs_are_a_clear_error(run):
    with pytest.raises(EstimationFailed) as caught:  # no cache: the first to finish sets them
        estimate(run, [Wobbly()], layers=["h1"], device="cpu", cache=False)
    assert len(caught.value.failures) in (1, 2, 3)
    assert all("ResultConventionError" in f.error for f in caught.value.failures)
    estimate(run, [Wobbly()], layers=["h1"], epochs=[0, 1], device="cpu")
    with pytest.raises(EstimationFailed) as caught:
        estimate(run, [Wobbly()], layers=["h1"], device="cpu")  # epochs 0, 1 come from the cache
    failures = caught.value.failures
    assert [f.epoch for f in failures] == [2, 3]
    for failure in failures:
        assert failure.error.startswith("ResultConventionError: wobbly returned [per_unit(unit=4)")
        assert "where epoch 0 had [per_unit(unit=3) float64" in failure.error
        assert "the same variables, dims and coordinates at every epoch" in failure.error
    assert caught.value.result["per_unit"].sel(epoch=[0, 1]).notnull().all()


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_keeps_what_finished_and_the_rerun_computes_the_rest(run, tmp_path):
    """A subprocess is interrupted by SIGINT while a task hangs; every task that finished
    before was cached, so the rerun here computes only the others."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from dataclasses import dataclass
            from typing import ClassVar
            import xarray as xr
            import ibframe

            @dataclass(frozen=True, kw_only=True)
            class MeanS(ibframe.Estimator):
                name: ClassVar[str] = "mean-s"
                description: ClassVar[str] = "Mean of S; hangs at epoch 2."
                scale: float = 1.0

                def compute(self, block):
                    if block.epoch >= 2:
                        print("hanging", flush=True)
                        time.sleep(600)
                    value = self.scale * float(block.s.mean())
                    return xr.Dataset({{"mean_s": ((), value, {{"long_name": "mean of S",
                                                                "units": "1"}})}})

            ibframe.estimate({str(run.path)!r}, [MeanS()], device="cpu", scheduler="synchronous",
                             progress=lambda done, total: print("done", done, flush=True))
            """
        )
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    finished = 0
    for line in child.stdout:
        if line.startswith("done"):
            finished = int(line.split()[1])
        if line.startswith("hanging"):
            break
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    total = len(run.layers) * len(run.epochs)
    assert 0 < finished < total
    CALLS.clear()
    seen = []
    ds = estimate(run, [MeanS()], device="cpu", progress=lambda done, count: seen.append(count))
    assert seen[0] == len(CALLS) == total - finished
    assert ds["mean_s"].notnull().all()


# -- refusals before any work -----------------------------------------------------------------


def test_work_that_cannot_fit_in_memory_is_refused_before_starting(run):
    with pytest.raises(ParameterError, match=r"sp-mi on layer 'h1' needs about .*PiB of memory"):
        estimate(run, ["sp-mi"], params={"sp-mi": {"n_points": 10**12}}, device="cpu")
    assert not (run.path / "results").exists()


def test_overflowing_values_are_one_line(run, capsys):
    from ibframe.cli import main

    with pytest.raises(ParameterError, match=r"beta=1e\+300 is out of range"):
        estimate(run, ["sp-mi"], params={"sp-mi": {"beta": 1e300}}, device="cpu")
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", str(run.path), "-e", "sp-mi", "-p", "beta=1e300", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1
    assert len(err.splitlines()) == 1 and "out of range" in err


@pytest.mark.integration
def test_an_unreachable_scheduler_is_an_error_even_when_all_is_cached(run):
    pytest.importorskip("distributed")
    import dask

    estimate(run, [MeanS()], epochs=[0], device="cpu")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}),\
            pytest.raises(ParameterError, match="could not reach the dask scheduler"):
        estimate(run, [MeanS()], epochs=[0], device="cpu", scheduler=f"tcp://127.0.0.1:{port}")


# -- smaller defects ------------------------------------------------------------------------


def test_a_single_value_is_accepted_where_a_list_is_declared(run):
    ds = estimate(run, {"binned-entropy": {"bin_size": 0.5},
                        "unit-entropy-slopes": {"bin_sizes": 0.1}}, device="cpu")
    assert ds["bin_size"].values.tolist() == [0.5]
    assert ds["unit_bin_size"].values.tolist() == [0.1]


def test_progress_false_is_silent_and_a_cached_run_reports_zero_tasks(run):
    estimate(run, [MeanS()], progress=False, device="cpu")
    seen = []
    estimate(run, [MeanS()], progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 0)]


def test_binned_entropy_and_unit_slopes_keep_their_own_bin_grids(run):
    ds = estimate(
        run,
        {"binned-entropy": {"bin_size": [0.1, 0.5]}, "unit-entropy-slopes": {"bin_sizes": [0.01]}},
        device="cpu",
    )
    assert ds["bin_size"].values.tolist() == [0.1, 0.5]
    assert ds["unit_bin_size"].values.tolist() == [0.01]
    assert ds["entropy_bin"].notnull().all() and ds["mi_bin_t_y"].notnull().all()
    for layer in run.layers:  # per unit, only the narrower layers' missing units are NaN
        units = run.layer_attrs(layer)["units"]
        values = ds["unit_entropy"].sel(layer=layer).isel(unit=slice(0, units))
        assert values.notnull().all()
        assert ds["unit_entropy_slope_mean"].sel(layer=layer).notnull().all()
