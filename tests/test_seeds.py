"""Several seeds: ``ibframe train --seeds``, one store per seed; estimate several runs at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ibframe
from ibframe.cli import main
from ibframe.errors import ParameterError, StoreError
from ibframe.recording.experiments import parse_seeds, seed_paths, train, train_seeds
from ibframe.results import load_results
from ibframe.runs import RunsDifferWarning
from ibframe.testing import make_test_run

#: The smallest spiral run that trains and records: one epoch, 64 inputs, 2 draws.
QUICK = ["--epochs", "1", "--samples", "64", "--draws", "2", "--record", "all"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


# -- parsing and paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0-7", list(range(8))), ("0-3,7", [0, 1, 2, 3, 7]), ("5", [5]), ("2, 0-1, 2", [2, 0, 1]),
     ("4-4", [4])],
)
def test_parse_seeds_reads_ranges_and_lists(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["3-1", "a", "-1", "", "1-", "0-3,,4", "1.5"])
def test_parse_seeds_refuses_what_is_not_seeds(text: str) -> None:
    with pytest.raises(ParameterError, match="--seeds expects"):
        parse_seeds(text)


def test_seed_paths_directory_pattern_and_single(tmp_path: Path) -> None:
    assert seed_paths(tmp_path / "runs", [0, 3]) == [
        tmp_path / "runs" / "seed-0.zarr", tmp_path / "runs" / "seed-3.zarr"]
    assert seed_paths(tmp_path / "r-{seed}.zarr", [1, 2]) == [
        tmp_path / "r-1.zarr", tmp_path / "r-2.zarr"]
    assert seed_paths(tmp_path / "one.zarr", [4]) == [tmp_path / "one.zarr"]  # as before


def test_seed_paths_refuse_one_store_for_several_seeds(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"names one run store, but 2 seeds"):
        seed_paths(tmp_path / "runs.zarr", [0, 1])
    (tmp_path / "file").write_text("")
    with pytest.raises(ParameterError, match="names one run store"):
        seed_paths(tmp_path / "file", [0, 1])
    with pytest.raises(ParameterError, match=r"only the field \{seed\}"):
        seed_paths(tmp_path / "r-{run}.zarr", [0, 1])
    with pytest.raises(ParameterError, match=r"only the field \{seed\}"):
        seed_paths(tmp_path / "r-{}.zarr", [0, 1])


def test_train_seeds_checks_every_store_before_training_any(tmp_path: Path) -> None:
    (tmp_path / "runs" / "seed-1.zarr").mkdir(parents=True)
    with pytest.raises(StoreError, match=r"seed-1\.zarr already exists"):
        train_seeds("spiral", [0, 1], out=tmp_path / "runs", epochs=1, samples=64, draws=2)
    assert not (tmp_path / "runs" / "seed-0.zarr").exists()


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_seeds_write_one_store_per_seed_with_its_seed(tmp_path, capsys):
    out = tmp_path / "runs"
    code, stdout, err = run_cli(["train", "spiral", "--seeds", "0-2", "--out", str(out), *QUICK],
                                capsys)
    assert code == 0, err
    paths = sorted(out.glob("*.zarr"))
    assert [p.name for p in paths] == ["seed-0.zarr", "seed-1.zarr", "seed-2.zarr"]
    runs = [ibframe.open_run(p) for p in paths]
    assert [r.attrs["seed"] for r in runs] == [0, 1, 2]
    assert [r.attrs["training"]["seed"] for r in runs] == [0, 1, 2]
    # different seeds, different initial weights
    first = [r.params(0) for r in runs]
    name = next(k for k in first[0] if k.endswith("weight"))
    assert not np.allclose(first[0][name], first[1][name])
    assert not np.allclose(first[1][name], first[2][name])
    assert "seed 2 (3/3)" in err or "recorded" in err
    assert "recorded 3 runs (seeds 0, 1, 2)" in stdout

    # a glob (quoted, so ibframe expands it) gives a run dimension with the seeds along it
    results = tmp_path / "r.nc"
    code, stdout, err = run_cli(["estimate", str(out / "*.zarr"), "-e", "binned-entropy",
                                 "-o", str(results)], capsys)
    assert code == 0, err
    assert "mean ± sd over 3 runs" in stdout
    ds = load_results(results)
    assert ds.sizes["run"] == 3
    assert ds["seed"].values.tolist() == [0, 1, 2]
    assert set(ds["experiment"].values.tolist()) == {"spiral"}
    np.testing.assert_array_equal(
        ds.sel(seed=1)["entropy_bin"].values,
        ibframe.estimate(paths[1], ["binned-entropy"])["entropy_bin"].values)
    # several paths, as a shell gives a glob, are the same runs; read from the cache
    code, _, err = run_cli(["estimate", *map(str, paths), "-e", "binned-entropy"], capsys)
    assert code == 0
    assert "all results read from the cache in the run stores" in err


@pytest.mark.slow
def test_cli_repeated_seed_and_pattern(tmp_path, capsys):
    pattern = tmp_path / "r{seed}.zarr"
    code, _, err = run_cli(["train", "spiral", "--seed", "3", "--seed", "5", "--out", str(pattern),
                            "--epochs", "0", "--samples", "64", "--draws", "2"], capsys)
    assert code == 0, err
    assert ibframe.open_run(tmp_path / "r3.zarr").attrs["seed"] == 3
    assert ibframe.open_run(tmp_path / "r5.zarr").attrs["seed"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "5-2", "--out", "runs"], "--seeds expects"),
        (["--seeds", "0-1", "--out", "runs.zarr"], "names one run store, but 2 seeds"),
        (["--seeds", "0-1", "--out", "r-{x}.zarr"], "only the field {seed}"),
    ],
)
def test_cli_bad_seeds_are_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "spiral", *args, "--epochs", "0"], capsys)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


# -- estimating several runs ----------------------------------------------------------------------


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    """Three small runs: seeds 0, 1 at beta 0.1 and seed 2 at beta 0.2."""
    paths = []
    for seed, beta in ((0, 0.1), (1, 0.1), (2, 0.2)):
        path = tmp_path / "runs" / f"s{seed}.zarr"
        make_test_run(path, seed=seed, beta=beta, epochs=3).close()
        paths.append(path)
    return paths


def test_several_runs_stack_along_run_with_their_coordinates(three_runs):
    ds = ibframe.estimate(three_runs, ["binned-entropy"])
    assert ds["entropy_bin"].dims[:3] == ("run", "epoch", "layer")
    assert ds["run"].values.tolist() == [p.as_posix() for p in three_runs]
    assert ds["seed"].values.tolist() == [0, 1, 2]
    assert ds["beta"].values.tolist() == [0.1, 0.1, 0.2]
    assert ds.sel(beta=0.1).sizes["run"] == 2
    assert ds.sel(seed=2)["beta"].item() == 0.2
    for i, path in enumerate(three_runs):
        alone = ibframe.estimate(path, ["binned-entropy"], cache=False)
        np.testing.assert_array_equal(ds["entropy_bin"].isel(run=i).values,
                                      alone["entropy_bin"].values)
        np.testing.assert_array_equal(ds["loss_train"].isel(run=i).values,
                                      alone["loss_train"].values)


def test_a_single_run_keeps_its_shape_and_a_list_of_one_has_run(three_runs):
    alone = ibframe.estimate(three_runs[0], ["binned-entropy"])
    assert "run" not in alone.dims
    assert "source" in alone.attrs
    listed = ibframe.estimate([three_runs[0]], ["binned-entropy"])
    assert listed.sizes["run"] == 1
    np.testing.assert_array_equal(listed["entropy_bin"].isel(run=0).values,
                                  alone["entropy_bin"].values)


def test_a_glob_matches_sorted_stores_and_nothing_is_an_error(three_runs):
    ds = ibframe.estimate(str(three_runs[0].parent / "s*.zarr"), ["binned-entropy"])
    assert ds["seed"].values.tolist() == [0, 1, 2]
    with pytest.raises(ParameterError, match="no run store matches"):
        ibframe.estimate(str(three_runs[0].parent / "nothing-*.zarr"), ["binned-entropy"])
    with pytest.raises(ParameterError, match="given twice"):
        ibframe.estimate([three_runs[0], three_runs[0]], ["binned-entropy"])


def test_cached_runs_are_not_computed_again(three_runs):
    first: list[tuple[int, int]] = []
    ibframe.estimate(three_runs, ["binned-entropy"], progress=lambda d, t: first.append((d, t)))
    # 3 runs x 3 layers x 3 epochs, counted as the runs are planned
    assert first[-1] == (27, 27)
    assert [t for _, t in first] == sorted(t for _, t in first)
    again: list[tuple[int, int]] = []
    ibframe.estimate(three_runs, ["binned-entropy"], progress=lambda d, t: again.append((d, t)))
    assert again == [(0, 0)]
    # a new run among cached ones: only its tasks are computed
    make_test_run(three_runs[0].parent / "s3.zarr", seed=3, epochs=3).close()
    more: list[tuple[int, int]] = []
    ibframe.estimate(str(three_runs[0].parent / "s*.zarr"), ["binned-entropy"],
                     progress=lambda d, t: more.append((d, t)))
    assert more[-1] == (9, 9)


def test_runs_with_other_epochs_are_joined_with_nan_and_a_warning(tmp_path):
    make_test_run(tmp_path / "a.zarr", epochs=3).close()
    make_test_run(tmp_path / "b.zarr", epochs=2, seed=1).close()
    with pytest.warns(RunsDifferWarning, match=r"differ in their epochs \(.*b\.zarr has 2 of 3\)"):
        ds = ibframe.estimate([tmp_path / "a.zarr", tmp_path / "b.zarr"], ["binned-entropy"])
    assert ds["epoch"].values.tolist() == [0, 1, 2]
    assert np.isnan(ds["entropy_bin"].sel(epoch=2).isel(run=1)).all()
    assert np.isfinite(ds["entropy_bin"].sel(epoch=2).isel(run=0)).all()


def test_differing_training_settings_become_coordinates(tmp_path):
    common = {"epochs": 0, "samples": 64, "draws": 2}
    train("spiral", out=tmp_path / "tanh.zarr", activation="tanh", **common)
    train("spiral", out=tmp_path / "relu.zarr", activation="relu", **common)
    ds = ibframe.run_metrics([tmp_path / "tanh.zarr", tmp_path / "relu.zarr"])
    assert ds["activation"].values.tolist() == ["tanh", "relu"]
    assert "lr" not in ds.coords  # the same in both
    assert ds["experiment"].values.tolist() == ["spiral", "spiral"]


def test_run_metrics_of_several_runs(three_runs):
    one = ibframe.run_metrics(three_runs[1])
    assert "run" not in one.dims
    several = ibframe.run_metrics(three_runs)
    assert several.sizes["run"] == 3
    np.testing.assert_array_equal(several["loss_test"].sel(seed=1).values, one["loss_test"].values)


# -- Table 1: test errors over seeds ------------------------------------------------------------


def test_test_error_of_the_eval_network_on_the_whole_test_split(tmp_path):
    """accuracy_test_eval is the network in eval mode on every test input, at recorded epochs."""
    import torch

    from ibframe.recording.datasets import spiral
    from ibframe.recording.nn import spiral_mlp

    paths = train_seeds("spiral", [0, 1], out=tmp_path / "runs", epochs=2, samples=64, draws=2,
                        beta=0.1, record="all", lr=0.01)
    data = spiral()
    test = data.indices("test")
    errors = []
    for seed, path in zip([0, 1], paths, strict=True):
        run = ibframe.open_run(path)
        assert run.n_samples == 64  # the recorded inputs: fewer than the test split
        net = spiral_mlp(beta=0.1, activation="tanh")
        net.model.load_state_dict({k: torch.as_tensor(v) for k, v in run.params(2).items()})
        net.model.eval()
        with torch.no_grad():
            out = net.model(torch.as_tensor(data.x[test]))
        accuracy = float((out.argmax(1) == torch.as_tensor(data.y[test])).float().mean())
        stored = run.metrics()["accuracy_test_eval"].sel(epoch=2).item()
        assert stored == pytest.approx(accuracy, abs=1e-6), seed
        errors.append(1 - accuracy)
    # mean ± sd of test errors over the seeds, as Table 1 reports them
    metrics = ibframe.run_metrics(paths)
    error = 1 - metrics["accuracy_test_eval"].isel(epoch=-1)
    assert float(error.mean()) == pytest.approx(np.mean(errors), abs=1e-6)
    assert float(error.std(ddof=1)) == pytest.approx(np.std(errors, ddof=1), abs=1e-6)
