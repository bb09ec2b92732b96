"""The plugin's hooks, announced through the ``ibframe`` entry-point group (``knn``)."""

from __future__ import annotations

import typing

from ibframe.hookspecs import hookimpl
from ibframe_knn.estimators import KnnEntropy, KsgMutualInformation

if typing.TYPE_CHECKING:
    from ibframe.registry import EstimatorRegistry


@hookimpl
def ibframe_register_estimators(registry: EstimatorRegistry) -> None:
    """Register ``knn-entropy`` and ``ksg-mi``."""
    registry.add(KnnEntropy)
    registry.add(KsgMutualInformation)
