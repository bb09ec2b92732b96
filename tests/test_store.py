"""The run store: round trips, plain-xarray readability, refusals that change nothing, crashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
import zarr

import ibframe
from ibframe.errors import ActivationError, StoreError, StoreNotFoundError
from ibframe.store import FORMAT, summarise_epochs


def _inputs(n: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 5)).astype(np.float32), rng.integers(0, 2, n)


def _run(tmp_path, **kwargs):
    x, y = _inputs()
    defaults = {"x": x, "y": y, "beta": 0.1, "layers": {"h1": 3, "conv": (2, 2, 2)}, "draws": 2}
    return ibframe.create_run(tmp_path / "r.zarr", **{**defaults, **kwargs})


def _epoch(rng, n=20, draws=2):
    return {"h1": rng.random((n, 1 + draws, 3)), "conv": rng.random((n, 1 + draws, 2, 2, 2))}


def test_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    split = np.where(np.arange(20) < 16, "train", "test")
    written = []
    with _run(tmp_path, split=split, model={"arch": "test"}, dataset="random") as run:
        for epoch in (0, 2, 7):
            acts = _epoch(rng)
            written.append(acts)
            run.append_epoch(epoch, acts, metrics={"loss_train": epoch / 10},
                             params={"w": np.full((3, 2), epoch)})
    run = ibframe.open_run(tmp_path / "r.zarr")
    assert run.layers == ["h1", "conv"]
    assert run.epochs.tolist() == [0, 2, 7]
    assert run.beta == 0.1 and run.draws == 2
    s = run.activations("conv").compute()
    assert s.dims == ("epoch", "sample", "unit") and s.shape == (3, 20, 8)
    np.testing.assert_allclose(s.sel(epoch=2), written[1]["conv"][:, 0].reshape(20, 8), rtol=1e-6)
    cond = run.conditional("conv").compute()
    assert cond.dims == ("epoch", "cond_sample", "draw", "unit")
    np.testing.assert_allclose(cond.sel(epoch=7), written[2]["conv"][:, 1:].reshape(20, 2, 8),
                               rtol=1e-6)
    # h1 is a function of x (no noise before it): its draws are copies of S, not stored
    assert run.conditional("h1") is None
    assert not (tmp_path / "r.zarr" / "layers" / "h1" / "S_cond").exists()
    assert run.block("h1", 7).s_cond is None
    assert run.metrics()["loss_train"].values.tolist() == [0.0, 0.2, 0.7]
    np.testing.assert_array_equal(run.params(7)["w"], np.full((3, 2), 7))
    assert run.split.tolist() == split.tolist()
    assert run.layer_attrs("conv")["shape"] == [2, 2, 2]
    assert run.layer_attrs("h1")["deterministic_given_x"] is True
    assert run.layer_attrs("conv")["deterministic_given_x"] is False
    assert run.attrs["model"] == {"arch": "test"}


def test_metrics_of_chosen_epochs(tmp_path):
    """Run.metrics(epochs=) gives those epochs, in the order asked, and names a missing one."""
    rng = np.random.default_rng(2)
    with _run(tmp_path) as run:
        for epoch in (0, 2, 7):
            run.append_epoch(epoch, _epoch(rng), metrics={"loss_train": epoch / 10})
    run = ibframe.open_run(tmp_path / "r.zarr")
    picked = run.metrics(epochs=[7, 0])
    assert picked["epoch"].values.tolist() == [7, 0]
    assert picked["loss_train"].values.tolist() == [0.7, 0.0]
    with pytest.raises(StoreError, match="no epoch 3"):
        run.metrics(epochs=[3])


def test_conditional_subset_is_indexed(tmp_path):
    rng = np.random.default_rng(2)
    with _run(tmp_path, conditional_samples=[3, 11]) as run:
        full = _epoch(rng)
        run.append_epoch(0, full)
        direct = rng.random((2, 2, 2, 2, 2))
        run.append_epoch(1, {"h1": full["h1"], "conv": full["conv"][:, 0]},
                         conditional={"conv": direct})
    cond = ibframe.open_run(tmp_path / "r.zarr").conditional("conv")
    assert cond["cond_sample"].values.tolist() == [3, 11]
    np.testing.assert_allclose(cond.sel(epoch=0).values,
                               full["conv"][[3, 11], 1:].reshape(2, 2, 8), rtol=1e-6)
    np.testing.assert_allclose(cond.sel(epoch=1).values, direct.reshape(2, 2, 8), rtol=1e-6)
    block = ibframe.open_run(tmp_path / "r.zarr").block("conv", 1)
    assert block.cond_index.tolist() == [3, 11] and block.s_cond.shape == (2, 2, 8)


def test_plain_xarray_opens_the_store(tmp_path):
    rng = np.random.default_rng(3)
    with _run(tmp_path) as run:
        run.append_epoch(0, _epoch(rng), metrics={"loss_train": 0.5})
    tree = xr.open_datatree(tmp_path / "r.zarr", engine="zarr", consolidated=False)
    assert tree.attrs["ibframe_format"] == FORMAT
    assert tree["layers/h1"].dataset["S"].dims == ("epoch", "sample", "unit")
    ds = xr.open_zarr(tmp_path / "r.zarr", group="layers/conv", consolidated=False)
    assert ds["S_cond"].shape == (1, 20, 2, 8)
    assert ds["epoch"].values.tolist() == [0]


def test_wide_layers_chunk_by_epoch_under_the_budget(tmp_path):
    x, y = _inputs(n=4096)
    run = ibframe.create_run(tmp_path / "w.zarr", x=x, y=y, layers={"conv": (16, 14, 14)})
    array = zarr.open_array(tmp_path / "w.zarr/layers/conv/S", mode="r")
    assert array.chunks[0] == 1
    assert np.prod(array.chunks) * 4 <= 8 * 2**20
    assert array.chunks[1] == 4096
    assert run.draws == 0 and run.conditional("conv") is None


def _snapshot(path):
    run = ibframe.open_run(path)
    return run.epochs.tolist(), {name: run.activations(name).values.copy() for name in run.layers}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a["h1"].__setitem__((0, 0, 0), np.nan), "NaN"),
        (lambda a: a["conv"].__setitem__((1, 0, 0, 0, 0), np.inf), "NaN/inf"),
        (lambda a: a.__setitem__("h1", a["h1"][:, :, :2]), "expected S of shape"),
        (lambda a: a.__setitem__("h1", a["h1"][:5]), "expected 20 samples"),
        (lambda a: a.pop("conv"), "missing"),
        (lambda a: a.__setitem__("h9", a["h1"]), "unknown layer"),
    ],
)
def test_bad_activations_are_refused_and_nothing_changes(tmp_path, change, message):
    rng = np.random.default_rng(4)
    with _run(tmp_path) as run:
        run.append_epoch(0, _epoch(rng))
    before = _snapshot(tmp_path / "r.zarr")
    acts = _epoch(rng)
    change(acts)
    with ibframe.open_run(tmp_path / "r.zarr", mode="a") as run, pytest.raises(ActivationError, match=message):
        run.append_epoch(1, acts)
    after = _snapshot(tmp_path / "r.zarr")
    assert after[0] == before[0]
    for name in before[1]:
        np.testing.assert_array_equal(after[1][name], before[1][name])


def test_epoch_twice_or_backwards_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    with _run(tmp_path) as run:
        run.append_epoch(3, _epoch(rng))
        with pytest.raises(ActivationError, match="already recorded"):
            run.append_epoch(3, _epoch(rng))
        with pytest.raises(ActivationError, match="before the last"):
            run.append_epoch(1, _epoch(rng))
    assert ibframe.open_run(tmp_path / "r.zarr").epochs.tolist() == [3]


def test_bad_declarations_are_refused(tmp_path):
    x, y = _inputs()
    with pytest.raises(ActivationError, match="labels y must have shape"):
        ibframe.create_run(tmp_path / "a.zarr", x=x, y=y[:-1], layers={"h": 2})
    with pytest.raises(ActivationError, match="NaN"):
        ibframe.create_run(tmp_path / "b.zarr", x=np.full((3, 2), np.nan), layers={"h": 2})
    with pytest.raises(StoreError, match="deterministic"):
        ibframe.create_run(tmp_path / "c.zarr", x=x, layers={"h": 2}, draws=3)
    with pytest.raises(ActivationError, match="split"):
        ibframe.create_run(tmp_path / "d.zarr", x=x, layers={"h": 2}, split=["valid"] * 20)
    ibframe.create_run(tmp_path / "e.zarr", x=x, layers={"h": 2})
    with pytest.raises(StoreError, match="already exists"):
        ibframe.create_run(tmp_path / "e.zarr", x=x, layers={"h": 2})


def test_read_only_runs_refuse_appends(tmp_path):
    _run(tmp_path)
    run = ibframe.open_run(tmp_path / "r.zarr")
    with pytest.raises(StoreError, match="read-only"):
        run.append_epoch(0, _epoch(np.random.default_rng(0)))


def test_missing_and_foreign_stores_are_refused(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no run store"):
        ibframe.open_run(tmp_path / "absent.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="not an ibframe run store"):
        ibframe.open_run(tmp_path / "plain.zarr")
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2).attrs["ibframe_format"] = 1
    with pytest.raises(StoreError, match="not an ibframe run store"):
        ibframe.open_run(tmp_path / "v2.zarr")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    with pytest.raises(StoreError):
        ibframe.open_run(tmp_path / "text")
    _run(tmp_path)
    zarr.open_group(tmp_path / "r.zarr", mode="r+").attrs["ibframe_format"] = FORMAT + 1
    with pytest.raises(StoreError, match=f"format {FORMAT + 1}"):
        ibframe.open_run(tmp_path / "r.zarr")


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import zarr
    import ibframe

    path, kill_epoch = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    x = rng.random((50, 4)).astype(np.float32)
    run = ibframe.create_run(path, x=x, beta=0.1, layers={"a": 6, "b": 4}, draws=2)
    original = zarr.Array.__setitem__
    state = {"epoch": None, "writes": 0}

    def dying_setitem(self, key, value):
        if state["epoch"] == kill_epoch:
            state["writes"] += 1
            if state["writes"] == 3:  # after the S of both layers, before b's draws
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, key, value)

    zarr.Array.__setitem__ = dying_setitem
    for epoch in range(10):
        state["epoch"] = epoch
        s = np.full((50, 3, 6), epoch, np.float32), np.full((50, 3, 4), -epoch, np.float32)
        run.append_epoch(epoch, {"a": s[0], "b": s[1]}, metrics={"loss": float(epoch)})
    """
)


