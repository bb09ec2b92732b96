"""Theorem 5 and 6 diagnostics against the numbers Goldfeld et al. (2019) state."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ibframe.errors import ParameterError, SampleSizeWarning
from ibframe.kernels.mixture import gaussian_mixture_entropy
from ibframe.theory import (
    SPDiagnostics,
    bias_lower_bound,
    binary_entropy,
    epsilon_lower_limit,
    k_star,
    log_required_samples,
    mc_mse_bound,
    mc_mse_bound_bounded,
    mc_mse_bound_second_moment,
    required_samples,
    sample_size_warning,
    sp_diagnostics,
)


def test_k_star_is_3_up_to_d_11_and_2_up_to_d_10000_at_beta_01() -> None:
    assert {k_star(d, 0.1, 0.01) for d in range(1, 12)} == {3}
    dims = [12, 13, 20, 50, 100, 1000, 5000, 10_000]
    assert {k_star(d, 0.1, 0.01) for d in dims} == {2}


def test_binary_entropy_of_001_is_0056_nats() -> None:
    assert binary_entropy(0.01) == pytest.approx(0.056, abs=5e-4)
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0


def test_epsilon_range_starts_below_00057_up_to_d_10000() -> None:
    limits = [epsilon_lower_limit(d, 0.1) for d in (1, 10, 100, 1000, 10_000)]
    assert limits == sorted(limits)
    # the paper's "at most 0.0057" is to two significant digits: the value at d = 1e4 is 0.005717
    assert round(limits[-1], 4) == 0.0057
    q = 2 * 2.866515718791939e-07  # 2 Q(5), Q(5) from tables
    assert limits[0] == pytest.approx(q, rel=1e-9)
    assert limits[-1] == pytest.approx(1 - (1 - q) ** 10_000, rel=1e-9)


def test_bias_bound_and_required_samples_follow_theorem_5() -> None:
    d, n = 10, 4096
    log_req = 10 * 0.99 * math.log(3)
    assert log_required_samples(d, 0.1) == pytest.approx(log_req)
    assert required_samples(d, 0.1) == pytest.approx(3**9.9)
    expected = log_req - math.log(n) - binary_entropy(0.01)
    assert bias_lower_bound(n, d, 0.1) == pytest.approx(expected)
    # "the bias cannot be less than delta so long as n <= k*^(d(1-eps)) e^-(delta + Hb(eps))"
    delta = 0.3
    n_max = math.floor(math.exp(log_req - delta - binary_entropy(0.01)))
    assert bias_lower_bound(n_max, d, 0.1) >= delta
    assert bias_lower_bound(n_max + 2, d, 0.1) < delta


def test_required_samples_overflow_to_inf_but_the_log_stays_finite() -> None:
    assert required_samples(1000, 0.1) == pytest.approx(2.0**990)
    assert required_samples(2000, 0.1) == math.inf
    assert log_required_samples(2000, 0.1) == pytest.approx(2000 * 0.99 * math.log(2))
    assert math.isfinite(bias_lower_bound(10, 2000, 0.1))


def test_epsilon_outside_the_theorem_range_is_rejected() -> None:
    with pytest.raises(ParameterError, match="epsilon must lie"):
        k_star(10, 0.5, 0.01)  # at beta = 0.5 the range starts near 0.98
    with pytest.raises(ParameterError, match="epsilon must lie"):
        k_star(10, 0.1, 1.0)
    with pytest.raises(ParameterError):
        k_star(0, 0.1)
    with pytest.raises(ParameterError):
        k_star(10, -0.1)
    with pytest.raises(ParameterError):
        binary_entropy(1.5)


def test_mc_mse_bounds_of_theorem_6() -> None:
    n, n_mc, d, beta = 4096, 8, 10, 0.1
    tanh_bound = 2 * d * (2 + beta**2) / (beta**2 * n * n_mc)
    assert mc_mse_bound_bounded(n, n_mc, d, beta) == pytest.approx(tanh_bound)
    assert mc_mse_bound(n, n_mc, d, beta) == pytest.approx(tanh_bound)
    m_c = 3.0
    relu = (
        9 * d * beta**2
        + 8 * (2 + beta * math.sqrt(d)) * m_c
        + 3 * (11 * beta * math.sqrt(d) + 1) * math.sqrt(m_c)
    ) / (beta**2 * n * n_mc)
    assert mc_mse_bound_second_moment(n, n_mc, d, beta, m_c) == pytest.approx(relu)
    assert mc_mse_bound(n, n_mc, d, beta, second_moment=m_c) == pytest.approx(relu)
    with pytest.raises(ParameterError, match="second_moment"):
        mc_mse_bound_second_moment(n, n_mc, d, beta, -1.0)


def test_measured_mc_error_respects_the_theorem_6_bound() -> None:
    centers = np.tanh(np.random.default_rng(0).normal(size=(500, 5)))
    _, se = gaussian_mixture_entropy(centers, 0.1, n_mc=4, seed=0, return_stderr=True)
    assert se**2 < mc_mse_bound(500, 4, 5, 0.1)


def test_sp_diagnostics_collects_both_theorems() -> None:
    diag = sp_diagnostics(4096, 8, 10, 0.1)
    assert isinstance(diag, SPDiagnostics)
    assert diag.k_star == 3
    assert diag.epsilon == 0.01
    assert diag.mc_mse_bound == pytest.approx(mc_mse_bound(4096, 8, 10, 0.1))
    assert diag.mc_rmse_bound == pytest.approx(math.sqrt(diag.mc_mse_bound))
    assert diag.bias_lower_bound == pytest.approx(bias_lower_bound(4096, 10, 0.1))
    assert diag.required_samples == pytest.approx(3**9.9)
    assert diag.undersampled
    big = sp_diagnostics(4096, 1, 5000, 0.1)
    assert big.required_samples == math.inf
    assert big.log_required_samples == pytest.approx(5000 * 0.99 * math.log(2))
    relu = sp_diagnostics(100, 2, 3, 0.1, second_moment=2.0)
    assert relu.mc_mse_bound == pytest.approx(mc_mse_bound(100, 2, 3, 0.1, second_moment=2.0))


def test_sp_diagnostics_leaves_theorem_5_blank_where_it_does_not_apply() -> None:
    diag = sp_diagnostics(100, 1, 10, 0.5)
    assert diag.k_star is None
    assert math.isnan(diag.bias_lower_bound)
    assert math.isnan(diag.required_samples)
    assert not diag.undersampled
    assert math.isfinite(diag.mc_mse_bound)


def test_sample_size_warning_fires_only_when_the_bias_bound_is_positive() -> None:
    with pytest.warns(SampleSizeWarning, match="Theorem 5"):
        message = sample_size_warning(1000, 20, 0.1)
    assert message is not None
    assert "k*=2" in message
    assert sample_size_warning(1000, 20, 0.1, emit=False) == message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample_size_warning(10**7, 12, 0.1) is None  # 2^11.88 ~ 3800 < 1e7
        assert sample_size_warning(10, 10, 0.5) is None  # theorem does not apply
