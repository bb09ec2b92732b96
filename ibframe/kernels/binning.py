"""Discretisation and discrete entropies, vectorised over samples (no Python loop over rows).

All entropies are in nats.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ibframe.errors import ParameterError


def bin_indices(
    values: npt.NDArray[np.floating],
    *,
    bin_size: float | None = None,
    n_bins: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> npt.NDArray[np.int64]:
    """Per-neuron bin index of every value.

    Either a floor grid of width ``bin_size`` (Saxe et al.: ``floor(t / bin_size)``), or
    ``n_bins`` equal bins over ``value_range`` (Shwartz-Ziv & Tishby; values outside the range
    go to the edge bins). Exactly one of ``bin_size`` and ``n_bins`` is given.
    """
    if (bin_size is None) == (n_bins is None):
        msg = "give exactly one of bin_size and n_bins"
        raise ParameterError(msg)
    values = np.asarray(values, dtype=np.float64)
    if bin_size is not None:
        if not bin_size > 0:
            msg = f"bin_size must be > 0, got {bin_size!r}"
            raise ParameterError(msg)
        return np.floor(values / bin_size).astype(np.int64)
    assert n_bins is not None  # narrowed above: exactly one is given
    if n_bins < 1:
        msg = f"n_bins must be >= 1, got {n_bins!r}"
        raise ParameterError(msg)
    low, high = value_range if value_range is not None else (-1.0, 1.0)
    if not high > low:
        msg = f"range must be (low, high) with high > low, got {value_range!r}"
        raise ParameterError(msg)
    scaled = np.floor((values - low) / (high - low) * n_bins)
    return np.clip(scaled, 0, n_bins - 1).astype(np.int64)


def row_codes(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """One integer per row identifying its pattern of bin indices (equal rows, equal codes).

    Rows are hashed to 64 bits with fixed random multipliers (one pass, fast on wide layers), then
    every row is checked against the first row of its hash group; should two different patterns
    ever share a hash, the exact lexicographic ``np.unique`` decides instead.
    """
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if indices.ndim == 1:
        indices = indices[:, None]
    multipliers = np.random.default_rng(0x1BF).integers(
        1, 2**63, size=indices.shape[1], dtype=np.uint64
    )
    with np.errstate(over="ignore"):
        hashes = (indices.view(np.uint64) * (multipliers | np.uint64(1))).sum(axis=1)
    _, first, codes = np.unique(hashes, return_index=True, return_inverse=True)
    if np.array_equal(indices, indices[first[codes]]):
        return codes.reshape(-1).astype(np.int64)
    _, codes = np.unique(indices, axis=0, return_inverse=True)
    return codes.reshape(-1).astype(np.int64)


def entropy_of_codes(codes: npt.NDArray[np.integer], axis: int = -1) -> npt.NDArray[np.float64]:
    """Plug-in entropy (nats) of the empirical distribution of integer codes along ``axis``."""
    codes = np.moveaxis(np.asarray(codes), axis, -1)
    n = codes.shape[-1]
    if n == 0:
        msg = "entropy of an empty sample is undefined"
        raise ParameterError(msg)
    ordered = np.sort(codes.reshape(-1, n), axis=-1)
    rows = ordered.shape[0]
    starts_mask = np.ones_like(ordered, dtype=bool)
    starts_mask[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = np.flatnonzero(starts_mask)
    run_lengths = np.diff(np.append(starts, rows * n))
    p = run_lengths / n
    out = np.bincount(starts // n, weights=-p * np.log(p), minlength=rows)
    return out.reshape(codes.shape[:-1])


def joint_entropy(*code_arrays: npt.NDArray[np.integer]) -> float:
    """Plug-in entropy (nats) of the joint pattern of several code arrays (each (sample,))."""
    stacked = np.stack([np.asarray(c, dtype=np.int64) for c in code_arrays], axis=1)
    return float(entropy_of_codes(row_codes(stacked)))


def mutual_information(a: npt.NDArray[np.integer], b: npt.NDArray[np.integer]) -> float:
    """Plug-in I(A;B) = H(A) + H(B) - H(A,B) in nats, from paired codes (sample,)."""
    return float(entropy_of_codes(a) + entropy_of_codes(b) - joint_entropy(a, b))