@pytest.mark.integration
def test_writer_killed_mid_epoch_leaves_earlier_epochs_readable(tmp_path):
    path = tmp_path / "killed.zarr"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path), "4"], check=False)
    assert proc.returncode == -9  # SIGKILL, mid-epoch
    run = ibframe.open_run(path)
    assert run.epochs.tolist() == [0, 1, 2, 3]
    a = run.activations("a").values
    assert a.shape == (4, 50, 6)
    np.testing.assert_array_equal(a[:, 0, 0], [0, 1, 2, 3])
    assert run.conditional("b").shape == (4, 50, 2, 4)
    assert run.metrics()["loss"].values.tolist() == [0, 1, 2, 3]
    # A writer that reopens the run trims the half-written epoch and carries on.
    with ibframe.open_run(path, mode="a") as resumed:
        s = np.full((50, 3, 6), 4, np.float32), np.full((50, 3, 4), -4, np.float32)
        resumed.append_epoch(4, {"a": s[0], "b": s[1]}, metrics={"loss": 4.0})
    again = ibframe.open_run(path)
    assert again.epochs.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(again.activations("a").values[:, 0, 0], [0, 1, 2, 3, 4])
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert tree["layers/b"].dataset.sizes["epoch"] == 5


def test_overwrite_replaces_only_run_stores(tmp_path):
    x, _ = _inputs()
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match=r"not an ibframe run store.*refusing"):
        ibframe.create_run(precious, x=x, layers={"h": 2}, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file.zarr").write_text("not a directory")
    with pytest.raises(StoreError, match="refusing"):
        ibframe.create_run(tmp_path / "file.zarr", x=x, layers={"h": 2}, overwrite=True)
    ibframe.create_run(tmp_path / "r.zarr", x=x, layers={"h": 2})
    again = ibframe.create_run(tmp_path / "r.zarr", x=x, layers={"h": 3}, overwrite=True)
    assert again.layer_attrs("h")["units"] == 3


def test_epoch_summaries_read_after_the_word_epochs():
    """Messages say "epochs {summary}": a long list is its span and count, not "N epochs ..."."""
    assert summarise_epochs(np.array([0, 1, 5])) == "0, 1, 5"
    assert summarise_epochs(np.arange(0, 1340, 8)) == "0 to 1336 (168 in all)"


def test_layer_noise_is_stored_checked_and_defaulted_for_older_stores(tmp_path):
    run = _run(tmp_path, layers={"h1": {"shape": 3, "noise": "before-pooling"}, "out": 2})
    assert run.layer_attrs("h1")["noise"] == "before-pooling"
    assert run.layer_attrs("out")["noise"] == "additive"  # undeclared in a noisy run
    run.close()
    # a store written before the attribute existed reads as S + Z in a noisy run
    group = zarr.open_group(tmp_path / "r.zarr" / "layers" / "h1", mode="r+")
    del group.attrs["noise"]
    assert ibframe.open_run(tmp_path / "r.zarr").layer_attrs("h1")["noise"] == "additive"
    x, _ = _inputs()
    deterministic = ibframe.create_run(tmp_path / "d.zarr", x=x, layers={"h": 2})
    assert deterministic.layer_attrs("h")["noise"] == "none"
    with pytest.raises(StoreError, match="noise must be one of additive, before-pooling, none"):
        ibframe.create_run(tmp_path / "e.zarr", x=x, layers={"h": {"shape": 2, "noise": "max"}},
                           beta=0.1)
    with pytest.raises(StoreError, match="deterministic run"):
        ibframe.create_run(tmp_path / "f.zarr", x=x, layers={"h": {"shape": 2, "noise": "additive"}})
