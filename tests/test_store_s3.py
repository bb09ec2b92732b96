"""Run stores on object storage, against a real S3 API: moto's server on a free localhost port.

Everything that holds for a local store is checked here on S3: recording, the commit (an epoch
is visible only once committed, also after a writer is SIGKILLed mid-epoch), the writer lock,
the integrity checks, the crash-safe cache (an estimate SIGKILLed in its cache write, then
resumed), results files, the command line, and one-line errors for a missing bucket, denied
access and an unreachable endpoint. Kills are real SIGKILLs of real subprocesses; the child
processes count zarr's own store writes, not ibframe's calls. No network beyond localhost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import uuid
import warnings

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'ibframe[test]')")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'ibframe[s3]')")

import ibframe
from ibframe.cache import CacheWarning
from ibframe.errors import (
    EstimationFailed,
    IbframeError,
    ParameterError,
    SampleSizeWarning,
    StoreAccessError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
    StoreUnreachableError,
)
from ibframe.store.location import Location
from ibframe.testing import make_test_run

#: Credentials no store, result or log may show: given as storage options, not the environment.
KEY, SECRET = "ibframe-test-key-id", "ibframe-test-secret-0123456789"
BINNED = {"binned-entropy": {"bin_size": [0.1, 0.5]}}


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server in this process, on a free port; dummy AWS settings while it runs."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
                                            "AWS_SHARED_CREDENTIALS_FILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="env-key", AWS_SECRET_ACCESS_KEY="env-secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull,
                      AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def options(moto_endpoint):
    return {"endpoint_url": moto_endpoint, "key": KEY, "secret": SECRET}


@pytest.fixture
def bucket(options):
    """A fresh bucket per test, its URL prefix."""
    name = f"ibframe-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(name)
    return f"s3://{name}"


def _fs(options):
    return s3fs.S3FileSystem(**options, skip_instance_cache=True)


def _objects(options, url):
    """Every object under ``url``, with its bytes."""
    fs = _fs(options)
    return {path: fs.cat_file(path) for path in fs.find(url.removeprefix("s3://"))}


def _estimate(where, **kwargs):
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        ds = ibframe.estimate(where, kwargs.pop("estimators", BINNED),
                              device=kwargs.pop("device", "cpu"),
                              progress=lambda done, total: seen.append(total), **kwargs)
    return ds, seen[0]


def _one_line(err):
    assert isinstance(err, IbframeError)
    assert "\n" not in str(err) and len(str(err)) < 500, str(err)
    return str(err)


def test_a_run_recorded_on_s3_reads_back_as_recorded_locally(bucket, options, tmp_path):
    url = f"{bucket}/runs/r.zarr"
    remote = make_test_run(Location.of(url, options), widths=(4, 2), epochs=2)
    local = make_test_run(tmp_path / "r.zarr", widths=(4, 2), epochs=2)
    remote.close()
    run = ibframe.open_run(url, storage_options=options)
    assert run.path == url and str(run.location) == url
    assert run.epochs.tolist() == [0, 1] and run.layers == local.layers
    np.testing.assert_array_equal(run.x, local.x)
    for layer in run.layers:
        np.testing.assert_array_equal(run.activations(layer).values, local.activations(layer).values)
        block, reference = run.block(layer, 1), local.block(layer, 1)
        np.testing.assert_array_equal(block.s_cond, reference.s_cond)
        assert block.run_path == url and block.storage_options == options
    assert run.metrics().equals(local.metrics())
    objects = _objects(options, url)
    assert f"{url.removeprefix('s3://')}/zarr.json" in objects
    assert not any(name.endswith("ibframe-writer.lock") for name in objects)  # released
    for content in objects.values():
        assert SECRET.encode() not in content and KEY.encode() not in content
    assert KEY not in repr(run.location) and SECRET not in repr(run.location)


def test_memory_urls_hold_run_stores_too():
    url = f"memory://ibframe-{uuid.uuid4().hex[:8]}/r.zarr"
    make_test_run(url, epochs=2).close()
    ds, total = _estimate(url)
    assert total > 0 and ds.sizes["epoch"] == 2
    assert _estimate(url)[1] == 0


def test_one_writer_at_a_time_and_a_dead_writers_lock(bucket, options):
    url = f"{bucket}/r.zarr"
    writer = make_test_run(Location.of(url, options), widths=(2,), epochs=1)
    with pytest.raises(StoreLockedError) as refused:
        ibframe.open_run(url, "a", storage_options=options)
    assert "ibframe-writer.lock" in _one_line(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    assert ibframe.open_run(url, storage_options=options).epochs.tolist() == [0]  # readers: no lock
    writer.close()
    lock = f"{url.removeprefix('s3://')}/ibframe-writer.lock"
    fs = _fs(options)
    # a writer elsewhere: refused, naming it and the object to delete once it is gone
    fs.pipe_file(lock, json.dumps({"pid": 1, "host": "gpu-node-7", "since": "x", "by": "train"}).encode())
    with pytest.raises(StoreLockedError, match=r"gpu-node-7.*delete it once"):
        ibframe.open_run(url, "a", storage_options=options)
    # a writer on this host that no longer runs: its lock is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x", "by": "train"}
    fs.pipe_file(lock, json.dumps(holder).encode())
    with ibframe.open_run(url, "a", storage_options=options) as run:
        assert json.loads(fs.cat_file(lock))["pid"] == os.getpid()
        assert run.epochs.tolist() == [0]
    assert not fs.exists(lock)


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, json
    import numpy as np
    import zarr.storage
    import ibframe

    url, options, kill_at = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    run = ibframe.open_run(url, "a", storage_options=options)
    original, writes = zarr.storage.FsspecStore.set, [0]

    async def dying_set(self, key, value):
        writes[0] += 1
        if writes[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, key, value)

    zarr.storage.FsspecStore.set = dying_set
    outputs = {name: np.full((run.n_samples, 1 + run.draws, run.layer_attrs(name)["units"]),
                             0.25, np.float32) for name in run.layers}
    run.append_epoch(2, outputs, metrics={"loss_train": 0.1, "loss_test": 0.2})
    """
)


