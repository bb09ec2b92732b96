"""sp-mi on cases with known answers, on a hand-built noisy network, and its refusals."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest

import ibframe
from ibframe.engine import estimate
from ibframe.errors import EstimatorRequirementError, ParameterError
from ibframe.estimator import Block
from ibframe.estimators.sp_mi import SPMutualInformation
from ibframe.testing import EstimatorChecks, make_test_run

# Small test networks with few draws are not converged: that is reported by a QualityWarning,
# tested in tests/test_sp_convergence.py.
pytestmark = pytest.mark.filterwarnings("ignore::ibframe.errors.QualityWarning")


def _block(s, s_cond=None, y=None, beta=0.1, deterministic=True):
    return Block(
        layer="h",
        epoch=0,
        layer_index=1 if deterministic else 2,
        s=s,
        s_cond=s_cond,
        cond_index=None if s_cond is None else np.arange(len(s_cond)),
        y=y,
        beta=beta,
        deterministic_given_x=deterministic,
    )


def _gauss(d, beta):
    return 0.5 * d * math.log(2 * math.pi * math.e * beta**2)


def test_first_layer_uses_the_closed_form_conditional_entropy():
    s = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    ds = SPMutualInformation().compute(_block(s))
    assert ds["h_t_given_x"].item() == pytest.approx(_gauss(3, 0.1), abs=1e-12)
    assert ds["h_t_given_x_stderr"].item() == 0
    assert ds["n_conditionals"].item() == 0


def test_identical_centres_carry_no_information():
    ds = SPMutualInformation().compute(_block(np.full((300, 2), 0.3)))
    assert ds["mi_x_t"].item() == pytest.approx(0.0, abs=4 * ds["mi_x_t_stderr"].item() + 1e-9)


def test_separated_centres_carry_log_n():
    n = 64
    s = np.zeros((n, 2))
    s[:, 0] = np.arange(n)  # 1 apart, beta 0.01: no overlap
    ds = SPMutualInformation(beta=0.01).compute(_block(s, beta=0.01))
    assert ds["mi_x_t"].item() == pytest.approx(math.log(n), abs=1e-3)


def test_conditional_draws_equal_to_one_point_give_the_noise_entropy():
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, (100, 2))
    cond = np.repeat(s[:, None, :], 8, axis=1)  # every draw the same: h(T|X=x) = h(Z)
    ds = SPMutualInformation(n_mc_conditional=4).compute(_block(s, cond, deterministic=False))
    assert ds["h_t_given_x"].item() == pytest.approx(_gauss(2, 0.1), abs=3e-3)
    assert ds["n_conditionals"].item() == 100
    assert ds["h_t_given_x_bias"].item() == pytest.approx(0.0, abs=3e-3)  # nothing to sample
    # the pooled realisations coincide with draw 0: h(T) is that of the 100 centres
    assert ds["n_centres"].item() == 900
    assert ds["h_t"].item() == pytest.approx(
        ibframe.gaussian_mixture_entropy(s, 0.1, n_points=16384, seed=1), abs=0.03)


def test_labels_give_i_t_y_between_zero_and_h_y():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    s = np.stack([y * 2.0 - 1, rng.uniform(-1, 1, 400)], axis=1)  # the class is readable
    ds = SPMutualInformation().compute(_block(s, y=y))
    h_y = -sum(p * math.log(p) for p in np.bincount(y) / 400)
    assert ds["mi_t_y"].item() == pytest.approx(h_y, abs=0.02)
    s_blind = rng.uniform(-1, 1, (400, 2))  # independent of y
    blind = SPMutualInformation().compute(_block(s_blind, y=y))
    # the plug-in mixtures of 200 and 400 points differ a little: a small positive bias remains
    assert -3 * blind["mi_t_y_stderr"].item() < blind["mi_t_y"].item() < 0.1 * h_y


def test_bounds_sandwich_the_estimate():
    s = np.tanh(np.random.default_rng(3).standard_normal((150, 2)))
    ds = SPMutualInformation(bounds=True, n_points=4800).compute(_block(s))
    se = ds["mi_x_t_stderr"].item()
    assert ds["mi_x_t_lower"].item() - 3 * se <= ds["mi_x_t"].item()
    assert ds["mi_x_t"].item() <= ds["mi_x_t_upper"].item() + 3 * se


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    return make_test_run(
        tmp_path_factory.mktemp("sp") / "net.zarr",
        n=256,
        widths=(6, 4, 2),
        epochs=2,
        beta=0.2,
        draws=32,
    )


def test_hand_built_network_obeys_data_processing(network):
    ds = estimate(network, {"sp-mi": {"target_stderr": 0.005, "n_mc_conditional": 4}},
                  device="cpu")
    for epoch in ds["epoch"].values:
        mi = ds["mi_x_t"].sel(epoch=epoch).values
        se = ds["mi_x_t_stderr"].sel(epoch=epoch).values
        assert np.all(mi >= -3 * se)
        assert np.all(mi <= math.log(256) + 3 * se)
        for upper, lower in zip(range(len(mi) - 1), range(1, len(mi)), strict=True):
            assert mi[lower] <= mi[upper] + 3 * math.hypot(se[lower], se[upper])
    assert (ds["n_conditionals"].sel(layer="h1") == 0).all()
    assert (ds["n_conditionals"].sel(layer="h3") == 256).all()
    assert ds["mi_x_t"].attrs["units"] == "nat"


def test_conditional_subset_and_sample_subset(network):
    block = network.block("h2", 1)
    ds = SPMutualInformation(max_conditionals=40, max_samples=100).compute(block)
    assert ds["n_conditionals"].item() == 40 and ds["n_samples"].item() == 100
    full = SPMutualInformation().compute(block)
    assert ds["h_t_given_x_stderr"].item() > full["h_t_given_x_stderr"].item()


def test_deterministic_runs_are_refused_unless_given_a_beta(tmp_path):
    x = np.random.default_rng(4).uniform(-1, 1, (50, 3))
    with ibframe.create_run(tmp_path / "det.zarr", x=x, layers={"h": 3, "g": 2}) as run:
        run.append_epoch(0, {"h": np.tanh(x), "g": np.tanh(x[:, :2])})
    with pytest.raises(EstimatorRequirementError, match=r"binned-entropy.*beta=0.1"):
        estimate(run, ["sp-mi"])
    ds = estimate(run, {"sp-mi": {"beta": "0.1"}}, device="cpu")
    assert (ds["n_conditionals"] == 0).all()  # every layer of a deterministic net is exact given x


def test_noisy_layers_without_draws_are_refused(tmp_path):
    x = np.random.default_rng(5).uniform(-1, 1, (50, 3))
    with ibframe.create_run(
        tmp_path / "nodraws.zarr", x=x, beta=0.1, layers={"h": 3, "g": 2}
    ) as run:
        run.append_epoch(0, {"h": x, "g": x[:, :2]})
    with pytest.raises(EstimatorRequirementError, match="no recorded conditional draws"):
        estimate(run, ["sp-mi"], layers=["g"])
    estimate(run, ["sp-mi"], layers=["h"], device="cpu")  # layer 1 needs none


def test_theorem_5_is_a_diagnostic_not_a_warning():
    """The worst-case bound says nothing about this run: it is reported, never warned about."""
    s = np.random.default_rng(6).uniform(-1, 1, (50, 30))
    ds = SPMutualInformation(n_points=200).compute(_block(s))
    assert ds["bias_lower_bound"].item() > 0
    assert ds["required_samples"].item() > 50


def test_bad_parameters_are_refused():
    with pytest.raises(ParameterError, match="n_mc_conditional must be >= 1"):
        SPMutualInformation(n_mc_conditional=0)
    with pytest.raises(ParameterError, match="target_stderr must be a positive number"):
        SPMutualInformation(target_stderr=0.0)
    with pytest.raises(ParameterError, match="n_points must be >= 2"):
        SPMutualInformation(n_points=1)
    with pytest.raises(ParameterError, match="beta must be > 0"):
        SPMutualInformation(beta=-1.0)
    with pytest.raises(ParameterError, match="max_conditionals"):
        SPMutualInformation(max_conditionals=1)


class TestSPConformance(EstimatorChecks):
    estimator_class = SPMutualInformation
    params: ClassVar[dict] = {"n_points": 512, "bounds": True}


def test_reported_standard_errors_match_the_spread_over_seeds(network):
    block = network.block("h2", 1)
    results = [SPMutualInformation(seed=seed, max_conditionals=64).compute(block)
               for seed in range(40)]
    for name in ("mi_x_t", "mi_t_y"):
        values = np.array([r[name].item() for r in results])
        reported = np.mean([r[f"{name}_stderr"].item() for r in results])
        ratio = values.std(ddof=1) / reported
        # 40 seeds estimate a standard deviation to about +-11%
        assert 0.7 < ratio < 1.3, (name, values.std(ddof=1), reported)


def test_more_classes_than_ever_before():
    rng = np.random.default_rng(7)
    y = np.arange(300) % 100  # 100 classes
    s = rng.uniform(-1, 1, (300, 2))
    ds = SPMutualInformation().compute(_block(s, y=y))
    assert np.isfinite(ds["mi_t_y"].item())


def test_unbounded_layers_get_the_second_moment_bound():
    s = np.random.default_rng(8).normal(scale=3.0, size=(200, 2))  # ReLU-like: not in [-1, 1]
    from ibframe.theory import mc_mse_bound

    ds = SPMutualInformation().compute(_block(s))
    centred = s - s.mean(axis=0)
    points = int(ds["n_points"].item())  # Theorem 6 depends on the total number of MC points
    expected = mc_mse_bound(points, 1, 2, 0.1, second_moment=float((centred**2).sum(1).mean()))
    assert ds["mc_mse_bound"].item() == pytest.approx(expected)


def test_an_analysis_beta_other_than_the_runs_warns():
    s = np.random.default_rng(9).uniform(-1, 1, (50, 2))
    with pytest.warns(ibframe.errors.ParameterWarning, match="differs from the run's"):
        SPMutualInformation(beta=0.3).compute(_block(s, beta=0.1))
