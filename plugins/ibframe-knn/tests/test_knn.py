"""kNN estimators against closed forms, and the plugin against ibframe's conformance suite."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from scipy import integrate

import ibframe
from ibframe import plugins
from ibframe.engine import estimate
from ibframe.errors import EstimatorRequirementError, ParameterError
from ibframe.testing import EstimatorChecks
from ibframe_knn import KnnEntropy, KsgMutualInformation, kl_entropy, ksg_mi, ksg_mi_discrete


def _gaussian_entropy(cov):
    cov = np.atleast_2d(cov)
    return 0.5 * np.log((2 * np.pi * np.e) ** cov.shape[0] * np.linalg.det(cov))


def _two_gaussians_mi(mu, sigma):
    """I(T;Y) for Y uniform on {0, 1} and T | Y ~ N(±mu, sigma^2), by quadrature of h(T)."""

    def density(v):
        return 0.5 * (np.exp(-((v - mu) ** 2) / (2 * sigma**2))
                      + np.exp(-((v + mu) ** 2) / (2 * sigma**2))) / np.sqrt(2 * np.pi * sigma**2)

    bound = mu + 12 * sigma
    h_t = integrate.quad(lambda v: -density(v) * np.log(density(v)), -bound, bound)[0]
    return h_t - 0.5 * np.log(2 * np.pi * np.e * sigma**2)


# -- kernels against closed forms ---------------------------------------------------------------


def test_kl_entropy_of_a_correlated_gaussian():
    cov = np.array([[1.0, 0.5, 0.2], [0.5, 2.0, 0.3], [0.2, 0.3, 0.5]])
    samples = np.random.default_rng(0).multivariate_normal(np.zeros(3), cov, 3000)
    assert kl_entropy(samples, k=3) == pytest.approx(_gaussian_entropy(cov), abs=0.06)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ksg_mi_of_correlated_gaussians(rho):
    z = np.random.default_rng(1).multivariate_normal([0, 0], [[1, rho], [rho, 1]], 2000)
    assert ksg_mi(z[:, 0], z[:, 1], k=3) == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.05)


def test_ksg_mi_in_several_dimensions():
    """Two independent correlated pairs: I = -1/2 ln(1 - rho1^2) - 1/2 ln(1 - rho2^2)."""
    rng = np.random.default_rng(2)
    rhos = (0.6, 0.8)
    pairs = [rng.multivariate_normal([0, 0], [[1, r], [r, 1]], 2000) for r in rhos]
    a = np.stack([p[:, 0] for p in pairs], axis=1)
    b = np.stack([p[:, 1] for p in pairs], axis=1)
    expected = sum(-0.5 * np.log(1 - r**2) for r in rhos)
    assert ksg_mi(a, b, k=3) == pytest.approx(expected, abs=0.06)


def test_ksg_mi_with_a_discrete_label():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 3000)
    t = rng.standard_normal(3000) + (2 * y - 1)
    assert ksg_mi_discrete(t, y, k=3) == pytest.approx(_two_gaussians_mi(1.0, 1.0), abs=0.05)


def test_kernels_refuse_bad_input():
    with pytest.raises(ParameterError, match="k must be"):
        kl_entropy(np.zeros((3, 1)) + np.arange(3)[:, None], k=3)
    with pytest.raises(ParameterError, match="duplicates"):
        kl_entropy(np.zeros((10, 2)), k=2)
    with pytest.raises(ParameterError, match="same number"):
        ksg_mi(np.ones((4, 1)), np.ones((5, 1)))
    with pytest.raises(ParameterError, match="single sample"):
        ksg_mi_discrete(np.arange(4.0), np.arange(4), k=1)


# -- the estimators -----------------------------------------------------------------------------


def _block(s, *, beta, y=None, epoch=0):
    return ibframe.Block(
        layer="h", epoch=epoch, layer_index=1, s=np.asarray(s, np.float32), s_cond=None,
        cond_index=None, y=y, beta=beta, deterministic_given_x=True,
    )


def test_knn_entropy_of_pure_noise():
    """S = 0, so T = beta Z and h(T) = d/2 ln(2 pi e beta^2)."""
    block = _block(np.zeros((2000, 2)), beta=0.5)
    ds = KnnEntropy().compute(block)
    assert float(ds["h_t_kl"]) == pytest.approx(_gaussian_entropy(0.25 * np.eye(2)), abs=0.06)
    assert ds["h_t_kl"].attrs["units"] == "nat"
    overridden = KnnEntropy(beta=2.0).compute(block)
    assert float(overridden["h_t_kl"]) == pytest.approx(_gaussian_entropy(4 * np.eye(2)), abs=0.06)


def test_ksg_estimates_of_a_linear_noisy_layer(tmp_path):
    """X ~ N(0, 1), S = a X, T = S + beta Z: I(X;T) = 1/2 ln(1 + a^2 / beta^2).

    With Y = [X > 0], T | Y is not Gaussian; instead S = ±mu by class gives
    T | Y ~ N(±mu, beta^2) in a second layer.
    """
    rng = np.random.default_rng(4)
    n, a, beta, mu = 2000, 2.0, 1.0, 1.0
    x = rng.standard_normal((n, 1))
    y = rng.integers(0, 2, n)
    run = ibframe.create_run(tmp_path / "r.zarr", x=x, y=y, beta=beta, layers={"lin": 1, "cls": 1})
    run.append_epoch(0, {"lin": a * x, "cls": mu * (2 * y[:, None] - 1.0)})
    ds = estimate(run, ["ksg-mi"], device="cpu", cache=False)
    assert float(ds["mi_x_t_ksg"].sel(layer="lin", epoch=0)) == pytest.approx(
        0.5 * np.log(1 + a**2 / beta**2), abs=0.05
    )
    assert float(ds["mi_t_y_ksg"].sel(layer="cls", epoch=0)) == pytest.approx(
        _two_gaussians_mi(mu, beta), abs=0.05
    )
    assert ds["mi_x_t_ksg"].attrs["estimator_plugin"].startswith("knn ")


def test_ksg_needs_a_run_for_the_inputs_and_labels():
    block = _block(np.random.default_rng(0).standard_normal((50, 2)), beta=0.1)
    with pytest.raises(EstimatorRequirementError, match="names none"):
        KsgMutualInformation(which="x").compute(block)
    with pytest.raises(EstimatorRequirementError, match="labels"):
        KsgMutualInformation(which="y").compute(block)


def test_deterministic_run_needs_a_beta(tmp_path):
    run = ibframe.create_run(tmp_path / "d.zarr", x=np.eye(4), y=np.arange(4) % 2, layers={"h": 2})
    with pytest.raises(EstimatorRequirementError, match="beta > 0"):
        KnnEntropy().check_run(run, ["h"])
    KnnEntropy(beta=0.1).check_run(run, ["h"])
    unlabelled = ibframe.create_run(tmp_path / "u.zarr", x=np.eye(4), beta=0.1, layers={"h": 2})
    with pytest.raises(EstimatorRequirementError, match="labels"):
        KsgMutualInformation().check_run(unlabelled, ["h"])
    KsgMutualInformation(which="x").check_run(unlabelled, ["h"])


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (KnnEntropy, {"k": 0}),
        (KnnEntropy, {"beta": 0.0}),
        (KsgMutualInformation, {"which": "z"}),
        (KsgMutualInformation, {"jitter": -1.0}),
    ],
)
def test_parameters_are_validated(cls, params):
    with pytest.raises(ParameterError):
        cls(**params)


def test_registered_through_the_entry_point():
    plugins.reset()
    try:
        registry = plugins.estimator_registry()
        assert registry.plugin_of("knn-entropy") == "knn"
        assert registry.get("ksg-mi") is KsgMutualInformation
    finally:
        plugins.reset()


class TestKnnEntropyConformance(EstimatorChecks):
    estimator_class = KnnEntropy
    params: ClassVar[dict] = {"k": 3}


class TestKsgConformance(EstimatorChecks):
    estimator_class = KsgMutualInformation
    params: ClassVar[dict] = {"which": "both", "k": 2}