def _epoch_2(run, value):
    return {name: np.full((run.n_samples, 1 + run.draws, run.layer_attrs(name)["units"]), value,
                          np.float32) for name in run.layers}


@pytest.mark.slow
@pytest.mark.integration
def test_a_writer_killed_mid_epoch_leaves_the_committed_epochs_and_the_next_writer_goes_on(
    bucket, options, monkeypatch
):
    """An epoch is committed by one write, its last; a writer SIGKILLed in the middle of epoch 2
    leaves epochs 0 and 1 readable, and the next writer (same host) takes the dead writer's lock
    over, drops the uncommitted rows and records epoch 2 again."""
    import zarr.storage

    url = f"{bucket}/r.zarr"
    make_test_run(Location.of(url, options), widths=(4, 2), epochs=2).close()
    keys = []
    original = zarr.storage.FsspecStore.set

    async def counting_set(self, key, value):
        keys.append(key)
        return await original(self, key, value)

    with monkeypatch.context() as patched:  # the writes of one epoch, on a copy
        patched.setattr(zarr.storage.FsspecStore, "set", counting_set)
        _fs(options).copy(f"{url}/".removeprefix("s3://"), f"{bucket}/probe.zarr/".removeprefix("s3://"),
                          recursive=True)
        with ibframe.open_run(f"{bucket}/probe.zarr", "a", storage_options=options) as probe:
            keys.clear()
            probe.append_epoch(2, _epoch_2(probe, 0.25), metrics={"loss_train": 0.1, "loss_test": 0.2})
    assert keys[-1] == "zarr.json" and keys.count("zarr.json") == 1, keys  # the commit: one write
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, url, json.dumps(options),
                             str(len(keys) // 2)], capture_output=True, text=True, check=False)
    assert killed.returncode == -9, killed.stderr
    run = ibframe.open_run(url, storage_options=options)
    assert run.epochs.tolist() == [0, 1]
    assert run.activations("h1").shape[0] == 2
    with ibframe.open_run(url, "a", storage_options=options) as writer:
        assert writer._array("layers/h1/S").shape[0] == 2  # the uncommitted row is gone
        writer.append_epoch(2, _epoch_2(writer, 0.5))
    again = ibframe.open_run(url, storage_options=options)
    assert again.epochs.tolist() == [0, 1, 2]
    assert np.all(again.block("h2", 2).s == 0.5)


def test_damaged_and_missing_chunks_on_s3_are_refused(bucket, options):
    url = f"{bucket}/r.zarr"
    make_test_run(Location.of(url, options), widths=(4, 3), epochs=2).close()
    fs = _fs(options)
    prefix = f"{url.removeprefix('s3://')}/layers/h2/S/c/1"
    (chunk,) = fs.find(prefix)
    raw = bytearray(fs.cat_file(chunk))
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(raw))
    run = ibframe.open_run(url, storage_options=options)
    with pytest.raises(StoreError, match="layers/h2/S at epoch 1 cannot be decoded"):
        run.block("h2", 1)
    fs.rm(chunk)
    with pytest.raises(StoreError, match="has no chunk at epoch 1"):
        ibframe.open_run(url, storage_options=options).block("h2", 1)
    assert run.block("h2", 0).s.shape[0] == run.n_samples  # the other epochs stay readable


