"""The command line: commands work, and user errors print one line and exit 1."""

from __future__ import annotations

import pytest

from ibframe.cli import main, parse_epochs
from ibframe.errors import ParameterError
from ibframe.testing import make_test_run


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def store(tmp_path):
    make_test_run(tmp_path / "r.zarr", epochs=3)
    return tmp_path / "r.zarr"


def test_info_describes_the_run(store, capsys):
    code, out, _ = run_cli(["info", str(store)], capsys)
    assert code == 0
    assert "h1" in out and "h3" in out and "beta: 0.1" in out and "3 recorded" in out


def test_estimators_lists_parameters_and_plugins(capsys):
    code, out, _ = run_cli(["estimators"], capsys)
    assert code == 0
    assert "binned-entropy" in out and "ibframe.estimators.binned" in out
    assert "knn-entropy" in out and "plugin knn from ibframe-knn" in out
    assert "bin_size" in out and "list[float]" in out


def test_estimate_writes_results(store, tmp_path, capsys):
    from ibframe.results import load_results

    out_path = tmp_path / "res.nc"
    code, out, _ = run_cli(["estimate", str(store), "-e", "binned-entropy", "-p", "bin_size=0.1,0.5",
                            "--layers", "h1,h2", "--epochs", "0:3:2", "-o", str(out_path)], capsys)
    assert code == 0, out
    assert "entropy_bin" in out
    ds = load_results(out_path)
    assert list(ds["layer"].values) == ["h1", "h2"]
    assert ds["epoch"].values.tolist() == [0, 2]
    assert ds["bin_size"].values.tolist() == [0.1, 0.5]
    assert "ibframe estimate" in ds.attrs["history"] or "estimate" in ds.attrs["history"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "missing.zarr"], "no run store at"),
        (["estimate", "{store}", "-e", "nope"], "unknown estimator 'nope'; known estimators:"),
        (["estimate", "{store}", "-e", "binned-entropy", "-p", "bin_size=big"],
         "parameter 'bin_size' expects list[float] | None, got 'big'"),
        (["estimate", "{store}", "-e", "binned-entropy", "-p", "colour=red"],
         "no estimator among binned-entropy has a parameter 'colour'"),
        (["estimate", "{store}", "-e", "binned-entropy", "-p", "novalue"], "expects key=value"),
        (["estimate", "{store}", "-e", "binned-entropy", "--epochs", "x"], "--epochs expects"),
        (["estimate", "{store}", "-e", "binned-entropy", "--layers", "h7"], "no layer 'h7'"),
        (["estimate", "{store}", "-e", "binned-entropy", "--epochs", "5:2"], "no epoch selected"),
        (["estimate", "{store}", "-e", "binned-entropy", "--scheduler", "bogus"],
         "unknown scheduler 'bogus'"),
        (["estimate", "{store}", "-e", "binned-entropy", "-p", "bin_size="],
         "bin_size needs one or more distinct values"),
        (["estimate", "{store}", "-e", "binned-entropy", "-o", "out.txt"], ".nc or .zarr path"),
        (["estimate", "{store}", "-e", "sp-mi", "--device", "cuda:7"], "device 'cuda:7'"),
        (["train", "neuron", "--out", "n.zarr", "--device", "tpu"], "device must be"),
        (["plot", "garbage.nc"], "not a results file"),
        (["plot", "{store}"], "is a run store, not results"),
    ],
)
def test_user_errors_print_one_line(store, capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.nc").write_text("not netCDF")
    code, out, err = run_cli([a.replace("{store}", str(store)) for a in args], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip() and "estimating" not in line]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err + out


def test_foreign_store_is_refused(tmp_path, capsys):
    (tmp_path / "foreign.zarr").mkdir()
    (tmp_path / "foreign.zarr" / "data.csv").write_text("1,2\n")
    code, _, err = run_cli(["info", str(tmp_path / "foreign.zarr")], capsys)
    assert code == 1 and "not" in err and "Traceback" not in err


def test_parse_epochs():
    assert parse_epochs("0,5,10") == [0, 5, 10]
    assert parse_epochs("0:6:2,9") == [0, 2, 4, 9]
    with pytest.raises(ParameterError):
        parse_epochs("a:b")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", str(tmp_path / "demo"), "--epochs", "3",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    figures = sorted((tmp_path / "demo" / "figures").glob("*.png"))
    assert {f.stem for f in figures} >= {"mi-epochs", "info-plane", "binned-entropy",
                                          "distance-histograms"}
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "mi_x_t" in out and str(tmp_path / "demo" / "results.nc") in out


def test_train_records_a_run(tmp_path, capsys):
    from ibframe.store import open_run

    code, out, err = run_cli(["train", "neuron", "--out", str(tmp_path / "n.zarr"), "--epochs", "3",
                              "--record", "all"], capsys)
    assert code == 0, err
    assert open_run(tmp_path / "n.zarr").epochs.tolist() == [0, 1, 2, 3]
    assert "recorded" in out
