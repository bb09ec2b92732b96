r"""``sp-mi``: the sample-propagation (SP) estimator of Goldfeld et al. (ICML 2019), eq. (1).

.. math::
    \hat I_{SP}(X; T_\ell) = h(\hat p_{S_\ell} * \varphi_\beta)
        - \frac1m \sum_{x} h(\hat p_{S_\ell^{(x)}} * \varphi_\beta),
    \qquad
    \hat I(T_\ell; Y) = h(\hat p_{S_\ell} * \varphi_\beta)
        - \sum_y \hat p(y)\, h(\hat p_{S_\ell | Y = y} * \varphi_\beta)

Every term is the entropy of a Gaussian mixture (:mod:`ibframe.kernels.mixture`). The
unconditional centres are the stored S of draw 0; the conditional ones, for each x, the stored
conditional draws (n_x passes of x with fresh noise in the layers before). For a layer whose S is
a deterministic function of x (the first noisy layer), h(T|X) = (d/2) ln(2 pi e beta^2) exactly.
"""

from __future__ import annotations

import math
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import xarray as xr

from ibframe.errors import EstimatorRequirementError, ParameterError, ParameterWarning
from ibframe.estimator import Block, Estimator
from ibframe.hookspecs import hookimpl
from ibframe.kernels.mixture import (
    DEFAULT_N_MC,
    DEFAULT_N_MC_BATCH,
    gaussian_entropy,
    gaussian_mixture_entropy,
    mc_standard_error,
)
from ibframe.theory import sample_size_warning, sp_diagnostics

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from ibframe.store import Run

_NAT = "nat"
_SHARED_NOISE_LIMIT = 2**23  # standard normals held at once for common random numbers (64 MiB)
_BETA_SQUARED_RANGE = (1e-300, 1e300)  # beta^2 and 1/beta^2 stay finite floats


