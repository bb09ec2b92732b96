"""The ``ibframe`` command line (Typer).

Errors a user can cause print one line and exit 1; usage errors print Typer's usage message and
exit 2; Ctrl-C exits 130, saying what was kept. No user error shows a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ibframe.errors import (
    EstimationFailed,
    IbframeError,
    IbframeWarning,
    ParameterError,
    PluginError,
    TaskFailure,
)

if typing.TYPE_CHECKING:
    import xarray as xr

console = Console()
err_console = Console(stderr=True)
_default_showwarning = warnings.showwarning

app = typer.Typer(
    name="ibframe",
    help="Measure information flow in noisy neural networks (Goldfeld et al., ICML 2019).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def say(text: str, *, err: bool = False) -> None:
    """Print one line as it is: no markup, no highlighting, never wrapped by rich."""
    (err_console if err else console).print(escape(text), highlight=False, soft_wrap=True)


def make_output_directory(path: Path) -> None:
    """Create the directory ``path`` (and its parents), or say in one line why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"cannot use {path} as the output directory: {err.strerror or err}"
        raise ParameterError(msg) from err


def progress_bar() -> Progress:
    """A rich progress bar on stderr, shared by the long-running commands."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


#: The --epochs help of the commands that take it.
EPOCHS_HELP = (
    "0,5,10 (each recorded); 1:50, 1: or :50 pick the recorded epochs from 1 up to but not "
    "including 50; 0:50:5 is every 5th epoch from 0, each recorded (default all)."
)


def parse_epochs(text: str | None) -> list[int | slice] | None:
    """``"0,5,10"``; ``"a:b"``, ``"a:"`` or ``":b"`` (the recorded epochs a <= e < b, as a
    slice); ``"a:b:step"`` (every step-th epoch from a up to b, each of which must be recorded)."""
    if text is None:
        return None
    epochs: list[int | slice] = []
    try:
        for part in text.split(","):
            if ":" in part:
                bounds = [int(v) if v.strip() else None for v in part.split(":")]
                if len(bounds) == 2:
                    epochs.append(slice(*bounds))
                elif None in bounds:
                    raise ValueError(part)
                else:
                    epochs.extend(range(*bounds))  # type: ignore[arg-type]
            elif part.strip():
                epochs.append(int(part))
    except (ValueError, TypeError) as err:
        msg = f"--epochs expects numbers like 0,5,10 or a range a:b, a:, :b or a:b:step, got {text!r}"
        raise ParameterError(msg) from err
    return epochs


def parse_params(items: list[str], names: list[str]) -> dict[str, dict[str, str]]:
    """``-p key=value`` for every estimator that declares ``key``; ``-p name.key=value`` for one."""
    from ibframe.plugins import estimator_registry

    registry = estimator_registry()
    out: dict[str, dict[str, str]] = {name: {} for name in names}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"-p expects key=value or estimator.key=value, got {item!r}"
            raise ParameterError(msg)
        owner, dot, param = key.rpartition(".")
        if dot:
            if owner not in out:
                msg = f"-p {item!r}: estimator {owner!r} is not among -e {', '.join(names)}"
                raise ParameterError(msg)
            out[owner][param] = value
            continue
        takers = [n for n in names if key in {p.name for p in registry.get(n).parameters()}]
        if not takers:
            msg = f"-p {item!r}: no estimator among {', '.join(names)} has a parameter {key!r}"
            raise ParameterError(msg)
        for name in takers:
            out[name][key] = value
    return {k: v for k, v in out.items() if v}


#: ``--storage-option key=value``, repeatable: fsspec options for run stores and results at URLs.
StorageOptions = Annotated[
    list[str],
    typer.Option("--storage-option", metavar="KEY=VALUE", help="key=value for URL stores (endpoint_url=...); repeatable.", show_default=False),
]


def parse_storage_options(items: list[str]) -> dict[str, Any] | None:
    """``["endpoint_url=http://...", "anon=true"]`` as fsspec storage options (None for none).

    Values are read as JSON where they parse (``true``, ``3``, ``{"a": 1}``), else as text; a
    dotted key (``client_kwargs.region_name=...``) sets a nested option.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            msg = f"--storage-option takes key=value, got {item.split('=')[0]!r}..."
            raise ParameterError(msg)
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options or None


