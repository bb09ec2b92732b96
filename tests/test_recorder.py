"""The recorder: noise semantics, user models, schedules, resuming, RNG and mode hygiene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ibframe
from ibframe.errors import ParameterError, StoreError
from ibframe.recording.datasets import Dataset, load_digits, szt_like
from ibframe.recording.nn import GaussianNoise, controlled_noise, mnist_cnn, noisy_mlp, szt_mlp
from ibframe.recording.recorder import (
    DEFAULT_DRAWS,
    Recorder,
    RecordSchedule,
    classification_metrics,
)

BETA = 0.1


def _small_data(n: int = 40, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, (n, 12)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) % 2).astype(np.int64)
    split = np.where(np.arange(n) < n * 3 // 4, "train", "test")
    return Dataset(x, y, split, "small", "random bits")


# -- schedules -----------------------------------------------------------------------------------


def test_schedule_parse_and_epochs() -> None:
    assert RecordSchedule.parse("all").epochs(3).tolist() == [0, 1, 2, 3]
    assert RecordSchedule.parse("every:5").epochs(12).tolist() == [0, 5, 10]
    assert RecordSchedule.parse("0, 10,2,1").epochs(5).tolist() == [0, 1, 2]
    assert str(RecordSchedule.parse("0,10,2,1")) == "0,1,2,10"
    log = RecordSchedule.parse("log:30").epochs(1000)
    assert len(log) == 30 and log[0] == 0 and log[-1] == 1000
    assert np.all(np.diff(log) > 0) and np.diff(log)[-1] > np.diff(log)[0]
    assert RecordSchedule.parse("log:50").epochs(9).tolist() == list(range(10))
    assert RecordSchedule.parse("log:4").includes(9, last_epoch=9)


@pytest.mark.parametrize("spec", ["", "every:0", "log:x", "some", "-1,2", "every:"])
def test_schedule_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ParameterError, match="record schedule"):
        RecordSchedule.parse(spec)


def test_log_schedule_needs_the_number_of_epochs() -> None:
    with pytest.raises(ParameterError, match="epochs"):
        RecordSchedule.parse("log:10").includes(3)


# -- noise semantics ------------------------------------------------------------------------------


def _record_small(tmp_path: Path, draws: int = 16, **kwargs: object) -> tuple[Recorder, Dataset]:
    torch.manual_seed(0)
    data = _small_data()
    net = noisy_mlp((12, 6, 4, 2), beta=BETA)
    recorder = Recorder.for_network(net, tmp_path / "run.zarr", data, draws=draws, **kwargs)
    return recorder, data


def test_layer_one_stores_no_draws_deeper_draws_differ(tmp_path: Path) -> None:
    recorder, _ = _record_small(tmp_path)
    with recorder:
        recorder.record(0)
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert run.layer_attrs("h1")["deterministic_given_x"] is True
    assert run.layer_attrs("h2")["deterministic_given_x"] is False
    assert run.conditional("h1") is None  # S_1 is a function of x: draws would be copies
    assert not (tmp_path / "run.zarr" / "layers" / "h1" / "S_cond").exists()
    h2 = run.conditional("h2").isel(epoch=0).values
    assert h2.shape == (40, 16, 4)
    spread = h2.std(axis=1)
    assert np.all(spread > 0) and 0.005 < spread.mean() < BETA


def test_a_noisy_network_gets_the_default_draws_for_every_input(tmp_path: Path) -> None:
    data = _small_data()
    recorder = Recorder.for_network(noisy_mlp((12, 6, 4, 2), beta=BETA), tmp_path / "a.zarr",
                                    data, schedule="log:5", epochs=100)
    with recorder:
        assert recorder.draws == DEFAULT_DRAWS == 32
        assert recorder.conditional_index.tolist() == list(range(40))
        assert "32 conditional draws for 40 of them" in recorder.plan
        assert "for 5 epochs" in recorder.plan
    deterministic = Recorder.for_network(noisy_mlp((12, 6, 4, 2), beta=0.0),
                                         tmp_path / "b.zarr", data)
    with deterministic:
        assert deterministic.draws == 0 and deterministic.conditional_index is None
        assert "no conditional draws" in deterministic.plan


def test_the_store_budget_shrinks_the_conditional_inputs_and_says_so(tmp_path: Path) -> None:
    data = _small_data(n=400)
    net = noisy_mlp((12, 6, 4, 2), beta=BETA)
    # per epoch: S of h1 (6 units) and h2 (4) and the parameters, plus 32 draws of h2 per input
    per_input = 4 * 32 * 4
    fixed = 4 * 400 * (6 + 4) + 4 * sum(p.numel() for p in net.model.state_dict().values())
    budget = 11 * (fixed + 150 * per_input)  # 11 epochs of every:10 over 100; 150 inputs fit
    recorder = Recorder.for_network(net, tmp_path / "a.zarr", data, schedule="every:10",
                                    epochs=100, max_store_bytes=budget)
    with recorder:
        assert len(recorder.conditional_index) == 150
        assert "for 150 of them" in recorder.plan and "all 400 would need" in recorder.plan
        for epoch in (0, 10):
            recorder.step(epoch)
    # what the plan promised is what the store holds
    run = ibframe.open_run(tmp_path / "a.zarr")
    assert run.conditional("h2").shape == (2, 150, 32, 4)
    assert run.conditional("h1") is None
    # an explicit choice is kept whatever the budget
    explicit = Recorder.for_network(net, tmp_path / "b.zarr", data, schedule="every:10",
                                    epochs=100, max_store_bytes=budget, conditional_samples=300)
    with explicit:
        assert len(explicit.conditional_index) == 300
        assert "all 400 would need" not in explicit.plan
    unlimited = Recorder.for_network(net, tmp_path / "c.zarr", data, schedule="every:10",
                                     epochs=100, max_store_bytes=None)
    with unlimited:
        assert len(unlimited.conditional_index) == 400


def test_draws_on_a_deterministic_network_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="deterministic network"):
        Recorder.for_network(noisy_mlp((12, 6, 4, 2), beta=0.0), tmp_path / "a.zarr",
                             _small_data(), draws=4)


def _hand_forward(
    params: dict[str, np.ndarray], x: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_1 and S_2 of the 12-6-4-2 network from its stored weights, drawing noise by hand."""
    w = {k: torch.as_tensor(v) for k, v in params.items()}
    s1 = torch.tanh(x @ w["fc1.weight"].T + w["fc1.bias"])
    t1 = s1 + BETA * torch.randn(s1.shape, generator=generator)
    s2 = torch.tanh(t1 @ w["fc2.weight"].T + w["fc2.bias"])
    torch.randn(s2.shape, generator=generator)  # noise2, drawn but only felt by the output
    return s1, s2


