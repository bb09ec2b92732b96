r"""Monte Carlo points of Gaussian mixtures, stratified by weight, and their standard errors.

The entropy :math:`h(g) = -\mathbb E \log g(V)` of :math:`g = \sum_j w_j\,\varphi_\beta(\cdot -
\mu_j)` is estimated from points :math:`V_k = \mu_{j(k)} + \beta Z_k`. How many points there
are is a choice of its own: the variance of the estimate falls with the number of points
:math:`N`, its cost grows with :math:`N` times the number of centres.

:func:`draw_points` stratifies by weight. The cumulative weights of the centres, in their
order, are cut into :math:`N` slots of equal mass :math:`1/N`, and slot :math:`k` gets one
point, drawn from the mixture restricted to the slot (its centre :math:`j(k)` is where a uniform
position in the slot falls). Every point therefore has weight :math:`1/N`, the estimate is the
plain mean of the per-point terms, and it is unbiased. A centre of weight :math:`w_j` gets
:math:`N w_j` points, to within two (its whole slots, and possibly a straddling one at each
end). With equal weights and :math:`N = n\,n_{MC}`, centre
:math:`j` gets exactly points :math:`j\,n_{MC}, \dots, (j+1)\,n_{MC} - 1`. The order of the
centres matters: when every input's draws are adjacent and each input's total weight is a
multiple of :math:`1/N`, each slot lies within one input, so any union of inputs (a class, a
subsample) gets exactly :math:`N` times its weight in points, and its own estimate is unbiased
too.

Standard errors (:func:`stratified_stderr`). Points whose slot lies entirely within one centre
are i.i.d. draws of that centre: they form a *cell*, and a cell of :math:`m \ge 2` points
contributes its sample variance, :math:`m s^2 / N^2`. The other points (slots that straddle
centres, or a centre's single point) are paired with their neighbours in slot order, as
collapsed strata (Cochran, *Sampling Techniques*, 5A.12): a pair contributes
:math:`(y_1 - y_2)^2 / N^2`, which can only overstate the variance, by the squared difference of
the pair's means. With one point per centre this pairs adjacent centres. Given ``strata`` (runs of centres, such
as the realisations of one input), points whose slot lies within a stratum form its cell: with
many centres per input and a few points per input, pairs of adjacent inputs would otherwise add
the spread between inputs, which stratification has removed, to the error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from ibframe._validation import positive, positive_int
from ibframe.errors import ParameterError
from ibframe.kernels._inputs import as_float64, check_seed, mixture_weights, resolve_device
from ibframe.kernels._threads import single_threaded_caller

__all__ = [
    "MixturePoints",
    "draw_points",
    "n_points_for_stderr",
    "stratified_stderr",
]

_CHUNK = 2**16
"""Points drawn per seeded generator: the draws depend on the seed, never on a block plan."""


@dataclass(frozen=True)
class MixturePoints:
    r"""MC points of ``b`` mixtures: point ``k`` of mixture ``m`` is
    ``centers[m, centre[m, k]] + beta * noise[m, k]``.

    Every point has weight :math:`1/N` (``N = centre.shape[1]``). Make them with
    :func:`draw_points`; pass the same object to several calls to evaluate them on common
    random numbers.
    """

    centre: torch.Tensor
    """``(b, N)`` int64: the centre each point is drawn from, an index into its mixture."""
    noise: torch.Tensor
    """``(b, N, d)`` standard normal draws (float32 when generated)."""
    cell: torch.Tensor
    """``(b, N)`` int64: the variance cell, the centre when the point's slot lies within it,
    else its stratum (``n`` + stratum number, with ``strata``) when it lies within that, else -1
    (the point is paired with its neighbours for the standard error)."""

    @property
    def n_points(self) -> int:
        """Points per mixture, ``N``."""
        return int(self.centre.shape[1])

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the points."""
        return int(self.noise.shape[2])

    def quad(self) -> torch.Tensor:
        r""":math:`\|Z_k\|^2 / 2` per point, ``(b, N)`` float64: mean :math:`d/2` exactly."""
        z = self.noise.to(torch.float64)
        return 0.5 * (z * z).sum(-1)

    def select(
        self, points: slice | torch.Tensor = slice(None), mixtures: slice = slice(None)
    ) -> MixturePoints:
        """Some of these points (a run, or an index tensor), or a run of their mixtures: a part
        of the work to evaluate apart (the same rows of :func:`mixture_log_density` as on the
        whole)."""
        return MixturePoints(centre=self.centre[mixtures, points],
                             noise=self.noise[mixtures, points], cell=self.cell[mixtures, points])

    @staticmethod
    def concat(parts: Sequence[MixturePoints], along: Literal["points", "mixtures"]) -> MixturePoints:
        """Parts put back together. Along ``"points"``: later points drawn for the same mixtures
        follow, one sample of ``N + N'`` points (the cells keep their meaning, so a cell's
        points pool); along ``"mixtures"``: the parts :meth:`select` cut, in order."""
        dim = 1 if along == "points" else 0
        return MixturePoints(
            centre=torch.cat([p.centre for p in parts], dim=dim),
            noise=torch.cat([p.noise for p in parts], dim=dim),
            cell=torch.cat([p.cell for p in parts], dim=dim),
        )

    def to(self, device: torch.device) -> MixturePoints:
        """The same points on ``device``."""
        return MixturePoints(
            centre=self.centre.to(device), noise=self.noise.to(device), cell=self.cell.to(device)
        )


