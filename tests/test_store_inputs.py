"""Bad inputs to the run store are refused with one clear line, before anything is written.

Names (layers, metrics, parameters), reserved root attributes, attributes that are not JSON,
and values that are not real numbers (complex, strings, objects, ragged lists) must never leave
a partly created directory, a half-written epoch, or a raw numpy/zarr error.
"""

from __future__ import annotations

import numpy as np
import pytest

import ibframe
from ibframe.errors import ActivationError, StoreError


def _x(n: int = 6) -> np.ndarray:
    return np.linspace(0, 1, n * 2, dtype=np.float32).reshape(n, 2)


BAD_NAMES = ["", "a/b", ".", "..", "__h", ".hidden", "zarr.json", "h 1", "h\n1", "hé", "x" * 201]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_layer_names_are_refused_and_nothing_is_created(tmp_path, name):
    path = tmp_path / "r.zarr"
    with pytest.raises(StoreError, match="layer name"):
        ibframe.create_run(path, x=_x(), layers={"h1": 2, name: 2})
    assert not path.exists()


def test_layer_names_that_differ_only_in_case_are_refused(tmp_path):
    # They would be one directory on a case-insensitive file system (macOS, Windows).
    with pytest.raises(StoreError, match="differ only in case"):
        ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers={"h1": 2, "H1": 2})
    assert not (tmp_path / "r.zarr").exists()


def test_usual_names_are_accepted(tmp_path):
    layers = {"h1": 2, "encoder.act1": 2, "block-2_out": 2, "3": 1}
    with ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers=layers) as run:
        acts = {name: np.zeros((6, units)) for name, units in layers.items()}
        run.append_epoch(0, acts, metrics={"loss_train": 1.0},
                         params={"model.0.weight": np.ones((2, 2)), "model.0.bias": np.zeros(2)})
    run = ibframe.open_run(tmp_path / "r.zarr")
    assert run.layers == list(layers)
    assert set(run.params(0)) == {"model.0.weight", "model.0.bias"}


def _one_epoch_run(tmp_path):
    run = ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers={"h1": 2})
    run.append_epoch(0, {"h1": np.zeros((6, 2))}, metrics={"loss": 0.5}, params={"w": np.ones(2)})
    return run


def _unchanged(path, epochs, metrics, params):
    run = ibframe.open_run(path)
    assert run.epochs.tolist() == epochs
    assert sorted(run.metrics().data_vars) == metrics
    assert sorted(run.params(epochs[-1])) == params


@pytest.mark.parametrize("name", [*BAD_NAMES, "epoch"])
def test_bad_metric_and_parameter_names_are_refused_and_nothing_is_written(tmp_path, name):
    with _one_epoch_run(tmp_path) as run:
        with pytest.raises(ActivationError, match="metric name"):
            run.append_epoch(1, {"h1": np.ones((6, 2))}, metrics={name: 1.0})
        with pytest.raises(ActivationError, match="parameter name"):
            run.append_epoch(1, {"h1": np.ones((6, 2))}, params={name: np.ones(2)})
    _unchanged(tmp_path / "r.zarr", [0], ["loss"], ["w"])


@pytest.mark.parametrize(
    "key",
    ["ibframe_format", "ibframe_version", "created", "beta", "noise", "draws", "layers",
     "epochs", "metrics", "params", "model", "dataset", "seed", "ibframe_anything"],
)
def test_user_attrs_cannot_override_reserved_keys(tmp_path, key):
    path = tmp_path / "r.zarr"
    with pytest.raises(StoreError, match=f"reserved.*{key}"):
        ibframe.create_run(path, x=_x(), layers={"h1": 2}, attrs={key: [0, 1, 2]})
    assert not path.exists()


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"callback": print}, "JSON"),
        ({"nested": {"deep": object()}}, "JSON"),
        ({"bad": float("nan")}, "NaN"),
        ({"bad": [1.0, float("inf")]}, "NaN"),
        ({3: "not a string key"}, "JSON"),
    ],
)
def test_attrs_that_are_not_json_are_refused_and_nothing_is_created(tmp_path, attrs, match):
    path = tmp_path / "r.zarr"
    with pytest.raises(StoreError, match=match):
        ibframe.create_run(path, x=_x(), layers={"h1": 2}, attrs=attrs)
    assert not path.exists()
    with pytest.raises(StoreError, match=match):
        ibframe.create_run(path, x=_x(), layers={"h1": 2}, model=attrs)
    assert not path.exists()


