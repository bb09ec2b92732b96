r"""``sp-mi``: the sample-propagation (SP) estimator of Goldfeld et al. (ICML 2019), eq. (1).

.. math::
    \hat I_{SP}(X; T_\ell) = h(\hat p_{S_\ell} * \varphi_\beta)
        - \frac1m \sum_{x} h(\hat p_{S_\ell^{(x)}} * \varphi_\beta),
    \qquad
    \hat I(T_\ell; Y) = h(\hat p_{S_\ell} * \varphi_\beta)
        - \sum_y \hat p(y)\, h(\hat p_{S_\ell | Y = y} * \varphi_\beta)

Every term is the entropy of a Gaussian mixture (:mod:`ibframe.kernels.mixture`).

*Which samples.* X is uniform over the recorded inputs. Every recorded pass of an input (draw 0
and its conditional draws: K realisations of S_l given x) is a sample of p(S_l | x), so the
unconditional mixture pools them all, each input's realisations sharing weight 1/n: its centres
are a stratified sample of p(S_l) with n K points (one per input, the paper's smallest choice,
biases h(T) low by up to 2 nats in deep SZT layers). h(T | X = x) is the mixture of the same K
realisations of x, averaged over the inputs that have them. For a layer whose S is a
deterministic function of x (the first noisy layer), h(T|X) = (d/2) ln(2 pi e beta^2) exactly
and h(T) needs one realisation per input.

*How sure.* The Monte Carlo error of each entropy is a standard error (``*_stderr``). The
sampling bias, what the finite number of realisations costs, is estimated in the same pass from
nested halves: every entropy is estimated again from each half of every input's realisations,
and, since the plug-in's leading bias falls as 1/K, the change from half to all extrapolates to
the bias of the estimate (``*_bias``, signed: estimate minus truth). ``converged`` says whether
|bias| of I(X;T) and I(T;Y) is within ``bias_tolerance``; ``saturated`` says the conditional
mixtures are fully separated, so that the value measures the number of draws (ln K), not the
network. docs/sp-estimator.md shows how well the extrapolation worked on the SZT runs and what
it can miss.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
import xarray as xr

from ibframe.errors import EstimatorRequirementError, ParameterError, ParameterWarning
from ibframe.estimator import Block, Estimator, part_bounds
from ibframe.hookspecs import hookimpl
from ibframe.kernels.mixture import (
    MixturePoints,
    draw_points,
    gaussian_entropy,
    gaussian_mixture_entropy,
    mc_entropy_estimate,
    mixture_log_density,
    n_points_for_stderr,
    stratified_stderr,
)
from ibframe.theory import sp_diagnostics

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from ibframe.store import Run

_NAT = "nat"
_BETA_SQUARED_RANGE = (1e-300, 1e300)  # beta^2 and 1/beta^2 stay finite floats
_FIRST_POINTS = 1024  # the fewest points of h(T) chosen for a target error
#: A mixture entropy within this fraction of its ceiling ln K + h(Z) is saturated.
_SATURATION = 0.99
_ADVICE = (
    "record more conditional draws per input (ibframe train --draws, Recorder(draws=...)); "
    "docs/sp-estimator.md, 'Convergence'"
)


@dataclass(frozen=True, kw_only=True)
class SPMutualInformation(Estimator):
    r"""I(X;T_l) and I(T_l;Y) of a noisy network by sample propagation, with their errors.

    Standard errors combine the Monte Carlo error of every mixture entropy with, when only ``m``
    of the ``n`` inputs' conditional entropies are averaged, the sampling error of that mean
    (with the finite-population factor :math:`1 - m/n`). Sampling biases come from nested
    halves of the realisations (module notes). Each result also carries the paper's theory
    diagnostics: the Theorem 6 bound on the MC mean squared error of h(T), and the Theorem 5
    worst-case bias bound with the sample size it asks for.

    References
    ----------
    Goldfeld et al., "Estimating Information Flow in Deep Neural Networks", ICML 2019, Section 3
    and Appendix C.
    """

    name: ClassVar[str] = "sp-mi"
    uses_gpu: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Sample-propagation estimate of I(X;T) and I(T;Y) in a noisy network (Goldfeld et al. "
        "2019) from every recorded realisation, with MC standard errors, sampling-bias and "
        "saturation diagnostics, pairwise bounds and theory diagnostics."
    )
    needs_noise: ClassVar[bool] = True
    # 3: every realisation pooled in h(T), points chosen for a target error, nested-halves bias
    version: ClassVar[str] = "3"
    execution_params: ClassVar[frozenset[str]] = frozenset({"device"})

    target_stderr: float = field(
        default=0.01,
        metadata={"help": "MC standard error aimed at for h(T) (nats); sets the MC points"},
    )
    n_points: int | None = field(
        default=None,
        metadata={"help": "MC points of h(T), instead of choosing them for target_stderr"},
    )
    max_points: int = field(
        default=32768, metadata={"help": "most MC points target_stderr may choose"}
    )
    n_mc_conditional: int = field(
        default=1,
        metadata={"help": "MC points per realisation in each h(T|X=x) (they are averaged)"},
    )
    pool_draws: bool = field(
        default=True,
        metadata={"help": "h(T) from every recorded realisation (False: draw 0 only)"},
    )
    bias_tolerance: float = field(
        default=0.05,
        metadata={"help": "largest |estimated sampling bias| of I (nats) counted as converged"},
    )
    beta: float | None = field(
        default=None, metadata={"help": "noise std of the analysis (default: the run's beta)"}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "seeded subset of inputs in h(T) (default all)"}
    )
    max_conditionals: int | None = field(
        default=None,
        metadata={"help": "seeded subset of the recorded conditional inputs (default all)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the MC draws and subsets"})
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata={"help": "float32 (exact where it matters) or float64"}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "torch device for the kernels (default: the engine's --device)"},
    )
    bounds: bool = field(
        default=False,
        metadata={"help": "also report mi_x_t_upper/lower from the Kolchinsky-Tracey bounds"},
    )

    def __post_init__(self) -> None:
        for name in ("n_mc_conditional", "max_points"):
            if getattr(self, name) < 1:
                msg = f"sp-mi: {name} must be >= 1, got {getattr(self, name)}"
                raise ParameterError(msg)
        if self.n_points is not None and self.n_points < 2:
            msg = f"sp-mi: n_points must be >= 2 (or unset), got {self.n_points}"
            raise ParameterError(msg)
        for name in ("target_stderr", "bias_tolerance"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                msg = f"sp-mi: {name} must be a positive number, got {value}"
                raise ParameterError(msg)
        for name in ("max_samples", "max_conditionals"):
            value = getattr(self, name)
            if value is not None and value < 2:
                msg = f"sp-mi: {name} must be >= 2 (or unset), got {value}"
                raise ParameterError(msg)
        if self.beta is not None and not (self.beta > 0 and math.isfinite(self.beta)):
            msg = f"sp-mi: beta must be > 0, got {self.beta}"
            raise ParameterError(msg)
        low, high = _BETA_SQUARED_RANGE
        if self.beta is not None and not low <= self.beta * self.beta <= high:
            msg = (
                f"sp-mi: beta={self.beta:g} is out of range: the estimator divides by beta^2, "
                f"which must stay between {low:g} and {high:g}"
            )
            raise ParameterError(msg)

    def check_run(self, run: Run, layers: Sequence[str]) -> None:
        super().check_run(run, layers)
        if self.beta is None and run.beta == 0:
            msg = (
                f"sp-mi needs noise, and run {run.path} is deterministic (beta = 0): I(X;T) of a "
                "deterministic network is infinite or constant. Use binned-entropy to measure "
                "clustering, or give an analysis noise level, e.g. -p beta=0.1"
            )
            raise EstimatorRequirementError(msg)
        for layer in layers:
            attrs = run.layer_attrs(layer)
            if self.beta is None and attrs["noise"] != "additive":
                how = ("its noise comes before a pooling, T = pool(. + Z)"
                       if attrs["noise"] == "before-pooling" else "no noise follows it, T = S")
                msg = (
                    f"sp-mi: layer {layer!r} of {run.path} is not S + Gaussian noise ({how}); "
                    f"give an analysis noise level to estimate I(X; S + Z), e.g. -p "
                    f"beta={run.beta:g}, or use a deterministic measure such as binned-entropy"
                )
                raise EstimatorRequirementError(msg)
            if not attrs["deterministic_given_x"] and run.conditional(layer) is None:
                msg = (
                    f"sp-mi: layer {layer!r} of {run.path} has noise before it but no recorded "
                    "conditional draws; record with draws > 0"
                )
                raise EstimatorRequirementError(msg)

    def memory_bytes(self, run: Run, layer: str) -> int:
        """The block; the pooled centres and their float64 copies; the MC points with their
        columns (whole mixture, halves, classes) and per-point terms; the batched h(T|X=x)."""
        _, d, m, k, centres = self._sizes(run, layer)
        points = self.n_points or self.max_points
        classes = 10 if run.has_labels else 0
        columns = 3 + 3 * classes
        return (
            super().memory_bytes(run, layer)
            + 3 * 8 * centres * d
            + 4 * 8 * points * (columns + d)
            + 6 * 8 * m * k * self.n_mc_conditional * (3 + d)
        )

    def _sizes(self, run: Run, layer: str) -> tuple[int, int, int, int, int]:
        """Inputs in h(T), units, inputs with draws in h(T|X), realisations per input (1
        without draws), and centres of h(T), from the run's metadata alone."""
        attrs = run.layer_attrs(layer)
        n = run.n_samples if self.max_samples is None else min(run.n_samples, self.max_samples)
        conditional = None if attrs["deterministic_given_x"] else run.conditional(layer)
        m, k = 0, 1
        if conditional is not None:
            m = conditional.sizes["cond_sample"]
            m = m if self.max_conditionals is None else min(m, self.max_conditionals)
            k = 1 + conditional.sizes["draw"]
        return n, int(attrs["units"]), m, k, n * (k if self.pool_draws else 1)

    # -- the work, in two stages that split over MC points and conditional inputs --------------
    #
    # Stage 0: the log densities of the unconditional mixture (and its halves and classes) at
    # the first MC points, in parts over the points. Its combine step measures h(T)'s standard
    # error and decides how many points to add. Stage 1: the added points, in parts, and the
    # batched h(T|X=x) mixtures, in parts over the inputs. Every part draws the same points
    # from the block's seeded generator and evaluates its own run of them; the entropies, their
    # errors and control variates are computed once, in finish(), on all of them together, so
    # any number of parts gives the estimate of one.

    split_stages: ClassVar[int] = 2

    def cost_seconds(self, run: Run, layer: str) -> float | None:
        """Every centre against every first MC point and each h(T|X=x) mixture against its own
        points, at ~3.5 ns per pair per 16 dimensions (the dense kernel's speed on the SZT
        runs): an upper estimate, since pruning skips pairs out of reach."""
        n, d, m, k, centres = self._sizes(run, layer)
        points = self.n_points or min(self.max_points, max(_FIRST_POINTS, 2 * n))
        pairs = centres * points + m * k * k * self.n_mc_conditional
        return pairs * 3.5e-9 * max(1.0, d / 16)

    def compute(self, block: Block) -> xr.Dataset:
        """The stages in one part each, on one plan of the block (built once, not per stage)."""
        plan = _Plan.of(self, block)
        carry: Any = None
        for stage in range(self.split_stages):
            carry = self.combine_parts(stage, [self._part(plan, stage, 0, 1, carry)], carry)
        return self._finish(plan, block, carry)

    def compute_part(self, block: Block, stage: int, part: int, parts: int, carry: Any) -> Any:
        return self._part(_Plan.of(self, block), stage, part, parts, carry)

    def _part(self, plan: _Plan, stage: int, part: int, parts: int, carry: Any) -> Any:
        if stage == 0:
            return plan.unconditional(plan.first, plan.seeds[0], part, parts)
        extra = carry.extra
        added = plan.unconditional(extra, plan.seeds[1], part, parts) if extra else None
        return added, plan.conditional(plan.seeds[2 if extra else 1], part, parts)

    def combine_parts(self, stage: int, results: list[Any], carry: Any) -> Any:
        if stage == 0:
            log_density, points = _joined(results)
            return _Carry(log_density, points, self._points_to_add(log_density, points))
        added = [r[0] for r in results]
        if carry.extra:
            more, more_points = _joined(added)
            carry = dataclasses.replace(
                carry, log_density=torch.cat([carry.log_density, more]),
                points=MixturePoints.concat([carry.points, more_points], along="points"))
        cond = [r[1] for r in results if r[1] is not None]
        if not cond:
            return carry
        return dataclasses.replace(
            carry, cond_log_density=torch.cat([c[0] for c in cond]),
            cond_points=MixturePoints.concat([c[1] for c in cond], along="mixtures"))

    def _points_to_add(self, log_density: torch.Tensor, points: MixturePoints) -> int:
        """Points to add to the first ones for h(T)'s target error (none with ``n_points``)."""
        first = points.n_points
        if self.n_points is not None or first >= self.max_points:
            return 0
        se = float(mc_entropy_estimate(log_density[:, :1], points)[1][0])
        if not (math.isfinite(se) and se > self.target_stderr):
            return 0
        return min(self.max_points, n_points_for_stderr(se, first, self.target_stderr)) - first

    def finish(self, block: Block, carry: Any) -> xr.Dataset:
        return self._finish(_Plan.of(self, block), block, carry)

    def _finish(self, plan: _Plan, block: Block, carry: Any) -> xr.Dataset:
        beta = plan.beta
        if block.beta > 0 and not math.isclose(beta, block.beta):
            warnings.warn(
                f"sp-mi: analysis beta {beta} differs from the run's {block.beta}; the "
                "conditional draws carry the run's noise, the mixtures the analysis beta",
                ParameterWarning,
                stacklevel=3,
            )
        realisations = plan.real
        d = realisations.dim
        uncond = _unconditional(plan, carry.log_density, carry.points)
        cond = _conditional(plan, carry.cond_log_density, carry.cond_points, block.s.shape[0])

        values: dict[str, tuple[float, str, str]] = {
            "h_t": (uncond.h_t, "differential entropy h(T)", _NAT),
            "h_t_stderr": (uncond.h_t_se, "standard error of h(T)", _NAT),
            "h_t_bias": (uncond.h_t_bias, "estimated sampling bias of h(T)", _NAT),
            "h_t_given_x": (cond.h, "conditional differential entropy h(T|X)", _NAT),
            "h_t_given_x_stderr": (cond.se, "standard error of h(T|X)", _NAT),
            "h_t_given_x_bias": (cond.bias, "estimated sampling bias of h(T|X)", _NAT),
            "mi_x_t": (uncond.h_t - cond.h, "mutual information I(X;T)", _NAT),
            "mi_x_t_stderr": (math.hypot(uncond.h_t_se, cond.se), "standard error of I(X;T)",
                              _NAT),
            "mi_x_t_bias": (uncond.h_t_bias - cond.bias, "estimated sampling bias of I(X;T)",
                            _NAT),
        }
        biases = [values["mi_x_t_bias"][0]]
        if uncond.h_ty is not None:
            values.update({
                "h_t_given_y": (uncond.h_ty, "conditional differential entropy h(T|Y)", _NAT),
                "h_t_given_y_stderr": (uncond.h_ty_se, "standard error of h(T|Y)", _NAT),
                "h_t_given_y_bias": (uncond.h_ty_bias, "estimated sampling bias of h(T|Y)",
                                     _NAT),
                "mi_t_y": (uncond.h_t - uncond.h_ty, "mutual information I(T;Y)", _NAT),
                "mi_t_y_stderr": (uncond.mi_ty_se, "standard error of I(T;Y)", _NAT),
                "mi_t_y_bias": (uncond.h_t_bias - uncond.h_ty_bias,
                                "estimated sampling bias of I(T;Y)", _NAT),
            })
            biases.append(values["mi_t_y_bias"][0])
        if self.bounds:
            values.update(self._bounds(realisations, plan.cond_centres, beta, d, plan.kwargs))

        saturated = cond.saturated or uncond.saturated
        converged = not saturated and all(
            math.isfinite(b) and abs(b) <= self.bias_tolerance for b in biases
        )
        centres = realisations.centres
        bounded = float(np.abs(centres).max()) <= 1.0
        second_moment = None if bounded else float(
            ((centres - centres.mean(axis=0)) ** 2).sum(axis=1).mean()
        )
        # Theorem 6 depends on the total number of MC points; Theorem 5 on the samples of S
        diag = sp_diagnostics(n=uncond.n_points, n_mc=1, d=d, beta=beta,
                              second_moment=second_moment)
        theorem5 = sp_diagnostics(n=len(centres), n_mc=1, d=d, beta=beta)
        data: dict[str, Any] = {
            name: ((), float(value), {"long_name": long_name, "units": units,
                                      "role": _role(name)})
            for name, (value, long_name, units) in values.items()
        }
        data["converged"] = ((), converged, {
            "long_name": f"sampling bias of I within {self.bias_tolerance:g} nats, unsaturated",
            "units": "1", "role": "quality", "advice": _ADVICE,
        })
        data["saturated"] = ((), saturated, {
            "long_name": "mixtures fully separated: the value measures the number of draws",
            "units": "1", "role": "diagnostic",
        })
        diagnostics = {
            "mc_mse_bound": (diag.mc_mse_bound, "nat2",
                             "Theorem 6 bound on the MC mean squared error of h(T)"),
            "bias_lower_bound": (theorem5.bias_lower_bound, _NAT,
                                 "Theorem 5 lower bound on the worst-case bias of h(T)"),
            "required_samples": (theorem5.required_samples, "1",
                                 "samples Theorem 5 asks for, k*^(d(1-eps))"),
            "n_samples": (len(plan.rows), "1", "inputs in h(T)"),
            "n_centres": (len(centres), "1", "realisations pooled in h(T)"),
            "n_points": (uncond.n_points, "1", "MC points of h(T)"),
            "n_conditionals": (cond.m, "1", "inputs averaged in h(T|X) (0: closed form)"),
            "draws": (cond.k, "1", "realisations per input in h(T|X) (0: closed form)"),
        }
        for name, (value, units, long_name) in diagnostics.items():
            data[name] = ((), value, {"long_name": long_name, "units": units,
                                      "role": "diagnostic"})
        return xr.Dataset(data)

    def _bounds(
        self,
        real: _Realisations,
        cond: np.ndarray | None,
        beta: float,
        d: int,
        kwargs: dict[str, Any],
    ) -> dict[str, tuple[float, str, str]]:
        """I(X;T) bounds: h(T) bounded above (KL) or below (Bhattacharyya), h(T|X) the other way."""
        common = {"weights": real.weights, **kwargs}
        upper_t = gaussian_mixture_entropy(real.centres, beta, method="kl-upper", **common)
        lower_t = gaussian_mixture_entropy(real.centres, beta, method="bhattacharyya-lower",
                                           **common)
        if cond is None:
            upper_c = lower_c = gaussian_entropy(d, beta)
        else:
            upper_c = float(np.mean(gaussian_mixture_entropy(cond, beta, method="kl-upper",
                                                             **kwargs)))
            lower_c = float(np.mean(gaussian_mixture_entropy(cond, beta,
                                                             method="bhattacharyya-lower",
                                                             **kwargs)))
        return {
            "mi_x_t_upper": (upper_t - lower_c, "upper bound on I(X;T) (pairwise KL)", _NAT),
            "mi_x_t_lower": (lower_t - upper_c, "lower bound on I(X;T) (pairwise Bhattacharyya)",
                             _NAT),
        }


