"""The pairwise-distance and cosine kernels against scipy's direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cosine, pdist

from ibframe.errors import ParameterError
from ibframe.kernels.distances import pairwise_distance_histogram, rowwise_cosine_similarity


def _reference(points, labels, bins, max_distance, metric):
    """Within/between histograms, pair counts and mean distances from scipy's pdist."""
    distances = pdist(np.asarray(points, dtype=np.float64), metric=metric)
    i, j = np.triu_indices(len(labels), k=1)  # pdist's pair order
    same = labels[i] == labels[j]
    counts = [
        np.histogram(distances[mask], bins=bins, range=(0.0, max_distance))[0]
        for mask in (same, ~same)
    ]
    means = [distances[same].mean(), distances[~same].mean()]
    return np.stack(counts), np.array([same.sum(), (~same).sum()]), np.array(means), distances


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("chunk_rows", [1, 7, None])
def test_histogram_matches_pdist(metric, chunk_rows):
    rng = np.random.default_rng(3)
    points = rng.standard_normal((157, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 157)
    full = pdist(points.astype(np.float64), metric=metric).max()
    max_distance = 0.8 * full  # some pairs fall beyond the range
    counts, n_pairs, means, _ = _reference(points, labels, 23, max_distance, metric)
    hist = pairwise_distance_histogram(
        points, labels, bins=23, max_distance=max_distance, metric=metric, chunk_rows=chunk_rows
    )
    np.testing.assert_array_equal(hist.counts, counts)
    np.testing.assert_array_equal(hist.n_pairs, n_pairs)
    assert hist.n_pairs.sum() == 157 * 156 // 2
    assert hist.counts.sum() < hist.n_pairs.sum()  # the out-of-range pairs are not binned
    np.testing.assert_allclose(hist.means, means, rtol=1e-10)


def test_pair_at_the_upper_edge_is_in_the_last_bin():
    corners = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    hist = pairwise_distance_histogram(
        corners, np.array([0, 1, 1]), bins=4, max_distance=2 * np.sqrt(3)
    )
    np.testing.assert_array_equal(hist.counts, [[1, 0, 0, 0], [0, 0, 0, 2]])
    np.testing.assert_allclose(hist.means, [0.0, 2 * np.sqrt(3)])


def test_a_class_without_pairs_has_nan_mean():
    hist = pairwise_distance_histogram(np.eye(3), np.arange(3), bins=2, max_distance=2.0)
    np.testing.assert_array_equal(hist.n_pairs, [0, 3])
    assert np.isnan(hist.means[0])
    np.testing.assert_allclose(hist.means[1], np.sqrt(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bins": 0, "max_distance": 1.0}, "bins"),
        ({"bins": 3, "max_distance": 0.0}, "max_distance"),
        ({"bins": 3, "max_distance": 1.0, "metric": "manhattan"}, "metric"),
        ({"bins": 3, "max_distance": 1.0, "chunk_rows": 0}, "chunk_rows"),
    ],
)
def test_histogram_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        pairwise_distance_histogram(np.ones((4, 2)), np.zeros(4), **kwargs)


def test_histogram_refuses_mismatched_labels():
    with pytest.raises(ParameterError, match="labels"):
        pairwise_distance_histogram(np.ones((4, 2)), np.zeros(3), bins=2, max_distance=1.0)


def test_rowwise_cosine_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 20, 6))
    expected = [1.0 - cosine(u, v) for u, v in zip(a, b, strict=True)]
    np.testing.assert_allclose(rowwise_cosine_similarity(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(rowwise_cosine_similarity(a, 3.0 * a), 1.0)
    np.testing.assert_allclose(rowwise_cosine_similarity(a, -a), -1.0)


def test_rowwise_cosine_of_a_zero_row_is_nan():
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    result = rowwise_cosine_similarity(a, np.array([[1.0, 1.0], [0.0, 2.0]]))
    assert np.isnan(result[0])
    assert result[1] == 0.0
    with pytest.raises(ParameterError, match="shape"):
        rowwise_cosine_similarity(a, np.ones((2, 3)))
