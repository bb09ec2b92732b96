"""Gaussian-mixture entropy kernels, each checked against an independent reference."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import norm

from ibframe.errors import ParameterError
from ibframe.kernels.mixture import (
    DEFAULT_N_MC,
    DEFAULT_N_MC_BATCH,
    gaussian_entropy,
    gaussian_mixture_entropy,
)

BOUNDS = ("kl-upper", "bhattacharyya-lower")


def reference_terms(centers: np.ndarray, beta: float, noise: np.ndarray) -> tuple[np.ndarray, ...]:
    """Plain float64 -log g and q = ||z||^2 / 2 beta^2 at centers[i] + beta * noise[i, k]."""
    n, n_mc, d = noise.shape
    points = (centers[:, None, :] + beta * noise).reshape(-1, d)
    log_sums = [
        logsumexp(-((chunk[:, None, :] - centers[None]) ** 2).sum(-1) / (2 * beta**2), axis=1)
        for chunk in np.array_split(points, max(1, points.shape[0] // 256))
    ]
    log_g = np.concatenate(log_sums) - math.log(n) - 0.5 * d * math.log(2 * math.pi * beta**2)
    quad = 0.5 * (noise**2).sum(-1).reshape(-1)
    return -log_g.reshape(n, n_mc), quad.reshape(n, n_mc)


def reference_mc(centers: np.ndarray, beta: float, noise: np.ndarray) -> np.ndarray | float:
    """The MC estimate with the q control variate, fitted by numpy's least squares.

    ``centers`` (n, d) with ``noise`` (n, n_mc, d), or a batch (b, n, d) with (b, n, n_mc, d),
    whose coefficient is pooled over the batch as the kernel does.
    """
    batched = centers.ndim == 3
    if not batched:
        centers, noise = centers[None], noise[None]
    terms = [reference_terms(c, beta, z) for c, z in zip(centers, noise, strict=True)]
    ell = np.stack([t[0] for t in terms])
    quad = np.stack([t[1] for t in terms])
    d = centers.shape[-1]
    e = (ell - ell.mean(axis=(1, 2), keepdims=True)).ravel()
    q = (quad - quad.mean(axis=(1, 2), keepdims=True)).ravel()
    coefficient = np.linalg.lstsq(q[:, None], e, rcond=None)[0][0] if ell.size >= 16 else 0.0
    h = (ell - coefficient * (quad - d / 2)).mean(axis=(1, 2))
    return h if batched else float(h[0])


def reference_bound(centers: np.ndarray, beta: float, divisor: float) -> float:
    """Kolchinsky-Tracey bound with D = ||mu_i - mu_j||^2 / (divisor beta^2), in float64."""
    n, d = centers.shape
    terms = [
        logsumexp(-((chunk[:, None, :] - centers[None]) ** 2).sum(-1) / (divisor * beta**2), axis=1)
        for chunk in np.array_split(centers, max(1, n // 256))
    ]
    return gaussian_entropy(d, beta) + math.log(n) - float(np.concatenate(terms).mean())


def quadrature_entropy(centers: np.ndarray, beta: float) -> float:
    """h(g) = -∫ g ln g of a 1-D mixture by adaptive quadrature."""

    def integrand(t: float) -> float:
        log_g = logsumexp(norm.logpdf(t, loc=centers, scale=beta)) - math.log(len(centers))
        return -math.exp(log_g) * log_g

    lo, hi = centers.min() - 14 * beta, centers.max() + 14 * beta
    value, _ = integrate.quad(integrand, lo, hi, points=list(centers), limit=400, epsabs=1e-11)
    return value


def saturated(rng: np.random.Generator, n: int, d: int, clusters: int) -> np.ndarray:
    """tanh-like saturated centres: ±(1 - 1e-4) corners plus ~1e-3 perturbations."""
    corners = np.sign(rng.normal(size=(clusters, d))) * (1 - 1e-4)
    return corners[rng.integers(0, clusters, n)] + 1e-3 * rng.normal(size=(n, d))


# --------------------------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("d", [1, 3, 16])
def test_identical_centres_give_the_component_entropy(d: int) -> None:
    beta = 0.3
    centers = np.full((40, d), 0.7)
    expected = 0.5 * d * math.log(2 * math.pi * math.e * beta**2)
    assert gaussian_entropy(d, beta) == pytest.approx(expected, rel=1e-14)
    for method in BOUNDS:
        assert gaussian_mixture_entropy(centers, beta, method=method) == pytest.approx(expected)
    h, se = gaussian_mixture_entropy(centers, beta, n_mc=50, seed=1, return_stderr=True)
    # -log g(mu + z) is exactly const + ||z||^2 / 2 beta^2 here: the control variate removes
    # all of the MC noise
    assert h == pytest.approx(expected, abs=1e-9)
    assert se < 1e-9


def test_separated_clusters_add_the_discrete_entropy_of_their_weights() -> None:
    d, beta = 4, 0.2
    counts = np.array([1, 2, 3, 4, 10])
    corners = 50.0 * np.eye(5, d + 1)[:, :d] + np.arange(5)[:, None]
    centers = np.repeat(corners, counts, axis=0)
    w = counts / counts.sum()
    expected = gaussian_entropy(d, beta) - float((w * np.log(w)).sum())
    for method in BOUNDS:
        assert gaussian_mixture_entropy(centers, beta, method=method) == pytest.approx(
            expected, abs=1e-9
        )
    h, se = gaussian_mixture_entropy(centers, beta, n_mc=400, seed=3, return_stderr=True)
    assert abs(h - expected) < 4 * se


# --------------------------------------------------------------------------------------------
# 1-D mixtures against quadrature


@pytest.mark.parametrize(
    ("centers", "expected_mi"),
    [
        (np.array([-1.0, 1.0]), 0.33683),
        (0.5 * np.array([-3.0, -1.0, 1.0, 3.0]), 0.39960),
        (1.0 * np.array([-3.0, -1.0, 1.0, 3.0]), 0.84523),
        (2.0 * np.array([-3.0, -1.0, 1.0, 3.0]), 1.29565),
        (4.0 * np.array([-3.0, -1.0, 1.0, 3.0]), 1.38615),
    ],
)
def test_one_dimensional_mixtures_match_quadrature(centers: np.ndarray, expected_mi: float) -> None:
    beta = 1.0
    h_quad = quadrature_entropy(centers, beta)
    assert h_quad - gaussian_entropy(1, beta) == pytest.approx(expected_mi, abs=6e-6)
    h, se = gaussian_mixture_entropy(
        centers[:, None], beta, n_mc=100_000, seed=11, return_stderr=True
    )
    assert se < 3e-3
    assert abs(h - h_quad) < 4 * se
    lower = gaussian_mixture_entropy(centers[:, None], beta, method="bhattacharyya-lower")
    upper = gaussian_mixture_entropy(centers[:, None], beta, method="kl-upper")
    assert lower <= h_quad + 1e-9 <= upper + 2e-9


# --------------------------------------------------------------------------------------------
# bounds


@pytest.mark.parametrize(("d", "beta"), [(2, 0.3), (5, 0.5), (10, 0.1)])
def test_bounds_sandwich_the_mc_estimate(d: int, beta: float) -> None:
    rng = np.random.default_rng(d)
    centers = np.tanh(rng.normal(size=(300, d)))
    lower = gaussian_mixture_entropy(centers, beta, method="bhattacharyya-lower")
    upper = gaussian_mixture_entropy(centers, beta, method="kl-upper")
    h, se = gaussian_mixture_entropy(centers, beta, n_mc=64, seed=0, return_stderr=True)
    assert lower < upper
    assert lower - 4 * se <= h <= upper + 4 * se
    # float32: the exponents' GEMM rounding (~1e-7 relative, of terms up to s * ||mu||^2) moves
    # the bounds by up to ~1.6e-6 here (measured on other centre sets, before and after the
    # exp2 kernels alike); the float64 mode matches to rounding
    assert lower == pytest.approx(reference_bound(centers, beta, 8.0), abs=3e-6)
    assert upper == pytest.approx(reference_bound(centers, beta, 2.0), abs=3e-6)
    upper64 = gaussian_mixture_entropy(centers, beta, method="kl-upper", dtype="float64")
    assert upper64 == pytest.approx(reference_bound(centers, beta, 2.0), abs=1e-11)


def test_bounds_match_reference_when_columns_and_rows_are_chunked() -> None:
    rng = np.random.default_rng(5)
    centers = np.tanh(rng.normal(size=(5000, 2)))  # > 4096 centres: several column blocks
    for method, divisor in [("kl-upper", 2.0), ("bhattacharyya-lower", 8.0)]:
        value = gaussian_mixture_entropy(centers, 0.05, method=method)
        assert value == pytest.approx(reference_bound(centers, 0.05, divisor), abs=1e-6)


def test_bounds_report_zero_stderr() -> None:
    centers = np.random.default_rng(0).normal(size=(2, 20, 3))
    h, se = gaussian_mixture_entropy(centers, 0.5, method="kl-upper", return_stderr=True)
    assert h.shape == (2,)
    np.testing.assert_array_equal(se, 0.0)


# --------------------------------------------------------------------------------------------
# MC: agreement with an independent float64 reference on the same points, and exactness


@pytest.mark.parametrize("beta", [0.005, 0.001])
@pytest.mark.parametrize("d", [2, 16, 128])
@pytest.mark.parametrize("clusters", [1, 4])
def test_float32_kernel_survives_saturated_centres(beta: float, d: int, clusters: int) -> None:
    rng = np.random.default_rng(d * clusters)
    centers = saturated(rng, 300, d, clusters)
    noise = rng.normal(size=(300, 2, d))
    expected = reference_mc(centers, beta, noise)
    got = gaussian_mixture_entropy(centers, beta, noise=noise, dtype="float32")
    assert abs(got - expected) < 1e-3
    got64 = gaussian_mixture_entropy(centers, beta, noise=noise, dtype="float64")
    assert abs(got64 - expected) < 1e-6


@pytest.mark.parametrize("beta", [0.1, 0.01, 0.001])
def test_float32_kernel_matches_reference_on_spread_tanh_data(beta: float) -> None:
    rng = np.random.default_rng(7)
    centers = np.tanh(2 * rng.normal(size=(400, 10)))
    noise = rng.normal(size=(400, 3, 10))
    expected = reference_mc(centers, beta, noise)
    assert abs(gaussian_mixture_entropy(centers, beta, noise=noise) - expected) < 1e-4


def test_float32_and_float64_modes_share_the_draws_of_a_seed() -> None:
    centers = saturated(np.random.default_rng(1), 500, 32, 3)
    h32 = gaussian_mixture_entropy(centers, 0.001, seed=9, dtype=torch.float32)
    h64 = gaussian_mixture_entropy(centers, 0.001, seed=9, dtype=np.float64)
    assert abs(h32 - h64) < 1e-3


def test_large_mixture_is_processed_in_row_chunks_exactly() -> None:
    rng = np.random.default_rng(2)
    centers = np.tanh(rng.normal(size=(3000, 3)))  # 3000 x 3000 exponents > one block
    noise = rng.normal(size=(3000, 1, 3))
    expected = reference_mc(centers, 0.1, noise)
    assert gaussian_mixture_entropy(centers, 0.1, noise=noise) == pytest.approx(expected, abs=1e-6)


def test_rows_whose_sum_overflows_float32_are_recomputed() -> None:
    d, beta = 128, 1.0
    rng = np.random.default_rng(4)
    noise = rng.normal(size=(3, 1, d))
    noise[0, 0] *= math.sqrt(2 * 100 / (noise[0, 0] ** 2).sum())  # ||z||^2 / (2 beta^2) = 100
    centers = np.zeros((3, d))
    centers[1] = beta * noise[0, 0]  # the first point sits on the second centre: e = 100 > 88.7
    centers[2] = -5.0
    expected = reference_mc(centers, beta, noise)
    # within float32's tolerance of the kernel (1e-4 nat): the fused loop's float32 squared
    # distances are off by ~1e-7 of exponents of size ~100 here; an overflow left in gives inf
    assert gaussian_mixture_entropy(centers, beta, noise=noise) == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------------------------
# MC standard error


@pytest.mark.parametrize("n_mc", [1, 4])
def test_reported_stderr_matches_the_spread_over_seeds(n_mc: int) -> None:
    rng = np.random.default_rng(0)
    centers = np.tanh(rng.normal(size=(200, 3)))
    runs = [
        gaussian_mixture_entropy(centers, 0.2, n_mc=n_mc, seed=s, return_stderr=True)
        for s in range(120)
    ]
    estimates, stderrs = np.array(runs).T
    ratio = stderrs.mean() / estimates.std(ddof=1)
    # 120 runs pin the spread to ~±13% (2 sigma). The stratified stderr (n_mc >= 2) is unbiased
    # for it. The i.i.d. formula (n_mc = 1) may only overstate it.
    assert 0.8 < ratio < (1.25 if n_mc > 1 else 2.0)


def test_single_centre_single_draw_has_nan_stderr() -> None:
    h, se = gaussian_mixture_entropy(np.zeros((1, 2)), 1.0, n_mc=1, seed=0, return_stderr=True)
    assert math.isfinite(h)
    assert math.isnan(se)


# --------------------------------------------------------------------------------------------
# batches


def test_batch_equals_single_mixtures_on_the_same_draws() -> None:
    rng = np.random.default_rng(8)
    b, n, n_mc, d = 1000, 40, 2, 3  # > one chunk of mixtures
    centers = np.tanh(rng.normal(size=(b, n, d)))
    noise = rng.normal(size=(b, n, n_mc, d))
    batch, se = gaussian_mixture_entropy(centers, 0.2, noise=noise, return_stderr=True)
    assert batch.shape == se.shape == (b,)
    # the control-variate coefficient is pooled over the batch, so compare with the reference
    # batch; a single mixture alone gets its own coefficient, hence only a statistical match
    np.testing.assert_allclose(batch, reference_mc(centers, 0.2, noise), atol=1e-6)
    for k in (0, 437, 999):
        single, single_se = gaussian_mixture_entropy(
            centers[k], 0.2, noise=noise[k], return_stderr=True
        )
        assert single == pytest.approx(reference_mc(centers[k], 0.2, noise[k]), abs=1e-6)
        assert batch[k] == pytest.approx(single, abs=4 * max(se[k], single_se))
    for method in BOUNDS:
        bounds = gaussian_mixture_entropy(centers[:5], 0.2, method=method)
        loop = [gaussian_mixture_entropy(c, 0.2, method=method) for c in centers[:5]]
        np.testing.assert_allclose(bounds, loop, atol=1e-6)


def test_seeded_batch_agrees_statistically_with_seeded_single_mixtures() -> None:
    rng = np.random.default_rng(9)
    centers = np.tanh(rng.normal(size=(64, 30, 2)))
    batch, se = gaussian_mixture_entropy(centers, 0.3, n_mc=4, seed=1, return_stderr=True)
    singles = np.array(
        [gaussian_mixture_entropy(c, 0.3, n_mc=4, seed=100 + k) for k, c in enumerate(centers)]
    )
    diff = batch - singles  # independent draws: the mean difference has sd ~ sqrt(2) |se| / 8
    assert abs(diff.mean()) < 4 * math.sqrt(2 * (se**2).sum()) / len(se)


def test_default_draws_depend_on_the_batch_shape() -> None:
    assert (DEFAULT_N_MC, DEFAULT_N_MC_BATCH) == (4, 1)
    centers = np.random.default_rng(0).normal(size=(10, 2))
    noise = np.random.default_rng(1).normal(size=(10, DEFAULT_N_MC, 2))
    seeded = gaussian_mixture_entropy(centers, 0.5, noise=noise)
    assert seeded == gaussian_mixture_entropy(centers, 0.5, n_mc=DEFAULT_N_MC, noise=noise)


# --------------------------------------------------------------------------------------------
# inputs


def test_seed_reproduces_and_different_seeds_differ() -> None:
    centers = np.random.default_rng(0).normal(size=(50, 3))
    first = gaussian_mixture_entropy(centers, 0.5, seed=123)
    assert gaussian_mixture_entropy(centers, 0.5, seed=123) == first
    assert gaussian_mixture_entropy(centers, 0.5, seed=124) != first


def test_torch_and_numpy_inputs_agree() -> None:
    centers = np.random.default_rng(0).normal(size=(3, 50, 4))
    from_numpy = gaussian_mixture_entropy(centers, 0.4, seed=5)
    from_torch = gaussian_mixture_entropy(torch.from_numpy(centers), 0.4, seed=5)
    np.testing.assert_array_equal(from_numpy, from_torch)
    as_float32 = gaussian_mixture_entropy(torch.from_numpy(centers).float(), 0.4, seed=5)
    np.testing.assert_allclose(as_float32, from_numpy, atol=1e-5)
    nested = gaussian_mixture_entropy(centers[0].tolist(), 0.4, seed=5, device="cpu")
    assert nested == gaussian_mixture_entropy(centers[0], 0.4, seed=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_restores_tf32() -> None:
    rng = np.random.default_rng(0)
    centers = saturated(rng, 2000, 16, 4)
    noise = rng.normal(size=(2000, 2, 16))
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        on_gpu = gaussian_mixture_entropy(torch.from_numpy(centers).cuda(), 0.005, noise=noise)
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert on_gpu == pytest.approx(reference_mc(centers, 0.005, noise), abs=1e-3)
    batch = np.tanh(rng.normal(size=(300, 64, 10)))
    np.testing.assert_allclose(
        gaussian_mixture_entropy(batch, 0.1, method="kl-upper", device="cuda"),
        gaussian_mixture_entropy(batch, 0.1, method="kl-upper"),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("centers", "kwargs", "match"),
    [
        (np.array([[0.0, np.nan]]), {}, "NaN or inf"),
        (np.array([[0.0, np.inf], [1.0, 1.0]]), {}, "NaN or inf"),
        (np.zeros(5), {}, "shape"),
        (np.zeros((2, 2, 2, 2)), {}, "shape"),
        (np.zeros((0, 3)), {}, "non-empty"),
        (np.array([["a", "b"]]), {}, "real numbers"),
        (np.zeros((3, 2), dtype=complex), {}, "real numbers"),
        (torch.zeros(3, 2, dtype=torch.bool), {}, "real numbers"),
        (np.zeros((3, 2)), {"beta": 0.0}, "beta"),
        (np.zeros((3, 2)), {"beta": -1.0}, "beta"),
        (np.zeros((3, 2)), {"beta": float("nan")}, "beta"),
        (np.zeros((3, 2)), {"beta": "0.1"}, "beta"),
        (np.zeros((3, 2)), {"n_mc": 0}, "n_mc"),
        (np.zeros((3, 2)), {"n_mc": 2.5}, "n_mc"),
        (np.zeros((3, 2)), {"n_mc": True}, "n_mc"),
        (np.zeros((3, 2)), {"method": "kde"}, "unknown method"),
        (np.zeros((3, 2)), {"dtype": "float16"}, "dtype"),
        (np.zeros((3, 2)), {"device": "bogus"}, "device"),
        (np.zeros((3, 2)), {"seed": -1}, "seed"),
        (np.zeros((3, 2)), {"seed": 1.5}, "seed"),
        (np.zeros((3, 2)), {"noise": np.zeros((3, 2))}, "noise must have shape"),
        (np.zeros((3, 2)), {"noise": np.zeros((3, 4, 3))}, "noise must have shape"),
        (np.zeros((3, 2)), {"noise": np.zeros((3, 4, 2)), "n_mc": 2}, "disagrees"),
        (np.zeros((3, 2)), {"noise": np.full((3, 4, 2), np.nan)}, "NaN or inf"),
    ],
)
def test_bad_input_raises_parameter_error(
    centers: object, kwargs: dict[str, object], match: str
) -> None:
    beta = kwargs.pop("beta", 0.1)
    with pytest.raises(ParameterError, match=match):
        gaussian_mixture_entropy(centers, beta, **kwargs)  # type: ignore[arg-type]
    assert issubclass(ParameterError, ValueError)


# --------------------------------------------------------------------------------------------
# memory


@pytest.mark.slow
def test_65536_centres_fit_in_well_under_2_gib() -> None:
    # VmHWM belongs to the new process image; ru_maxrss would also count the parent's memory at
    # the fork (Linux keeps it across exec), i.e. the size of this pytest process
    script = textwrap.dedent(
        """
        import resource
        import numpy as np
        from ibframe.kernels.mixture import gaussian_mixture_entropy
        centers = np.tanh(np.random.default_rng(0).normal(size=(65536, 10)))
        gaussian_mixture_entropy(centers, 0.1, n_mc=1, seed=0)
        try:
            with open("/proc/self/status") as status:
                print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")))
        except OSError:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_kib = int(out.stdout.split()[-1])
    assert peak_kib * 1024 < 1 * 2**30  # torch and numpy included
