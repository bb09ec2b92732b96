"""k-nearest-neighbour estimators of differential entropy and mutual information, in nats.

These are the estimators people reach for when they want a number for h(T) or I(X;T) from
samples (Kraskov et al. 2004; the NPEET package), written on :class:`scipy.spatial.cKDTree`.
They make no use of the noise model, which is exactly why they are a useful baseline for the
sample-propagation estimator: Goldfeld et al. (2019, Section 3) show that estimators which
ignore the known Gaussian noise converge slowly in high dimension.

References
----------
Kozachenko & Leonenko (1987), "Sample estimate of the entropy of a random vector".
Kraskov, Stögbauer & Grassberger (2004), "Estimating mutual information", Phys. Rev. E 69.
Ross (2014), "Mutual information between discrete and continuous data sets", PLoS ONE 9.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from ibframe.errors import ParameterError


def _as_samples(values: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        msg = f"{what} must be (sample, dimension), got shape {array.shape}"
        raise ParameterError(msg)
    if not np.all(np.isfinite(array)):
        msg = f"{what} holds NaN or inf"
        raise ParameterError(msg)
    return array


def _check_k(k: int, n: int) -> None:
    if k < 1 or k >= n:
        msg = f"k must be between 1 and the number of samples - 1 ({n - 1}), got {k}"
        raise ParameterError(msg)


def kl_entropy(samples: npt.ArrayLike, k: int = 3) -> float:
    """Kozachenko-Leonenko estimate of the differential entropy h(T) from n samples.

    .. math::
        \\hat h = \\psi(n) - \\psi(k) + \\ln V_d + \\frac{d}{n} \\sum_i \\ln \\varepsilon_i,
        \\qquad V_d = \\frac{\\pi^{d/2}}{\\Gamma(d/2 + 1)},

    with ε_i the Euclidean distance from sample i to its k-th nearest neighbour and V_d the
    volume of the unit d-ball. It comes from approximating the density at each sample by the
    probability mass of the ball that holds its k nearest neighbours, and is consistent for any
    density, with a bias that grows with the dimension. Samples must be distinct (a repeated
    point has ε = 0 and drives the estimate to -inf).

    Parameters
    ----------
    samples
        (n, d) draws of T (or (n,) for d = 1).
    k
        Neighbour order; small k lowers bias, large k lowers variance.
    """
    t = _as_samples(samples, "samples")
    n, d = t.shape
    _check_k(k, n)
    distances, _ = cKDTree(t).query(t, k=k + 1)  # the first neighbour is the point itself
    eps = distances[:, k]
    if np.any(eps == 0):
        msg = f"{int(np.sum(eps == 0))} samples have k={k} exact duplicates; h(T) is -inf"
        raise ParameterError(msg)
    log_unit_ball = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0)
    return float(digamma(n) - digamma(k) + log_unit_ball + d * np.mean(np.log(eps)))


def ksg_mi(a: npt.ArrayLike, b: npt.ArrayLike, k: int = 3) -> float:
    """KSG estimator 1 of I(A;B) from n paired samples, with the max-norm.

    .. math::
        \\hat I = \\psi(k) + \\psi(n) - \\langle \\psi(n_a + 1) + \\psi(n_b + 1) \\rangle,

    where ε_i is the max-norm distance from (a_i, b_i) to its k-th neighbour in the joint space
    and n_a(i), n_b(i) count the other samples strictly within ε_i in each marginal space. Using
    the same ε_i in the joint and marginal spaces makes the biases of the three implicit
    Kozachenko-Leonenko entropies largely cancel (Kraskov et al. 2004, estimator 1).

    Parameters
    ----------
    a, b
        (n, d_a) and (n, d_b) paired samples.
    k
        Neighbour order in the joint space (NPEET and Kraskov et al. use 3).
    """
    x, y = _as_samples(a, "a"), _as_samples(b, "b")
    n = x.shape[0]
    if y.shape[0] != n:
        msg = f"a and b must pair the same number of samples, got {n} and {y.shape[0]}"
        raise ParameterError(msg)
    _check_k(k, n)
    joint = np.hstack([x, y])
    distances, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    radius = np.nextafter(distances[:, k], 0)  # query_ball_point counts <= r; KSG counts < ε
    n_a = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True)  # self included
    n_b = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True)
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_a) + digamma(n_b)))


def ksg_mi_discrete(samples: npt.ArrayLike, labels: npt.ArrayLike, k: int = 3) -> float:
    """KSG estimator 1 of I(T;Y) for continuous T and a discrete label Y (Ross 2014).

    Give the labels a coordinate whose distinct values lie infinitely far apart: then a sample's
    k-th joint neighbour is its k-th neighbour *within its class*, at max-norm distance ε_i, the
    count n_y(i) + 1 is the class size N_{y_i}, and KSG estimator 1 becomes

    .. math::
        \\hat I = \\psi(n) + \\langle \\psi(k_i) \\rangle - \\langle \\psi(N_{y_i}) \\rangle
                  - \\langle \\psi(m_i) \\rangle,

    with m_i the samples of any class (itself included) strictly within ε_i of t_i. As in
    scikit-learn's ``mutual_info_classif``, a class of N_c <= k samples uses k_i = N_c - 1, and
    samples alone in their class are left out.

    Parameters
    ----------
    samples
        (n, d) draws of T.
    labels
        (n,) class labels.
    k
        Neighbour order within a class.
    """
    t = _as_samples(samples, "samples")
    y = np.asarray(labels)
    n = t.shape[0]
    if y.shape != (n,):
        msg = f"labels must have shape ({n},) to match the samples, got {y.shape}"
        raise ParameterError(msg)
    _check_k(k, n)
    radius = np.zeros(n)
    k_used = np.zeros(n)
    class_size = np.zeros(n)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        class_size[members] = members.size
        if members.size < 2:
            continue
        k_class = min(k, members.size - 1)
        distances, _ = cKDTree(t[members]).query(t[members], k=k_class + 1, p=np.inf)
        radius[members] = np.nextafter(distances[:, k_class], 0)
        k_used[members] = k_class
    kept = class_size > 1
    if not np.any(kept):
        msg = "every class has a single sample; I(T;Y) cannot be estimated"
        raise ParameterError(msg)
    m = cKDTree(t).query_ball_point(t[kept], radius[kept], p=np.inf, return_length=True)
    return float(
        digamma(kept.sum())
        + np.mean(digamma(k_used[kept]))
        - np.mean(digamma(class_size[kept]))
        - np.mean(digamma(m))
    )