def test_numpy_scalars_in_attrs_are_stored_as_numbers(tmp_path):
    attrs = {"lr": np.float32(0.5), "width": np.int64(7), "widths": np.arange(3)}
    ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers={"h1": 2}, attrs=attrs, seed=np.int64(3))
    stored = ibframe.open_run(tmp_path / "r.zarr").attrs
    assert stored["lr"] == 0.5 and stored["width"] == 7 and stored["widths"] == [0, 1, 2]
    assert stored["seed"] == 3


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones((6, 2)) * (1 + 1j), "real numbers.*complex"),
        (np.array([["a", "b"]] * 6), "real numbers.*str"),
        (np.array([[object(), object()]] * 6, dtype=object), "real numbers.*object"),
        ([[1.0, 2.0], [3.0]] + [[1.0, 2.0]] * 4, "array"),
    ],
)
def test_inputs_must_be_real_numbers(tmp_path, x, match):
    path = tmp_path / "r.zarr"
    with pytest.raises(ActivationError, match=match):
        ibframe.create_run(path, x=x, layers={"h1": 2})
    assert not path.exists()


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (np.array(["cat", "dog", "cat", "dog", "cat", "dog"]), "labels.*integer.*str"),
        (np.array([0, 1, 0, 1, 0, 1]) * 1j, "labels.*integer.*complex"),
        (np.array([0.0, 1.0, 0.5, 1.0, 0.0, 1.0]), "labels.*integer"),
        (np.array([0.0, 1.0, np.nan, 1.0, 0.0, 1.0]), "labels.*integer"),
        (np.array([None] * 6, dtype=object), "labels.*integer.*object"),
    ],
)
def test_labels_must_be_integers(tmp_path, y, match):
    path = tmp_path / "r.zarr"
    with pytest.raises(ActivationError, match=match):
        ibframe.create_run(path, x=_x(), y=y, layers={"h1": 2})
    assert not path.exists()


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.ones((6, 2)) * (1 + 1j), "real numbers.*complex"),
        (np.full((6, 2), "a"), "real numbers.*str"),
        (np.full((6, 2), None, dtype=object), "real numbers.*object"),
        ([[1.0, 2.0], [3.0]] * 3, "array"),
    ],
)
def test_activations_must_be_real_numbers(tmp_path, values, match):
    with _one_epoch_run(tmp_path) as run, pytest.raises(ActivationError, match=match):
        run.append_epoch(1, {"h1": values})
    _unchanged(tmp_path / "r.zarr", [0], ["loss"], ["w"])


def test_complex_conditional_draws_are_refused(tmp_path):
    x = _x()
    complex_draws = {"h1": np.ones((6, 2, 2)) * 1j}
    with (
        ibframe.create_run(tmp_path / "r.zarr", x=x, layers={"h1": 2}, beta=0.1, draws=2) as run,
        pytest.raises(ActivationError, match=r"real numbers.*complex"),
    ):
        run.append_epoch(0, {"h1": np.zeros((6, 2))}, conditional=complex_draws)
    assert ibframe.open_run(tmp_path / "r.zarr").epochs.tolist() == []


@pytest.mark.parametrize(
    ("metrics", "params", "match"),
    [
        ({"loss": np.complex128(1 + 2j)}, {}, "metric 'loss' must be a real number"),
        ({"loss": "low"}, {}, "metric 'loss' must be a real number"),
        ({}, {"w": np.array(["a", "b"])}, "parameter 'w' must hold numbers"),
        ({}, {"w": np.array([object(), 1], dtype=object)}, "parameter 'w' must hold numbers"),
        ({}, {"step": np.int64(3)}, "parameter 'step'.*integer.*missing"),
    ],
)
def test_bad_metric_and_parameter_values_are_refused_and_nothing_is_written(
    tmp_path, metrics, params, match
):
    with _one_epoch_run(tmp_path) as run, pytest.raises(ActivationError, match=match):
        run.append_epoch(1, {"h1": np.ones((6, 2))}, metrics=metrics, params=params)
    _unchanged(tmp_path / "r.zarr", [0], ["loss"], ["w"])


def test_an_integer_parameter_may_not_go_missing(tmp_path):
    """NaN marks a float parameter missing at an epoch; an integer one has no such value."""
    with ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers={"h1": 2}) as run:
        run.append_epoch(0, {"h1": np.zeros((6, 2))}, params={"step": np.int64(1), "w": np.ones(2)})
        with pytest.raises(ActivationError, match=r"parameter 'step'.*missing"):
            run.append_epoch(1, {"h1": np.zeros((6, 2))}, params={"w": np.ones(2)})
        run.append_epoch(1, {"h1": np.zeros((6, 2))}, params={"step": np.int64(2)})
    params = ibframe.open_run(tmp_path / "r.zarr").params(1)
    assert params["step"] == 2 and np.isnan(params["w"]).all()


def test_a_metric_first_reported_later_is_nan_before(tmp_path):
    with _one_epoch_run(tmp_path) as run:
        run.append_epoch(1, {"h1": np.ones((6, 2))}, metrics={"late": 2.0})
    metrics = ibframe.open_run(tmp_path / "r.zarr").metrics()
    assert np.isnan(metrics["late"].values[0]) and metrics["late"].values[1] == 2.0
    assert np.isnan(metrics["loss"].values[1])


def test_layer_declarations_cannot_set_what_ibframe_derives(tmp_path):
    with pytest.raises(StoreError, match="set by ibframe"):
        ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers={"h1": {"shape": 2, "index": 9}})
    with pytest.raises(StoreError, match="invalid shape"):
        ibframe.create_run(tmp_path / "r.zarr", x=_x(), layers={"h1": "wide"})
    assert not (tmp_path / "r.zarr").exists()
