"""Exceptions and warnings that ibframe raises.

Every error a user can cause derives from :class:`IbframeError` and from the matching builtin,
so ``except FileNotFoundError`` and ``except ibframe.IbframeError`` both work. The CLI prints
the message of an ``IbframeError`` as one line and exits non-zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class IbframeError(Exception):
    """Root of every error ibframe raises on purpose."""


class StoreError(IbframeError, ValueError):
    """A run store is foreign, of an unknown format version, or would be corrupted by a write."""


class StoreNotFoundError(IbframeError, FileNotFoundError):
    """No run store exists at the given path."""


class IncompleteStoreError(StoreError):
    """A run store's creation was interrupted; ``create_run(..., overwrite=True)`` replaces it."""


class StoreLockedError(StoreError):
    """Another writer holds the run store's writer lock; the message names it."""


class ActivationError(IbframeError, ValueError):
    """Activations handed to the store have the wrong shape or hold NaN/inf."""


class EstimatorNotFoundError(IbframeError, LookupError):
    """An estimator name is not registered; the message lists the known names."""


class ExperimentNotFoundError(IbframeError, LookupError):
    """An experiment name is not registered; the message lists the known names."""


class ParameterError(IbframeError, ValueError):
    """An estimator parameter is unknown, of the wrong type, or out of range."""


class EstimatorRequirementError(IbframeError, ValueError):
    """A run lacks what an estimator needs (labels, conditional draws, noise, several epochs)."""


class PluginError(IbframeError, TypeError):
    """A plugin registered something that is not a valid estimator."""


class ResultConventionError(IbframeError, ValueError):
    """A result Dataset breaks the conventions of docs/results.md."""


class DatasetError(IbframeError, ValueError):
    """A data file is missing, unreadable, or does not match what it should hold."""


class TrainingError(IbframeError, RuntimeError):
    """Training diverged (NaN/inf loss) or was configured inconsistently."""


@dataclasses.dataclass(frozen=True)
class TaskFailure:
    """One (estimator, layer, epoch) task that raised instead of returning a result.

    ``run`` names the run store when several were estimated together (else None).
    """

    estimator: str
    layer: str
    epoch: int
    error: str
    run: str | None = None

    def __str__(self) -> str:
        where = "" if self.run is None else f" of run {self.run}"
        return (f"{self.estimator} failed on layer {self.layer!r}{where} at epoch {self.epoch}: "
                f"{self.error}")


class EstimationFailed(IbframeError, RuntimeError):
    """Some estimation tasks failed; the others' results were kept (and cached).

    ``failures`` lists what failed; ``result`` is the Dataset of everything that succeeded (None
    when nothing did), so a caller can still use, save or plot it.
    """

    def __init__(self, failures: list[TaskFailure], result: Any = None) -> None:
        self.failures = list(failures)
        self.result = result
        first = self.failures[0] if self.failures else "no task"
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        super().__init__(f"{first}{more}")


class IbframeWarning(UserWarning):
    """Root of ibframe's warnings."""


class PluginLoadWarning(IbframeWarning):
    """A third-party plugin failed to load and was skipped."""


class ParameterWarning(IbframeWarning):
    """A parameter combination is allowed but probably not what was meant."""


class QualityWarning(IbframeWarning):
    """An estimate's own quality flag (e.g. ``converged`` of ``sp-mi``) is false somewhere."""


class SampleSizeWarning(IbframeWarning):
    """The number of samples is far below what the theory asks for an unbiased estimate."""
