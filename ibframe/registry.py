"""Typed registries that plugins fill through the hooks of :mod:`ibframe.hookspecs`."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator

from ibframe.errors import EstimatorNotFoundError, ExperimentNotFoundError, PluginError
from ibframe.estimator import Estimator

if typing.TYPE_CHECKING:
    from ibframe.recording.spec import ExperimentSpec

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class EstimatorRegistry:
    """Estimator classes by name, each with the plugin that registered it."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Estimator]] = {}
        self._plugins: dict[str, str] = {}
        #: Set by the plugin manager while a plugin's hook runs, so errors can name it.
        self.current_plugin = "?"

    def add(self, cls: type[Estimator]) -> None:
        """Register ``cls`` after checking that it follows the estimator contract."""
        who = self.current_plugin
        if not (isinstance(cls, type) and issubclass(cls, Estimator)):
            msg = f"plugin {who!r} registered {cls!r}, which is not an ibframe.Estimator subclass"
            raise PluginError(msg)
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _KEBAB.match(name):
            msg = f"plugin {who!r}: estimator {cls.__qualname__} needs a kebab-case name, got {name!r}"
            raise PluginError(msg)
        if not isinstance(getattr(cls, "description", None), str) or not cls.description:
            msg = f"plugin {who!r}: estimator {name!r} needs a description"
            raise PluginError(msg)
        params = getattr(cls, "__dataclass_params__", None)
        if "__dataclass_fields__" not in cls.__dict__ or not (params and params.frozen):
            msg = (
                f"plugin {who!r}: estimator {name!r} must be decorated with "
                "@dataclass(frozen=True, kw_only=True)"
            )
            raise PluginError(msg)
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            msg = f"plugin {who!r}: estimator {name!r} parameters need defaults: {missing}"
            raise PluginError(msg)
        needed = ("compute_part", "combine_parts", "finish") if cls.split_stages else ("compute",)
        absent = [m for m in needed if getattr(cls, m) is getattr(Estimator, m)]
        if absent:
            msg = f"plugin {who!r}: estimator {name!r} does not implement {absent[0]}()"
            raise PluginError(msg)
        if name in self._classes and self._classes[name] is not cls:
            msg = (
                f"plugin {who!r}: estimator name {name!r} is already taken by plugin "
                f"{self._plugins[name]!r}"
            )
            raise PluginError(msg)
        self._classes[name] = cls
        self._plugins[name] = who

    def snapshot(self) -> tuple[dict[str, type[Estimator]], dict[str, str]]:
        """A copy of the contents, to undo a plugin that failed half-way."""
        return dict(self._classes), dict(self._plugins)

    def restore(self, snapshot: tuple[dict[str, type[Estimator]], dict[str, str]]) -> None:
        self._classes, self._plugins = dict(snapshot[0]), dict(snapshot[1])

    def get(self, name: str) -> type[Estimator]:
        """The class registered as ``name``; the error lists the known names."""
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            msg = f"unknown estimator {name!r}; known estimators: {known}"
            raise EstimatorNotFoundError(msg) from None

    def plugin_of(self, name: str) -> str:
        """The name of the plugin that registered estimator ``name``."""
        self.get(name)
        return self._plugins[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __len__(self) -> int:
        return len(self._classes)


class ExperimentRegistry:
    """Training set-ups for ``ibframe train``, by name, each with the plugin that registered it."""

    def __init__(self) -> None:
        self._specs: dict[str, ExperimentSpec] = {}
        self._plugins: dict[str, str] = {}
        #: Set by the plugin manager while a plugin's hook runs, so errors can name it.
        self.current_plugin = "?"

    def add(self, spec: ExperimentSpec) -> None:
        """Register an experiment; names must be unique and kebab-case."""
        who = self.current_plugin
        name = getattr(spec, "name", None)
        if not isinstance(name, str) or not _KEBAB.match(name):
            msg = f"plugin {who!r}: experiment needs a kebab-case name, got {name!r}"
            raise PluginError(msg)
        if name in self._specs and self._specs[name] is not spec:
            msg = (
                f"plugin {who!r}: experiment name {name!r} is already taken by plugin "
                f"{self._plugins[name]!r}"
            )
            raise PluginError(msg)
        self._specs[name] = spec
        self._plugins[name] = who

    def snapshot(self) -> tuple[dict[str, ExperimentSpec], dict[str, str]]:
        """A copy of the contents, to undo a plugin that failed half-way."""
        return dict(self._specs), dict(self._plugins)

    def restore(self, snapshot: tuple[dict[str, ExperimentSpec], dict[str, str]]) -> None:
        self._specs, self._plugins = dict(snapshot[0]), dict(snapshot[1])

    def plugin_of(self, name: str) -> str:
        """The name of the plugin that registered experiment ``name``."""
        self.get(name)
        return self._plugins[name]

    def get(self, name: str) -> ExperimentSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            msg = f"unknown experiment {name!r}; known experiments: {known}"
            raise ExperimentNotFoundError(msg) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._specs))

    def __contains__(self, name: object) -> bool:
        return name in self._specs
