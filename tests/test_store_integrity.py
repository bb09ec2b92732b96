"""Damaged or edited run stores are refused with one line naming the store and the problem.

A chunk deleted, truncated or garbled inside a committed epoch, an unreadable ``zarr.json``, or
root attributes edited by hand (``epochs`` longer than the arrays or not a list, ``layers``
naming a missing group) must never read as data (zarr would fill a missing chunk with the fill
value) and never give a traceback: each is a :class:`StoreError` naming the store, the array
and the epoch, which the command line prints as one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import ibframe
from ibframe.cli import main
from ibframe.errors import StoreError

EPOCHS = (0, 2, 7)
FORMAT1 = Path(__file__).resolve().parent / "data" / "format1-run"


def _pattern(epoch: int, shape: tuple[int, ...]) -> np.ndarray:
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 1000 + epoch).astype(
        np.float32
    )


@pytest.fixture
def store(tmp_path) -> Path:
    """A run with labels, a split, conditional draws, metrics and parameters at epochs 0, 2, 7."""
    path = tmp_path / "r.zarr"
    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(20, 2)
    split = ["train"] * 15 + ["test"] * 5
    with ibframe.create_run(path, x=x, y=np.arange(20) % 3, split=split, beta=0.1, draws=2,
                            layers={"h1": 3, "conv": (2, 2, 2)}) as run:
        for epoch in EPOCHS:
            acts = {"h1": _pattern(epoch, (20, 3, 3)), "conv": _pattern(epoch, (20, 3, 2, 2, 2))}
            run.append_epoch(epoch, acts, metrics={"loss_train": epoch / 10},
                             params={"w": np.full((3, 2), epoch, np.float32)})
    return path


def _chunk(store: Path, array: str, position: int | None) -> Path:
    """The chunk file of ``array`` at epoch position ``position`` (None: the first chunk)."""
    chunks = sorted((store / array / "c").rglob("*"))
    files = [c for c in chunks if c.is_file()]
    if position is None:
        return files[0]
    return next(f for f in files if f.relative_to(store / array / "c").parts[0] == str(position))


READS = {
    "layers/h1/S": [lambda r: r.activations("h1").values, lambda r: r.block("h1", 2)],
    "layers/conv/S_cond": [lambda r: r.conditional("conv").values, lambda r: r.block("conv", 2)],
    "metrics/loss_train": [lambda r: r.metrics()],
    "params/w": [lambda r: r.params(2)],
}
DATA_READS = {
    "data/x": [lambda r: r.x],
    "data/y": [lambda r: r.y, lambda r: r.block("h1", 2)],
    "data/split": [lambda r: r.split],
    "layers/conv/cond_sample": [lambda r: r.conditional("conv"), lambda r: r.block("conv", 0)],
}


def _cases():
    for array, reads in READS.items():
        for i, read in enumerate(reads):
            yield pytest.param(array, 1, read, id=f"{array}-{i}")
    for array, reads in DATA_READS.items():
        for i, read in enumerate(reads):
            yield pytest.param(array, None, read, id=f"{array}-{i}")


def _damage(chunk: Path, how: str) -> None:
    if how == "deleted":
        chunk.unlink()
    elif how == "truncated":
        data = chunk.read_bytes()
        chunk.write_bytes(data[: len(data) // 2])
    else:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x5A
        chunk.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["deleted", "truncated", "garbled"])
@pytest.mark.parametrize(("array", "position", "read"), list(_cases()))
def test_a_damaged_chunk_is_an_error_never_data(store, array, position, read, how):
    _damage(_chunk(store, array, position), how)
    run = ibframe.open_run(store)
    with pytest.raises(StoreError) as info:
        read(run)
    message = str(info.value)
    assert str(store) in message and array in message and "\n" not in message
    if position is not None:
        assert f"epoch {EPOCHS[position]}" in message


def test_undamaged_epochs_stay_readable(store):
    """Damage is local: the other epochs of the array still read."""
    _chunk(store, "layers/h1/S", 1).unlink()
    run = ibframe.open_run(store)
    np.testing.assert_array_equal(run.block("h1", 7).s, _pattern(7, (20, 3, 3))[:, 0])
    np.testing.assert_array_equal(run.activations("h1").sel(epoch=0).values,
                                  _pattern(0, (20, 3, 3))[:, 0])
    with pytest.raises(StoreError, match="epoch 2"):
        run.activations("h1").values  # noqa: B018


def _edit_root(store: Path, **attrs) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].update(attrs)
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"epochs": [0, 2, 7, 9]}, "epochs.*4.*layers/h1/S holds 3"),
        ({"epochs": "0,2,7"}, "epochs.*list"),
        ({"epochs": [0, 7, 2]}, "epochs.*increasing"),
        ({"epochs": [0, 2.5, 7]}, "epochs.*list"),
        ({"layers": ["h1", "conv", "h9"]}, "layers.*h9.*no group"),
        ({"layers": "h1"}, "layers.*list"),
        ({"beta": "big"}, "beta"),
        ({"draws": -1}, "draws"),
        ({"metrics": ["loss_train", "gone"]}, "metrics/gone"),
        ({"params": ["w", "gone"]}, "params/gone"),
    ],
)
def test_edited_root_attributes_are_one_line_errors(store, edit, match):
    _edit_root(store, **edit)
    with pytest.raises(StoreError, match=match) as info:
        run = ibframe.open_run(store)
        run.activations("h1")
        run.metrics()
        run.params(2)
    assert str(store) in str(info.value)


@pytest.mark.parametrize(
    "node", ["zarr.json", "layers/zarr.json", "layers/h1/zarr.json", "layers/h1/S/zarr.json",
             "data/x/zarr.json", "metrics/loss_train/zarr.json"],
)
def test_garbled_metadata_is_a_one_line_error(store, node, capsys):
    (store / node).write_text('{"zarr_format": 3, "node_type": ')
    with pytest.raises(StoreError) as info:
        run = ibframe.open_run(store)
        run.layer_attrs("h1")
        run.block("h1", 0)
        run.x  # noqa: B018
        run.metrics()
    where = "root" if node == "zarr.json" else str(Path(node).parent)
    assert str(store) in str(info.value) and where in str(info.value)
    # the command line shows it as one line, no traceback
    with pytest.raises(SystemExit) as code:
        main(["info", str(store)])
    err = capsys.readouterr().err
    assert code.value.code == 1 and "Traceback" not in err and str(store) in err.replace("\n", "")


def test_a_layer_group_deleted_by_hand_is_named(store):
    shutil.rmtree(store / "layers" / "conv")
    with pytest.raises(StoreError, match="conv"):
        ibframe.open_run(store)


def test_split_codes_other_than_train_and_test_are_refused(store):
    array = zarr.open_array(store / "data" / "split", mode="r+")
    codes = array[...]
    codes[3] = 7
    array[...] = codes
    with pytest.raises(StoreError, match=r"data/split.*7"):
        ibframe.open_run(store).split  # noqa: B018


def test_a_newer_format_is_refused_with_an_upgrade_hint(store):
    _edit_root(store, ibframe_format=99)
    with pytest.raises(StoreError, match=r"format 99.*newer.*upgrade"):
        ibframe.open_run(store)


def test_stores_of_format_1_stay_readable(tmp_path):
    """Written before checksums, with chunks equal to the fill value left out: still data."""
    path = tmp_path / "old"
    shutil.copytree(FORMAT1, path)
    run = ibframe.open_run(path)
    assert run.attrs["ibframe_format"] == 1 and run.epochs.tolist() == [0, 1, 3]
    assert run.y.tolist() == [0] * 6  # its chunk was never written: all zeros is the fill value
    assert run.split.tolist() == ["train"] * 4 + ["test"] * 2
    base = np.arange(54, dtype=np.float32).reshape(6, 3, 3) / 100
    for epoch in (0, 1, 3):
        block = run.block("h1", epoch)
        np.testing.assert_array_equal(block.s, (base + epoch)[:, 0])
        np.testing.assert_array_equal(block.s_cond, (base + epoch)[:, 1:])
        np.testing.assert_array_equal(run.params(epoch)["w"], np.full((2, 2), epoch))
    metrics = run.metrics()
    assert np.isnan(metrics["accuracy_test"].values[1]) and metrics["accuracy_test"].values[2] == 0.5
    # and a writer carries on in the same format
    with ibframe.open_run(path, mode="a") as writer:
        writer.append_epoch(4, {"h1": base + 4, "conv": np.zeros((6, 3, 2, 1, 2))},
                            metrics={"loss_train": 0.2})
    again = ibframe.open_run(path)
    assert again.attrs["ibframe_format"] == 1 and again.epochs.tolist() == [0, 1, 3, 4]
    np.testing.assert_array_equal(again.block("h1", 4).s, (base + 4)[:, 0])
    # a deleted S chunk is still caught: S never holds its fill value (NaN is refused)
    next(p for p in (path / "layers/h1/S/c/1").rglob("*") if p.is_file()).unlink()
    with pytest.raises(StoreError, match=r"layers/h1/S.*epoch 1"):
        ibframe.open_run(path).block("h1", 1)


def test_checksums_do_not_stop_plain_xarray(store):
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    np.testing.assert_array_equal(tree["layers/h1"].dataset["S"].values[2],
                                  _pattern(7, (20, 3, 3))[:, 0])
    codecs = zarr.open_array(store / "layers/h1/S", mode="r").metadata.codecs
    assert any(type(c).__name__ == "Crc32cCodec" for c in codecs)


@pytest.mark.parametrize(
    "damage",
    ["epochs longer", "epochs not a list", "layer group missing", "half-created", "S chunk"],
)
def test_the_command_line_names_the_damage_in_one_line(store, damage, capsys):
    """Item 10 of the issue: each of these gave a traceback."""
    command = ["info", str(store)]
    if damage == "epochs longer":
        _edit_root(store, epochs=[0, 2, 7, 9])
    elif damage == "epochs not a list":
        _edit_root(store, epochs="0,2,7")
    elif damage == "layer group missing":
        _edit_root(store, layers=["h1", "conv", "h9"])
    elif damage == "half-created":
        meta = json.loads((store / "zarr.json").read_text())
        meta["attributes"] = {"ibframe_creating": {"started": "2026-01-01T00:00:00+00:00"}}
        (store / "zarr.json").write_text(json.dumps(meta))
    else:
        _chunk(store, "layers/h1/S", 1).unlink()
        command = ["estimate", str(store), "-e", "binned-entropy", "--no-cache"]
    with pytest.raises(SystemExit) as code:
        main(command)
    err = capsys.readouterr().err
    assert code.value.code != 0 and "Traceback" not in err
    assert str(store) in err.replace("\n", "")
    if damage != "S chunk":  # estimate's failure report is the engine's to format
        assert len(err.strip().splitlines()) == 1
