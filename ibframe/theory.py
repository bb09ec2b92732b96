r"""Theory diagnostics for the sample-propagation (SP) estimator (Goldfeld et al., ICML 2019).

Two results of the paper's Appendix C say how far to trust one SP entropy estimate
:math:`h(\hat p_{S^n} * \varphi_\beta)` from :math:`n` samples in :math:`d` dimensions.

*Theorem 6* bounds the mean squared error of the Monte Carlo integration that evaluates the
Gaussian-mixture entropy with :math:`n_{MC}` draws per centre; it is computational error and
shrinks as :math:`1/(n\, n_{MC})`.

*Theorem 5* bounds the bias of the estimator itself from below, over all distributions of
:math:`S` on :math:`[-1, 1]^d`: for :math:`\epsilon \in (1 - (1 - 2Q(\frac{1}{2\beta}))^d, 1)`
and :math:`k_\star = \lfloor 1 / (\beta\, Q^{-1}(\frac12 (1 - (1-\epsilon)^{1/d}))) \rfloor`,

.. math::  \sup_P \big| h(P * \varphi_\beta) - \mathbb E\, h(\hat P_{S^n} * \varphi_\beta) \big|
           \ge \ln \frac{k_\star^{d(1-\epsilon)}}{n} - H_b(\epsilon),

so no amount of MC effort removes the bias while :math:`n` is below about
:math:`k_\star^{d(1-\epsilon)}`. It is a worst-case statement: a particular network may be
estimated well with fewer samples, but nothing in the data can show it, since the bias cannot
be measured empirically. :func:`sample_size_warning` turns it into a
:class:`~ibframe.errors.SampleSizeWarning`.

Logarithms are natural, entropies in nats; :math:`Q` is the standard Gaussian tail function.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from scipy.stats import norm

from ibframe._validation import positive, positive_int, real
from ibframe.errors import ParameterError, SampleSizeWarning

__all__ = [
    "DEFAULT_EPSILON",
    "SPDiagnostics",
    "bias_lower_bound",
    "binary_entropy",
    "epsilon_lower_limit",
    "k_star",
    "log_required_samples",
    "mc_mse_bound",
    "mc_mse_bound_bounded",
    "mc_mse_bound_second_moment",
    "required_samples",
    "sample_size_warning",
    "sp_diagnostics",
]

DEFAULT_EPSILON = 0.01
"""The paper's example choice of :math:`\\epsilon`; :math:`H_b(0.01) \\approx 0.056` nats."""


@dataclass(frozen=True)
class SPDiagnostics:
    """What Theorems 5 and 6 say about one SP entropy estimate.

    Attributes
    ----------
    n, n_mc, d, beta
        The sample size, MC draws per sample, dimension and noise level they were computed for.
    epsilon
        The :math:`\\epsilon` of Theorem 5.
    mc_mse_bound
        Theorem 6 bound on the MSE (nats²) of the MC integration.
    k_star
        :math:`k_\\star` of Theorem 5, or ``None`` if ``epsilon`` is outside the theorem's range
        (then the three fields below are NaN: the theorem says nothing).
    bias_lower_bound
        Theorem 5 lower bound (nats) on the worst-case bias; positive means ``n`` is too small.
    required_samples
        :math:`k_\\star^{d(1-\\epsilon)}`, the sample size below which the bias is not negligible;
        ``inf`` when it exceeds the float range.
    log_required_samples
        Its natural logarithm, finite where ``required_samples`` overflows.
    """

    n: int
    n_mc: int
    d: int
    beta: float
    epsilon: float
    mc_mse_bound: float
    k_star: int | None
    bias_lower_bound: float
    required_samples: float
    log_required_samples: float

    @property
    def mc_rmse_bound(self) -> float:
        """Square root of :attr:`mc_mse_bound`: a bound on the MC error in nats."""
        return math.sqrt(self.mc_mse_bound)

    @property
    def undersampled(self) -> bool:
        """Whether Theorem 5 proves a positive worst-case bias at this ``n``."""
        return self.bias_lower_bound > 0.0


def binary_entropy(p: float) -> float:
    """Binary entropy :math:`H_b(p) = -p\\ln p - (1-p)\\ln(1-p)` in nats, for ``0 <= p <= 1``."""
    p = real(p, "p")
    if not 0.0 <= p <= 1.0:
        msg = f"p must lie in [0, 1], got {p}"
        raise ParameterError(msg)
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0.0)


