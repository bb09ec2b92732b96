"""One big (layer, epoch) task split into parts that run apart: the same estimate, the same cache
entry, on threads and on a cluster of worker processes, and parts that survive a dying worker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import xarray as xr

from ibframe.engine import choose_parts, estimate
from ibframe.errors import ParameterError
from ibframe.estimator import Block, Estimator, compute_in_parts, part_bounds
from ibframe.kernels.distances import pair_rows
from ibframe.testing import make_test_run

# a small test network with few draws does not converge; that is not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore::ibframe.errors.QualityWarning")

#: sp-mi aimed at a small error, so that stage 1 adds points, with the pairwise bounds too
SP = {"sp-mi": {"target_stderr": 0.004, "max_points": 3000, "bounds": True}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_test_run(tmp_path_factory.mktemp("split") / "r.zarr", n=200, epochs=2, draws=5)


def _assert_same(split: xr.Dataset, whole: xr.Dataset) -> None:
    """Equal to float precision: the parts' float32 kernels see other runs of the same points
    (a part of one point may take another route than the whole), so entropies agree to about
    1e-6 nats, the kernel's own accuracy; counts exactly."""
    assert set(split.data_vars) == set(whole.data_vars)
    for name, var in whole.data_vars.items():
        if var.dtype.kind in "iub":
            np.testing.assert_array_equal(split[name].values, var.values, err_msg=name)
        else:
            np.testing.assert_allclose(split[name].values, var.values, rtol=1e-6, atol=2e-6,
                                       err_msg=name)


def test_split_sp_mi_equals_one_task_with_its_errors_and_biases(run):
    whole = estimate(run, SP, cache=False, device="cpu")
    assert (whole["n_points"].sel(layer="h2") > 1024).all(), "stage 1 must add points here"
    for parts in (2, 3, 7):
        _assert_same(estimate(run, SP, cache=False, device="cpu", split=parts), whole)


def test_more_parts_than_points_or_inputs_leave_some_empty(run):
    params = {"sp-mi": {"n_points": 16, "max_conditionals": 5}}
    whole = estimate(run, params, cache=False, device="cpu", layers=["h2"])
    _assert_same(estimate(run, params, cache=False, device="cpu", layers=["h2"], split=20), whole)


def test_split_distance_histogram_counts_every_pair_once(run):
    whole = estimate(run, ["distance-histogram"], cache=False, device="cpu")
    split = estimate(run, ["distance-histogram"], cache=False, device="cpu", split=4)
    _assert_same(split, whole)
    n = run.n_samples
    assert (split["pair_count"].sum("pair") == n * (n - 1) // 2).all()


def test_the_split_is_not_in_the_cache_key(tmp_path):
    """Results computed in parts are cached under the unsplit key, and read back as they are."""
    run = make_test_run(tmp_path / "r.zarr", n=120, epochs=2, draws=3)
    reference = estimate(make_test_run(tmp_path / "s.zarr", n=120, epochs=2, draws=3), SP,
                         cache=False, device="cpu")
    first = estimate(run, SP, device="cpu", split=3)
    seen: list[tuple[int, int]] = []
    again = estimate(run, SP, device="cpu", progress=lambda *p: seen.append(p))
    assert seen == [(0, 0)]  # everything from the cache
    xr.testing.assert_identical(first.drop_attrs(), again.drop_attrs())
    _assert_same(again, reference)


def test_progress_counts_the_parts(run):
    seen: list[tuple[int, int]] = []
    estimate(run, ["distance-histogram"], cache=False, device="cpu", split=3, layers=["h1"],
             progress=lambda *p: seen.append(p))
    # per task: 3 parts, a combine step and the finish
    total = len(run.epochs) * 5
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [done for done, _ in seen] == list(range(total + 1))


def test_a_split_must_be_a_positive_number(run):
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ParameterError, match="split must be"):
            estimate(run, ["distance-histogram"], cache=False, split=bad)


def test_part_bounds_cover_every_item_once():
    for total in (0, 1, 7, 100):
        for parts in (1, 3, 8, 150):
            bounds = [part_bounds(total, p, parts) for p in range(parts)]
            assert [i for a, b in bounds for i in range(a, b)] == list(range(total))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_pair_rows_cut_near_equal_pair_counts():
    n, parts = 1000, 8
    bounds = [pair_rows(n, p, parts) for p in range(parts)]
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    pairs = [sum(n - 1 - i for i in range(a, b)) for a, b in bounds]
    assert sum(pairs) == n * (n - 1) // 2
    assert max(pairs) - min(pairs) <= n  # within one row's pairs of an even share


