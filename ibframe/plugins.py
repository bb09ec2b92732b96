"""The plugin manager: built-in plugins and the ``ibframe`` entry-point group.

Built-in plugins register through the same hooks as third-party ones. A third-party plugin that
fails to import, or whose hook raises, is reported by name with a :class:`PluginLoadWarning` and
skipped; the others load. ``IBFRAME_DISABLE_PLUGINS=name,name`` blocks plugins by name.
"""

from __future__ import annotations

import functools
import importlib
import os
import typing
import warnings
from importlib.metadata import entry_points
from typing import Any

import pluggy

from ibframe import hookspecs
from ibframe.errors import PluginLoadWarning
from ibframe.registry import EstimatorRegistry, ExperimentRegistry

#: Modules inside ibframe registered as plugins; a failure in one of them is a bug and raises.
DEFAULT_PLUGINS: typing.Final = (
    "ibframe.estimators.binned",
    "ibframe.estimators.sp_mi",
    "ibframe.estimators.clustering",
    "ibframe.experiments",
)


#: Distribution versions of the entry-point plugins, by plugin name.
_DIST_VERSIONS: dict[str, str] = {}


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and entry-point plugins loaded."""
    pm = pluggy.PluginManager("ibframe")
    pm.add_hookspecs(hookspecs)
    blocked = {n.strip() for n in os.environ.get("IBFRAME_DISABLE_PLUGINS", "").split(",")}
    for name in blocked - {""}:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
    for ep in entry_points(group="ibframe"):
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            _DIST_VERSIONS[ep.name] = ep.dist.version if ep.dist is not None else "unknown"
        except Exception as err:  # noqa: BLE001 - a broken plugin must not take the others down
            warnings.warn(
                f"ibframe plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                f"{type(err).__name__}: {err}",
                PluginLoadWarning,
                stacklevel=2,
            )
    pm.check_pending()
    return pm


def _fill(target: Any, hook_name: str, **kwargs: Any) -> None:
    """Call one registration hook plugin by plugin, so a failing plugin is named and skipped."""
    pm = get_plugin_manager()
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):  # registration order: built-ins first
        target.current_plugin = impl.plugin_name
        before = target.snapshot()
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as err:
            if impl.plugin_name in DEFAULT_PLUGINS:
                raise
            target.restore(before)
            warnings.warn(
                f"ibframe plugin {impl.plugin_name!r} failed in {hook_name} and was skipped: {err}",
                PluginLoadWarning,
                stacklevel=3,
            )
    target.current_plugin = "?"


@functools.cache
def estimator_registry() -> EstimatorRegistry:
    """Every registered estimator, built-in and from plugins."""
    registry = EstimatorRegistry()
    _fill(registry, "ibframe_register_estimators", registry=registry)
    return registry


@functools.cache
def experiment_registry() -> ExperimentRegistry:
    """Every registered training set-up for ``ibframe train``."""
    registry = ExperimentRegistry()
    _fill(registry, "ibframe_register_experiments", registry=registry)
    return registry


def plugin_version(plugin_name: str) -> str:
    """Version of the distribution a plugin comes from (ibframe's own for built-ins)."""
    from ibframe import __version__

    if plugin_name in DEFAULT_PLUGINS:
        return __version__
    get_plugin_manager()
    return _DIST_VERSIONS.get(plugin_name, "unknown")


def reset() -> None:
    """Forget the loaded plugins and registries (tests, and after installing a plugin)."""
    get_plugin_manager.cache_clear()
    _DIST_VERSIONS.clear()
    estimator_registry.cache_clear()
    experiment_registry.cache_clear()
