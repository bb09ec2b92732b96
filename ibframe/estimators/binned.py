"""``binned-entropy``: H(Bin(T)) and the binned I(T;Y), per (epoch, layer).

For a deterministic network and X uniform over the data, I(X; Bin(T)) = H(Bin(T)): the plug-in
entropy of the joint bin pattern of a layer's units over the samples. It measures clustering at
the bin's scale, not mutual information of a continuous T (which is infinite or constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import xarray as xr

from ibframe.errors import ParameterError
from ibframe.estimator import Block, Estimator
from ibframe.hookspecs import hookimpl
from ibframe.kernels.binning import bin_indices, entropy_of_codes, mutual_information, row_codes


@dataclass(frozen=True, kw_only=True)
class BinnedEntropy(Estimator):
    r"""Plug-in entropy of the binned representation, H(Bin(T)), and I(Bin(T); Y).

    .. math::
        H(\mathrm{Bin}(T)) = -\sum_b \hat p(b) \ln \hat p(b), \qquad
        I(\mathrm{Bin}(T); Y) = H(\mathrm{Bin}(T)) + H(Y) - H(\mathrm{Bin}(T), Y)

    where b runs over the joint bin patterns of the layer's units. Bins are a floor grid of width
    ``bin_size`` (Saxe et al. 2018) or ``n_bins`` equal bins over ``value_range``
    (Shwartz-Ziv & Tishby 2017). Each value of ``bin_size`` (or ``n_bins``) is one entry of the
    ``bin_size`` dimension of the result.
    """

    name: ClassVar[str] = "binned-entropy"
    description: ClassVar[str] = (
        "Entropy of the binned layer H(Bin(T)) and binned I(T;Y) (Saxe et al.; Shwartz-Ziv & "
        "Tishby); measures clustering."
    )

    bin_size: list[float] | None = field(
        default=None,
        metadata={"help": "bin widths of the floor grid (default 0.07, as Saxe et al.)"},
    )
    n_bins: list[int] | None = field(
        default=None, metadata={"help": "numbers of equal bins over value_range, instead"}
    )
    value_range: list[float] | None = field(
        default=None, metadata={"help": "low,high for n_bins (default -1,1, the tanh range)"}
    )
    noisy: bool = field(
        default=False, metadata={"help": "bin T = S + N(0, beta^2) (seeded) instead of S"}
    )
    beta: float | None = field(
        default=None, metadata={"help": "noise std for noisy=true (default: the run's beta)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the noise for noisy=true"})

    def __post_init__(self) -> None:
        if self.bin_size is not None and self.n_bins is not None:
            msg = "binned-entropy: give bin_size or n_bins, not both"
            raise ParameterError(msg)
        if self.bin_size is None and self.n_bins is None:
            object.__setattr__(self, "bin_size", [0.07])
        for name in ("bin_size", "n_bins"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, list):
                object.__setattr__(self, name, [value])
        for name in ("bin_size", "n_bins"):
            value = getattr(self, name)
            if value is not None and (not value or len(set(value)) != len(value)):
                msg = f"binned-entropy: {name} needs one or more distinct values, got {value}"
                raise ParameterError(msg)
        if self.bin_size is not None and not all(b > 0 and math.isfinite(b) for b in self.bin_size):
            msg = f"binned-entropy: bin_size values must be > 0, got {self.bin_size}"
            raise ParameterError(msg)
        if self.n_bins is not None and not all(int(k) >= 1 for k in self.n_bins):
            msg = f"binned-entropy: n_bins values must be >= 1, got {self.n_bins}"
            raise ParameterError(msg)
        if self.value_range is not None and (
            len(self.value_range) != 2 or not self.value_range[1] > self.value_range[0]
        ):
            msg = f"binned-entropy: value_range must be low,high with high > low, got {self.value_range}"
            raise ParameterError(msg)
        if self.value_range is not None and self.n_bins is None:
            msg = "binned-entropy: value_range goes with n_bins"
            raise ParameterError(msg)
        if self.beta is not None and not self.beta > 0:
            msg = f"binned-entropy: beta must be > 0, got {self.beta}"
            raise ParameterError(msg)

    def compute(self, block: Block) -> xr.Dataset:
        t = np.asarray(block.s, dtype=np.float64)
        if self.noisy:
            beta = self.beta if self.beta is not None else block.beta
            if not beta > 0:
                msg = "binned-entropy: noisy=true needs a beta > 0 (the run is deterministic)"
                raise ParameterError(msg)
            t = t + beta * block.rng(self.seed).standard_normal(t.shape)
        low, high = self.value_range or [-1.0, 1.0]
        settings = (
            [({"bin_size": b}, b) for b in self.bin_size]
            if self.bin_size is not None
            else [
                ({"n_bins": int(k), "value_range": (low, high)}, (high - low) / int(k))
                for k in self.n_bins or []
            ]
        )
        entropies, mis = [], []
        for kwargs, _ in settings:
            codes = row_codes(bin_indices(t, **kwargs))
            entropies.append(float(entropy_of_codes(codes)))
            if block.y is not None:
                mis.append(mutual_information(codes, block.y))
        coords = {"bin_size": [width for _, width in settings]}
        data = {
            "entropy_bin": (
                "bin_size",
                entropies,
                {"long_name": "binned entropy H(Bin(T))", "units": "nat"},
            )
        }
        if mis:
            data["mi_bin_t_y"] = (
                "bin_size",
                mis,
                {"long_name": "binned mutual information I(Bin(T);Y)", "units": "nat"},
            )
        ds = xr.Dataset(data, coords=coords)
        ds["bin_size"].attrs = {"long_name": "bin width", "units": "1"}
        return ds


@hookimpl
def ibframe_register_estimators(registry: object) -> None:
    registry.add(BinnedEntropy)  # type: ignore[attr-defined]
