"""Shared fixtures. The real SZT data is found through IBFRAME_TEST_DATA (set by .ci/run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ibframe import plugins


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
