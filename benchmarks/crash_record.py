"""Crash campaign for the run store: SIGKILL a recording at random points, check what survives.

Each trial starts a child process that records a small noisy network with ibframe's
:class:`~ibframe.recording.recorder.Recorder` (``create_run``, then epochs 0..5) and prints
``ack <epoch>`` as soon as each epoch's ``append_epoch`` has returned. The child is killed with
SIGKILL at a random point, in turn:

* at its k-th store write inside ``create_run`` (k uniform over ``create_run``'s writes),
* at its k-th store write while recording epochs (k uniform over the remaining writes),
* after a random delay (uniform over a whole recording's duration), which can land inside a
  write, between writes, or in the model's forward passes.

The write counter wraps ``zarr.storage.LocalStore.set`` and ``.delete`` in the child; ibframe's
own code runs unchanged. After each kill the parent checks:

* the store is absent or empty, recognisably half-created (``open_run`` says so), or a run that
  opens and reads back completely (every array of every committed epoch, through ``Run``, so the
  checksums and chunk checks run); anything else counts as **unreadable**;
* every acknowledged epoch is committed (**acked_lost** counts those that are not);
* every committed epoch holds exactly the values of an unkilled reference recording
  (**wrong_values**; the recording is deterministic: fixed seeds, one torch thread, and the
  weights at epoch e are set from a seed rather than trained);
* a resumed recording (``Recorder(..., resume=True)``, which recreates a half-created store and
  trims a half-written epoch) finishes and leaves a store equal to the reference
  (**not_resumable** counts those that do not).

Prints one JSON object with the counts. ``--trials 60`` is the full campaign (about 10 minutes
on two busy cores); the test suite runs a quick form with a handful of chosen kill points.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

EPOCHS = 6
SAMPLES = 96
WIDTHS = (12, 8, 5, 3, 2)
BETA = 0.1
DRAWS = 6
CONDITIONAL = 24


# -- the child: one deterministic recording, killed at its k-th store write if asked -------------


def child(path: str, kill_at_write: int, resume: bool) -> None:
    """Record EPOCHS epochs into ``path``; SIGKILL itself before store write ``kill_at_write``."""
    import numpy as np
    import torch
    import zarr.storage

    from ibframe.recording.datasets import Dataset
    from ibframe.recording.nn import noisy_mlp
    from ibframe.recording.recorder import Recorder, classification_metrics

    torch.set_num_threads(1)
    writes = 0

    def counted(method: Any) -> Any:
        async def wrapper(self: Any, *args: Any) -> Any:
            nonlocal writes
            writes += 1
            if writes == kill_at_write:
                os.kill(os.getpid(), signal.SIGKILL)
            return await method(self, *args)

        return wrapper

    zarr.storage.LocalStore.set = counted(zarr.storage.LocalStore.set)
    zarr.storage.LocalStore.delete = counted(zarr.storage.LocalStore.delete)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (SAMPLES, WIDTHS[0])).astype(np.float32)
    y = (x[:, :3].sum(axis=1) % 2).astype(np.int64)
    split = np.where(np.arange(SAMPLES) < SAMPLES * 3 // 4, "train", "test")
    data = Dataset(x, y, split, "bits", "random 12-bit inputs, parity of the first three")
    torch.manual_seed(0)
    network = noisy_mlp(WIDTHS, beta=BETA)
    initial = {name: p.detach().clone() for name, p in network.model.named_parameters()}

    print("start", flush=True)
    recorder = Recorder.for_network(
        network, path, data, draws=DRAWS, conditional_samples=CONDITIONAL, seed=0,
        metrics_fn=classification_metrics, resume=resume,
    )
    print(f"created {writes}", flush=True)
    with recorder, torch.no_grad():
        for epoch in range(EPOCHS):
            # stands in for training: the weights of epoch e depend on e alone
            generator = torch.Generator().manual_seed(1000 + epoch)
            for name, p in network.model.named_parameters():
                p.copy_(initial[name] + 0.2 * epoch * torch.randn(p.shape, generator=generator))
            if recorder.step(epoch) is not None:
                print(f"ack {epoch}", flush=True)
    print(f"done {writes}", flush=True)


# -- the parent -----------------------------------------------------------------------------------


def _spawn(path: Path, kill_at_write: int = 0, resume: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, __file__, "--child", str(path), "--kill-at-write", str(kill_at_write)]
    return subprocess.Popen(
        [*args, *(["--resume"] if resume else [])], stdout=subprocess.PIPE, text=True
    )


def _lines(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    proc.stdout.close()
    return out.split()


def read_everything(path: Path) -> tuple[str, dict[tuple[Any, ...], Any]]:
    """Classify the store and read all of a run through ``Run``: (state, values by key).

    state is "nothing" (no store, or an empty directory), "half-created", "run" or
    "unreadable: <error>".
    """
    import numpy as np

    import ibframe
    from ibframe.errors import IncompleteStoreError, StoreNotFoundError

    try:
        run = ibframe.open_run(path)
        values: dict[tuple[Any, ...], Any] = {
            ("x",): run.x, ("y",): run.y, ("split",): run.split, ("epochs",): run.epochs.tolist()
        }
        metrics = run.metrics()
        for name in run.layers:
            s = run.activations(name).values
            cond = run.conditional(name)
            s_cond = None if cond is None else cond.values
            for i, epoch in enumerate(run.epochs.tolist()):
                block = run.block(name, epoch)
                assert np.array_equal(block.s, s[i])
                values["S", name, epoch] = s[i]
                if s_cond is not None:
                    assert np.array_equal(block.s_cond, s_cond[i])
                    values["S_cond", name, epoch] = s_cond[i]
        for i, epoch in enumerate(run.epochs.tolist()):
            for metric, series in metrics.data_vars.items():
                values["metric", metric, epoch] = float(series.values[i])
            for param, value in run.params(epoch).items():
                values["param", param, epoch] = value
    except StoreNotFoundError:
        return "nothing", {}
    except IncompleteStoreError:
        return "half-created", {}
    except Exception as err:  # noqa: BLE001 - any other failure is what the campaign counts
        return f"unreadable: {type(err).__name__}: {err}", {}
    return "run", values


def _differs(values: dict[tuple[Any, ...], Any], reference: dict[tuple[Any, ...], Any]) -> int:
    import numpy as np

    wrong = 0
    for key, value in values.items():
        if key == ("epochs",):
            continue
        expected = reference.get(key)
        same = expected is not None and np.array_equal(
            np.asarray(value), np.asarray(expected), equal_nan=np.asarray(value).dtype.kind == "f"
        )
        wrong += not same
    return wrong


def reference(workdir: Path) -> dict[str, Any]:
    """An unkilled recording: its values, its store writes (in create_run, in all) and duration."""
    path = workdir / "reference.zarr"
    proc = _spawn(path)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "start": imports done, recording begins
    start = time.perf_counter()
    lines = [*first.split(), *_lines(proc)]
    counts = {lines[i]: lines[i + 1] for i in range(len(lines) - 1) if lines[i] in ("created", "done")}
    state, values = read_everything(path)
    if state != "run" or "done" not in counts:
        msg = f"the reference recording failed: {state}, output {lines}"
        raise RuntimeError(msg)
    return {
        "values": values,
        "create_writes": int(counts["created"]),
        "total_writes": int(counts["done"]),
        "seconds": time.perf_counter() - start,
    }


def trial(workdir: Path, index: int, kill: tuple[str, float], ref: dict[str, Any]) -> dict[str, Any]:
    """Kill one recording at ``kill`` (("write", k) or ("time", seconds)), then check and resume."""
    path = workdir / f"trial{index}.zarr"
    kind, where = kill
    proc = _spawn(path, kill_at_write=int(where) if kind == "write" else 0)
    if kind == "time":
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "start": imports done, recording begins
        time.sleep(where)
        proc.send_signal(signal.SIGKILL)
        lines = [*first.split(), *_lines(proc)]
    else:
        lines = _lines(proc)
    acked = [int(lines[i + 1]) for i in range(len(lines) - 1) if lines[i] == "ack"]
    outcome: dict[str, Any] = {
        "kind": kind, "at": where, "killed": proc.returncode == -signal.SIGKILL,
        "in_create_run": "created" not in lines, "acked": acked,
    }
    state, values = read_everything(path)
    outcome["state"] = state
    committed = values.get(("epochs",), [])
    outcome["committed"] = committed
    outcome["acked_lost"] = len(set(acked) - set(committed))
    outcome["wrong_values"] = _differs(values, ref["values"])

    resumed = _spawn(path, resume=True)
    resume_lines = _lines(resumed)
    state_after, values_after = read_everything(path)
    outcome["resumed"] = (
        resumed.returncode == 0
        and "done" in resume_lines
        and state_after == "run"
        and values_after.get(("epochs",)) == list(range(EPOCHS))
        and _differs(values_after, ref["values"]) == 0
        and len(values_after) == len(ref["values"])
    )
    shutil.rmtree(path, ignore_errors=True)
    return outcome


def campaign(kills: list[tuple[str, float]], workdir: Path, ref: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Run one trial per kill point; the counts the campaign reports, and every trial."""
    ref = ref or reference(workdir)
    trials = [trial(workdir, i, kill, ref) for i, kill in enumerate(kills)]
    killed = [t for t in trials if t["killed"]]
    states = Counter(t["state"].split(":")[0] for t in killed)
    return {
        "trials": len(trials),
        "sigkills": len(killed),
        "sigkills_in_create_run": sum(t["in_create_run"] for t in killed),
        "sigkills_while_recording": sum(not t["in_create_run"] for t in killed),
        "finished_before_the_kill": len(trials) - len(killed),
        "stores_nothing": states["nothing"],
        "stores_half_created": states["half-created"],
        "stores_run": states["run"],
        "unreadable": states["unreadable"],
        "acked_epochs": sum(len(t["acked"]) for t in killed),
        "acked_lost": sum(t["acked_lost"] for t in trials),
        "committed_epochs_checked": sum(len(t["committed"]) for t in killed),
        "wrong_values": sum(t["wrong_values"] for t in trials),
        "not_resumable": sum(not t["resumed"] for t in trials),
        "reference": {k: ref[k] for k in ("create_writes", "total_writes", "seconds")},
        "failures": [t for t in trials if t["state"].startswith("unreadable") or t["acked_lost"]
                     or t["wrong_values"] or not t["resumed"]],
    }


def random_kills(trials: int, ref: dict[str, Any], seed: int) -> list[tuple[str, float]]:
    """Kill points in turn: a write of create_run, a write while recording, a random time."""
    rng = random.Random(seed)
    create, total = ref["create_writes"], ref["total_writes"]
    kills: list[tuple[str, float]] = []
    for i in range(trials):
        if i % 3 == 0:
            kills.append(("write", rng.randint(1, create)))
        elif i % 3 == 1:
            kills.append(("write", rng.randint(create + 1, total)))
        else:
            kills.append(("time", rng.uniform(0, ref["seconds"])))
    return kills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kill-at-write", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.kill_at_write, args.resume)
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ibframe-crash-") as tmp:
        ref = reference(Path(tmp))
        report = campaign(random_kills(args.trials, ref, args.seed), Path(tmp), ref)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
