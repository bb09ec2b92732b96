"""MC points stratified by weight, and the stratified standard error of their mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ibframe.errors import ParameterError
from ibframe.kernels.mc_points import (
    MixturePoints,
    draw_points,
    n_points_for_stderr,
    stratified_stderr,
)


def test_equal_weights_give_every_centre_its_n_mc_points_in_order() -> None:
    points = draw_points(np.ones(50), 200, 3, seed=0)
    expected = torch.arange(50).repeat_interleave(4)[None]
    assert torch.equal(points.centre, expected)
    assert torch.equal(points.cell, expected)
    assert points.noise.shape == (1, 200, 3)
    assert points.n_points == 200 and points.dim == 3


def test_each_centre_gets_its_weight_in_points_to_within_two() -> None:
    """Its whole slots, and possibly one straddling slot at each end."""
    rng = np.random.default_rng(1)
    weights = rng.exponential(size=(3, 40))
    points = draw_points(weights, 1000, 2, seed=5)
    counts = torch.stack([torch.bincount(row, minlength=40) for row in points.centre])
    share = torch.from_numpy(weights / weights.sum(axis=1, keepdims=True)) * 1000
    assert ((counts - share).abs() < 2).all()


def test_the_sampling_is_unbiased_where_slots_straddle_centres() -> None:
    weights = np.array([0.3, 0.45, 0.25])  # boundaries at 0.3 and 0.75 of the mass
    hits = torch.zeros(3, dtype=torch.float64)
    for seed in range(400):
        points = draw_points(weights, 2, 1, seed=seed)
        hits += torch.bincount(points.centre[0], minlength=3)
    frequency = hits / hits.sum()
    assert np.allclose(frequency.numpy(), weights, atol=0.04)  # ~3 sigma for 800 points


def test_inputs_of_equal_weight_get_equal_points_whatever_their_draws() -> None:
    draws = np.array([1, 17, 5, 17, 3, 8])
    weights = np.repeat(1.0 / draws, draws)  # each input 1/6, shared by its draws
    points = draw_points(weights, 12, 2, seed=3)
    owner = np.repeat(np.arange(6), draws)[points.centre[0].numpy()]
    assert np.array_equal(np.bincount(owner, minlength=6), np.full(6, 2))


def test_points_are_reproducible_and_seeds_differ() -> None:
    first = draw_points(np.arange(1.0, 11.0), 64, 2, seed=7)
    again = draw_points(np.arange(1.0, 11.0), 64, 2, seed=7)
    other = draw_points(np.arange(1.0, 11.0), 64, 2, seed=8)
    assert torch.equal(first.noise, again.noise) and torch.equal(first.centre, again.centre)
    assert not torch.equal(first.noise, other.noise)


def test_stratified_stderr_uses_cells_and_pairs_singletons() -> None:
    # cells 0 (3 points) and 1 (2 points), then three singletons (one pair and a lone third)
    values = torch.tensor([[1.0, 2.0, 4.0, 10.0, 12.0, 5.0, 7.0, 20.0]], dtype=torch.float64)
    cell = torch.tensor([[0, 0, 0, 1, 1, -1, -1, -1]])
    n = 8
    within = np.var([1, 2, 4], ddof=1) * 3 + np.var([10, 12], ddof=1) * 2
    singles = np.var([5, 7, 20], ddof=1) * 3  # the odd last one joins the pair before
    expected = math.sqrt(within + singles) / n
    assert float(stratified_stderr(values, cell)[0]) == pytest.approx(expected, rel=1e-12)
    # NaN marks points left out: the rest are the sample
    values[0, 2] = math.nan
    within = np.var([1, 2], ddof=1) * 2 + np.var([10, 12], ddof=1) * 2
    expected = math.sqrt(within + singles) / 7
    assert float(stratified_stderr(values, cell)[0]) == pytest.approx(expected, rel=1e-12)


def test_stratified_stderr_is_nan_without_two_points() -> None:
    assert math.isnan(float(stratified_stderr(torch.tensor([[1.0]]), torch.tensor([[0]]))[0]))


def test_stratified_stderr_matches_the_spread_of_means() -> None:
    rng = np.random.default_rng(0)
    means = rng.normal(size=30) * 5  # strata far apart: only within-stratum noise counts
    estimates, stderrs = [], []
    for seed in range(300):
        points = draw_points(np.ones(30), 90, 1, seed=seed)
        values = torch.from_numpy(means)[points.centre[0]] + points.noise[0, :, 0].double()
        estimates.append(float(values.mean()))
        stderrs.append(float(stratified_stderr(values, points)[0]))
    assert np.mean(stderrs) / np.std(estimates, ddof=1) == pytest.approx(1.0, abs=0.15)


def test_strata_make_cells_of_an_inputs_realisations() -> None:
    """30 inputs far apart, each with 8 realisations (centres) of weight 1/240, 3 points per
    input: no point lies within a centre, every point within its input."""
    rng = np.random.default_rng(0)
    means = np.repeat(rng.normal(size=30) * 5, 8) + rng.normal(size=240) * 0.1
    strata = np.repeat(np.arange(30), 8)
    with_strata, without, estimates = [], [], []
    for seed in range(300):
        points = draw_points(np.ones(240), 90, 1, seed=seed, strata=strata)
        assert (points.cell[0] == 240 + torch.from_numpy(strata)[points.centre[0]]).all()
        bare = draw_points(np.ones(240), 90, 1, seed=seed)
        assert torch.equal(bare.centre, points.centre) and (bare.cell == -1).all()
        values = torch.from_numpy(means)[points.centre[0]] + points.noise[0, :, 0].double()
        estimates.append(float(values.mean()))
        with_strata.append(float(stratified_stderr(values, points)[0]))
        without.append(float(stratified_stderr(values, bare)[0]))
    spread = np.std(estimates, ddof=1)
    # within an input: a little conservative (its points are themselves spread over its draws)
    assert 1.0 <= np.mean(with_strata) / spread <= 1.3
    # without strata, points are paired in slot order and every other pair joins two inputs:
    # it adds the spread between inputs that stratification removed
    assert np.mean(without) / spread > 1.8


def test_strata_need_one_label_per_centre() -> None:
    with pytest.raises(ParameterError, match="strata"):
        draw_points(np.ones(6), 12, 2, seed=0, strata=[0, 0, 1])


def test_n_points_for_stderr() -> None:
    assert n_points_for_stderr(0.02, 1000, 0.01) == 4000
    assert n_points_for_stderr(0.005, 1000, 0.01) == 1000
    with pytest.raises(ParameterError, match="finite"):
        n_points_for_stderr(math.nan, 1000, 0.01)


@pytest.mark.parametrize(
    ("weights", "kwargs", "match"),
    [
        (np.ones(3), {"n_points": 0}, "n_points"),
        (np.ones(3), {"d": 0}, "d"),
        (-np.ones(3), {}, ">= 0"),
        (np.ones((2, 2, 2)), {}, "shape"),
        (np.ones(3), {"seed": -2}, "seed"),
    ],
)
def test_bad_points_input_raises(weights: np.ndarray, kwargs: dict[str, int], match: str) -> None:
    args = {"n_points": 10, "d": 2, **kwargs}
    with pytest.raises(ParameterError, match=match):
        draw_points(weights, args.pop("n_points"), args.pop("d"), **args)  # type: ignore[arg-type]


def test_points_move_between_devices() -> None:
    points = draw_points(np.ones(4), 8, 2, seed=0)
    moved = points.to(torch.device("cpu"))
    assert isinstance(moved, MixturePoints)
    assert torch.equal(moved.quad(), 0.5 * (points.noise.double() ** 2).sum(-1))


def test_stderr_groups_alike_whether_cells_are_counted_in_an_array_or_sorted() -> None:
    """Cell ids in a small range are grouped by counting into an array, ids spread over a huge
    range by sorting; the grouping depends only on which ids are equal, so spreading the same
    cells out changes nothing, and with every cell holding 2+ points it is the textbook
    stratified standard error sqrt(sum_g n_g s_g^2) / n."""
    rng = np.random.default_rng(0)
    cell = torch.from_numpy(rng.integers(-1, 40, size=(3, 600)))  # -1: outside every cell
    values = torch.from_numpy(rng.normal(size=(3, 600)))
    values[0, :7] = math.nan
    spread_out = torch.where(cell >= 0, cell * 10_000_019, cell)
    counted, sorted_ = stratified_stderr(values, cell), stratified_stderr(values, spread_out)
    assert torch.equal(counted, sorted_)
    full = torch.from_numpy(rng.integers(0, 30, size=(1, 900)))
    x = torch.from_numpy(rng.normal(size=(1, 900)))
    groups = [x[0, full[0] == g].numpy() for g in range(30)]
    reference = math.sqrt(sum(len(v) * v.var(ddof=1) for v in groups)) / 900
    assert float(stratified_stderr(x, full)[0]) == pytest.approx(reference, rel=1e-12)
