"""The hooks a plugin can implement. Every hook is prefixed ``ibframe_``.

A plugin is a module (or object) with functions marked ``@ibframe.hookimpl``, announced through
the ``ibframe`` entry-point group in its distribution's metadata::

    [project.entry-points.ibframe]
    knn = "ibframe_knn.hooks"

Built-in estimators and experiments are registered through these same hooks.
"""

from __future__ import annotations

import typing

import pluggy

if typing.TYPE_CHECKING:
    import typer

    from ibframe.registry import EstimatorRegistry, ExperimentRegistry

hookspec = pluggy.HookspecMarker("ibframe")
hookimpl = pluggy.HookimplMarker("ibframe")


@hookspec
def ibframe_register_estimators(registry: EstimatorRegistry) -> None:
    """Add estimator classes with ``registry.add(EstimatorClass)``.

    :param registry: the host's registry; ``add`` validates the class (a subclass of
        :class:`ibframe.Estimator`, a frozen keyword-only dataclass, a unique kebab-case name, a
        description) and raises :class:`ibframe.errors.PluginError` naming the plugin otherwise.

    .. versionadded:: 0.1
    """


@hookspec
def ibframe_register_experiments(registry: ExperimentRegistry) -> None:
    """Add training set-ups for ``ibframe train`` with ``registry.add(spec)``.

    :param registry: the host's registry of :class:`ibframe.recording.experiments.ExperimentSpec`, keyed by
        the spec's ``name``.

    .. versionadded:: 0.1
    """


@hookspec
def ibframe_register_commands(app: typer.Typer) -> None:
    """Add sub-commands to the ``ibframe`` command line.

    :param app: the root Typer application; add commands with ``@app.command()``.

    .. versionadded:: 0.1
    """