def test_recorded_s_matches_hand_computation_with_the_epochs_generator(tmp_path: Path) -> None:
    recorder, data = _record_small(tmp_path, draws=5, conditional_samples=7)
    with recorder:
        recorder.record(3)
    run = ibframe.open_run(tmp_path / "run.zarr")
    params = run.params(3)
    generator = recorder.noise_generator(3)
    x = torch.as_tensor(data.x)
    # the unconditional pass: S stored before the noise, layer 2 computed from the noisy T_1
    s1, s2 = _hand_forward(params, x, generator)
    np.testing.assert_allclose(run.activations("h1").isel(epoch=0), s1, atol=1e-6)
    np.testing.assert_allclose(run.activations("h2").isel(epoch=0), s2, atol=1e-6)
    # then the conditional passes: each selected x repeated `draws` times, fresh noise each
    cond = run.conditional("h2")
    index = cond["cond_sample"].values
    assert np.array_equal(index, recorder.conditional_index) and len(index) == 7
    _, c2 = _hand_forward(params, x[np.repeat(index, 5)], generator)
    np.testing.assert_allclose(cond.isel(epoch=0), c2.reshape(7, 5, 4), atol=1e-6)


def test_noise_reaches_the_next_layer(tmp_path: Path) -> None:
    """atanh(S_2) - (W_2 S_1 + b_2) = W_2 Z_1: its covariance is beta^2 W_2 W_2^T."""
    torch.manual_seed(1)
    n = 4000
    data = Dataset(
        np.random.default_rng(1).normal(size=(n, 12)).astype(np.float32) * 0.3,
        np.zeros(n, np.int64),
        np.full(n, "train"),
        "gauss",
        "",
    )
    net = noisy_mlp((12, 6, 4, 2), beta=BETA)
    with Recorder.for_network(net, tmp_path / "run.zarr", data) as recorder:
        recorder.record(0)
    run = ibframe.open_run(tmp_path / "run.zarr")
    params = run.params(0)
    s1 = run.activations("h1").isel(epoch=0).values.astype(np.float64)
    s2 = run.activations("h2").isel(epoch=0).values.astype(np.float64)
    w2, b2 = params["fc2.weight"].astype(np.float64), params["fc2.bias"].astype(np.float64)
    residual = np.arctanh(s2) - (s1 @ w2.T + b2)
    np.testing.assert_allclose(residual.mean(axis=0), 0, atol=0.01)
    expected = BETA**2 * w2 @ w2.T
    np.testing.assert_allclose(np.cov(residual.T), expected, atol=0.1 * np.abs(expected).max())


