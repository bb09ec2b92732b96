"""binned-entropy against scipy/sklearn references and the facts of the real SZT data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.io
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import mutual_info_score

import ibframe
from ibframe.engine import estimate
from ibframe.errors import ParameterError
from ibframe.estimator import Block
from ibframe.estimators.binned import BinnedEntropy
from ibframe.kernels.binning import bin_indices, entropy_of_codes, row_codes


def _block(s, y=None, beta=0.0):
    return Block(layer="h", epoch=0, layer_index=1, s=s, s_cond=None, cond_index=None, y=y,
                 beta=beta, deterministic_given_x=True)


def _reference_entropy(rows):
    counts = np.array(list(Counter(map(tuple, rows)).values()))
    return scipy_entropy(counts)


@pytest.mark.parametrize("bin_size", [0.05, 0.3, 1.0])
def test_floor_grid_matches_scipy_on_random_data(bin_size):
    rng = np.random.default_rng(0)
    s = np.tanh(rng.standard_normal((500, 4)))
    y = rng.integers(0, 3, 500)
    ds = BinnedEntropy(bin_size=[bin_size]).compute(_block(s, y))
    binned = np.floor(s / bin_size).astype(int)
    assert ds["entropy_bin"].item() == pytest.approx(_reference_entropy(binned), abs=1e-12)
    labels = [",".join(map(str, r)) for r in binned]
    assert ds["mi_bin_t_y"].item() == pytest.approx(mutual_info_score(labels, y), abs=1e-12)


def test_n_bins_over_a_range_matches_numpy_digitize():
    rng = np.random.default_rng(1)
    s = rng.uniform(-1.2, 1.2, size=(800, 3))  # outside the range: clipped to the edge bins
    ds = BinnedEntropy(n_bins=[30], value_range=[-1.0, 1.0]).compute(_block(s))
    edges = np.linspace(-1, 1, 31)
    digitized = np.clip(np.digitize(s, edges) - 1, 0, 29)
    assert ds["entropy_bin"].item() == pytest.approx(_reference_entropy(digitized), abs=1e-12)
    assert ds["bin_size"].item() == pytest.approx(2 / 30)


def test_several_bin_sizes_form_a_dimension():
    s = np.random.default_rng(2).random((100, 2))
    ds = BinnedEntropy(bin_size=[0.01, 0.1, 1.0]).compute(_block(s))
    assert ds["entropy_bin"].dims == ("bin_size",)
    assert np.all(np.diff(ds["entropy_bin"].values) <= 0)  # coarser bins, fewer patterns


def test_noisy_binning_is_seeded_and_adds_entropy():
    s = np.zeros((300, 2))  # one cluster: H(Bin(S)) = 0
    est = BinnedEntropy(bin_size=[0.1], noisy=True, seed=3)
    first = est.compute(_block(s, beta=0.2))["entropy_bin"].item()
    assert first > 1.0
    assert est.compute(_block(s, beta=0.2))["entropy_bin"].item() == first
    assert BinnedEntropy(bin_size=[0.1], noisy=True, seed=4).compute(
        _block(s, beta=0.2))["entropy_bin"].item() != first
    with pytest.raises(ParameterError, match="beta > 0"):
        est.compute(_block(s, beta=0.0))


def test_row_codes_are_exact_on_wide_layers():
    rng = np.random.default_rng(5)
    rows = rng.integers(-3, 3, size=(2000, 3136))
    rows[1000:1500] = rows[:500]  # repeated patterns
    codes = row_codes(rows)
    _, reference = np.unique(rows, axis=0, return_inverse=True)
    assert mutual_info_score(codes, reference.ravel()) == pytest.approx(
        scipy_entropy(np.bincount(reference.ravel())))
    assert codes.max() + 1 == np.unique(rows, axis=0).shape[0]


def test_entropy_of_codes_is_vectorised_per_row():
    codes = np.random.default_rng(6).integers(0, 7, size=(5, 1000))
    expected = [scipy_entropy(np.bincount(row)) for row in codes]
    np.testing.assert_allclose(entropy_of_codes(codes, axis=-1), expected)


def test_bad_parameters_are_refused():
    with pytest.raises(ParameterError, match="not both"):
        BinnedEntropy(bin_size=[0.1], n_bins=[10])
    with pytest.raises(ParameterError, match="> 0"):
        BinnedEntropy(bin_size=[-1.0])
    with pytest.raises(ParameterError, match="high > low"):
        BinnedEntropy(n_bins=[4], value_range=[1.0, -1.0])
    with pytest.raises(ParameterError, match="exactly one"):
        bin_indices(np.zeros(3))


def test_identity_layer_of_the_real_szt_data(data_dir, tmp_path):
    mat = scipy.io.loadmat(data_dir / "var_u.mat")
    x = mat["F"].astype(np.float32)
    y = mat["y"].ravel().astype(np.int64)
    with ibframe.create_run(tmp_path / "id.zarr", x=x, y=y, layers={"identity": 12}) as run:
        run.append_epoch(0, {"identity": x})
    ds = estimate(tmp_path / "id.zarr", {"binned-entropy": {"bin_size": [0.5, 0.99]}}, device="cpu")
    np.testing.assert_allclose(ds["entropy_bin"].values, np.log(4096), rtol=0, atol=1e-12)
    h_y = scipy_entropy(np.bincount(y))
    np.testing.assert_allclose(ds["mi_bin_t_y"].values, h_y, rtol=0, atol=1e-12)
