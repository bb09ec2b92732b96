"""Plugins: entry points of real (test) distributions, validation, and broken plugins skipped."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import ClassVar

import pytest
import xarray as xr

from ibframe import plugins
from ibframe.errors import PluginError, PluginLoadWarning
from ibframe.estimator import Block, Estimator
from ibframe.registry import EstimatorRegistry

GOOD_PLUGIN = '''
from dataclasses import dataclass, field
from typing import ClassVar

import xarray as xr

import ibframe
from ibframe.hookspecs import hookimpl


@dataclass(frozen=True, kw_only=True)
class MaxS(ibframe.Estimator):
    name: ClassVar[str] = "max-s"
    description: ClassVar[str] = "Largest activation."
    offset: float = field(default=0.0, metadata={"help": "added to the maximum"})

    def compute(self, block):
        value = float(block.s.max()) + self.offset
        return xr.Dataset({"max_s": ((), value, {"long_name": "max of S", "units": "1"})})


@hookimpl
def ibframe_register_estimators(registry):
    registry.add(MaxS)
'''


@pytest.fixture
def site(plugin_site):
    return plugin_site


def test_entry_point_plugin_is_loaded_and_used(site, tmp_path):
    site.install("maxplug", "maxplug_hooks", GOOD_PLUGIN)
    registry = plugins.estimator_registry()
    assert "max-s" in registry and "binned-entropy" in registry
    assert registry.plugin_of("max-s") == "maxplug"
    assert registry.plugin_of("binned-entropy") == "ibframe.estimators.binned"
    assert plugins.plugin_version("maxplug") == "0.3"
    assert plugins.plugin_distribution("maxplug") == "maxplug 0.3"

    from ibframe.engine import estimate
    from ibframe.testing import make_test_run

    run = make_test_run(tmp_path / "r.zarr", epochs=2)
    ds = estimate(run, ["max-s"], params={"max-s": {"offset": "1.5"}}, device="cpu")
    expected = float(run.activations("h1").sel(epoch=1).max()) + 1.5
    assert ds["max_s"].sel(layer="h1", epoch=1).item() == pytest.approx(expected)
    assert ds["max_s"].attrs["estimator_plugin"] == "maxplug 0.3"


def test_plugin_that_fails_to_import_is_named_and_skipped(site):
    site.install("goodplug", "goodplug_hooks", GOOD_PLUGIN)
    site.install("brokenplug", "brokenplug_hooks", "raise ImportError('needs libfoo')\n")
    with pytest.warns(PluginLoadWarning, match="'brokenplug'.*needs libfoo"):
        registry = plugins.estimator_registry()
    assert "max-s" in registry and "binned-entropy" in registry


def test_plugin_registering_an_invalid_estimator_is_skipped(site):
    bad = textwrap.dedent('''
        from ibframe.hookspecs import hookimpl

        class NotAnEstimator:
            name = "bad"

        @hookimpl
        def ibframe_register_estimators(registry):
            registry.add(NotAnEstimator)
    ''')
    site.install("badplug", "badplug_hooks", bad)
    with pytest.warns(PluginLoadWarning, match="'badplug'.*not an ibframe.Estimator"):
        registry = plugins.estimator_registry()
    assert "bad" not in registry and "binned-entropy" in registry


def test_blocked_plugins_are_not_loaded(site, monkeypatch):
    site.install("maxplug", "maxplug_hooks", GOOD_PLUGIN)
    monkeypatch.setenv("IBFRAME_DISABLE_PLUGINS", "maxplug")
    plugins.reset()
    assert "max-s" not in plugins.estimator_registry()


def _estimator(**overrides):
    @dataclass(frozen=True, kw_only=True)
    class Probe(Estimator):
        name: ClassVar[str] = overrides.get("name", "probe")
        description: ClassVar[str] = overrides.get("description", "a probe")

        def compute(self, block: Block) -> xr.Dataset:
            return xr.Dataset()

    return Probe


def test_registry_validates_the_contract():
    registry = EstimatorRegistry()
    registry.current_plugin = "tests"
    registry.add(_estimator())
    with pytest.raises(PluginError, match="kebab-case"):
        registry.add(_estimator(name="Bad_Name"))
    with pytest.raises(PluginError, match="needs a description"):
        registry.add(_estimator(name="no-desc", description=""))
    with pytest.raises(PluginError, match="already taken by plugin 'tests'"):
        registry.add(_estimator())

    class NotDataclass(Estimator):
        name: ClassVar[str] = "plain"
        description: ClassVar[str] = "x"

    with pytest.raises(PluginError, match="@dataclass"):
        registry.add(NotDataclass)

    @dataclass(frozen=True, kw_only=True)
    class NoCompute(Estimator):
        name: ClassVar[str] = "no-compute"
        description: ClassVar[str] = "x"

    with pytest.raises(PluginError, match="does not implement compute"):
        registry.add(NoCompute)


def test_every_hook_is_documented():
    from ibframe import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("ibframe_")]
    assert names
    for name in names:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ":param" in doc and "versionadded" in doc, name


COMMAND_AND_EXPERIMENT_PLUGIN = '''
from ibframe.recording.experiments import BUILTIN_EXPERIMENTS
import dataclasses

from ibframe.hookspecs import hookimpl


@hookimpl
def ibframe_register_commands(app):
    @app.command()
    def hello(name: str = "world"):
        """Say hello."""
        print(f"hello {name}")


@hookimpl
def ibframe_register_experiments(registry):
    spec = BUILTIN_EXPERIMENTS["neuron"]
    registry.add(dataclasses.replace(spec, name="my-neuron", description="a plugin's neuron"))
'''


def test_plugins_add_commands_and_experiments(site, tmp_path, capsys):
    from ibframe import cli
    from ibframe.recording.experiments import train

    site.install("extras", "extras_hooks", COMMAND_AND_EXPERIMENT_PLUGIN)
    assert "my-neuron" in plugins.experiment_registry()
    path = train("my-neuron", out=tmp_path / "n.zarr", epochs=2, record="all")
    import ibframe

    assert ibframe.open_run(path).epochs.tolist() == [0, 1, 2]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["hello", "--name", "plugin"])
    assert exit_info.value.code == 0
    assert "hello plugin" in capsys.readouterr().out


def test_plugin_with_an_unknown_hook_is_skipped(site):
    site.install("typoplug", "typoplug_hooks", textwrap.dedent('''
        from ibframe.hookspecs import hookimpl

        @hookimpl
        def ibframe_register_widgets(registry):
            pass
    '''))
    site.install("maxplug", "maxplug_hooks", GOOD_PLUGIN)
    with pytest.warns(PluginLoadWarning, match="'typoplug'.*ibframe_register_widgets"):
        registry = plugins.estimator_registry()
    assert "max-s" in registry
    assert plugins.get_plugin_manager().get_plugin("typoplug") is None


@pytest.mark.filterwarnings("always::ibframe.errors.PluginLoadWarning")
def test_plugin_whose_command_hook_fails_is_skipped(site, capsys):
    from ibframe import cli

    site.install("badcmd", "badcmd_hooks", textwrap.dedent('''
        from ibframe.hookspecs import hookimpl

        @hookimpl
        def ibframe_register_commands(app):
            @app.command()
            def half():
                pass
            raise RuntimeError("no commands today")
    '''))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["estimators"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "binned-entropy" in captured.out
    # the command line shows ibframe's warnings as one line each
    assert "warning: ibframe plugin 'badcmd' failed in ibframe_register_commands" in captured.err
    assert "half" not in [c.name or c.callback.__name__ for c in cli.app.registered_commands]


CLAIMS_SP_MI = '''
from dataclasses import dataclass
from typing import ClassVar

import xarray as xr

import ibframe
from ibframe.hookspecs import hookimpl


@dataclass(frozen=True, kw_only=True)
class FakeSP(ibframe.Estimator):
    name: ClassVar[str] = "sp-mi"
    description: ClassVar[str] = "Claims the built-in name."

    def compute(self, block):
        return xr.Dataset({"fake": ((), 0.0, {"long_name": "fake", "units": "1"})})


@dataclass(frozen=True, kw_only=True)
class Other(ibframe.Estimator):
    name: ClassVar[str] = "other-thing"
    description: ClassVar[str] = "Registered beside the fake."

    def compute(self, block):
        return xr.Dataset({"other": ((), 0.0, {"long_name": "other", "units": "1"})})


@hookimpl(tryfirst=True)
def ibframe_register_estimators(registry):
    registry.add(Other)
    registry.add(FakeSP)


@hookimpl
def ibframe_register_commands(app):
    @app.command()
    def info():
        """Shadows the built-in info."""
        print("hijacked")
'''


@pytest.mark.filterwarnings("always::ibframe.errors.PluginLoadWarning")
def test_plugin_claiming_a_builtin_name_is_skipped_and_ibframe_works(site, tmp_path, capsys):
    """Issue 8, item 6: a plugin registering 'sp-mi' used to disable every estimator command."""
    from ibframe import cli
    from ibframe.testing import make_test_run

    site.install("evil", "evil_hooks", CLAIMS_SP_MI)
    site.install("maxplug", "maxplug_hooks", GOOD_PLUGIN)
    with pytest.warns(PluginLoadWarning) as caught:
        registry = plugins.estimator_registry()
    messages = [str(w.message) for w in caught]
    assert any("'evil'" in m and "'sp-mi'" in m and "'ibframe.estimators.sp_mi'" in m
               for m in messages), messages
    assert registry.plugin_of("sp-mi") == "ibframe.estimators.sp_mi"
    assert "other-thing" not in registry  # the whole plugin is skipped, not half of it
    assert "max-s" in registry  # another third-party plugin is untouched

    run = make_test_run(tmp_path / "r.zarr", epochs=2)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["estimate", str(run.path), "-e", "binned-entropy", "--device", "cpu"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert "entropy_bin" in captured.out
    # the built-in command keeps its name; the plugin's 'info' is refused, naming both
    assert "plugin 'evil': command name 'info' is already taken by ibframe" in captured.err

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", str(run.path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert "hijacked" not in captured.out and "h1" in captured.out


def test_two_plugins_claiming_one_name_first_loaded_keeps_it(site):
    second = GOOD_PLUGIN.replace('"Largest activation."', '"A copy."')
    site.install("maxplug", "maxplug_hooks", GOOD_PLUGIN)
    site.install("zcopy", "zcopy_hooks", second)
    loaded = [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]
    first, later = sorted(["maxplug", "zcopy"], key=loaded.index)  # entry-point discovery order
    with pytest.warns(PluginLoadWarning, match=f"'{later}'.*'max-s' is already taken by "
                                               f"plugin '{first}'"):
        registry = plugins.estimator_registry()
    assert registry.plugin_of("max-s") == first


def test_plugin_claiming_a_builtin_experiment_is_skipped(site):
    site.install("expplug", "expplug_hooks", textwrap.dedent('''
        import dataclasses

        from ibframe.hookspecs import hookimpl
        from ibframe.recording.experiments import BUILTIN_EXPERIMENTS


        @hookimpl(tryfirst=True)
        def ibframe_register_experiments(registry):
            spec = BUILTIN_EXPERIMENTS["spiral"]
            registry.add(dataclasses.replace(spec, name="szt", description="not the paper's"))
    '''))
    with pytest.warns(PluginLoadWarning, match="'expplug'.*'szt' is already taken by plugin "
                                               "'ibframe.recording.experiments'"):
        registry = plugins.experiment_registry()
    assert "Section 5.1" in registry.get("szt").description
    assert registry.plugin_of("szt") == "ibframe.recording.experiments"


def test_two_distributions_with_one_plugin_name_the_second_is_named_and_skipped(site):
    site.install("dista", "dista_hooks", GOOD_PLUGIN, entry="dup")
    site.install("distb", "distb_hooks", GOOD_PLUGIN.replace("max-s", "max-t"), entry="dup")
    with pytest.warns(PluginLoadWarning, match=r"plugin 'dup' from dist[ab] was skipped: the "
                                               r"plugin name 'dup' is already taken by dist[ab]"):
        registry = plugins.estimator_registry()
    assert ("max-s" in registry) != ("max-t" in registry)
