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
from collections.abc import Callable
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
    "ibframe.recording.experiments",
)


#: (distribution name, version) of the entry-point plugins, by plugin name.
_DISTRIBUTIONS: dict[str, tuple[str, str]] = {}


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
    pm.check_pending()  # a built-in with a hook that matches no hookspec is a bug: raise
    for ep in entry_points(group="ibframe"):
        if pm.is_blocked(ep.name):
            continue
        if pm.get_plugin(ep.name) is not None:
            owner = "ibframe" if ep.name in DEFAULT_PLUGINS else _DISTRIBUTIONS[ep.name][0]
            dist = ep.dist.name if ep.dist is not None else ep.value
            warnings.warn(
                f"ibframe plugin {ep.name!r} from {dist} was skipped: the plugin name "
                f"{ep.name!r} is already taken by {owner}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        try:
            pm.register(ep.load(), name=ep.name)
            # hooks that match no hookspec: a typo, or a hook of a newer ibframe
            pm.check_pending()
        except Exception as err:  # noqa: BLE001 - a broken plugin must not take the others down
            if pm.get_plugin(ep.name) is not None:
                pm.unregister(name=ep.name)
            warnings.warn(
                f"ibframe plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                f"{type(err).__name__}: {err}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        dist = ep.dist
        _DISTRIBUTIONS[ep.name] = (
            (dist.name, dist.version) if dist is not None else (ep.name, "unknown")
        )
    return pm


def call_each(
    hook_name: str,
    prepare: Callable[[str], Callable[[], None]],
    check: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> None:
    """Call a hook plugin by plugin, built-ins first, so that a failing plugin is named and skipped.

    Built-ins run first (in :data:`DEFAULT_PLUGINS` order), then entry-point plugins in the order
    they loaded, so a name a built-in registers stays the built-in's whatever a plugin claims.
    ``prepare(plugin_name)`` runs before each plugin and returns what restores the state should
    that plugin fail half-way; ``check(plugin_name)``, run after each plugin's hook, may raise to
    refuse what it added. Built-in plugins are not skipped: their failures are bugs and raise.
    """
    pm = get_plugin_manager()
    for impl in _builtins_first(getattr(pm.hook, hook_name).get_hookimpls()):
        restore = prepare(impl.plugin_name)
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
            if check is not None:
                check(impl.plugin_name)
        except Exception as err:
            if impl.plugin_name in DEFAULT_PLUGINS:
                raise
            restore()
            warnings.warn(
                f"ibframe plugin {impl.plugin_name!r} failed in {hook_name} and was skipped: "
                f"{type(err).__name__}: {err}",
                PluginLoadWarning,
                stacklevel=3,
            )


def _builtins_first(impls: list[pluggy.HookImpl]) -> list[pluggy.HookImpl]:
    """Hook implementations of the built-ins (in their order), then the others (in load order).

    pluggy calls the last registered plugin first, and a plugin's ``tryfirst`` reorders it, so
    the order is set here rather than taken from pluggy.
    """
    order = [name for name, _ in get_plugin_manager().list_name_plugin()]

    def key(impl: pluggy.HookImpl) -> tuple[int, int]:
        if impl.plugin_name in DEFAULT_PLUGINS:
            return 0, DEFAULT_PLUGINS.index(impl.plugin_name)
        return 1, order.index(impl.plugin_name)

    return sorted(impls, key=key)


def _fill(target: Any, hook_name: str, **kwargs: Any) -> None:
    """Fill a registry through its hook; a failing plugin's half-done additions are undone."""

    def prepare(plugin_name: str) -> Callable[[], None]:
        target.current_plugin = plugin_name  # so that validation errors name the plugin
        before = target.snapshot()
        return lambda: target.restore(before)

    call_each(hook_name, prepare, **kwargs)
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
    return _DISTRIBUTIONS.get(plugin_name, (plugin_name, "unknown"))[1]


def plugin_distribution(plugin_name: str) -> str:
    """The distribution a plugin comes from, as ``name version`` (ibframe for built-ins)."""
    from ibframe import __version__

    if plugin_name in DEFAULT_PLUGINS:
        return f"ibframe {__version__}"
    get_plugin_manager()
    return " ".join(_DISTRIBUTIONS.get(plugin_name, (plugin_name, "unknown")))


def reset() -> None:
    """Forget the loaded plugins and registries (tests, and after installing a plugin)."""
    get_plugin_manager.cache_clear()
    _DISTRIBUTIONS.clear()
    estimator_registry.cache_clear()
    experiment_registry.cache_clear()
