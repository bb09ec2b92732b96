"""Dataset loaders and generators."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from ibframe.errors import IbframeError
from ibframe.recording.datasets import (
    SAXE_SPLIT_FILE,
    SZT_FILE,
    Dataset,
    DatasetError,
    icosahedron,
    leaky_relu_pair_data,
    load_digits,
    load_mnist,
    load_szt,
    neuron_data,
    random_split,
    read_idx,
    spiral,
    szt_like,
)

COUNTING_ORDER = (np.arange(4096)[:, None] >> np.arange(11, -1, -1)) & 1


def test_szt_loader_matches_the_file(data_dir: Path) -> None:
    data = load_szt(data_dir / SZT_FILE)
    assert data.x.shape == (4096, 12) and data.x.dtype == np.float32
    assert np.array_equal(data.x, COUNTING_ORDER)
    assert len(np.unique(data.x, axis=0)) == 4096
    assert data.y.dtype == np.int64 and int(data.y.sum()) == 2118
    assert (data.split == "test").sum() == 819
    assert "seeded" in data.description


def test_szt_split_file_maps_onto_the_4096_rows(data_dir: Path) -> None:
    data = load_szt(data_dir, split=data_dir)
    with np.load(data_dir / SAXE_SPLIT_FILE) as saxe:
        for part in ("train", "test"):
            index = data.indices(part)
            assert len(index) == len(saxe[f"X_{part}"])
            # the same rows and labels as the file, in the file's counting order
            assert {tuple(row) for row in data.x[index].astype(int)} == {
                tuple(row) for row in saxe[f"X_{part}"].astype(int)
            }
            codes = saxe[f"X_{part}"].astype(int) @ (1 << np.arange(11, -1, -1))
            assert np.array_equal(np.sort(codes), index)
            assert np.array_equal(data.y[np.sort(codes)], saxe[f"y_{part}"][np.argsort(codes)])


def test_split_file_with_wrong_label_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with np.load(data_dir / SAXE_SPLIT_FILE) as saxe:
        arrays = {k: saxe[k].copy() for k in saxe.files}
    arrays["y_test"][0] = 1 - arrays["y_test"][0]
    bad = tmp_path / "split.npz"
    np.savez(bad, **arrays)
    with pytest.raises(DatasetError, match="has label"):
        load_szt(data_dir, split=bad)
    arrays["y_test"][0] = 1 - arrays["y_test"][0]
    np.savez(bad, **{k: v[:-1] if k.endswith("test") else v for k, v in arrays.items()})
    with pytest.raises(DatasetError, match="covers 4095 of the 4096"):
        load_szt(data_dir, split=bad)


def test_missing_file_is_an_ibframe_error(tmp_path: Path) -> None:
    with pytest.raises(IbframeError, match="not found"):
        load_szt(tmp_path)


def test_random_split_sizes_and_seed() -> None:
    split = random_split(4096)
    assert (split == "train").sum() == 3277 and (split == "test").sum() == 819
    assert np.array_equal(split, random_split(4096))
    assert not np.array_equal(split, random_split(4096, seed=1))


def _vertex_permutation(rotation: np.ndarray) -> np.ndarray:
    v = icosahedron()
    moved = v @ rotation.T
    perm = np.argmin(np.linalg.norm(moved[:, None] - v[None], axis=2), axis=1)
    assert np.allclose(v[perm], moved)
    return perm


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def test_szt_like_is_balanced_and_rotation_invariant() -> None:
    data = szt_like()
    assert np.array_equal(data.x, COUNTING_ORDER)
    assert int(data.y.sum()) == 2070
    assert np.array_equal(data.y, szt_like().y)
    v = icosahedron()
    assert np.allclose(np.linalg.norm(v, axis=1), 1)
    # the label of a pattern does not change when a symmetry of the icosahedron moves it
    weights = 1 << np.arange(11, -1, -1)
    rotations = [_rotation(v[0], 2 * np.pi / 5), _rotation(v[0] + v[1] + v[2], 2 * np.pi / 3)]
    assert np.allclose(v[0] @ v[1], 1 / 5**0.5) and np.allclose(v[1] @ v[2], 1 / 5**0.5)
    for rotation in rotations:
        perm = _vertex_permutation(rotation)
        assert not np.array_equal(perm, np.arange(12))
        moved = data.x[:, perm].astype(int) @ weights
        assert np.array_equal(data.y[moved], data.y)


def test_szt_like_seed_changes_labels() -> None:
    other = szt_like(seed=3)
    assert 0.4 < other.y.mean() < 0.6
    assert not np.array_equal(other.y, szt_like().y)


def test_spiral() -> None:
    data = spiral(n_per_class=100, seed=1)
    assert data.x.shape == (200, 2) and data.x.dtype == np.float32
    assert np.bincount(data.y).tolist() == [100, 100]
    assert np.abs(data.x).max() < 1.5
    assert np.array_equal(data.x, spiral(n_per_class=100, seed=1).x)
    # the two spirals are point reflections of each other, up to jitter
    clean = spiral(n_per_class=100, noise=0.0, seed=1)
    radius = np.linalg.norm(clean.x, axis=1)
    assert np.all(radius <= 1 + 1e-6)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_idx_files(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    labels = {"train": np.array([0, 1, 2, 3, 4]), "t10k": np.array([9, 8, 7])}
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images[prefix], compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels[prefix], compress)
    data = load_mnist(tmp_path)
    assert data.x.shape == (8, 1, 28, 28) and data.x.dtype == np.float32
    assert np.allclose(data.x[0, 0] * 255, images["train"][0])
    assert data.y.tolist() == [0, 1, 2, 3, 4, 9, 8, 7]
    assert data.split.tolist() == ["train"] * 5 + ["test"] * 3


def test_bad_idx_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(DatasetError, match="header"):
        read_idx(short)
    with pytest.raises(DatasetError, match="train-images"):
        load_mnist(tmp_path)


def test_load_digits_stand_in() -> None:
    pytest.importorskip("sklearn")
    data = load_digits()
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    assert data.x.min() >= 0 and data.x.max() == 1
    assert data.n_classes == 10
    assert (data.split == "test").sum() == round(0.2 * 1797)


def test_toy_data_of_section_4_and_appendix_a() -> None:
    neuron = neuron_data()
    assert neuron.x[:, 0].tolist() == [-3, -1, 1, 3] and neuron.y.tolist() == [0, 0, 0, 1]
    pair = leaky_relu_pair_data()
    assert pair.x[:, 0].tolist() == list(range(1, 9)) and pair.y.tolist() == [0] * 4 + [1] * 4
    assert set(neuron.split) == set(pair.split) == {"train"}


def test_dataset_validates_shapes_and_subsets() -> None:
    with pytest.raises(DatasetError, match="samples"):
        Dataset(np.zeros((3, 2), np.float32), np.zeros(2, np.int64), np.full(3, "train"), "t", "")
    with pytest.raises(DatasetError, match="split"):
        Dataset(np.zeros((1, 2), np.float32), np.zeros(1, np.int64), np.array(["dev"]), "t", "")
    data = spiral(n_per_class=10)
    sub = data.subset([3, 1])
    assert np.array_equal(sub.x, data.x[[3, 1]]) and sub.name == "spiral"