@dataclass(frozen=True, kw_only=True)
class SPMutualInformation(Estimator):
    r"""I(X;T_l) and I(T_l;Y) of a noisy network by sample propagation, with standard errors.

    Standard errors combine the Monte Carlo error of every mixture entropy with, when only ``m``
    of the ``n`` inputs' conditional entropies are averaged, the sampling error of that mean
    (with the finite-population factor :math:`1 - m/n`). Each result also carries the paper's
    theory diagnostics for its (n, n_mc, d, beta): the Theorem 6 bound on the MC mean squared
    error of h(T), and the Theorem 5 lower bound on the bias of the plug-in h(T) with the sample
    size it asks for (a :class:`SampleSizeWarning` when n is far below it).

    References
    ----------
    Goldfeld et al., "Estimating Information Flow in Deep Neural Networks", ICML 2019, Section 3
    and Appendix C.
    """

    name: ClassVar[str] = "sp-mi"
    description: ClassVar[str] = (
        "Sample-propagation estimate of I(X;T) and I(T;Y) in a noisy network (Goldfeld et al. "
        "2019), with MC standard errors, pairwise bounds and theory diagnostics."
    )
    needs_noise: ClassVar[bool] = True
    # 2: shared MC points for I(T;Y), a fixed max_samples subset, paired standard errors
    version: ClassVar[str] = "2"
    execution_params: ClassVar[frozenset[str]] = frozenset({"device"})

    n_mc: int = field(
        default=DEFAULT_N_MC,
        metadata={"help": "MC draws per centre for h(T) and h(T|Y=y)"},
    )
    n_mc_conditional: int = field(
        default=DEFAULT_N_MC_BATCH,
        metadata={"help": "MC draws per centre for each h(T|X=x) (they are averaged)"},
    )
    beta: float | None = field(
        default=None, metadata={"help": "noise std of the analysis (default: the run's beta)"}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "seeded subset of inputs as centres of h(T) (default all)"}
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
        for name in ("n_mc", "n_mc_conditional"):
            if getattr(self, name) < 1:
                msg = f"sp-mi: {name} must be >= 1, got {getattr(self, name)}"
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
            if not attrs["deterministic_given_x"] and run.conditional(layer) is None:
                msg = (
                    f"sp-mi: layer {layer!r} of {run.path} has noise before it but no recorded "
                    "conditional draws; record with draws > 0"
                )
                raise EstimatorRequirementError(msg)

    def memory_bytes(self, run: Run, layer: str) -> int:
        """The block, plus the float64 MC terms and control variates of h(T), h(T|Y) and their
        pairing (about 32 bytes per draw), and those of the batched h(T|X=x) (16 per draw)."""
        n = run.n_samples if self.max_samples is None else min(run.n_samples, self.max_samples)
        conditional = run.conditional(layer)
        draws = 0
        if conditional is not None and not run.layer_attrs(layer)["deterministic_given_x"]:
            m = conditional.sizes["cond_sample"]
            m = m if self.max_conditionals is None else min(m, self.max_conditionals)
            draws = m * conditional.sizes["draw"] * self.n_mc_conditional
        return super().memory_bytes(run, layer) + 32 * n * self.n_mc + 16 * draws

    def compute(self, block: Block) -> xr.Dataset:
        beta = self.beta if self.beta is not None else block.beta
        if block.beta > 0 and not math.isclose(beta, block.beta):
            warnings.warn(
                f"sp-mi: analysis beta {beta} differs from the run's {block.beta}; the "
                "conditional draws carry the run's noise, the mixtures the analysis beta",
                ParameterWarning,
                stacklevel=3,
            )
        rng = block.rng(self.seed)
        # the same input subset for every layer and epoch, so curves do not jitter with it
        rows = _subset_rows(block.s.shape[0], self.max_samples, np.random.default_rng(self.seed))
        s = np.asarray(block.s, dtype=np.float64)[rows]
        n, d = s.shape
        kwargs: dict[str, Any] = {"device": self.device or block.device, "dtype": self.dtype}

        # Common random numbers: the MC point mu_i + beta z_ik serves h(T) and h(T|Y=y_i) alike,
        # so their MC errors largely cancel in I(T;Y), whose standard error is then that of the
        # paired per-point differences. Wide layers draw inside the kernel instead of holding
        # every draw in memory, and I(T;Y) takes the independent-errors bound.
        shared = block.y is not None and n * self.n_mc * d <= _SHARED_NOISE_LIMIT
        noise = rng.standard_normal((n, self.n_mc, d)) if shared else None
        h_t, h_t_se, t_terms = gaussian_mixture_entropy(
            s, beta, n_mc=self.n_mc, seed=_seed(rng), noise=noise, return_stderr=True,
            return_terms=True, **kwargs,
        )
        cond = self._conditional_centres(block, rng)
        h_cond, h_cond_se, m = self._conditional_entropy(cond, block, beta, d, _seed(rng), kwargs)
        values: dict[str, tuple[float, str]] = {
            "h_t": (h_t, "differential entropy h(T)"),
            "h_t_stderr": (h_t_se, "standard error of h(T)"),
            "h_t_given_x": (h_cond, "conditional differential entropy h(T|X)"),
            "h_t_given_x_stderr": (h_cond_se, "standard error of h(T|X)"),
            "mi_x_t": (h_t - h_cond, "mutual information I(X;T)"),
            "mi_x_t_stderr": (math.hypot(h_t_se, h_cond_se), "standard error of I(X;T)"),
        }
        if block.y is not None:
            y = np.asarray(block.y)[rows]
            h_ty, h_ty_se, pairs = self._class_conditional_entropy(
                s, y, beta, rng, noise, t_terms, kwargs
            )
            mi_se = mc_standard_error(pairs) if pairs is not None else math.hypot(h_t_se, h_ty_se)
            values["h_t_given_y"] = (h_ty, "conditional differential entropy h(T|Y)")
            values["h_t_given_y_stderr"] = (h_ty_se, "standard error of h(T|Y)")
            values["mi_t_y"] = (h_t - h_ty, "mutual information I(T;Y)")
            values["mi_t_y_stderr"] = (mi_se, "standard error of I(T;Y)")
        if self.bounds:
            values.update(self._bounds(s, cond, beta, d, kwargs))

        # Theorem 6 (14) holds for centres in [-1, 1]^d; otherwise (15) with their second moment
        # (about their mean: the entropy does not change under translation).
        bounded = float(np.abs(s).max()) <= 1.0
        second_moment = None if bounded else float(((s - s.mean(axis=0)) ** 2).sum(axis=1).mean())
        diag = sp_diagnostics(n=n, n_mc=self.n_mc, d=d, beta=beta, second_moment=second_moment)
        sample_size_warning(n, d, beta, stacklevel=3)
        data = {
            name: ((), float(value), {"long_name": long_name, "units": _NAT, "role": _role(name)})
            for name, (value, long_name) in values.items()
        }
        diagnostics = {
            "mc_mse_bound": (diag.mc_mse_bound, "nat2",
                             "Theorem 6 bound on the MC mean squared error of h(T)"),
            "bias_lower_bound": (diag.bias_lower_bound, _NAT,
                                 "Theorem 5 lower bound on the worst-case bias of h(T)"),
            "required_samples": (diag.required_samples, "1",
                                 "samples Theorem 5 asks for, k*^(d(1-eps))"),
            "n_samples": (n, "1", "centres of h(T)"),
            "n_conditionals": (m, "1", "inputs averaged in h(T|X) (0: closed form)"),
        }
        for name, (value, units, long_name) in diagnostics.items():
            data[name] = ((), value, {"long_name": long_name, "units": units, "role": "diagnostic"})
        return xr.Dataset(data)

    def _conditional_centres(self, block: Block, rng: np.random.Generator) -> np.ndarray | None:
        """Conditional draws (m, n_x, d) of the inputs averaged in h(T|X), or None if exact."""
        if block.deterministic_given_x:
            return None
        if block.s_cond is None:
            msg = f"sp-mi: layer {block.layer!r} has no conditional draws"
            raise EstimatorRequirementError(msg)
        cond = np.asarray(block.s_cond, dtype=np.float64)
        return cond[_subset_rows(cond.shape[0], self.max_conditionals, rng)]

    def _conditional_entropy(
        self,
        cond: np.ndarray | None,
        block: Block,
        beta: float,
        d: int,
        seed: int,
        kwargs: dict[str, Any],
    ) -> tuple[float, float, int]:
        """Mean h(T|X=x) with its standard error and the number of inputs averaged."""
        if cond is None:
            return gaussian_entropy(d, beta), 0.0, 0
        m = cond.shape[0]
        h, se = gaussian_mixture_entropy(
            cond, beta, n_mc=self.n_mc_conditional, seed=seed, return_stderr=True, **kwargs
        )
        mc_var = float(np.sum(np.square(se))) / m**2
        fpc = max(0.0, 1.0 - m / block.s.shape[0])
        sampling_var = float(np.var(h, ddof=1)) / m * fpc if m > 1 else 0.0
        return float(np.mean(h)), math.sqrt(mc_var + sampling_var), m

    def _class_conditional_entropy(
        self,
        s: np.ndarray,
        y: np.ndarray,
        beta: float,
        rng: np.random.Generator,
        noise: np.ndarray | None,
        t_terms: np.ndarray,
        kwargs: dict[str, Any],
    ) -> tuple[float, float, np.ndarray | None]:
        """sum_y p(y) h(T|Y=y), each class's centres its own mixture, with its standard error.

        With shared ``noise`` also returns the per-point differences of the MC terms of h(T) and
        h(T|Y=y_i), whose mean is the estimate of I(T;Y) (class weights p(y) = n_y / n make the
        weighted class means the overall mean).
        """
        total, var = 0.0, 0.0
        pairs = None if noise is None else np.empty_like(t_terms)
        classes, counts = np.unique(y, return_counts=True)
        for label, count in zip(classes, counts, strict=True):
            p = count / len(y)
            rows = y == label
            h, se, terms = gaussian_mixture_entropy(
                s[rows], beta, n_mc=self.n_mc, seed=_seed(rng),
                noise=None if noise is None else noise[rows], return_stderr=True,
                return_terms=True, **kwargs,
            )
            total += p * h
            var += (p * (se if math.isfinite(se) else 0.0)) ** 2
            if pairs is not None:
                pairs[rows] = t_terms[rows] - terms
        return total, math.sqrt(var), pairs

    def _bounds(
        self,
        s: np.ndarray,
        cond: np.ndarray | None,
        beta: float,
        d: int,
        kwargs: dict[str, Any],
    ) -> dict[str, tuple[float, str]]:
        """I(X;T) bounds: h(T) bounded above (KL) or below (Bhattacharyya), h(T|X) the other way."""
        upper_t = gaussian_mixture_entropy(s, beta, method="kl-upper", **kwargs)
        lower_t = gaussian_mixture_entropy(s, beta, method="bhattacharyya-lower", **kwargs)
        if cond is None:
            upper_c = lower_c = gaussian_entropy(d, beta)
        else:
            upper_c = float(np.mean(gaussian_mixture_entropy(cond, beta, method="kl-upper", **kwargs)))
            lower_c = float(
                np.mean(gaussian_mixture_entropy(cond, beta, method="bhattacharyya-lower", **kwargs))
            )
        return {
            "mi_x_t_upper": (upper_t - lower_c, "upper bound on I(X;T) (pairwise KL)"),
            "mi_x_t_lower": (lower_t - upper_c, "lower bound on I(X;T) (pairwise Bhattacharyya)"),
        }


def _seed(rng: np.random.Generator) -> int:
    """A seed for one kernel call, drawn from the block's generator."""
    return int(rng.integers(0, 2**62))


def _role(name: str) -> str:
    """How a variable relates to the estimates, for summaries: estimate, stderr or component."""
    if name.endswith("_stderr"):
        return "stderr"
    return "estimate" if name.startswith("mi_") else "component"


def _subset_rows(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of a seeded subset of ``limit`` of ``n`` rows (all rows when not smaller)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


@hookimpl
def ibframe_register_estimators(registry: Any) -> None:
    registry.add(SPMutualInformation)
