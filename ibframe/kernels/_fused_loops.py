"""The Numba loops of :mod:`._fused` (module notes there), at module level so that Numba's
on-disk cache finds them again in the next process.

Imported only on the fused kernel's first use, so that importing ibframe does not import Numba.
Numba keys a cached function by its module, name and source file; the same loops written as
closures inside a function were compiled afresh in every process (7-8 s each time, and one more
cache file every run), because a closure's captured dispatchers differ from process to process.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

TILE = 256  # columns per tile: the tile's exponents stay in L1
_FASTMATH = {"reassoc", "contract", "nsz"}  # vectorised sums; no assumption about inf or NaN


@intrinsic
def _as_float32(typingctx: Any, bits: Any) -> Any:  # pragma: no cover - JIT
    """The float32 whose bits are the int32 ``bits`` (so the loop vectorises)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return numba.types.float32(numba.types.int32), codegen


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False, inline="always")
def _pow2(t: Any) -> Any:  # pragma: no cover - JIT
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
    return x * _as_float32((np.int32(n) + np.int32(127)) << np.int32(23))


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
def exp2_row_sums(p: Any, c: Any, start: int, stop: int, skip: Any,
                  out: Any) -> None:  # pragma: no cover - JIT
    rows, k = p.shape
    dot = np.empty(TILE, p.dtype)
    for j0 in range(start, stop, TILE):  # a tile of columns stays in L1 for every row
        w = min(TILE, stop - j0)
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
                part += _pow2(np.float32(dot[j]))
            out[i] += part


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
def exp2_row_sums_diff(p: Any, a: Any, c: Any, b: Any, sigma: float, start: int, stop: int,
                       skip: Any, out: Any) -> None:  # pragma: no cover - JIT
    rows, d = p.shape
    dist = np.empty(TILE, np.float32)
    # sigma in two float32 parts: one rounded factor would scale every exponent alike
    sg = np.float32(sigma)
    sg_lo = np.float32(sigma - np.float64(sg))
    for j0 in range(start, stop, TILE):  # a tile of columns stays in L1 for every row
        w = min(TILE, stop - j0)
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
                part += _pow2(ai + bj[j] - sg * dist[j] - sg_lo * dist[j])
            out[i] += part


