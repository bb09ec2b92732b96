"""The built-in experiments and the training loop of ``ibframe train``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ibframe
from ibframe.errors import (
    EstimatorRequirementError,
    ExperimentNotFoundError,
    ParameterError,
    TrainingError,
)
from ibframe.recording.experiments import (
    BUILTIN_EXPERIMENTS,
    ExperimentSpec,
    demo_config,
    ibframe_register_experiments,
    train,
)
from ibframe.recording.nn import mnist_cnn
from ibframe.recording.recorder import DEFAULT_DRAWS
from ibframe.registry import ExperimentRegistry

#: Small settings per experiment, so that each trains for two epochs in about a second.
QUICK: dict[str, dict[str, Any]] = {
    "szt": {"draws": 4, "conditional_samples": 16},
    "spiral": {"draws": 4, "conditional_samples": 16},
    # the 8x8 stand-in keeps these quick; tests/test_mnist.py trains on the real digits
    "mnist-cnn": {"samples": 60, "draws": 2, "conditional_samples": 8, "batch_size": 128,
                  "data": "sklearn-digits"},
    "mnist-cnn-dropout": {"samples": 60, "batch_size": 128, "data": "sklearn-digits"},
    "neuron": {},
    "leaky-relu-pair": {"draws": 8},
}


def test_every_builtin_experiment_has_quick_settings() -> None:
    assert set(QUICK) == set(BUILTIN_EXPERIMENTS)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_experiment_trains_and_writes_a_readable_store(name: str, tmp_path: Path) -> None:
    if name.startswith("mnist"):
        pytest.importorskip("sklearn")
    seen: list[tuple[int, Mapping[str, float]]] = []
    path = train(
        BUILTIN_EXPERIMENTS[name],
        out=tmp_path / "run.zarr",
        epochs=2,
        record="all",
        on_epoch=lambda epoch, metrics: seen.append((epoch, dict(metrics))),
        **QUICK[name],
    )
    run = ibframe.open_run(path)
    assert run.epochs.tolist() == [0, 1, 2]
    assert run.attrs["experiment"] == name
    metrics = run.metrics()
    assert np.all(np.isfinite(metrics["loss_train"].values))
    assert np.all((metrics["accuracy_train"] >= 0) & (metrics["accuracy_train"] <= 1))
    for layer in run.layers:
        assert np.all(np.isfinite(run.activations(layer).values))
    spec = BUILTIN_EXPERIMENTS[name]
    # by default, draws where some layer has noise before it (not the single neuron's)
    noisy = any(not run.layer_attrs(layer)["deterministic_given_x"] for layer in run.layers)
    default = DEFAULT_DRAWS if noisy else 0
    draws = QUICK[name].get("draws", default) if spec.defaults.beta > 0 else 0
    assert run.draws == draws
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert all("loss_train" in metrics for _, metrics in seen)
    assert all("loss" in metrics for _, metrics in seen[1:])


def test_szt_defaults_follow_the_paper() -> None:
    defaults = BUILTIN_EXPERIMENTS["szt"].defaults
    assert (defaults.optimizer, defaults.lr, defaults.batch_size) == ("adam", 4e-4, 256)
    neuron = BUILTIN_EXPERIMENTS["neuron"].defaults
    assert (neuron.beta, neuron.lr, neuron.optimizer, neuron.batch_size) == (
        0.01,
        0.01,
        "sgd",
        None,
    )
    cnn = BUILTIN_EXPERIMENTS["mnist-cnn"].defaults
    assert (cnn.optimizer, cnn.batch_size, cnn.lr, cnn.lr_final) == ("sgd", 32, 5e-3, 5e-4)


def test_szt_on_the_real_file_uses_saxes_split(tmp_path: Path, data_dir: Path) -> None:
    path = train("szt", data=data_dir / "var_u.mat", out=tmp_path / "r.zarr", epochs=1,
                 record="all", draws=2, conditional_samples=8)  # fmt: skip
    run = ibframe.open_run(path)
    assert run.n_samples == 4096 and int(run.y.sum()) == 2118
    assert (run.split == "test").sum() == 819
    assert "IB_data" in run.attrs["dataset_description"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_recorded_epochs(tmp_path: Path) -> None:
    calls = {"n": 0}
    base = BUILTIN_EXPERIMENTS["szt"]

    def poisoned(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = base.loss(output, y)
        return loss * float("nan") if calls["n"] > 3 else loss

    spec = dataclasses.replace(base, name="poisoned", loss=poisoned)
    with pytest.raises(TrainingError, match=r"diverged at epoch 4: the loss is nan.*The 4 epoch"):
        train(spec, out=tmp_path / "run.zarr", epochs=10, batch_size=4096, record="all")
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert run.epochs.tolist() == [0, 1, 2, 3]
    assert np.all(np.isfinite(run.activations("h5").values))


def test_divergent_learning_rate_raises_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="smaller learning rate"):
        train("szt", out=tmp_path / "run.zarr", epochs=5, lr=1e38, optimizer="sgd",
              activation="relu", record="all", draws=0)  # fmt: skip
    assert ibframe.open_run(tmp_path / "run.zarr").epochs.tolist() == [0]


def test_training_is_reproducible(tmp_path: Path) -> None:
    kwargs = {"epochs": 2, "record": "all", "draws": 2, "conditional_samples": 4}
    a = ibframe.open_run(train("szt", out=tmp_path / "a.zarr", **kwargs))
    b = ibframe.open_run(train("szt", out=tmp_path / "b.zarr", **kwargs))
    c = ibframe.open_run(train("szt", out=tmp_path / "c.zarr", seed=1, **kwargs))
    assert np.array_equal(a.conditional("h4").values, b.conditional("h4").values)
    assert not np.array_equal(a.activations("h4").values, c.activations("h4").values)


def test_orthonormal_option_is_recorded(tmp_path: Path) -> None:
    path = train("spiral", out=tmp_path / "run.zarr", epochs=1, orthonormal=5e-5, draws=0)
    assert ibframe.open_run(path).attrs["training"]["orthonormal"] == 5e-5


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="activation"):
        train("neuron", out=tmp_path / "a.zarr", activation="relu")
    with pytest.raises(ParameterError, match="optimizer"):
        train("neuron", out=tmp_path / "b.zarr", optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="generates its own data"):
        train("spiral", out=tmp_path / "c.zarr", data=tmp_path)
    with pytest.raises(ExperimentNotFoundError, match="szt"):
        train("nope", out=tmp_path / "d.zarr")


def test_beta_the_network_cannot_have_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(ParameterError, match=r"beta 0\.0, not 0\.1"):
        train("mnist-cnn-dropout", out=tmp_path / "a.zarr", beta=0.1, data="sklearn-digits")


def test_builtins_register_through_the_hook() -> None:
    registry = ExperimentRegistry()
    ibframe_register_experiments(registry)
    assert sorted(registry) == sorted(BUILTIN_EXPERIMENTS)
    assert all(isinstance(registry.get(n), ExperimentSpec) for n in registry)
    assert all(spec.description for spec in BUILTIN_EXPERIMENTS.values())


def test_demo_config_is_a_valid_call_of_train(tmp_path: Path) -> None:
    config = demo_config()
    inspect.signature(train).bind(**config, out=tmp_path / "demo.zarr")
    path = train(**{**config, "epochs": 3}, out=tmp_path / "demo.zarr")
    run = ibframe.open_run(path)
    assert run.n_samples == 512 and run.draws == DEFAULT_DRAWS
    assert run.conditional("h1") is None  # a function of x
    assert run.conditional("h2").sizes["cond_sample"] == 512
    assert run.epochs[-1] == 3


def _recorded_cnn(run: ibframe.Run, epoch: int) -> torch.nn.Module:
    """The run's CNN in eval mode with the parameters recorded at ``epoch``."""
    model = run.attrs["model"]
    network = mnist_cnn(beta=model["beta"], regulariser=model["regulariser"],
                        input_size=model["input_size"], layers=model["layers"])
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in run.params(epoch).items()}
    network.model.load_state_dict(state)
    return network.model.eval()


