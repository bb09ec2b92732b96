"""Every user error on the command line: one line (or Typer's usage message), no traceback.

Issue 8 asks that each of a list of at least 60 user errors, kept here, print one line naming
what is wrong (or, for a malformed command line, Typer's usual usage message and exit 2) and
exit non-zero, never with a traceback. Each case runs ``ibframe.cli.main`` on real stores and
files, damaged on disk where the case says so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ibframe.cli import main
from ibframe.testing import make_test_run

USAGE = "usage"  # expected: Typer's usage message, exit 2
#: Lines that inform rather than complain: the data set used, a progress bar's last state.
INFO = ("data: ", "training ", "estimating ")
NEEDS_STORE = ()
NEEDS_ENGINE = ()


# -- damage done to a copy of a good run store -------------------------------------------------


def _edit_root_attrs(store: Path, **changes: object) -> None:
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(changes)
    meta_path.write_text(json.dumps(meta))


def _chunk(store: Path, array: str, epoch: int | None = None) -> Path:
    """The file of the first chunk of ``array`` (at ``epoch`` for arrays with an epoch axis)."""
    root = store / array / "c"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if epoch is not None:
        files = [p for p in files if p.relative_to(root).parts[0] == str(epoch)]
    return files[0]


#: What each damage does to a store, whether this branch already reports it in one line, and
#: whether `info` meets it (it reads the metadata, not the arrays; `estimate` reads both).
DAMAGE: dict[str, tuple[Callable[[Path], object], bool, bool]] = {
    "another format": (lambda s: _edit_root_attrs(s, ibframe_format=99), True, True),
    "garbled root zarr.json": (lambda s: (s / "zarr.json").write_text("{garbage"), True, True),
    "epochs longer than the arrays": (
        lambda s: _edit_root_attrs(s, epochs=[0, 1, 2, 3, 4]), False, True),
    "epochs not a list": (lambda s: _edit_root_attrs(s, epochs="all"), False, True),
    "layers naming a missing group": (
        lambda s: _edit_root_attrs(s, layers=["h1", "h2", "h3", "h9"]), False, True),
    "beta not a number": (lambda s: _edit_root_attrs(s, beta="large"), False, True),
    "half created": (
        lambda s: [shutil.rmtree(s / g) for g in ("layers", "metrics", "params")], False, True),
    "missing S chunk": (lambda s: _chunk(s, "layers/h1/S", epoch=1).unlink(), False, False),
    "truncated S chunk": (lambda s: _truncate(_chunk(s, "layers/h1/S", epoch=1)), False, False),
    "garbled S chunk": (lambda s: _garble(_chunk(s, "layers/h1/S", epoch=1)), False, False),
    "missing label chunk": (lambda s: _chunk(s, "data/y").unlink(), False, False),
    "garbled array zarr.json": (
        lambda s: (s / "layers/h1/S/zarr.json").write_text("{garbage"), False, False),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


# -- the cases ---------------------------------------------------------------------------------
# {run}: a labelled noisy run of 3 epochs, its binned-entropy results cached; {det}: a
# deterministic run (beta 0); {one}: a run of one epoch; {empty}: a run with no epoch yet;
# {res}: a results file of binned-entropy;
# {orphan}: results whose run store is gone; {damaged}: a copy of {run} damaged as the case's
# fourth item says; {tmp}: the test's directory, also the working directory.

E = ["estimate", "{run}", "-e", "binned-entropy"]

def case(
    what: str, args: list[str], expected: str, damage: str | None = None,
    marks: pytest.MarkDecorator | tuple[()] = (),
) -> Any:
    """One user error: what it is, the command line, and the expected message (or USAGE)."""
    return pytest.param(what, args, expected, damage, marks=marks, id=what)


CASES = [
    # malformed command lines: Typer's usage message, exit 2
    case("unknown command", ["bogus"], USAGE),
    case("estimate without a run", ["estimate"], USAGE),
    case("estimate without -e", ["estimate", "{run}"], USAGE),
    case("-e without a name", ["estimate", "{run}", "-e"], USAGE),
    case("--epochs without a value", [*E, "--epochs"], USAGE),
    case("unknown option", [*E, "--cache-it"], USAGE),
    case("info without a run", ["info"], USAGE),
    case("info with two runs", ["info", "{run}", "{run}"], USAGE),
    case("info with an unknown option", ["info", "{run}", "--x"], USAGE),
    case("estimators with an argument", ["estimators", "extra"], USAGE),
    case("train without an experiment", ["train"], USAGE),
    case("train without --out", ["train", "neuron"], USAGE),
    case("train --epochs abc", ["train", "neuron", "-o", "n.zarr", "--epochs", "abc"], USAGE),
    case("train --beta x", ["train", "neuron", "-o", "n.zarr", "--beta", "x"], USAGE),
    case("train --seed 1.5", ["train", "neuron", "-o", "n.zarr", "--seed", "1.5"], USAGE),
    case("train --augment yes", ["train", "neuron", "-o", "n.zarr", "--augment", "yes"], USAGE),
    case("plot without results", ["plot"], USAGE),
    case("plot -k without a kind", ["plot", "{res}", "-k"], USAGE),
    case("demo --epochs x", ["demo", "--epochs", "x"], USAGE),
    case("--version", ["--version"], USAGE),
    # info on things that are not run stores
    case("info on a missing path", ["info", "missing.zarr"], "no run store at"),
    case("info on an empty directory", ["info", "{tmp}/plain"], "(an empty directory)"),
    case("info on a directory of other files", ["info", "{tmp}/full"], "not"),
    case("info on a text file", ["info", "{tmp}/notes.txt"], "not"),
    case("info on a results file", ["info", "{res}"], "not"),
    # estimate: estimators and parameters
    case("unknown estimator", ["estimate", "{run}", "-e", "nope"], "unknown estimator 'nope'"),
    case("estimator named twice", [*E, "-e", "binned-entropy"], "named twice"),
    case("parameter of the wrong type", [*E, "-p", "bin_size=big"], "expects list[float] | None"),
    case("unknown parameter", [*E, "-p", "colour=red"], "has a parameter 'colour'"),
    case("-p without =", [*E, "-p", "novalue"], "expects key=value"),
    case("-p for an estimator not asked for", [*E, "-p", "sp-mi.n_points=512"], "is not among -e"),
    case("empty list parameter", [*E, "-p", "bin_size="], "bin_size needs one or more"),
    case("negative bin size", [*E, "-p", "bin_size=-1"], "bin_size"),
    case("n_points of one", ["estimate", "{run}", "-e", "sp-mi", "-p", "n_points=1"], "n_points"),
    case("n_points not a number", ["estimate", "{run}", "-e", "sp-mi", "-p", "n_points=many"],
         "n_points"),
    case("dtype not offered", ["estimate", "{run}", "-e", "sp-mi", "-p", "dtype=float16"], "dtype"),
    case("bool parameter not a bool", ["estimate", "{run}", "-e", "sp-mi", "-p", "bounds=maybe"],
     "bounds"),
    # estimate: what to estimate on
    case("--epochs not numbers", [*E, "--epochs", "x"], "--epochs expects"),
    case("--epochs range with step 0", [*E, "--epochs", "0:3:0"], "--epochs expects"),
    case("--epochs empty range", [*E, "--epochs", "5:2"], "no epoch selected"),
    case("--epochs not recorded", [*E, "--epochs", "99"], "has no epoch 99"),
    case("--layers unknown", [*E, "--layers", "h7"], "no layer 'h7'"),
    case("--layers empty names", [*E, "--layers", ","], "no layer ''"),
    case("--scheduler unknown", [*E, "--scheduler", "bogus"], "unknown scheduler 'bogus'"),
    case("--device unknown", [*E, "--device", "tpu"], "device must be"),
    case("--device absent GPU", ["estimate", "{run}", "-e", "sp-mi", "--device", "cuda:7"],
     "device 'cuda:7'"),
    case("estimate on a missing run", ["estimate", "missing.zarr", "-e", "binned-entropy"],
     "no run store at"),
    case("estimate on a results file", ["estimate", "{res}", "-e", "binned-entropy"], "not"),
    case("estimate on a run without epochs", ["estimate", "{empty}", "-e", "binned-entropy"],
         "has no recorded epoch yet"),
    # estimate: what a run lacks
    case("sp-mi on a deterministic run", ["estimate", "{det}", "-e", "sp-mi"], "deterministic"),
    case("slopes on one epoch", ["estimate", "{one}", "-e", "unit-entropy-slopes"],
     "needs at least two"),
    # estimate: the output path, checked before computing
    case("-o with an unknown suffix", [*E, "-o", "out.txt"], ".nc or .zarr path"),
    case("-o onto an existing file", [*E, "-o", "{res}"], "--overwrite"),
    case("-o onto a directory", [*E, "-o", "{tmp}/adir.nc"], "directory",
                 marks=NEEDS_ENGINE),
    case("-o below a file", [*E, "-o", "{tmp}/notes.txt/out.nc"], "notes.txt",
                 marks=NEEDS_ENGINE),
    case("-o onto the run store", [*E, "-o", "{run}", "--overwrite"], "run store",
                 marks=NEEDS_ENGINE),
    case("-o onto another run store", [*E, "-o", "{det}", "--overwrite"], "run store",
                 marks=NEEDS_ENGINE),
    # estimate: absurd parameters and an unreachable scheduler
    case("n_points that cannot fit in memory",
                 ["estimate", "{run}", "-e", "sp-mi", "-p", "n_points=1000000000000"], "memory",
                 marks=NEEDS_ENGINE),
    case("beta that overflows", ["estimate", "{run}", "-e", "sp-mi", "-p", "beta=1e300"],
                 "beta", marks=NEEDS_ENGINE),
    case("unreachable scheduler", [*E, "-p", "bin_size=0.3", "--scheduler", "tcp://127.0.0.1:9"],
         "could not reach the dask scheduler at tcp://127.0.0.1:9", marks=pytest.mark.slow),
    case("unreachable scheduler, all cached",
                 [*E, "--epochs", "0", "--scheduler", "tcp://127.0.0.1:9"], "127.0.0.1:9",
                 marks=NEEDS_ENGINE),
    # train
    case("train an unknown experiment", ["train", "nope", "-o", "n.zarr"], "unknown experiment"),
    case("train onto an existing run", ["train", "neuron", "-o", "{run}"], "pass --overwrite"),
    case("train --overwrite onto a non-store", ["train", "neuron", "-o", "{tmp}/full",
                                            "--overwrite", "--epochs", "1"],
     "not an ibframe run store"),
    case("train --device unknown", ["train", "neuron", "-o", "n.zarr", "--device", "tpu"],
     "device must be"),
    case("train with data for generated data", ["train", "neuron", "-o", "n.zarr", "--data",
                                            "{tmp}/notes.txt"], "generates its own data"),
    case("train szt on a missing file", ["train", "szt", "-o", "n.zarr", "--data", "missing.mat"],
     "data file not found"),
    case("train szt on a file that is not var_u.mat", ["train", "szt", "-o", "n.zarr", "--data",
                                                   "{tmp}/notes.txt"], "not the SZT var_u.mat"),
    case("train mnist-cnn on a directory without IDX files", ["train", "mnist-cnn", "-o", "n.zarr",
                                                          "--data", "{tmp}/plain"], "plain"),
    case("train an activation the experiment lacks", ["train", "neuron", "-o", "n.zarr",
                                                  "--activation", "sigmoid"], "activation"),
    case("train with an unknown optimizer", ["train", "neuron", "-o", "n.zarr", "--optimizer",
                                         "rmsprop"], "optimizer must be"),
    case("train with lr 0", ["train", "neuron", "-o", "n.zarr", "--lr", "0"], "lr > 0"),
    case("train with lr nan", ["train", "neuron", "-o", "n.zarr", "--lr", "nan"], "lr > 0"),
    case("train for -1 epochs", ["train", "neuron", "-o", "n.zarr", "--epochs", "-1"], "epochs >= 0"),
    case("train with batch size 0", ["train", "neuron", "-o", "n.zarr", "--batch-size", "0"],
     "batch_size"),
    case("train with an unknown schedule", ["train", "neuron", "-o", "n.zarr", "--record", "often"],
     "often"),
    # plot
    case("plot a missing file", ["plot", "missing.nc"], "no results file at"),
    case("plot a file that is not results", ["plot", "{tmp}/garbage.nc"], "not a results file"),
    case("plot a run store", ["plot", "{run}"], "is a run store, not results"),
    case("plot an unknown kind", ["plot", "{res}", "-k", "bogus"], "bogus"),
    case("plot an unknown format", ["plot", "{res}", "-f", "jpg"], "jpg"),
    case("plot a kind the results cannot make", ["plot", "{res}", "-k", "info-plane"], "mi_x_t"),
    case("plot scatter without a run", ["plot", "{orphan}", "-k", "scatter"], "--run",
         marks=NEEDS_ENGINE),
    case("plot into a file", ["plot", "{res}", "-o", "{tmp}/notes.txt"], "notes.txt"),
    # demo
    case("demo on an unknown device", ["demo", "--device", "tpu", "--epochs", "1", "-o", "d"],
     "device must be"),
    case("demo into a file", ["demo", "-o", "{tmp}/notes.txt", "--epochs", "1"], "notes.txt"),
]

# damaged stores: one line naming the store, for `info` and for `estimate`
for damage, (_, reported, in_metadata) in DAMAGE.items():
    # --no-cache: results cached before the damage were computed from intact data
    commands = [["estimate", "{damaged}", "-e", "binned-entropy", "--no-cache"]]
    for command in [["info", "{damaged}"], *commands] if in_metadata else commands:
        CASES.append(case(f"{command[0]}: {damage}", command, "damaged.zarr", damage,
                          marks=() if reported else NEEDS_STORE))


# -- the stores the cases run on ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Good stores and a results file, made once; each case works on copies."""
    import ibframe
    from ibframe.store import create_run

    base = tmp_path_factory.mktemp("stores")
    run = make_test_run(base / "run.zarr", epochs=3)
    make_test_run(base / "one.zarr", epochs=1)
    det = create_run(base / "det.zarr", x=run.x, y=run.y, layers={"h1": 6}, beta=0.0)
    det.append_epoch(0, {"h1": np.tanh(run.x[:, :6])[:, None, :]})
    ibframe.estimate(run, ["binned-entropy"], device="cpu")  # cached in the store
    ds = ibframe.estimate(base / "one.zarr", ["binned-entropy"], device="cpu")
    ibframe.save_results(ds, base / "res.nc")
    gone = make_test_run(base / "gone.zarr", epochs=1)
    ibframe.save_results(ibframe.estimate(gone, ["binned-entropy"], device="cpu"),
                         base / "orphan.nc")
    shutil.rmtree(gone.path)
    create_run(base / "empty.zarr", x=run.x, layers={"h1": 6}, beta=0.1)
    return {"run": base / "run.zarr", "one": base / "one.zarr", "det": base / "det.zarr",
            "res": base / "res.nc", "orphan": base / "orphan.nc", "empty": base / "empty.zarr"}