def test_the_cluster_size_and_the_costs_choose_the_parts():
    # one big block among small ones: cut to about an even share each, one part per slot at most
    assert choose_parts([80.0, 1.0, 1.0], [1, 10, 10], slots=8) == [7, 1, 1]  # share 100/8
    assert choose_parts([40.0, 0.0], [1, 50], slots=4) == [4, 1]
    # many equal tasks already fill the slots
    assert choose_parts([5.0], [100], slots=8) == [1]
    # parts no shorter than the minimum; one slot or no known cost: no split
    assert choose_parts([5.0], [1], slots=8) == [2]
    assert choose_parts([1.0], [1], slots=8) == [1]
    assert choose_parts([80.0], [1], slots=1) == [1]
    assert choose_parts([0.0, 0.0], [3, 3], slots=8) == [1, 1]


# -- a plugin's splittable estimator, and workers that die -------------------------------------


@dataclass(frozen=True, kw_only=True)
class MeanInParts(Estimator):
    """Mean of S summed in row parts; part 1 of stage 0 kills its worker process the first
    time it runs (when ``marker`` names a file that does not exist yet)."""

    name: ClassVar[str] = "mean-in-parts"
    description: ClassVar[str] = "Mean of S from partial sums, for split tests."
    split_stages: ClassVar[int] = 1
    marker: str = field(default="", metadata={"help": "file whose absence kills a worker once"})

    def compute_part(self, block: Block, stage: int, part: int, parts: int, carry: Any) -> Any:
        if self.marker and part == 1 and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-task, as a killed machine would
        start, stop = part_bounds(block.s.shape[0], part, parts)
        rows = np.asarray(block.s[start:stop], dtype=np.float64)
        return float(rows.sum()), rows.size

    def combine_parts(self, stage: int, results: list[Any], carry: Any) -> Any:
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def finish(self, block: Block, carry: Any) -> xr.Dataset:
        total, count = carry
        return xr.Dataset({"mean_s": ((), total / count, {"long_name": "mean of S", "units": "1"})})


def test_a_plugin_splits_by_the_same_protocol(run):
    est = MeanInParts()
    block = run.block("h2", 1)
    expected = float(np.asarray(block.s, dtype=np.float64).mean())
    for parts in (1, 4):
        assert compute_in_parts(est, block, parts)["mean_s"].item() == pytest.approx(expected)
    assert est.compute(block)["mean_s"].item() == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.integration
def test_a_cluster_computes_split_tasks_and_retries_a_dead_workers_part(run, tmp_path):
    """Two worker processes; one of them dies (os._exit) in a part of a split task; dask runs
    the part again on a live worker and the estimate is whole. sp-mi split over the cluster
    equals the one-task result, and the progress counts every part."""
    distributed = pytest.importorskip("distributed")
    marker = tmp_path / "died"
    whole = estimate(run, SP, cache=False, device="cpu", layers=["h2", "h3"])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        seen: list[tuple[int, int]] = []
        ds = estimate(run, [MeanInParts(marker=str(marker))], cache=False, device="cpu",
                      scheduler=cluster.scheduler_address, split=3,
                      progress=lambda *p: seen.append(p))
        split = estimate(run, SP, cache=False, device="cpu", layers=["h2", "h3"], split=3,
                         scheduler=cluster.scheduler_address)
    assert marker.exists(), "no worker died: the test did not test a retry"
    for layer in run.layers:
        for epoch in run.epochs:
            s = run.activations(layer).sel(epoch=epoch).values.astype(np.float64)
            assert ds["mean_s"].sel(layer=layer, epoch=epoch).item() == pytest.approx(s.mean())
    total = len(run.layers) * len(run.epochs) * (3 + 1 + 1)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    _assert_same(split, whole)


def test_the_command_line_splits_and_caches_under_the_same_key(tmp_path, capsys):
    from ibframe.cli import main

    path = make_test_run(tmp_path / "r.zarr", n=80, epochs=2, draws=3).path
    whole = estimate(make_test_run(tmp_path / "s.zarr", n=80, epochs=2, draws=3),
                     ["distance-histogram"], cache=False, device="cpu")
    for args in (["--split", "3", "-o", str(tmp_path / "a.nc")], ["-o", str(tmp_path / "b.nc")]):
        with pytest.raises(SystemExit) as code:
            main(["estimate", str(path), "-e", "distance-histogram", "--device", "cpu", *args])
        assert code.value.code == 0
    assert "all results read from the cache" in capsys.readouterr().err
    for name in ("a.nc", "b.nc"):
        _assert_same(xr.load_dataset(tmp_path / name)[list(whole.data_vars)], whole)
    with pytest.raises(SystemExit) as code:
        main(["estimate", str(path), "-e", "distance-histogram", "--split", "0"])
    assert code.value.code == 2  # refused by the option's own check