def test_recorded_s_equals_a_direct_pass_with_the_same_noise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = szt_like()
    net = szt_mlp(beta=BETA)
    with Recorder.for_network(net, tmp_path / "run.zarr", data, batch_size=10_000) as recorder:
        recorder.record(0)
    captured = {}
    hook = net.model.act3.register_forward_hook(lambda m, i, out: captured.update(s=out))
    with (
        torch.no_grad(),
        controlled_noise(net.model.eval(), net.noise_modules, BETA, recorder.noise_generator(0)),
    ):
        net.model(torch.as_tensor(data.x))
    hook.remove()
    stored = ibframe.open_run(tmp_path / "run.zarr").activations("h3").isel(epoch=0).values
    assert np.array_equal(stored, captured["s"].numpy())


def test_deterministic_network_records_the_eval_forward_pass(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = _small_data()
    net = noisy_mlp((12, 6, 4, 2), beta=0.0)
    model = net.model.eval()
    with Recorder.for_network(net, tmp_path / "run.zarr", data) as recorder:
        recorder.record(0)
        recorder.record(1)
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert run.beta == 0 and run.conditional("h1") is None
    x = torch.as_tensor(data.x)
    with torch.no_grad():
        expected = torch.tanh(model.fc2(torch.tanh(model.fc1(x))))
    s = run.activations("h2").values
    np.testing.assert_allclose(s[0], expected, atol=1e-6)
    assert np.array_equal(s[0], s[1])


# -- hygiene: RNG and modes -------------------------------------------------------------------------


def _train(record: Path | None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    data = _small_data()
    net = noisy_mlp((12, 6, 4, 2), beta=BETA)
    optim = torch.optim.SGD(net.model.parameters(), lr=0.1)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    recorder = None
    if record is not None:
        recorder = Recorder.for_network(
            net, record, data, draws=3, metrics_fn=classification_metrics
        )
    for epoch in range(4):
        if recorder is not None:
            recorder.step(epoch)
        net.model.train()
        optim.zero_grad()
        nn.functional.cross_entropy(net.model(x), y).backward()
        optim.step()
    return [p.detach().clone() for p in net.model.parameters()]


def test_recording_does_not_disturb_training(tmp_path: Path) -> None:
    plain = _train(None)
    recorded = _train(tmp_path / "run.zarr")
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))
    assert ibframe.open_run(tmp_path / "run.zarr").epochs.tolist() == [0, 1, 2, 3]