def test_estimates_are_cached_on_s3_and_equal_local_ones(bucket, options, tmp_path):
    url = f"{bucket}/r.zarr"
    make_test_run(Location.of(url, options), widths=(4, 2), epochs=2).close()
    local = make_test_run(tmp_path / "r.zarr", widths=(4, 2), epochs=2)
    reference, _ = _estimate(local, cache=False)
    ds, total = _estimate(url, storage_options=options)
    assert total == 4
    for name, var in reference.data_vars.items():
        np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)
    again, total = _estimate(url, storage_options=options)
    assert total == 0
    for name, var in reference.data_vars.items():
        np.testing.assert_array_equal(again[name].values, var.values, err_msg=name)
    assert ds.attrs["source"] == url and ds.attrs["title"].endswith("r.zarr")
    text = json.dumps({k: str(v) for k, v in ds.attrs.items()}) + str(
        [var.attrs for var in ds.data_vars.values()])
    assert SECRET not in text and KEY not in text
    assert any("/results/binned-entropy/" in name for name in _objects(options, url))


def test_several_runs_on_s3_by_list_and_by_glob(bucket, options, tmp_path):
    """URLs stay URLs among several runs (a Path would fold s3:// to s3:/), and a glob of a
    bucket's prefix matches its stores through fsspec."""
    for seed in (0, 1):
        make_test_run(Location.of(f"{bucket}/runs/seed-{seed}.zarr", options), widths=(4, 2),
                      epochs=2, seed=seed).close()
        make_test_run(tmp_path / f"seed-{seed}.zarr", widths=(4, 2), epochs=2, seed=seed).close()
    reference, _ = _estimate(str(tmp_path / "seed-*.zarr"), cache=False)
    urls = [f"{bucket}/runs/seed-{seed}.zarr" for seed in (0, 1)]
    listed, _ = _estimate(urls, storage_options=options, cache=False)
    globbed, _ = _estimate(f"{bucket}/runs/seed-*.zarr", storage_options=options, cache=False)
    for ds in (listed, globbed):
        assert ds["run"].values.tolist() == urls
        assert ds["seed"].values.tolist() == [0, 1]
        for name, var in reference.data_vars.items():
            np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)
        assert ds.attrs["sources"].split("\n") == urls
    metrics = ibframe.run_metrics(f"{bucket}/runs/seed-*.zarr", storage_options=options)
    assert metrics.sizes["run"] == 2
    with pytest.raises(ParameterError, match="no run store matches"):
        _estimate(f"{bucket}/other/*.zarr", storage_options=options)


KILLED_ESTIMATE = textwrap.dedent(
    """
    import os, re, signal, sys, json, warnings
    import zarr.storage
    import ibframe

    url, options = sys.argv[1], json.loads(sys.argv[2])
    original = zarr.storage.FsspecStore.set

    async def dying_set(self, key, value):
        if "/results/" in f"/{key}" and re.search(r"/c(/\\d+)+$", key):
            os.kill(os.getpid(), signal.SIGKILL)  # the first chunk of the first cache entry
        return await original(self, key, value)

    zarr.storage.FsspecStore.set = dying_set
    warnings.simplefilter("ignore")
    ibframe.estimate(url, {"binned-entropy": {"bin_size": [0.1, 0.5]}}, device="cpu",
                     scheduler="synchronous", storage_options=options)
    """
)


@pytest.mark.integration
def test_an_estimate_killed_in_its_cache_write_on_s3_resumes_with_right_values(
    bucket, options, tmp_path
):
    url = f"{bucket}/r.zarr"
    make_test_run(Location.of(url, options), widths=(4, 2), epochs=2).close()
    reference, _ = _estimate(make_test_run(tmp_path / "r.zarr", widths=(4, 2), epochs=2), cache=False)
    killed = subprocess.run([sys.executable, "-c", KILLED_ESTIMATE, url, json.dumps(options)],
                            capture_output=True, text=True, check=False)
    assert killed.returncode == -9, killed.stderr
    assert any("/results/" in name for name in _objects(options, url))  # it died mid-entry
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, total = _estimate(url, storage_options=options)
    assert total == 4
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert any("no commit" in m for m in messages), messages
    for name, var in reference.data_vars.items():
        np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)
    assert _estimate(url, storage_options=options)[1] == 0


