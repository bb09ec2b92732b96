"""The ``ibframe`` command line (Typer). Errors a user can cause print one line and exit 1."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ibframe.errors import IbframeError, IbframeWarning, ParameterError

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


def parse_epochs(text: str | None) -> list[int] | None:
    """``"0,5,10"`` or ``"0:100"`` (inclusive start, exclusive stop) or ``"0:100:10"``."""
    if text is None:
        return None
    epochs: list[int] = []
    try:
        for part in text.split(","):
            if ":" in part:
                bounds = [int(v) for v in part.split(":")]
                epochs.extend(range(*bounds))
            elif part.strip():
                epochs.append(int(part))
    except (ValueError, TypeError) as err:
        msg = f"--epochs expects numbers like 0,5,10 or a range 0:100[:step], got {text!r}"
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


@app.command()
def info(run: Annotated[Path, typer.Argument(help="A run store (.zarr directory).")]) -> None:
    """Show what a run store holds: layers, epochs, noise, metrics and cached results."""
    from ibframe.store import open_run

    r = open_run(run)
    attrs = r.attrs
    epochs = r.epochs
    console.print(f"[bold]{r.path}[/bold]  (ibframe_format {attrs['ibframe_format']}, "
                  f"written by ibframe {attrs.get('ibframe_version')})")
    console.print(f"dataset: {attrs.get('dataset')}   samples: {r.n_samples}   "
                  f"labels: {'yes' if r.has_labels else 'no'}   beta: {r.beta}   "
                  f"conditional draws: {r.draws}")
    span = f"{epochs[0]}..{epochs[-1]}" if epochs.size else "none"
    console.print(f"epochs: {epochs.size} recorded ({span})")
    table = Table("layer", "units", "shape", "activation", "S given x", "draws")
    for name in r.layers:
        la = r.layer_attrs(name)
        cond = r.conditional(name)
        table.add_row(
            name, str(la["units"]), "x".join(map(str, la["shape"])), str(la.get("activation")),
            "deterministic" if la["deterministic_given_x"] else "random",
            "-" if cond is None else f"{cond.sizes['draw']} x {cond.sizes['cond_sample']} samples",
        )
    console.print(table)
    metrics = r.metrics()
    if metrics.data_vars:
        last = {k: float(v[-1]) for k, v in metrics.data_vars.items()}
        console.print("metrics at the last epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
    results = r.path / "results"
    if results.exists():
        cached = sorted(p.name for p in results.iterdir() if p.is_dir())
        console.print("cached results: " + (", ".join(cached) or "none"))


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
    run: Annotated[Path, typer.Argument(help="A run store (.zarr directory).")],
    estimator: Annotated[list[str], typer.Option("-e", "--estimator", help="Estimator name; repeat for several.")],
    param: Annotated[list[str], typer.Option("-p", "--param", help="key=value, or estimator.key=value.")] = [],  # noqa: B006
    layers: Annotated[str | None, typer.Option(help="Comma-separated layer names (default all).")] = None,
    epochs: Annotated[str | None, typer.Option(help="0,5,10 or 0:100[:step] (default all).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="threads, synchronous, processes, or tcp://host:port.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write results to .nc or .zarr.")] = None,
    cache: Annotated[bool, typer.Option(help="Read and write cached results in the run store.")] = True,
) -> None:
    """Run estimators on a run store, show a summary, and optionally write the results."""
    from ibframe.engine import estimate as run_estimate
    from ibframe.results import check_results_path, save_results

    if output is not None:
        check_results_path(output)  # before the work, not after it
    params = parse_params(param, estimator)
    bar = progress_bar()
    task = bar.add_task("estimating", total=None)

    def report(done: int, total: int) -> None:
        bar.start()
        bar.update(task, completed=done, total=total)

    try:
        ds = run_estimate(
            run, estimator, params=params,
            layers=layers.split(",") if layers else None, epochs=parse_epochs(epochs),
            scheduler=scheduler, device=device, cache=cache, progress=report,
        )
    finally:
        bar.stop()
    print_summary(ds)
    if output is not None:
        ds.attrs["history"] += f"\n{' '.join(['ibframe', *sys.argv[1:]])}"
        save_results(ds, output)
        console.print(f"results written to {output}")


@app.command()
def train(
    experiment: Annotated[str, typer.Argument(help="szt, spiral, mnist-cnn, neuron, leaky-relu-pair, or a plugin's.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run store to write (.zarr).")],
    data: Annotated[Path | None, typer.Option(help="Data file or directory (var_u.mat, MNIST IDX files).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    beta: Annotated[float | None, typer.Option(help="Noise std after each hidden layer (0: deterministic).")] = None,
    activation: Annotated[str | None, typer.Option(help="Hidden nonlinearity: tanh, relu, linear, ...")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size (default: the experiment's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches, subsets and recording noise.")] = 0,
    record: Annotated[str | None, typer.Option(help="Epochs to record: all, every:K, log:N, or 0,1,5.")] = None,
    draws: Annotated[int | None, typer.Option(help="Conditional draws n_x per conditional input.")] = None,
    conditional_samples: Annotated[int | None, typer.Option(help="Inputs with conditional draws, a seeded subset.")] = None,
    samples: Annotated[int | None, typer.Option(help="Inputs recorded, a seeded subset (default all).")] = None,
    orthonormal: Annotated[float | None, typer.Option(help="alpha of the orthonormality step (App. B.1).")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Data augmentation (MNIST: App. B.3's shifts, rotations, shears; on by default).")] = None,
    device: Annotated[str, typer.Option(help="Torch device to train on: cpu, cuda, cuda:N or auto.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run store.")] = False,
) -> None:
    """Train one of the paper's set-ups and record it into a run store."""
    from ibframe.engine import resolve_device
    from ibframe.plugins import experiment_registry
    from ibframe.recording.experiments import train as run_training

    spec = experiment_registry().get(experiment)
    device = resolve_device(device)
    total = epochs if epochs is not None else spec.defaults.epochs
    with progress_bar() as bar:
        task = bar.add_task(f"training {experiment}", total=total + 1)

        def report(epoch: int, metrics: Any) -> None:
            loss = metrics.get("loss")
            bar.update(task, completed=epoch + 1,
                       description=f"training {experiment}" + (f" loss {loss:.4f}" if loss else ""))

        path = run_training(
            experiment, out=out, data=data, epochs=epochs, beta=beta, activation=activation,
            lr=lr, optimizer=optimizer, batch_size=batch_size, seed=seed, record=record,
            draws=draws, conditional_samples=conditional_samples, samples=samples,
            orthonormal=orthonormal, augment=augment, device=device, overwrite=overwrite, on_epoch=report,
        )
    console.print(f"recorded {path}; next: ibframe info {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the run, results and figures.")] = Path("ibframe-demo"),
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 800).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N for the estimators.")] = "auto",
) -> None:
    """Train a noisy SZT-style network on embedded data, record, estimate and plot."""
    from ibframe.demo import run_demo
    from ibframe.recording.experiments import demo_config

    total = epochs if epochs is not None else demo_config()["epochs"]
    with progress_bar() as bar:
        training = bar.add_task("training", total=total + 1)
        estimating = bar.add_task("estimating", total=None, visible=False)

        def on_epoch(epoch: int, metrics: Any) -> None:
            bar.update(training, completed=epoch + 1)

        def on_estimate(done: int, count: int) -> None:
            bar.update(estimating, completed=done, total=count, visible=True)

        outputs = run_demo(out, epochs=epochs, on_epoch=on_epoch, on_estimate=on_estimate,
                           device=device)
    from ibframe.results import load_results

    print_summary(load_results(outputs.results))
    console.print(f"run store:  {outputs.run}")
    console.print(f"results:    {outputs.results}")
    for figure in outputs.figures:
        console.print(f"figure:     {figure}")