# ------------------------------------------------------------------------------------------------
# the plan of one block's work, and what its stages hand on


@dataclass(frozen=True)
class _Plan:
    """Everything about one block's estimate that its parts must agree on, rebuilt the same by
    each (cheap next to the kernels): the input subsets, the pooled realisations, the groups,
    the conditional mixtures and the seeds of every draw of MC points."""

    estimator: SPMutualInformation
    beta: float
    rows: npt.NDArray[np.int64]
    real: _Realisations
    y: npt.NDArray[np.integer] | None
    groups: npt.NDArray[np.bool_]
    layout: _Layout
    cond_centres: npt.NDArray[np.float64] | None
    """(m, K, d) realisations of the inputs with draws, or None for the closed form."""
    seeds: tuple[int, int, int]
    """Seeds of the first points, of the added points (when there are any) and of h(T|X)'s,
    drawn in that order, so that h(T|X) takes the second when nothing is added."""
    first: int
    """The points of stage 0."""
    kwargs: dict[str, Any]

    @classmethod
    def of(cls, est: SPMutualInformation, block: Block) -> _Plan:
        beta = est.beta if est.beta is not None else block.beta
        # the same input subsets for every layer and epoch, so curves do not jitter with them
        subsets = np.random.default_rng(est.seed)
        rows = _subset_rows(block.s.shape[0], est.max_samples, subsets)
        real = _Realisations.of(block, rows, pool=est.pool_draws)
        y = None if block.y is None else np.asarray(block.y)[rows]
        groups, layout = real.groups(y)
        cond_centres = None
        if not block.deterministic_given_x:
            if block.s_cond is None or block.cond_index is None:
                msg = f"sp-mi: layer {block.layer!r} has no conditional draws"
                raise EstimatorRequirementError(msg)
            pick = _subset_rows(block.s_cond.shape[0], est.max_conditionals, subsets)
            own = np.asarray(block.s, dtype=np.float64)[np.asarray(block.cond_index)[pick]]
            cond_centres = np.concatenate(
                [own[:, None, :], np.asarray(block.s_cond, dtype=np.float64)[pick]], axis=1
            )
        rng = block.rng(est.seed)
        seeds = (_seed(rng), _seed(rng), _seed(rng))
        # two points per input first, so that the standard error is measured within inputs
        # (one point each pairs neighbouring inputs and overstates it)
        first = est.n_points or min(est.max_points, max(_FIRST_POINTS, 2 * real.n_inputs))
        kwargs: dict[str, Any] = {"device": est.device or block.device, "dtype": est.dtype}
        return cls(est, beta, rows, real, y, groups, layout, cond_centres, seeds, first, kwargs)

    def unconditional(
        self, n_points: int, seed: int, part: int, parts: int
    ) -> tuple[torch.Tensor, torch.Tensor, MixturePoints] | None:
        """This part's points among ``n_points`` drawn from the mixture (stratified by input):
        their indices, the log densities ``(N_part, columns)`` of the mixture and its groups at
        them, and the points. A part is a slab of the points along the centres' principal axis,
        so that its points are as dense where they lie as the whole sample (the pruned kernel's
        work per point depends on that density, not on how many points there are)."""
        points = draw_points(self.real.weights, n_points, self.real.dim, seed=seed,
                             strata=self.real.input_of)
        index = torch.arange(n_points)
        if parts > 1:
            start, stop = part_bounds(n_points, part, parts)
            index = torch.as_tensor(self._slabs(points)[start:stop])
        if index.numel() == 0:
            return None
        points = points.select(points=index)
        density = mixture_log_density(self.real.centres, self.beta, points,
                                      weights=self.real.weights, groups=self.groups, **self.kwargs)
        return index, density.log_density.cpu(), points

    def _slabs(self, points: MixturePoints) -> npt.NDArray[np.int64]:
        """The points' indices in the order of their positions along the centres' principal
        axis (the same in every part)."""
        centres = self.real.centres
        spread = np.cov(centres, rowvar=False).reshape(centres.shape[1], centres.shape[1])
        axis = np.linalg.eigh(spread)[1][:, -1]
        where = centres[points.centre[0].numpy()] + self.beta * points.noise[0].double().numpy()
        return np.argsort(where @ axis, kind="stable")

    def conditional(
        self, seed: int, part: int, parts: int
    ) -> tuple[torch.Tensor, MixturePoints] | None:
        """Log densities ``(m_part, N, 3)`` of this part's run of the h(T|X=x) mixtures (whole
        and halves), at their points; None for the closed form or an empty part."""
        if self.cond_centres is None:
            return None
        m, k, d = self.cond_centres.shape
        points = draw_points(np.ones((m, k)), k * self.estimator.n_mc_conditional, d, seed=seed)
        start, stop = part_bounds(m, part, parts)
        if start == stop:
            return None
        points = points.select(mixtures=slice(start, stop))
        density = mixture_log_density(self.cond_centres[start:stop], self.beta, points,
                                      groups=_halves(k), **self.kwargs)
        return density.log_density.cpu(), points


