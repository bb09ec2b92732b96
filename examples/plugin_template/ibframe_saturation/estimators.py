"""The ``saturation`` estimator: the share of a layer's activations near the ends of its range.

Saturating units push representations into the corners of the activation cube, which is how the
tanh SZT network clusters and compresses (Goldfeld et al. 2019, Section 5.1 and Fig. 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import ibframe
import numpy as np
import xarray as xr
from ibframe.errors import ParameterError


@dataclass(frozen=True, kw_only=True)
class Saturation(ibframe.Estimator):
    """Fraction of activations with |S| >= threshold, over the layer and per unit."""

    name: ClassVar[str] = "saturation"
    description: ClassVar[str] = "Share of activations with |S| >= threshold, per layer and per unit."
    version: ClassVar[str] = "1"  # bump when results change: it is part of the cache key
    threshold: float = field(default=0.95, metadata={"help": "|S| counted as saturated"})

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            msg = f"saturation: threshold must be > 0, got {self.threshold}"
            raise ParameterError(msg)

    def compute(self, block: ibframe.Block) -> xr.Dataset:
        saturated = np.abs(np.asarray(block.s)) >= self.threshold  # (sample, unit)
        per_unit = saturated.mean(axis=0)
        return xr.Dataset(
            {
                "saturated_fraction": ((), float(saturated.mean()),
                                       {"long_name": "share of saturated activations", "units": "1"}),
                "unit_saturated_fraction": ("unit", per_unit,
                                            {"long_name": "share of saturated activations per unit",
                                             "units": "1"}),
            },
            coords={"unit": np.arange(per_unit.size)},  # layers differ in width: align by unit
        )