def test_recording_restores_each_modules_mode(tmp_path: Path) -> None:
    recorder, _ = _record_small(tmp_path)
    model = recorder.model
    model.train()
    model.fc2.eval()
    recorder.record(0)
    assert model.training and model.fc1.training and not model.fc2.training
    model.eval()
    recorder.record(1)
    assert not any(m.training for m in model.modules())


# -- a user's own model ---------------------------------------------------------------------------


class HomeMadeNoise(nn.Module):
    """A user's noise module; the recorder must not call its forward."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.sigma * torch.randn_like(x) if self.training else x


class UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, 5), nn.ReLU())
        self.noise_a = HomeMadeNoise(0.2)
        self.decoder = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.Tanh())
        self.noise_b = HomeMadeNoise(0.2)
        self.head = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.noise_a(self.encoder(x))
        h = self.noise_b(self.decoder(h[:, None, :]))
        return self.head(h.flatten(1))


def test_recording_a_users_model_by_module_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = _small_data()
    model = UserModel()
    recorder = Recorder(
        model,
        tmp_path / "run.zarr",
        x=data.x,
        y=data.y,
        split=data.split,
        layers={"enc": "encoder.1", "dec": "decoder.1"},
        noise=["noise_a", "noise_b"],
        beta=0.2,
        draws=4,
        conditional_samples=10,
        metrics_fn=classification_metrics,
    )
    with recorder:
        recorder.record(0, metrics={"loss_train": 123.0, "lr": 0.1})
    assert model.noise_a.calls == model.noise_b.calls == 0
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert run.layers == ["enc", "dec"]
    assert run.layer_attrs("enc")["deterministic_given_x"] is True
    dec = run.layer_attrs("dec")
    assert dec["deterministic_given_x"] is False and dec["shape"] == [2, 5] and dec["units"] == 10
    assert dec["kind"] == "conv" and dec["module"] == "decoder.1"
    assert run.activations("dec").shape == (1, 40, 10)
    assert run.conditional("dec").shape == (1, 10, 4, 10)
    enc = run.activations("enc").isel(epoch=0).values
    assert enc.min() >= 0  # ReLU output, before the noise
    metrics = run.metrics().isel(epoch=0)
    assert float(metrics["loss_train"]) == 123.0 and float(metrics["lr"]) == 0.1
    assert 0 <= float(metrics["accuracy_test"]) <= 1
    assert set(run.params(0)) == set(model.state_dict())


def test_conv_layers_are_flattened_with_their_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = mnist_cnn(beta=BETA, input_size=8)
    rng = np.random.default_rng(0)
    data = Dataset(
        rng.uniform(size=(6, 1, 8, 8)).astype(np.float32),
        np.arange(6, dtype=np.int64),
        np.full(6, "train"),
        "img",
        "",
    )
    with Recorder.for_network(net, tmp_path / "run.zarr", data, draws=2) as recorder:
        recorder.record(0)
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert run.layer_attrs("pool1")["shape"] == [16, 4, 4]
    assert run.activations("pool1").shape == (1, 6, 256)
    assert run.activations("fc3").shape == (1, 6, 128)
    assert run.activations("logits").shape == (1, 6, 10)
    assert [run.layer_attrs(name)["deterministic_given_x"] for name in run.layers] == [
        True,
        False,
        False,
        False,
    ]
    assert run.layer_attrs("logits")["description"].startswith("paper's Layer 4")


def test_pooled_cnn_layer_s_is_the_pooling_of_the_noiseless_tanh(tmp_path: Path) -> None:
    """The paper's order, tanh - noise - maxpool: S_l pools the tanh before its own noise, and
    carries the noise of the layers before (drawn here by hand from the epoch's generator)."""
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    net = mnist_cnn(beta=BETA, input_size=8)
    data = load_digits()
    data = Dataset(data.x[:50], data.y[:50], data.split[:50], data.name, data.description)
    with Recorder.for_network(net, tmp_path / "run.zarr", data, draws=3,
                              conditional_samples=5) as recorder:
        recorder.record(0)
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert [run.layer_attrs(name)["noise"] for name in run.layers] == [
        "before-pooling", "before-pooling", "additive", "none"]
    assert run.layer_attrs("pool1")["module"] == "tanh1"
    assert run.layer_attrs("pool1")["pool"] == "pool1"
    model, generator = net.model.eval(), recorder.noise_generator(0)

    def by_hand(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tanh1 = model.tanh1(model.bn1(model.conv1(x)))
        t1 = F.max_pool2d(tanh1 + BETA * torch.randn(tanh1.shape, generator=generator), 2)
        tanh2 = model.tanh2(model.bn2(model.conv2(t1)))
        t2 = F.max_pool2d(tanh2 + BETA * torch.randn(tanh2.shape, generator=generator), 2)
        tanh3 = model.tanh3(model.bn3(model.fc3(t2.flatten(1))))
        torch.randn(tanh3.shape, generator=generator)  # noise3, felt by the logits only
        return F.max_pool2d(tanh1, 2), F.max_pool2d(tanh2, 2)

    x = torch.as_tensor(data.x)
    with torch.no_grad():
        s1, s2 = by_hand(x)
        np.testing.assert_allclose(run.activations("pool1").isel(epoch=0), s1.flatten(1),
                                   atol=1e-6)
        np.testing.assert_allclose(run.activations("pool2").isel(epoch=0), s2.flatten(1),
                                   atol=1e-6)
        index = recorder.conditional_index
        _, c2 = by_hand(x[np.repeat(index, 3)])
    np.testing.assert_allclose(run.conditional("pool2").isel(epoch=0), c2.reshape(5, 3, -1),
                               atol=1e-6)
    assert run.conditional("pool1") is None  # a function of x: its own noise is not in S


def test_configuration_errors(tmp_path: Path) -> None:
    data = _small_data()
    model = UserModel()
    common = {"x": data.x, "layers": {"enc": "encoder.1"}}
    with pytest.raises(ParameterError, match="pass beta"):
        Recorder(model, tmp_path / "a.zarr", noise=["noise_a"], **common)
    with pytest.raises(ParameterError, match="no noise modules"):
        Recorder(model, tmp_path / "b.zarr", beta=0.1, **common)
    with pytest.raises(ParameterError, match="no module"):
        Recorder(model, tmp_path / "c.zarr", x=data.x, layers=["encoder.7"])
    shared = nn.Tanh()
    twice = nn.Sequential(nn.Linear(12, 12), shared, GaussianNoise(0.1), shared)
    with pytest.raises(ParameterError, match="2 times"):
        Recorder(twice, tmp_path / "d.zarr", x=data.x, layers=["1"])


# -- resuming ------------------------------------------------------------------------------------


def test_resume_appends_epochs(tmp_path: Path) -> None:
    recorder, data = _record_small(tmp_path, draws=4, conditional_samples=5, schedule="every:2")
    with recorder:
        for epoch in range(3):
            recorder.step(epoch)
    first_index = recorder.conditional_index
    resumed = Recorder.for_network(
        noisy_mlp((12, 6, 4, 2), beta=BETA),
        tmp_path / "run.zarr",
        data,
        draws=99,  # the store's settings win when resuming
        schedule="every:2",
        resume=True,
    )
    with resumed:
        assert resumed.draws == 4
        assert np.array_equal(resumed.conditional_index, first_index)
        assert resumed.step(2) is None  # already recorded
        for epoch in range(3, 7):
            resumed.step(epoch)
    run = ibframe.open_run(tmp_path / "run.zarr")
    assert run.epochs.tolist() == [0, 2, 4, 6]
    assert run.conditional("h2").shape == (4, 5, 4, 4)


def test_resume_refuses_a_different_network(tmp_path: Path) -> None:
    recorder, data = _record_small(tmp_path)
    with recorder:
        recorder.record(0)
    with pytest.raises(StoreError, match="layers"):
        Recorder.for_network(
            noisy_mlp((12, 6, 2), beta=BETA), tmp_path / "run.zarr", data, resume=True
        )