@single_threaded_caller
def draw_points(
    weights: npt.ArrayLike | torch.Tensor,
    n_points: int,
    d: int,
    *,
    seed: int | None = None,
    device: str | torch.device | None = None,
    strata: npt.ArrayLike | torch.Tensor | None = None,
) -> MixturePoints:
    r"""Stratified MC points of mixtures with the given centre ``weights`` (module notes).

    Parameters
    ----------
    weights
        ``(n,)`` for one mixture or ``(b, n)``, >= 0 with a positive sum (normalised here).
        The order of the centres is the order of the strata.
    n_points
        Points per mixture, :math:`N`.
    d
        Dimension of the centres.
    seed
        Seeds the slot positions and the normal draws; ``None`` draws fresh entropy. The same
        seed on the same device gives the same points.
    device
        Where to put the points (default: that of a tensor ``weights``, else the CPU).
    strata
        ``(n,)`` labels of the centres, equal for consecutive centres that make one stratum
        (e.g. the realisations of one input). A point whose slot lies within one centre has that
        centre as its variance cell; otherwise, within one stratum, the stratum. Without strata
        such points are paired with their neighbours, which overstates the error by the spread
        between strata when they get one point each.
    """
    n_points = positive_int(n_points, "n_points")
    d = positive_int(d, "d")
    target = resolve_device(weights, device)
    raw = as_float64(weights, "weights", target)
    if raw.ndim not in (1, 2):
        msg = f"weights must have shape (n,) or (b, n), got {tuple(raw.shape)}"
        raise ParameterError(msg)
    shape = (1, raw.shape[0]) if raw.ndim == 1 else tuple(raw.shape)
    w = mixture_weights(raw, (shape[0], shape[1]), target)
    uniform, noise = _standard_draws(shape[0], n_points, d, check_seed(seed), target)
    labels = None
    if strata is not None:
        labels = torch.as_tensor(np.asarray(strata), dtype=torch.int64, device=target)
        if labels.shape != (shape[1],):
            msg = f"strata must have shape ({shape[1]},), one label per centre, got {tuple(labels.shape)}"
            raise ParameterError(msg)
    centre, cell = _allocate(w, uniform, labels)
    return MixturePoints(centre=centre, noise=noise, cell=cell)


def points_per_centre(b: int, n: int, n_mc: int, noise: torch.Tensor) -> MixturePoints:
    """Points ``n_mc`` per centre in centre order, the layout of explicit ``(b, n, n_mc, d)``
    noise: what :func:`draw_points` gives for equal weights and ``n * n_mc`` points."""
    centre = torch.arange(n, device=noise.device).repeat_interleave(n_mc).expand(b, -1)
    return MixturePoints(
        centre=centre.contiguous(), noise=noise.reshape(b, n * n_mc, -1), cell=centre.contiguous()
    )


