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
rounding (tests/test_fused.py). The first use in a process compiles the loops (a few seconds
the first time, then loaded from Numba's on-disk cache); if that fails for any reason, a
warning says so and the torch path runs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ENV_FUSED = "IBFRAME_FUSED"

_TILE = 256  # columns per tile: the tile's exponents stay in L1
_FASTMATH = {"reassoc", "contract", "nsz"}  # vectorised sums; no assumption about inf or NaN


def enabled() -> bool:
    """Whether the fused kernel runs: Numba is importable and ``IBFRAME_FUSED`` is not ``0``."""
    if os.environ.get(ENV_FUSED, "").strip() in {"0", "false", "no", "off"}:
        return False
    return _kernel() is not None


@functools.cache
def _kernel() -> tuple[Callable[..., None], Callable[..., None]] | None:
    """The compiled kernels (inner-product and difference forms), or ``None`` without Numba."""
    try:
        import numba
        from llvmlite import ir
        from numba.extending import intrinsic
    except ImportError:
        return None

    @intrinsic
    def as_float32(typingctx: Any, bits: Any) -> Any:  # pragma: no cover - JIT
        """The float32 whose bits are the int32 ``bits`` (so the loop vectorises)."""

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.FloatType())

        return numba.types.float32(numba.types.int32), codegen

    @numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False, inline="always")
    def pow2(t: Any) -> Any:  # pragma: no cover - JIT
        """2**t for float32 t, clamped to [-126, 127.99] (module notes)."""
        t = min(max(t, np.float32(-126.0)), np.float32(127.99))
        n = np.floor(t + np.float32(0.5))
        f = t - n
        x = np.float32(1.535336188319500e-4)
        x = x * f + np.float32(1.339887440266574e-3)
        x = x * f + np.float32(9.618437357674640e-3)
        x = x * f + np.float32(5.550332471162809e-2)
        x = x * f + np.float32(2.402264791363012e-1)
        x = x * f + np.float32(6.931472028550421e-1)
        x = x * f + np.float32(1.0)
        return x * as_float32((np.int32(n) + np.int32(127)) << np.int32(23))

    @numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
    def exp2_row_sums(p: Any, c: Any, start: int, stop: int, skip: Any,
                      out: Any) -> None:  # pragma: no cover - JIT
        rows, k = p.shape
        dot = np.empty(_TILE, p.dtype)
        for j0 in range(start, stop, _TILE):  # a tile of columns stays in L1 for every row
            w = min(_TILE, stop - j0)
            for i in range(rows):
                for j in range(w):
                    dot[j] = 0
                kk = 0
                while kk + 4 <= k:  # four terms per pass over the tile: 20% faster at d >= 10
                    p0, p1, p2, p3 = p[i, kk], p[i, kk + 1], p[i, kk + 2], p[i, kk + 3]
                    c0, c1 = c[kk, j0:j0 + w], c[kk + 1, j0:j0 + w]
                    c2, c3 = c[kk + 2, j0:j0 + w], c[kk + 3, j0:j0 + w]
                    for j in range(w):
                        dot[j] += p0 * c0[j] + p1 * c1[j] + p2 * c2[j] + p3 * c3[j]
                    kk += 4
                while kk < k:
                    pk = p[i, kk]
                    ck = c[kk, j0:j0 + w]
                    for j in range(w):
                        dot[j] += pk * ck[j]
                    kk += 1
                skipped = skip[i] - j0
                if 0 <= skipped < w:
                    dot[skipped] = -np.inf
                part = np.float32(0.0)
                for j in range(w):
                    part += pow2(np.float32(dot[j]))
                out[i] += part

    @numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
    def exp2_row_sums_diff(p: Any, a: Any, c: Any, b: Any, sigma: float, start: int, stop: int,
                           skip: Any, out: Any) -> None:  # pragma: no cover - JIT
        rows, d = p.shape
        dist = np.empty(_TILE, np.float32)
        # sigma in two float32 parts: one rounded factor would scale every exponent alike
        sg = np.float32(sigma)
        sg_lo = np.float32(sigma - np.float64(sg))
        for j0 in range(start, stop, _TILE):  # a tile of columns stays in L1 for every row
            w = min(_TILE, stop - j0)
            bj = b[j0:j0 + w]
            for i in range(rows):
                ai = np.float32(a[i])
                for j in range(w):
                    dist[j] = np.float32(0.0)
                for kk in range(d):
                    pk = p[i, kk]
                    ck = c[kk, j0:j0 + w]
                    for j in range(w):
                        diff = np.float32(pk - ck[j])
                        dist[j] += diff * diff
                skipped = skip[i] - j0
                if 0 <= skipped < w:
                    dist[skipped] = np.float32(1e30)  # far: clamped to 2**-126 (inf: NaN)
                part = np.float32(0.0)
                for j in range(w):
                    part += pow2(ai + bj[j] - sg * dist[j] - sg_lo * dist[j])
                out[i] += part

    try:  # compile the signatures the engine uses now: a failure means the torch path
        skip = np.full(2, -1, dtype=np.int64)
        for dtype in (np.float32, np.float64):
            exp2_row_sums(np.zeros((2, 3), dtype), np.zeros((3, 4), dtype), 0, 4, skip,
                          np.zeros((2, 2))[:, 0])
            exp2_row_sums_diff(np.zeros((2, 3), dtype), np.zeros(2, np.float32),
                               np.zeros((3, 4), dtype), np.zeros(4, np.float32), 1.0, 0, 4,
                               skip, np.zeros((2, 2))[:, 0])
    except Exception as err:  # noqa: BLE001 - whatever Numba raises, the torch path remains
        warnings.warn(f"ibframe: the fused kernel did not compile ({err!r}); the dense passes "
                      "run on torch", RuntimeWarning, stacklevel=2)
        return None
    return exp2_row_sums, exp2_row_sums_diff


def exp2_row_sums(p: torch.Tensor, c: torch.Tensor, start: int, stop: int, out: torch.Tensor,
                  skip: torch.Tensor | None = None) -> None:
    r"""``out[i] += sum_j 2 ** (p[i] @ c[:, j])`` over columns ``start <= j < stop``, but
    column ``skip[i]`` (``-1``: none).

    ``p`` ``(rows, k)`` and ``c`` ``(k, cols)`` are contiguous CPU tensors of one float dtype;
    ``out`` is ``(rows,)`` float64 (a strided view is fine). Call only where :func:`enabled`.
    """
    kernels = _kernel()
    assert kernels is not None
    if skip is None:
        skip = _NO_SKIP.expand(p.shape[0])
    kernels[0](p.numpy(), c.numpy(), start, stop, skip.numpy(), out.numpy())


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
    kernels = _kernel()
    assert kernels is not None
    if skip is None:
        skip = _NO_SKIP.expand(p.shape[0])
    kernels[1](p.numpy(), a.numpy(), c.numpy(), b.numpy(), sigma, start, stop, skip.numpy(),
               out.numpy())


_NO_SKIP = torch.full((1,), -1, dtype=torch.int64)
