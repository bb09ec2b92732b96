r"""Differential entropy of Gaussian mixtures with a shared isotropic covariance.

The sample-propagation estimator of Goldfeld et al. (ICML 2019) reduces every entropy it needs
to that of a mixture

.. math::  g(t) = \sum_{j=1}^n w_j\, \varphi_\beta(t - \mu_j),
           \qquad \varphi_\beta = \mathcal N(0, \beta^2 I_d),

with known centres :math:`\mu_j \in \mathbb R^d` and weights :math:`w_j` (equal by default:
the paper's :math:`\frac1n\sum_i`). :func:`gaussian_mixture_entropy` evaluates :math:`h(g)` in
nats in one of three ways:

``"mc"``
    the paper's Monte Carlo integration (App. C.5), :math:`h(g) = -\mathbb E \log g(V)` with
    :math:`V = \mu_J + \beta Z`, :math:`J \sim w`. The points are stratified by weight
    (:mod:`ibframe.kernels.mc_points`): with equal weights every centre gets ``n_mc`` draws, as
    in the paper, and the estimate is unbiased with MSE at most
    :math:`2d(2+\beta^2)/(\beta^2 n\, n_{MC})` for centres in :math:`[-1, 1]^d` (Theorem 6; see
    :mod:`ibframe.theory`). The number of points is a choice of its own (``n_points``, or
    ``target_stderr``): the variance falls with the points, the cost grows with points times
    centres.
``"kl-upper"`` and ``"bhattacharyya-lower"``
    the pairwise-distance bounds of Kolchinsky & Tracey (2017),
    :math:`\hat H_D = h(\varphi_\beta) - \sum_i w_i \ln \sum_j w_j e^{-D(p_i \| p_j)}`.
    For equal isotropic components, :math:`D_{KL} = \|\mu_i - \mu_j\|^2 / (2\beta^2)` gives an
    upper bound on :math:`h(g)` and :math:`D_B = \|\mu_i - \mu_j\|^2 / (8\beta^2)` a lower
    bound. Both are deterministic.

All of them come down to :math:`\log \sum_j w_j \exp(-s\|p - \mu_j\|^2)` at many points
:math:`p`. :func:`mixture_log_density` is that primitive, public: for MC points drawn from known
centres it returns the log density of the mixture and of any number of sub-mixtures (a class,
a subsample: the weights restricted to a group and renormalised) at once, from one pass over the
centres. How it stays fast and exact (blocks, pruning of far centres with exact differences,
float32 without loss, the worker pool) is in :mod:`ibframe.kernels._engine`.

Control variate
---------------
:math:`-\log g(\mu_j + \beta z) = \frac d2\ln(2\pi\beta^2) + q - \ln\sum_i w_i e^{e_i}` with
:math:`q = \|z\|^2/2` and :math:`e_i` the exponent relative to the own centre. :math:`q` has the
known mean :math:`d/2` and carries most of the variance where centres are far apart relative to
:math:`\beta` (all of it in the limit: variance :math:`d/2` per point against none). The
estimate averages :math:`\ell - c\,(q - d/2)`, with :math:`c` the least-squares coefficient of
:math:`\ell` on :math:`q` pooled over a batch. Any fixed :math:`c` leaves it unbiased; the fitted
one minimises its variance and adds a bias of order :math:`1/N`, far below the error.

Defaults
--------
On a synthetic SZT epoch (n = 4096 inputs, widths 10-7-5-4-3, beta = 0.1) the standard error
of h(T) measured 0.002-0.007 nats with :data:`DEFAULT_N_MC` = 4 draws per centre (0.004-0.024
with 1, 0.001-0.005 with 8). The conditional entropies are averaged over all n inputs, so one
draw per centre (:data:`DEFAULT_N_MC_BATCH`) leaves about 0.001 nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from ibframe._validation import positive, positive_int
from ibframe.errors import ParameterError
from ibframe.kernels._engine import (
    FLOAT32_EXPONENT_TOL,
    PRUNE_TOLERANCE,
    STRATEGIES,
    Problem,
    Strategy,
    log_sums,
)
from ibframe.kernels._inputs import (
    as_float64,
    check_seed,
    exact_float32_matmul,
    mixture_weights,
    resolve_device,
    resolve_dtype,
)
from ibframe.kernels._threads import single_threaded_caller
from ibframe.kernels.mc_points import (
    MixturePoints,
    _cell_stderr,
    draw_points,
    n_points_for_stderr,
    points_per_centre,
    stratified_stderr,
)

__all__ = [
    "DEFAULT_N_MC",
    "DEFAULT_N_MC_BATCH",
    "FLOAT32_EXPONENT_TOL",
    "METHODS",
    "PRUNE_TOLERANCE",
    "STRATEGIES",
    "Method",
    "MixtureDensity",
    "MixturePoints",
    "draw_points",
    "gaussian_entropy",
    "gaussian_mixture_entropy",
    "mc_entropy_estimate",
    "mc_standard_error",
    "mixture_log_density",
    "n_points_for_stderr",
    "stratified_stderr",
]

Method = Literal["mc", "kl-upper", "bhattacharyya-lower"]
METHODS: tuple[str, ...] = ("mc", "kl-upper", "bhattacharyya-lower")

DEFAULT_N_MC = 4
"""MC draws per centre for one mixture ``(n, d)``: h(T) of an SZT layer to < 0.01 nats."""

DEFAULT_N_MC_BATCH = 1
"""MC draws per centre for a batch ``(b, n, d)`` of conditional mixtures that get averaged."""

_PILOT_POINTS = 1024
_WEIGHT_RANGE = 1e15  # largest ratio of positive weights: clamped terms stay negligible


# --------------------------------------------------------------------------------------------
# public API


def gaussian_entropy(d: int, beta: float) -> float:
    r"""Entropy :math:`\frac d2 \ln(2\pi e \beta^2)` of :math:`\mathcal N(0, \beta^2 I_d)`, in nats.

    It is the entropy of a one-centre mixture, and :math:`h(T_1 | X)` of a first noisy layer.
    """
    d = positive_int(d, "d")
    return 0.5 * d * math.log(2.0 * math.pi * math.e * positive(beta, "beta") ** 2)


@dataclass(frozen=True)
class MixtureDensity:
    """What :func:`mixture_log_density` returns."""

    log_density: torch.Tensor
    r"""``(N, 1 + G)`` or ``(b, N, 1 + G)`` float64: :math:`\log g_c(p_k)` of the whole mixture
    (column 0) and of each group's sub-mixture, NaN where the point's own centre is outside the
    group."""
    points: MixturePoints
    strategy: str
    """How the sums were evaluated: ``"dense"`` or ``"neighbours"`` (pruned)."""


@single_threaded_caller
def mixture_log_density(
    centers: npt.ArrayLike | torch.Tensor,
    beta: float,
    points: MixturePoints,
    *,
    weights: npt.ArrayLike | torch.Tensor | None = None,
    groups: npt.ArrayLike | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | type | None = None,
    strategy: Strategy = "auto",
) -> MixtureDensity:
    r"""Log densities of a mixture and of its sub-mixtures at MC points, in one pass.

    For points :math:`p_k = \mu_{j(k)} + \beta z_k` (``points``, from :func:`draw_points`),
    computes :math:`\log g_c(p_k)` with :math:`g_0 = \sum_j w_j \varphi_\beta(\cdot - \mu_j)`
    and, for each group :math:`G_c`, :math:`g_c = \sum_{j \in G_c} w_j \varphi_\beta(\cdot -
    \mu_j) / \sum_{j \in G_c} w_j`: the class-conditional mixture of a class, or the mixture of
    a subsample. Every column comes from the same evaluation of the same points, so differences
    of entropies have the error of paired per-point differences (common random numbers).

    A column is only computed where the point's own centre is in the group (elsewhere NaN): the
    entropy of a sub-mixture is estimated from the points drawn from its own centres, which are
    a stratified sample of it when the group is a union of whole strata (see
    :mod:`ibframe.kernels.mc_points`). :func:`mc_entropy_estimate` turns the columns into
    entropies and standard errors.

    Parameters
    ----------
    centers
        ``(n, d)`` for one mixture or ``(b, n, d)`` for a batch.
    beta
        Noise standard deviation :math:`\beta > 0`.
    points
        The MC points, drawn with :func:`draw_points` from these ``weights``.
    weights
        ``(n,)`` or ``(b, n)`` non-negative weights (normalised here); ``None``: equal.
    groups
        ``(G, n)`` boolean membership of the centres in ``G`` groups (shared by a batch);
        ``None``: only the whole mixture.
    device, dtype
        As for :func:`gaussian_mixture_entropy`.
    strategy
        ``"auto"`` (choose by estimated cost), ``"dense"`` or ``"neighbours"`` (pruned; a batch
        is always dense). Every strategy gives the same result within the clamp tolerance.
    """
    beta = positive(beta, "beta")
    if strategy not in STRATEGIES:
        msg = f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"
        raise ParameterError(msg)
    exp_dtype = resolve_dtype(dtype)
    target = resolve_device(centers, device)
    mu, batched = _centres(centers, target)
    b, n, d = mu.shape
    w = _weights(weights, (b, n), target)
    pts = _checked_points(points, mu).to(target)
    member = _group_mask(groups, n, target)
    atoms, n_atoms, atom_of_group = _atoms(member)
    problem = Problem(
        centers=mu, log_weights=w.log(), atoms=atoms, n_atoms=n_atoms, own=pts.centre,
        noise=pts.noise, beta=beta, scale=0.5 / beta**2, exp_dtype=exp_dtype,
    )
    with exact_float32_matmul(target):
        sums, used = log_sums(problem, strategy)
    # group sums: log sum over the group's atoms, less the log of the group's weight
    in_group = torch.cat([torch.ones(1, n_atoms, dtype=torch.bool, device=target),
                          atom_of_group], dim=0)  # (1 + G, A)
    atom_weight = torch.zeros(b, n_atoms, dtype=torch.float64, device=target)
    atom_weight.index_add_(1, atoms, w)
    group_lw = torch.where(in_group[None], atom_weight[:, None, :], 0.0).sum(-1).log()
    lse = _group_log_sums(sums, in_group) - group_lw[:, None, :]
    quad = pts.quad()
    log_g = lse - quad[..., None] - 0.5 * d * math.log(2.0 * math.pi * beta**2)
    own_in = in_group[:, atoms[pts.centre]].permute(1, 2, 0)  # (b, N, 1 + G)
    log_g = torch.where(own_in, log_g, math.nan)
    return MixtureDensity(
        log_density=log_g if batched else log_g[0], points=pts, strategy=used
    )


def _group_log_sums(sums: torch.Tensor, in_group: torch.Tensor) -> torch.Tensor:
    """``(b, N, 1 + G)``: per group, the log sum over its atoms of ``sums`` ``(b, N, A)``.

    A group of one atom is that atom's column and a group of all atoms one ``logsumexp``: 3-4x
    faster than one ``logsumexp`` over all atoms masked to -inf per group, which costs as much
    as the kernel on 4096 conditional mixtures of 33 centres.
    """
    columns = []
    for row in in_group.cpu():
        atoms = row.nonzero().flatten()
        if atoms.numel() == 1:
            columns.append(sums[..., int(atoms[0])])
        elif atoms.numel() == sums.shape[-1]:
            columns.append(torch.logsumexp(sums, dim=-1))
        else:
            columns.append(torch.logsumexp(sums[..., atoms.to(sums.device)], dim=-1))
    return torch.stack(columns, dim=-1)


@single_threaded_caller
def mc_entropy_estimate(
    log_density: torch.Tensor, points: MixturePoints
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Entropies, standard errors and corrected per-point terms from log densities.

    ``log_density`` is ``(N, C)`` or ``(b, N, C)`` (e.g. :attr:`MixtureDensity.log_density`),
    NaN where a point does not count for a column. Per column the estimate is the mean over the
    counting points of :math:`\ell_k - c\,(q_k - d/2)`, :math:`\ell = -\log g`, with the control
    variate fitted per column and pooled over a batch (module notes). Returns entropies and
    standard errors ``(C,)`` or ``(b, C)`` and the terms, shaped like ``log_density``: the mean
    of the terms over the counting points is the estimate, and a difference of two columns'
    terms, point by point, gives a paired estimate whose standard error is
    :func:`stratified_stderr` of the differences.
    """
    single = log_density.ndim == 2
    ell = -(log_density[None] if single else log_density)
    b, n_points, columns = ell.shape
    quad = (points.quad().to(ell.device) - 0.5 * points.dim)[..., None]
    valid = torch.isfinite(ell)
    coefficient = _control_coefficient(ell, quad, valid)
    terms = torch.where(valid, ell - coefficient * quad, math.nan)
    entropy = torch.nanmean(terms, dim=1)
    # every column's standard error in one call: the columns as more mixtures, same cells
    cell = points.cell.to(ell.device).repeat_interleave(columns, dim=0)
    stderr = _cell_stderr(terms.transpose(1, 2).reshape(b * columns, n_points), cell)
    stderr = stderr.reshape(b, columns)
    if single:
        return entropy[0], stderr[0], terms[0]
    return entropy, stderr, terms


