"""Estimation beyond one process: which tasks wait for a GPU, and stores addressed by URL."""

from __future__ import annotations

import pytest

from ibframe.engine import _device_for, _graph, _Job, _Task, build_estimators
from ibframe.errors import ParameterError
from ibframe.store.location import Location


def _annotations(value):
    layers = value.__dask_graph__().layers
    return {key: dict(layer.annotations or {}) for key, layer in layers.items()}


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cpu"])
def test_only_estimators_that_use_a_gpu_wait_for_one(device):
    """sp-mi and distance-histogram compute on the GPU; binned-entropy never waits for one."""
    instances = build_estimators(["sp-mi", "binned-entropy", "distance-histogram"])
    tasks = [_Task(_Job(est, "h1", {}, None, None, [0], None), 0) for est in instances]
    graph = _graph(Location.of("r.zarr"), tasks, device)
    for _, task, value in graph:
        (annotations,) = _annotations(value).values()
        gpu = device != "cpu" and task.job.estimator.uses_gpu
        assert annotations.get("resources") == ({"GPU": 1} if gpu else None), task.job.estimator.name
        assert _device_for(task.job.estimator, device) == (device if gpu else "cpu")
    assert {t.job.estimator.name: t.job.estimator.uses_gpu for _, t, _ in graph} == {
        "sp-mi": True, "binned-entropy": False, "distance-histogram": True}


def test_locations_print_their_url_and_never_their_options(tmp_path):
    secret = {"key": "AKIA-not-shown", "secret": "hidden-value", "endpoint_url": "http://x:1"}
    where = Location.of("s3://bucket/prefix/run.zarr/", secret)
    assert str(where) == "s3://bucket/prefix/run.zarr" and where.name == "run.zarr"
    assert "hidden-value" not in repr(where) and "AKIA" not in repr(where)
    assert where.child("results").url == "s3://bucket/prefix/run.zarr/results"
    assert Location.of(tmp_path / "r.zarr").local == tmp_path / "r.zarr"
    assert Location.of(f"file://{tmp_path}/r.zarr").local == tmp_path / "r.zarr"
    with pytest.raises(ParameterError, match="apply to URLs"):
        Location.of(tmp_path / "r.zarr", {"anon": True})


def test_storage_options_from_the_command_line():
    from ibframe.cli import parse_storage_options

    assert parse_storage_options([]) is None
    assert parse_storage_options(["endpoint_url=http://h:9000", "anon=true",
                                  "client_kwargs.region_name=eu-west-1",
                                  "config_kwargs.retries={\"max_attempts\": 2}"]) == {
        "endpoint_url": "http://h:9000", "anon": True,
        "client_kwargs": {"region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 2}},
    }
    with pytest.raises(ParameterError, match="key=value"):
        parse_storage_options(["endpoint_url"])