def epsilon_lower_limit(d: int, beta: float) -> float:
    r"""Smallest admissible :math:`\epsilon` of Theorem 5: :math:`1 - (1 - 2Q(1/(2\beta)))^d`.

    Computed as ``-expm1(d * log1p(-2 Q))``, accurate when :math:`Q(1/2\beta)` is tiny. The
    paper notes it is at most 0.0057 at :math:`\beta = 0.1` for :math:`d \le 10^4` (to two
    digits; the exact value at :math:`d = 10^4` is 0.005717).
    """
    d = positive_int(d, "d")
    beta = positive(beta, "beta")
    return -math.expm1(d * math.log1p(-2.0 * float(norm.sf(0.5 / beta))))


def k_star(d: int, beta: float, epsilon: float = DEFAULT_EPSILON) -> int:
    r""":math:`k_\star = \lfloor 1 / (\beta\, Q^{-1}(\frac12(1 - (1-\epsilon)^{1/d})))\rfloor`.

    The number of grid points per axis of the hard distribution in the proof of Theorem 5;
    the choice of :math:`\epsilon` guarantees :math:`k_\star \ge 2`. At :math:`\beta = 0.1`,
    :math:`\epsilon = 0.01` it is 3 for :math:`d \le 11` and 2 for :math:`12 \le d \le 10^4`.

    Raises
    ------
    ParameterError
        If ``epsilon`` is outside :math:`(\text{epsilon\_lower\_limit}(d, \beta), 1)`.
    """
    d = positive_int(d, "d")
    beta = positive(beta, "beta")
    epsilon = _check_epsilon(epsilon, d, beta)
    tail = -0.5 * math.expm1(math.log1p(-epsilon) / d)  # (1 - (1 - eps)^(1/d)) / 2
    return math.floor(1.0 / (beta * float(norm.isf(tail))))


def log_required_samples(d: int, beta: float, epsilon: float = DEFAULT_EPSILON) -> float:
    r""":math:`\ln k_\star^{d(1-\epsilon)} = d(1-\epsilon)\ln k_\star`; finite for any ``d``."""
    return d * (1.0 - epsilon) * math.log(k_star(d, beta, epsilon))


def required_samples(d: int, beta: float, epsilon: float = DEFAULT_EPSILON) -> float:
    r"""Samples :math:`k_\star^{d(1-\epsilon)}` below which Theorem 5 forbids negligible bias.

    Returned as a float, ``inf`` when it overflows (e.g. :math:`2^{0.99 \cdot 1000}` at
    ``d = 1000``); :func:`log_required_samples` gives its logarithm.
    """
    log_n = log_required_samples(d, beta, epsilon)
    return math.exp(log_n) if log_n < math.log(1.7e308) else math.inf


def bias_lower_bound(n: int, d: int, beta: float, epsilon: float = DEFAULT_EPSILON) -> float:
    r"""Theorem 5: :math:`\ln(k_\star^{d(1-\epsilon)} / n) - H_b(\epsilon)` nats.

    A lower bound on the worst-case bias (over distributions on :math:`[-1, 1]^d`) of the SP
    entropy estimate from ``n`` samples. Positive means the estimate may be biased by at least
    that much whatever the MC effort; negative values are vacuous.
    """
    n = positive_int(n, "n")
    return log_required_samples(d, beta, epsilon) - math.log(n) - binary_entropy(epsilon)


def mc_mse_bound_bounded(n: int, n_mc: int, d: int, beta: float) -> float:
    r"""Theorem 6 (14): MSE of the MC entropy :math:`\le 2d(2+\beta^2) / (\beta^2\, n\, n_{MC})`.

    Holds when every centre lies in :math:`[-1, 1]^d` (tanh and other bounded activations).
    The proof bounds the variance of :math:`\log g(\mu_i + Z)` with the Gaussian Poincaré
    inequality and :math:`\|\nabla \log g(v)\| \le (\|v\| + \sqrt d)/\beta^2`.
    """
    n, n_mc, d = positive_int(n, "n"), positive_int(n_mc, "n_mc"), positive_int(d, "d")
    beta = positive(beta, "beta")
    return 2.0 * d * (2.0 + beta**2) / (beta**2 * n * n_mc)


def mc_mse_bound_second_moment(
    n: int, n_mc: int, d: int, beta: float, second_moment: float
) -> float:
    r"""Theorem 6 (15): the MC MSE bound for unbounded centres (e.g. ReLU).

    .. math::  \frac{9 d \beta^2 + 8(2 + \beta\sqrt d) M_C + 3(11\beta\sqrt d + 1)\sqrt{M_C}}
                    {\beta^2}\cdot\frac{1}{n\, n_{MC}},

    with :math:`M_C = \mathbb E\|C\|_2^2 = \frac1n \sum_i \|\mu_i\|^2`, the mean squared norm of
    the centres.
    """
    n, n_mc, d = positive_int(n, "n"), positive_int(n_mc, "n_mc"), positive_int(d, "d")
    beta = positive(beta, "beta")
    m_c = real(second_moment, "second_moment")
    if not (math.isfinite(m_c) and m_c >= 0.0):
        msg = f"second_moment must be finite and >= 0, got {m_c}"
        raise ParameterError(msg)
    root_d = math.sqrt(d)
    numerator = (
        9.0 * d * beta**2
        + 8.0 * (2.0 + beta * root_d) * m_c
        + 3.0 * (11.0 * beta * root_d + 1.0) * math.sqrt(m_c)
    )
    return numerator / (beta**2 * n * n_mc)


