"""Crash campaign for the run store: SIGKILL a recording at random points, check what survives.

Each trial forks a child process that records a small noisy network with ibframe's
:class:`~ibframe.recording.recorder.Recorder` (``create_run``, then epochs 0..5) and reports
``ack <epoch>`` as soon as each epoch's ``append_epoch`` has returned. (The campaign process
imports torch and ibframe, runs no torch operation, and forks: each child starts at once instead
of spending seconds on imports.) The child is killed with SIGKILL at a random point, in turn:

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
* a resumed recording (a new child, ``Recorder(..., resume=True)``, which recreates a half-created store and
  trims a half-written epoch) finishes and leaves a store equal to the reference
  (**not_resumable** counts those that do not).

Prints one JSON object with the counts. The default, 90 trials, is the full campaign (minutes
on two busy cores); the test suite runs a quick form with a handful of chosen kill points.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

EPOCHS = 6
SAMPLES = 96
WIDTHS = (12, 8, 5, 3, 2)
BETA = 0.1
DRAWS = 6
CONDITIONAL = 24


# -- the child: one deterministic recording, killed at its k-th store write if asked -------------


def record(path: str, kill_at_write: int, resume: bool, out: TextIO) -> None:
    """Record EPOCHS epochs into ``path``; SIGKILL itself before store write ``kill_at_write``.

    Writes ``start``, ``created <writes>``, ``ack <epoch>`` per acknowledged epoch and
    ``done <writes>`` to ``out`` as they happen.
    """
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

    print("start", file=out, flush=True)
    recorder = Recorder.for_network(
        network, path, data, draws=DRAWS, conditional_samples=CONDITIONAL, seed=0,
        metrics_fn=classification_metrics, resume=resume,
    )
    print(f"created {writes}", file=out, flush=True)
    with recorder, torch.no_grad():
        for epoch in range(EPOCHS):
            # stands in for training: the weights of epoch e depend on e alone
            generator = torch.Generator().manual_seed(1000 + epoch)
            for name, p in network.model.named_parameters():
                p.copy_(initial[name] + 0.2 * epoch * torch.randn(p.shape, generator=generator))
            if recorder.step(epoch) is not None:
                print(f"ack {epoch}", file=out, flush=True)
    print(f"done {writes}", file=out, flush=True)


class Child:
    """:func:`record` in a process forked from this one, which has imported torch and ibframe
    (and run no torch operation), so that each recording starts at once."""

    def __init__(self, path: Path, kill_at_write: int = 0, resume: bool = False) -> None:
        import torch  # noqa: F401 - imported before the fork, so children start warm

        import ibframe.recording.recorder  # noqa: F401

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 1
            try:
                with os.fdopen(write_fd, "w") as out:
                    record(str(path), kill_at_write, resume, out)
                code = 0
            except BaseException:  # noqa: BLE001 - reported, and the child exits 1
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pid = pid
        self._out = os.fdopen(read_fd)

    def readline(self) -> str:
        return self._out.readline()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def finish(self) -> tuple[list[str], bool, bool]:
        """Wait for the end: the words it wrote, whether SIGKILL ended it, whether it succeeded."""
        words = self._out.read().split()
        self._out.close()
        _, status = os.waitpid(self.pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return words, killed, os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# -- the parent -----------------------------------------------------------------------------------


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
    child = Child(path)
    first = child.readline()  # "start": the recording begins
    start = time.perf_counter()
    words, _, _ = child.finish()
    lines = [*first.split(), *words]
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
    child = Child(path, kill_at_write=int(where) if kind == "write" else 0)
    first = ""
    if kind == "time":
        first = child.readline()  # "start": the recording begins
        time.sleep(where)
        child.kill()
    words, killed, _ = child.finish()
    lines = [*first.split(), *words]
    acked = [int(lines[i + 1]) for i in range(len(lines) - 1) if lines[i] == "ack"]
    outcome: dict[str, Any] = {
        "kind": kind, "at": where, "killed": killed,
        "in_create_run": "created" not in lines, "acked": acked,
    }
    state, values = read_everything(path)
    outcome["state"] = state
    committed = values.get(("epochs",), [])
    outcome["committed"] = committed
    outcome["acked_lost"] = len(set(acked) - set(committed))
    outcome["wrong_values"] = _differs(values, ref["values"])

    resume_lines, _, resume_ok = Child(path, resume=True).finish()
    state_after, values_after = read_everything(path)
    outcome["resumed"] = (
        resume_ok
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


def chosen_kills(ref: dict[str, Any]) -> list[tuple[str, float]]:
    """The quick form: early and last writes of create_run, two while recording, one timed."""
    create, total = ref["create_writes"], ref["total_writes"]
    return [("write", 2), ("write", create), ("write", (create + total) // 2),
            ("write", total - 1), ("time", ref["seconds"] / 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="five chosen kill points instead")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ibframe-crash-") as tmp:
        ref = reference(Path(tmp))
        kills = chosen_kills(ref) if args.quick else random_kills(args.trials, ref, args.seed)
        report = campaign(kills, Path(tmp), ref)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
