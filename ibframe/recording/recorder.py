"""Record a network's hidden representations into a run store while it trains.

The recorder follows the paper's definitions (DESIGN.md §1). At a recorded epoch it

1. runs every input through the network once, with the noise on: forward hooks capture S_l, the
   output of the module *before* the noise of layer l, while the noisy T_l = S_l + Z_l flows on
   into layer l+1. This is the unconditional sample of every layer;
2. for the conditional samples (all inputs or a seeded subset), feeds each input ``draws`` more
   times, each pass with fresh noise in every layer: the samples of S_l given X = x. The passes
   are batched (inputs repeated row-wise), not looped per sample. By default a noisy network gets
   :data:`DEFAULT_DRAWS` draws for every input, as many as the store budget
   (:data:`DEFAULT_STORE_BUDGET`) allows: the SP estimator's sampling bias falls as 1/draws, and
   one draw per input biases h(T) of deep SZT layers by up to 2 nats (docs/sp-estimator.md);
3. writes S, the conditional draws, the model's parameters (its ``state_dict``) and the metrics to
   the run store (:mod:`ibframe.store`).

The network runs in ``eval()`` mode while recording (batch-norm uses its running statistics and
updates nothing) with the noise modules forced on and fed from a dedicated ``torch.Generator``
seeded from (seed, epoch): the global RNG that drives training is not touched, each module's
train/eval mode is restored afterwards, and any epoch's noise can be regenerated with
:meth:`Recorder.noise_generator`.

In a training loop of your own::

    net = ibframe.recording.nn.szt_mlp(beta=0.01)            # or any model, naming its modules
    with Recorder.for_network(net, "run.zarr", data, schedule="log:30",
                              epochs=500, metrics_fn=classification_metrics) as rec:
        for epoch in range(501):
            if epoch:
                train_one_epoch(net.model)
            rec.step(epoch)

For a model of your own, pass ``layers={"h1": "encoder.act1", ...}`` (store name -> qualified
name of the module whose output is S_l) and ``noise=["encoder.noise1", ...]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from ibframe.errors import IncompleteStoreError, ParameterError, StoreError, StoreNotFoundError
from ibframe.recording.datasets import Dataset
from ibframe.recording.nn import GaussianNoise, HiddenLayer, NoisyNetwork, controlled_noise
from ibframe.recording.spec import MetricsFn
from ibframe.store import Run, create_run, open_run
from ibframe.store.location import Location

#: Conditional draws per input of a noisy network unless told otherwise. With 32 realisations
#: per input the SP estimate of I(X;T) on the SZT network (beta = 0.005) is within 0.02-0.21 nats
#: of its many-draw limit; docs/sp-estimator.md, "Convergence", has the measurements.
DEFAULT_DRAWS: typing.Final = 32
#: Bytes (uncompressed float32) a recording may plan for before the conditional subset shrinks.
DEFAULT_STORE_BUDGET: typing.Final = 2 * 2**30


@dataclasses.dataclass(frozen=True)
class RecordSchedule:
    """Which epochs to record. Build one with :meth:`parse`.

    Epoch e is the state after e epochs of training; epoch 0 is the initial network.

    Attributes
    ----------
    kind
        "all" (every epoch), "every" (multiples of ``value``), "log" (``value`` epochs spaced
        logarithmically over the run, dense early and sparse late, as in Saxe et al. 2018) or
        "list" (the epochs in ``explicit``).
    value
        k for "every", the number of epochs for "log".
    explicit
        The epochs for "list", increasing.
    """

    kind: Literal["all", "every", "log", "list"]
    value: int = 0
    explicit: tuple[int, ...] = ()

    @classmethod
    def parse(cls, spec: str | RecordSchedule) -> RecordSchedule:
        """Parse ``"all"``, ``"every:K"``, ``"log:N"`` or a comma-separated list ``"0,1,2,10"``."""
        if isinstance(spec, RecordSchedule):
            return spec
        text = spec.strip().lower()
        try:
            if text == "all":
                return cls("all")
            if text.startswith(("every:", "log:")):
                kind, _, number = text.partition(":")
                value = int(number)
                if value < 1:
                    raise ValueError(number)
                return cls("every" if kind == "every" else "log", value)
            epochs = sorted({int(part) for part in text.split(",")})
            if epochs[0] < 0:
                raise ValueError(epochs[0])
            return cls("list", explicit=tuple(epochs))
        except ValueError:
            msg = (
                f"invalid record schedule {spec!r}: use 'all', 'every:K', 'log:N' (K, N >= 1) or "
                "a comma-separated list of epochs such as '0,1,2,10'"
            )
            raise ParameterError(msg) from None

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "list":
            return ",".join(map(str, self.explicit))
        return f"{self.kind}:{self.value}"

    def epochs(self, last_epoch: int) -> npt.NDArray[np.int64]:
        """The recorded epochs among 0..``last_epoch``.

        ``log:N`` gives ``min(N, last_epoch + 1)`` distinct epochs, the rounded points of a
        geometric grid from 1 to ``last_epoch + 1`` shifted down by one, so 0 and ``last_epoch``
        are always among them.
        """
        span = np.arange(last_epoch + 1, dtype=np.int64)
        if self.kind == "all":
            return span
        if self.kind == "every":
            return span[:: self.value]
        if self.kind == "list":
            chosen = np.asarray(self.explicit, dtype=np.int64)
            return chosen[chosen <= last_epoch]
        return np.array(_log_epochs(self.value, last_epoch), dtype=np.int64)

    def includes(self, epoch: int, last_epoch: int | None = None) -> bool:
        """Whether ``epoch`` is recorded; "log" needs the run's ``last_epoch``."""
        if self.kind == "all":
            return True
        if self.kind == "every":
            return epoch % self.value == 0
        if self.kind == "list":
            return epoch in self.explicit
        if last_epoch is None:
            msg = f"schedule {self} needs the number of epochs of the run (pass epochs=...)"
            raise ParameterError(msg)
        return epoch in _log_epochs(self.value, last_epoch)


