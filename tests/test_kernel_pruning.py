"""Exact pruning: the neighbour path equals the dense float64 kernel within float32 rounding
on saturated, clustered and spread centres, for MC points, groups and the pairwise bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from ibframe.kernels import _engine
from ibframe.kernels import _fused as fused
from ibframe.kernels.mixture import (
    draw_points,
    gaussian_mixture_entropy,
    mixture_log_density,
)

TOLERANCE = 1e-6  # nats, on an estimate: pruned terms are < 2e-16 of a point's density


def saturated(rng: np.random.Generator, n: int, d: int, clusters: int) -> np.ndarray:
    """tanh-like saturated centres: ±(1 - 1e-4) corners plus ~1e-3 perturbations."""
    corners = np.sign(rng.normal(size=(clusters, d))) * (1 - 1e-4)
    return corners[rng.integers(0, clusters, n)] + 1e-3 * rng.normal(size=(n, d))


def clustered(rng: np.random.Generator, n_inputs: int, draws: int, d: int) -> np.ndarray:
    """Pooled draws of a noisy tanh layer: each input's draws clustered around its mean."""
    projection = rng.normal(size=(12, d)) * 2.0 / math.sqrt(12)
    bits = rng.choice([-1.0, 1.0], size=(n_inputs, 12))
    pre = np.repeat(bits @ projection, draws, axis=0)
    return np.tanh(pre + 0.05 * rng.normal(size=pre.shape))