def mc_mse_bound(
    n: int, n_mc: int, d: int, beta: float, second_moment: float | None = None
) -> float:
    """Theorem 6: the bounded-support bound (14), or bound (15) when ``second_moment`` is given."""
    if second_moment is None:
        return mc_mse_bound_bounded(n, n_mc, d, beta)
    return mc_mse_bound_second_moment(n, n_mc, d, beta, second_moment)


def sp_diagnostics(
    n: int,
    n_mc: int,
    d: int,
    beta: float,
    epsilon: float = DEFAULT_EPSILON,
    *,
    second_moment: float | None = None,
) -> SPDiagnostics:
    """Theorem 5 and 6 figures for one SP entropy estimate, for estimators to attach to results.

    Parameters
    ----------
    n, n_mc, d, beta
        Samples (mixture centres), MC draws per centre, dimension, noise standard deviation.
    epsilon
        Theorem 5's :math:`\\epsilon`. Outside its admissible range (large ``beta`` or ``d``)
        the Theorem 5 fields are ``None``/NaN rather than an error.
    second_moment
        Mean squared norm of the centres for unbounded activations; ``None`` assumes the
        centres lie in :math:`[-1, 1]^d`.
    """
    n, n_mc, d = positive_int(n, "n"), positive_int(n_mc, "n_mc"), positive_int(d, "d")
    beta = positive(beta, "beta")
    epsilon = real(epsilon, "epsilon")
    mse = mc_mse_bound(n, n_mc, d, beta, second_moment)
    if epsilon_lower_limit(d, beta) < epsilon < 1.0:
        k = k_star(d, beta, epsilon)
        log_req = log_required_samples(d, beta, epsilon)
        bias = bias_lower_bound(n, d, beta, epsilon)
        req = required_samples(d, beta, epsilon)
        return SPDiagnostics(n, n_mc, d, beta, epsilon, mse, k, bias, req, log_req)
    nan = math.nan
    return SPDiagnostics(n, n_mc, d, beta, epsilon, mse, None, nan, nan, nan)


def sample_size_warning(
    n: int,
    d: int,
    beta: float,
    epsilon: float = DEFAULT_EPSILON,
    *,
    emit: bool = True,
    stacklevel: int = 2,
) -> str | None:
    """Warn when Theorem 5 proves a positive worst-case bias for ``n`` samples.

    Returns the message (and, with ``emit``, issues it as a
    :class:`~ibframe.errors.SampleSizeWarning`) when the bias lower bound is positive, i.e.
    ``n`` is below :math:`k_\\star^{d(1-\\epsilon)} e^{-H_b(\\epsilon)}`; ``None`` otherwise,
    including when ``epsilon`` is outside the theorem's range.
    """
    diag = sp_diagnostics(n, 1, d, beta, epsilon)
    if not diag.undersampled:
        return None
    msg = (
        f"n={n} samples in d={d} dimensions at beta={beta:g} are far below the "
        f"k*^(d(1-eps)) = {_format_big(diag.log_required_samples)} that Theorem 5 of Goldfeld "
        f"et al. (2019) asks for (k*={diag.k_star}, eps={epsilon:g}): the SP estimate can be "
        f"biased by at least {diag.bias_lower_bound:.3g} nats for some input distributions"
    )
    if emit:
        warnings.warn(msg, SampleSizeWarning, stacklevel=stacklevel)
    return msg


def _format_big(log_value: float) -> str:
    if log_value < math.log(1e15):
        return f"{math.exp(log_value):.3g}"
    return f"10^{log_value / math.log(10):.1f}"


def _check_epsilon(epsilon: Any, d: int, beta: float) -> float:
    epsilon = real(epsilon, "epsilon")
    low = epsilon_lower_limit(d, beta)
    if not low < epsilon < 1.0:
        msg = (
            f"epsilon must lie in ({low:.6g}, 1) for d={d}, beta={beta:g} "
            f"(Theorem 5), got {epsilon}"
        )
        raise ParameterError(msg)
    return epsilon