@app.command()
def plot(
    results: Annotated[list[Path], typer.Argument(help="Results files (.nc or .zarr) from `ibframe estimate -o`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the figures.")] = Path("figures"),
    kind: Annotated[list[str], typer.Option("--kind", "-k", help="mi-epochs, info-plane, binned-entropy, distance-histograms, unit-slopes, cosine-similarity or scatter; repeat (default: all the results allow).")] = [],  # noqa: B006
    format: Annotated[list[str], typer.Option("--format", "-f", help="png and/or svg.")] = ["png"],  # noqa: B006
    run: Annotated[Path | None, typer.Option(help="Run store for scatter plots of the activations.")] = None,
) -> None:
    """Draw the paper's figures from results (information plane, I(X;T) over epochs, ...)."""
    from ibframe.plot import plot_results
    from ibframe.results import load_results

    for source in results:
        if (source / "layers").is_dir():
            msg = (
                f"{source} is a run store, not results: run `ibframe estimate {source} -e ... "
                f"-o results.nc` first, and pass the run with --run for scatter plots"
            )
            raise ParameterError(msg)
        ds = load_results(source)
        target = out / source.stem if len(results) > 1 else out
        paths = plot_results(ds, kinds=kind or None, out_dir=target, formats=tuple(format),
                             run=run)
        for path in paths:
            console.print(f"figure: {path}")


