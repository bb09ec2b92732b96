"""Clustering measures: pairwise-distance histograms, per-unit entropy slopes, cosine similarity.

Goldfeld et al. (ICML 2019) trace the compression of I(X;T_l) to the geometric clustering of the
representations, and measure clustering three ways besides binned entropy:

* ``distance-histogram`` (Figs. 6, 8): the distribution of distances between the representations
  of two samples, split into within-class and between-class pairs. Clustering by class shows as
  within-class mass moving to small distances while between-class mass stays away.
* ``unit-entropy-slopes`` (Section 5.2): the binned entropy H(Bin(T_l(k))) of each unit k per
  epoch and the least-squares slope of each unit's entropy over training; most slopes negative
  means the units compress even when the whole layer's binned entropy cannot show it.
* ``cosine-similarity`` (Fig. 3): how alike two networks (deterministic, noisy, dropout) represent
  the same inputs, as a histogram of per-input cosine similarities.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ibframe.errors import EstimatorRequirementError, ParameterError
from ibframe.estimator import Block, Estimator
from ibframe.hookspecs import hookimpl
from ibframe.kernels.binning import bin_indices, entropy_of_codes
from ibframe.kernels.distances import (
    DistanceHistogram,
    Metric,
    pair_rows,
    pairwise_distance_histogram,
    rowwise_cosine_similarity,
)
from ibframe.store import open_run, summarise_epochs

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ibframe.registry import EstimatorRegistry
    from ibframe.store import Run

#: How many noise standard deviations of slack the range of noisy distances gets: for
#: Z_i - Z_j ~ N(0, 2 beta^2 I_d), P(||Z_i - Z_j|| > sqrt(2) beta (sqrt(d) + t)) <= exp(-t^2 / 2),
#: so t = 6 leaves about 1.5e-8 of the pairs beyond the last edge.
_NOISE_SLACK: typing.Final = 6.0


def _bin_coordinate(
    name: str, edges: np.ndarray, long_name: str, units: str
) -> dict[str, xr.Variable]:
    """Centre coordinate of a binned axis plus its (bin, nv) bounds, CF style."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    bounds = np.stack([edges[:-1], edges[1:]], axis=1)
    return {
        name: xr.Variable(
            name, centres, {"long_name": long_name, "units": units, "bounds": f"{name}_bounds"}
        ),
        f"{name}_bounds": xr.Variable(
            (name, "nv"), bounds, {"long_name": f"edges of {long_name} bins", "units": units}
        ),
    }