@dataclass(frozen=True)
class _Carry:
    """What the stages hand on: h(T)'s log densities and points so far, how many points stage
    1 adds, and the h(T|X=x) mixtures' log densities and points once stage 1 ran."""

    log_density: torch.Tensor
    points: MixturePoints
    extra: int
    cond_log_density: torch.Tensor | None = None
    cond_points: MixturePoints | None = None


def _joined(
    results: list[tuple[torch.Tensor, torch.Tensor, MixturePoints] | None],
) -> tuple[torch.Tensor, MixturePoints]:
    """The parts' log densities and points, back in the order they were drawn."""
    done = [r for r in results if r is not None]
    order = torch.argsort(torch.cat([r[0] for r in done]))
    points = MixturePoints.concat([r[2] for r in done], along="points")
    return torch.cat([r[1] for r in done])[order], points.select(points=order)


def _unconditional(plan: _Plan, log_density: torch.Tensor, points: MixturePoints) -> _Unconditional:
    """h(T), h(T|Y) and I(T;Y)'s paired error, with nested-halves biases, at one set of MC
    points: the columns of :func:`mixture_log_density` are the whole mixture, each half,
    and each class (whole and halved)."""
    real, y, beta = plan.real, plan.y, plan.beta
    entropy, stderr, terms = mc_entropy_estimate(log_density, points)
    h = entropy.numpy()
    out = _Unconditional(
        h_t=float(h[0]), h_t_se=float(stderr[0]),
        h_t_bias=real.bias(float(h[0]), float(h[1]), float(h[2])),
        n_points=points.n_points,
        saturated=real.pooled and _saturated(
            float(h[0]), float(stderr[0]), real.log_count_ceiling(), real.dim, beta
        ),
    )
    if y is None:
        return out
    layout = plan.layout
    classes, p = layout.classes, layout.class_weights
    whole = layout.class_columns
    h_ty = float(np.dot(p, h[whole]))
    halves = float(np.dot(p, (h[layout.class_half_a] + h[layout.class_half_b]) / 2))
    # I(T;Y) point by point: log g_y(p) - log g(p) at the point's own class
    t = terms.numpy()
    own = np.searchsorted(classes, real.label_of(y)[points.centre[0].numpy()])
    paired = t[:, 0] - t[np.arange(len(t)), np.asarray(whole)[own]]
    return dataclasses.replace(
        out, h_ty=h_ty,
        h_ty_se=float(np.sqrt(np.dot(p**2, stderr.numpy()[whole] ** 2))),
        h_ty_bias=real.bias(h_ty, halves, halves),
        mi_ty_se=float(stratified_stderr(paired, points)[0]),
    )


