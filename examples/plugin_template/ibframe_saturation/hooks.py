"""The plugin's hooks, found by ibframe through the ``ibframe`` entry point ``saturation``."""

from __future__ import annotations

import typing

from ibframe.hookspecs import hookimpl

from ibframe_saturation.estimators import Saturation

if typing.TYPE_CHECKING:
    from ibframe.registry import EstimatorRegistry


@hookimpl
def ibframe_register_estimators(registry: EstimatorRegistry) -> None:
    """Register ``saturation``."""
    registry.add(Saturation)