def _standard_draws(
    b: int, n_points: int, d: int, seed: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform slot offsets ``(b, N)`` float64 and normals ``(b, N, d)`` float32.

    Chunk ``c`` of :data:`_CHUNK` points (over the flattened ``(b, N)``) comes from a torch
    generator seeded by the ``c``-th child of ``SeedSequence(seed)``.
    """
    total = b * n_points
    uniform = torch.empty(total, dtype=torch.float64, device=device)
    noise = torch.empty(total, d, dtype=torch.float32, device=device)
    root = np.random.SeedSequence(seed)
    generator = torch.Generator(device=device)
    for index, start in enumerate(range(0, total, _CHUNK)):
        stop = min(total, start + _CHUNK)
        child = np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, index))
        generator.manual_seed(int(child.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        torch.randn(stop - start, d, generator=generator, device=device, out=noise[start:stop])
        torch.rand(stop - start, generator=generator, device=device, dtype=torch.float64,
                   out=uniform[start:stop])
    return uniform.view(b, n_points), noise.view(b, n_points, d)


def _allocate(
    w: torch.Tensor, uniform: torch.Tensor, strata: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and variance cell of each slot ``k`` at position ``k + uniform[k]`` in units of
    ``1/N`` of the cumulative weight: the centre, else the stratum (numbered from ``n``) when
    the slot lies within it, else -1."""
    b, n = w.shape
    n_points = uniform.shape[1]
    slots = torch.arange(n_points, dtype=torch.float64, device=w.device)
    equal = bool((w == w[:, :1]).all())
    if equal:
        # exact boundaries: with N = n * n_mc centre j holds slots j n_mc ... (j+1) n_mc - 1
        ends = torch.arange(1, n + 1, dtype=torch.float64, device=w.device) * (n_points / n)
        ends = ends.expand(b, n).contiguous()
    else:
        ends = torch.cumsum(w, dim=1) * n_points
        near = torch.round(ends)
        ends = torch.where((ends - near).abs() <= 1e-9 * n_points, near, ends)
    ends[:, -1] = n_points
    position = slots + uniform
    centre = torch.searchsorted(ends, position.contiguous(), right=True).clamp_(max=n - 1)
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
    inside = (starts.gather(1, centre) <= slots) & (slots + 1 <= ends.gather(1, centre))
    outside = torch.full_like(centre, -1)
    if strata is not None:
        change = torch.ones(n, dtype=torch.bool, device=w.device)
        change[1:] = strata[1:] != strata[:-1]
        run = torch.cumsum(change.to(torch.int64), 0) - 1  # the stratum of each centre
        first = torch.nonzero(change).squeeze(1)
        last = torch.cat([first[1:] - 1, first.new_tensor([n - 1])])
        stratum = run[centre]
        within = (starts[:, first].gather(1, stratum) <= slots) & (
            slots + 1 <= ends[:, last].gather(1, stratum)
        )
        outside = torch.where(within, n + stratum, outside)
    cell = torch.where(inside, centre, outside)
    return centre, cell


@single_threaded_caller
def stratified_stderr(
    values: npt.ArrayLike | torch.Tensor, points: MixturePoints | torch.Tensor
) -> torch.Tensor:
    r"""Standard error of the mean of per-point ``values`` of each mixture (module notes).

    ``values`` is ``(b, N)`` (or ``(N,)`` for one mixture); NaN marks points left out, e.g.
    points outside a group, and the mean is then over the others. ``points`` is the
    :class:`MixturePoints` the values were computed at, or its ``cell`` tensor. Returns
    ``(b,)`` float64; NaN where fewer than two points count.
    """
    cell = points.cell if isinstance(points, MixturePoints) else points
    x = torch.as_tensor(values, dtype=torch.float64, device=cell.device)
    if x.ndim == 1:
        x = x[None]
    if x.shape != cell.shape:
        msg = f"values of shape {tuple(x.shape)} do not match the points {tuple(cell.shape)}"
        raise ParameterError(msg)
    return _cell_stderr(x, cell)


def _cell_stderr(x: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    b, n_points = x.shape
    valid = torch.isfinite(x)
    count = valid.sum(dim=1)
    # group keys: cells with >= 2 valid points keep their cell; the rest are singletons. Cell
    # ids run to the number of centres: where that range is small against the points, groups
    # are counted over it (bincount), elsewhere numbered by the keys that occur (a sort)
    span = max(int(cell.max()) + 1 if cell.numel() else 1, 1)
    row = torch.arange(b, device=x.device)[:, None].expand(b, n_points)
    cell_key = row * span + cell.clamp(min=0)
    in_cell = valid & (cell >= 0)
    in_cell_keys = cell_key[in_cell]
    grouped = torch.zeros_like(valid)
    if _small_range(b * span, in_cell_keys):  # counts by bincount: no sort
        members = torch.bincount(in_cell_keys, minlength=b * span)
        grouped[in_cell] = members[in_cell_keys] >= 2
    else:
        _, where, counted = torch.unique(in_cell_keys, return_inverse=True, return_counts=True)
        grouped[in_cell] = counted[where] >= 2
    single = valid & ~grouped
    # singletons pair with their neighbours in slot order; an odd last one joins the pair before
    rank = torch.cumsum(single.to(torch.int64), dim=1) - 1
    n_single = single.sum(dim=1, keepdim=True)
    pair = torch.minimum(rank // 2, (n_single // 2 - 1).clamp(min=0))
    key = torch.where(grouped, cell_key, b * span + row * n_points + pair)[valid]
    keys, key = _distinct(key, b * (span + n_points))
    owner = torch.where(keys < b * span, keys // span, (keys - b * span) // n_points)
    vals = x[valid]
    size = keys.numel()
    sums = torch.zeros(size, dtype=torch.float64, device=x.device).index_add_(0, key, vals)
    counts = torch.zeros(size, dtype=torch.float64, device=x.device).index_add_(
        0, key, torch.ones_like(vals)
    )
    means = sums / counts.clamp(min=1)
    dev = vals - means[key]
    ss = torch.zeros(size, dtype=torch.float64, device=x.device).index_add_(0, key, dev * dev)
    # n_g s_g^2 = ss_g n_g / (n_g - 1); one lone point (a single singleton) borrows the mean
    # per-point variance of the rest of its mixture
    has_spread = counts >= 2
    contribution = torch.where(has_spread, ss * counts / (counts - 1).clamp(min=1), 0.0)
    total = torch.zeros(b, dtype=torch.float64, device=x.device).index_add_(
        0, owner, contribution
    )
    spread_points = torch.zeros(b, dtype=torch.float64, device=x.device).index_add_(
        0, owner, torch.where(has_spread, counts, 0.0)
    )
    lone = torch.zeros(b, dtype=torch.float64, device=x.device).index_add_(
        0, owner, (counts == 1).to(torch.float64)
    )
    total = total + lone * total / spread_points.clamp(min=1)
    n = count.to(torch.float64)
    stderr = total.sqrt() / n
    return torch.where((count >= 2) & (spread_points > 0), stderr, math.nan)


def _small_range(bound: int, keys: torch.Tensor) -> bool:
    """Whether keys below ``bound`` are few enough to count in an array of that size (a pass
    over it costs less than sorting the keys)."""
    return bound <= 4 * keys.numel() + 2**20


def _distinct(key: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct keys (sorted) and each key's index among them, as ``torch.unique`` gives
    them; by marking an array of ``bound`` slots where that is small (5-10x faster)."""
    if not _small_range(bound, key):
        return torch.unique(key, return_inverse=True)
    present = torch.zeros(bound, dtype=torch.bool, device=key.device)
    present[key] = True
    keys = torch.nonzero(present).squeeze(1)
    slot = torch.empty(bound, dtype=torch.int64, device=key.device)
    slot[keys] = torch.arange(keys.numel(), device=key.device)
    return keys, slot[key]


def n_points_for_stderr(stderr: float, n_points: int, target: float) -> int:
    r"""Points that bring a standard error ``stderr`` measured with ``n_points`` down to
    ``target``: :math:`\lceil N (\text{stderr}/\text{target})^2 \rceil`, at least ``n_points``
    when it is above target, else ``n_points``."""
    target = positive(target, "target")
    n_points = positive_int(n_points, "n_points")
    if not math.isfinite(stderr):
        msg = f"stderr must be finite to size the points, got {stderr}"
        raise ParameterError(msg)
    if stderr <= target:
        return n_points
    return max(n_points, math.ceil(n_points * (stderr / target) ** 2))


def _as_points(value: Any) -> MixturePoints:
    if not isinstance(value, MixturePoints):
        msg = f"points must be MixturePoints from draw_points, got {type(value).__name__}"
        raise ParameterError(msg)
    return value
