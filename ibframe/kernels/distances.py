"""Pairwise-distance histograms and cosine similarities, through matrix products, in chunks.

The n(n-1)/2 Euclidean distances between the rows of an (n, d) matrix come from one GEMM,

    ||a_i - a_j||^2 = ||a_i||^2 + ||a_j||^2 - 2 <a_i, a_j>,

which is O(n^2 d) flops in the fastest kernel a CPU or GPU has, instead of a Python or
broadcasting loop that would hold an (n, n, d) difference tensor. Rows are taken a chunk at a
time, against the rows after them only (i < j), so memory is O(chunk * n) and the full n x n
matrix never exists. Each chunk is binned and summed in one ``bincount``, so only per-bin counts
leave the loop.

The Gram-matrix identity loses relative precision when a distance is small next to the norms
(catastrophic cancellation), so everything is computed in float64: a distance then carries an
absolute error of about sqrt(eps) * max ||a_i|| ~ 1e-8 * max ||a_i||, far below any useful bin
width.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from ibframe.errors import ParameterError

Metric = Literal["euclidean", "sqeuclidean", "cosine"]

#: Distance-matrix entries per chunk: 8 MiB of float64 on a CPU (a chunk that stays in cache
#: measured twice as fast as 32 MiB ones), 256 MiB on a GPU, where launches are the cost.
_CHUNK_ELEMENTS: typing.Final = {"cpu": 2**20, "cuda": 2**25}
#: Distances within this relative tolerance above the last edge count in the last bin, so that
#: a pair exactly at the bound (opposite corners of a saturated tanh layer) is not lost to
#: rounding in the Gram-matrix identity.
_EDGE_RTOL: typing.Final = 1e-6


@dataclass(frozen=True)
class DistanceHistogram:
    """Histograms of within-class and between-class pairwise distances.

    Attributes
    ----------
    counts
        (2, bins) pair counts per bin; row 0 within-class pairs, row 1 between-class pairs.
        Distances beyond the last edge are not counted here (they are in ``n_pairs``).
    n_pairs
        (2,) number of pairs of each kind, in range or not.
    sums
        (2,) sum of the distances of each kind, for exact means (not binned means).
    """

    counts: npt.NDArray[np.int64]
    n_pairs: npt.NDArray[np.int64]
    sums: npt.NDArray[np.float64]

    @property
    def means(self) -> npt.NDArray[np.float64]:
        """(2,) mean distance of each pair kind; NaN for a kind without pairs."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_pairs > 0, self.sums / np.maximum(self.n_pairs, 1), np.nan)


