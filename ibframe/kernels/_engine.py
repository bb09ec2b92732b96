r"""Blocked, pruned log-sum-exp of mixture components at MC points (see :mod:`.mixture`).

For points :math:`p_k = \mu_{o(k)} + \beta z_k`, each drawn from a known centre :math:`o(k)`,
:func:`log_sums` returns

.. math::  L_{ka} = \log \sum_{j \in a} w_j\, e^{s(\beta^2\|z_k\|^2 - \|p_k - \mu_j\|^2)}

for every *atom* :math:`a` of a partition of the centres (the intersections of the groups a
caller asks for). The exponent is relative to the point's own centre, where it is 0, so a sum
that includes the own centre cannot underflow. Terms are evaluated as powers of two (float32
``exp2`` runs twice as fast as ``exp`` here) on workers that flush subnormal results to zero:
a term below :math:`10^{-37}` of the own term counts as 0 (or :math:`2^{-126}` in the fused
loop). Pruning leaves out terms below :func:`prune_floor`, at most :math:`2\cdot10^{-16}` of
a point's density.

Two exact ways to evaluate it, chosen per call by an estimate of their cost:

``dense``
    every point against every centre, in blocks of :data:`CPU_BLOCK` exponents: one GEMM of the
    augmented operands :math:`[2sp,\ s(o - \|p\|^2),\ 1] \cdot [\mu,\ 1,\ -s\|\mu\|^2 + \log w]`,
    then ``exp2`` and one row sum per atom. The centres are first centred on their mean;
    the GEMM runs in float32 while its estimated rounding error stays below
    :data:`FLOAT32_EXPONENT_TOL`, else in float64. With Numba (:mod:`._fused`) the three
    steps are one compiled loop, and where float32 inner products would round too much it
    forms exact differences :math:`p - \mu` instead of a float64 GEMM: from float32
    coordinates where the bound of :meth:`_Dense._difference_dtype` allows (1.7x faster), else
    from float64 ones.
``neighbours``
    only the centres within reach. A term is below the floor :math:`F` (:func:`prune_floor`) once
    :math:`\|p_k - \mu_j\|^2 > \beta^2\|z_k\|^2 - F/s`, so by the triangle
    inequality only centres within :math:`R_k = \sqrt{\beta^2\|z_k\|^2 - F/s} +
    \beta\|z_k\|` of the own centre can matter.

    With Numba on the CPU (:class:`_Leaves`, the *leaf route*), a k-d tree of the centres is built
    in a compiled loop (sliding-midpoint splits, leaves of at most :data:`_LEAF_CENTRES` unless all
    of a leaf's centres coincide, each node's bounding box), and each point walks it, skipping every
    node whose box lies beyond its reach :math:`\sqrt{\beta^2\|z_k\|^2 - F/s}`. The centres of each
    leaf it reaches (sorted by atom within the leaf) run through the dense pass's difference loop:
    differences from float64 coordinates rounded to float32, powers of two in float32, terms beyond
    the reach left out, the own centre's term added exactly apart. So the float32 exponents are as
    accurate as the dense difference form's, with no bound to check (2e-6 nat of float64 on the SZT
    run, against 6e-5 for the dense float32 pass). Rows whose float32 terms overflow (a centre far
    nearer a point than its own, in many dimensions) are redone in float64. The route's pairs are
    counted exactly on every :data:`_LEAF_SAMPLE`-th block of points (the same walk, without the
    arithmetic), and it is chosen where they cost less than the dense pass (:meth:`_Leaves.pays`).

    Without Numba, on CUDA, and for float64 exponentials, a k-d tree with sliding-midpoint splits
    (which keep clusters apart) cuts the points' own centres into chunks, its largest subtrees with
    at most :data:`_CHUNK_SOURCES` own centres and :data:`_CHUNK_CENTRES` centres; a chunk's
    candidates are the centres within reach of its bounding ball. A sample of the chunk's own
    centres is tested first. Where many pairs are in reach (a cluster), the chunk's points are
    evaluated densely against its candidates, about its centroid (float32 where the rounding
    estimate allows, else a float64 GEMM). Elsewhere every pair is tested (one GEMM of squared
    distances, in float32 about the centroid with a margin for its rounding) and the pairs in reach
    are evaluated with *exact differences*: :math:`s(\beta^2\|z\|^2 - \|p - \mu_j\|^2) = -2s\beta\,
    z\cdot\delta_j - s\|\delta_j\|^2`, :math:`\delta_j = \mu_{o} - \mu_j` formed in float64, so
    float32 loses nothing at small :math:`\beta` (no term of size :math:`sR^2` cancels). The points
    of own centres of similar degree run as one batched matrix product.

    Where that is cheaper (priced from a sample of 64 points, then from an exact count of the
    pairs, at most :data:`_MAX_PAIRS`), no chunks are planned: a k-d tree ball query about each point
    (radius :math:`\sqrt{\beta^2\|z_k\|^2 - F/s}`) lists its centres in reach,
    and each pair is evaluated once in float64.

There, the choice (:func:`log_sums`) samples 64 own centres for their pairs in reach, plans the chunks
when that is not most of the centres (nor so few pairs that the few-pairs route is plainly
cheap), and prices each path in units of one dense exponent with costs measured on this
project's 2-core machine (:data:`_COST_PLAN` and the rest). The few-pairs route's k-d tree
query is also timed on 256 points: where it would take longer than the dense pass (a wide reach
in many dimensions), the route is not taken. The estimate errs by up to ~2x either way, so
pruning is chosen below :data:`_PRUNE_BELOW` of the dense cost.
Every route equals the dense float64 kernel within float32's rounding.

Identical centres (same coordinates and atom) are merged first, their weights added: exact, and
a mixture of :math:`4\cdot10^6` samples of 4 distinct values becomes one of 4 centres.

On the CPU the blocks run on :mod:`._threads`'s pool of single-threaded workers.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from ibframe.errors import ParameterError
from ibframe.kernels import _fused as fused
from ibframe.kernels._threads import kernel_threads, run_parallel

Strategy = Literal["auto", "dense", "neighbours"]
STRATEGIES: tuple[str, ...] = ("auto", "dense", "neighbours")

PRUNE_TOLERANCE = 36.0
r"""Pruning leaves out at most :math:`e^{-36} \approx 2\cdot10^{-16}` of each point's density
(float64's rounding of it): see :func:`prune_floor`."""

LOG2E = 1.0 / math.log(2.0)
"""Exponents are evaluated in base 2: float32 ``exp2`` runs twice as fast as ``exp`` here."""

FLOAT32_EXPONENT_TOL = 1e-3
"""Largest estimated rounding error (in the exponent) that a float32 GEMM may introduce."""

CPU_BLOCK = 2**18
"""Exponents per CPU block: 1 MiB of float32, within a core's L2 (best measured under load)."""

CUDA_BLOCK = 2**25

_U32 = 2.0**-24
#: exponents (nats below a point's largest term) of the terms whose rounding counts
_NEAR_EXPONENT = 64.0
_MAX_COLS = 512  # columns per block: 512 x 512 blocks run the GEMM ~30% faster than 64 x 4096
_ITEM_BLOCKS = 16  # blocks per work item of the dense path
_DENSE_ONLY_EVALS = 2**22  # below this a dense pass is too cheap to plan around
#: fewer points than this run densely: the chooser's fixed work on the centres (a sample
#: of their reach, a k-d tree: a few hundred dense exponents per centre) would cost
#: more than pruning could save (a top-up of 49 points on 135,168 centres: 0.24 s
#: planned, 0.03 s dense)
_PLAN_POINTS = 512
_LEAF_CENTRES = 256  # centres per leaf of the leaf route (at most): 128 and 512 were slower
_LEAF_POINTS = 256  # points per work item of the leaf route
_LEAF_SAMPLE = 8  # the leaf route counts its pairs on every 8th work item
#: Dense exponents per pair of the leaf route, 1.5 + 0.2 d: measured 2.1-2.6 at d = 3, 2.3-3.0
#: at 4, 2.5 at 5 and 2.8 at 7 (SZT-sized pooled mixtures; at d = 7 a fixed 2 chose the leaf
#: route where it took 0.83 s against the dense pass's 0.68 s)
_LEAF_PAIR_COST = (1.5, 0.2)
_LEAF = 64  # centres per leaf of the k-d tree that orders the neighbour search
_CHUNK_SOURCES = 256  # own centres per chunk of the neighbour search
_CHUNK_CENTRES = 2048  # and centres under it: chunks stay small where the points are few
_FILL_SAMPLE = 32  # own centres of a chunk tested first, to choose its evaluation
_PLAN_SAMPLE = 32  # chunks whose candidates are counted to estimate the cost
_DENSE_FILL = 0.025  # a block of a chunk with more pairs in reach than this runs densely
# measured costs of the neighbour path, in units of one dense exponent (single thread): per
# centre planned, per pair tested, per exponent of a chunk evaluated densely, per exact pair
_COST_PLAN = 30.0
_COST_TEST = 2.0
_COST_LOCAL = 1.4
_COST_PAIR = 60.0
_COST_SCAN = 3.0  # per chunk, per centre scanned for its candidates
_COST_CHUNK = 2e5  # per chunk, its fixed work (some 50 small torch calls)
_DENSE_SHARE = 0.3  # sampled pairs in reach above this share of the centres: no pruning
# the few-pairs route (every pair found by a k-d tree ball query about each point, evaluated on
# its own, no chunks) is priced against the chunks' where at most this many pairs are in reach
# (each is a Python int on the way: 2**23 of them take ~300 MiB)
_MAX_PAIRS = 2**23
_COST_QUERY = 40.0  # per point queried, per centre in the tree (its build), in the same units
_PAIR_BLOCK = 2**16  # pairs per work item of the few-pairs route
# prune only below this share of the dense cost: the estimate errs by up to ~2x either way.
# The unit is the torch path's exponent; the fused loop's costs 0.4-0.7 of it, but pricing the
# dense pass so made the chooser take it for SZT h3 at epoch 10,000 (1.17 s) where the pruned
# path takes 0.52 s, so the dense cost stays in the torch path's units
_PRUNE_BELOW = 0.6
_QUERY_SAMPLE = 256  # points listed first (one worker): their time prices the whole query
_NO_PLAN_BELOW = 0.05  # few pairs below this share of the dense cost: no chunks are planned


@dataclass(frozen=True)
class Problem:
    """What :func:`log_sums` evaluates; see the module notes."""

    centers: torch.Tensor
    """``(b, n, d)`` float64."""
    log_weights: torch.Tensor
    """``(b, n)`` float64, :math:`\\log w_j` (``-inf`` for a zero weight)."""
    atoms: torch.Tensor
    """``(n,)`` int64 atom of each centre, shared by the mixtures."""
    n_atoms: int
    own: torch.Tensor
    """``(b, N)`` int64, the centre each point is drawn from."""
    noise: torch.Tensor | None
    """``(b, N, d)`` standard normal :math:`z` (``None``: the points are the centres)."""
    beta: float
    scale: float
    """:math:`s` of :math:`e^{-s\\|p - \\mu\\|^2}`."""
    exp_dtype: torch.dtype


def log_sums(problem: Problem, strategy: str = "auto") -> tuple[torch.Tensor, str]:
    """``(b, N, A)`` float64 log sums per atom (module notes), and the strategy used.

    ``"auto"`` prunes (``"neighbours"``) where its estimated cost is below the dense pass's
    (the leaf route, whose pairs are counted) or below 0.6 of it (the chunks route, whose cost
    is estimated from a sample); batches of mixtures, small problems and few points are
    always dense.
    """
    b, n_points = problem.own.shape
    if b == 1:
        problem = _merge_duplicates(_drop_weightless(problem))
    out = torch.empty(b, n_points, problem.n_atoms, dtype=torch.float64,
                      device=problem.centers.device)
    dense_evals = n_points * problem.centers.shape[1]
    plannable = b == 1 and dense_evals > _DENSE_ONLY_EVALS and n_points >= _PLAN_POINTS
    if b == 1 and _fusable(problem) and (strategy == "neighbours"
                                         or (strategy == "auto" and plannable)):
        leaves = _Leaves(problem)
        if strategy == "neighbours" or leaves.pays(dense_evals):
            leaves.run(out)
            return out, "neighbours"
        _Dense(problem).run(out)
        return out, "dense"
    if (strategy == "neighbours" and b == 1) or (
        strategy == "auto" and b == 1 and dense_evals > _DENSE_ONLY_EVALS
        and n_points >= _PLAN_POINTS
    ):
        pruned = _Neighbours(problem)
        cost = pruned.estimated_cost()  # also chooses between the chunks and few pairs
        if strategy == "neighbours" or cost < _PRUNE_BELOW * dense_evals:
            pruned.run(out)
            return out, "neighbours"
    _Dense(problem).run(out)
    return out, "dense"


# --------------------------------------------------------------------------------------------
# shared pieces


def _run(device: torch.device, work: Callable[[object], None], items: list[object]) -> None:
    """CPU blocks on the worker pool; CUDA blocks in order in this thread."""
    if device.type == "cpu":
        run_parallel(work, items)
    else:
        for item in items:
            work(item)


_buffers = threading.local()


def _buffer(dtype: torch.dtype, count: int, device: torch.device, slot: int = 0) -> torch.Tensor:
    """A per-thread scratch buffer (fresh multi-MiB buffers would page-fault on every block)."""
    store = getattr(_buffers, "store", None)
    if store is None:
        store = _buffers.store = {}
    key = (dtype, device, slot)
    buf = store.get(key)
    if buf is None or buf.numel() < count:
        buf = store[key] = torch.empty(max(count, 1), dtype=dtype, device=device)
    return buf[:count]


def prune_floor(problem: Problem) -> float:
    r"""The exponent (relative to the largest weight's own term) below which pruning leaves a
    term out, for one mixture.

    A left-out term is below :math:`e^{F}` and there are fewer than :math:`n` of them, while
    the point's sum is at least its own term, :math:`w_{own}/w_{max}`. So with
    :math:`F = -(\text{tol} + \ln n + \ln(w_{max}/w_{min}))` the left-out share of every
    point's density is below :math:`e^{-\text{tol}}` (:data:`PRUNE_TOLERANCE`). A fixed floor
    would have to assume the worst :math:`n`; this one reaches no further than it must, which
    in :math:`d` dimensions saves a power :math:`d/2` of the reach.
    """
    lw = problem.log_weights[0]
    finite = lw[torch.isfinite(lw)]
    spread = float(finite.max() - finite.min()) if finite.numel() else 0.0
    return -(PRUNE_TOLERANCE + math.log(max(2, lw.numel())) + spread)


def _reach(problem: Problem, own_sq: torch.Tensor, floor: float) -> torch.Tensor:
    """Per point, the distance from the point beyond which every term is below ``floor``."""
    return (own_sq - floor / problem.scale).sqrt()


def _point_radii(problem: Problem, own_sq: torch.Tensor, floor: float) -> torch.Tensor:
    """Per point, the distance from its own centre beyond which every term is below ``floor``."""
    return _reach(problem, own_sq, floor) + own_sq.sqrt()


def _own_sq(problem: Problem) -> torch.Tensor:
    r""":math:`o_k = \beta^2 \|z_k\|^2`, ``(b, N)`` float64 (zero without noise)."""
    if problem.noise is None:
        return torch.zeros(problem.own.shape, dtype=torch.float64, device=problem.own.device)
    z = problem.noise.to(torch.float64)
    return problem.beta**2 * (z * z).sum(-1)


def _drop_weightless(problem: Problem) -> Problem:
    """Leave out the centres of zero weight (one mixture): they add nothing."""
    keep = torch.isfinite(problem.log_weights[0])
    if bool(keep.all()):
        return problem
    index = torch.cumsum(keep, 0) - 1
    if not bool(keep[problem.own].all()):
        msg = "every MC point must be drawn from a centre of positive weight"
        raise ParameterError(msg)
    return replace(
        problem,
        centers=problem.centers[:, keep],
        log_weights=problem.log_weights[:, keep],
        atoms=problem.atoms[keep],
        own=index[problem.own],
    )


def _merge_duplicates(problem: Problem) -> Problem:
    """Merge centres with equal coordinates and atom (one mixture); their weights add up."""
    centers = problem.centers[0]
    n = centers.shape[0]
    if n < 2 or problem.own.shape[1] * n <= _DENSE_ONLY_EVALS:
        return problem
    rows = torch.cat([centers + 0.0, problem.atoms[:, None].to(torch.float64)], dim=1)
    bits = rows.cpu().numpy().view(np.uint64)
    multipliers = np.random.default_rng(0x1BF).integers(1, 2**63, size=bits.shape[1],
                                                        dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        keys = (bits * multipliers).sum(axis=1, dtype=np.uint64)
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if len(unique) == n:
        return problem
    if not np.array_equal(bits, bits[first[inverse]]):
        return problem  # a hash collision: leave the centres as they are
    index = torch.from_numpy(inverse.reshape(-1)).to(centers.device)
    keep = torch.from_numpy(first).to(centers.device)
    lw = problem.log_weights[0]
    shift = lw.max()
    sums = torch.zeros(len(unique), dtype=torch.float64, device=centers.device)
    sums.index_add_(0, index, (lw - shift).exp())
    merged = sums.log() + shift
    return replace(
        problem,
        centers=centers[keep][None],
        log_weights=merged[None],
        atoms=problem.atoms[keep],
        own=index[problem.own],
    )


# --------------------------------------------------------------------------------------------
# dense


class _Dense:
    """Every point against every centre (module notes)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        device = problem.centers.device
        self.block = CPU_BLOCK if device.type == "cpu" else CUDA_BLOCK
        self.workers = kernel_threads() if device.type == "cpu" else 1
        # centres sorted by atom, so that every atom is a run of columns
        order = torch.argsort(problem.atoms, stable=True)
        self.bounds = torch.searchsorted(
            problem.atoms[order], torch.arange(problem.n_atoms + 1, device=device)
        ).tolist()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=device)
        self.own = inverse[problem.own]
        centers = problem.centers[:, order]
        self.centers = centers - centers.mean(dim=1, keepdim=True)
        lw = problem.log_weights[:, order]
        self.lw_ref = lw.max(dim=1).values
        c_sq = (self.centers * self.centers).sum(-1)
        ones = torch.ones_like(c_sq)[..., None]
        const = -problem.scale * c_sq + (lw - self.lw_ref[:, None])
        operand = torch.cat([self.centers, ones, const[..., None]], dim=-1)
        self.own_sq = _own_sq(problem)
        # how far the centres, and the points from their centres, lie: bounds on the rounding
        self.radius = math.sqrt(float(c_sq.max()))
        self.z_max = math.sqrt(float(self.own_sq.max()))
        self.gemm_dtype = self._gemm_dtype()
        self.operand64 = operand.transpose(1, 2).contiguous()
        # base 2 (module notes): the constant row scaled here, the points' first d + 1 columns
        # in _item; each "1" stays exact, so log2(e) is never rounded to float32 as a factor
        self.operand = self.operand64.clone()
        self.operand[:, -1] *= LOG2E
        self.operand = self.operand.to(self.gemm_dtype)
        # the fused loop (a batch of small mixtures in one call); where a float32 inner
        # product would round too much, it forms exact differences instead
        self.fused = (_fusable(problem)
                      and (self.gemm_dtype == torch.float64
                           or _fused_pays(operand.shape[-1], self.gemm_dtype)))
        if self.fused and self.gemm_dtype == torch.float64:
            self.diff_dtype = self._difference_dtype()
            self.centers_t = self.centers.transpose(1, 2).to(self.diff_dtype).contiguous()
            self.col_terms = (LOG2E * (lw - self.lw_ref[:, None])).to(torch.float32)

    def _gemm_dtype(self) -> torch.dtype:
        problem = self.problem
        d = self.centers.shape[2]
        reach = (2.0 * self.radius + self.z_max) ** 2 + self.z_max**2
        if math.sqrt(d + 2) * _U32 * problem.scale * reach > FLOAT32_EXPONENT_TOL:
            return torch.float64
        return problem.exp_dtype

    def _difference_dtype(self) -> torch.dtype:
        r"""float32 for the exact-difference form where its rounding stays within
        :data:`FLOAT32_EXPONENT_TOL`, else float64.

        With :math:`p` and :math:`\mu` rounded to float32 (each coordinate to relative
        :math:`u`) and their difference :math:`\delta` rounded once more, the squared distance
        is off by at most :math:`2u\|\delta\|(\|p\| + \|\mu\| + \|\delta\|)` (Cauchy-Schwarz),
        plus :math:`d\,u\|\delta\|^2` from summing in float32. Only terms within
        :data:`_NEAR_EXPONENT` of the largest shape a log sum, so :math:`s\|\delta\|^2 \le`
        that; farther terms are off by a fraction :math:`\sim 10^{-5}` of an exponent far
        below :math:`-F`. Unlike the inner-product form, the bound grows with the extent
        :math:`R` only linearly and with :math:`\sqrt s`, not :math:`s`.
        """
        scale, d = self.problem.scale, self.centers.shape[2]
        near = math.sqrt(_NEAR_EXPONENT / scale)
        error = (2 * _U32 * scale * near * (2 * (self.radius + self.z_max) + near)
                 + d * _U32 * _NEAR_EXPONENT)
        return torch.float32 if error <= FLOAT32_EXPONENT_TOL else torch.float64

    def run(self, out: torch.Tensor) -> None:
        b, n_points = self.own.shape
        n = self.centers.shape[1]
        # items of about _ITEM_BLOCKS blocks each (the per-item Python work is then small),
        # but enough of them to keep every worker busy to the end
        evals = b * n_points * n
        item = max(self.block, min(_ITEM_BLOCKS * self.block, evals // (4 * self.workers)))
        if n_points * n <= item:
            step = max(1, item // (n_points * n))
            items = [(m, min(b, m + step), 0, n_points) for m in range(0, b, step)]
        else:
            step = max(1, item // n)
            items = [(m, m + 1, r, min(n_points, r + step))
                     for m in range(b) for r in range(0, n_points, step)]

        def work(item: object) -> None:
            m0, m1, r0, r1 = item  # type: ignore[misc]
            out[m0:m1, r0:r1] = self._item(m0, m1, r0, r1)

        _run(self.centers.device, work, items)

    def _points(self, m0: int, m1: int, r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``r0:r1`` of mixtures ``m0:m1`` (centred coordinates) and their :math:`o_k`."""
        problem = self.problem
        own = self.own[m0:m1, r0:r1]
        points = torch.gather(
            self.centers[m0:m1], 1, own[..., None].expand(-1, -1, self.centers.shape[2])
        )
        if problem.noise is not None:
            points = points + problem.beta * problem.noise[m0:m1, r0:r1].to(torch.float64)
        return points, self.own_sq[m0:m1, r0:r1]

    def _point_operand(self, points: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        r""":math:`[2sp,\ s(o - \|p\|^2),\ 1]`, ``(m, rows, d + 2)`` float64."""
        scale = self.problem.scale
        p_sq = (points * points).sum(-1)
        return torch.cat(
            [2.0 * scale * points, (scale * (o - p_sq))[..., None], torch.ones_like(o)[..., None]],
            dim=-1,
        )

    def _item(self, m0: int, m1: int, r0: int, r1: int) -> torch.Tensor:
        """Log sums ``(m1 - m0, r1 - r0, A)`` of points ``r0:r1`` of mixtures ``m0:m1``."""
        exp_dtype = self.problem.exp_dtype
        points, o = self._points(m0, m1, r0, r1)
        p_aug64 = self._point_operand(points, o)
        p_aug = _base2(p_aug64).to(self.gemm_dtype)
        mixtures, rows = p_aug.shape[:2]
        sums = torch.zeros(mixtures, rows, self.problem.n_atoms, dtype=torch.float64,
                           device=p_aug.device)
        if self.fused:
            self._fused_sums(sums, p_aug, points, o, m0)
            return self._logs(sums, p_aug64, m0, m1)
        operand = self.operand[m0:m1]
        # blocks of about self.block exponents: wide where the item has few rows
        width = max(_MAX_COLS, self.block // (mixtures * rows))
        for atom in range(self.problem.n_atoms):
            a0, a1 = self.bounds[atom], self.bounds[atom + 1]
            for j0 in range(a0, a1, width):
                j1 = min(a1, j0 + width)
                row_step = max(1, self.block // (mixtures * (j1 - j0)))
                for i0 in range(0, rows, row_step):
                    i1 = min(rows, i0 + row_step)
                    shape = (mixtures, i1 - i0, j1 - j0)
                    count = math.prod(shape)
                    block = torch.bmm(
                        p_aug[:, i0:i1], operand[:, :, j0:j1],
                        out=_buffer(self.gemm_dtype, count, p_aug.device).view(shape),
                    )
                    if self.gemm_dtype != exp_dtype:
                        block = _buffer(exp_dtype, count, p_aug.device, 1).view(shape).copy_(block)
                    block.exp2_()
                    sums[:, i0:i1, atom] += block.sum(-1)
        return self._logs(sums, p_aug64, m0, m1)

    def _fused_sums(self, sums: torch.Tensor, p_aug: torch.Tensor, points: torch.Tensor,
                    o: torch.Tensor, m0: int) -> None:
        """The item's sums (mixtures from ``m0``) by the fused loop (:mod:`._fused`), all its
        mixtures and atoms in one call: inner products, or exact differences where float32
        would round."""
        m1 = m0 + p_aug.shape[0]
        bounds = torch.tensor(self.bounds, dtype=torch.int64)
        if self.gemm_dtype != torch.float64:
            fused.exp2_row_sums_batch(p_aug.contiguous(), self.operand[m0:m1], bounds, sums)
            return
        sigma = LOG2E * self.problem.scale
        row_terms = (sigma * o).to(torch.float32).contiguous()
        fused.exp2_row_sums_diff_batch(points.to(self.diff_dtype).contiguous(), row_terms,
                                       self.centers_t[m0:m1], self.col_terms[m0:m1].contiguous(),
                                       sigma, bounds, sums)

    def _logs(self, sums: torch.Tensor, p_aug64: torch.Tensor, m0: int, m1: int) -> torch.Tensor:
        logs = sums.log_() + self.lw_ref[m0:m1, None, None]
        overflow = torch.isposinf(logs).any(-1)
        if bool(overflow.any()):
            self._recompute(logs, overflow, p_aug64, m0, m1)
        return logs

    def _recompute(self, logs: torch.Tensor, overflow: torch.Tensor, p_aug64: torch.Tensor,
                   m0: int, m1: int) -> None:
        """Redo, in place, rows whose float32 sum overflowed: float64 with a max shift."""
        mix_idx, row_idx = torch.nonzero(overflow, as_tuple=True)
        for k in torch.unique(mix_idx).tolist():
            rows = row_idx[mix_idx == k]
            exponents = p_aug64[k, rows] @ self.operand64[m0 + k]
            for atom in range(self.problem.n_atoms):
                a0, a1 = self.bounds[atom], self.bounds[atom + 1]
                logs[k, rows, atom] = (
                    torch.logsumexp(exponents[:, a0:a1], dim=-1) + self.lw_ref[m0 + k]
                    if a1 > a0 else -math.inf
                )


# --------------------------------------------------------------------------------------------
# neighbours


class _Neighbours:
    """Each point against the centres within reach of its own centre (module notes)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        device = problem.centers.device
        self.device = device
        self.block = CPU_BLOCK if device.type == "cpu" else CUDA_BLOCK
        centers = problem.centers[0]
        self.centers = centers - centers.mean(dim=0)
        self.c_sq = (self.centers * self.centers).sum(-1)
        lw = problem.log_weights[0]
        self.lw_ref = float(lw.max())
        self.lw = lw - self.lw_ref
        self.own_sq = _own_sq(problem)[0]
        self.floor = prune_floor(problem)
        radii = _point_radii(problem, self.own_sq, self.floor)
        own = problem.own[0]
        # the points grouped by own centre: sources, their point ranges and reach
        self.point_order = torch.argsort(own, stable=True)
        sources, counts = torch.unique_consecutive(own[self.point_order], return_counts=True)
        self.sources = sources
        self.starts = torch.cumsum(counts, 0) - counts
        self.counts = counts
        n_src = sources.numel()
        reach = torch.zeros(n_src, dtype=torch.float64, device=device)
        slot = torch.repeat_interleave(torch.arange(n_src, device=device), counts)
        self.reach = reach.scatter_reduce(0, slot, radii[self.point_order], "amax",
                                          include_self=False)
        self.point_source = torch.empty_like(slot).index_put_((self.point_order,), slot)
        """Per point, the index of its own centre in :attr:`sources`."""
        self._plan: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None
        self.few_pairs = False
        """Whether :meth:`run` takes the few-pairs route (set by :meth:`estimated_cost`)."""
        self._pairs: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        """The route's pairs (:meth:`_listed_pairs`), once it is chosen."""

    # planning ------------------------------------------------------------------------------

    def plan(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """Chunks of sources (indices into :attr:`sources`): members, centroid and reach.

        A k-d tree with sliding-midpoint splits (which keep clusters apart) orders the centres;
        its largest subtrees holding at most :data:`_CHUNK_SOURCES` sources and
        :data:`_CHUNK_CENTRES` centres are the chunks. A centre is a candidate of a chunk when
        it lies within the chunk's reach of its centroid: the chunk's radius plus the largest
        reach of its sources (:meth:`candidates`, found when the chunk is evaluated).
        """
        if self._plan is not None:
            return self._plan
        coords = self.centers.cpu().numpy()
        tree = cKDTree(coords, leafsize=_LEAF, copy_data=False)
        position = np.empty_like(tree.indices)
        position[tree.indices] = np.arange(tree.indices.size)
        src_pos = position[self.sources.cpu().numpy()]
        src_by_pos = np.argsort(src_pos, kind="stable")
        sorted_pos = src_pos[src_by_pos]
        chunks = []
        stack = [tree.tree]
        while stack:
            node = stack.pop()
            lo, hi = np.searchsorted(sorted_pos, [node.start_idx, node.end_idx])
            if hi == lo:
                continue
            small = node.end_idx - node.start_idx <= _CHUNK_CENTRES
            if (hi - lo <= _CHUNK_SOURCES and small) or node.split_dim == -1:
                chunks.append(torch.from_numpy(src_by_pos[lo:hi]).to(self.device))
            else:
                stack += [node.greater, node.lesser]
        plan = []
        for members in chunks:
            own_xyz = torch.index_select(self.centers, 0,
                                         torch.index_select(self.sources, 0, members))
            centroid = own_xyz.mean(dim=0)
            reach = (own_xyz - centroid).norm(dim=1).max() + self.reach[members].max()
            plan.append((members, centroid, float(reach) * (1 + 1e-9) + 1e-12))
        self._plan = plan
        return plan

    def _within(self, centroid: torch.Tensor, reach: float) -> torch.Tensor:
        """Which centres lie within ``reach`` of ``centroid`` (bool ``(n,)``)."""
        limit = reach * reach - float(centroid @ centroid)
        return torch.addmv(self.c_sq, self.centers, centroid, alpha=-2.0) <= limit

    def candidates(self, centroid: torch.Tensor, reach: float) -> torch.Tensor:
        """Indices of the centres within ``reach`` of ``centroid``, sorted by atom."""
        found = torch.nonzero(self._within(centroid, reach)).squeeze(1)
        if self.problem.n_atoms > 1:
            atoms = torch.index_select(self.problem.atoms, 0, found)
            found = torch.index_select(found, 0, torch.argsort(atoms, stable=True))
        return found

    def estimated_cost(self) -> float:
        """Cost of this path in units of one dense exponent (the chooser's yardstick).

        A sample of 64 own centres gives the pairs in reach per point; where that is a large
        part of the centres no planning is done. Otherwise the candidates of a sample of the
        chunks give the pairs tested and the dense work of the chunks, and the pairs in reach
        decide which of the two the evaluation will do.
        """
        n = self.centers.shape[0]
        n_points = self.problem.own.shape[1]
        rng = np.random.default_rng(0)
        n_src = self.sources.numel()
        sample = torch.from_numpy(rng.choice(n_src, size=min(64, n_src), replace=False)).to(
            self.device)
        degree = torch.tensor([
            float(self._within(self.centers[self.sources[k]], float(self.reach[k]) * (1 + 1e-9))
                  .sum())
            for k in sample.tolist()
        ], dtype=torch.float64, device=self.device)
        weight = self.counts[sample].to(torch.float64)
        per_point = float((degree * weight).sum() / weight.sum())
        if per_point > _DENSE_SHARE * n:
            return math.inf
        query = _COST_QUERY * (n + n_points)
        few = query + _COST_PAIR * per_point * n_points
        if per_point * n_points <= _MAX_PAIRS and few < _NO_PLAN_BELOW * n * n_points:
            # so cheap that the chunks could not gain much: not even planned
            cost = self._few_pairs_cost(query, math.inf)
            if cost < math.inf:
                return cost
        plan = self.plan()
        picked = rng.choice(len(plan), size=min(_PLAN_SAMPLE, len(plan)), replace=False)
        tested = local = 0.0
        for index in picked:
            members, centroid, reach = plan[index]
            count = int(self._within(centroid, reach).sum())
            tested += members.numel() * count
            local += int(self.counts[members].sum()) * count
        share = len(plan) / len(picked)
        evaluation = min(_COST_LOCAL * local * share, _COST_PAIR * per_point * n_points)
        chunks = len(plan) * (_COST_SCAN * n + _COST_CHUNK)
        chunked = _COST_PLAN * n + chunks + _COST_TEST * tested * share + evaluation
        if per_point * n_points <= _MAX_PAIRS and few < chunked:
            return min(chunked, self._few_pairs_cost(query, chunked))
        return chunked

    def _few_pairs_cost(self, query: float, other: float) -> float:
        """The few-pairs route's cost, where it is below ``other`` (and then chosen), else inf.

        The pairs are listed here, once (:meth:`_listed_pairs`), and kept for :meth:`run`: the
        pairs of the 64 sampled own centres may miss a rare cluster, so the cost is priced on
        the pairs themselves, and a listing that would outlast the dense pass or pass
        :data:`_MAX_PAIRS` is given up part-way.
        """
        listed = self._listed_pairs(self._dense_seconds())
        if listed is None:
            return math.inf
        cost = query + _COST_PAIR * int(listed[0].sum())
        if cost < other:
            self.few_pairs = True
            self._pairs = listed
            return cost
        return math.inf

    def _listed_pairs(self, budget: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Every (point, centre) pair with a term above the floor (and, from a ball shared by
        several points, some below it): each point's number of pairs and their centres, point
        by point; None where the listing is given up.

        The balls of :attr:`_ball` are queried in random order, in blocks that grow from
        :data:`_QUERY_SAMPLE` (one worker: starting threads would cost more than its query),
        and the listing stops as soon as the pairs so far, or the time so far, extrapolated to
        every point, pass :data:`_MAX_PAIRS` or ``budget`` seconds. A k-d tree query visits
        far more than the pairs it finds where the reach is wide in many dimensions (0.3 s
        for 8 pairs per point at d = 10, beta = 0.1, where the dense pass takes 0.09 s).
        """
        tree, _, query = self._ball
        n_points = self.problem.own.shape[1]
        shared = query["shared"]
        n_balls = shared.size
        order = np.random.default_rng(1).permutation(n_balls)
        ball_degree = np.zeros(n_balls, dtype=np.int64)
        found: list[np.ndarray] = []
        done = covered = pairs = 0
        size, started = _QUERY_SAMPLE, time.perf_counter()
        while done < n_balls:
            rows = order[done:done + size]
            lists = tree.query_ball_point(x=query["x"][rows], r=query["r"][rows],
                                          return_sorted=False,
                                          workers=query["workers"] if done else 1)
            degree = np.fromiter(map(len, lists), dtype=np.int64, count=rows.size)
            ball_degree[rows] = degree
            found.append(np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64,
                                     count=int(degree.sum())))
            done += rows.size
            covered += int(shared[rows].sum())
            pairs += int(degree @ shared[rows])
            if pairs * n_points / covered > _MAX_PAIRS or (
                    done < n_balls and (time.perf_counter() - started) * n_balls / done > budget):
                return None
            size *= 8
        # each ball's centres (they were listed in ``order``), then each point's
        listed = np.concatenate(found)
        first = np.zeros(n_balls + 1, dtype=np.int64)
        np.cumsum(ball_degree[order], out=first[1:])
        where = np.empty(n_balls, dtype=np.int64)
        where[order] = first[:-1]
        owner = query["owner"]
        degree = ball_degree[owner]
        take = _expand_ranges(torch.from_numpy(where[owner]), torch.from_numpy(degree)).numpy()
        return degree, listed[take]

    # evaluation ----------------------------------------------------------------------------

    def run(self, out: torch.Tensor) -> None:
        if self.few_pairs:
            self._run_pairs(out)
            return
        problem = self.problem
        n_points = problem.own.shape[1]
        # the own term of every point is exp(0) w_own, in the own centre's atom
        own = problem.own[0]
        sums = torch.zeros(n_points, problem.n_atoms, dtype=torch.float64, device=self.device)
        sums[torch.arange(n_points, device=self.device), problem.atoms[own]] = self.lw[own].exp()

        def work(item: object) -> None:
            members, centroid, reach = item  # type: ignore[misc]
            self._chunk(members, self.candidates(centroid, reach), sums)

        _run(self.device, work, list(self.plan()))
        out[0] = sums.log_() + self.lw_ref

    @functools.cached_property
    def _ball(self) -> tuple[cKDTree, torch.Tensor, dict[str, Any]]:
        r"""A k-d tree of the centres, the points (float64) and the ball queries that find
        every centre with a term above the floor, :math:`\|p_k - \mu_j\|^2 \le
        \beta^2\|z_k\|^2 - F/s` (:func:`_reach`, :func:`prune_floor`).

        Where the own centres have two or more points each on average, one ball about each own
        centre serves all its points (its radius, :attr:`reach`, holds every centre in reach of
        any of them): at 4 points per centre 4x faster than a ball about each point (6 ms
        against 25 ms for 16,384 points on 4,096 centres at d = 10, beta = 0.01), for 2% more
        pairs there (40% at d = 3), whose terms are evaluated exactly like the others. With
        about one point per centre (sp-mi's pooled mixtures) the wider balls cost more than
        they share, so each point gets its own. ``query["owner"]`` is each point's ball,
        ``query["shared"]`` the number of points of each ball.
        """
        problem = self.problem
        points = torch.index_select(self.centers, 0, problem.own[0])
        if problem.noise is not None:
            points = points + problem.beta * problem.noise[0].to(torch.float64)
        tree = cKDTree(self.centers.cpu().numpy(), leafsize=16, copy_data=False)
        if 2 * self.sources.numel() <= points.shape[0]:
            centre, radius = torch.index_select(self.centers, 0, self.sources), self.reach
            owner, shared = self.point_source, self.counts
        else:
            centre, radius = points, _reach(problem, self.own_sq, self.floor)
            owner = torch.arange(points.shape[0], device=self.device)
            shared = torch.ones_like(owner)
        query = {"x": centre.cpu().numpy(), "r": (radius * (1 + 1e-9) + 1e-12).cpu().numpy(),
                 "owner": owner.cpu().numpy(), "shared": shared.cpu().numpy(),
                 "workers": kernel_threads()}
        return tree, points, query

    def _dense_seconds(self) -> float:
        """Seconds the dense pass would take on the torch path (measured speed; the fused
        loop is faster, so the veto errs towards the few-pairs route)."""
        evals = self.problem.own.shape[1] * self.centers.shape[0]
        return evals * _dense_seconds_per_exponent()

    def _run_pairs(self, out: torch.Tensor) -> None:
        """The few-pairs route: every pair listed by :meth:`_listed_pairs`, evaluated on its own
        with exact differences in float64, with no chunk planning."""
        problem = self.problem
        n_points = problem.own.shape[1]
        _, points, _ = self._ball
        degree, listed = self._pairs
        neighbours = torch.from_numpy(listed).to(self.device)
        degree_t = torch.from_numpy(degree).to(self.device)
        start = np.concatenate([[0], np.cumsum(degree)])  # point k's pairs: start[k]:start[k+1]
        # items of whole points, about _PAIR_BLOCK pairs each
        bounds = np.searchsorted(start[1:], np.arange(_PAIR_BLOCK, start[-1], _PAIR_BLOCK),
                                 side="right")
        cuts = [0, *np.unique(bounds).tolist(), n_points]
        items = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
        sums = torch.zeros(n_points, problem.n_atoms, dtype=torch.float64, device=self.device)

        def work(item: object) -> None:
            k0, k1 = item  # type: ignore[misc]
            j0, j1 = int(start[k0]), int(start[k1])
            rows = torch.repeat_interleave(torch.arange(k0, k1, device=self.device),
                                           degree_t[k0:k1])
            ids = neighbours[j0:j1]
            delta = torch.index_select(points, 0, rows) - torch.index_select(self.centers, 0, ids)
            exponent = (torch.index_select(self.own_sq, 0, rows) - (delta * delta).sum(-1))
            exponent.mul_(problem.scale).add_(torch.index_select(self.lw, 0, ids))
            terms = exponent.exp_()
            slot = rows * problem.n_atoms + torch.index_select(problem.atoms, 0, ids)
            sums.view(-1).index_add_(0, slot, terms)

        _run(self.device, work, items)
        out[0] = sums.log_() + self.lw_ref

    def _chunk(self, members: torch.Tensor, candidates: torch.Tensor, sums: torch.Tensor) -> None:
        r"""Add to ``sums`` the terms of the chunk's points with every candidate within reach
        but their own centre.

        A sample of the chunk's own centres is tested against the candidates first. Where many
        pairs are in reach (clusters) the chunk's points are evaluated densely against all
        candidates, about the chunk's centroid. Otherwise every own centre is tested, column
        block by column block (one GEMM of :math:`2 s \cdot c - \|c\|^2`, compared with
        :math:`\|s\|^2 - R^2`, about the centroid in float32 with a safety margin), and only
        the pairs in reach are evaluated, with exact differences.
        """
        own_ids = torch.index_select(self.sources, 0, members)
        own_xyz = torch.index_select(self.centers, 0, own_ids)
        origin = own_xyz.mean(dim=0)
        cand = torch.index_select(self.centers, 0, candidates) - origin
        atoms = torch.index_select(self.problem.atoms, 0, candidates)
        bounds = torch.searchsorted(
            atoms, torch.arange(self.problem.n_atoms + 1, device=self.device)).tolist()
        # where each own centre sits among the candidates
        sorted_ids, perm = torch.sort(candidates)
        own_pos = perm[torch.searchsorted(sorted_ids, own_ids)]
        test = _ReachTest(self, members, own_xyz - origin, cand)
        sample = torch.arange(0, members.numel(), max(1, members.numel() // _FILL_SAMPLE),
                              device=self.device)
        near = test.near(sample, 0, candidates.numel())
        found = int(near.sum()) - sample.numel()  # every own centre finds itself
        if found > _DENSE_FILL * near.numel():
            local = _LocalDense(self, members, origin, candidates, cand)
            for atom in range(self.problem.n_atoms):
                if bounds[atom + 1] > bounds[atom]:
                    local.add(bounds[atom], bounds[atom + 1], atom, own_pos, sums)
            return
        rows_found: list[torch.Tensor] = []
        ids_found: list[torch.Tensor] = []
        every = torch.arange(members.numel(), device=self.device)
        step = max(1, self.block // max(1, members.numel()))
        for j0 in range(0, candidates.numel(), step):
            j1 = min(candidates.numel(), j0 + step)
            near = test.near(every, j0, j1)
            # every own centre finds itself; the rest are its neighbours
            extra = near.sum(dim=1) - ((own_pos >= j0) & (own_pos < j1)).to(torch.int64)
            busy = torch.nonzero(extra).squeeze(1)
            if busy.numel() == 0:
                continue
            rows, cols = torch.nonzero(torch.index_select(near, 0, busy), as_tuple=True)
            rows = torch.index_select(busy, 0, rows)
            ids = torch.index_select(candidates, 0, cols + j0)
            keep = torch.nonzero(ids != torch.index_select(own_ids, 0, rows)).squeeze(1)
            rows_found.append(torch.index_select(rows, 0, keep))
            ids_found.append(torch.index_select(ids, 0, keep))
        if rows_found:
            rows = torch.cat(rows_found)
            neighbours = torch.cat(ids_found)
            if len(rows_found) > 1:
                order = torch.argsort(rows, stable=True)
                rows, neighbours = rows[order], neighbours[order]
            if rows.numel():
                self._evaluate(members, rows, neighbours, sums)

    def _evaluate(self, members: torch.Tensor, rows: torch.Tensor, neighbours: torch.Tensor,
                  sums: torch.Tensor) -> None:
        """Add the exact terms of the (own centre ``members[rows]``, ``neighbours``) pairs.

        Own centres are grouped by degree (powers of two), padded to a common shape, and their
        points' noise multiplies the differences of centres in one batched product per group.
        """
        n_src = members.numel()
        degree = torch.bincount(rows, minlength=n_src)
        first = torch.cumsum(degree, 0) - degree
        busy = torch.nonzero(degree).squeeze(1)
        points = torch.index_select(self.counts, 0, torch.index_select(members, 0, busy))
        degrees = torch.index_select(degree, 0, busy)
        padded = busy.numel() * int(degrees.max()) * int(points.max())
        if padded <= max(self.block, 4 * int((degrees * points).sum())):
            size_class = torch.zeros_like(busy)  # one padded group wastes little
        else:
            size_class = torch.ceil(torch.log2(degrees.to(torch.float64))).to(torch.int64)
        for cls in torch.unique(size_class).tolist():
            group = busy[size_class == cls]
            deg_max = int(degree[group].max())
            pts_max = int(self.counts[members[group]].max())
            step = max(1, self.block // (deg_max * pts_max))
            for g0 in range(0, group.numel(), step):
                self._evaluate_group(members[group[g0:g0 + step]], degree[group[g0:g0 + step]],
                                     first[group[g0:g0 + step]], neighbours, deg_max, pts_max,
                                     sums)

    def _evaluate_group(self, sources: torch.Tensor, degree: torch.Tensor, first: torch.Tensor,
                        neighbours: torch.Tensor, deg_max: int, pts_max: int,
                        sums: torch.Tensor) -> None:
        problem = self.problem
        count = sources.numel()
        slots = torch.arange(deg_max, device=self.device)
        valid = slots[None, :] < degree[:, None]
        pair = (first[:, None] + slots[None, :]).clamp_(max=neighbours.numel() - 1)
        nb = _take(neighbours, pair)
        own_xyz = torch.index_select(self.centers, 0, torch.index_select(self.sources, 0, sources))
        delta = own_xyz[:, None, :] - _take(self.centers, nb)
        # padding gets an exponent of -inf: a term of 0
        cterm = torch.where(valid, -problem.scale * (delta * delta).sum(-1) + _take(self.lw, nb),
                            -math.inf)
        pslots = torch.arange(pts_max, device=self.device)
        counts = torch.index_select(self.counts, 0, sources)
        pvalid = pslots[None, :] < counts[:, None]
        pidx = (torch.index_select(self.starts, 0, sources)[:, None] + pslots[None, :]).clamp_(
            max=self.point_order.numel() - 1)
        point_ids = _take(self.point_order, pidx)
        # no exponent exceeds s o_k (the own term is 0): float32 exp overflows above ~88
        largest = problem.scale * float(_take(self.own_sq, point_ids).max())
        dtype = problem.exp_dtype if largest < 80.0 else torch.float64
        cterm = cterm * LOG2E  # exponents in base 2
        if problem.noise is None:
            exponent = cterm[:, None, :].expand(-1, pts_max, -1).to(dtype)
        else:
            z = _take(problem.noise[0], point_ids).to(dtype)
            exponent = torch.bmm(z, delta.transpose(1, 2).to(dtype))
            exponent.mul_(-2.0 * problem.scale * problem.beta * LOG2E).add_(
                cterm[:, None, :].to(dtype))
        exponent = exponent.exp2_()
        if problem.n_atoms == 1:
            part = exponent.sum(-1, keepdim=True, dtype=torch.float64)
        else:
            member = torch.zeros(count, deg_max, problem.n_atoms, dtype=dtype, device=self.device)
            member.scatter_(2, _take(problem.atoms, nb)[..., None], valid[..., None].to(dtype))
            part = torch.bmm(exponent, member).to(torch.float64)
        flat = pvalid.reshape(-1)
        sums.index_add_(0, point_ids.reshape(-1)[flat],
                        part.reshape(count * pts_max, -1)[flat])


class _ReachTest:
    """Which candidates lie within reach of which own centres of a chunk: squared distances
    by one GEMM about the chunk's centroid in float32, with a margin for its rounding."""

    def __init__(self, owner: _Neighbours, members: torch.Tensor, src: torch.Tensor,
                 cand: torch.Tensor) -> None:
        self.block = owner.block
        self.device = owner.device
        src32 = src.to(torch.float32)
        cand32 = cand.to(torch.float32)
        src_sq = (src32 * src32).sum(-1)
        cand_sq = (cand32 * cand32).sum(-1)
        d = src.shape[1]
        # float32 squared distances may err by this much; a wider test only costs time
        margin = (d + 2) * 4 * _U32 * float((src_sq.max().sqrt() + cand_sq.max().sqrt()) ** 2)
        reach = torch.index_select(owner.reach, 0, members)
        self.threshold = (src_sq.double() - reach**2 - margin).to(torch.float32)
        self.src_aug = torch.cat([src32, torch.ones_like(src_sq)[:, None]], dim=1)
        self.cand_aug = torch.cat([2.0 * cand32, -cand_sq[:, None]], dim=1).T.contiguous()

    def near(self, rows: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
        """``(len(rows), j1 - j0)`` bool: candidate ``j0 + j`` within reach of row ``i``."""
        shape = (rows.numel(), j1 - j0)
        score = torch.mm(torch.index_select(self.src_aug, 0, rows), self.cand_aug[:, j0:j1],
                         out=_buffer(torch.float32, math.prod(shape), self.device).view(shape))
        return score >= torch.index_select(self.threshold, 0, rows)[:, None]


class _LocalDense:
    """Dense evaluation of one chunk's points against runs of its candidates, in coordinates
    about the chunk's centroid (float32 while the rounding estimate allows, as for dense)."""

    def __init__(self, owner: _Neighbours, members: torch.Tensor, origin: torch.Tensor,
                 candidates: torch.Tensor, cand: torch.Tensor) -> None:
        problem = owner.problem
        self.owner = owner
        self.candidates = candidates
        counts = owner.counts[members]
        self.point_ids = owner.point_order[_expand_ranges(owner.starts[members], counts)]
        self.member_of_point = torch.repeat_interleave(
            torch.arange(members.numel(), device=owner.device), counts)
        points = owner.centers[problem.own[0][self.point_ids]] - origin
        if problem.noise is not None:
            points = points + problem.beta * problem.noise[0][self.point_ids].to(torch.float64)
        o = owner.own_sq[self.point_ids]
        scale = problem.scale
        p_sq = (points * points).sum(-1)
        p_aug = torch.cat([2.0 * scale * points, (scale * (o - p_sq))[:, None],
                           torch.ones_like(o)[:, None]], dim=1)
        c_sq = (cand * cand).sum(-1)
        # base 2, each "1" exact (as for the dense pass)
        self.c_aug = torch.cat([cand, torch.ones_like(c_sq)[:, None],
                                LOG2E * (-scale * c_sq + owner.lw[candidates])[:, None]], dim=1)
        reach = (math.sqrt(float(c_sq.max())) + math.sqrt(float(p_sq.max()))) ** 2 + float(
            o.max())
        # a stricter bar than the dense pass, as it is cheap to meet: float64 otherwise
        exact = math.sqrt(cand.shape[1] + 2) * _U32 * scale * reach <= 0.1 * FLOAT32_EXPONENT_TOL
        self.gemm_dtype = problem.exp_dtype if exact else torch.float64
        self.p_aug = _base2(p_aug).to(self.gemm_dtype)

    def add(self, j0: int, j1: int, atom: int, own_pos: torch.Tensor, sums: torch.Tensor) -> None:
        """Add the terms of candidates ``j0:j1`` (all in ``atom``) to the chunk's points, but
        each point's own centre (added exactly beforehand)."""
        own_col = torch.index_select(own_pos, 0, self.member_of_point)
        total = torch.zeros(self.point_ids.numel(), dtype=torch.float64,
                            device=self.owner.device)
        self._torch_sums(j0, j1, own_col, total)
        sums.index_put_((self.point_ids, torch.full_like(self.point_ids, atom)), total,
                        accumulate=True)

    def _torch_sums(self, j0: int, j1: int, own_col: torch.Tensor, total: torch.Tensor) -> None:
        """:meth:`add`'s sums on torch (this route runs where the fused loops do not: the
        leaf route takes its place), in blocks, each point's own column left out."""
        owner = self.owner
        exp_dtype = owner.problem.exp_dtype
        rows = self.point_ids.numel()
        # wide blocks where the chunk has few points: a block costs ~10 torch calls
        cols = min(j1 - j0, max(_MAX_COLS, owner.block // max(1, rows)))
        row_step = max(1, owner.block // cols)
        for c0 in range(j0, j1, cols):
            c1 = min(j1, c0 + cols)
            operand = self.c_aug[c0:c1].T.to(self.gemm_dtype).contiguous()
            for i0 in range(0, rows, row_step):
                i1 = min(rows, i0 + row_step)
                shape = (i1 - i0, c1 - c0)
                block = torch.mm(self.p_aug[i0:i1], operand, out=_buffer(
                    self.gemm_dtype, math.prod(shape), owner.device).view(shape))
                if self.gemm_dtype != exp_dtype:
                    block = _buffer(exp_dtype, math.prod(shape), owner.device, 1).view(
                        shape).copy_(block)
                # the own centre's term was added exactly beforehand
                col = own_col[i0:i1] - c0
                hit = torch.nonzero((col >= 0) & (col < c1 - c0)).squeeze(1)
                block[hit, col[hit]] = -math.inf
                block.exp2_()
                total[i0:i1] += block.sum(-1)


class _Leaves:
    """Each point against the centres of the k-d tree leaves within its reach, in one Numba
    loop (module notes, ``leaves``)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        lw = problem.log_weights[0]
        self.lw_ref = float(lw.max())
        centres = problem.centers[0]
        centres = (centres - centres.mean(dim=0)).numpy()
        n_atoms = problem.n_atoms
        # centres in the tree's leaf order, each leaf's centres sorted by atom
        tree_order, children, leaf_of, lo, hi, starts = fused.build_tree(centres, _LEAF_CENTRES)
        leaf = np.repeat(np.arange(starts.size - 1), np.diff(starts))
        key = leaf * n_atoms + problem.atoms.numpy()[tree_order]
        by_atom = np.argsort(key, kind="stable")
        order = tree_order[by_atom]
        grid = np.arange(starts.size - 1)[:, None] * n_atoms + np.arange(n_atoms + 1)
        self.leaf_bounds = starts
        self.atom_bounds = np.searchsorted(key[by_atom], grid).astype(np.int64)
        sorted_centres = centres[order]
        self.atoms = problem.atoms.numpy()[order]
        self.centres_t = np.ascontiguousarray(sorted_centres.T)
        # the centres' log weights (base 2, less the largest): float32 for the loop, float64
        # for the own terms and the rows redone in float64
        self.col_terms64 = LOG2E * (lw.numpy()[order] - self.lw_ref)
        self.col_terms = self.col_terms64.astype(np.float32)
        self.tree = (children, leaf_of, lo, hi)
        # the points in the order of their own centres
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        own = position[problem.own[0].numpy()]
        self.point_order = np.argsort(own, kind="stable")
        self.own = np.ascontiguousarray(own[self.point_order])
        own_sq = _own_sq(problem)[0]
        points = sorted_centres[self.own]
        if problem.noise is not None:
            noise = problem.noise[0].numpy()[self.point_order].astype(np.float64)
            points = points + problem.beta * noise
        self.points = np.ascontiguousarray(points)
        reach = _reach(problem, own_sq, prune_floor(problem)).numpy()[self.point_order]
        self.reach_sq = (reach * (1 + 1e-9) + 1e-12) ** 2
        self.row_terms = LOG2E * problem.scale * own_sq.numpy()[self.point_order]

    def _items(self, points: int) -> list[tuple[int, int]]:
        """Ranges of about ``points`` points, and at least 8 per worker."""
        n = self.own.size
        step = max(1, min(points, n // (8 * kernel_threads())))
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    def pairs(self, sample: int = 1) -> tuple[float, float]:
        """The (point, centre) pairs the route evaluates, counted on every ``sample``-th range
        of points (times ``sample``), at a fraction of the cost of evaluating them; and the
        seconds the workers spent counting (the walk of the tree, summed over workers)."""
        counts = np.zeros(self.own.size, dtype=np.int64)
        items = self._items(_LEAF_POINTS)[::sample]
        seconds = [0.0] * len(items)

        def work(item: object) -> None:
            index, (i0, i1) = item  # type: ignore[misc]
            started = time.perf_counter()
            fused.leaf_pairs(self.points, self.reach_sq, i0, i1, self.leaf_bounds, *self.tree,
                             counts)
            seconds[index] = time.perf_counter() - started

        run_parallel(work, list(enumerate(items)))
        covered = sum(i1 - i0 for i0, i1 in items)
        return float(counts.sum()) * self.own.size / covered, sum(seconds)

    def pays(self, dense_evals: int) -> bool:
        """Whether this route beats the dense pass: its pairs, counted on every
        :data:`_LEAF_SAMPLE`-th range of points (so with no margin for a rough estimate), cost
        :data:`_LEAF_PAIR_COST` dense exponents each, and the walk of the tree (timed on that
        sample) must stay well below the dense pass's time (a wide reach in many dimensions
        visits most of the tree)."""
        pairs, seconds = self.pairs(_LEAF_SAMPLE)
        walk = seconds * _LEAF_SAMPLE / kernel_threads()
        dense = dense_evals * _dense_seconds_per_exponent()
        base, per_dim = _LEAF_PAIR_COST
        pair_cost = base + per_dim * self.points.shape[1]
        return pair_cost * pairs < dense_evals and walk < 0.5 * dense

    def run(self, out: torch.Tensor) -> None:
        problem = self.problem
        n_points = self.own.size
        sums = np.zeros((n_points, problem.n_atoms))
        # the own term of every point is exp(0) w_own, in the own centre's atom
        own_atom = problem.atoms.numpy()[problem.own[0].numpy()[self.point_order]]
        sums[np.arange(n_points), own_atom] = np.exp2(self.col_terms64[self.own])
        sigma = LOG2E * problem.scale

        def work(item: object) -> None:
            i0, i1 = item  # type: ignore[misc]
            fused.leaf_exp2_sums(self.points, self.row_terms, self.reach_sq, self.own, i0, i1,
                                 self.centres_t, self.col_terms, sigma, self.leaf_bounds,
                                 self.atom_bounds, *self.tree, sums)

        run_parallel(work, self._items(_LEAF_POINTS))
        with np.errstate(divide="ignore"):  # an atom with no centre in reach: log 0
            logs = np.log(sums) + self.lw_ref
        overflow = np.nonzero(np.isposinf(logs).any(axis=1))[0]
        for start in range(0, overflow.size, 64):
            rows = overflow[start:start + 64]
            logs[rows] = self._float64_rows(rows)
        out[0, torch.from_numpy(self.point_order)] = torch.from_numpy(logs)

    def _float64_rows(self, rows: np.ndarray) -> np.ndarray:
        """Log sums of the (sorted) points ``rows`` against every centre in float64, for rows
        whose float32 terms overflowed (exponents past 2^127: a centre far nearer the point
        than its own, in many dimensions)."""
        problem = self.problem
        points = torch.from_numpy(self.points[rows])
        centres = torch.from_numpy(self.centres_t.T)
        # differences, not cdist's |p|^2 + |c|^2 - 2 p.c, which cancels for near pairs
        delta_sq = torch.cdist(points, centres,
                               compute_mode="donot_use_mm_for_euclid_dist").square()
        own_sq = torch.from_numpy(self.row_terms[rows] / (LOG2E * problem.scale))
        lw = torch.from_numpy(self.col_terms64 / LOG2E)
        exponent = problem.scale * (own_sq[:, None] - delta_sq) + lw
        logs = torch.full((rows.size, problem.n_atoms), -math.inf, dtype=torch.float64)
        for atom in range(problem.n_atoms):
            columns = torch.from_numpy(np.nonzero(self.atoms == atom)[0])
            if columns.numel():
                logs[:, atom] = torch.logsumexp(exponent[:, columns], dim=1)
        return (logs + self.lw_ref).numpy()


def _fusable(problem: Problem) -> bool:
    """Whether dense blocks of ``problem`` may run the fused loop (:mod:`._fused`): on the CPU,
    float32 exponentials, Numba there."""
    return (problem.centers.device.type == "cpu" and problem.exp_dtype == torch.float32
            and fused.enabled())


@functools.cache
def _fused_pays(k: int, dtype: torch.dtype) -> bool:
    """Whether the fused loop's inner-product form outruns the torch path's blocks (GEMM,
    ``exp2``, sum) on one worker, for ``k`` terms per inner product; measured once per process
    and ``k``, on a worker of the pool. Which wins depends on the CPU: on AVX2 the fused loop
    won at every d measured; on AVX-512, where torch's GEMM and ``exp2`` use 512-bit vectors,
    from about d = 10 on the torch path is faster (0.07 s against 0.06 s per dense case at
    d = 16). The difference form has no torch rival (a float64 GEMM)."""
    rng = np.random.default_rng(0)
    rows, cols = 256, 8192
    p = torch.from_numpy(rng.normal(size=(rows, k)) * 0.3).to(dtype)
    c = torch.from_numpy(rng.normal(size=(k, cols)) * 0.3).to(dtype)
    out = torch.zeros(rows, dtype=torch.float64)
    buf = torch.empty(rows, cols, dtype=dtype)

    def fused_pass() -> None:
        fused.exp2_row_sums(p, c, 0, cols, out)

    def torch_pass() -> None:
        torch.mm(p, c, out=buf).exp2_()
        out.add_(buf.sum(-1))

    seconds: list[float] = []

    def measure(_: object) -> None:
        for run in (fused_pass, torch_pass):
            run()  # warm
            best = math.inf
            for _ in range(3):
                started = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - started)
            seconds.append(best)

    run_parallel(measure, [None])
    return seconds[0] <= seconds[1]


def _base2(p_aug: torch.Tensor) -> torch.Tensor:
    r"""The points' operand :math:`[2sp,\ s(o - \|p\|^2),\ 1]` for exponents in base 2: all
    but the last column times :math:`\log_2 e`, in float64."""
    scaled = p_aug * LOG2E
    scaled[..., -1] = p_aug[..., -1]
    return scaled


@functools.cache
def _dense_seconds_per_exponent() -> float:
    """Seconds of one exponent of the torch dense pass on the CPU (the cost model's unit),
    measured once per process on 1024 points x 16384 centres at d = 8 (~17 M exponents)."""
    rng = np.random.default_rng(0)
    n, n_points, d = 16384, 1024, 8
    problem = Problem(
        centers=torch.from_numpy(np.tanh(rng.normal(size=(1, n, d)))),
        log_weights=torch.full((1, n), -math.log(n), dtype=torch.float64),
        atoms=torch.zeros(n, dtype=torch.int64), n_atoms=1,
        own=torch.from_numpy(rng.integers(0, n, (1, n_points))),
        noise=torch.from_numpy(rng.normal(size=(1, n_points, d))).float(),
        beta=0.1, scale=50.0, exp_dtype=torch.float32,
    )
    out = torch.empty(1, n_points, 1, dtype=torch.float64)
    dense = _Dense(problem)
    dense.fused = False  # the unit is the torch path's exponent
    best = math.inf
    for _ in range(2):
        started = time.perf_counter()
        dense.run(out)
        best = min(best, time.perf_counter() - started)
    return best / (n * n_points)


def _take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` along the first axis, through ``index_select`` (several times faster
    than advanced indexing on the CPU)."""
    picked = torch.index_select(source, 0, index.reshape(-1))
    return picked.view(*index.shape, *source.shape[1:])


def _expand_ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``cat([arange(a, a + c) for a, c in zip(starts, counts)])``, vectorised."""
    offsets = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    index = torch.arange(total, device=starts.device)
    return torch.repeat_interleave(starts - offsets, counts) + index
