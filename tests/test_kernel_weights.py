"""Weighted Gaussian mixtures: MC, control variate, bounds and standard errors, against
quadrature, closed forms and an independent numpy reference on the same points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import norm

from ibframe.errors import ParameterError
from ibframe.kernels.mixture import (
    draw_points,
    gaussian_entropy,
    gaussian_mixture_entropy,
    mc_entropy_estimate,
    mixture_log_density,
    stratified_stderr,
)


def weighted_quadrature(centers: np.ndarray, weights: np.ndarray, beta: float) -> float:
    """h(g) = -∫ g ln g of a weighted 1-D mixture by adaptive quadrature."""
    log_w = np.log(weights / weights.sum())

    def integrand(t: float) -> float:
        log_g = logsumexp(norm.logpdf(t, loc=centers, scale=beta) + log_w)
        return -math.exp(log_g) * log_g

    lo, hi = centers.min() - 14 * beta, centers.max() + 14 * beta
    value, _ = integrate.quad(integrand, lo, hi, points=list(centers), limit=400, epsabs=1e-11)
    return value


def reference_log_density(
    centers: np.ndarray, weights: np.ndarray, beta: float, own: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """Plain float64 log g(p) at p = centers[own] + beta * noise, g weighted."""
    d = centers.shape[1]
    points = centers[own] + beta * noise
    sq = ((points[:, None, :] - centers[None]) ** 2).sum(-1)
    log_w = np.log(weights / weights.sum())
    return logsumexp(-sq / (2 * beta**2) + log_w, axis=1) - 0.5 * d * math.log(
        2 * math.pi * beta**2
    )


def reference_estimate(log_g: np.ndarray, noise: np.ndarray) -> float:
    """Mean of -log g with the q control variate fitted by least squares (numpy)."""
    d = noise.shape[1]
    ell = -log_g
    quad = 0.5 * (noise**2).sum(-1) - d / 2
    q = quad - quad.mean()
    coefficient = np.linalg.lstsq(q[:, None], ell - ell.mean(), rcond=None)[0][0]
    return float(np.mean(ell - coefficient * quad))


# --------------------------------------------------------------------------------------------
# against quadrature and closed forms


@pytest.mark.parametrize(
    ("centers", "weights", "beta"),
    [
        (np.array([-1.0, 0.5, 2.0]), np.array([0.2, 0.5, 0.3]), 0.7),
        (np.array([-3.0, -1.0, 1.0, 3.0]), np.array([0.1, 0.1, 0.1, 0.7]), 1.0),
        (np.array([0.0, 0.3]), np.array([0.95, 0.05]), 0.2),
    ],
)
def test_weighted_one_dimensional_mixtures_match_quadrature(
    centers: np.ndarray, weights: np.ndarray, beta: float
) -> None:
    h_quad = weighted_quadrature(centers, weights, beta)
    h, se = gaussian_mixture_entropy(
        centers[:, None], beta, weights=weights, n_points=200_000, seed=3, return_stderr=True
    )
    assert se < 3e-3
    assert abs(h - h_quad) < 4 * se
    lower = gaussian_mixture_entropy(
        centers[:, None], beta, weights=weights, method="bhattacharyya-lower"
    )
    upper = gaussian_mixture_entropy(centers[:, None], beta, weights=weights, method="kl-upper")
    assert lower <= h_quad + 1e-9 <= upper + 2e-9


def test_separated_clusters_with_unequal_weights_add_their_discrete_entropy() -> None:
    d, beta = 3, 0.1
    rng = np.random.default_rng(0)
    cluster_weights = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    corners = 30.0 * np.eye(5, d + 2)[:, :d] + np.arange(5)[:, None]
    # each cluster: 4 centres within 1e-9 of its corner, the cluster's weight spread unevenly
    share = np.array([0.1, 0.2, 0.3, 0.4])
    centers = np.repeat(corners, 4, axis=0) + 1e-9 * rng.normal(size=(20, d))
    weights = (cluster_weights[:, None] * share[None, :]).ravel()
    expected = gaussian_entropy(d, beta) - float((cluster_weights * np.log(cluster_weights)).sum())
    for method in ("kl-upper", "bhattacharyya-lower"):
        value = gaussian_mixture_entropy(centers, beta, weights=weights, method=method)
        assert value == pytest.approx(expected, abs=1e-6)
    h, se = gaussian_mixture_entropy(
        centers, beta, weights=weights, n_points=4000, seed=1, return_stderr=True
    )
    # -log g is -log w_c + const + q within a cluster: the stratification by weight gives each
    # cluster exactly its share of the points, and the control variate removes q but for the
    # O(1/N) error of its fitted coefficient
    assert abs(h - expected) < 4 * se + 1e-9
    assert se < 1e-3


def test_equal_weights_reproduce_the_unweighted_results() -> None:
    rng = np.random.default_rng(2)
    centers = np.tanh(rng.normal(size=(300, 4)))
    plain = gaussian_mixture_entropy(centers, 0.2, seed=5, return_stderr=True)
    for weights in (np.full(300, 1 / 300), np.full(300, 7.0)):
        weighted = gaussian_mixture_entropy(
            centers, 0.2, weights=weights, seed=5, return_stderr=True
        )
        np.testing.assert_allclose(weighted, plain, rtol=0, atol=1e-12)
    for method in ("kl-upper", "bhattacharyya-lower"):
        assert gaussian_mixture_entropy(
            centers, 0.2, weights=np.ones(300), method=method
        ) == pytest.approx(gaussian_mixture_entropy(centers, 0.2, method=method), abs=1e-12)


# --------------------------------------------------------------------------------------------
# against a numpy reference on the same points


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weighted_mc_matches_a_numpy_reference_on_the_same_points(dtype: str) -> None:
    rng = np.random.default_rng(4)
    centers = np.tanh(rng.normal(size=(400, 5)))
    weights = rng.exponential(size=400)
    points = draw_points(weights, 1500, 5, seed=8)
    own = points.centre[0].numpy()
    noise = points.noise[0].double().numpy()
    log_g = reference_log_density(centers, weights, 0.1, own, noise)
    expected = reference_estimate(log_g, noise)
    got = gaussian_mixture_entropy(centers, 0.1, weights=weights, points=points, dtype=dtype)
    assert got == pytest.approx(expected, abs=1e-5 if dtype == "float32" else 1e-10)


def test_weighted_bounds_match_a_numpy_reference() -> None:
    rng = np.random.default_rng(6)
    centers = np.tanh(rng.normal(size=(250, 3)))
    weights = rng.exponential(size=250)
    w = weights / weights.sum()
    sq = ((centers[:, None] - centers[None]) ** 2).sum(-1)
    for method, divisor in (("kl-upper", 2.0), ("bhattacharyya-lower", 8.0)):
        lse = logsumexp(-sq / (divisor * 0.2**2) + np.log(w)[None], axis=1)
        expected = gaussian_entropy(3, 0.2) - float(w @ lse)
        got = gaussian_mixture_entropy(centers, 0.2, weights=weights, method=method,
                                       dtype="float64")
        assert got == pytest.approx(expected, abs=1e-10)


def test_zero_weight_centres_are_left_out() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(50, 2))
    weights = np.where(np.arange(50) < 30, 1.0, 0.0)
    for method in ("mc", "kl-upper"):
        with_zeros = gaussian_mixture_entropy(centers, 0.3, weights=weights, method=method,
                                              n_points=3000, seed=2)
        alone = gaussian_mixture_entropy(centers[:30], 0.3, method=method, n_points=3000,
                                         seed=2)
        # the same points: identical but for float32 rounding
        assert with_zeros == pytest.approx(alone, abs=1e-6)


# --------------------------------------------------------------------------------------------
# standard errors and the number of points


def test_weighted_stderr_matches_the_spread_over_seeds() -> None:
    rng = np.random.default_rng(0)
    centers = np.tanh(rng.normal(size=(150, 3)))
    weights = rng.exponential(size=150)
    runs = [
        gaussian_mixture_entropy(centers, 0.2, weights=weights, n_points=600, seed=s,
                                 return_stderr=True)
        for s in range(100)
    ]
    estimates, stderrs = np.array(runs).T
    ratio = stderrs.mean() / estimates.std(ddof=1)
    # 100 runs pin the spread to ~±14% (2 sigma); the stratified error may only overstate it
    assert 0.8 < ratio < 1.6


def test_points_are_decoupled_from_centres() -> None:
    rng = np.random.default_rng(3)
    centers = np.tanh(rng.normal(size=(2000, 4)))
    few, se_few = gaussian_mixture_entropy(centers, 0.2, n_points=500, seed=1, return_stderr=True)
    many, se_many = gaussian_mixture_entropy(centers, 0.2, n_points=8000, seed=1,
                                             return_stderr=True)
    assert se_many < se_few / 2.5  # 16x the points: ~1/4 the error
    assert abs(few - many) < 4 * math.hypot(se_few, se_many)
    h, _se, terms = gaussian_mixture_entropy(centers, 0.2, n_points=500, seed=1,
                                            return_stderr=True, return_terms=True)
    assert terms.shape == (500,)
    assert h == pytest.approx(terms.mean(), abs=1e-12)


def test_target_stderr_chooses_the_points() -> None:
    rng = np.random.default_rng(5)
    centers = np.tanh(rng.normal(size=(3000, 5)))
    _h, se, terms = gaussian_mixture_entropy(centers, 0.1, target_stderr=0.004, seed=0,
                                            return_stderr=True, return_terms=True)
    assert se < 0.006  # the pilot's estimate of the variance is itself noisy
    assert terms.shape[0] > 1024  # more than the pilot was needed


# --------------------------------------------------------------------------------------------
# groups: sub-mixtures from the same points


def test_group_columns_equal_the_sub_mixtures_at_the_same_points() -> None:
    rng = np.random.default_rng(7)
    n, d, beta = 600, 3, 0.15
    centers = np.tanh(rng.normal(size=(n, d)))
    weights = rng.exponential(size=n)
    labels = rng.integers(0, 3, n)
    half = np.arange(n) < n // 2
    groups = np.stack([labels == 0, labels == 1, labels == 2, half])
    points = draw_points(weights, 2400, d, seed=4)
    density = mixture_log_density(centers, beta, points, weights=weights, groups=groups,
                                  dtype="float64")
    log_g = density.log_density.numpy()
    assert log_g.shape == (2400, 5)
    own = points.centre[0].numpy()
    noise = points.noise[0].double().numpy()
    np.testing.assert_allclose(
        log_g[:, 0], reference_log_density(centers, weights, beta, own, noise), atol=1e-9
    )
    for column, member in enumerate(groups, start=1):
        inside = member[own]
        assert np.isnan(log_g[~inside, column]).all()
        expected = reference_log_density(centers[member], weights[member], beta,
                                         np.searchsorted(np.nonzero(member)[0], own[inside]),
                                         noise[inside])
        np.testing.assert_allclose(log_g[inside, column], expected, atol=1e-9)


def test_paired_class_differences_have_a_small_honest_error() -> None:
    rng = np.random.default_rng(9)
    n, d, beta = 800, 4, 0.3
    labels = rng.integers(0, 2, n)
    centers = np.tanh(rng.normal(size=(n, d)) + 0.8 * labels[:, None])
    groups = np.stack([labels == 0, labels == 1])
    runs = []
    for seed in range(40):
        points = draw_points(np.ones(n), 1600, d, seed=seed)
        density = mixture_log_density(centers, beta, points, groups=groups)
        log_g = density.log_density
        own_class = torch.from_numpy(labels)[points.centre[0]]
        conditional = torch.where(own_class == 0, log_g[:, 1], log_g[:, 2])
        # I(T;Y) = mean over points of log g_y(p) - log g(p): common random numbers
        pairs = conditional - log_g[:, 0]
        runs.append((float(pairs.mean()), float(stratified_stderr(pairs, points)[0])))
        h, se, _ = mc_entropy_estimate(log_g, points)
        assert h.shape == se.shape == (3,)
    estimates, stderrs = np.array(runs).T
    assert estimates.mean() > 0.05  # the classes are told apart
    ratio = stderrs.mean() / estimates.std(ddof=1)
    assert 0.7 < ratio < 1.8


# --------------------------------------------------------------------------------------------
# inputs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": -np.ones(4)}, ">= 0"),
        ({"weights": np.zeros(4)}, "positive sum"),
        ({"weights": np.ones(3)}, "shape"),
        ({"weights": np.array([1.0, 1e-16, 1.0, 1.0])}, "orders of magnitude"),
        ({"weights": np.ones(4), "noise": np.zeros((4, 2, 2))}, "points="),
        ({"n_points": 0}, "n_points"),
        ({"target_stderr": -1.0}, "target_stderr"),
        ({"strategy": "fast"}, "strategy"),
        ({"points": "points"}, "MixturePoints"),
    ],
)
def test_bad_weighted_input_raises_parameter_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        gaussian_mixture_entropy(np.zeros((4, 2)), 0.1, **kwargs)  # type: ignore[arg-type]


def test_points_must_match_the_centres() -> None:
    points = draw_points(np.ones(4), 10, 3, seed=0)
    with pytest.raises(ParameterError, match="dimensions"):
        gaussian_mixture_entropy(np.zeros((4, 2)), 0.1, points=points)
    with pytest.raises(ParameterError, match="outside"):
        gaussian_mixture_entropy(np.zeros((2, 3)), 0.1, points=points)
    with pytest.raises(ParameterError, match="groups"):
        mixture_log_density(np.zeros((4, 3)), 0.1, points, groups=np.ones((2, 3), bool))
    with pytest.raises(ParameterError, match="at least one"):
        mixture_log_density(np.zeros((4, 3)), 0.1, points, groups=np.zeros((1, 4), bool))


def test_batched_conditional_mixtures_on_a_subset_of_their_draws() -> None:
    """h(T|X=x) of b small mixtures and of their first half of draws, from the same points."""
    rng = np.random.default_rng(12)
    b, draws, d, beta = 300, 8, 3, 0.05
    centers = np.tanh(rng.normal(size=(b, 1, d)) + 0.05 * rng.normal(size=(b, draws, d)))
    first_half = (np.arange(draws) < draws // 2)[None]
    points = draw_points(np.ones((b, draws)), 2 * draws, d, seed=3)
    density = mixture_log_density(centers, beta, points, groups=first_half, dtype="float64")
    log_g = density.log_density.numpy()
    assert log_g.shape == (b, 2 * draws, 2)
    for k in (0, 123, 299):
        own = points.centre[k].numpy()
        noise = points.noise[k].double().numpy()
        np.testing.assert_allclose(
            log_g[k, :, 0], reference_log_density(centers[k], np.ones(draws), beta, own, noise),
            atol=1e-9)
        inside = own < draws // 2
        assert np.isnan(log_g[k, ~inside, 1]).all()
        np.testing.assert_allclose(
            log_g[k, inside, 1],
            reference_log_density(centers[k, : draws // 2], np.ones(draws // 2), beta,
                                  own[inside], noise[inside]),
            atol=1e-9)
    h, se, _ = mc_entropy_estimate(density.log_density, points)
    assert h.shape == se.shape == (b, 2)
    # the half mixtures have fewer distinct components: lower entropy on average
    assert float(h[:, 1].mean()) < float(h[:, 0].mean())
