"""Results files: never over a run store, overwrite only when asked, the path checked up front."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import xarray as xr

from ibframe.errors import ParameterError, StoreError
from ibframe.results import check_results_path, load_results, save_results
from ibframe.store import open_run
from ibframe.testing import make_test_run


@pytest.fixture
def run(tmp_path):
    return make_test_run(tmp_path / "run.zarr", epochs=2)


@pytest.fixture
def results():
    return xr.Dataset(
        {"entropy_bin": (("epoch", "layer"), np.arange(4.0).reshape(2, 2), {"units": "nat"})},
        coords={"epoch": [0, 1], "layer": ["h1", "h2"]},
        attrs={"source": "/somewhere/run.zarr"},
    )


def _intact(run):
    again = open_run(run.path)
    assert again.layers == run.layers and again.epochs.tolist() == run.epochs.tolist()
    assert again.activations("h1").sel(epoch=1).values.shape == (64, 6)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_store_is_never_written_over(run, results, overwrite):
    with pytest.raises(StoreError, match="is a run store; results never go there"):
        save_results(results, run.path, overwrite=overwrite)
    with pytest.raises(StoreError, match="is a run store"):
        check_results_path(run.path, overwrite=overwrite)
    _intact(run)


def test_nor_inside_one(run, results):
    for inside in (run.path / "out.nc", run.path / "results" / "out.zarr"):
        with pytest.raises(StoreError, match=f"is inside the run store {run.path}"):
            save_results(results, inside, overwrite=True)
    _intact(run)
    assert not (run.path / "out.nc").exists()


def test_the_command_line_refuses_it_before_computing(run, capsys):
    from ibframe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", str(run.path), "-e", "binned-entropy", "-o", str(run.path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "is a run store" in err and "Traceback" not in err
    _intact(run)
    assert not (run.path / "results").exists()  # refused before anything was computed


def test_an_existing_results_file_needs_overwrite(results, tmp_path):
    for name in ("out.nc", "out.zarr"):
        path = save_results(results, tmp_path / name)
        with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
            save_results(results * 2, path)
        np.testing.assert_array_equal(load_results(path)["entropy_bin"], results["entropy_bin"])
        save_results(results * 2, path, overwrite=True)
        np.testing.assert_array_equal(load_results(path)["entropy_bin"], 2 * results["entropy_bin"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nc", "out.zarr"]  # no leftovers


def test_a_directory_that_is_not_our_results_is_never_replaced(results, tmp_path):
    folder = tmp_path / "photos.zarr"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(StoreError, match="not a results file written by ibframe"):
        save_results(results, folder, overwrite=True)
    assert (folder / "holiday.jpg").exists()
    plain = tmp_path / "plain.zarr"
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(plain, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="not a results file written by ibframe"):
        save_results(results, plain, overwrite=True)


def test_the_path_is_checked_whole(results, tmp_path):
    with pytest.raises(ParameterError, match=r"\.nc or \.zarr"):
        check_results_path(tmp_path / "out.csv")
    adir = tmp_path / "adir.nc"
    adir.mkdir()
    with pytest.raises(StoreError, match=r"is a directory, not a \.nc file"):
        check_results_path(adir, overwrite=True)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        check_results_path(afile / "sub" / "out.nc")
    zfile = tmp_path / "file.zarr"
    zfile.write_text("x")
    with pytest.raises(StoreError, match=r"is a file, not a \.zarr results directory"):
        check_results_path(zfile, overwrite=True)


def test_missing_parent_directories_are_created(results, tmp_path):
    target = tmp_path / "nodir" / "sub" / "out.nc"
    assert check_results_path(target) == target
    assert not (tmp_path / "nodir").exists()  # checking writes nothing
    save_results(results, target)
    assert load_results(target)["entropy_bin"].sum() == 6.0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: permissions cannot be tested")
def test_an_unwritable_parent_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StoreError, match="is not writable"):
        check_results_path(locked / "out.nc")


def test_results_name_their_run_absolutely_so_plots_find_it_anywhere(tmp_path, monkeypatch):
    """`estimate` from one directory, `plot` from another: scatter.png is drawn; a run that
    moved away is named in a warning, not dropped in silence."""
    from ibframe.engine import estimate
    from ibframe.plot import PlotWarning, plot_results

    work = tmp_path / "work"
    work.mkdir()
    make_test_run(work / "run.zarr", epochs=2)
    monkeypatch.chdir(work)
    ds = estimate("run.zarr", ["binned-entropy"], device="cpu")
    assert ds.attrs["source"] == str(work / "run.zarr")
    save_results(ds, "results.nc")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.warns(PlotWarning) as caught:  # kinds these results cannot draw are skipped
        written = plot_results(work / "results.nc", None, "figures")
    assert "scatter.png" in [p.name for p in written]
    assert not [w for w in caught if "'scatter'" in str(w.message)]
    assert [w for w in caught if "'mi-epochs' skipped" in str(w.message)]

    (work / "run.zarr").rename(tmp_path / "moved.zarr")
    with pytest.warns(PlotWarning) as caught:
        written = plot_results(work / "results.nc", None, "figures2")
    lost = r"'scatter' skipped: the run store .*run\.zarr .*not found"
    assert [w for w in caught if re.search(lost, str(w.message))]
    assert "scatter.png" not in [p.name for p in written]
    assert "binned-entropy.png" in [p.name for p in written]