@functools.lru_cache(maxsize=16)
def _log_epochs(count: int, last_epoch: int) -> tuple[int, ...]:
    """The epochs of ``log:count`` over 0..``last_epoch``; cached, as loops ask every epoch."""
    want = min(count, last_epoch + 1)
    points = max(want, 2)
    while True:
        grid = np.geomspace(1, last_epoch + 1, points)
        epochs = np.unique(np.round(grid).astype(np.int64) - 1)
        if epochs.size >= want:
            return tuple(epochs.tolist())
        points += 1


def classification_metrics(output: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Cross-entropy ``loss`` and ``accuracy`` of logits (sample, class) against labels."""
    return {
        "loss": float(F.cross_entropy(output, y)),
        "accuracy": float((output.argmax(dim=1) == y).float().mean()),
    }


@dataclasses.dataclass(frozen=True)
class _Layer:
    name: str
    module: str
    attrs: dict[str, Any]
    pool: str | None = None  # a pooling module applied to the module's output to give S


def _normalise_layers(
    layers: Mapping[str, str] | Sequence[str] | Sequence[HiddenLayer],
) -> list[_Layer]:
    if isinstance(layers, Mapping):
        return [_Layer(name, module, {}) for name, module in layers.items()]
    out = []
    for layer in layers:
        if isinstance(layer, HiddenLayer):
            attrs = {"activation": layer.activation, "kind": layer.kind,
                     "noise": layer.noise_relation}
            if layer.pool is not None:
                attrs["pool"] = layer.pool
            if layer.description:
                attrs["description"] = layer.description
            out.append(_Layer(layer.name, layer.module, attrs, layer.pool))
        else:
            out.append(_Layer(layer, layer, {}))
    if not out:
        msg = "name at least one layer to record"
        raise ParameterError(msg)
    return out


#: The fewest inputs with conditional draws that a store budget leaves (when it has them).
_MIN_CONDITIONAL_SAMPLES: typing.Final = 64


def _gib(size: float) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def _noise_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Recorder:
    """Record S_l of named modules of any ``torch.nn.Module`` into a run store.

    Parameters
    ----------
    model
        The network. Its parameters' device is used for the recording passes.
    path
        The run store (``.zarr`` directory) to create, or to append to with ``resume=True``: a
        local path or a URL (``s3://bucket/prefix/run.zarr``), with ``storage_options`` for it.
    x, y, split
        The inputs that are recorded (all of them, every recorded epoch), their integer labels
        and "train"/"test" marks. Metrics are computed per part of the split.
    layers
        The hidden layers: ``{store name: qualified module name}``, a list of module names (used
        as store names), or :class:`ibframe.recording.nn.HiddenLayer` objects. Each module's output is S_l
        (a ``HiddenLayer`` with ``pool``: that pooling of it); conv outputs are flattened to units
        and their shape is kept as the layer's attribute. A ``HiddenLayer`` also sets the layer
        attribute ``noise`` (how T follows from S); other layers get "additive" in a noisy run.
    noise
        Qualified names of the noise modules, each adding N(0, beta^2 I) to its input. While
        recording they compute ``x + beta * Z`` with Z from the recorder's generator, whatever
        their own implementation. None: every :class:`ibframe.recording.nn.GaussianNoise` in the model.
    beta
        Noise standard deviation; None takes it from the noise modules (which must then be
        ``GaussianNoise`` with one common beta, or absent for a deterministic network).
    draws
        Conditional passes per conditional sample (0: none). None: :data:`DEFAULT_DRAWS` for a
        noisy network with noise before some recorded layer, else 0.
    conditional_samples
        Which inputs get conditional draws: an int m for m inputs drawn without replacement with
        ``seed``, or an array of indices. None: all inputs, or as many as ``max_store_bytes``
        allows over the recorded epochs (a seeded subset; :attr:`plan` says which).
    max_store_bytes
        The store size (uncompressed) that ``conditional_samples=None`` plans for; None: no
        limit. An explicit ``conditional_samples`` is kept whatever the size.
    schedule
        Which epochs :meth:`step` records (see :meth:`RecordSchedule.parse`).
    epochs
        The last epoch of the run; needed by a "log" schedule.
    seed
        Seeds the conditional subset and, with the epoch, each epoch's recording noise.
    batch_size
        Rows per recording forward pass (conditional passes are batched across inputs and draws).
    metrics_fn
        ``metrics_fn(output, y)`` on the unconditional pass's model output for each part of the
        split, returning e.g. ``{"loss": ..., "accuracy": ...}``; stored as ``loss_train``,
        ``accuracy_test``, ... (see :func:`classification_metrics`). The metrics are those of the
        noisy network, as it is recorded.
    record_params
        Store the model's ``state_dict`` (parameters and buffers) at each recorded epoch.
    model_info, dataset, attrs
        Provenance for the store (a JSON-able model description, a dataset name, more attrs).
    resume
        Append to an existing store at ``path`` instead of creating one; its beta, draws,
        conditional samples and recording seed are used, and its layers and inputs must match.
        A store whose creation was interrupted (no epoch recorded) is created afresh.
    overwrite
        Replace an existing store at ``path`` (ignored when ``resume=True`` finds a run).
    storage_options
        fsspec's options for a URL (``endpoint_url``, ``key``, ...); never stored.

    The recorder holds the store's writer lock from creation to :meth:`close` (or the end of its
    ``with`` block). Its :attr:`plan` says in one line what every epoch records and about how
    much the store will weigh.
    """

    plan: str

    def __init__(
        self,
        model: nn.Module,
        path: str | Path | Location,
        *,
        x: npt.ArrayLike | torch.Tensor,
        layers: Mapping[str, str] | Sequence[str] | Sequence[HiddenLayer],
        y: npt.ArrayLike | None = None,
        split: npt.ArrayLike | None = None,
        noise: Sequence[str] | None = None,
        beta: float | None = None,
        draws: int | None = None,
        conditional_samples: int | npt.ArrayLike | None = None,
        max_store_bytes: int | None = DEFAULT_STORE_BUDGET,
        schedule: str | RecordSchedule = "all",
        epochs: int | None = None,
        seed: int = 0,
        batch_size: int = 8192,
        metrics_fn: MetricsFn | None = None,
        record_params: bool = True,
        model_info: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.schedule = RecordSchedule.parse(schedule)
        self.last_epoch = epochs
        self.batch_size = batch_size
        self.metrics_fn = metrics_fn
        self.record_params = record_params
        self._layers = _normalise_layers(layers)
        modules = dict(model.named_modules())
        missing = [
            name for layer in self._layers for name in (layer.module, layer.pool)
            if name is not None and name not in modules
        ]
        if noise is None:
            noise = [name for name, m in modules.items() if isinstance(m, GaussianNoise)]
        missing += [name for name in noise if name not in modules]
        if missing:
            msg = f"the model has no module(s) named {missing}"
            raise ParameterError(msg)
        self._noise = list(noise)
        self.beta = self._resolve_beta(beta, modules)
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self._x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        self._y = None if y is None else np.asarray(y)
        # without a split, every sample counts as training data for the metrics
        self._split = np.full(len(self._x), "train") if split is None else np.asarray(split)
        shapes, self._deterministic = self._probe()
        self._budget_limited = False

        self.run: Run
        path = Location.of(path, storage_options)
        if resume:
            try:
                self.run = open_run(path, mode="a")
            except StoreNotFoundError:
                pass  # nothing recorded yet: start afresh
            except IncompleteStoreError:
                overwrite = True  # killed inside create_run, before any epoch: start afresh
            else:
                try:
                    self._check_resumable()
                except BaseException:
                    self.run.close()
                    raise
                self.seed = int(self.run.attrs.get("record_seed", seed))
                self.draws = self.run.draws
                self._cond_index = self._stored_conditional_index()
                self._copied = self._copied_layers()
                self.plan = self._describe(shapes)
                return
        self.seed = seed
        if draws is None:  # draws only serve layers with noise before them
            noisy = not all(self._deterministic.values())
            draws = DEFAULT_DRAWS if self.beta > 0 and noisy else 0
        if draws < 0 or (draws > 0 and self.beta == 0):
            msg = f"draws must be >= 0, and 0 for a deterministic network (beta = 0); got {draws}"
            raise ParameterError(msg)
        self.draws = draws
        self._cond_index = self._conditional_index(conditional_samples, shapes, max_store_bytes)
        layer_specs = {
            layer.name: {
                "shape": list(shapes[layer.name]),
                "kind": "conv" if len(shapes[layer.name]) > 1 else "dense",
                **layer.attrs,
                **({} if self.beta > 0 else {"noise": "none"}),
                "module": layer.module,
                "deterministic_given_x": self._deterministic[layer.name],
            }
            for layer in self._layers
        }
        self.run = create_run(
            path,
            x=self._x.cpu().numpy(),
            y=self._y,
            split=split,
            beta=self.beta,
            layers=layer_specs,
            draws=draws,
            conditional_samples=self._cond_index,
            model=model_info,
            dataset=dataset,
            seed=seed,
            attrs={
                "record_seed": seed,
                "record_schedule": str(self.schedule),
                "noise_modules": self._noise,
                **(attrs or {}),
            },
            overwrite=overwrite,
        )
        self._copied = self._copied_layers()
        self.plan = self._describe(shapes)

    @classmethod
    def for_network(
        cls, network: NoisyNetwork, path: str | Path | Location, data: Dataset, **kwargs: Any
    ) -> Recorder:
        """A recorder for a network built by :mod:`ibframe.recording.nn`, on all samples of ``data``.

        ``kwargs`` are the other keyword arguments of :class:`Recorder`.
        """
        return cls(
            network.model,
            path,
            x=data.x,
            y=data.y,
            split=data.split,
            layers=network.layers,
            noise=network.noise_modules,
            beta=network.beta,
            model_info=network.description,
            dataset=data.name,
            **kwargs,
        )

    # -- set-up ---------------------------------------------------------------------------------

    def _resolve_beta(self, beta: float | None, modules: Mapping[str, nn.Module]) -> float:
        if beta is None:
            betas = set()
            for name in self._noise:
                if not isinstance(modules[name], GaussianNoise):
                    msg = f"noise module {name!r} is not a GaussianNoise; pass beta explicitly"
                    raise ParameterError(msg)
                betas.add(modules[name].beta)
            if len(betas) > 1:
                msg = f"the noise modules have different betas {sorted(betas)}; ibframe needs one"
                raise ParameterError(msg)
            beta = betas.pop() if betas else 0.0
        if beta < 0:
            msg = f"beta must be >= 0, got {beta}"
            raise ParameterError(msg)
        if beta > 0 and not self._noise:
            msg = f"beta is {beta} but the model has no noise modules; name them with noise=[...]"
            raise ParameterError(msg)
        return float(beta)

    def _conditional_index(
        self,
        samples: int | npt.ArrayLike | None,
        shapes: Mapping[str, tuple[int, ...]],
        budget: int | None,
    ) -> npt.NDArray[np.int64] | None:
        n = len(self._x)
        if self.draws == 0:
            return None
        if samples is None:
            fitting = self._inputs_within(budget, shapes)
            if fitting >= n:
                return np.arange(n, dtype=np.int64)
            self._budget_limited = True
            samples = max(fitting, min(n, _MIN_CONDITIONAL_SAMPLES))
        if np.ndim(samples) == 0:
            m = int(samples)  # type: ignore[arg-type]
            if m < 1:
                msg = f"conditional_samples must be >= 1, got {m}"
                raise ParameterError(msg)
            if m >= n:
                return np.arange(n, dtype=np.int64)
            return np.sort(np.random.default_rng(self.seed).choice(n, size=m, replace=False))
        return np.asarray(samples, dtype=np.int64)

    def _recorded_epochs(self) -> int | None:
        """How many epochs the schedule records, if the run's length says."""
        if self.schedule.kind == "list":
            chosen = self.schedule.explicit
            return len(chosen if self.last_epoch is None else
                       [e for e in chosen if e <= self.last_epoch])
        if self.last_epoch is None:
            return None
        return len(self.schedule.epochs(self.last_epoch))

    def _epoch_bytes(self, shapes: Mapping[str, tuple[int, ...]], m: int) -> int:
        """Bytes of one recorded epoch: S of every layer, m inputs' draws, the parameters."""
        units = {name: int(np.prod(shape)) for name, shape in shapes.items()}
        drawn = sum(u for name, u in units.items() if not self._deterministic[name])
        params = sum(v.numel() * v.element_size() for v in self.model.state_dict().values())
        return 4 * len(self._x) * sum(units.values()) + 4 * m * self.draws * drawn + (
            params if self.record_params else 0
        )

    def _inputs_within(self, budget: int | None, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """The most inputs whose draws fit the budget over the recorded epochs."""
        n = len(self._x)
        epochs = self._recorded_epochs()
        if budget is None or epochs is None:
            return n
        per_input = self._epoch_bytes(shapes, 1) - self._epoch_bytes(shapes, 0)
        if per_input == 0:
            return n
        spare = budget / epochs - self._epoch_bytes(shapes, 0)
        return int(min(n, max(0, spare // per_input)))

    def _describe(self, shapes: Mapping[str, tuple[int, ...]]) -> str:
        """One line on what each recorded epoch holds and what the store will weigh."""
        n = len(self._x)
        m = 0 if self._cond_index is None else len(self._cond_index)
        epochs = self._recorded_epochs()
        size = self._epoch_bytes(shapes, m)
        total = f", about {_gib(size)} per epoch" + (
            "" if epochs is None else f", {_gib(epochs * size)} for {epochs} epochs"
        )
        if self.draws == 0:
            line = f"recording: {n} inputs, no conditional draws{total}"
        else:
            line = f"recording: {n} inputs, {self.draws} conditional draws for {m} of them{total}"
        if self._budget_limited and epochs is not None:
            line += (
                f" (all {n} would need {_gib(epochs * self._epoch_bytes(shapes, n))}, over the "
                "store budget: set max_store_bytes / --conditional-samples, or record fewer "
                "epochs)"
            )
        return line

    def _stored_conditional_index(self) -> npt.NDArray[np.int64] | None:
        for layer in self.run.layers:
            cond = self.run.conditional(layer)
            if cond is not None:
                return cond["cond_sample"].values
        return None

    def _copied_layers(self) -> frozenset[str]:
        """Deterministic layers whose draws the store keeps as copies of S (format 1)."""
        if self._cond_index is None:
            return frozenset()
        return frozenset(
            name for name, fixed in self._deterministic.items()
            if fixed and self.run.conditional(name) is not None
        )

    def _probe(self) -> tuple[dict[str, tuple[int, ...]], dict[str, bool]]:
        """One small pass to learn each layer's shape and whether noise runs before it."""
        calls: list[tuple[str, torch.Tensor | None]] = []
        noise = set(self._noise)
        watched = noise | {layer.module for layer in self._layers}
        with self._recording(torch.Generator(device=self.device)):
            hooks = [
                module.register_forward_hook(
                    lambda _m, _i, out, name=name: calls.append(
                        (name, out if isinstance(out, torch.Tensor) else None)
                    )
                )
                for name, module in self.model.named_modules()
                if name in watched
            ]
            try:
                self.model(self._x[:2])
            finally:
                for hook in hooks:
                    hook.remove()
        order = [name for name, _ in calls]
        shapes, deterministic = {}, {}
        for layer in self._layers:
            seen = [i for i, name in enumerate(order) if name == layer.module]
            if len(seen) != 1:
                msg = (
                    f"module {layer.module!r} (layer {layer.name!r}) ran {len(seen)} times in one "
                    "forward pass; record a module that runs exactly once"
                )
                raise ParameterError(msg)
            out = calls[seen[0]][1]
            if out is None:
                msg = f"module {layer.module!r} does not return a tensor"
                raise ParameterError(msg)
            with torch.no_grad():
                shapes[layer.name] = tuple(self._s_of(layer, out).shape[1:])
            deterministic[layer.name] = self.beta == 0 or not any(
                name in noise for name in order[: seen[0]]
            )
        return shapes, deterministic

    def _check_resumable(self) -> None:
        names = [layer.name for layer in self._layers]
        problems = []
        if self.run.layers != names:
            problems.append(f"layers {self.run.layers} != {names}")
        if self.run.beta != self.beta:
            problems.append(f"beta {self.run.beta} != {self.beta}")
        stored = self.run.x
        if not np.array_equal(stored, self._x.cpu().numpy()):
            problems.append("the inputs x differ")
        if problems:
            msg = f"cannot resume {self.run.path}: " + "; ".join(problems)
            raise StoreError(msg)

    # -- recording ------------------------------------------------------------------------------

    @property
    def conditional_index(self) -> npt.NDArray[np.int64] | None:
        """Indices of the inputs that get conditional draws, or None."""
        return self._cond_index

    def noise_generator(self, epoch: int) -> torch.Generator:
        """The generator of epoch ``epoch``'s recording noise, freshly seeded from (seed, epoch).

        It is consumed by the unconditional pass and then the conditional passes, batch by batch,
        each batch drawing the noise of its noise modules in the order they run.
        """
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_noise_seed(self.seed, epoch))
        return generator

    @contextlib.contextmanager
    def _recording(self, generator: torch.Generator) -> Iterator[None]:
        """eval() mode, forced noise from ``generator``, no autograd, global RNG state restored."""
        modes = [(module, module.training) for module in self.model.modules()]
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                self.model.eval()
                if self.beta > 0:
                    with controlled_noise(self.model, self._noise, self.beta, generator):
                        yield
                else:
                    yield
        finally:
            for module, training in modes:
                module.training = training

    def _passes(
        self, rows: npt.NDArray[np.int64] | None, keep_output: bool
    ) -> tuple[dict[str, npt.NDArray[np.float32]], torch.Tensor | None]:
        """Forward the inputs at ``rows`` (None: all, in order) in batches; S per layer."""
        captured: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in self._layers}
        modules = dict(self.model.named_modules())

        def capture(layer: _Layer, out: torch.Tensor) -> None:
            s = self._s_of(layer, out.detach())
            captured[layer.name].append(s.reshape(s.shape[0], -1).float().cpu())

        hooks = [
            modules[layer.module].register_forward_hook(
                lambda _m, _i, out, layer=layer: capture(layer, out)
            )
            for layer in self._layers
        ]
        outputs = []
        total = len(self._x) if rows is None else len(rows)
        try:
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                batch = self._x[start:stop] if rows is None else self._x[rows[start:stop]]
                out = self.model(batch)
                if keep_output:
                    outputs.append(out.detach())
        finally:
            for hook in hooks:
                hook.remove()
        s = {name: torch.cat(parts).numpy() for name, parts in captured.items()}
        return s, (torch.cat(outputs) if keep_output else None)

    def _s_of(self, layer: _Layer, out: torch.Tensor) -> torch.Tensor:
        """S of ``layer`` from its module's output: the output, or its pooling (noise-free)."""
        if layer.pool is None:
            return out
        return self.model.get_submodule(layer.pool)(out)

    def _metrics(self, output: torch.Tensor) -> dict[str, float]:
        if self.metrics_fn is None or self._y is None:
            return {}
        y = torch.as_tensor(self._y, device=output.device)
        values = {}
        for part in ("train", "test"):
            mask = torch.as_tensor(self._split == part, device=output.device)
            if bool(mask.any()):
                for key, value in self.metrics_fn(output[mask], y[mask]).items():
                    values[f"{key}_{part}"] = float(value)
        return values

    def capture(
        self, epoch: int
    ) -> tuple[
        dict[str, npt.NDArray[np.float32]],
        dict[str, npt.NDArray[np.float32]] | None,
        torch.Tensor | None,
    ]:
        """Run the recording passes of ``epoch`` without writing anything.

        Returns S per layer (sample, unit), the conditional draws per layer
        (cond_sample, draws, unit) or None, and the model's output on the unconditional pass
        (None without a ``metrics_fn``).
        """
        with self._recording(self.noise_generator(epoch)):
            s, output = self._passes(None, keep_output=self.metrics_fn is not None)
            conditional = None
            if self._cond_index is not None:
                rows = np.repeat(self._cond_index, self.draws)
                draws, _ = self._passes(rows, keep_output=False)
                m = len(self._cond_index)
                conditional = {}
                for name, values in draws.items():
                    if self._deterministic[name]:
                        if name not in self._copied:
                            continue  # S_l is a function of x: its draws would be copies of S
                        # a format-1 store keeps the copies: the unconditional S, identical to
                        # the last bit (not recomputed with differently batched matmuls)
                        values = np.repeat(s[name][self._cond_index], self.draws, axis=0)
                    conditional[name] = values.reshape(m, self.draws, -1)
        return s, conditional, output

    def record(self, epoch: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """Record ``epoch`` now, whatever the schedule; returns the metrics it stored.

        ``metrics`` are stored beside those of ``metrics_fn`` and take precedence on a clash.
        """
        s, conditional, output = self.capture(epoch)
        values = self._metrics(output) if output is not None else {}
        values.update(metrics or {})
        params = None
        if self.record_params:
            params = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        self.run.append_epoch(epoch, s, conditional=conditional, metrics=values, params=params)
        return values

    def should_record(self, epoch: int) -> bool:
        """Whether the schedule records ``epoch`` and it comes after the last recorded epoch."""
        last = self.run.epochs[-1:]
        if last.size and epoch <= last[0]:
            return False
        return self.schedule.includes(epoch, self.last_epoch)

    def step(
        self, epoch: int, metrics: Mapping[str, float] | None = None
    ) -> dict[str, float] | None:
        """Record ``epoch`` if the schedule asks for it; returns the stored metrics, or None."""
        if not self.should_record(epoch):
            return None
        return self.record(epoch, metrics)

    def close(self) -> None:
        """Close the run store, releasing its writer lock (each recorded epoch is on disk)."""
        self.run.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