def test_a_missing_bucket_is_one_line(moto_endpoint, options):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/r.zarr"
    with pytest.raises(StoreNotFoundError) as missing:
        ibframe.open_run(url, storage_options=options)
    assert "bucket" in _one_line(missing.value) and "does not exist" in str(missing.value)
    with pytest.raises(StoreNotFoundError, match=r"bucket .* does not exist"):
        make_test_run(Location.of(url, options), epochs=1)


def test_an_absent_store_in_an_existing_bucket_is_one_line(bucket, options):
    with pytest.raises(StoreNotFoundError, match=r"^no run store at s3://"):
        ibframe.open_run(f"{bucket}/nothing.zarr", storage_options=options)


def test_denied_access_is_one_line(bucket, options):
    import moto.settings

    make_test_run(Location.of(f"{bucket}/r.zarr", options), widths=(2,), epochs=1).close()
    saved = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # moto now checks credentials: ours are unknown
    try:
        for attempt in (lambda: ibframe.open_run(f"{bucket}/r.zarr", storage_options=options),
                        lambda: make_test_run(Location.of(f"{bucket}/new.zarr", options))):
            with pytest.raises(StoreAccessError) as denied:
                attempt()
            assert "was denied" in _one_line(denied.value) and SECRET not in str(denied.value)
            assert isinstance(denied.value, PermissionError)
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = saved


def test_an_unreachable_endpoint_is_one_line():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": KEY, "secret": SECRET,
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(StoreUnreachableError) as unreachable:
        ibframe.open_run("s3://bucket/r.zarr", storage_options=options)
    assert "cannot reach" in _one_line(unreachable.value) and SECRET not in str(unreachable.value)
    assert isinstance(unreachable.value, ConnectionError)


def test_missing_credentials_are_one_line(bucket, moto_endpoint):
    with _env(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY=""):
        os.environ.pop("AWS_ACCESS_KEY_ID"), os.environ.pop("AWS_SECRET_ACCESS_KEY")
        with pytest.raises(StoreAccessError, match="no credentials found"):
            ibframe.open_run(f"{bucket}/r.zarr", storage_options={"endpoint_url": moto_endpoint})


def test_storage_options_are_for_urls_only(tmp_path):
    with pytest.raises(IbframeError, match="apply to URLs"):
        ibframe.open_run(tmp_path / "r.zarr", storage_options={"anon": True})


@contextlib.contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_endpoint_and_credentials_can_come_from_the_environment(bucket, moto_endpoint):
    with _env(AWS_ENDPOINT_URL=moto_endpoint):
        make_test_run(f"{bucket}/r.zarr", widths=(2,), epochs=1).close()
        assert ibframe.open_run(f"{bucket}/r.zarr").epochs.tolist() == [0]


