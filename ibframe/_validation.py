"""Checks of scalar arguments shared by the kernels and the theory functions."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from ibframe.errors import ParameterError


def real(value: Any, name: str) -> float:
    """``value`` as a float, refusing booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, Real):
        msg = f"{name} must be a real number, got {value!r}"
        raise ParameterError(msg)
    return float(value)


def positive(value: Any, name: str) -> float:
    """``value`` as a finite float > 0."""
    result = real(value, name)
    if not (math.isfinite(result) and result > 0.0):
        msg = f"{name} must be a positive finite number, got {result}"
        raise ParameterError(msg)
    return result


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, refusing booleans and floats."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        msg = f"{name} must be an integer >= 1, got {value!r}"
        raise ParameterError(msg)
    return int(value)
