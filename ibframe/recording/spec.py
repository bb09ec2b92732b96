"""What an experiment is: its training settings and its set-up, below the registry that holds them.

:class:`ExperimentSpec` and :class:`TrainSettings` are plain data: they import nothing of ibframe
at run time, so that :mod:`ibframe.registry` can name them without importing the training code.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

if typing.TYPE_CHECKING:
    import torch

    from ibframe.recording.datasets import Dataset
    from ibframe.recording.nn import NoisyNetwork

#: ``loss(output, y)``: the scalar training loss of a batch.
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
#: ``metrics(output, y)``: named numbers such as ``{"loss": ..., "accuracy": ...}``.
MetricsFn = Callable[["torch.Tensor", "torch.Tensor"], Mapping[str, float]]


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Training and recording settings; every field can be overridden in :func:`train`.

    Attributes
    ----------
    epochs
        Training epochs; epochs 0 (the initial network) to ``epochs`` can be recorded.
    beta
        Noise standard deviation after each hidden layer (0: deterministic network).
    activation
        Hidden nonlinearity, one of the experiment's ``activations``.
    lr, lr_final
        Learning rate, and the rate reached at the last epoch by a geometric decay (None: constant).
    optimizer
        "adam" or "sgd" (plain gradient descent, no momentum).
    batch_size
        Minibatch size; None trains on the full training set at each step.
    record
        Which epochs to record (see :meth:`ibframe.recording.recorder.RecordSchedule.parse`).
    draws
        Conditional draws per conditional sample (0: none); None: the recorder's default,
        :data:`ibframe.recording.recorder.DEFAULT_DRAWS` for a noisy network.
    conditional_samples
        Inputs that get conditional draws, a seeded subset of this size; None: all of them, as
        far as the recorder's store budget allows.
    samples
        Inputs recorded, a seeded subset of this size (all of them when None).
    orthonormal
        alpha of the orthonormality step W <- W - alpha (W W^T - I) W after each update
        (Appendix B.1); None: off.
    augment
        Apply the experiment's data augmentation to every training minibatch (for the MNIST CNN,
        Appendix B.3's random translations, rotations and shears); ignored by experiments
        without one.
    layer_set
        Which layers to record, one of the experiment's ``layer_sets`` (for the MNIST CNNs
        "pooled", the paper's layers 1-4, or "pre-pool"); None: the experiment's first. Only
        experiments with ``layer_sets`` accept one.
    """

    epochs: int
    beta: float
    lr: float
    activation: str = "tanh"
    lr_final: float | None = None
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int | None = None
    record: str = "log:100"
    draws: int | None = None
    conditional_samples: int | None = None
    samples: int | None = None
    orthonormal: float | None = None
    augment: bool = False
    layer_set: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A training set-up for ``ibframe train``.

    Attributes
    ----------
    name
        Kebab-case name, unique among the registered experiments.
    description
        One line for ``ibframe train --help`` listings.
    load_data
        ``load_data(path)`` returns the :class:`ibframe.recording.datasets.Dataset`; ``path`` is the
        user's ``--data`` or None for the experiment's own data.
    build_model
        ``build_model(data, beta, activation)`` returns the :class:`ibframe.recording.nn.NoisyNetwork`,
        drawing its initial weights from the global torch RNG (seeded by :func:`train`); an
        experiment with ``layer_sets`` is called with ``layer_set=`` one of them as well.
    loss
        ``loss(output, y)``: the scalar training loss of a batch.
    metrics
        ``metrics(output, y)``: e.g. ``{"loss": ..., "accuracy": ...}``, recorded per split part.
    defaults
        The :class:`TrainSettings` used where :func:`train` is not told otherwise.
    activations
        The nonlinearities ``build_model`` accepts.
    augment
        ``augment(x_batch, generator)``: a random transform of training inputs, or None.
    layer_sets
        The choices of recorded layers ``build_model`` accepts as ``layer_set``, the first the
        default; empty: the experiment records one fixed set of layers.
    """

    name: str
    description: str
    load_data: Callable[[str | Path | None], Dataset]
    build_model: Callable[..., NoisyNetwork]
    loss: LossFn
    metrics: MetricsFn
    defaults: TrainSettings
    activations: tuple[str, ...] = ("tanh",)
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    layer_sets: tuple[str, ...] = ()


