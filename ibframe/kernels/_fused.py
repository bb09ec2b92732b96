r"""One pass per block on the CPU: GEMM, ``exp2`` and row sum fused in a Numba kernel.

The torch path of the dense evaluation (:mod:`._engine`) makes four passes over every block of
exponents: the GEMM writes it, ``exp2`` reads and writes it, a sum reads it, and each pass is a
separate call. Here one compiled loop computes, per row :math:`i`,

.. math::  \text{out}_i \mathrel{+}= \sum_j 2^{\,P_i \cdot C_{:,j}}

tile by tile (256 columns, in L1), with :math:`2^t` from a degree-6 polynomial on
:math:`[-\tfrac12, \tfrac12]` (Cephes ``exp2f``, relative error below :math:`2\cdot10^{-7}`,
float32's own rounding) times the power of two written straight into a float's exponent bits
(an LLVM bitcast), so that the exponential and the sum are one vectorised loop (1.3-1.6x faster
than storing the powers to a buffer first). Exponents are clamped to :math:`[-126, 127.99]`: a
term below :math:`2^{-126}` of the largest weight, or a skipped one, counts as
:math:`2^{-126}` (the torch path's flush-to-zero counts it as 0, a difference below
:math:`10^{-37}` per term), and one above overflows to ``inf``, which the caller redoes in
float64 like any overflowed row.

The dot products run in the operands' dtype (float32, or float64 where the caller's rounding
estimate asks for it), the exponentials in float32, the row sums of a tile in float32 and across
tiles in float64, as on the torch path.

Numba is optional (``pip install ibframe[fast]``). Without it, or with
``IBFRAME_FUSED=0`` in the environment, the torch path runs; both give the same sums to float32
rounding (tests/test_fused.py). The first use in a process compiles the loops of
:mod:`._fused_loops` (about 12 s the first time, then loaded from Numba's on-disk cache); if
that fails for any reason, a warning says so and the torch path runs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch

ENV_FUSED = "IBFRAME_FUSED"


def enabled() -> bool:
    """Whether the fused kernel runs: Numba is importable and ``IBFRAME_FUSED`` is not ``0``."""
    if os.environ.get(ENV_FUSED, "").strip() in {"0", "false", "no", "off"}:
        return False
    return _kernel() is not None


@functools.cache
def _kernel() -> dict[str, Callable[..., object]] | None:
    """The compiled loops of :mod:`._fused_loops` by name, or ``None`` without Numba."""
    try:
        import numba  # noqa: F401 - only whether it is there
    except ImportError:
        return None

    try:  # compile (or load) the signatures the engine uses now: a failure means the torch path
        from ibframe.kernels import _fused_loops as loops

        skip = np.full(2, -1, dtype=np.int64)
        bounds = np.array([0, 4], np.int64)
        # the inner-product form runs in float32 only (where float32 would round too much, the
        # engine takes the difference form, from float32 or float64 coordinates)
        loops.exp2_row_sums(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32), 0, 4,
                            skip, np.zeros((2, 2))[:, 0])
        loops.exp2_row_sums_batch(np.zeros((1, 2, 3), np.float32),
                                  np.zeros((1, 3, 4), np.float32), bounds, np.zeros((1, 2, 1)))
        for dtype in (np.float32, np.float64):
            loops.exp2_row_sums_diff(np.zeros((2, 3), dtype), np.zeros(2, np.float32),
                                     np.zeros((3, 4), dtype), np.zeros(4, np.float32), 1.0, 0,
                                     4, skip, np.zeros((2, 2))[:, 0])
            loops.exp2_row_sums_diff_batch(np.zeros((1, 2, 3), dtype),
                                           np.zeros((1, 2), np.float32),
                                           np.zeros((1, 3, 4), dtype),
                                           np.zeros((1, 4), np.float32), 1.0, bounds,
                                           np.zeros((1, 2, 1)))
        leaves = _TinyLeaves()
        loops.build_tree(np.zeros((2, 3)), 128)
        loops.leaf_pairs(*leaves.pair_args(), np.zeros(2, np.int64))
        loops.leaf_exp2_sums(*leaves.sum_args(), np.zeros((2, 1)))
    except Exception as err:  # noqa: BLE001 - whatever Numba raises, the torch path remains
        warnings.warn(f"ibframe: the fused kernel did not compile ({err!r}); the dense passes "
                      "run on torch", RuntimeWarning, stacklevel=2)
        return None
    return {name: getattr(loops, name) for name in LOOPS}


#: The compiled loops (each compiled for the dtypes the engine passes, then cached by Numba).
LOOPS = ("exp2_row_sums", "exp2_row_sums_diff", "exp2_row_sums_batch",
         "exp2_row_sums_diff_batch", "build_tree", "leaf_pairs", "leaf_exp2_sums")


def _loop(name: str) -> Callable[..., object]:
    kernels = _kernel()
    assert kernels is not None, "call the fused loops only where enabled()"
    return kernels[name]


class _TinyLeaves:
    """Arguments of the leaf loops for two points and a tree of one leaf of two centres, with
    the dtypes the engine passes: compiling them once fixes the signatures Numba caches."""

    def __init__(self) -> None:
        self.points = np.zeros((2, 3))
        self.reach_sq = np.ones(2)
        self.bounds = np.array([0, 2], np.int64)
        self.tree = (np.full((1, 2), -1, np.int64), np.zeros(1, np.int64), np.zeros((1, 3)),
                     np.zeros((1, 3)))

    def pair_args(self) -> tuple[object, ...]:
        return (self.points, self.reach_sq, 0, 2, self.bounds, *self.tree)

    def sum_args(self) -> tuple[object, ...]:
        return (self.points, np.zeros(2), self.reach_sq, np.zeros(2, np.int64), 0, 2,
                np.zeros((3, 2)), np.zeros(2, np.float32), 1.0, self.bounds,
                np.array([[0, 2]], np.int64), *self.tree)


def exp2_row_sums(p: torch.Tensor, c: torch.Tensor, start: int, stop: int, out: torch.Tensor,
                  skip: torch.Tensor | None = None) -> None:
    r"""``out[i] += sum_j 2 ** (p[i] @ c[:, j])`` over columns ``start <= j < stop``, but
    column ``skip[i]`` (``-1``: none).

    ``p`` ``(rows, k)`` and ``c`` ``(k, cols)`` are contiguous CPU tensors of one float dtype;
    ``out`` is ``(rows,)`` float64 (a strided view is fine). Call only where :func:`enabled`.
    """
    if skip is None:
        skip = _NO_SKIP.expand(p.shape[0])
    _loop("exp2_row_sums")(p.numpy(), c.numpy(), start, stop, skip.numpy(), out.numpy())


def exp2_row_sums_diff(p: torch.Tensor, a: torch.Tensor, c: torch.Tensor, b: torch.Tensor,
                       sigma: float, start: int, stop: int, out: torch.Tensor,
                       skip: torch.Tensor | None = None) -> None:
    r"""``out[i] += sum_j 2 ** (a[i] + b[j] - sigma * ||p[i] - c[:, j]||^2)``, as
    :func:`exp2_row_sums`, from exact differences.

    ``p`` ``(rows, d)`` and ``c`` ``(d, cols)`` are contiguous, both float64 or both float32.
    From float64 each difference is formed exactly and only then rounded to float32, so the
    squared distance has float32's *relative* error, however far the points are from the
    origin and however small :math:`1/\sqrt{\sigma}` is (no large terms cancel, unlike the
    inner-product form). From float32 (half the memory traffic, 1.7x faster) the coordinates'
    own rounding adds an error that grows with their distance from the origin; the caller
    decides where that is small enough. ``a`` ``(rows,)`` and ``b`` ``(cols,)`` are float32.
    """
    if skip is None:
        skip = _NO_SKIP.expand(p.shape[0])
    _loop("exp2_row_sums_diff")(p.numpy(), a.numpy(), c.numpy(), b.numpy(), sigma, start, stop,
                                skip.numpy(), out.numpy())


def exp2_row_sums_batch(p: torch.Tensor, c: torch.Tensor, bounds: torch.Tensor,
                        out: torch.Tensor) -> None:
    """:func:`exp2_row_sums` for a batch: ``p`` ``(m, rows, k)``, ``c`` ``(m, k, cols)``, every
    atom ``a`` (columns ``bounds[a]:bounds[a + 1]``) into ``out[:, :, a]`` (``(m, rows, A)``
    float64, contiguous), in one call."""
    _loop("exp2_row_sums_batch")(p.numpy(), c.numpy(), bounds.numpy(), out.numpy())


def exp2_row_sums_diff_batch(p: torch.Tensor, a: torch.Tensor, c: torch.Tensor,
                             b: torch.Tensor, sigma: float, bounds: torch.Tensor,
                             out: torch.Tensor) -> None:
    """:func:`exp2_row_sums_diff` for a batch, as :func:`exp2_row_sums_batch`: ``a``
    ``(m, rows)`` and ``b`` ``(m, cols)`` float32."""
    _loop("exp2_row_sums_diff_batch")(p.numpy(), a.numpy(), c.numpy(), b.numpy(), sigma,
                                      bounds.numpy(), out.numpy())


def leaf_pairs(*args: object) -> None:
    """:func:`._fused_loops.leaf_pairs` (NumPy arguments); call only where :func:`enabled`."""
    _loop("leaf_pairs")(*args)


def leaf_exp2_sums(*args: object) -> None:
    """:func:`._fused_loops.leaf_exp2_sums` (NumPy arguments); call only where :func:`enabled`."""
    _loop("leaf_exp2_sums")(*args)


def build_tree(centres: np.ndarray, leaf_size: int) -> tuple[np.ndarray, ...]:
    """:func:`._fused_loops.build_tree`; call only where :func:`enabled`."""
    return _loop("build_tree")(centres, leaf_size)  # type: ignore[return-value]


_NO_SKIP = torch.full((1,), -1, dtype=torch.int64)
