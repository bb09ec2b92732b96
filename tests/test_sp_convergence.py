"""sp-mi converges, and says when it has not: against numerical integration on a recorded network.

The reference is a noisy two-layer 1-D tanh network, T_1 = tanh(w1 x + b1) + Z_1,
T_2 = tanh(w2 T_1 + b2) + Z_2, with X uniform over its inputs: p(t_2 | x) is a 1-D integral over
t_1 (Gauss-Hermite), and h(T_2), h(T_2 | X) follow by the trapezoid rule on a fine grid. It is
recorded by the real Recorder (noise modules, conditional passes), then estimated by sp-mi.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import ibframe
from ibframe.errors import QualityWarning
from ibframe.recording.nn import noisy_mlp
from ibframe.recording.recorder import DEFAULT_DRAWS, Recorder


class TwoLayerNet:
    """The network, its exact information by quadrature, and its recording."""

    def __init__(self, xs: np.ndarray, w1: float, b1: float, w2: float, b2: float,
                 beta: float) -> None:
        self.xs, self.beta = np.asarray(xs, dtype=np.float64), beta
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2

    def information(self) -> tuple[float, float, float]:
        """(I(X;T_2), h(T_2), h(T_2|X)) by quadrature."""
        beta = self.beta
        u, wq = np.polynomial.hermite.hermgauss(200)
        t2 = np.linspace(-1 - 12 * beta, 1 + 12 * beta, 40001)
        dt = t2[1] - t2[0]
        s1 = np.tanh(self.w1 * self.xs + self.b1)

        def density(s: float) -> np.ndarray:
            means = np.tanh(self.w2 * (s + beta * math.sqrt(2) * u) + self.b2)
            z = (t2[None, :] - means[:, None]) / beta
            phi = np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * beta)
            return (wq[:, None] * phi).sum(0) / math.sqrt(math.pi)

        def entropy(p: np.ndarray) -> float:
            return float(-np.trapezoid(p * np.log(np.where(p > 0, p, 1.0)), dx=dt))

        cond = np.array([density(s) for s in s1])
        h_t, h_c = entropy(cond.mean(0)), float(np.mean([entropy(p) for p in cond]))
        return h_t - h_c, h_t, h_c

    def record(self, path, draws: int | None = None) -> ibframe.Run:
        """Record one epoch through the real Recorder; ``draws=None`` uses its default."""
        network = noisy_mlp((1, 1, 1, 2), beta=self.beta)
        with torch.no_grad():
            model = network.model
            model.fc1.weight.fill_(self.w1)
            model.fc1.bias.fill_(self.b1)
            model.fc2.weight.fill_(self.w2)
            model.fc2.bias.fill_(self.b2)
        options = {} if draws is None else {"draws": draws}  # None: the recorder's default
        recorder = Recorder(network.model, path, x=self.xs[:, None].astype(np.float32),
                            layers=network.layers, beta=self.beta, seed=3, **options)
        with recorder:
            recorder.record(0)
        return ibframe.open_run(path)


NET = TwoLayerNet(np.linspace(-1, 1, 64), w1=1.0, b1=0.0, w2=3.0, b2=0.0, beta=0.1)


@pytest.fixture(scope="module")
def truth() -> tuple[float, float, float]:
    return NET.information()


def test_defaults_reach_the_integral(tmp_path, truth):
    """Default recording and default sp-mi: I(X;T_2) within 0.03 nats of the quadrature."""
    run = NET.record(tmp_path / "net.zarr")
    assert run.draws == DEFAULT_DRAWS
    ds = ibframe.estimate(run, ["sp-mi"], device="cpu")
    mi = ds["mi_x_t"].sel(layer="h2").item()
    assert abs(mi - truth[0]) < 0.03, (mi, truth[0])
    assert bool(ds["converged"].sel(layer="h2"))
    # layer 1 is deterministic given x: its conditional entropy is the noise's, exactly
    assert ds["h_t_given_x"].sel(layer="h1").item() == pytest.approx(
        0.5 * math.log(2 * math.pi * math.e * 0.01))


def test_too_few_draws_are_caught(tmp_path):
    """With 3 draws the estimate is biased up; the diagnostic gives the sign and most of it."""
    net = TwoLayerNet(np.linspace(-1, 1, 256), w1=1.0, b1=0.0, w2=3.0, b2=0.0, beta=0.1)
    exact = net.information()[0]
    run = net.record(tmp_path / "few.zarr", draws=3)
    with pytest.warns(QualityWarning, match=r"sp-mi: not converged .* h2 at all 1 epochs"):
        ds = ibframe.estimate(run, ["sp-mi"], layers=["h2"], device="cpu")
    error = ds["mi_x_t"].item() - exact
    predicted = ds["mi_x_t_bias"].item()
    assert error > 0.05  # far outside the MC error
    assert predicted > 0 and predicted >= 0.5 * error, (predicted, error)
    assert not bool(ds["converged"])
    assert not bool(ds["saturated"])


def test_every_realisation_enters_h_t(tmp_path, truth):
    """Pooling the draws removes most of the bias of h(T) from one realisation per input."""
    run = NET.record(tmp_path / "net.zarr")
    # the bias removed is ~0.005 nats here: enough points to see it (standard error 0.002)
    pooled = ibframe.estimate(run, {"sp-mi": {"n_points": 40000}}, layers=["h2"], device="cpu",
                              cache=False)
    with pytest.warns(QualityWarning, match="not converged"):  # its bias cannot be estimated
        draw0 = ibframe.estimate(run, {"sp-mi": {"pool_draws": False, "n_points": 40000}},
                                 layers=["h2"], device="cpu", cache=False)
    assert pooled["n_centres"].item() == 64 * (1 + DEFAULT_DRAWS)
    assert draw0["n_centres"].item() == 64
    assert abs(pooled["h_t"].item() - truth[1]) < abs(draw0["h_t"].item() - truth[1])
    assert math.isnan(draw0["h_t_bias"].item())  # one realisation: nothing to halve
    assert not bool(draw0["converged"])


def test_saturation_is_flagged(tmp_path):
    """Few draws, a tiny beta and a wide layer: every conditional mixture falls apart."""
    rng = np.random.default_rng(0)
    network = noisy_mlp((8, 50, 20, 2), beta=0.001, activation="linear")
    with torch.no_grad():  # a gain of sqrt(50) per unit: draws ~ 40 beta apart in 20 dimensions
        network.model.fc2.weight.copy_(torch.as_tensor(rng.standard_normal((20, 50))))
    x = rng.standard_normal((64, 8)).astype(np.float32)
    recorder = Recorder(network.model, tmp_path / "sat.zarr", x=x, layers=network.layers,
                        beta=0.001, draws=4, seed=0)
    with recorder:
        recorder.record(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ibframe.estimate(tmp_path / "sat.zarr", ["sp-mi"], layers=["h2"], device="cpu")
    assert bool(ds["saturated"]) and not bool(ds["converged"])
    # the conditional entropy is ln(1 + draws) above the noise's: it measures the draws
    noise = 0.5 * 20 * math.log(2 * math.pi * math.e * 1e-6)
    assert ds["h_t_given_x"].item() - noise == pytest.approx(math.log(5), abs=0.01)
    assert any(isinstance(w.message, QualityWarning) for w in caught)


def test_points_are_added_only_when_the_first_sample_misses_the_target(tmp_path):
    """h(T) starts at two points per input (at least 1024) and adds the points its standard
    error asks for: none at a loose target, enough to come near a tight one."""
    run = NET.record(tmp_path / "net.zarr")
    loose = ibframe.estimate(run, {"sp-mi": {"target_stderr": 0.5}}, layers=["h2"],
                             device="cpu", cache=False)
    tight = ibframe.estimate(run, {"sp-mi": {"target_stderr": 0.004}}, layers=["h2"],
                             device="cpu", cache=False)
    assert loose["n_points"].item() == 1024
    assert loose["h_t_stderr"].item() > 0.004  # so the tight target needs more points
    assert tight["n_points"].item() > 1024
    # the variance estimate behind the choice is itself noisy: within 1.5x of the target
    assert tight["h_t_stderr"].item() < 1.5 * 0.004
