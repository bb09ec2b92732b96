"""The kNN estimators as ibframe estimators, on noisy samples T = S + Z of a layer.

Both draw one seeded noisy sample T_i = S_i + beta Z_i per input (Z_i ~ N(0, I), beta the run's
noise level unless the ``beta`` parameter overrides it) and hand the samples to the kernels of
:mod:`ibframe_knn.kernels`: what a user with NPEET would do with the same network. Compare with
``sp-mi``, which uses the noise model instead of ignoring it.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import xarray as xr

import ibframe
from ibframe import Block, Estimator
from ibframe.errors import EstimatorRequirementError, ParameterError
from ibframe_knn.kernels import kl_entropy, ksg_mi, ksg_mi_discrete

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from ibframe import Run


def _noise_level(beta: float | None, run_beta: float, who: str) -> float:
    level = run_beta if beta is None else beta
    if not level > 0:
        msg = f"{who} estimates on noisy samples T = S + Z and needs beta > 0; the run has 0 "
        msg += "(pass the beta parameter to add noise to a deterministic network)"
        raise EstimatorRequirementError(msg)
    return level


def _check_common(k: int, beta: float | None, who: str) -> None:
    if k < 1:
        msg = f"{who}: k must be >= 1, got {k}"
        raise ParameterError(msg)
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        msg = f"{who}: beta must be a finite number > 0, got {beta}"
        raise ParameterError(msg)


def _noisy(block: Block, beta: float | None, seed: int, who: str) -> np.ndarray:
    level = _noise_level(beta, block.beta, who)
    s = np.asarray(block.s, dtype=np.float64)
    return s + level * block.rng(seed).standard_normal(s.shape)


@dataclass(frozen=True, kw_only=True)
class KnnEntropy(Estimator):
    """Kozachenko-Leonenko k-NN estimate of h(T) from one noisy sample per input."""

    name: ClassVar[str] = "knn-entropy"
    description: ClassVar[str] = (
        "Kozachenko-Leonenko k-NN differential entropy h(T) of noisy samples T = S + Z "
        "(a baseline for sp-mi's h_t)."
    )
    version: ClassVar[str] = "1"
    needs_noise: ClassVar[bool] = True

    k: int = field(default=3, metadata={"help": "neighbour order"})
    beta: float | None = field(
        default=None, metadata={"help": "noise std of T = S + Z (default: the run's beta)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the noise draws"})

    def __post_init__(self) -> None:
        _check_common(self.k, self.beta, self.name)

    def check_run(self, run: Run, layers: Sequence[str]) -> None:
        super().check_run(run, layers)
        _noise_level(self.beta, run.beta, self.name)

    def compute(self, block: Block) -> xr.Dataset:
        t = _noisy(block, self.beta, self.seed, self.name)
        attrs = {"long_name": "Kozachenko-Leonenko k-NN entropy h(T)", "units": "nat"}
        return xr.Dataset({"h_t_kl": ((), kl_entropy(t, self.k), attrs)})


@dataclass(frozen=True, kw_only=True)
class KsgMutualInformation(Estimator):
    """KSG estimator 1 of I(X;T) and I(T;Y) from one noisy sample per input.

    I(X;T) pairs each input's features x_i (flattened) with its noisy T_i; a random jitter of
    ``jitter`` standard deviation is added to both, as NPEET does, to break the ties of discrete
    inputs such as the SZT bit vectors (KSG assumes continuous distributions). I(T;Y) uses the
    discrete-label form of KSG estimator 1 (Ross 2014), with no jitter needed.

    The inputs are not part of an estimator's block: :meth:`compute` reads them from the run
    store the block names (``block.run_path``).
    """

    name: ClassVar[str] = "ksg-mi"
    description: ClassVar[str] = (
        "KSG (estimator 1) k-NN mutual information I(X;T) and I(T;Y) of noisy samples "
        "T = S + Z (an NPEET-style baseline for sp-mi)."
    )
    version: ClassVar[str] = "1"
    needs_noise: ClassVar[bool] = True

    which: Literal["both", "x", "y"] = field(
        default="both", metadata={"help": "I(X;T) (x), I(T;Y) (y) or both"}
    )
    k: int = field(default=3, metadata={"help": "neighbour order"})
    beta: float | None = field(
        default=None, metadata={"help": "noise std of T = S + Z (default: the run's beta)"}
    )
    jitter: float = field(
        default=1e-10, metadata={"help": "std of the tie-breaking noise on X and T for I(X;T)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the noise and jitter draws"})

    def __post_init__(self) -> None:
        _check_common(self.k, self.beta, self.name)
        if self.which not in ("both", "x", "y"):
            msg = f"{self.name}: which must be 'both', 'x' or 'y', got {self.which!r}"
            raise ParameterError(msg)
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            msg = f"{self.name}: jitter must be a finite number >= 0, got {self.jitter}"
            raise ParameterError(msg)

    def check_run(self, run: Run, layers: Sequence[str]) -> None:
        super().check_run(run, layers)
        _noise_level(self.beta, run.beta, self.name)
        if self.which != "x" and not run.has_labels:
            msg = f"{self.name}: I(T;Y) needs class labels, and run {run.path} has none"
            raise EstimatorRequirementError(msg)

    def compute(self, block: Block) -> xr.Dataset:
        rng = block.rng(self.seed)
        level = _noise_level(self.beta, block.beta, self.name)
        s = np.asarray(block.s, dtype=np.float64)
        t = s + level * rng.standard_normal(s.shape)
        data: dict[str, Any] = {}
        if self.which != "y":
            if block.run_path is None:
                msg = (
                    f"{self.name}: I(X;T) reads the inputs from the block's run store, and this "
                    "block names none (build it with Run.block), or pass which=y"
                )
                raise EstimatorRequirementError(msg)
            x = ibframe.open_run(block.run_path, storage_options=block.storage_options).x
            x = x.reshape(x.shape[0], -1).astype(np.float64)
            x = x + self.jitter * rng.standard_normal(x.shape)
            t_jittered = t + self.jitter * rng.standard_normal(t.shape)
            data["mi_x_t_ksg"] = (
                (),
                ksg_mi(x, t_jittered, self.k),
                {"long_name": "KSG k-NN mutual information I(X;T)", "units": "nat"},
            )
        if self.which != "x":
            if block.y is None:
                msg = f"{self.name}: I(T;Y) needs class labels; layer {block.layer} has none"
                raise EstimatorRequirementError(msg)
            data["mi_t_y_ksg"] = (
                (),
                ksg_mi_discrete(t, block.y, self.k),
                {"long_name": "KSG k-NN mutual information I(T;Y)", "units": "nat"},
            )
        return xr.Dataset(data)