# -- the leaf route (ibframe.kernels._engine._Leaves) ---------------------------------------------


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False, inline="always")
def _gap_sq(point: Any, lo: Any, hi: Any) -> Any:  # pragma: no cover - JIT
    """Squared distance from ``point`` to the box [lo, hi] (0 inside)."""
    gap = 0.0
    for k in range(point.shape[0]):
        t = max(lo[k] - point[k], point[k] - hi[k], 0.0)
        gap += t * t
    return gap


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _select(order: Any, centres: Any, dim: int, lo: int, hi: int,
            k: int) -> None:  # pragma: no cover - JIT
    """Reorder ``order[lo:hi]`` so that no centre before position ``k`` lies above it along
    ``dim``, nor any after it below (Hoare's selection: linear time, and Numba compiles it in
    a fraction of the time of ``np.argsort``)."""
    hi -= 1
    while lo < hi:
        pivot = centres[order[(lo + hi) // 2], dim]
        i, j = lo, hi
        while i <= j:
            while centres[order[i], dim] < pivot:
                i += 1
            while centres[order[j], dim] > pivot:
                j -= 1
            if i <= j:
                order[i], order[j] = order[j], order[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@numba.njit(nogil=True, cache=True, boundscheck=False)
def build_tree(centres: Any, leaf_size: int) -> Any:  # pragma: no cover - JIT
    """A k-d tree of ``centres`` ``(n, d)``: the centres' order (each leaf a run of it), each
    node's children (``-1``: a leaf), leaf number (``-1``: an inner node) and bounding box,
    and each leaf's first position with the end.

    A node of more than ``leaf_size`` centres splits its widest side at the middle (sliding
    midpoint splits keep clusters apart), or at the median where the middle would leave
    fewer than a quarter of ``leaf_size`` on one side; so every leaf but a lone root holds at
    least that quarter, and the node count is bounded. Nodes are numbered children after
    parents, leaves in the order of their positions.
    """
    n, d = centres.shape
    order = np.arange(n)
    quarter = max(1, leaf_size // 4)
    capacity = 2 * (n // quarter + 1) + 1
    bounds = np.empty((capacity, 2), np.int64)
    children = np.full((capacity, 2), -1, np.int64)
    leaf_of = np.full(capacity, -1, np.int64)
    lo = np.empty((capacity, d))
    hi = np.empty((capacity, d))
    starts = np.empty(capacity + 1, np.int64)
    stack = np.empty(capacity, np.int64)
    bounds[0, 0], bounds[0, 1] = 0, n
    nodes, leaves, top = 1, 0, 1
    stack[0] = 0
    while top:
        top -= 1
        node = stack[top]
        s, e = bounds[node, 0], bounds[node, 1]
        for k in range(d):
            lo[node, k] = np.inf
            hi[node, k] = -np.inf
        for i in range(s, e):
            for k in range(d):
                x = centres[order[i], k]
                lo[node, k] = min(lo[node, k], x)
                hi[node, k] = max(hi[node, k], x)
        dim = 0
        for k in range(1, d):
            if hi[node, k] - lo[node, k] > hi[node, dim] - lo[node, dim]:
                dim = k
        if e - s <= leaf_size or hi[node, dim] <= lo[node, dim]:
            leaf_of[node] = leaves
            starts[leaves] = s
            leaves += 1
            continue
        middle = 0.5 * (lo[node, dim] + hi[node, dim])
        m = s  # partition: centres below the middle first
        for i in range(s, e):
            if centres[order[i], dim] < middle:
                order[i], order[m] = order[m], order[i]
                m += 1
        if m - s < quarter or e - m < quarter:
            m = s + (e - s) // 2
            _select(order, centres, dim, s, e, m)
        bounds[nodes, 0], bounds[nodes, 1] = s, m
        bounds[nodes + 1, 0], bounds[nodes + 1, 1] = m, e
        children[node, 0], children[node, 1] = nodes, nodes + 1
        nodes += 2
        stack[top] = children[node, 1]
        stack[top + 1] = children[node, 0]
        top += 2
    starts[leaves] = n
    return (order, children[:nodes].copy(), leaf_of[:nodes].copy(), lo[:nodes].copy(),
            hi[:nodes].copy(), starts[:leaves + 1].copy())


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
def leaf_pairs(points: Any, reach_sq: Any, i0: int, i1: int, leaf_bounds: Any, children: Any,
               leaf_of: Any, lo: Any, hi: Any, out: Any) -> None:  # pragma: no cover - JIT
    """``out[i]``: the (point, centre) pairs :func:`leaf_exp2_sums` evaluates for point ``i``
    (the centres of the leaves whose box is within the point's reach), for ``i0 <= i < i1``."""
    stack = np.empty(children.shape[0] + 1, np.int64)
    for i in range(i0, i1):
        pairs = 0
        top = 1
        stack[0] = 0
        while top:
            top -= 1
            node = stack[top]
            if _gap_sq(points[i], lo[node], hi[node]) > reach_sq[i]:
                continue
            leaf = leaf_of[node]
            if leaf >= 0:
                pairs += leaf_bounds[leaf + 1] - leaf_bounds[leaf]
            else:
                stack[top] = children[node, 1]
                stack[top + 1] = children[node, 0]
                top += 2
        out[i] = pairs


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
def leaf_exp2_sums(points: Any, row_terms: Any, reach_sq: Any, own: Any, i0: int, i1: int,
                   centres_t: Any, col_terms: Any, sigma: float, leaf_bounds: Any,
                   atom_bounds: Any, children: Any, leaf_of: Any, lo: Any, hi: Any,
                   out: Any) -> None:  # pragma: no cover - JIT
    """``out[i, a] += sum 2 ** (row_terms[i] + col_terms[j] - sigma * ||p_i - c_j||^2)`` over
    the centres ``j`` of atom ``a`` within reach of point ``i`` (``reach_sq``), but its own
    centre ``own[i]``, for ``i0 <= i < i1``.

    Each point walks the k-d tree, pruning nodes whose box lies out of its reach, and runs
    over the centres of each leaf it reaches as the dense pass's difference form does
    (differences in float64 rounded to float32, powers of two in float32).
    """
    d = points.shape[1]
    n_atoms = atom_bounds.shape[1] - 1
    widest = 0
    for leaf in range(leaf_bounds.shape[0] - 1):
        widest = max(widest, leaf_bounds[leaf + 1] - leaf_bounds[leaf])
    dist = np.empty(widest, np.float32)
    terms = np.empty(widest, np.float32)
    stack = np.empty(children.shape[0] + 1, np.int64)
    sg = np.float32(sigma)
    sg_lo = np.float32(sigma - np.float64(sg))
    for i in range(i0, i1):
        ri = np.float32(row_terms[i])
        ri_sq = reach_sq[i]
        ri_sq32 = np.float32(ri_sq)
        top = 1
        stack[0] = 0
        while top:
            top -= 1
            node = stack[top]
            if _gap_sq(points[i], lo[node], hi[node]) > ri_sq:
                continue
            leaf = leaf_of[node]
            if leaf < 0:
                stack[top] = children[node, 1]
                stack[top + 1] = children[node, 0]
                top += 2
                continue
            # slices, not j0 + j: Numba cannot prove a sum of indices >= 0, and its check
            # for negative indices keeps the loops from vectorising (3-10x slower)
            j0, j1 = leaf_bounds[leaf], leaf_bounds[leaf + 1]
            w = j1 - j0
            for j in range(w):
                dist[j] = np.float32(0.0)
            for k in range(d):
                pk = points[i, k]
                ck = centres_t[k, j0:j1]
                for j in range(w):
                    diff = np.float32(pk - ck[j])
                    dist[j] += diff * diff
            cols = col_terms[j0:j1]
            for j in range(w):  # one vectorised pass over the leaf, then a sum per atom
                t = _pow2(ri + cols[j] - sg * dist[j] - sg_lo * dist[j])
                terms[j] = t if dist[j] <= ri_sq32 else np.float32(0.0)
            skipped = own[i] - j0
            if 0 <= skipped < w:
                terms[skipped] = np.float32(0.0)  # the own term is the caller's
            for a in range(n_atoms):
                segment = terms[atom_bounds[leaf, a] - j0:atom_bounds[leaf, a + 1] - j0]
                part = np.float32(0.0)
                for j in range(segment.size):
                    part += segment[j]
                out[i, a] += part


# -- batches of small mixtures (the conditional mixtures h(T|X=x)) --------------------------------


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
def exp2_row_sums_batch(p: Any, c: Any, bounds: Any, out: Any) -> None:  # pragma: no cover - JIT
    """:func:`exp2_row_sums` for every mixture ``m`` of a batch and every atom ``a`` (columns
    ``bounds[a]:bounds[a + 1]``) into ``out[m, :, a]``, in one call: thousands of mixtures of a
    few dozen centres cost a call each otherwise."""
    skip = np.full(p.shape[1], -1, np.int64)
    for m in range(p.shape[0]):
        for a in range(bounds.shape[0] - 1):
            exp2_row_sums(p[m], c[m], bounds[a], bounds[a + 1], skip, out[m, :, a])


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False)
def exp2_row_sums_diff_batch(p: Any, a: Any, c: Any, b: Any, sigma: float, bounds: Any,
                             out: Any) -> None:  # pragma: no cover - JIT
    """:func:`exp2_row_sums_diff` for every mixture and atom of a batch, as
    :func:`exp2_row_sums_batch`."""
    skip = np.full(p.shape[1], -1, np.int64)
    for m in range(p.shape[0]):
        for atom in range(bounds.shape[0] - 1):
            exp2_row_sums_diff(p[m], a[m], c[m], b[m], sigma, bounds[atom], bounds[atom + 1],
                               skip, out[m, :, atom])
