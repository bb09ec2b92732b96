"""The estimator contract: what a plugin implements and what the engine hands it.

An estimator is a frozen, keyword-only dataclass whose fields are its parameters. The fields'
types and defaults are the parameter declaration: ``ibframe estimators`` lists them, the CLI
coerces ``-p key=value`` strings through them, and ``__post_init__`` validates values by raising
:class:`~ibframe.errors.ParameterError`. The engine calls :meth:`Estimator.compute` once per
(layer, epoch) :class:`Block`, caches what it returns, and, for estimators that look across
epochs, calls :meth:`Estimator.finalize_layer` on the epochs of one layer stacked together.

A minimal estimator::

    @dataclass(frozen=True, kw_only=True)
    class MeanActivation(Estimator):
        name: ClassVar[str] = "mean-activation"
        description: ClassVar[str] = "Mean of S over samples and units."
        scale: float = field(default=1.0, metadata={"help": "multiplies the mean"})

        def compute(self, block: Block) -> xr.Dataset:
            value = self.scale * float(block.s.mean())
            return xr.Dataset({"mean_s": ((), value, {"long_name": "mean of S", "units": "1"})})
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from ibframe.block import Block
from ibframe.errors import EstimatorRequirementError, ParameterError

if typing.TYPE_CHECKING:
    from ibframe.store import Run


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """Base class of every estimator. Subclasses are ``@dataclass(frozen=True, kw_only=True)``.

    Class variables declare the metadata; dataclass fields declare the parameters, each with a
    default and, in ``field(metadata={"help": ...})``, a one-line description.
    """

    #: Unique kebab-case name, e.g. ``"sp-mi"``.
    name: ClassVar[str]
    #: One sentence shown by ``ibframe estimators``.
    description: ClassVar[str]
    #: Bump when results change for the same parameters: it is part of the cache key.
    version: ClassVar[str] = "1"
    #: The run must hold class labels.
    needs_labels: ClassVar[bool] = False
    #: The run (or the ``beta`` parameter) must give a noise level > 0.
    needs_noise: ClassVar[bool] = False
    #: The estimator looks across epochs: :meth:`finalize_layer` needs at least two.
    needs_epochs: ClassVar[bool] = False
    #: Parameters that change only speed, not results: left out of the cache key.
    execution_params: ClassVar[frozenset[str]] = frozenset()
    #: The estimator computes on ``block.device`` and gains from a GPU. With a CUDA device only
    #: its tasks get that device and carry dask's ``GPU`` resource; the others get ``"cpu"`` and
    #: run on any worker, never waiting for a GPU.
    uses_gpu: ClassVar[bool] = False

    #: Stages of the split form (:meth:`compute_part`); 0: the estimator is not splittable.
    split_stages: ClassVar[int] = 0

    def compute(self, block: Block) -> xr.Dataset:
        """Estimate on one (layer, epoch) block.

        Returns a Dataset without ``epoch`` and ``layer`` dimensions; the engine adds them. Each
        variable carries ``long_name`` and ``units`` attributes. A splittable estimator need
        not override it: its stages run here in one part each (:func:`compute_in_parts`).
        """
        if self.split_stages:
            return compute_in_parts(self, block, 1)
        raise NotImplementedError

    # -- the split form: one block's work in parts, for big blocks on a cluster ------------------

    def compute_part(self, block: Block, stage: int, part: int, parts: int, carry: Any) -> Any:
        """Part ``part`` of ``parts`` disjoint pieces of stage ``stage``'s work on ``block``.

        ``carry`` is what :meth:`combine_parts` made of the previous stage (None at stage 0).
        The result must be picklable; it goes to :meth:`combine_parts` with the other parts'.
        Parts of a stage run at the same time, perhaps on other machines, each on its own copy
        of the block. The split must not change the result: the engine's contract is that
        any number of parts gives the estimate of one part, to float precision.
        """
        raise NotImplementedError

    def combine_parts(self, stage: int, results: list[Any], carry: Any) -> Any:
        """Fold stage ``stage``'s part results (in part order) into the next stage's carry.

        Runs without the block, so it must be cheap: concatenating, summing, deciding.
        """
        raise NotImplementedError

    def finish(self, block: Block, carry: Any) -> xr.Dataset:
        """The result of :meth:`compute`, from the last stage's carry and the block."""
        raise NotImplementedError

    def cost_seconds(self, run: Run, layer: str) -> float | None:
        """About how long one task on ``layer`` takes on one CPU core, an upper estimate; the
        engine splits the tasks of a splittable estimator that would leave a cluster idle.
        None: unknown (never split automatically)."""
        return None

    def layer_context(self, run: Run, layer: str) -> dict[str, Any]:
        """Values shared by every epoch of a layer, computed once before the blocks.

        Use it for what must be common across epochs, such as histogram edges taken from the
        whole run. It is part of the cache key, so results computed under another context (say,
        before new epochs widened a range) are recomputed. Must be JSON-serialisable. Default: {}.
        """
        return {}

    def finalize_layer(self, ds: xr.Dataset) -> xr.Dataset:
        """Combine the per-epoch results of one layer (``ds`` has an ``epoch`` dimension).

        The default returns ``ds`` unchanged. Estimators with ``needs_epochs`` add variables
        computed across epochs here (slopes, shared bins); it must be cheap, since it is rerun
        whenever results are assembled.
        """
        return ds

    def check_run(self, run: Run, layers: typing.Sequence[str]) -> None:
        """Refuse early, with :class:`EstimatorRequirementError`, a run this estimator cannot use."""
        if self.needs_labels and not run.has_labels:
            msg = f"{self.name} needs class labels, and run {run.path} has none"
            raise EstimatorRequirementError(msg)

    def memory_bytes(self, run: Run, layer: str) -> int:
        """About how many bytes one task on ``layer`` needs at its peak, an upper estimate.

        The engine refuses, before computing anything, work whose tasks need more memory than
        the machine (or GPU, or dask worker) has. The default counts a few copies of the block
        (S, the conditional draws, the labels); estimators whose parameters size their work
        (Monte Carlo draws, histogram bins) add that.
        """
        units = int(run.layer_attrs(layer)["units"])
        conditional = run.conditional(layer)
        cond_values = 0 if conditional is None else math.prod(conditional.shape[1:])
        block = 4 * (run.n_samples * units + cond_values) + 8 * run.n_samples
        return 3 * block

    # -- parameters ------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The parameter values, JSON-serialisable, in declaration order."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def cache_params(self) -> dict[str, Any]:
        """The parameters that define the result (all but :attr:`execution_params`)."""
        return {k: v for k, v in self.params().items() if k not in self.execution_params}

    @classmethod
    def parameters(cls) -> list[Parameter]:
        """The declared parameters, for listings and for coercing strings from the CLI."""
        hints = typing.get_type_hints(cls)
        return [
            Parameter(
                name=f.name,
                annotation=hints[f.name],
                default=f.default if f.default is not dataclasses.MISSING else None,
                help=str(f.metadata.get("help", "")),
            )
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def from_params(cls, params: typing.Mapping[str, Any] | None = None) -> Estimator:
        """Build an instance, turning strings into the declared types; unknown names are refused."""
        params = dict(params or {})
        known = {p.name: p for p in cls.parameters()}
        unknown = sorted(set(params) - set(known))
        if unknown:
            listing = ", ".join(known) or "none"
            msg = f"{cls.name} has no parameter {unknown[0]!r} (its parameters: {listing})"
            raise ParameterError(msg)
        values = {k: known[k].coerce(v, cls.name) for k, v in params.items()}
        try:
            return cls(**values)
        except TypeError as err:
            msg = f"{cls.name}: {err}"
            raise ParameterError(msg) from err

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"<{self.name} {args}: {self.description}>"


def compute_in_parts(estimator: Estimator, block: Block, parts: int) -> xr.Dataset:
    """Run a splittable estimator's stages here, each in ``parts`` parts, one after another:
    what the engine does across a cluster, in one process."""
    carry: Any = None
    for stage in range(estimator.split_stages):
        results = [estimator.compute_part(block, stage, p, parts, carry) for p in range(parts)]
        carry = estimator.combine_parts(stage, results, carry)
    return estimator.finish(block, carry)


def part_bounds(total: int, part: int, parts: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``part`` of ``parts`` near-equal runs of ``total`` items
    (the first ``total % parts`` parts have one more); empty when there are more parts than
    items."""
    size, extra = divmod(total, parts)
    start = part * size + min(part, extra)
    return start, start + size + (part < extra)


@dataclass(frozen=True)
class Parameter:
    """One declared estimator parameter."""

    name: str
    annotation: Any
    default: Any
    help: str

    @property
    def type_name(self) -> str:
        """The annotation as a user reads it, e.g. ``float | None``."""
        return _type_name(self.annotation)

    def coerce(self, value: Any, owner: str) -> Any:
        """Turn ``value`` (often a CLI string) into the declared type, or raise ParameterError."""
        options = _union_members(self.annotation)
        if isinstance(value, str):
            for option in options:
                try:
                    return _from_string(value, option)
                except (ValueError, TypeError):
                    continue
        else:
            for option in options:
                if _is_instance(value, option):
                    return list(value) if isinstance(value, tuple) else value
            for option in options:  # one value where a list is declared: a list of one
                if typing.get_origin(option) in (list, tuple) and _is_instance([value], option):
                    return [value]
        msg = f"{owner}: parameter {self.name!r} expects {self.type_name}, got {value!r}"
        raise ParameterError(msg)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (list, tuple):
        args = typing.get_args(annotation)
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def _from_string(text: str, option: Any) -> Any:
    origin = typing.get_origin(option)
    if option is type(None):
        if text.lower() in ("none", "null", ""):
            return None
        raise ValueError(text)
    if origin is typing.Literal:
        for choice in typing.get_args(option):
            if str(choice) == text:
                return choice
        raise ValueError(text)
    if option is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(text)
    if option is int:
        return int(text)
    if option is float:
        return float(text)
    if option is str:
        return text
    if origin in (list, tuple):
        (item,) = typing.get_args(option)[:1] or (str,)
        parts = [p for p in text.strip("[]()").split(",") if p.strip()]
        return [_from_string(p.strip(), item) for p in parts]
    raise TypeError(option)


def _is_instance(value: Any, option: Any) -> bool:
    origin = typing.get_origin(option)
    if option is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(option)
    if option is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(option)
        return isinstance(value, list | tuple) and all(_is_instance(v, args[0]) for v in value)
    return isinstance(value, option)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def params_json(params: typing.Mapping[str, Any]) -> str:
    """Canonical JSON of parameters, as stored in ``estimator_params`` and hashed for the cache."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
