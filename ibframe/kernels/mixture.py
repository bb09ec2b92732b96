r"""Differential entropy of Gaussian mixtures with a shared isotropic covariance.

The sample-propagation estimator of Goldfeld et al. (ICML 2019) reduces every entropy it needs
to that of a mixture

.. math::  g(t) = \frac1n \sum_{i=1}^n \varphi_\beta(t - \mu_i),
           \qquad \varphi_\beta = \mathcal N(0, \beta^2 I_d),

with known centres :math:`\mu_i \in \mathbb R^d`. :func:`gaussian_mixture_entropy` evaluates
:math:`h(g)` in nats in one of three ways:

``"mc"``
    the paper's Monte Carlo integration (App. C.5). With :math:`V = C + Z`, :math:`C` uniform on
    the centres and :math:`Z \sim \varphi_\beta`,
    :math:`h(g) = -\frac1n\sum_i \mathbb E \log g(\mu_i + Z)`. Every centre gets ``n_mc`` draws
    (stratified sampling), so the estimate is unbiased, with MSE at most
    :math:`2d(2+\beta^2)/(\beta^2 n\, n_{MC})` for centres in :math:`[-1, 1]^d` (Theorem 6; see
    :mod:`ibframe.theory`).
``"kl-upper"`` and ``"bhattacharyya-lower"``
    the pairwise-distance bounds of Kolchinsky & Tracey (2017),
    :math:`\hat H_D = h(\varphi_\beta) - \frac1n \sum_i \ln \frac1n \sum_j e^{-D(p_i \| p_j)}`.
    For equal isotropic components, :math:`D_{KL} = \|\mu_i - \mu_j\|^2 / (2\beta^2)` gives an
    upper bound on :math:`h(g)` and :math:`D_B = \|\mu_i - \mu_j\|^2 / (8\beta^2)` a lower
    bound. Both are deterministic.

How the kernel stays fast and exact
-----------------------------------
All three methods need :math:`\sum_j \exp(-s\|p - \mu_j\|^2)` at each evaluation point
:math:`p`. The kernel never forms the full :math:`n\,n_{MC} \times n` matrix. It works through
blocks of at most ``2**21`` exponents on the CPU (``2**25`` on CUDA), so its extra memory is
that block plus :math:`O(b\,n\,n_{MC}\,d)` for the points.

* *Analytic shift.* An MC point :math:`p = \mu_i + z` is at squared distance :math:`\|z\|^2`
  from its own centre, and that distance is known in advance. Exponents are therefore taken
  relative to it: :math:`e_{pj} = s(\|z\|^2 - \|p - \mu_j\|^2)`. The own term is :math:`e^0 = 1`,
  so a row sum cannot underflow, and no max-reduction pass is needed. Exponents are clamped at
  :data:`EXP_FLOOR` before ``exp``. Such terms are :math:`< 10^{-34}` of the own term, and
  CPU ``exp`` runs 30-90x slower on results that underflow. A row whose sum overflows (a point
  much closer to another centre than to its own, which needs a large ``d``) is recomputed in
  float64 with a max shift.
* *One GEMM per block.* :math:`e_{pj} = 2s\,p\cdot\mu_j - s\|\mu_j\|^2 + s(\|z\|^2 -
  \|p\|^2)` is one (batched) matrix product of the augmented operands
  :math:`[2sp,\ r_p,\ 1]` and :math:`[\mu_j,\ 1,\ -s\|\mu_j\|^2]`. A clamp, ``exp`` and row sum
  follow in place. Batches of mixtures use ``bmm`` over chunks of mixtures, with no Python
  loop over mixtures.
* *Exactness.* That expansion cancels terms of size :math:`sR^2`, where :math:`R` is the radius
  of the data. In float32 at :math:`\beta = 10^{-3}` on tanh-range data it loses ~0.1 nats.
  The centres are therefore first centred on each mixture's mean. The GEMM (and the forming of
  the points) runs in float32 only while its estimated rounding error,
  :math:`\sqrt{d+2}\, u_{32}\, s\,((2R_\mu + \max\|z\|)^2 + \max\|z\|^2)` with
  :math:`R_\mu` the largest centred norm, stays below :data:`FLOAT32_EXPONENT_TOL`. Otherwise
  the exponents are formed in float64 and only the ``exp`` runs in float32.
  :math:`\log\sum\exp` is 1-Lipschitz in the max-norm, so the entropy error is at most the
  exponent error. The shift :math:`\|z\|^2` is computed from the very :math:`z` that is added,
  in the same dtype, so it cancels from :math:`-\log g` without bias. Against a float64
  reference on the same points the float32 kernel is within 1e-6 nats, also on saturated tanh
  centres at :math:`\beta = 10^{-3}`, :math:`d = 128`. TF32 is switched off for the call on
  CUDA, where it costs 1-190 nats.

Skipping far components exactly (k-d ordered blocks with ball bounds) was measured and left
out: at d = 10 the bounds prune nothing, and at d <= 5 they saved under 25% while the
per-block work cost 30% elsewhere.

Defaults
--------
The plain MC error of one entropy is :math:`\sigma/\sqrt{n\, n_{MC}}` with :math:`\sigma^2` the
within-centre variance of :math:`-\log g(\mu_i + Z)`, about :math:`d/2` (the variance of
:math:`\|Z\|^2 / 2\beta^2`) for tanh layers at :math:`\beta = 0.1`. That term has a known mean,
so the estimator uses it as a control variate (see :func:`_mc_entropy`), which leaves only the
variance of the log-ratio to the other centres. On a synthetic SZT epoch (n = 4096 inputs,
widths 10-7-5-4-3, beta = 0.1) the standard error of h(T) measured 0.002-0.007 nats with
:data:`DEFAULT_N_MC` = 4 (0.004-0.024 with 1, 0.001-0.005 with 8, at twice the time). The
conditional entropies are averaged over all n inputs, so one draw per centre
(:data:`DEFAULT_N_MC_BATCH`) leaves about 0.001 nats. The combined standard error of I(X;T) is
then below 0.01 nats for every layer, half the 0.02 target; ``benchmarks/mixture_entropy.py``
measures it and the time of the epoch through the ``sp-mi`` estimator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from ibframe._validation import positive, positive_int
from ibframe.errors import ParameterError

__all__ = [
    "DEFAULT_N_MC",
    "DEFAULT_N_MC_BATCH",
    "EXP_FLOOR",
    "FLOAT32_EXPONENT_TOL",
    "METHODS",
    "Method",
    "gaussian_entropy",
    "gaussian_mixture_entropy",
    "mc_standard_error",
]

Method = Literal["mc", "kl-upper", "bhattacharyya-lower"]
METHODS: tuple[str, ...] = ("mc", "kl-upper", "bhattacharyya-lower")

DEFAULT_N_MC = 4
"""MC draws per centre for one mixture ``(n, d)``: h(T) of an SZT layer to < 0.01 nats."""

DEFAULT_N_MC_BATCH = 1
"""MC draws per centre for a batch ``(b, n, d)`` of conditional mixtures that get averaged."""

EXP_FLOOR = -80.0
"""Exponents are clamped here before ``exp``: below ~-87 float32 ``exp`` underflows (slowly)."""

FLOAT32_EXPONENT_TOL = 1e-3
"""Largest estimated rounding error (in the exponent) that a float32 GEMM may introduce."""

_U32 = 2.0**-24


@dataclass(frozen=True)
class _Plan:
    """Block sizes of one call. They depend on the device, never on the dtype."""

    block_elems: int
    max_cols: int

    @classmethod
    def for_device(cls, device: torch.device) -> _Plan:
        if device.type == "cpu":
            return cls(block_elems=2**21, max_cols=4096)
        return cls(block_elems=2**25, max_cols=2**16)

    def chunks(self, b: int, n: int, per_centre: int) -> Iterator[tuple[int, int, int, int]]:
        """``(first mixture, end, first centre, end)`` of chunks of about one block each.

        A chunk holds whole mixtures when one fits in a block; otherwise it holds a run of
        centres of one mixture, with all ``per_centre`` points of each centre.
        """
        cols = min(n, self.max_cols)
        if n * per_centre * cols <= self.block_elems:
            step = self.block_elems // (n * per_centre * cols)
            for start in range(0, b, step):
                yield start, min(b, start + step), 0, n
            return
        step = max(1, self.block_elems // (per_centre * cols))
        for k in range(b):
            for start in range(0, n, step):
                yield k, k + 1, start, min(n, start + step)


# --------------------------------------------------------------------------------------------
# public API


def gaussian_entropy(d: int, beta: float) -> float:
    r"""Entropy :math:`\frac d2 \ln(2\pi e \beta^2)` of :math:`\mathcal N(0, \beta^2 I_d)`, in nats.

    It is the entropy of a one-centre mixture, and :math:`h(T_1 | X)` of a first noisy layer.
    """
    d = positive_int(d, "d")
    return 0.5 * d * math.log(2.0 * math.pi * math.e * positive(beta, "beta") ** 2)


def gaussian_mixture_entropy(
    centers: npt.ArrayLike | torch.Tensor,
    beta: float,
    *,
    n_mc: int | None = None,
    method: Method = "mc",
    seed: int | None = None,
    noise: npt.ArrayLike | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | type | None = None,
    return_stderr: bool = False,
    return_terms: bool = False,
) -> float | npt.NDArray[np.float64] | tuple[Any, ...]:
    r"""Differential entropy (nats) of :math:`g = \frac1n \sum_i \mathcal N(\mu_i, \beta^2 I_d)`.

    Parameters
    ----------
    centers
        The centres: ``(n, d)`` for one mixture, or ``(b, n, d)`` for ``b`` mixtures of ``n``
        centres each (e.g. the conditional mixtures :math:`\hat p_{S|X=x} * \varphi_\beta`).
        A NumPy array, array-like or torch tensor.
    beta
        Noise standard deviation :math:`\beta > 0`.
    n_mc
        MC draws per centre. ``None`` means :data:`DEFAULT_N_MC` for one mixture and
        :data:`DEFAULT_N_MC_BATCH` for a batch. Inferred from ``noise`` when given. The bounds
        ignore it, and ``seed`` and ``noise`` too.
    method
        ``"mc"`` (unbiased Monte Carlo integration), or ``"kl-upper"`` or
        ``"bhattacharyya-lower"`` (the deterministic pairwise bounds, also :math:`O(n^2 d)`).
    seed
        Seed of the MC draws. The same seed on the same device gives the same draws whatever
        ``dtype`` is. ``None`` draws fresh entropy.
    noise
        Explicit standard normal draws, ``(n, n_mc, d)`` or ``(b, n, n_mc, d)``. Point
        ``(i, k)`` is :math:`\mu_i + \beta\,\text{noise}_{ik}`. It overrides ``seed``, so a
        reference implementation can be compared on the same MC points.
    device
        Where to compute. ``None`` means the device of a tensor input, else the CPU.
    dtype
        ``float32`` (the default: exponents are formed in float64 wherever float32 would lose
        accuracy, see the module notes) or ``float64`` (everything in float64, ~2x slower).
    return_stderr
        Also return the MC standard error (0 for the bounds).
    return_terms
        Also return the per-point terms whose mean is the estimate, ``(n, n_mc)`` or
        ``(b, n, n_mc)`` (``method="mc"`` only), e.g. to pair two estimates made on shared
        ``noise`` and take the standard error of their difference with
        :func:`mc_standard_error`.

    Returns
    -------
    float or numpy.ndarray or tuple
        The entropy as a float, or as a length-``b`` float64 array for a batch. With
        ``return_stderr``, the pair ``(entropy, stderr)`` of matching types.

    Notes
    -----
    The MC estimate is :math:`\hat h = \frac{1}{n\,n_{MC}}\sum_{i,k} \ell_{ik}`, where
    :math:`\ell_{ik} = -\log g(\mu_i + \beta Z_{ik})`. The centres are enumerated, not drawn,
    so the honest standard error is the stratified one,
    :math:`\sqrt{\sum_i \hat\sigma_i^2 / n_{MC}} / n`, with :math:`\hat\sigma_i^2` the unbiased
    variance of the :math:`n_{MC}` values of centre :math:`i`. With ``n_mc=1`` that is
    undefined, and the i.i.d. formula :math:`\operatorname{sd}(\ell)/\sqrt n` is reported
    instead. Because it also counts the spread between centres, it can only overstate the
    error. It is NaN for one centre with one draw.

    Raises
    ------
    ParameterError
        For NaN/inf or empty centres, a wrong number of dimensions, ``beta <= 0``,
        ``n_mc < 1``, an unknown ``method``, ``dtype`` or ``device``, or ``noise`` of the wrong
        shape.
    """
    if method not in METHODS:
        msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
        raise ParameterError(msg)
    beta = positive(beta, "beta")
    if n_mc is not None:
        n_mc = positive_int(n_mc, "n_mc")
    exp_dtype = _resolve_dtype(dtype)
    target = _resolve_device(centers, device)
    mu = _as_float64(centers, "centers", target)
    if mu.ndim not in (2, 3):
        msg = f"centers must have shape (n, d) or (b, n, d), got {tuple(mu.shape)}"
        raise ParameterError(msg)
    batched = mu.ndim == 3
    if not batched:
        mu = mu[None]
    plan = _Plan.for_device(target)
    with _exact_float32_matmul(target):
        if method == "mc":
            draws = _noise_tensor(noise, mu, batched, n_mc, target)
            if draws is not None:
                n_mc = draws.shape[2]
            elif n_mc is None:
                n_mc = DEFAULT_N_MC_BATCH if batched else DEFAULT_N_MC
            source = _NoiseSource(draws, seed, target, n_mc, mu.shape[2])
            entropy, stderr, terms = _mc_entropy(mu, beta, n_mc, source, exp_dtype, plan)
        else:
            if return_terms:
                msg = f"return_terms needs method='mc', not {method!r}"
                raise ParameterError(msg)
            entropy = _bound_entropy(mu, beta, method, exp_dtype, plan)
            stderr = torch.zeros_like(entropy)
            terms = None
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


def mc_standard_error(terms: npt.ArrayLike | torch.Tensor) -> float:
    r"""Standard error of the mean of MC terms ``(n, n_mc)``: one row of draws per centre.

    The centres are enumerated, not drawn, so with ``n_mc >= 2`` it is the stratified
    :math:`\sqrt{\sum_i \hat\sigma_i^2 / n_{MC}} / n`; with one draw per centre, the i.i.d.
    :math:`\operatorname{sd}/\sqrt n`, which can only overstate the error. NaN for one term.
    """
    values = torch.as_tensor(terms, dtype=torch.float64)
    return float(_stratified_stderr(values[None])[0])


def _stratified_stderr(ell: torch.Tensor) -> torch.Tensor:
    """Per-mixture standard error of the mean of ``ell`` ``(b, n, n_mc)`` (see above)."""
    _, n, n_mc = ell.shape
    if n_mc >= 2:
        return (ell.var(dim=2).sum(dim=1) / n_mc).sqrt() / n
    if n >= 2:
        return ell[:, :, 0].std(dim=1) / math.sqrt(n)
    return torch.full(ell.shape[:1], math.nan, dtype=ell.dtype, device=ell.device)


# --------------------------------------------------------------------------------------------
# the estimators


def _mc_entropy(
    mu: torch.Tensor,
    beta: float,
    n_mc: int,
    source: _NoiseSource,
    exp_dtype: torch.dtype,
    plan: _Plan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""MC entropy, its standard error and the per-point terms of each mixture ``(b, n, d)``.

    :math:`\ell = -\log g(p) = \ln n + \frac d2 \ln(2\pi\beta^2) + q
    - \ln\sum_j e^{e_{pj}}` with :math:`q = s\|z\|^2`, :math:`s = 1/(2\beta^2)`.

    :math:`q` is half a :math:`\chi^2_d` variable with known mean :math:`d/2`, and it carries most
    of the variance of :math:`\ell` when the centres are far apart relative to beta (all of it
    in the limit: variance d/2 per point against none). It serves as a control variate: the
    estimate averages :math:`\ell - c\,(q - d/2)`, with :math:`c` the least-squares coefficient
    of :math:`\ell` on :math:`q` pooled over the batch. Any fixed :math:`c` leaves the estimate
    unbiased; the fitted one minimises its variance (never above the plain average's, up to
    O(1/N) terms) and adds a bias of order 1/N, N the number of points, far below the error.
    """
    b, n, d = mu.shape
    scale = 0.5 / beta**2
    const = math.log(n) + 0.5 * d * math.log(2.0 * math.pi * beta**2)
    kernel = _Kernel(scale, exp_dtype, plan)
    ell = torch.empty(b, n, n_mc, dtype=torch.float64, device=mu.device)
    quad = torch.empty_like(ell)
    for index, (m0, m1, c0, c1) in enumerate(plan.chunks(b, n, n_mc)):
        kernel.use_centers(mu, m0, m1)
        lse, own_sq = kernel.log_sums(c0, c1, source.draws(index, m0, m1, c0, c1), beta)
        quad[m0:m1, c0:c1] = scale * own_sq
        ell[m0:m1, c0:c1] = const + quad[m0:m1, c0:c1] - lse
    ell = ell - _control_coefficient(ell, quad) * (quad - 0.5 * d)
    return ell.mean(dim=(1, 2)), _stratified_stderr(ell), ell


