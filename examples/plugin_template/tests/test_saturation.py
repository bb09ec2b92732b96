"""The estimator against a count by hand, ibframe's conformance suite, and the installed entry
point (run with the plugin installed: ``pip install -e .[test] && pytest``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import ibframe
import numpy as np
import pytest
from ibframe.errors import ParameterError
from ibframe.testing import EstimatorChecks, make_test_run

from ibframe_saturation import Saturation


class TestConformance(EstimatorChecks):
    """ibframe's checks that every estimator should pass."""

    estimator_class = Saturation
    params: ClassVar[dict[str, float]] = {"threshold": 0.5}


def test_fractions_match_a_count_by_hand(tmp_path):
    run = make_test_run(tmp_path / "run.zarr")
    ds = ibframe.estimate(run, [Saturation(threshold=0.5)], device="cpu", cache=False)
    for layer in run.layers:
        for epoch in run.epochs:
            s = np.asarray(run.activations(layer).sel(epoch=epoch).values)
            expected = np.mean(np.abs(s) >= 0.5)
            got = float(ds["saturated_fraction"].sel(layer=layer, epoch=epoch))
            assert got == pytest.approx(expected)
            units = ds["unit_saturated_fraction"].sel(layer=layer, epoch=epoch).dropna("unit")
            np.testing.assert_allclose(units.values, np.mean(np.abs(s) >= 0.5, axis=0))


def test_a_threshold_of_zero_is_refused():
    with pytest.raises(ParameterError, match="threshold"):
        Saturation(threshold=0.0)


def test_the_installed_plugin_is_listed_by_the_command_line():
    command = Path(sys.executable).parent / "ibframe"  # the installed command line
    listing = subprocess.run([command, "estimators"], capture_output=True, text=True, check=True).stdout
    assert "saturation" in listing
    assert "ibframe-saturation" in listing  # the distribution that registered it