def _recorded(run: ibframe.Run, layer: str, epoch: int) -> torch.Tensor:
    """The recorded S of ``layer`` at ``epoch`` (draw 0), in the layer's own shape."""
    shape = run.layer_attrs(layer)["shape"]
    values = run.activations(layer).sel(epoch=epoch).values
    return torch.as_tensor(values).reshape(-1, *shape)


@pytest.mark.parametrize("experiment", ["mnist-cnn", "mnist-cnn-dropout"])
def test_cnn_records_the_papers_layers_1_to_4_after_pooling(experiment: str,
                                                            tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    path = train(experiment, out=tmp_path / "run.zarr", epochs=1, record="all",
                 **QUICK[experiment])
    run = ibframe.open_run(path)
    assert run.layers == ["pool1", "pool2", "fc3", "logits"]
    assert [run.layer_attrs(name)["shape"] for name in run.layers] == [
        [16, 4, 4], [32, 2, 2], [128], [10]]
    assert [run.layer_attrs(name)["description"].split(":")[0] for name in run.layers] == [
        f"paper's Layer {i}" for i in (1, 2, 3, 4)]
    # the paper's network: the noise of layers 1 and 2 comes before their max-pooling
    assert [run.layer_attrs(name)["noise"] for name in run.layers] == (
        ["before-pooling", "before-pooling", "additive", "none"] if experiment == "mnist-cnn"
        else ["none"] * 4)
    x = torch.as_tensor(run.x)
    model = _recorded_cnn(run, 1)
    with torch.no_grad():
        # layer 1 is a function of x even in the noisy network: its S is the noiseless pooling
        # of the model's own tanh output, the S of T_1 = S_1 + Z_1 that conv2 receives
        tanh1 = model.tanh1(model.bn1(model.conv1(x)))
        torch.testing.assert_close(_recorded(run, "pool1", 1), F.max_pool2d(tanh1, 2))
        if experiment == "mnist-cnn-dropout":  # deterministic: every layer follows from x
            pool1 = _recorded(run, "pool1", 1)
            tanh2 = model.tanh2(model.bn2(model.conv2(pool1)))
            torch.testing.assert_close(_recorded(run, "pool2", 1), F.max_pool2d(tanh2, 2))
            torch.testing.assert_close(_recorded(run, "logits", 1), model(x))
            logits_from_fc3 = model.out(_recorded(run, "fc3", 1))
            torch.testing.assert_close(_recorded(run, "logits", 1), logits_from_fc3)


def test_cnn_pre_pool_option_records_the_tanh_outputs_before_pooling(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    path = train("mnist-cnn-dropout", out=tmp_path / "run.zarr", epochs=1, record="all",
                 layer_set="pre-pool", **QUICK["mnist-cnn-dropout"])
    run = ibframe.open_run(path)
    assert run.attrs["training"]["layer_set"] == "pre-pool"
    assert run.layers == ["tanh1", "tanh2", "fc3", "logits"]
    assert [run.layer_attrs(name)["shape"] for name in run.layers] == [
        [16, 8, 8], [32, 4, 4], [128], [10]]
    x = torch.as_tensor(run.x)
    model = _recorded_cnn(run, 1)
    with torch.no_grad():
        tanh1 = _recorded(run, "tanh1", 1)
        torch.testing.assert_close(tanh1, model.tanh1(model.bn1(model.conv1(x))))
        tanh2 = model.tanh2(model.bn2(model.conv2(F.max_pool2d(tanh1, 2))))
        torch.testing.assert_close(_recorded(run, "tanh2", 1), tanh2)
        torch.testing.assert_close(_recorded(run, "logits", 1), model(x))


@pytest.mark.parametrize(("layer_set", "layers", "module_order"), [
    ("pooled", ["pool1", "pool2", "fc3", "logits"], ["tanh1", "noise1", "pool1"]),
    ("pre-pool", ["tanh1", "tanh2", "fc3", "logits"], ["tanh1", "noise1", "pool1"]),
    ("noise-after-pool", ["pool1", "pool2", "fc3", "logits"], ["tanh1", "pool1", "noise1"]),
])
def test_each_cnn_layer_set_trains_and_records(layer_set: str, layers: list[str],
                                               module_order: list[str], tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    path = train("mnist-cnn", out=tmp_path / "run.zarr", epochs=1, record="all",
                 layer_set=layer_set, **QUICK["mnist-cnn"])
    run = ibframe.open_run(path)
    assert run.attrs["training"]["layer_set"] == layer_set == run.attrs["model"]["layers"]
    assert run.layers == layers and run.epochs.tolist() == [0, 1]
    order = [name for name, _ in _recorded_cnn(run, 1).named_children()]
    assert order[order.index("tanh1"):order.index("tanh1") + 3] == module_order
    expected = {"pooled": "before-pooling"}.get(layer_set, "additive")
    assert [run.layer_attrs(name)["noise"] for name in run.layers] == [
        expected, expected, "additive", "none"]
    assert run.conditional(layers[1]) is not None and run.conditional(layers[0]) is None


@pytest.fixture(scope="module")
def default_cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noisy CNN of the paper's order trained for one epoch on the 8x8 digits."""
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("cnn") / "run.zarr"
    return train("mnist-cnn", out=out, epochs=1, record="all", **QUICK["mnist-cnn"])


@pytest.mark.parametrize("layer", ["pool1", "pool2", "logits"])
def test_sp_mi_refuses_a_layer_that_is_not_s_plus_gaussian_noise(layer: str,
                                                                default_cnn_run: Path) -> None:
    with pytest.raises(EstimatorRequirementError) as refused:
        ibframe.estimate(default_cnn_run, ["sp-mi"], layers=["fc3", layer], device="cpu")
    message = str(refused.value)
    assert "\n" not in message and f"layer {layer!r}" in message
    assert "not S + Gaussian noise" in message and "-p beta=0.1" in message


@pytest.mark.filterwarnings("ignore::ibframe.errors.QualityWarning")  # 2 draws: not converged
def test_sp_mi_with_an_analysis_beta_estimates_every_cnn_layer(default_cnn_run: Path) -> None:
    run = ibframe.open_run(default_cnn_run)
    ds = ibframe.estimate(run, {"sp-mi": {"beta": run.beta, "n_points": 64}}, device="cpu")
    assert list(ds["layer"].values) == run.layers
    mi = ds["mi_x_t"].values
    assert np.isfinite(mi).all() and (mi > 0).all()


def test_deterministic_measures_apply_to_every_cnn_layer(default_cnn_run: Path) -> None:
    run = ibframe.open_run(default_cnn_run)
    ds = ibframe.estimate(run, {"binned-entropy": {}, "distance-histogram": {},
                                "cosine-similarity": {"other": str(default_cnn_run)}},
                          device="cpu")
    assert list(ds["layer"].values) == run.layers
    assert np.isfinite(ds["entropy_bin"].values).all()
    # the run compared with itself: every unit's weights have cosine similarity 1
    np.testing.assert_allclose(ds["cosine_mean"].values, 1.0, rtol=1e-5)


def test_a_layer_set_is_checked_against_the_experiment(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="pooled or pre-pool or noise-after-pool, not 'after'"):
        train("mnist-cnn", out=tmp_path / "a.zarr", layer_set="after")
    with pytest.raises(ParameterError, match="one fixed set of layers"):
        train("szt", out=tmp_path / "b.zarr", layer_set="pooled")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