def pairwise_distance_histogram(
    points: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    bins: int,
    max_distance: float,
    metric: Metric = "euclidean",
    chunk_rows: int | None = None,
    device: str = "cpu",
    rows: tuple[int, int] | None = None,
) -> DistanceHistogram:
    """Histogram the distances of all pairs i < j of rows, split by whether labels agree.

    Parameters
    ----------
    points
        (n, d) representations, one row per sample.
    labels
        (n,) class labels; a pair is within-class when its labels are equal.
    bins, max_distance
        ``bins`` equal-width bins over [0, max_distance], half-open [e_k, e_{k+1}) except the
        last, which is closed, as in :func:`numpy.histogram`. A distance within rounding of
        an edge (the identity's, ~1e-8 * max ||a_i||) may land in either neighbour.
    metric
        ``"euclidean"`` ||a - b||, ``"sqeuclidean"`` ||a - b||^2, or ``"cosine"``
        1 - <a, b> / (||a|| ||b||) (a zero row counts as orthogonal to everything: distance 1).
    chunk_rows
        Rows per chunk; default keeps a chunk's distance block near 2^20 entries on a CPU and
        2^25 on a GPU.
    device
        Torch device for the matrix products ("cpu", "cuda", ...).
    rows
        ``(start, stop)``: only the pairs whose first row i lies in ``[start, stop)``, a part of
        the whole that can run elsewhere (:func:`pair_rows` cuts near-equal parts); the parts'
        counts and sums add up to the whole's.

    Returns
    -------
    DistanceHistogram
        Counts per bin, number of pairs and sum of distances, for within and between pairs.

    Notes
    -----
    Each chunk is reduced in one pass of ``bincount``: a pair gets the code
    ``kind * (bins + 1) + bin`` (kind 0 within, 1 between; bin ``bins`` collects distances
    beyond the range), and pairs with i >= j a code past the end, so that one ``bincount``
    gives the counts and one weighted by the distances gives the sums, with no masked copies.
    """
    x = torch.as_tensor(np.asarray(points), dtype=torch.float64, device=device)
    if x.ndim != 2:
        msg = f"points must be (sample, feature), got shape {tuple(x.shape)}"
        raise ParameterError(msg)
    n = x.shape[0]
    y = torch.as_tensor(np.asarray(labels), device=device)
    if y.shape != (n,):
        msg = f"labels must have shape ({n},) to match the points, got {tuple(y.shape)}"
        raise ParameterError(msg)
    if bins < 1 or not (math.isfinite(max_distance) and max_distance > 0):
        msg = f"need bins >= 1 and a finite max_distance > 0, got {bins} and {max_distance}"
        raise ParameterError(msg)
    if chunk_rows is not None and chunk_rows < 1:
        msg = f"chunk_rows must be >= 1, got {chunk_rows}"
        raise ParameterError(msg)
    if metric == "cosine":
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        x = x / norms.clamp_min(torch.finfo(x.dtype).tiny)
    elif metric not in ("euclidean", "sqeuclidean"):
        msg = f"metric must be 'euclidean', 'sqeuclidean' or 'cosine', got {metric!r}"
        raise ParameterError(msg)
    first, last = (0, n) if rows is None else rows
    if not 0 <= first <= last <= n:
        msg = f"rows must be (start, stop) with 0 <= start <= stop <= {n}, got {rows}"
        raise ParameterError(msg)
    budget = _CHUNK_ELEMENTS["cuda" if x.is_cuda else "cpu"]
    step = chunk_rows or max(1, budget // max(n - first, 1))
    sq = (x * x).sum(dim=1)
    scale = bins / max_distance
    stride = bins + 1
    totals = torch.zeros(2 * stride + 1, dtype=torch.float64, device=device)
    counts = torch.zeros(2 * stride + 1, dtype=torch.int64, device=device)
    for start in range(first, min(last, n - 1), step):
        stop = min(last, start + step)
        # Rows start..stop against themselves and every later row: (r, n - start).
        if metric == "cosine":
            dist = torch.mm(x[start:stop], x[start:].T).neg_().add_(1.0).clamp_(0.0, 2.0)
        else:
            dist = torch.addmm(sq[None, start:], x[start:stop], x[start:].T, alpha=-2.0)
            dist.add_(sq[start:stop, None]).clamp_min_(0.0)
            if metric == "euclidean":
                dist.sqrt_()
        position = dist * scale
        # Within _EDGE_RTOL above the last edge still counts in the last bin.
        position = torch.where(
            position <= bins * (1.0 + _EDGE_RTOL), position.clamp(max=bins - 0.5), position
        )
        code = position.floor_().clamp_(max=bins).to(torch.int64)
        code += stride * (y[start:stop, None] != y[None, start:])
        diagonal = code[:, : stop - start]  # the square block where j <= i must be dropped
        diagonal.masked_fill_(~torch.ones_like(diagonal, dtype=torch.bool).triu(1), 2 * stride)
        code = code.ravel()
        counts += torch.bincount(code, minlength=2 * stride + 1)
        totals += torch.bincount(code, weights=dist.ravel(), minlength=2 * stride + 1)
    per_kind = counts[: 2 * stride].reshape(2, stride).cpu().numpy()
    return DistanceHistogram(
        counts=per_kind[:, :bins],
        n_pairs=per_kind.sum(axis=1),
        sums=totals[: 2 * stride].reshape(2, stride).sum(dim=1).cpu().numpy(),
    )


def pair_rows(n: int, part: int, parts: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``part`` of ``parts``, cut so that each part's rows have
    near-equal numbers of pairs i < j (row i has n - 1 - i of them)."""
    before = np.concatenate([[0], np.cumsum(np.arange(n - 1, -1, -1))])  # pairs of rows < r
    cuts = np.searchsorted(before, before[-1] * np.arange(parts + 1) / parts)
    cuts[-1] = n
    return int(cuts[part]), int(max(cuts[part], cuts[part + 1]))


def rowwise_cosine_similarity(
    a: npt.ArrayLike, b: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Cosine similarity <a_i, b_i> / (||a_i|| ||b_i||) of each pair of matching rows.

    Parameters
    ----------
    a, b
        (n, d) arrays: the representations of the same n inputs in two networks.

    Returns
    -------
    numpy.ndarray
        (n,) similarities in [-1, 1]; NaN where a row is zero (the angle is undefined, as for a
        ReLU layer with every unit off).
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape or a64.ndim != 2:
        msg = f"a and b must be (sample, unit) arrays of one shape, got {a64.shape} and {b64.shape}"
        raise ParameterError(msg)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    dots = np.einsum("ij,ij->i", a64, b64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.nan)
    return np.clip(cosine, -1.0, 1.0)