def _cli(args, capsys):
    """The command line's entry point, in this process (its S3 client reaches the moto server),
    with ``sys.argv`` as the shell would set it (results record the command in ``history``)."""
    from ibframe.cli import main

    with pytest.raises(SystemExit) as exit_info, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ibframe", *args])
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_the_command_line_reads_and_writes_s3(bucket, options, capsys, tmp_path):
    url = f"{bucket}/r.zarr"
    make_test_run(Location.of(url, options), widths=(4, 2), epochs=2).close()
    opts = [f"--storage-option=endpoint_url={options['endpoint_url']}",
            f"--storage-option=key={KEY}", f"--storage-option=secret={SECRET}"]
    code, out, err = _cli(["info", url, *opts], capsys)
    assert code == 0, err
    assert url in out and "2 recorded" in out
    command = ["estimate", url, "-e", "binned-entropy", "-p", "bin_size=0.5", "--device", "cpu"]
    for suffix in (".nc", ".zarr"):
        results = f"{bucket}/out/results{suffix}"
        code, out, err = _cli([*command, "-o", results, *opts], capsys)
        assert code == 0, err
        assert SECRET not in out + err
        loaded = ibframe.load_results(results, storage_options=options)
        assert loaded["entropy_bin"].sizes["epoch"] == 2 and loaded.attrs["source"] == url
        assert SECRET not in str(loaded.attrs) and KEY not in str(loaded.attrs)
        assert "--storage-option=secret=..." in loaded.attrs["history"]
        again = [*command, "-o", results, *opts, *(["--overwrite"] if suffix == ".zarr" else [])]
        code, _, err = _cli(again, capsys)
        assert (code, "already exists" in err) == ((0, False) if suffix == ".zarr" else (1, True)), err
    code, out, err = _cli(["plot", f"{bucket}/out/results.nc", "-k", "binned-entropy",
                           "-o", str(tmp_path / "figures"), *opts], capsys)
    assert code == 0, err
    assert list((tmp_path / "figures").glob("*.png"))
    # a figure drawn from the run finds it at the results' source URL, with the same options
    code, _, err = _cli(["plot", f"{bucket}/out/results.nc", "-k", "scatter",
                         "-o", str(tmp_path / "figures"), *opts], capsys)
    assert code == 0, err
    assert (tmp_path / "figures" / "scatter.png").is_file()
    code, _, err = _cli([*command, "-o", f"{url}/results.nc", *opts], capsys)
    assert code == 1 and "is inside the run store" in err
    code, _, err = _cli(["info", "s3://no-such-bucket-x1/r.zarr", *opts], capsys)
    assert code == 1 and re.search(r"bucket .* does not exist", err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.integration
def test_a_dask_cluster_estimates_from_s3_without_a_shared_disk(bucket, options, tmp_path):
    """Two worker processes read the blocks straight from S3; the client reads no activation
    chunk and writes the cache; a task that raises (a damaged chunk) is one line, and the other
    results are kept and cached. Asked for a CUDA device on a cluster without GPU workers (and
    a client without a GPU), binned entropy runs on the CPU workers instead of waiting."""
    distributed = pytest.importorskip("distributed")
    import zarr.storage

    url = f"{bucket}/r.zarr"
    make_test_run(Location.of(url, options), widths=(4, 2), epochs=2).close()
    reference, _ = _estimate(make_test_run(tmp_path / "r.zarr", widths=(4, 2), epochs=2), cache=False)
    fs = _fs(options)
    (chunk,) = fs.find(f"{url.removeprefix('s3://')}/layers/h2/S/c/1")
    raw = bytearray(fs.cat_file(chunk))
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(raw))

    read_here: list[str] = []
    original = zarr.storage.FsspecStore.get

    async def counting_get(self, key, *args, **kwargs):
        read_here.append(key)
        return await original(self, key, *args, **kwargs)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        zarr.storage.FsspecStore.get = counting_get
        try:
            with pytest.raises(EstimationFailed) as failed:
                # cuda: the client and the workers have no GPU, and binned entropy needs none
                _estimate(url, storage_options=options, scheduler=cluster.scheduler_address,
                          device="cuda")
        finally:
            zarr.storage.FsspecStore.get = original
        workers = cluster.scheduler_info["workers"]
        assert len(workers) == 2
    (failure,) = failed.value.failures
    assert (failure.layer, failure.epoch) == ("h2", 1) and "cannot be decoded" in failure.error
    assert "\n" not in str(failure)
    activations = [k for k in read_here if re.search(r"layers/[^/]+/S(_cond)?/c/", k)]
    assert activations == [], activations[:5]
    ds = failed.value.result
    for name, var in reference.data_vars.items():
        cells = [(layer, epoch) for layer in ds.layer.values for epoch in ds.epoch.values
                 if (layer, epoch) != ("h2", 1)] if "layer" in var.dims else []
        for layer, epoch in cells:
            np.testing.assert_array_equal(ds[name].sel(layer=layer, epoch=epoch).values,
                                          var.sel(layer=layer, epoch=epoch).values, err_msg=name)
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(raw))  # repaired: the failed task alone is computed again
    ds, total = _estimate(url, storage_options=options)
    assert total == 1
    for name, var in reference.data_vars.items():
        np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)


def test_train_records_a_run_on_s3(bucket, options, capsys):
    url = f"{bucket}/n.zarr"
    opts = [f"--storage-option=endpoint_url={options['endpoint_url']}",
            f"--storage-option=key={KEY}", f"--storage-option=secret={SECRET}"]
    args = ["train", "neuron", "--out", url, "--epochs", "2", "--record", "all", *opts]
    code, out, err = _cli(args, capsys)
    assert code == 0, err
    assert f"recorded {url}" in out and SECRET not in out + err
    run = ibframe.open_run(url, storage_options=options)
    assert run.epochs.tolist() == [0, 1, 2]
    assert SECRET not in json.dumps(run.attrs) and KEY not in json.dumps(run.attrs)
    code, _, err = _cli(args, capsys)
    assert code == 1 and "already exists; pass --overwrite" in err