def _conditional(
    plan: _Plan, log_density: torch.Tensor | None, points: MixturePoints | None, n_inputs: int
) -> _Conditional:
    """Mean h(T|X=x) over the inputs with draws, its standard error, nested-halves bias and
    saturation; the closed form for a layer that is deterministic given x."""
    d, beta = plan.real.dim, plan.beta
    if plan.cond_centres is None or log_density is None or points is None:
        return _Conditional(gaussian_entropy(d, beta), 0.0, 0.0, 0, 0, False)
    m, k, _ = plan.cond_centres.shape
    entropy, stderr, _ = mc_entropy_estimate(log_density, points)
    h = entropy.numpy()
    se = np.nan_to_num(stderr.numpy()[:, 0], nan=0.0)
    mean = float(h[:, 0].mean())
    mc_var = float(np.sum(se**2)) / m**2
    fpc = max(0.0, 1.0 - m / n_inputs)
    sampling_var = float(np.var(h[:, 0], ddof=1)) / m * fpc if m > 1 else 0.0
    sizes = _halves(k).sum(axis=1)
    bias = _extrapolated_bias(mean, float((h[:, 1] + h[:, 2]).mean() / 2), 1 / k,
                              float(np.mean(1 / sizes)))
    total_se = math.sqrt(mc_var + sampling_var)
    saturated = _saturated(mean, total_se, math.log(k), d, beta)
    return _Conditional(mean, total_se, bias, m, k, saturated)