@app.command()
def info(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run store: a .zarr directory, or a URL such as s3://bucket/run.zarr.")],
    storage_option: StorageOptions = [],  # noqa: B006
) -> None:
    """Show what a run store holds: layers, epochs, noise, metrics and cached results."""
    from ibframe.store import open_run
    from ibframe.store.integrity import child_names

    r = open_run(run, storage_options=parse_storage_options(storage_option))
    attrs = r.attrs
    epochs = r.epochs
    say(f"{r.path}  (ibframe_format {attrs['ibframe_format']}, written by ibframe "
        f"{attrs.get('ibframe_version')})")
    description = attrs.get("dataset_description")
    say(f"dataset: {attrs.get('dataset')}" + (f" ({description})" if description else ""))
    say(f"samples: {r.n_samples}   labels: {'yes' if r.has_labels else 'no'}   beta: {r.beta}   "
        f"conditional draws: {r.draws}")
    span = f"{epochs[0]}..{epochs[-1]}" if epochs.size else "none"
    say(f"epochs: {epochs.size} recorded ({span})")
    described = any(r.layer_attrs(name).get("description") for name in r.layers)
    table = Table("layer", "units", "shape", "activation", "S given x",
                  Column("noise", overflow="fold"), "draws",
                  *([Column("what", overflow="fold")] if described else []))
    for name in r.layers:
        la = r.layer_attrs(name)
        cond = r.conditional(name)
        table.add_row(
            escape(name), str(la.get("units", "?")), "x".join(map(str, la.get("shape", "?"))),
            str(la.get("activation")),
            "deterministic" if la.get("deterministic_given_x") else "random",
            str(la["noise"]),
            "-" if cond is None else f"{cond.sizes['draw']} x {cond.sizes['cond_sample']} samples",
            *([escape(str(la.get("description") or ""))] if described else []),
        )
    console.print(table)
    metrics = r.metrics()
    if metrics.data_vars and epochs.size:
        last = {k: float(v[-1]) for k, v in metrics.data_vars.items()}
        say("metrics at the last epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
    in_results = child_names(r.store, "results")
    if in_results:
        cached = sorted(set(in_results) - {"zarr.json"})
        say("cached results: " + (", ".join(cached) or "none"))


@app.command()
def estimators() -> None:
    """List every registered estimator, its parameters and the plugin it comes from."""
    from ibframe.plugins import estimator_registry, plugin_distribution

    registry = estimator_registry()
    for name in registry:
        cls = registry.get(name)
        plugin = registry.plugin_of(name)
        console.print(
            f"[bold]{escape(name)}[/bold]  [dim](plugin {escape(plugin)} from "
            f"{escape(plugin_distribution(plugin))}; estimator version {escape(cls.version)})[/dim]"
        )
        console.print(f"  {escape(cls.description)}", soft_wrap=True)
        for p in cls.parameters():
            line = f"    {p.name}: {p.type_name} = {p.default!r}"
            console.print(escape(line) + (f"  [dim]{escape(p.help)}[/dim]" if p.help else ""),
                          soft_wrap=True)
        console.print()


@app.command()
def estimate(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run stores (.zarr directories or URLs such as s3://bucket/run.zarr), or a quoted glob such as 'runs/*.zarr'; several give a run dimension.")],
    estimator: Annotated[list[str], typer.Option("-e", "--estimator", help="Estimator name; repeat for several.")],
    param: Annotated[list[str], typer.Option("-p", "--param", help="key=value, or estimator.key=value.")] = [],  # noqa: B006
    layers: Annotated[str | None, typer.Option(help="Comma-separated layer names (default all).")] = None,
    epochs: Annotated[str | None, typer.Option(help=EPOCHS_HELP)] = None,
    scheduler: Annotated[str | None, typer.Option(help="threads, synchronous, processes, or tcp://host:port.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    split: Annotated[int | None, typer.Option(min=1, help="Split each sp-mi / distance-histogram task into N parts that run on different workers (same results); default: chosen for the cluster, none locally.")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", metavar="PATH|URL", help="Write results to .nc or .zarr.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing results file at -o.")] = False,
    cache: Annotated[bool, typer.Option(help="Read and write cached results in the run store.")] = True,
    storage_option: StorageOptions = [],  # noqa: B006
) -> None:
    """Run estimators on run stores, show a summary, and optionally write the results.

    Several runs (or a quoted glob) give one result with a run dimension, whose seed, beta and
    experiment are coordinates; the summary shows their mean ± sd across runs.

    Failed tasks get one line each, the rest is still shown, cached and written, and it exits 1.

    Ctrl-C exits 130; the results finished so far stay cached, so the same command resumes.
    """
    from ibframe.engine import estimate as run_estimate
    from ibframe.results import check_results_path, save_results

    storage_options = parse_storage_options(storage_option)
    if output is not None:  # before the work, not after it
        check_results_path(output, overwrite=overwrite,
                           storage_options=_for(output, storage_options))
    params = parse_params(param, estimator)
    run: str | list[str] = runs[0] if len(runs) == 1 else runs
    where = runs[0] if len(runs) == 1 else "the run stores"
    bar = progress_bar()
    task = bar.add_task("estimating", total=None)
    done_total = [0, -1]  # tasks finished, tasks planned (-1: not planned yet)

    def report(done: int, total: int) -> None:
        done_total[:] = [done, total]
        if total == 0:
            say(f"all results read from the cache in {where}", err=True)
            return
        bar.start()
        bar.update(task, completed=done, total=total)

    failed: EstimationFailed | None = None
    try:
        ds = run_estimate(
            run, estimator, params=params,
            layers=layers.split(",") if layers else None, epochs=parse_epochs(epochs),
            scheduler=scheduler, device=device, cache=cache, progress=report, split=split,
            storage_options=storage_options if any("://" in r for r in runs) else None,
        )
    except EstimationFailed as err:
        failed, ds = err, err.result
    except KeyboardInterrupt:
        bar.stop()
        done, total = done_total
        raise _interrupted(_estimate_kept(where, done, total, cache)) from None
    finally:
        bar.stop()
    if failed is not None:
        for line in failure_lines(failed.failures):
            err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    if ds is not None:
        print_summary(ds)
        if output is not None:
            command = " ".join(["ibframe", *_redacted(sys.argv[1:])])
            ds.attrs["history"] = "\n".join(filter(None, [ds.attrs.get("history"), command]))
            save_results(ds, output, overwrite=overwrite,
                         storage_options=_for(output, storage_options))
            say(f"results written to {output}")
    if failed is not None:
        raise typer.Exit(1)


def _redacted(argv: list[str]) -> list[str]:
    """The command line with each ``--storage-option`` value hidden: they may hold secrets."""
    shown: list[str] = []
    for arg in argv:
        if shown and shown[-1] == "--storage-option":
            shown.append(f"{arg.partition('=')[0]}=...")
        elif arg.startswith("--storage-option="):
            shown.append(f"--storage-option={arg.split('=')[1]}=...")
        else:
            shown.append(arg)
    return shown


def _for(where: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The storage options for ``where``: they serve URLs, and local paths take none."""
    return storage_options if "://" in where else None


def _estimate_kept(run: str, done: int, total: int, cache: bool) -> str:
    """What an interrupted ``estimate`` leaves behind, in words."""
    if total < 0 or done == 0:
        return "no result was computed yet"
    if not cache:
        return f"{done} of {total} results were computed, and none kept (--no-cache)"
    return (
        f"{done} of {total} results were computed and cached in {run}; run the same command "
        "again to resume"
    )


#: The exit status after Ctrl-C, as a shell gives it (128 + SIGINT).
INTERRUPTED: typing.Final = 130


def _interrupted(kept: str) -> typer.Exit:
    """Say what an interrupted command kept, and exit 130 as a shell does after Ctrl-C."""
    err_console.print(f"[yellow]interrupted:[/yellow] {escape(kept)}", highlight=False,
                      soft_wrap=True)
    return typer.Exit(INTERRUPTED)


def failure_lines(failures: list[TaskFailure]) -> list[str]:
    """One line per estimator and error: the layers and epochs it failed on, and why."""
    from ibframe.store import summarise_epochs

    groups: dict[tuple[str, str], list[TaskFailure]] = {}
    for failure in failures:
        groups.setdefault((failure.estimator, failure.error), []).append(failure)
    lines = []
    for (name, error), group in groups.items():
        if len(group) == 1:
            lines.append(str(group[0]))
            continue
        layers = ", ".join(dict.fromkeys(repr(f.layer) for f in group))
        epochs = summarise_epochs(np.unique([f.epoch for f in group]))
        lines.append(f"{name} failed on {len(group)} tasks, layers {layers} at epochs {epochs}: "
                     f"{error}")
    return lines


_TRAINING = "Training"
_RECORDING = "Recording"


@app.command()
def train(
    experiment: Annotated[str, typer.Argument(metavar="EXPERIMENT", help="szt, spiral, mnist-cnn, mnist-cnn-dropout, neuron, leaky-relu-pair, or a plugin's.")],
    out: Annotated[str, typer.Option("--out", "-o", metavar="PATH|URL", help="Run store to write (.zarr, or a URL such as s3://bucket/run.zarr); with several seeds a directory (DIR/seed-N.zarr) or a pattern with {seed}.")],
    data: Annotated[Path | None, typer.Option(help="Data file or directory (var_u.mat, MNIST IDX files), or sklearn-digits (the MNIST CNNs' 8x8 stand-in); default: the experiment's own data (MNIST: the 5,000 real digits of the mnist extra).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run store.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.", rich_help_panel=_TRAINING)] = None,
    beta: Annotated[float | None, typer.Option(help="Noise std after each hidden layer (0: deterministic).", rich_help_panel=_TRAINING)] = None,
    activation: Annotated[str | None, typer.Option(help="Hidden nonlinearity: tanh, relu, linear, ...", rich_help_panel=_TRAINING)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.", rich_help_panel=_TRAINING)] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd.", rich_help_panel=_TRAINING)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size (default: the experiment's).", rich_help_panel=_TRAINING)] = None,
    seed: Annotated[list[int], typer.Option(help="Seed of weights, batches, subsets and recording noise (default 0); repeat for one run per seed.", rich_help_panel=_TRAINING)] = [],  # noqa: B006
    seeds: Annotated[str | None, typer.Option(help="Several seeds, one run store each: 0-7, or 0-3,7.", rich_help_panel=_TRAINING)] = None,
    orthonormal: Annotated[float | None, typer.Option(help="alpha of the orthonormality step (App. B.1).", rich_help_panel=_TRAINING)] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Data augmentation (MNIST: App. B.3's shifts, rotations, shears; on by default).", rich_help_panel=_TRAINING)] = None,
    layer_set: Annotated[str | None, typer.Option(help="Layers to record (MNIST CNNs, the network of App. B.3 with the noise before each max-pooling: pooled = the paper's layers 1-4, pool1, pool2 after max-pooling, fc3, logits; pre-pool = tanh1, tanh2 before their noise and max-pooling (each S + Z, for sp-mi), fc3, logits; noise-after-pool = a variant with the noise moved after each max-pooling, recording pool1, pool2 as S + Z, fc3, logits).", rich_help_panel=_TRAINING)] = None,
    device: Annotated[str, typer.Option(help="Torch device to train on: cpu, cuda, cuda:N or auto.", rich_help_panel=_TRAINING)] = "cpu",
    record: Annotated[str | None, typer.Option(help="Epochs to record: all, every:K, log:N, or 0,1,5.", rich_help_panel=_RECORDING)] = None,
    draws: Annotated[int | None, typer.Option(help="Conditional draws per conditional input (default 32 for a noisy network; the SP bias falls as 1/draws).", rich_help_panel=_RECORDING)] = None,
    conditional_samples: Annotated[int | None, typer.Option(help="Inputs with conditional draws, a seeded subset (default all, within a 2 GiB store).", rich_help_panel=_RECORDING)] = None,
    samples: Annotated[int | None, typer.Option(help="Inputs recorded, a seeded subset (default all).", rich_help_panel=_RECORDING)] = None,
    storage_option: StorageOptions = [],  # noqa: B006
) -> None:
    """Train one of the paper's set-ups and record it into a run store (one per seed).

    --seeds 0-7 (or --seed repeated) trains one run per seed, into --out DIR/seed-N.zarr or a
    --out pattern with {seed} (runs/szt-{seed}.zarr); each store records its seed.

    Ctrl-C exits 130; the epochs recorded until then stay readable.
    """
    from ibframe.engine import resolve_device
    from ibframe.plugins import experiment_registry
    from ibframe.recording.experiments import parse_seeds, train_seeds

    chosen = list(dict.fromkeys([*seed, *(parse_seeds(seeds) if seeds is not None else [])]))
    chosen = chosen or [0]
    spec = experiment_registry().get(experiment)
    storage_options = _for(out, parse_storage_options(storage_option))
    device = resolve_device(device)
    total = epochs if epochs is not None else spec.defaults.epochs
    bar = progress_bar()
    task = bar.add_task(f"training {experiment}", total=total + 1)
    label = [f"training {experiment}"]
    current: list[Path | str] = []
    finished: list[Path | str] = []

    def on_seed(seed: int, path: Path | str, index: int, count: int) -> None:
        if current:
            finished.append(current[-1])
            say(f"recorded {current[-1]}", err=True)
        current.append(path)
        if count > 1:
            label[0] = f"training {experiment} seed {seed} ({index + 1}/{count})"
            bar.reset(task, total=total + 1, description=label[0])

    def report(epoch: int, metrics: Any) -> None:
        loss = metrics.get("loss")
        bar.start()
        bar.update(task, completed=epoch + 1,
                   description=label[0] + (f" loss {loss:.4f}" if loss else ""))

    try:
        paths = train_seeds(
            experiment, chosen, out=out, data=data, epochs=epochs, beta=beta,
            activation=activation, lr=lr, optimizer=optimizer, batch_size=batch_size,
            record=record, draws=draws, conditional_samples=conditional_samples,
            samples=samples, orthonormal=orthonormal, augment=augment, layer_set=layer_set,
            device=device,
            overwrite=overwrite, on_seed=on_seed, on_epoch=report,
            on_info=lambda line: say(line, err=True), storage_options=storage_options,
        )
    except KeyboardInterrupt:
        bar.stop()
        kept = _recorded_epochs(str(current[-1]) if current else out, storage_options)
        if finished:
            kept = f"{len(finished)} seed(s) finished ({', '.join(map(str, finished))}); {kept}"
        raise _interrupted(kept) from None
    finally:
        bar.stop()
    if len(paths) == 1:
        say(f"recorded {paths[0]}; next: ibframe info {paths[0]}")
        return
    say(f"recorded {paths[-1]}", err=True)
    where = str(out) if "{" in str(out) else f"{out}/seed-*.zarr"
    say(f"recorded {len(paths)} runs (seeds {', '.join(map(str, chosen))}) as {where}; next: "
        f"ibframe estimate '{where.replace('{seed}', '*')}' -e sp-mi")


def _recorded_epochs(out: str, storage_options: dict[str, Any] | None) -> str:
    """What an interrupted ``train`` leaves in its run store, in words."""
    from ibframe.store import open_run, summarise_epochs

    try:
        recorded = open_run(out, storage_options=storage_options).epochs
    except (IbframeError, KeyError):  # no store yet, or one interrupted while being created
        return f"no epoch was recorded in {out}"
    if recorded.size == 0:
        return f"no epoch was recorded in {out}"
    return (
        f"epochs {summarise_epochs(recorded)} are recorded in {out} and stay readable; "
        "train again with --overwrite to start over"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the run, results and figures.")] = Path("ibframe-demo"),
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 800).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N for the estimators.")] = "auto",
) -> None:
    """Train a noisy SZT-style network on embedded data, record, estimate and plot."""
    from ibframe.demo import run_demo
    from ibframe.recording.experiments import demo_config

    make_output_directory(out)

    total = epochs if epochs is not None else demo_config()["epochs"]
    bar = progress_bar()
    training = bar.add_task("training", total=total + 1)
    estimating = bar.add_task("estimating", total=None, visible=False)

    def on_epoch(epoch: int, metrics: Any) -> None:
        bar.start()
        bar.update(training, completed=epoch + 1)

    def on_estimate(done: int, count: int) -> None:
        bar.update(estimating, completed=done, total=count, visible=True)

    try:
        outputs = run_demo(out, epochs=epochs, on_epoch=on_epoch, on_estimate=on_estimate,
                           on_info=lambda line: say(line, err=True), device=device)
    except KeyboardInterrupt:
        bar.stop()
        kept = f"what the demo wrote so far is in {out}; run it again to redo it"
        raise _interrupted(kept) from None
    finally:
        bar.stop()
    from ibframe.results import load_results

    print_summary(load_results(outputs.results))
    say(f"run store:  {outputs.run}")
    say(f"results:    {outputs.results}")
    for figure in outputs.figures:
        say(f"figure:     {figure}")


@app.command()
def plot(
    results: Annotated[list[str], typer.Argument(metavar="RESULTS", help="Results files (.nc or .zarr, paths or URLs) from `ibframe estimate -o`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the figures.")] = Path("figures"),
    kind: Annotated[list[str], typer.Option("--kind", "-k", help="mi-epochs, info-plane, binned-entropy, distance-histograms, unit-slopes, cosine-similarity, scatter, density-epochs, activation-histograms or input-distances; repeat (default: all the results allow).")] = [],  # noqa: B006
    format: Annotated[list[str], typer.Option("--format", "-f", help="png and/or svg.")] = ["png"],  # noqa: B006
    run: Annotated[str | None, typer.Option(metavar="PATH|URL", help="Run store for the figures drawn from it (scatter, density-epochs, activation-histograms, input-distances); default the one the results name.")] = None,
    epochs: Annotated[str | None, typer.Option(help=EPOCHS_HELP.replace("(default all)", "(default all; figures at chosen epochs: up to four, log-spaced)"))] = None,
    arrows: Annotated[str | None, typer.Option(help="mi-epochs: mark these epochs with arrows, to match scatter panels at them (as --epochs: 28,80 or 10:100).")] = None,
    layer: Annotated[list[str], typer.Option("--layer", "-l", help="Layer to draw; repeat for several (default: each figure's own; scatter: the deepest of 2 or 3 units).")] = [],  # noqa: B006
    layer_names: Annotated[str | None, typer.Option(help="Names for the layers in the figures: a prefix such as T (T1, T2, ... as in the paper) or one comma-separated name per layer.")] = None,
    storage_option: StorageOptions = [],  # noqa: B006
) -> None:
    """Draw the paper's figures from results (information plane, I(X;T) over epochs, ...)."""
    from ibframe.plot import plot_results
    from ibframe.results import load_results
    from ibframe.store import open_run

    storage_options = parse_storage_options(storage_option)
    opened = None if run is None else open_run(run, storage_options=_for(run, storage_options))
    make_output_directory(out)
    names = layer_names.split(",") if layer_names and "," in layer_names else layer_names
    for where in results:
        source = Path(where.rsplit("/", 1)[-1] if "://" in where else where)
        if "://" not in where and (source / "layers").is_dir():
            msg = (
                f"{source} is a run store, not results: run `ibframe estimate {source} -e ... "
                f"-o results.nc` first, and pass the run with --run for scatter plots"
            )
            raise ParameterError(msg)
        ds = load_results(where, storage_options=_for(where, storage_options))
        target = out / source.stem if len(results) > 1 else out
        paths = plot_results(ds, kinds=kind or None, out_dir=target, formats=tuple(format),
                             run=opened, epochs=parse_epochs(epochs), layers=layer or None,
                             layer_names=names, arrows=parse_epochs(arrows),
                             storage_options=storage_options)
        for path in paths:
            say(f"figure: {path}")


# -- the summary table ------------------------------------------------------------------------


@dataclasses.dataclass
class _Row:
    """One variable (or several with the same summary) of the summary table."""

    names: list[str]
    notes: list[str]
    units: str
    estimator: str
    cells: dict[str, list[str]]  # layer -> one cell per column

    @property
    def label(self) -> str:
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return ", ".join(self.names) + notes


def print_summary(ds: xr.Dataset) -> None:
    """Tables of the estimates per layer, at the first and last epoch, with standard errors.

    Only variables of role ``estimate`` (the default) are shown; their standard errors
    (``NAME_stderr``) and sampling biases (``NAME_bias``) appear as ``value ± stderr (bias +b)``,
    and ``!`` marks a cell whose estimator's quality flag (role ``quality``, such as sp-mi's
    ``converged``) is false. Of an extra dimension that is a setting (bin
    size, pair) the first value with data is shown and named. Vector-valued results are summarised:
    per-unit values by their mean and [min, max] over units, histograms (a ``<q>_bin``
    dimension) by their mean position on the bin axis. Summaries across epochs (no ``epoch``
    dimension) get a table of their own. Variables with the same summary (a histogram's counts
    and densities) share a row.

    Results of several runs (a ``run`` dimension) are summarised by their mean ± sd across runs
    (:func:`ibframe.aggregate`); an aggregate's ``NAME_sd`` takes the place of the standard error.
    """
    if "run" in ds.dims:
        from ibframe.runs import aggregate

        ds = aggregate(ds, over="run")
    epochs = [int(e) for e in ds["epoch"].values] if "epoch" in ds.coords else []
    shown = sorted({epochs[0], epochs[-1]}) if epochs else []
    per_epoch: list[_Row] = []
    over_epochs: list[_Row] = []
    for name, var in ds.data_vars.items():
        if "layer" not in var.dims or var.attrs.get("role", "estimate") != "estimate":
            continue
        if "epoch" in var.dims:
            _add_row(per_epoch, _summary_row(ds, str(name), var, shown))
        elif var.attrs.get("over_epochs"):
            _add_row(over_epochs, _summary_row(ds, str(name), var, [None]))
    if not per_epoch and not over_epochs:
        say("no estimates to summarise; the results hold only diagnostics or parts")
        return
    if per_epoch:
        table = Table("variable", "layer", *(f"epoch {e}" for e in shown), "units")
        _fill_table(table, per_epoch)
        console.print(table)
        which = (
            f"epoch shown: {shown[0]}, the only one estimated" if len(shown) == 1 else
            f"epochs shown: {shown[0]} and {shown[-1]}, the first and last of the "
            f"{len(epochs)} estimated"
        )
        cells = [cell for row in per_epoch for cells in row.cells.values() for cell in cells]
        spread = any(str(name).endswith("_sd") for name in ds.data_vars)
        legend = [
            (f"values are the {ds.attrs.get('aggregate', 'mean ± sd')}" if spread else
             "± is the Monte Carlo standard error") if any("±" in c for c in cells) else "",
            "bias is the estimated sampling bias (estimate minus truth)"
            if any("(bias" in c for c in cells) else "",
            "! marks estimates that did not converge (docs/sp-estimator.md, 'Convergence')"
            if any(c.endswith(" !") for c in cells) else "",
        ]
        say("; ".join([which, *(part for part in legend if part)]))
    if over_epochs:
        span = f"epochs {epochs[0]}..{epochs[-1]}" if epochs else "the epochs estimated"
        table = Table("variable", "layer", f"across {span}", "units")
        _fill_table(table, over_epochs)
        console.print(table)


def _fill_table(table: Table, rows: list[_Row]) -> None:
    for row in rows:
        for layer, cells in row.cells.items():
            table.add_row(escape(row.label), escape(layer), *cells, escape(row.units))


def _add_row(rows: list[_Row], row: _Row) -> None:
    """Append ``row``, or name it in an earlier row of its estimator with the same summary."""
    if all(cell == "-" for cells in row.cells.values() for cell in cells):
        rows.append(row)
        return
    for earlier in rows:
        if (earlier.estimator, earlier.units, earlier.notes, earlier.cells) == (
            row.estimator, row.units, row.notes, row.cells
        ):
            earlier.names.extend(row.names)
            return
    rows.append(row)


def _summary_row(ds: xr.Dataset, name: str, var: xr.DataArray, epochs: list[int | None]) -> _Row:
    """Reduce ``var`` to one cell per layer and epoch (``None``: a variable without epochs)."""
    import xarray as xr

    estimator = str(var.attrs.get("estimator", ""))
    units = str(var.attrs.get("units", ""))
    extra = [str(d) for d in var.dims if d not in ("epoch", "layer")]
    histograms = [d for d in extra if d.endswith("_bin")]
    per_unit = "unit" in extra
    settings = [d for d in extra if d not in histograms and d != "unit"]
    first = {d: _first_with_values(var, d) for d in settings}
    notes = [f"{d}={var[d].values[i]}" for d, i in first.items() if d in var.coords]
    var = var.isel(first)
    error, bias = ds.get(f"{name}_sd", ds.get(f"{name}_stderr")), ds.get(f"{name}_bias")
    if error is not None:
        error = error.isel({d: i for d, i in first.items() if d in error.dims})
    if bias is not None:
        bias = bias.isel({d: i for d, i in first.items() if d in bias.dims})
    quality = [
        flag for flag in ds.data_vars.values()
        if flag.attrs.get("role") == "quality" and flag.attrs.get("estimator") == estimator
        and "layer" in flag.dims and set(flag.dims) <= {"layer", "epoch"}
    ]
    for dim in histograms:
        centres = var[dim] if dim in var.coords else xr.DataArray(np.arange(var.sizes[dim]), dims=dim)
        total = var.sum(dim)
        valid = (var.fillna(0) >= 0).all(dim) & (total > 0)
        var = ((var * centres).sum(dim) / total).where(valid)
        units = str(ds[dim].attrs.get("units", "")) if dim in ds.coords else ""
        notes.append(f"mean {dim}")
        error = bias = None
    if per_unit:
        notes.append("over units: mean [min, max]")
        error = bias = None
    cells: dict[str, list[str]] = {}
    for layer in ds["layer"].values:
        row = []
        for epoch in epochs:
            where = {"layer": layer} if epoch is None else {"layer": layer, "epoch": epoch}
            values = var.sel(where).values
            err = None if error is None else float(error.sel(where))
            off = None if bias is None else float(bias.sel(where))
            failed = any(
                not bool(flag.sel({k: v for k, v in where.items() if k in flag.dims}))
                for flag in quality
            )
            row.append(_cell(values, err, off, failed))
        cells[str(layer)] = row
    return _Row([name], notes, units, estimator, cells)


def _first_with_values(var: xr.DataArray, dim: str) -> int:
    """The first position along ``dim`` where ``var`` has a finite value (0 if none has)."""
    others = [d for d in var.dims if d != dim]
    has_values = np.isfinite(var).any(others).values
    return int(np.argmax(has_values)) if has_values.any() else 0


def _cell(
    values: Any, error: float | None, bias: float | None = None, failed: bool = False
) -> str:
    """``value ± error (bias +b)``, ``mean [min, max]`` of a vector, or ``-`` where there is no
    value; ``!`` marks a value whose estimator's quality flag (``converged``) is false."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "-"
    if values.ndim:
        return f"{finite.mean():.4g} [{finite.min():.3g}, {finite.max():.3g}]"
    text = f"{float(values):.4g}"
    if error is not None and np.isfinite(error):
        text += f" ± {error:.2g}"
    if bias is not None and np.isfinite(bias):
        text += f" (bias {bias:+.2g})"
    return text + (" !" if failed else "")


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """ibframe's warnings as one line each; others the usual way."""
    if issubclass(category, IbframeWarning):
        err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True)
    else:
        _default_showwarning(message, category, *args, **kwargs)


def _command_name(command: typer.models.CommandInfo) -> str:
    name = command.name or typer.main.get_command_name(command.callback.__name__)  # type: ignore[union-attr]
    return str(name)


#: The built-in commands, and the plugin manager whose plugins' commands ``app`` holds now.
_BUILTIN_COMMANDS = list(app.registered_commands)
_commands_from: list[Any] = []


def _register_plugin_commands() -> None:
    """Let plugins add sub-commands, once per plugin manager (main may run many times).

    Built-in commands keep their names: a plugin adding a command whose name is taken is skipped
    with a :class:`PluginLoadWarning` naming both.
    """
    from ibframe.plugins import call_each, get_plugin_manager

    pm = get_plugin_manager()
    if _commands_from and _commands_from[0] is pm:
        return
    _commands_from[:] = [pm]
    app.registered_commands[:] = _BUILTIN_COMMANDS
    owners = {_command_name(c): "ibframe" for c in _BUILTIN_COMMANDS}
    before: list[int] = []

    def prepare(plugin_name: str) -> Callable[[], None]:
        before[:] = [len(app.registered_commands)]
        return lambda: app.registered_commands.__delitem__(slice(before[0], None))

    def check(plugin_name: str) -> None:
        added = [_command_name(c) for c in app.registered_commands[before[0]:]]
        for name in added:
            if name in owners or added.count(name) > 1:
                owner = owners.get(name, f"plugin {plugin_name!r}")
                msg = f"plugin {plugin_name!r}: command name {name!r} is already taken by {owner}"
                raise PluginError(msg)
        owners.update(dict.fromkeys(added, f"plugin {plugin_name!r}"))

    call_each("ibframe_register_commands", prepare, check, app=app)


def _describe_experiment(args: list[str]) -> None:
    """``ibframe train EXPERIMENT --help``: the experiment's description and defaults first.

    Typer answers ``--help`` before it reads the arguments, so the experiment is looked up here.
    """
    from ibframe.plugins import experiment_registry

    if len(args) < 3 or args[0] != "train" or "--help" not in args:
        return
    registry = experiment_registry()
    name = next((a for a in args[1:] if not a.startswith("-")), None)
    if name is None or name not in registry:
        return
    spec, d = registry.get(name), registry.get(name).defaults
    schedule = f"{d.lr:g}" + (f" decaying to {d.lr_final:g}" if d.lr_final is not None else "")
    draws = d.draws if d.draws is not None else "recorder default (32 for a noisy network)"
    console.print(f"[bold]{name}[/bold]: {escape(spec.description)}", soft_wrap=False)
    console.print(
        f"Defaults: epochs {d.epochs}, beta {d.beta:g}, activation {d.activation}, "
        f"optimizer {d.optimizer} (lr {schedule}), batch size {d.batch_size or 'full'}, "
        f"record {d.record}, draws {draws}, samples {d.samples or 'all'}"
        + (f", orthonormal {d.orthonormal:g}" if d.orthonormal is not None else "")
        + (", augment" if d.augment else "")
        + (f", layer set {spec.layer_sets[0]} (or {', '.join(spec.layer_sets[1:])})"
           if spec.layer_sets else "")
        + "."
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning ibframe errors into one line.

    Typer runs in standalone mode, so usage errors print its usual usage message and exit 2 and
    Ctrl-C exits 130; an :class:`IbframeError` prints ``error: MESSAGE`` and exits 1.
    """
    previous = warnings.showwarning
    if previous is _default_showwarning:  # leave a caller's own handler (pytest's, say) alone
        warnings.showwarning = _show_warning
    try:
        _register_plugin_commands()
        _describe_experiment(sys.argv[1:] if argv is None else argv)
        app(args=argv, prog_name="ibframe", standalone_mode=True)
    except IbframeError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # while plugins load, before Typer runs a command
        raise SystemExit(INTERRUPTED) from None
    except SystemExit as exit_:
        if exit_.code == INTERRUPTED:
            # Dask's worker threads may be in tasks that take minutes, and the interpreter would
            # wait for them before exiting: stop now, as Ctrl-C asks. Finished results are
            # cached; the tasks running are abandoned, as a kill would leave them.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED)
        raise
    finally:
        warnings.showwarning = previous