def _control_coefficient(ell: torch.Tensor, quad: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of ``ell`` on ``quad`` within mixtures, pooled over the batch.

    With fewer than 16 points in all there is too little to fit, and the plain average is used.
    """
    if ell.numel() < 16:
        return torch.zeros((), dtype=ell.dtype, device=ell.device)
    q = quad - quad.mean(dim=(1, 2), keepdim=True)
    e = ell - ell.mean(dim=(1, 2), keepdim=True)
    denominator = (q * q).sum()
    if denominator <= 0:
        return torch.zeros((), dtype=ell.dtype, device=ell.device)
    return (q * e).sum() / denominator


def _bound_entropy(
    mu: torch.Tensor, beta: float, method: str, exp_dtype: torch.dtype, plan: _Plan
) -> torch.Tensor:
    """Kolchinsky-Tracey pairwise bound for each mixture of ``mu`` ``(b, n, d)``."""
    b, n, d = mu.shape
    scale = 0.5 / beta**2 if method == "kl-upper" else 0.125 / beta**2
    kernel = _Kernel(scale, exp_dtype, plan)
    lse = torch.empty(b, n, dtype=torch.float64, device=mu.device)
    for m0, m1, c0, c1 in plan.chunks(b, n, 1):
        kernel.use_centers(mu, m0, m1)
        lse[m0:m1, c0:c1] = kernel.log_sums(c0, c1, None, beta)[0][..., 0]
    return gaussian_entropy(d, beta) + math.log(n) - lse.mean(dim=1)


# --------------------------------------------------------------------------------------------
# the kernel


class _Kernel:
    r"""Blocked :math:`\log\sum_j \exp(s(o_p - \|p - \mu_j\|^2))` at points ``p``.

    :meth:`use_centers` centres a run of mixtures on their means and builds their operand
    :math:`[\mu_j,\ 1,\ -s\|\mu_j\|^2]` once for every chunk of their points; the block
    buffers are reused across chunks (fresh multi-MiB buffers would page-fault on every block).
    """

    def __init__(self, scale: float, exp_dtype: torch.dtype, plan: _Plan) -> None:
        self._scale = scale
        self._exp_dtype = exp_dtype
        self._plan = plan
        self._mixtures: tuple[int, int] | None = None
        self._centers: dict[torch.dtype, torch.Tensor] = {}
        self._operands: dict[torch.dtype, torch.Tensor] = {}
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._radius = 0.0

    def use_centers(self, mu: torch.Tensor, m0: int, m1: int) -> None:
        """Select mixtures ``m0:m1`` of the float64 ``mu`` for the next :meth:`log_sums`."""
        if self._mixtures == (m0, m1):
            return
        centers = mu[m0:m1] - mu[m0:m1].mean(dim=1, keepdim=True)
        c_sq = (centers * centers).sum(-1)
        ones = torch.ones_like(c_sq)[..., None]
        c_aug = torch.cat([centers, ones, (-self._scale * c_sq)[..., None]], dim=-1)
        self._centers = {torch.float64: centers}
        self._operands = {torch.float64: c_aug.transpose(1, 2).contiguous()}
        self._radius = math.sqrt(float(c_sq.max()))
        self._mixtures = (m0, m1)

    def log_sums(
        self, c0: int, c1: int, draws: torch.Tensor | None, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Log row sums at the points :math:`\mu_i + \beta w_{ik}` of centres ``c0:c1``.

        ``draws`` are the standard normal :math:`w`, ``(B, c1 - c0, k, d)``; ``None`` means
        the centres themselves (``k = 1``, zero shift). Returns the log sums and the shifts
        :math:`o = \beta^2\|w\|^2`, both ``(B, c1 - c0, k)`` float64.
        """
        scale, plan = self._scale, self._plan
        d = self._centers[torch.float64].shape[2]
        reach = (self._radius * 2.0) ** 2
        if draws is not None:
            z_max = beta * float(torch.linalg.vector_norm(draws, dim=-1).max())
            reach = (2.0 * self._radius + z_max) ** 2 + z_max**2
        gemm_dtype = self._exp_dtype
        if math.sqrt(d + 2) * _U32 * scale * reach > FLOAT32_EXPONENT_TOL:
            gemm_dtype = torch.float64
        p_aug, own = self._point_operand(c0, c1, draws, beta, gemm_dtype)
        n_mix, rows, _ = p_aug.shape
        c_gemm = self._cast(self._operands, gemm_dtype)
        m = c_gemm.shape[2]
        cols = min(m, plan.max_cols)
        row_step = min(rows, max(1, plan.block_elems // (n_mix * cols)))
        gemm_buf = self._buffer(gemm_dtype, n_mix * row_step * cols)
        exp_buf = self._buffer(self._exp_dtype, n_mix * row_step * cols)
        sums = torch.zeros(n_mix, rows, dtype=torch.float64, device=p_aug.device)
        for r0 in range(0, rows, row_step):
            r1 = min(rows, r0 + row_step)
            for j0 in range(0, m, cols):
                j1 = min(m, j0 + cols)
                shape = (n_mix, r1 - r0, j1 - j0)
                count = math.prod(shape)
                block = torch.bmm(
                    p_aug[:, r0:r1], c_gemm[:, :, j0:j1], out=gemm_buf[:count].view(shape)
                )
                if gemm_dtype != self._exp_dtype:
                    block = exp_buf[:count].view(shape).copy_(block)
                block.clamp_(min=EXP_FLOOR).exp_()
                sums[:, r0:r1] += block.sum(-1)
        logs = sums.log_()
        overflow = ~torch.isfinite(logs)
        if bool(overflow.any()):
            exact, _ = self._point_operand(c0, c1, draws, beta, torch.float64)
            self._recompute(logs, overflow, exact)
        # the shift the exponents used, so that it cancels exactly in -log g
        return logs.view(own.shape), own.to(torch.float64)

    def _point_operand(
        self,
        c0: int,
        c1: int,
        draws: torch.Tensor | None,
        beta: float,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`[2sp,\ s(o_p - \|p\|^2),\ 1]` as ``(B, rows, d + 2)``, and :math:`o_p`.

        Both in ``dtype``; :math:`o_p = \|\beta w\|^2` comes shaped ``(B, c1 - c0, k)``.
        """
        scale = self._scale
        mu = self._cast(self._centers, dtype)[:, c0:c1, None, :]
        n_mix, k, _, d = mu.shape
        per_centre = 1 if draws is None else draws.shape[2]
        p_aug = torch.empty(n_mix, k, per_centre, d + 2, dtype=dtype, device=mu.device)
        points = p_aug[..., :d]
        if draws is None:
            points.copy_(mu)
            own = torch.zeros(p_aug.shape[:-1], dtype=dtype, device=mu.device)
        else:
            # the shift is the squared norm of the very z that is added, in the same dtype, so
            # that it cancels in -log g without a bias from rounding beta
            torch.mul(draws, beta, out=points)
            own = (points * points).sum(-1)
            points.add_(mu)
        p_sq = (points * points).sum(-1)
        p_aug[..., d] = scale * (own - p_sq)
        p_aug[..., d + 1] = 1.0
        points.mul_(2.0 * scale)
        return p_aug.view(n_mix, k * per_centre, d + 2), own

    def _cast(self, cache: dict[torch.dtype, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if dtype not in cache:
            cache[dtype] = cache[torch.float64].to(dtype)
        return cache[dtype]

    def _buffer(self, dtype: torch.dtype, count: int) -> torch.Tensor:
        buf = self._buffers.get(dtype)
        if buf is None or buf.numel() < count:
            device = self._operands[torch.float64].device
            buf = self._buffers[dtype] = torch.empty(count, dtype=dtype, device=device)
        return buf

    def _recompute(self, logs: torch.Tensor, overflow: torch.Tensor, p_aug: torch.Tensor) -> None:
        """Redo, in place, the rows whose float32 sum overflowed: float64 with a max shift."""
        c_aug = self._operands[torch.float64]
        row_step = max(1, self._plan.block_elems // c_aug.shape[2])
        mix_idx, row_idx = torch.nonzero(overflow, as_tuple=True)
        for k in torch.unique(mix_idx).tolist():
            rows = row_idx[mix_idx == k]
            for r0 in range(0, rows.numel(), row_step):
                sel = rows[r0 : r0 + row_step]
                logs[k, sel] = torch.logsumexp(p_aug[k, sel] @ c_aug[k], dim=-1)


# --------------------------------------------------------------------------------------------
# noise


class _NoiseSource:
    r"""Standard normal MC draws per chunk of :meth:`_Plan.chunks`, given or generated.

    Chunk ``c`` is drawn by a generator seeded with the ``c``-th child of
    ``SeedSequence(seed)``. Generated draws are float32 normals (4x faster than float64 on the
    CPU; :math:`\mu_i + \beta w` is then formed in the GEMM's dtype). They depend on the seed,
    the device and the chunking (a function of the shapes and the device), never on ``dtype``.
    """

    def __init__(
        self, noise: torch.Tensor | None, seed: Any, device: torch.device, n_mc: int, d: int
    ) -> None:
        self._noise = noise
        self._device = device
        self._shape = (n_mc, d)
        if noise is None:
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
                msg = f"seed must be an int or None, got {seed!r}"
                raise ParameterError(msg)
            if seed is not None and seed < 0:
                msg = f"seed must be non-negative, got {seed}"
                raise ParameterError(msg)
            self._root = np.random.SeedSequence(None if seed is None else int(seed))
            self._generator = torch.Generator(device=device)

    def draws(self, index: int, m0: int, m1: int, c0: int, c1: int) -> torch.Tensor:
        """Draws ``(m1 - m0, c1 - c0, n_mc, d)`` for centres ``c0:c1`` of mixtures ``m0:m1``."""
        if self._noise is not None:
            return self._noise[m0:m1, c0:c1]
        root = self._root
        child = np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, index))
        self._generator.manual_seed(int(child.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        shape = (m1 - m0, c1 - c0, *self._shape)
        return torch.randn(shape, generator=self._generator, device=self._device)


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
    draws = _as_float64(noise, "noise", device)
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


# --------------------------------------------------------------------------------------------
# validation and device handling


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype in (torch.float32, torch.float64):
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = ""
    if name in ("float32", "float64"):
        return getattr(torch, name)
    msg = f"dtype must be float32 or float64, got {dtype!r}"
    raise ParameterError(msg)


def _resolve_device(centers: Any, device: str | torch.device | None) -> torch.device:
    if device is None:
        return centers.device if isinstance(centers, torch.Tensor) else torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = f"invalid device {device!r}: {exc}"
        raise ParameterError(msg) from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {device!r} requested but CUDA is not available"
        raise ParameterError(msg)
    return target


def _as_float64(values: Any, name: str, device: torch.device) -> torch.Tensor:
    """``values`` as a finite float64 tensor on ``device``; rejects non-real and empty input."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        if tensor.is_complex() or tensor.dtype == torch.bool:
            msg = f"{name} must be real numbers, got dtype {tensor.dtype}"
            raise ParameterError(msg)
    else:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as exc:
            msg = f"{name} must be a numeric array: {exc}"
            raise ParameterError(msg) from exc
        if array.dtype.kind not in "iuf":
            msg = f"{name} must be real numbers, got dtype {array.dtype}"
            raise ParameterError(msg)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    if tensor.numel() == 0 or tensor.ndim == 0:
        msg = f"{name} must be a non-empty array, got shape {tuple(tensor.shape)}"
        raise ParameterError(msg)
    tensor = tensor.to(device=device, dtype=torch.float64)
    # a finite sum proves every element finite; only a non-finite one needs the full check
    if not math.isfinite(float(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        msg = f"{name} must be finite but contain NaN or inf"
        raise ParameterError(msg)
    return tensor


@contextmanager
def _exact_float32_matmul(device: torch.device) -> Iterator[None]:
    """Switch TF32 off for CUDA matmuls (it costs 1-190 nats here), restoring the setting."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = saved