@single_threaded_caller
def gaussian_mixture_entropy(
    centers: npt.ArrayLike | torch.Tensor,
    beta: float,
    *,
    weights: npt.ArrayLike | torch.Tensor | None = None,
    n_mc: int | None = None,
    n_points: int | None = None,
    target_stderr: float | None = None,
    method: Method = "mc",
    seed: int | None = None,
    noise: npt.ArrayLike | torch.Tensor | None = None,
    points: MixturePoints | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | type | None = None,
    strategy: Strategy = "auto",
    return_stderr: bool = False,
    return_terms: bool = False,
) -> float | npt.NDArray[np.float64] | tuple[Any, ...]:
    r"""Differential entropy (nats) of :math:`g = \sum_j w_j \mathcal N(\mu_j, \beta^2 I_d)`.

    Parameters
    ----------
    centers
        The centres: ``(n, d)`` for one mixture, or ``(b, n, d)`` for ``b`` mixtures of ``n``
        centres each (e.g. the conditional mixtures :math:`\hat p_{S|X=x} * \varphi_\beta`).
        A NumPy array, array-like or torch tensor.
    beta
        Noise standard deviation :math:`\beta > 0`.
    weights
        ``(n,)`` or ``(b, n)`` non-negative component weights (normalised here). ``None``:
        equal weights, the paper's :math:`\frac1n\sum_i`. Positive weights may span at most 15
        orders of magnitude; centres of zero weight are left out.
    n_mc
        MC points per centre on average: ``n * n_mc`` points per mixture. ``None`` means
        :data:`DEFAULT_N_MC` for one mixture and :data:`DEFAULT_N_MC_BATCH` for a batch.
        Inferred from ``noise`` when given.
    n_points
        MC points per mixture, instead of ``n * n_mc``: the error depends on the points, the
        cost on points times centres.
    target_stderr
        Choose the points for this standard error: a pilot of 1024 points measures it, and if
        it is above target the estimate is made on
        :func:`n_points_for_stderr` fresh points (at least the pilot's).
    method
        ``"mc"`` (unbiased Monte Carlo integration), or ``"kl-upper"`` or
        ``"bhattacharyya-lower"`` (the deterministic pairwise bounds). The bounds ignore the
        MC arguments.
    seed
        Seed of the MC points. The same seed on the same device gives the same points whatever
        ``dtype`` is. ``None`` draws fresh entropy.
    noise
        Explicit standard normal draws, ``(n, n_mc, d)`` or ``(b, n, n_mc, d)``: point
        ``(i, k)`` is :math:`\mu_i + \beta\,\text{noise}_{ik}`. Equal weights only; it
        overrides ``seed``, so a reference implementation can be compared on the same points.
    points
        Explicit MC points from :func:`draw_points` (any weights); overrides ``seed``,
        ``noise``, ``n_mc`` and ``n_points``.
    device
        Where to compute. ``None`` means the device of a tensor input, else the CPU.
    dtype
        ``float32`` (the default; exact where float32 would lose accuracy, see
        :mod:`ibframe.kernels._engine`) or ``float64`` (everything in float64, ~2x slower).
    strategy
        ``"auto"``, ``"dense"`` or ``"neighbours"``, as for :func:`mixture_log_density`.
    return_stderr
        Also return the MC standard error (0 for the bounds).
    return_terms
        Also return the per-point terms whose mean is the estimate (``method="mc"`` only), to
        pair two estimates made on shared points and take the standard error of their
        difference with :func:`mc_standard_error` or :func:`stratified_stderr`. Shaped
        ``(n, n_mc)`` or ``(b, n, n_mc)`` with equal weights and points per centre (no
        ``weights``, ``n_points``, ``target_stderr`` or ``points``), else ``(N,)`` or
        ``(b, N)``.

    Returns
    -------
    float or numpy.ndarray or tuple
        The entropy as a float, or as a length-``b`` float64 array for a batch. With
        ``return_stderr``, the pair ``(entropy, stderr)`` of matching types; with
        ``return_terms`` the terms come last.

    Notes
    -----
    The MC estimate is the mean of :math:`\ell_k = -\log g(p_k)` (with the control variate)
    over points stratified by weight. Its standard error is the stratified one
    (:func:`stratified_stderr`): the within-centre variance where a centre has several points,
    and collapsed pairs of neighbouring points elsewhere, which can only overstate the error.
    It is NaN for one centre with one point.

    Raises
    ------
    ParameterError
        For NaN/inf or empty centres, a wrong number of dimensions, ``beta <= 0``, ``n_mc``,
        ``n_points`` or ``target_stderr`` out of range, an unknown ``method``, ``strategy``,
        ``dtype`` or ``device``, negative or mis-shaped ``weights``, or ``noise`` or ``points``
        that do not match the centres.
    """
    if method not in METHODS:
        msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
        raise ParameterError(msg)
    if strategy not in STRATEGIES:
        msg = f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"
        raise ParameterError(msg)
    beta = positive(beta, "beta")
    if n_mc is not None:
        n_mc = positive_int(n_mc, "n_mc")
    if n_points is not None:
        n_points = positive_int(n_points, "n_points")
    if target_stderr is not None:
        target_stderr = positive(target_stderr, "target_stderr")
    exp_dtype = resolve_dtype(dtype)
    target = resolve_device(centers, device)
    mu, batched = _centres(centers, target)
    b, n, d = mu.shape
    w = _weights(weights, (b, n), target)
    if method != "mc":
        if return_terms:
            msg = f"return_terms needs method='mc', not {method!r}"
            raise ParameterError(msg)
        with exact_float32_matmul(target):
            entropy = _bound_entropy(mu, w, beta, method, exp_dtype, strategy)
        stderr = torch.zeros_like(entropy)
        terms = None
        legacy = False
    else:
        seed = check_seed(seed)
        draws = _noise_tensor(noise, mu, batched, n_mc, target)
        if draws is not None and weights is not None:
            msg = "noise fixes n_mc draws per centre (equal weights); for weights pass points="
            raise ParameterError(msg)
        if points is not None:
            pts = _checked_points(points, mu).to(target)
        elif draws is not None:
            pts = points_per_centre(b, n, draws.shape[2], draws)
        else:
            per_centre = n_mc or (DEFAULT_N_MC_BATCH if batched else DEFAULT_N_MC)
            count = n_points or n * per_centre
            if target_stderr is not None:
                count = _points_for_target(mu, w, beta, count, target_stderr, seed, exp_dtype,
                                           strategy)
                seed = None if seed is None else _child_seed(seed)
            pts = draw_points(w, count, d, seed=seed, device=target)
        legacy = (
            weights is None and points is None and n_points is None and target_stderr is None
        )
        entropy, stderr, terms = _mc_entropy(mu, w, beta, pts, exp_dtype, strategy)
        if legacy:
            terms = terms.reshape(b, n, -1)
    h = entropy.cpu().numpy()
    se = stderr.cpu().numpy()
    out: tuple[Any, ...] = (float(h[0]), float(se[0])) if not batched else (h, se)
    if return_terms:
        assert terms is not None  # method == "mc" was checked above
        values = terms.cpu().numpy()
        out = (*out, values if batched else values[0])
    if return_stderr or return_terms:
        return out if return_stderr else (out[0], out[2])
    return out[0]


