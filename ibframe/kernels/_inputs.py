"""Validation of the mixture kernels' array, dtype, device and seed arguments."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Any

import numpy as np
import torch

from ibframe.errors import ParameterError


def resolve_dtype(dtype: Any) -> torch.dtype:
    """``float32`` (the default) or ``float64`` as a torch dtype."""
    if dtype is None:
        return torch.float32
    if dtype in (torch.float32, torch.float64):
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = ""
    if name in ("float32", "float64"):
        return getattr(torch, name)
    msg = f"dtype must be float32 or float64, got {dtype!r}"
    raise ParameterError(msg)


def resolve_device(values: Any, device: str | torch.device | None) -> torch.device:
    """``device``, or the device of a tensor ``values``, else the CPU."""
    if device is None:
        return values.device if isinstance(values, torch.Tensor) else torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = f"invalid device {device!r}: {exc}"
        raise ParameterError(msg) from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {device!r} requested but CUDA is not available"
        raise ParameterError(msg)
    return target


def as_float64(values: Any, name: str, device: torch.device) -> torch.Tensor:
    """``values`` as a finite float64 tensor on ``device``; rejects non-real and empty input."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        if tensor.is_complex() or tensor.dtype == torch.bool:
            msg = f"{name} must be real numbers, got dtype {tensor.dtype}"
            raise ParameterError(msg)
    else:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as exc:
            msg = f"{name} must be a numeric array: {exc}"
            raise ParameterError(msg) from exc
        if array.dtype.kind not in "iuf":
            msg = f"{name} must be real numbers, got dtype {array.dtype}"
            raise ParameterError(msg)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    if tensor.numel() == 0 or tensor.ndim == 0:
        msg = f"{name} must be a non-empty array, got shape {tuple(tensor.shape)}"
        raise ParameterError(msg)
    tensor = tensor.to(device=device, dtype=torch.float64)
    # a finite sum proves every element finite; only a non-finite one needs the full check
    if not math.isfinite(float(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        msg = f"{name} must be finite but contain NaN or inf"
        raise ParameterError(msg)
    return tensor


def mixture_weights(weights: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Mixture weights ``(b, n)`` as float64 rows that sum to 1; ``None`` means equal ones.

    ``weights`` is ``(n,)`` for one mixture or ``(b, n)``; they must be >= 0 with a positive
    sum in every mixture.
    """
    b, n = shape
    if weights is None:
        return torch.full((b, n), 1.0 / n, dtype=torch.float64, device=device)
    w = as_float64(weights, "weights", device)
    if w.ndim == 1 and b == 1:
        w = w[None]
    if tuple(w.shape) != (b, n):
        expected = f"({n},)" if b == 1 else f"({b}, {n})"
        msg = f"weights must have shape {expected} matching centers, got {tuple(w.shape)}"
        raise ParameterError(msg)
    if bool((w < 0).any()):
        msg = "weights must be >= 0"
        raise ParameterError(msg)
    total = w.sum(dim=1, keepdim=True)
    if bool((total <= 0).any()):
        msg = "weights must have a positive sum in every mixture"
        raise ParameterError(msg)
    return w / total


def check_seed(seed: Any) -> int | None:
    """``seed`` as a non-negative int, or ``None``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        msg = f"seed must be an int or None, got {seed!r}"
        raise ParameterError(msg)
    if seed < 0:
        msg = f"seed must be non-negative, got {seed}"
        raise ParameterError(msg)
    return int(seed)


@contextmanager
def exact_float32_matmul(device: torch.device) -> Iterator[None]:
    """Switch TF32 off for CUDA matmuls (it costs 1-190 nats here), restoring the setting."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = saved