def print_summary(ds: Any) -> None:
    """A table of the estimates per layer at the first and last epoch, with standard errors.

    Variables marked ``role`` = ``"stderr"``, ``"component"`` or ``"diagnostic"`` (parts and
    checks of an estimate), summaries without an epoch, histograms and per-unit values are left
    out; of other extra dimensions (bin size, pair) the first value is shown. ``NAME_stderr`` is
    shown beside ``NAME`` as ``value ± stderr``.
    """
    epochs = ds["epoch"].values
    table = Table("variable", "layer", f"epoch {epochs[0]}", f"epoch {epochs[-1]}", "units")

    def cell(var: Any, error: Any, index: int) -> str:
        value = f"{float(var[index]):.4g}"
        return value if error is None else f"{value} ± {float(error[index]):.2g}"

    for name, var in ds.data_vars.items():
        if not {"layer", "epoch"} <= set(var.dims) or var.attrs.get("role", "estimate") != "estimate":
            continue
        extra = [str(d) for d in var.dims if d not in ("epoch", "layer")]
        if any(d == "unit" or d.endswith("_bin") for d in extra):
            continue  # histograms and per-unit values: see the figures
        first = var.isel(dict.fromkeys(extra, 0))  # the first setting (bin size, pair, ...)
        label = str(name) + (
            " (" + ", ".join(f"{d}={first[d].item()}" for d in extra if d in var.coords) + ")"
            if extra else ""
        )
        error = ds.get(f"{name}_stderr")
        for layer in ds["layer"].values:
            row = first.sel(layer=layer).values
            errors = error.isel(dict.fromkeys(extra, 0)).sel(layer=layer).values \
                if error is not None else None
            table.add_row(label, str(layer), cell(row, errors, 0), cell(row, errors, -1),
                          str(var.attrs.get("units", "")))
    console.print(table)


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """ibframe's warnings as one line each; others the usual way."""
    if issubclass(category, IbframeWarning):
        err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True)
    else:
        _default_showwarning(message, category, *args, **kwargs)


_commands_added_by: set[int] = set()


def _register_plugin_commands() -> None:
    """Let plugins add sub-commands, once per plugin manager (main may run many times)."""
    from ibframe.plugins import call_each, get_plugin_manager

    pm = get_plugin_manager()
    if id(pm) not in _commands_added_by:
        _commands_added_by.add(id(pm))

        def prepare(plugin_name: str) -> Callable[[], None]:
            count = len(app.registered_commands)
            return lambda: app.registered_commands.__delitem__(slice(count, None))

        call_each("ibframe_register_commands", prepare, app=app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning ibframe errors into one line."""
    previous = warnings.showwarning
    if previous is _default_showwarning:  # leave a caller's own handler (pytest's, say) alone
        warnings.showwarning = _show_warning
    try:
        _register_plugin_commands()
        app(args=argv, standalone_mode=False)
    except IbframeError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except typer.Exit as exit_:
        raise SystemExit(exit_.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None
    except click.ClickException as err:
        err.show()
        raise SystemExit(err.exit_code) from None
    finally:
        warnings.showwarning = previous
    raise SystemExit(0)
