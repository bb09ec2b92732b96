"""Shared fixtures. The real SZT data is found through IBFRAME_TEST_DATA (set by .ci/run)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ibframe import plugins


def pytest_configure(config: pytest.Config) -> None:
    """Let Ctrl-C reach the child processes that tests interrupt (SIGINT). A test run started
    as a background job of a non-interactive shell, as some CI runners start it, has SIGINT
    ignored, and its children would inherit that and never see the signal; a handler, unlike
    an ignored signal, is reset to the default in a child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def data_dir() -> Path:
    """The directory holding var_u.mat and the 80/20 split file, or skip."""
    value = os.environ.get("IBFRAME_TEST_DATA")
    if not value:
        pytest.skip("IBFRAME_TEST_DATA is not set: the real SZT dataset (var_u.mat) is not available")
    path = Path(value)
    if not (path / "var_u.mat").exists():
        pytest.skip(f"IBFRAME_TEST_DATA={value} holds no var_u.mat")
    return path


@pytest.fixture
def fresh_plugins():
    """Reload plugins before and after a test that changes what is installed."""
    plugins.reset()
    yield
    plugins.reset()


class PluginSite:
    """A sys.path directory where tests install real distributions with ``ibframe`` entry points."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def install(self, dist: str, module: str, source: str, entry: str | None = None) -> None:
        """Write ``module`` and a ``.dist-info`` announcing it as ``entry`` (default: ``dist``)."""
        (self.path / f"{module}.py").write_text(source)
        info = self.path / f"{dist}-0.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
        (info / "entry_points.txt").write_text(f"[ibframe]\n{entry or dist} = {module}\n")


@pytest.fixture
def plugin_site(tmp_path, monkeypatch, fresh_plugins) -> PluginSite:
    """Plugins installed here load in this process and in subprocesses given ``PYTHONPATH``."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return PluginSite(site)
