"""The unit of work of an estimator: one layer at one epoch of a run, as numpy arrays.

It sits below both the run store, which builds blocks, and the estimator contract, which
consumes them, so neither needs the other.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Block:
    """One layer at one epoch, as numpy arrays: the unit of work of an estimator.

    Attributes
    ----------
    layer, epoch
        Which layer and epoch these activations are.
    layer_index
        Position of the layer among the run's hidden layers, counting from 1.
    s
        Pre-noise outputs S (sample, unit) of the unconditional pass (draw 0), float32.
    s_cond
        Conditional draws of S (cond_sample, draw, unit), each pass with fresh noise in the layers
        before this one, or ``None`` when the run recorded none.
    cond_index
        For each conditional sample, its index into ``s`` (cond_sample,), or ``None``.
    y
        Integer class labels (sample,), or ``None``.
    beta
        The run's noise standard deviation; 0 for a deterministic network.
    deterministic_given_x
        True when S of this layer is a deterministic function of x (no noise before it), so the
        conditional entropy h(T|X) is the closed form of the noise alone.
    device
        Torch device string the engine chose for this task ("cpu", "cuda", "cuda:1").
    layer_attrs
        The layer's stored attributes (shape, units, activation, kind, ...).
    context
        What :meth:`Estimator.layer_context` returned for this layer (shared bins, ranges).
    run_path
        The run store this block comes from, for estimators that need more of it (the inputs
        x, say) than the block holds: ``ibframe.open_run(block.run_path,
        storage_options=block.storage_options)`` opens it (a path or a URL).
    storage_options
        The fsspec options of a run store on object storage (None for a local one).
    """

    layer: str
    epoch: int
    layer_index: int
    s: npt.NDArray[np.floating]
    s_cond: npt.NDArray[np.floating] | None
    cond_index: npt.NDArray[np.integer] | None
    y: npt.NDArray[np.integer] | None
    beta: float
    deterministic_given_x: bool
    device: str = "cpu"
    layer_attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run_path: str | None = None
    storage_options: Mapping[str, Any] | None = None

    def rng(self, seed: int | None) -> np.random.Generator:
        """A generator seeded from ``seed`` and this block's (layer, epoch), so tasks differ but
        every rerun of the same task draws the same numbers."""
        return np.random.default_rng(self.seed_sequence(seed))

    def seed_sequence(self, seed: int | None) -> np.random.SeedSequence:
        """The seed sequence behind :meth:`rng`, for torch generators and child streams."""
        entropy = 0 if seed is None else int(seed)
        return np.random.SeedSequence([entropy, zlib.crc32(self.layer.encode()), self.epoch])