@dataclass(frozen=True, kw_only=True)
class DistanceHistogramEstimator(Estimator):
    """Histograms of within-class and between-class pairwise distances (Figs. 6 and 8).

    For every pair i < j of samples, the distance between their representations is binned and
    counted as within-class (y_i = y_j) or between-class. Distances are computed by matrix
    products in chunks (:func:`ibframe.kernels.distances.pairwise_distance_histogram`), O(n^2 d)
    time and O(chunk * n) memory. Above ``max_samples`` samples, a seeded random subset of that
    many samples is used, the same subset for every layer and epoch, and all of its pairs are
    counted: the histogram of a uniformly drawn subset estimates the full one without bias.

    **Shared bins.** A histogram is only comparable across epochs if its bins are. The distance
    range [0, D_l] of layer l is fixed once for all epochs in :meth:`layer_context`, from, in order
    of precedence: the ``max_distance`` parameter; the metric (cosine distances lie in [0, 2]); the
    layer's activation (tanh: the diagonal 2 sqrt(d) of [-1, 1]^d; sigmoid: sqrt(d)); else the
    diameter sqrt(sum_k (max S_k - min S_k)^2) of the bounding box of S over every stored epoch,
    which bounds every pairwise distance. With ``noisy=True`` the range grows by
    sqrt(2) beta (sqrt(d) + 6) for the noise. Pairs beyond D_l are not binned; they are in
    ``pair_count`` and ``distance_mean``. A block built without the layer context (by hand, not
    by the engine) takes the bounding box of its own epoch instead of the stored epochs'.

    **Result.** The ``distance_bin`` coordinate is the distance *relative to D_l*, in [0, 1], so
    that every layer shares one coordinate when layers are merged; ``distance_scale`` holds D_l,
    and ``distance_bin * distance_scale`` is the distance itself.
    """

    name: ClassVar[str] = "distance-histogram"
    uses_gpu: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Histograms of within-class and between-class pairwise distances between samples' "
        "representations (Figs. 6, 8)."
    )
    version: ClassVar[str] = "1"
    needs_labels: ClassVar[bool] = True

    bins: int = field(default=100, metadata={"help": "number of equal-width distance bins"})
    metric: Metric = field(
        default="euclidean",
        metadata={"help": "euclidean, sqeuclidean, or cosine (1 - cosine similarity)"},
    )
    max_distance: float | None = field(
        default=None,
        metadata={"help": "upper edge of the distance range; default from the activation or data"},
    )
    max_samples: int | None = field(
        default=4096,
        metadata={"help": "use a seeded subset of this many samples (all pairs among them)"},
    )
    noisy: bool = field(
        default=False, metadata={"help": "distances between noisy T = S + Z instead of S"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the sample subset and the noise"})

    def __post_init__(self) -> None:
        if self.bins < 1:
            msg = f"{self.name}: bins must be >= 1, got {self.bins}"
            raise ParameterError(msg)
        if self.metric not in typing.get_args(Metric):
            msg = f"{self.name}: metric must be one of {typing.get_args(Metric)}, got {self.metric!r}"
            raise ParameterError(msg)
        if self.max_distance is not None and not (
            math.isfinite(self.max_distance) and self.max_distance > 0
        ):
            msg = f"{self.name}: max_distance must be a finite number > 0, got {self.max_distance}"
            raise ParameterError(msg)
        if self.max_samples is not None and self.max_samples < 2:
            msg = f"{self.name}: max_samples must be >= 2 (a pair), got {self.max_samples}"
            raise ParameterError(msg)

    def check_run(self, run: Run, layers: Sequence[str]) -> None:
        super().check_run(run, layers)
        if self.noisy and run.beta <= 0:
            msg = f"{self.name}: noisy=True needs a noisy run, and run {run.path} has beta = 0"
            raise EstimatorRequirementError(msg)

    def memory_bytes(self, run: Run, layer: str) -> int:
        """The block, the chunk of distances (8 MiB) and the (2, bins) counts and densities."""
        return super().memory_bytes(run, layer) + 2**23 + 4 * 8 * (self.bins + 1)

    def layer_context(self, run: Run, layer: str) -> dict[str, Any]:
        """The layer's distance range [0, D_l], shared by all epochs (see the class docstring)."""
        attrs = run.layer_attrs(layer)
        return self._distance_range(
            int(attrs["units"]),
            attrs.get("activation"),
            run.beta,
            lambda: _stored_box(run, layer),
            "bounding box of stored S",
        )

    def _distance_range(
        self,
        units: int,
        activation: str | None,
        beta: float,
        box: Callable[[], tuple[np.ndarray, np.ndarray]],
        box_source: str,
    ) -> dict[str, Any]:
        """{"max_distance": D_l, "range_from": where D_l comes from}; ``box`` is called last."""
        if self.max_distance is not None:
            return {"max_distance": float(self.max_distance), "range_from": "parameter"}
        if self.metric == "cosine":
            return {"max_distance": 2.0, "range_from": "cosine distances lie in [0, 2]"}
        if activation == "tanh":
            diameter, source = 2.0 * math.sqrt(units), "tanh range [-1, 1]^d"
        elif activation in ("sigmoid", "logistic"):
            diameter, source = math.sqrt(units), "sigmoid range [0, 1]^d"
        else:
            low, high = box()
            diameter = float(np.sqrt(np.sum((np.asarray(high, np.float64) - low) ** 2)))
            diameter = diameter if diameter > 0 else 1.0  # all samples equal: any range will do
            source = box_source
        if self.noisy:
            diameter += math.sqrt(2.0) * beta * (math.sqrt(units) + _NOISE_SLACK)
            source += " widened for noise"
        upper = diameter**2 if self.metric == "sqeuclidean" else diameter
        return {"max_distance": float(upper), "range_from": source}

    # -- split in row blocks of the pairs (i < j by the first row i), summed -------------------

    split_stages: ClassVar[int] = 1

    def cost_seconds(self, run: Run, layer: str) -> float | None:
        """n^2/2 pairs of d-dimensional rows at ~1 ns per pair and (d + 16) dimensions."""
        n = run.n_samples if self.max_samples is None else min(run.n_samples, self.max_samples)
        d = int(run.layer_attrs(layer)["units"])
        return n * n / 2 * (d + 16) * 1e-9

    def compute_part(self, block: Block, stage: int, part: int, parts: int, carry: Any) -> Any:
        points, labels, scale = self._points(block)
        return pairwise_distance_histogram(
            points, labels, bins=self.bins, max_distance=scale, metric=self.metric,
            device=block.device, rows=pair_rows(len(points), part, parts),
        )

    def combine_parts(self, stage: int, results: list[Any], carry: Any) -> Any:
        return DistanceHistogram(
            counts=sum(r.counts for r in results), n_pairs=sum(r.n_pairs for r in results),
            sums=sum(r.sums for r in results),
        )

    def _points(self, block: Block) -> tuple[np.ndarray, np.ndarray, float]:
        """The rows whose pairs are binned (the seeded subset, noisy with ``noisy``), their
        labels, and the layer's distance range D_l."""
        if block.y is None:
            msg = f"{self.name} needs class labels; layer {block.layer} has none"
            raise EstimatorRequirementError(msg)
        scale = float(self._context(block)["max_distance"])
        n = block.s.shape[0]
        rows = np.arange(n)
        if self.max_samples is not None and n > self.max_samples:
            # One subset for every layer and epoch, so that histograms differ only by training.
            subset = np.random.default_rng(self.seed).choice(n, self.max_samples, replace=False)
            rows = np.sort(subset)
        points = block.s[rows].astype(np.float64)
        if self.noisy:
            if block.beta <= 0:
                msg = f"{self.name}: noisy=True needs beta > 0, and layer {block.layer} has 0"
                raise EstimatorRequirementError(msg)
            points += block.beta * block.rng(self.seed).standard_normal(points.shape)
        return points, np.asarray(block.y)[rows], scale

    def _context(self, block: Block) -> Mapping[str, Any]:
        """The layer context, or for a block built by hand, the range of this epoch alone."""
        if "max_distance" in block.context:
            return block.context
        return self._distance_range(
            block.s.shape[1],
            block.layer_attrs.get("activation"),
            block.beta,
            lambda: (block.s.min(axis=0), block.s.max(axis=0)),
            f"bounding box of S at epoch {block.epoch} only (no layer context)",
        )

    def finish(self, block: Block, carry: Any) -> xr.Dataset:
        hist: DistanceHistogram = carry
        context = self._context(block)
        scale = float(context["max_distance"])
        relative_edges = np.linspace(0.0, 1.0, self.bins + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            density = hist.counts / (hist.n_pairs[:, None] * np.diff(relative_edges)[None, :])
        coords = {
            **_bin_coordinate(
                "distance_bin",
                relative_edges,
                f"{self.metric} distance relative to distance_scale",
                "1",
            ),
            "pair": xr.Variable(
                "pair", np.array(["within", "between"]), {"long_name": "pair of samples' classes"}
            ),
        }
        what = "noisy T" if self.noisy else "S"
        data = {
            "distance_count": (
                ("pair", "distance_bin"),
                hist.counts,
                {"long_name": f"pairs of samples per {self.metric} distance bin of {what}",
                 "units": "count"},
            ),
            "distance_density": (
                ("pair", "distance_bin"),
                np.where(hist.n_pairs[:, None] > 0, density, np.nan),
                {"long_name": "probability density of the relative pairwise distance",
                 "units": "1"},
            ),
            "distance_mean": (
                "pair",
                hist.means,
                {"long_name": f"mean {self.metric} distance between samples of {what}",
                 "units": "1"},
            ),
            "pair_count": (
                "pair",
                hist.n_pairs,
                {"long_name": "pairs of samples, in range or not", "units": "count",
                 "role": "diagnostic"},
            ),
            "distance_scale": (
                (),
                scale,
                {"long_name": f"upper edge of the {self.metric} distance range",
                 "units": "1", "comment": f"from {context['range_from']}", "role": "component"},
            ),
        }
        return xr.Dataset(data, coords=coords)


def _stored_box(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit minimum and maximum of S over every stored epoch and sample.

    The diameter of that box bounds every pairwise distance of every epoch:
    ||s_i - s_j||^2 = sum_k (s_ik - s_jk)^2 <= sum_k (max_k - min_k)^2. One pass over the layer's
    stored activations, a Dask reduction chunk by chunk.
    """
    s = run.activations(layer).data
    if s.shape[0] == 0:
        msg = f"run {run.path} has no recorded epoch to take the distance range of {layer!r} from"
        raise EstimatorRequirementError(msg)
    low, high = dask.compute(da.nanmin(s, axis=(0, 1)), da.nanmax(s, axis=(0, 1)))
    return np.asarray(low), np.asarray(high)


@dataclass(frozen=True, kw_only=True)
class UnitEntropySlopes(Estimator):
    """Per-unit binned entropy over training and its least-squares slope (Section 5.2).

    For each unit k of a layer and each bin size B, the plug-in entropy of the unit's binned
    values over the samples,

        H(Bin_B(S(k))) = -sum_b p_b ln p_b,   p_b = #{i : floor(s_ik / B) = b} / n,

    then, across the epochs of the layer, the least-squares slope of each unit's entropy against
    the **epoch number** e (not the position in the list of recorded epochs),

        slope_k = sum_e (e - mean e)(H_k(e) - mean H_k) / sum_e (e - mean e)^2   [nat/epoch],

    as the paper's "linear regression predicting H(Bin(T(k))) from the epoch index", whose slopes
    it reports in nats per epoch. Both readings agree when every epoch is recorded; with sparse or
    log-spaced snapshots only the epoch number keeps the slope in nat/epoch. The bin sizes form
    the dimension ``unit_bin_size``, apart from binned-entropy's ``bin_size``, so that both
    estimators' grids sit in one Dataset without padding each other. Per layer, the mean
    and the standard deviation (over the layer's units, ddof = 0: the units are the whole
    population, not a sample) of the slopes, and the fraction of units whose slope is negative,
    summarise whether the units compress.
    """

    name: ClassVar[str] = "unit-entropy-slopes"
    description: ClassVar[str] = (
        "Binned entropy of each unit per epoch and its least-squares slope over epochs "
        "(Section 5.2)."
    )
    # 2: the grid is the dimension ``unit_bin_size``, apart from binned-entropy's ``bin_size``
    version: ClassVar[str] = "2"
    needs_epochs: ClassVar[bool] = True

    bin_sizes: tuple[float, ...] = field(
        default=(1e-4, 1e-3, 1e-2, 1e-1),
        metadata={"help": "bin widths B of the per-unit grid floor(s / B)"},
    )

    def __post_init__(self) -> None:
        given = self.bin_sizes if isinstance(self.bin_sizes, list | tuple) else [self.bin_sizes]
        sizes = tuple(float(b) for b in given)
        if not sizes or not all(math.isfinite(b) and b > 0 for b in sizes):
            msg = f"{self.name}: bin_sizes must be a non-empty list of numbers > 0, got {sizes}"
            raise ParameterError(msg)
        if len(set(sizes)) != len(sizes):
            msg = f"{self.name}: bin_sizes repeats a value: {sizes}"
            raise ParameterError(msg)
        object.__setattr__(self, "bin_sizes", sizes)

    def compute(self, block: Block) -> xr.Dataset:
        entropies = np.stack(
            [entropy_of_codes(bin_indices(block.s, bin_size=b), axis=0) for b in self.bin_sizes]
        )
        coords = {
            "unit_bin_size": ("unit_bin_size", np.asarray(self.bin_sizes),
                              {"long_name": "bin size of the per-unit grid", "units": "1"}),
            "unit": ("unit", np.arange(block.s.shape[1]), {"long_name": "unit index"}),
        }
        attrs = {"long_name": "binned entropy H(Bin(T(k))) of each unit", "units": "nat"}
        return xr.Dataset(
            {"unit_entropy": (("unit_bin_size", "unit"), entropies, attrs)}, coords=coords
        )

    def finalize_layer(self, ds: xr.Dataset) -> xr.Dataset:
        """Add the per-unit slopes over epochs and their mean, std and negative fraction."""
        epochs = ds["epoch"].astype(np.float64)
        if epochs.size < 2:
            msg = f"{self.name} needs at least two epochs to fit a slope, got {epochs.size}"
            raise EstimatorRequirementError(msg)
        centred = epochs - epochs.mean()
        entropy = ds["unit_entropy"]
        slope = (centred * (entropy - entropy.mean("epoch"))).sum("epoch") / (centred**2).sum()
        slope = slope.where(entropy.notnull().all("epoch"))
        rate = "nat/epoch"
        return ds.assign(
            unit_entropy_slope=slope.assign_attrs(
                long_name="least-squares slope of a unit's binned entropy over epochs",
                units=rate,
                over_epochs=1,
            ),
            unit_entropy_slope_mean=slope.mean("unit").assign_attrs(
                long_name="mean over the layer's units of the entropy slope", units=rate,
                over_epochs=1,
            ),
            unit_entropy_slope_std=slope.std("unit").assign_attrs(
                long_name="standard deviation over the layer's units of the entropy slope",
                units=rate,
                over_epochs=1,
            ),
            unit_entropy_slope_negative=(slope < 0)
            .where(slope.notnull())
            .mean("unit")
            .assign_attrs(long_name="fraction of units whose entropy slope is negative",
                          units="1", over_epochs=1),
        )


@dataclass(frozen=True, kw_only=True)
class CosineSimilarity(Estimator):
    """Histogram of the cosine similarity between two runs' representations of each input (Fig. 3).

    For each input x_i, cos_i = <S_i, S'_i> / (||S_i|| ||S'_i||) between its representation S_i
    in this run and S'_i in the run at ``other`` (the same inputs in the same order, layers of the
    same names and widths), at the same epoch number. Similar networks give a histogram massed
    near 1; unrelated high-dimensional representations one centred near 0. Inputs whose
    representation is zero in either run have no angle and are left out of the histogram (so
    ``n - sum(cosine_count)`` counts them) and of the mean and standard deviation.
    """

    name: ClassVar[str] = "cosine-similarity"
    description: ClassVar[str] = (
        "Histogram of per-input cosine similarities between this run's representations and "
        "another run's (Fig. 3)."
    )
    version: ClassVar[str] = "1"

    other: str | None = field(
        default=None, metadata={"help": "path of the other run store (same inputs and layers)"}
    )
    bins: int = field(default=100, metadata={"help": "number of equal-width bins over [-1, 1]"})

    def __post_init__(self) -> None:
        if self.bins < 1:
            msg = f"{self.name}: bins must be >= 1, got {self.bins}"
            raise ParameterError(msg)

    def _other_run(self, run: Run) -> Run:
        if self.other is None:
            msg = f"{self.name} needs other=PATH, the run store to compare with"
            raise ParameterError(msg)
        other = open_run(self.other)
        if other.n_samples != run.n_samples or not np.array_equal(other.x, run.x):
            msg = (
                f"{self.name}: runs {run.path} and {other.path} were not recorded on the same "
                "inputs in the same order"
            )
            raise EstimatorRequirementError(msg)
        return other

    def memory_bytes(self, run: Run, layer: str) -> int:
        """Both runs' blocks and the histogram's counts and densities."""
        return 2 * super().memory_bytes(run, layer) + 3 * 8 * (self.bins + 1)

    def check_run(self, run: Run, layers: Sequence[str]) -> None:
        super().check_run(run, layers)
        other = self._other_run(run)
        for layer in layers:
            _matching_width(run, other, layer, self.name)

    def layer_context(self, run: Run, layer: str) -> dict[str, Any]:
        """The other run's resolved path and creation stamp (a recreated store is a new key)."""
        other = self._other_run(run)
        _matching_width(run, other, layer, self.name)
        local = other.location.local
        where = str(local.resolve()) if local is not None else other.location.url
        return {"other": where, "other_created": other.attrs.get("created")}

    def compute(self, block: Block) -> xr.Dataset:
        path = block.context.get("other", self.other)
        if path is None:
            msg = f"{self.name} needs other=PATH, the run store to compare with"
            raise ParameterError(msg)
        other = open_run(path)
        if block.epoch not in set(other.epochs.tolist()):
            msg = (
                f"{self.name}: epoch {block.epoch} is not recorded in {other.path} (its epochs: "
                f"{summarise_epochs(other.epochs)}); epochs are matched by number"
            )
            raise EstimatorRequirementError(msg)
        s_other = other.activations(block.layer).sel(epoch=block.epoch).values
        cosine = rowwise_cosine_similarity(block.s, s_other)
        defined = cosine[np.isfinite(cosine)]
        edges = np.linspace(-1.0, 1.0, self.bins + 1)
        counts, _ = np.histogram(defined, bins=edges)
        with np.errstate(invalid="ignore", divide="ignore"):
            density = counts / (defined.size * np.diff(edges))
        coords = _bin_coordinate("cosine_bin", edges, "cosine similarity", "1")
        return xr.Dataset(
            {
                "cosine_count": (
                    "cosine_bin",
                    counts,
                    {"long_name": "inputs per cosine-similarity bin", "units": "count"},
                ),
                "cosine_density": (
                    "cosine_bin",
                    density,
                    {"long_name": "probability density of the cosine similarity", "units": "1"},
                ),
                "cosine_mean": (
                    (),
                    float(defined.mean()) if defined.size else np.nan,
                    {"long_name": "mean cosine similarity over inputs", "units": "1"},
                ),
                "cosine_std": (
                    (),
                    float(defined.std()) if defined.size else np.nan,
                    {"long_name": "standard deviation of the cosine similarity", "units": "1"},
                ),
            },
            coords=coords,
        )


def _matching_width(run: Run, other: Run, layer: str, who: str) -> None:
    if layer not in other.layers:
        msg = f"{who}: layer {layer!r} is not in {other.path} (its layers: {other.layers})"
        raise EstimatorRequirementError(msg)
    mine, theirs = run.layer_attrs(layer)["units"], other.layer_attrs(layer)["units"]
    if mine != theirs:
        msg = f"{who}: layer {layer!r} has {mine} units in {run.path} but {theirs} in {other.path}"
        raise EstimatorRequirementError(msg)


@hookimpl
def ibframe_register_estimators(registry: EstimatorRegistry) -> None:
    """Register the clustering estimators."""
    registry.add(DistanceHistogramEstimator)
    registry.add(UnitEntropySlopes)
    registry.add(CosineSimilarity)