@single_threaded_caller
def mc_standard_error(terms: npt.ArrayLike | torch.Tensor) -> float:
    r"""Standard error of the mean of MC terms ``(n, n_mc)``: one row of draws per centre.

    With ``n_mc >= 2`` it is the stratified :math:`\sqrt{\sum_i \hat\sigma_i^2 / n_{MC}} / n`;
    with one draw per centre, neighbouring centres are paired (collapsed strata), which can only
    overstate the error. NaN for one term.
    """
    values = torch.as_tensor(terms, dtype=torch.float64)
    if values.ndim != 2:
        msg = f"terms must have shape (n, n_mc), got {tuple(values.shape)}"
        raise ParameterError(msg)
    n, n_mc = values.shape
    cell = torch.arange(n).repeat_interleave(n_mc)[None]
    return float(_cell_stderr(values.reshape(1, -1), cell)[0])


# --------------------------------------------------------------------------------------------
# the estimators


def _mc_entropy(
    mu: torch.Tensor,
    w: torch.Tensor,
    beta: float,
    points: MixturePoints,
    exp_dtype: torch.dtype,
    strategy: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MC entropy, standard error and per-point terms ``(b, N)`` of each mixture."""
    _, n, d = mu.shape
    problem = Problem(
        centers=mu, log_weights=w.log(), atoms=torch.zeros(n, dtype=torch.int64,
                                                           device=mu.device),
        n_atoms=1, own=points.centre, noise=points.noise, beta=beta, scale=0.5 / beta**2,
        exp_dtype=exp_dtype,
    )
    with exact_float32_matmul(mu.device):
        sums, _ = log_sums(problem, strategy)
    const = 0.5 * d * math.log(2.0 * math.pi * beta**2)
    log_g = sums - points.quad()[..., None] - const
    entropy, stderr, terms = mc_entropy_estimate(log_g, points)
    return entropy[:, 0], stderr[:, 0], terms[..., 0]


def _control_coefficient(ell: torch.Tensor, quad: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
    """Per column ``(C,)``, the least-squares slope of ``ell`` ``(b, N, C)`` on ``quad``
    ``(b, N, 1)`` (mean-zero) within mixtures, pooled over the batch, on the valid points.
    A column with fewer than 16 valid points keeps the plain average (slope 0)."""
    count = valid.sum(dim=1, keepdim=True)
    weight = valid.to(ell.dtype)
    safe = count.clamp(min=1)
    e = torch.where(valid, ell, 0.0)
    q = torch.where(valid, quad, 0.0)
    q = (q - q.sum(dim=1, keepdim=True) / safe) * weight
    e = (e - e.sum(dim=1, keepdim=True) / safe) * weight
    denominator = (q * q).sum(dim=(0, 1))
    usable = (count.sum(dim=(0, 1)) >= 16) & (denominator > 0)
    return torch.where(usable, (q * e).sum(dim=(0, 1)) / denominator.clamp(min=1e-300), 0.0)


def _bound_entropy(
    mu: torch.Tensor, w: torch.Tensor, beta: float, method: str, exp_dtype: torch.dtype,
    strategy: str,
) -> torch.Tensor:
    """Kolchinsky-Tracey pairwise bound for each mixture of ``mu`` ``(b, n, d)``."""
    if mu.shape[0] == 1:  # centres of zero weight add nothing (a batch keeps its shape)
        keep = w[0] > 0
        mu, w = mu[:, keep], w[:, keep]
    b, n, d = mu.shape
    scale = 0.5 / beta**2 if method == "kl-upper" else 0.125 / beta**2
    own = torch.arange(n, device=mu.device).expand(b, n).contiguous()
    problem = Problem(
        centers=mu, log_weights=w.log(), atoms=torch.zeros(n, dtype=torch.int64,
                                                           device=mu.device),
        n_atoms=1, own=own, noise=None, beta=beta, scale=scale, exp_dtype=exp_dtype,
    )
    sums, _ = log_sums(problem, strategy)
    # zero-weight centres do not count: 0 * finite
    lse = torch.where(w > 0, sums[..., 0], 0.0)
    return gaussian_entropy(d, beta) - (w * lse).sum(dim=1)


def _points_for_target(
    mu: torch.Tensor, w: torch.Tensor, beta: float, default: int, target: float,
    seed: int | None, exp_dtype: torch.dtype, strategy: str,
) -> int:
    """Points for ``target`` standard error, from a pilot of at most 1024 points."""
    pilot = min(default, _PILOT_POINTS)
    pts = draw_points(w, pilot, mu.shape[2], seed=seed, device=mu.device)
    _, stderr, _ = _mc_entropy(mu, w, beta, pts, exp_dtype, strategy)
    worst = float(torch.nan_to_num(stderr, nan=math.inf).max())
    if not math.isfinite(worst):
        return max(default, pilot)
    return n_points_for_stderr(worst, pilot, target)


def _child_seed(seed: int) -> int:
    """A second seed derived from ``seed``, for the points after a pilot."""
    return int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------------
# inputs


def _centres(centers: Any, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Centres as ``(b, n, d)`` float64 and whether they came as a batch."""
    mu = as_float64(centers, "centers", device)
    if mu.ndim not in (2, 3):
        msg = f"centers must have shape (n, d) or (b, n, d), got {tuple(mu.shape)}"
        raise ParameterError(msg)
    return (mu, True) if mu.ndim == 3 else (mu[None], False)


def _weights(weights: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Normalised weights ``(b, n)``, refusing a range the clamp could not stand."""
    w = mixture_weights(weights, shape, device)
    if weights is not None:
        positive_w = torch.where(w > 0, w, math.inf)
        ratio = w.max(dim=1).values / positive_w.min(dim=1).values
        if bool((ratio > _WEIGHT_RANGE).any()):
            msg = (
                "weights span more than 15 orders of magnitude; drop the centres whose weight "
                "is negligible"
            )
            raise ParameterError(msg)
    return w


def _group_mask(groups: Any, n: int, device: torch.device) -> torch.Tensor:
    """Group membership ``(G, n)`` bool (``G = 0`` without groups)."""
    if groups is None:
        return torch.zeros(0, n, dtype=torch.bool, device=device)
    mask = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups)
    if mask.dtype != torch.bool:
        msg = f"groups must be a boolean array (G, n), got dtype {mask.dtype}"
        raise ParameterError(msg)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.ndim != 2 or mask.shape[1] != n:
        msg = f"groups must have shape (G, {n}) matching centers, got {tuple(mask.shape)}"
        raise ParameterError(msg)
    if bool((~mask.any(dim=1)).any()):
        msg = "every group must contain at least one centre"
        raise ParameterError(msg)
    return mask.to(device)


def _atoms(member: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Atoms (distinct memberships) of the centres: ids ``(n,)``, count, and ``(G, A)`` bool
    telling which atoms make up each group."""
    n = member.shape[1]
    if member.shape[0] == 0:
        return (torch.zeros(n, dtype=torch.int64, device=member.device), 1,
                torch.zeros(0, 1, dtype=torch.bool, device=member.device))
    groups = member.shape[0]
    if groups > 62:
        signatures, atoms = torch.unique(member.T, dim=0, return_inverse=True)
        return atoms, signatures.shape[0], signatures.T.contiguous()
    # each centre's memberships as the bits of one integer: a 1-D unique, ~100x faster than
    # torch.unique(dim=0) on the rows of a (n, G) boolean matrix
    bits = torch.arange(groups, device=member.device, dtype=torch.int64)
    codes = (member.to(torch.int64) << bits[:, None]).sum(dim=0)
    unique, atoms = torch.unique(codes, return_inverse=True)  # sorted, as torch.unique(dim=0)
    signatures = ((unique[None, :] >> bits[:, None]) & 1).bool()
    return atoms, unique.shape[0], signatures.contiguous()


def _checked_points(points: Any, mu: torch.Tensor) -> MixturePoints:
    if not isinstance(points, MixturePoints):
        msg = f"points must be MixturePoints from draw_points, got {type(points).__name__}"
        raise ParameterError(msg)
    b, n, d = mu.shape
    if points.centre.shape[0] != b or points.dim != d:
        msg = (
            f"points are for {points.centre.shape[0]} mixture(s) in {points.dim} dimensions, "
            f"the centers are {b} in {d}"
        )
        raise ParameterError(msg)
    if bool((points.centre >= n).any()) or bool((points.centre < 0).any()):
        msg = f"points refer to centres outside 0..{n - 1}"
        raise ParameterError(msg)
    return points


def _noise_tensor(
    noise: npt.ArrayLike | torch.Tensor | None,
    mu: torch.Tensor,
    batched: bool,
    n_mc: int | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Validate explicit draws; return them as ``(b, n, n_mc, d)`` float64, or ``None``."""
    if noise is None:
        return None
    draws = as_float64(noise, "noise", device)
    b, n, d = mu.shape
    if not batched and draws.ndim == 3:
        draws = draws[None]
    if draws.ndim != 4 or draws.shape[0] != b or draws.shape[1] != n or draws.shape[3] != d:
        expected = "(b, n, n_mc, d)" if batched else "(n, n_mc, d)"
        msg = f"noise must have shape {expected} matching centers, got {tuple(np.shape(noise))}"
        raise ParameterError(msg)
    if n_mc is not None and n_mc != draws.shape[2]:
        msg = f"n_mc={n_mc} disagrees with noise, which has {draws.shape[2]} draws per centre"
        raise ParameterError(msg)
    return draws