# ------------------------------------------------------------------------------------------------
# the samples


@dataclass(frozen=True)
class _Layout:
    """Where each quantity sits among the columns of the unconditional evaluation."""

    classes: npt.NDArray[np.integer]
    class_weights: npt.NDArray[np.float64]
    class_columns: list[int]
    class_half_a: list[int]
    class_half_b: list[int]


@dataclass(frozen=True)
class _Realisations:
    """Every realisation of S given each input, pooled: the centres of h(T).

    Centres are ordered input by input, so that the stratified MC points of
    :func:`draw_points` give every union of inputs (a class) its exact share; each input's
    realisations share its weight 1/n. ``position`` numbers the realisations within their input.
    """

    centres: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]
    input_of: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    """Realisations per input, K_i."""
    pooled: bool
    """Some input has more than one realisation."""
    exact: bool
    """S is a function of x (no noise before the layer): one realisation per input is p(S|x)."""

    @property
    def dim(self) -> int:
        return int(self.centres.shape[1])

    @classmethod
    def of(cls, block: Block, rows: npt.NDArray[np.int64], *, pool: bool) -> _Realisations:
        s = np.asarray(block.s, dtype=np.float64)[rows]
        n = len(rows)
        draws = None
        if pool and not block.deterministic_given_x and block.s_cond is not None:
            where = np.full(block.s.shape[0], -1, dtype=np.int64)
            where[np.asarray(block.cond_index)] = np.arange(len(block.cond_index))
            draws = where[rows]
        if draws is None or not (draws >= 0).any():
            ones = np.ones(n, dtype=np.int64)
            return cls(s, np.full(n, 1.0 / n), np.arange(n), np.zeros(n, np.int64), ones,
                       pooled=False, exact=block.deterministic_given_x)
        extra = block.s_cond.shape[1]
        count = np.where(draws >= 0, 1 + extra, 1).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        total = int(count.sum())
        centres = np.empty((total, s.shape[1]))
        centres[start] = s
        with_draws = np.flatnonzero(draws >= 0)
        cond = np.asarray(block.s_cond, dtype=np.float64)[draws[with_draws]]
        slots = start[with_draws, None] + 1 + np.arange(extra)[None, :]
        centres[slots.ravel()] = cond.reshape(-1, s.shape[1])
        input_of = np.repeat(np.arange(n), count)
        position = np.arange(total) - np.repeat(start, count)
        weights = 1.0 / (n * count[input_of])
        return cls(centres, weights, input_of, position, count, pooled=True, exact=False)

    def halves(self) -> npt.NDArray[np.bool_]:
        """(2, centres) membership of the two halves of each input's realisations; an input
        with one realisation keeps it in both."""
        first = self.position < (self.count[self.input_of] + 1) // 2
        single = self.count[self.input_of] == 1
        return np.stack([first | single, ~first | single])

    @property
    def n_inputs(self) -> int:
        return int(self.count.shape[0])

    def groups(self, y: npt.NDArray[np.integer] | None) -> tuple[npt.NDArray[np.bool_], _Layout]:
        """Columns: halves A and B, then each class, then each class within A and within B."""
        halves = self.halves()
        if y is None:
            return halves, _Layout(np.array([]), np.array([]), [], [], [])
        labels = self.label_of(y)
        classes, counts = np.unique(y, return_counts=True)
        member = labels[None, :] == classes[:, None]
        groups = np.concatenate([halves, member, member & halves[0], member & halves[1]])
        c = len(classes)
        column = 1 + 2  # column 0 is the whole mixture, then the halves
        layout = _Layout(
            classes=classes,
            class_weights=counts / counts.sum(),
            class_columns=list(range(column, column + c)),
            class_half_a=list(range(column + c, column + 2 * c)),
            class_half_b=list(range(column + 2 * c, column + 3 * c)),
        )
        return groups, layout

    def label_of(self, y: npt.NDArray[np.integer]) -> npt.NDArray[np.integer]:
        """The class of every centre."""
        return np.asarray(y)[self.input_of]

    def bias(self, whole: float, half_a: float, half_b: float) -> float:
        """The sampling bias of ``whole`` extrapolated from its halves (see the module notes):
        0 when S is a function of x, NaN when no input has two realisations to halve."""
        if self.exact:
            return 0.0
        halves = self.halves()
        inverse_half = np.mean([
            np.mean(1 / np.bincount(self.input_of[h], minlength=len(self.count))) for h in halves
        ])
        return _extrapolated_bias(whole, (half_a + half_b) / 2, float(np.mean(1 / self.count)),
                                  float(inverse_half))

    def log_count_ceiling(self) -> float:
        """ln of the effective number of realisations per input, E[ln K_i]: h(T) reaches
        ln n + E[ln K_i] + h(Z) when every realisation stands apart; the excess over ln n is
        the part that measures the number of draws."""
        return float(np.mean(np.log(self.count))) + math.log(len(self.count))