def spread(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return np.tanh(2.0 * rng.normal(size=(n, d)))


CASES = {
    "saturated-d16": (lambda rng: saturated(rng, 2000, 16, 4), 0.001),
    "saturated-d2": (lambda rng: saturated(rng, 2000, 2, 3), 0.005),
    "clustered-d10": (lambda rng: clustered(rng, 256, 9, 10), 0.01),
    "clustered-d3": (lambda rng: clustered(rng, 256, 9, 3), 0.005),
    "spread-d10": (lambda rng: spread(rng, 2500, 10), 0.01),
    "spread-d3": (lambda rng: spread(rng, 2500, 3), 0.05),
    "spread-d1": (lambda rng: spread(rng, 3000, 1), 0.002),
}


def use_route(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leaf route runs wherever the fused loops do (Numba); the chunks and few-pairs routes
    where they do not (``IBFRAME_FUSED=0``, as without Numba, or on CUDA)."""
    if route == "leaves":
        if not fused.enabled():
            pytest.skip("the leaf route needs Numba")
    else:
        monkeypatch.setenv(fused.ENV_FUSED, "0")


@pytest.mark.parametrize("route", ["leaves", "chosen", "chunks", "few-pairs"])
@pytest.mark.parametrize("case", list(CASES))
def test_neighbours_equal_dense_float64_on_the_same_points(
    case: str, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every route of the neighbour path: the leaf route (Numba), and without it chunks, a
    ball query per point where the pairs are few, and the one the cost model picks."""
    use_route(route, monkeypatch)
    if route == "chunks":
        monkeypatch.setattr(_engine, "_MAX_PAIRS", 0)
    elif route == "few-pairs":  # free pairs: the few-pairs route wins wherever it may run
        monkeypatch.setattr(_engine, "_COST_PAIR", 0.0)
        monkeypatch.setattr(_engine, "_COST_QUERY", 0.0)
    make, beta = CASES[case]
    rng = np.random.default_rng(len(case))
    centers = make(rng)
    n, d = centers.shape
    weights = rng.exponential(size=n)
    points = draw_points(weights, 2 * n, d, seed=1)
    reference = mixture_log_density(centers, beta, points, weights=weights, dtype="float64",
                                    strategy="dense")
    exact = mixture_log_density(centers, beta, points, weights=weights, dtype="float64",
                                strategy="neighbours")
    assert exact.strategy == "neighbours"
    # pruning itself loses only clamped terms (the dense float64 GEMM rounds terms of size
    # s R^2 ~ 1e7 at beta = 0.001: ~1e-9)
    assert float((exact.log_density - reference.log_density).abs().max()) < 1e-7
    # float32 rounds each point's exponents; the estimate (their mean) stays within 1e-6
    fast = mixture_log_density(centers, beta, points, weights=weights, strategy="neighbours")
    error = fast.log_density - reference.log_density
    assert float(error.abs().max()) < 1e-4
    assert abs(float(error.mean())) < TOLERANCE


@pytest.mark.parametrize("case", ["saturated-d16", "clustered-d10", "spread-d3"])
@pytest.mark.parametrize("method", ["kl-upper", "bhattacharyya-lower"])
def test_pruned_bounds_equal_dense_float64(case: str, method: str) -> None:
    make, beta = CASES[case]
    centers = make(np.random.default_rng(3))
    dense = gaussian_mixture_entropy(centers, beta, method=method, dtype="float64",
                                     strategy="dense")
    pruned = gaussian_mixture_entropy(centers, beta, method=method, strategy="neighbours")
    assert pruned == pytest.approx(dense, abs=TOLERANCE)


def test_groups_are_pruned_exactly() -> None:
    rng = np.random.default_rng(5)
    centers = clustered(rng, 300, 8, 5)
    n = centers.shape[0]
    labels = rng.integers(0, 2, n // 8).repeat(8)
    groups = np.stack([labels == 0, labels == 1, np.arange(n) < n // 2])
    points = draw_points(np.ones(n), n, 5, seed=2)
    dense = mixture_log_density(centers, 0.01, points, groups=groups, dtype="float64",
                                strategy="dense").log_density
    pruned = mixture_log_density(centers, 0.01, points, groups=groups, dtype="float64",
                                 strategy="neighbours").log_density
    assert torch.equal(torch.isnan(dense), torch.isnan(pruned))
    finite = ~torch.isnan(dense)
    assert float((dense[finite] - pruned[finite]).abs().max()) < 1e-7


@pytest.mark.parametrize("n_inputs", [5, 300])
def test_leaf_route_sums_each_group_in_float32(
    n_inputs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leaf route's atoms in float32, with a lone root leaf (40 centres) and with leaves of
    many atoms: each input's second draw equals the next input's first, which lies in the
    other class, so equal centres sit in different groups."""
    use_route("leaves", monkeypatch)
    rng = np.random.default_rng(8)
    centers = clustered(rng, n_inputs, 8, 5)
    centers[1:-8:8] = centers[8::8]
    n = centers.shape[0]
    labels = np.arange(n) // 8 % 2
    groups = np.stack([labels == 0, labels == 1, np.arange(n) < n // 2])
    points = draw_points(np.ones(n), 2 * n, 5, seed=3)
    dense = mixture_log_density(centers, 0.01, points, groups=groups, dtype="float64",
                                strategy="dense").log_density
    leaves = mixture_log_density(centers, 0.01, points, groups=groups,
                                 strategy="neighbours").log_density
    assert torch.equal(torch.isnan(dense), torch.isnan(leaves))
    finite = ~torch.isnan(dense)
    assert float((dense[finite] - leaves[finite]).abs().max()) < 1e-4


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e17])
def test_leaf_route_is_exact_at_any_scale(scale: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Centres and beta scaled together: the log densities move by -d ln(scale) and nothing
    else, however far the reach (the own term once counted twice past a reach of 1e15)."""
    use_route("leaves", monkeypatch)
    rng = np.random.default_rng(4)
    centers = clustered(rng, 200, 8, 3)
    n, d = centers.shape
    points = draw_points(np.ones(n), 2 * n, d, seed=5)
    reference = mixture_log_density(centers, 0.02, points, dtype="float64",
                                    strategy="dense").log_density
    scaled = mixture_log_density(centers * scale, 0.02 * scale, points,
                                 strategy="neighbours").log_density
    assert float((scaled + d * math.log(scale) - reference).abs().max()) < 1e-4


def test_float32_error_on_saturated_tanh_centres_at_beta_0_001() -> None:
    """The issue's accuracy bar: below 1e-4 nats against a float64 numpy reference."""
    rng = np.random.default_rng(11)
    centers = saturated(rng, 1500, 10, 6)
    noise = rng.normal(size=(1500, 2, 10))
    points = (centers[:, None, :] + 0.001 * noise).reshape(-1, 10)
    sq = ((points[:, None, :] - centers[None]) ** 2).sum(-1)
    log_g = logsumexp(-sq / (2 * 0.001**2), axis=1) - math.log(1500) - 5 * math.log(
        2 * math.pi * 0.001**2)
    ell = -log_g
    quad = 0.5 * (noise.reshape(-1, 10) ** 2).sum(-1) - 5
    q = quad - quad.mean()
    coefficient = float(q @ (ell - ell.mean()) / (q @ q))
    expected = float(np.mean(ell - coefficient * quad))
    for strategy in ("auto", "dense", "neighbours"):
        got = gaussian_mixture_entropy(centers, 0.001, noise=noise, strategy=strategy)
        assert abs(got - expected) < 1e-4


def test_auto_prunes_sparse_mixtures_and_not_dense_ones() -> None:
    rng = np.random.default_rng(2)
    centers = spread(rng, 4096, 10)
    points = draw_points(np.ones(4096), 4 * 4096, 10, seed=0)
    assert mixture_log_density(centers, 0.01, points).strategy == "neighbours"
    assert mixture_log_density(centers, 1.0, points).strategy == "dense"


def test_repeated_centres_merge_into_weighted_ones() -> None:
    """Fig. 4's neuron: many samples of a few distinct values are a weighted mixture of those."""
    rng = np.random.default_rng(0)
    values = np.tanh(np.array([-3.0, -1.0, 1.0, 3.0]) * 0.7 - 0.5)
    samples = values[rng.integers(0, 4, 200_000)][:, None]
    counts = np.array([(samples[:, 0] == v).sum() for v in values])
    pooled, se = gaussian_mixture_entropy(samples, 0.01, n_points=20_000, seed=3,
                                          return_stderr=True)
    weighted = gaussian_mixture_entropy(values[:, None], 0.01, weights=counts, n_points=20_000,
                                        seed=4)
    assert pooled == pytest.approx(weighted, abs=4 * se + 1e-9)
    # the merge is exact: in float64 the bounds agree to rounding; in float32 to the exp's
    # own rounding, which differs by an ulp between vectorised and scalar loops on some CPUs
    for method in ("kl-upper", "bhattacharyya-lower"):
        for dtype, tolerance in (("float64", 1e-9), ("float32", 1e-6)):
            assert gaussian_mixture_entropy(samples, 0.01, method=method, dtype=dtype) == (
                pytest.approx(gaussian_mixture_entropy(values[:, None], 0.01, weights=counts,
                                                       method=method, dtype=dtype),
                              abs=tolerance))


@pytest.mark.parametrize("route", ["leaves", "chosen"])
def test_a_centre_on_a_point_far_from_its_own_overflows_float32_and_is_redone(
    route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At d = 300 a point lies ~17 beta from its own centre; a centre placed on it has a term
    e^150 times its own (2^216, past float32), even at a weight of 1e-10 (2^-33)."""
    use_route(route, monkeypatch)
    d, beta, n = 300, 1.0, 400
    weights = np.concatenate([np.ones(n), np.full(8, 1e-10)])
    points = draw_points(weights, 2 * n, d, seed=0)
    rng = np.random.default_rng(0)
    centers = np.concatenate([rng.normal(size=(n, d)) * 3.0, np.zeros((8, d))])
    on = points.centre.reshape(-1)[:8].numpy()
    centers[n:] = centers[on] + beta * points.noise.reshape(-1, d)[:8].numpy().astype(np.float64)
    dense = mixture_log_density(centers, beta, points, weights=weights, dtype="float64",
                                strategy="dense")
    pruned = mixture_log_density(centers, beta, points, weights=weights, strategy="neighbours")
    assert float(dense.log_density[:8].min() - dense.log_density[8:].max()) > 60
    assert torch.isfinite(pruned.log_density).all()
    assert float((dense.log_density - pruned.log_density).abs().max()) < 1e-5


def test_neighbours_recompute_exponents_that_would_overflow_float32() -> None:
    d, beta = 128, 1.0
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(400, d)) * 3.0
    points = draw_points(np.ones(400), 800, d, seed=0)
    dense = mixture_log_density(centers, beta, points, dtype="float64", strategy="dense")
    pruned = mixture_log_density(centers, beta, points, strategy="neighbours")
    assert torch.isfinite(pruned.log_density).all()
    assert float((dense.log_density - pruned.log_density).abs().max()) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_neighbours_match_cpu() -> None:
    rng = np.random.default_rng(0)
    centers = clustered(rng, 256, 9, 10)
    points = draw_points(np.ones(len(centers)), 2 * len(centers), 10, seed=0)
    cpu = mixture_log_density(centers, 0.01, points, strategy="neighbours")
    gpu = mixture_log_density(torch.from_numpy(centers).cuda(), 0.01, points,
                              strategy="neighbours")
    assert gpu.strategy == "neighbours"
    assert float((cpu.log_density - gpu.log_density.cpu()).abs().max()) < 1e-4


def test_a_rare_dense_cluster_among_spread_centres_is_exact() -> None:
    """The route is chosen from a sample of 64 points, which misses a cluster that few points
    fall in but that holds most of the pairs; the result is still the dense one."""
    rng = np.random.default_rng(0)
    spread_part = rng.uniform(-1, 1, size=(20000, 3))
    cluster = 1e-4 * rng.normal(size=(20000, 3))
    centers = np.concatenate([spread_part, cluster])
    weights = np.concatenate([np.ones(20000), np.full(20000, 2e-4)])  # ~0.4% of the points
    points = draw_points(weights, 20000, 3, seed=2)
    in_cluster = int((points.centre >= 20000).sum())
    assert 0 < in_cluster < 200  # few points, each with ~20000 pairs: most of all pairs
    pruned = mixture_log_density(centers, 0.001, points, weights=weights,
                                         dtype="float64", strategy="neighbours")
    reference = mixture_log_density(centers, 0.001, points, weights=weights, dtype="float64",
                                    strategy="dense")
    assert pruned.strategy == "neighbours"
    assert float((pruned.log_density - reference.log_density).abs().max()) < 1e-7


def test_prune_floor_bounds_the_left_out_share() -> None:
    """F = -(36 + ln n + ln(w_max / w_min)): n terms below e^F, against a sum of at least the
    own term (w_own / w_max), leave out at most e^-36 of a density."""
    n = 1000
    weights = np.r_[np.full(n // 2, 1.0), np.full(n // 2, 1e-3)]
    problem = _engine.Problem(
        centers=torch.zeros(1, n, 2, dtype=torch.float64),
        log_weights=torch.from_numpy(np.log(weights / weights.sum()))[None],
        atoms=torch.zeros(n, dtype=torch.int64), n_atoms=1,
        own=torch.zeros(1, 4, dtype=torch.int64), noise=None, beta=0.1, scale=50.0,
        exp_dtype=torch.float32,
    )
    floor = _engine.prune_floor(problem)
    assert floor == pytest.approx(-(36.0 + math.log(n) + math.log(1e3)))
    # the worst case the bound allows: every other term just below the floor, own weight least
    left_out = (n - 1) * math.exp(floor)
    assert left_out / 1e-3 <= math.exp(-36.0)


def _pair_problem(n: int, n_points: int, beta: float) -> _engine.Problem:
    rng = np.random.default_rng(7)
    return _engine.Problem(
        centers=torch.from_numpy(np.tanh(2.0 * rng.normal(size=(1, n, 3)))),
        log_weights=torch.full((1, n), -math.log(n), dtype=torch.float64),
        atoms=torch.zeros(n, dtype=torch.int64), n_atoms=1,
        own=torch.from_numpy(rng.integers(0, n, (1, n_points))),
        noise=torch.from_numpy(rng.normal(size=(1, n_points, 3))).float(),
        beta=beta, scale=0.5 / beta**2, exp_dtype=torch.float32,
    )


@pytest.mark.parametrize("n_points", [1500, 12000])
def test_listed_pairs_hold_every_pair_in_reach_in_point_order(n_points: int) -> None:
    """The few-pairs route lists its pairs once, in blocks of balls in random order (one about
    each point where the own centres have about one point each, else one about each own
    centre): put back in point order, each point's pairs are the centres in its ball, and
    they hold every centre within the point's own reach."""
    problem = _pair_problem(3000, n_points, 0.02)
    route = _engine._Neighbours(problem)
    listed = route._listed_pairs(budget=math.inf)
    assert listed is not None
    degree, centres = listed
    _, points, query = route._ball
    owner = query["owner"]
    assert (owner.max() + 1 < n_points) == (n_points > 3000)  # shared balls for many points
    ball = (torch.cdist(torch.from_numpy(query["x"][owner]), route.centers).numpy()
            <= query["r"][owner, None])
    reach = _engine._reach(problem, route.own_sq, route.floor).numpy()
    in_reach = torch.cdist(points, route.centers).numpy() <= reach[:, None]
    assert not (in_reach & ~ball).any()
    assert in_reach.sum() > n_points  # not only the own terms
    np.testing.assert_array_equal(degree, ball.sum(axis=1))
    start = np.concatenate([[0], np.cumsum(degree)])
    for k in range(0, n_points, 97):
        assert sorted(centres[start[k]:start[k + 1]]) == np.flatnonzero(ball[k]).tolist()


def test_a_listing_past_its_budget_or_pair_limit_is_given_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _pair_problem(3000, 5000, 0.02)
    assert _engine._Neighbours(problem)._listed_pairs(budget=0.0) is None
    monkeypatch.setattr(_engine, "_MAX_PAIRS", 100)
    assert _engine._Neighbours(problem)._listed_pairs(budget=math.inf) is None


def test_few_points_are_evaluated_densely_without_planning() -> None:
    """Below _PLAN_POINTS points the chooser's own work on the centres would cost more than
    pruning saves: the same spread centres prune for many points and run densely for few."""
    centers = spread(np.random.default_rng(8), 50_000, 3)
    many = draw_points(np.ones(50_000), 4096, 3, seed=0)
    few = draw_points(np.ones(50_000), _engine._PLAN_POINTS - 1, 3, seed=0)
    assert mixture_log_density(centers, 0.005, many).strategy == "neighbours"
    assert mixture_log_density(centers, 0.005, few).strategy == "dense"


@pytest.mark.skipif(not fused.enabled(), reason="the leaf route needs Numba")
@pytest.mark.parametrize("case", ["clustered-d3", "clustered-d10", "saturated-d2"])
def test_leaf_route_visits_every_centre_in_reach_and_counts_its_pairs(case: str) -> None:
    """Each point's visited leaves (boxes within its reach, found by walking the tree) hold
    every centre within its reach (cdist), and the route's pair count is their sizes' sum."""
    make, beta = CASES[case]
    rng = np.random.default_rng(3)
    centers = make(rng)
    n, d = centers.shape
    points = draw_points(np.ones(n), 2 * n, d, seed=5)
    problem = _engine.Problem(
        centers=torch.from_numpy(centers)[None], log_weights=torch.full((1, n), -math.log(n),
        dtype=torch.float64), atoms=torch.zeros(n, dtype=torch.int64), n_atoms=1,
        own=points.centre.reshape(1, -1), noise=points.noise.reshape(1, -1, d), beta=beta,
        scale=0.5 / beta**2, exp_dtype=torch.float32)
    route = _engine._Leaves(problem)
    sorted_centres = route.centres_t.T
    starts = route.leaf_bounds
    leaf = np.repeat(np.arange(starts.size - 1), np.diff(starts))
    lo = np.minimum.reduceat(sorted_centres, starts[:-1], axis=0)
    hi = np.maximum.reduceat(sorted_centres, starts[:-1], axis=0)
    gap = np.maximum(lo[None] - route.points[:, None], route.points[:, None] - hi[None])
    visited = (np.maximum(gap, 0.0) ** 2).sum(-1) <= route.reach_sq[:, None]
    within = cdist(route.points, sorted_centres, "sqeuclidean") <= route.reach_sq[:, None]
    assert within.sum() > 1.5 * len(route.points)  # more than the own centres
    assert visited[np.nonzero(within)[0], leaf[np.nonzero(within)[1]]].all()
    assert route.pairs()[0] == float((visited * np.diff(starts)).sum())