@pytest.mark.parametrize(("what", "args", "expected", "damage"), CASES)
def test_user_error_gives_one_line_and_no_traceback(
    what, args, expected, damage, stores, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    paths = {name: tmp_path / path.name for name, path in stores.items()}
    for name, path in stores.items():
        if path.is_dir():
            shutil.copytree(path, paths[name])
        else:
            shutil.copy(path, paths[name])
    (tmp_path / "plain").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("\\documentclass{article}\n")
    (tmp_path / "adir.nc").mkdir()
    (tmp_path / "notes.txt").write_text("not data\n")
    (tmp_path / "garbage.nc").write_text("not netCDF")
    if damage is not None:
        shutil.copytree(paths["run"], tmp_path / "damaged.zarr")
        DAMAGE[damage][0](tmp_path / "damaged.zarr")
    names = {**{k: str(v) for k, v in paths.items()}, "tmp": str(tmp_path),
             "damaged": str(tmp_path / "damaged.zarr")}
    argv = [a.format(**names) for a in args]

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    code, out, err = exit_info.value.code, captured.out, captured.err
    assert "Traceback" not in out + err
    if expected == USAGE:  # Typer's message: the usage line (for most errors) and a framed error
        assert code == 2, err
        assert "─ Error ─" in err, err
        assert "Usage: ibframe" in err or "requires an argument" in err, err
        return
    assert code == 1, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(INFO)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]


def test_the_list_is_long_enough():
    assert len(CASES) >= 60
    assert len({p.id for p in CASES}) == len(CASES)  # every case named once