@dataclass(frozen=True)
class _Unconditional:
    h_t: float
    h_t_se: float
    h_t_bias: float
    n_points: int
    saturated: bool
    h_ty: float | None = None
    h_ty_se: float = math.nan
    h_ty_bias: float = math.nan
    mi_ty_se: float = math.nan


@dataclass(frozen=True)
class _Conditional:
    h: float
    se: float
    bias: float
    m: int
    k: int
    saturated: bool


def _halves(k: int) -> npt.NDArray[np.bool_]:
    """(2, k) membership of the first ceil(k/2) and the other realisations (both, for k = 1)."""
    first = np.arange(k) < (k + 1) // 2
    return np.stack([first, ~first]) if k > 1 else np.ones((2, 1), dtype=bool)


def _extrapolated_bias(whole: float, half: float, inv_k: float, inv_k_half: float) -> float:
    r"""Bias of an estimate from K samples, given its mean over halves of K_h samples.

    The plug-in entropy's leading bias is :math:`-C/K`, so :math:`\bar e_h - e = -C(1/K_h - 1/K)`
    and the bias of :math:`e` is :math:`(\bar e_h - e)\,(1/K)/(1/K_h - 1/K)`; with even halves
    simply :math:`\bar e_h - e`. NaN when the halves are the whole (one sample per input).
    """
    if not inv_k_half > inv_k:
        return math.nan
    return (half - whole) * inv_k / (inv_k_half - inv_k)


def _saturated(h: float, se: float, log_count: float, d: int, beta: float) -> bool:
    """Whether a mixture entropy sits at its ceiling ln K + h(Z): its components stand apart."""
    if log_count <= 0:
        return False
    excess = h - gaussian_entropy(d, beta)
    return excess >= _SATURATION * log_count - 3 * se


def _seed(rng: np.random.Generator) -> int:
    """A seed for one kernel call, drawn from the block's generator."""
    return int(rng.integers(0, 2**62))


def _role(name: str) -> str:
    """How a variable relates to the estimates, for summaries."""
    if name.endswith("_stderr"):
        return "stderr"
    if name.endswith("_bias"):
        return "diagnostic"
    return "estimate" if name.startswith("mi_") else "component"


def _subset_rows(n: int, limit: int | None, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Indices of a seeded subset of ``limit`` of ``n`` rows (all rows when not smaller)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


@hookimpl
def ibframe_register_estimators(registry: Any) -> None:
    registry.add(SPMutualInformation)
