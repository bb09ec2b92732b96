"""The figure API: every kind renders from a small real run; missing results give clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread

from ibframe.engine import estimate
from ibframe.errors import ParameterError, QualityWarning, ResultConventionError
from ibframe.plot import (
    PLOT_KINDS,
    PlotWarning,
    plot_activation_scatter,
    plot_binned_entropy,
    plot_distance_histograms,
    plot_mi_epochs,
    plot_results,
)
from ibframe.results import save_results
from ibframe.testing import make_test_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every estimator a figure reads, on a small noisy tanh run (last layer: 2 units)."""
    where = tmp_path_factory.mktemp("plot")
    run = make_test_run(where / "run.zarr", n=64, epochs=4)
    twin = make_test_run(where / "twin.zarr", n=64, epochs=4, beta=0.05)
    with warnings.catch_warnings():  # 4 draws of 64 inputs do not converge; fine for figures
        warnings.simplefilter("ignore", QualityWarning)
        return estimate(
            run,
            {
                "sp-mi": {"n_points": 512},
                "binned-entropy": {"bin_size": [0.1, 0.5]},
                "distance-histogram": {"bins": 20},
                "unit-entropy-slopes": {"bin_sizes": [0.01, 0.1]},
                "cosine-similarity": {"other": str(twin.path), "bins": 20},
            },
            device="cpu",
            cache=False,
        )


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    image = imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_every_kind_renders_png_and_svg(results, tmp_path):
    """Every kind but density-epochs, which needs a 1-unit layer (the neuron's, below)."""
    with pytest.warns(PlotWarning, match="'density-epochs' skipped: needs a layer of 1 unit"):
        paths = plot_results(results, None, tmp_path / "figures", formats=("png", "svg"))
    assert paths == [
        tmp_path / "figures" / f"{kind}.{fmt}"
        for kind in PLOT_KINDS if kind != "density-epochs" for fmt in ("png", "svg")
    ]
    for path in paths[::2]:
        _assert_png(path)
    svg = (tmp_path / "figures" / "info-plane.svg").read_text()
    assert "<svg" in svg and "epoch" in svg


def test_from_a_results_file(results, tmp_path):
    path = save_results(results, tmp_path / "results.nc")
    written = plot_results(path, ["distance-histograms", "scatter"], tmp_path)
    for png in written:
        _assert_png(png)


@pytest.mark.parametrize("layer", ["T3", "h3"])
def test_renamed_layers_select_in_figures_from_the_results_and_from_the_run(results, tmp_path, layer):
    """With layer_names, a layer may be named either way; scatter reads the run store, whose
    names did not change, and mi-epochs the renamed results."""
    written = plot_results(results, ["scatter", "mi-epochs"], tmp_path, layers=[layer],
                           layer_names="T")
    assert [p.name for p in written] == ["scatter.png", "mi-epochs.png"]


def test_missing_variable_names_it(results, tmp_path):
    with pytest.raises(ResultConventionError, match=r"'mi_x_t'.*sp-mi"):
        plot_results(results.drop_vars("mi_x_t"), ["mi-epochs"], tmp_path)
    with pytest.raises(ResultConventionError, match="'distance_density'"):
        plot_results(results.drop_vars("distance_density"), ["distance-histograms"], tmp_path)
    with pytest.raises(ResultConventionError, match="'mi_t_y'"):
        plot_results(results.drop_vars("mi_t_y"), ["info-plane"], tmp_path)
    with pytest.raises(ResultConventionError, match="without 'epoch'"):
        plot_mi_epochs(results.isel(epoch=0))


def test_kinds_default_skips_what_is_missing_but_not_everything(results, tmp_path):
    only_slopes = results[["unit_entropy_slope"]].assign_attrs(source="")  # no run: no scatter
    with pytest.warns(PlotWarning) as caught:
        paths = plot_results(only_slopes, None, tmp_path)
    assert [p.name for p in paths] == ["unit-slopes.png"]
    skipped = [str(w.message) for w in caught]
    assert len(skipped) == len(PLOT_KINDS) - 1  # one line for each kind not drawn
    assert skipped[0].startswith("plot 'mi-epochs' skipped: needs variable 'mi_x_t'")
    assert all("\n" not in line for line in skipped)
    with pytest.raises(ResultConventionError, match="nothing to plot"), warnings.catch_warnings():
        warnings.simplefilter("ignore", PlotWarning)
        plot_results(results[["loss_train"]].assign_attrs(source=""), None, tmp_path)


def test_bad_requests_are_refused(results, tmp_path):
    with pytest.raises(ParameterError, match="unknown plot kind 'fig9'"):
        plot_results(results, ["fig9"], tmp_path)
    with pytest.raises(ParameterError, match="formats"):
        plot_results(results, ["mi-epochs"], tmp_path, formats=("bmp",))
    with pytest.raises(ParameterError, match="epoch 7"):
        plot_distance_histograms(results, epochs=[7])
    with pytest.raises(ParameterError, match="no layer 'h9'"):
        plot_distance_histograms(results, layers=["h9"])


def test_scatter_needs_the_run_and_a_small_layer(results):
    with pytest.raises(ResultConventionError, match="needs the run store"):
        plot_activation_scatter(results.assign_attrs(source=""))
    with pytest.raises(ParameterError, match="2 or 3 units"):
        plot_activation_scatter(results, layers=["h1"])
    fig = plot_activation_scatter(results, epochs=[0, 3])
    assert [ax.get_title() for ax in fig.axes] == ["h3, epoch 0", "h3, epoch 3"]


def test_mi_epochs_shows_errors_biases_and_what_did_not_converge(results):
    from matplotlib.collections import PolyCollection

    from ibframe.plot import plot_mi_epochs

    flags = results["converged"].copy(data=np.ones(results["converged"].shape, dtype=bool))
    flags[1, 2] = False  # epoch 1 of layer h3 did not converge
    fig = plot_mi_epochs(results.assign(converged=flags))
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == results.sizes["layer"]
    mi, se, bias = (results[n].sel(layer="h2") for n in ("mi_x_t", "mi_x_t_stderr", "mi_x_t_bias"))
    low = np.minimum(mi, mi - bias) - 2 * se
    high = np.maximum(mi, mi - bias) + 2 * se
    band = bands[1].get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([band.min(), band.max()], [low.min(), high.max()], rtol=1e-12)
    open_markers = [line for line in ax.lines
                    if line.get_marker() == "o" and line.get_markerfacecolor() == "none"
                    and len(line.get_xdata())]
    assert len(open_markers) == 1
    assert open_markers[0].get_xdata().tolist() == [int(results["epoch"][1])]
    assert open_markers[0].get_ydata().tolist() == [float(results["mi_x_t"][1, 2])]
    assert "not converged" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_hand_built_results_follow_the_conventions():
    """Results built without the engine: long trainings get a log epoch axis."""
    epochs = np.array([0, 1, 10, 100, 1000])
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "mi_x_t": (("epoch", "layer"), rng.random((5, 2)), {"units": "nat"}),
            "entropy_bin": (
                ("epoch", "layer", "bin_size"),
                rng.random((5, 2, 3)),
                {"units": "nat"},
            ),
            "loss_train": ("epoch", rng.random(5)),
        },
        coords={"epoch": epochs, "layer": ["a", "b"], "bin_size": [0.01, 0.1, 1.0]},
    )
    fig = plot_mi_epochs(ds)
    assert [ax.get_xscale() for ax in fig.axes] == ["symlog", "symlog"]
    assert fig.axes[0].get_ylabel() == "I(X;T_l) (nat)"
    assert len(plot_binned_entropy(ds).axes) == 3
    assert len(plot_mi_epochs(ds[["mi_x_t"]]).axes) == 1  # no losses: no loss panel


def test_epoch_ranges_pick_the_recorded_epochs(results, tmp_path):
    fig = plot_distance_histograms(results, layers=["h3"], epochs=[slice(2, None)])
    assert [ax.get_title() for ax in fig.axes] == ["h3, epoch 2", "h3, epoch 3"]
    with pytest.raises(ParameterError, match="no epoch selected"):
        plot_distance_histograms(results, epochs=slice(7, None))
    paths = plot_results(results, ["distance-histograms"], tmp_path, epochs=[slice(None, 2), 3])
    _assert_png(paths[0])


def test_binned_entropy_shares_its_y_axis_under_the_ln_n_ceiling(results):
    fig = plot_binned_entropy(results)  # the run of 64 inputs, found through `source`
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2  # bin sizes 0.1 and 0.5
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[1])
    assert panels[0].get_ylim() == panels[1].get_ylim()
    for ax in panels:
        ceilings = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert len(ceilings) == 1
        assert ceilings[0].get_ydata()[0] == pytest.approx(np.log(64))
        top = max(np.nanmax(line.get_ydata()) for line in ax.lines if line not in ceilings)
        assert top <= np.log(64) + 1e-9  # no binned entropy of 64 inputs exceeds ln 64
    assert "H(X) = ln 64" in [t.get_text() for t in panels[0].get_legend().get_texts()]
    fig = plot_binned_entropy(results.assign_attrs(source=""), n_inputs=10)
    assert fig.axes[0].lines[-1].get_ydata()[0] == pytest.approx(np.log(10))


def test_mi_epochs_of_several_runs_draws_the_estimator_stderr_inside_the_run_spread(tmp_path):
    from matplotlib.collections import PolyCollection

    from ibframe.runs import aggregate

    runs = [make_test_run(tmp_path / f"s{seed}.zarr", n=32, epochs=3, seed=seed) for seed in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QualityWarning)
        several = estimate(runs, {"sp-mi": {"n_points": 256}}, device="cpu", cache=False)
    fig = plot_mi_epochs(several, layer_names="T")
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2 * several.sizes["layer"] + 1  # spread and stderr per layer, legend
    mean = aggregate(several, over="run")
    mi, se = mean["mi_x_t"].sel(layer="h2").values, mean["mi_x_t_stderr"].sel(layer="h2").values
    inner = bands[3].get_paths()[0].vertices[:, 1]  # layer h2's stderr band
    np.testing.assert_allclose([inner.min(), inner.max()],
                               [(mi - 2 * se).min(), (mi + 2 * se).max()], rtol=1e-12)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["T1", "T2", "T3"] and "± 2 stderr (estimator)" in labels
    with pytest.raises(ParameterError, match="3 distinct names"):
        plot_mi_epochs(several, layer_names=["a", "b"])


def _inside_figure(fig):
    """Every panel with its ticks and labels, the legends and the title lie on the canvas."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    canvas = fig.bbox
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    boxes += [legend.get_window_extent(renderer) for legend in fig.legends]
    boxes.append(fig._suptitle.get_window_extent(renderer))
    for box in boxes:
        assert (box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1
                and box.x1 <= canvas.x1 + 1 and box.y1 <= canvas.y1 + 1), (box, canvas)


@pytest.mark.parametrize("widths", [(6, 4, 2), (6, 3)])
def test_scatter_holds_its_axes_fixed_names_the_classes_and_clips_nothing(tmp_path, widths):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ibframe.store import open_run

    run = make_test_run(tmp_path / "run.zarr", n=64, epochs=4, widths=widths)
    layer = f"h{len(widths)}"
    fig = plot_activation_scatter(run=run, layers=[layer], epochs=[slice(1, None)])
    FigureCanvasAgg(fig)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [f"{layer}, epoch {e}" for e in (1, 2, 3)]
    s = open_run(tmp_path / "run.zarr").activations(layer).sel(epoch=[1, 2, 3]).values
    getters = ["get_xlim", "get_ylim", "get_zlim"][: widths[-1]]
    for unit, getter in enumerate(getters):
        limits = {getattr(ax, getter)() for ax in axes}
        assert len(limits) == 1  # one scale for every epoch
        low, high = limits.pop()
        assert low <= s[..., unit].min() and s[..., unit].max() <= high
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["class 0", "class 1"]
    _inside_figure(fig)


# -- the figure kinds of the paper's reproduction -------------------------------------------------


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    """One noisy tanh neuron (beta 0.01, 4 inputs), trained 30 epochs as `ibframe train` does."""
    from ibframe.recording.experiments import train

    path = tmp_path_factory.mktemp("neuron") / "n.zarr"
    train("neuron", out=path, epochs=30, record="all")
    return path


def test_density_epochs_draws_the_gaussian_mixture_of_the_recorded_s(neuron):
    from scipy.stats import norm

    from ibframe.plot import plot_density_epochs
    from ibframe.store import open_run

    run = open_run(neuron)
    fig = plot_density_epochs(run=neuron, epochs=[0, 9, 30])
    ax_at, ax_over = fig.axes[:2]
    s = np.asarray(run.activations("h1").values)[..., 0]  # (epoch, sample)
    beta = run.beta
    assert beta == pytest.approx(0.01)
    mesh = ax_over.collections[0]
    image = np.asarray(mesh.get_array()).reshape(-1, s.shape[0])  # (t, epoch)
    grid = ax_at.lines[0].get_xdata()
    assert grid[0] == pytest.approx(s.min() - 4 * beta) and grid[-1] == pytest.approx(s.max() + 4 * beta)
    for k in (0, 9, 30):  # against scipy's normal density, and each integrates to one
        expected = norm.pdf(grid[:, None], loc=s[k][None, :], scale=beta).mean(axis=1)
        np.testing.assert_allclose(image[:, k], expected, rtol=1e-10, atol=1e-300)
        assert np.trapezoid(image[:, k], grid) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(ax_at.lines[1].get_ydata(), image[:, 9])
    assert [t.get_text() for t in ax_at.get_legend().get_texts()] == ["epoch 0", "epoch 9", "epoch 30"]
    assert ax_over.get_xscale() == "symlog"  # 0 to 30 epochs: a log axis that keeps epoch 0
    assert ax_over.get_ylabel() == "t" and ax_at.get_xlabel() == "t"


def test_density_epochs_takes_only_noisy_one_unit_layers(results, neuron, tmp_path):
    from ibframe.plot import plot_density_epochs

    with pytest.raises(ResultConventionError, match="needs a layer of 1 unit"):
        plot_density_epochs(results)  # the test run's layers have 6, 4 and 2 units
    with pytest.raises(ParameterError, match="'h3' has 2"):
        plot_density_epochs(results, layers=["h3"])
    with pytest.raises(ResultConventionError, match="needs the run store"):
        plot_density_epochs(results.assign_attrs(source=""))
    paths = plot_results(xr.Dataset(attrs={"source": str(neuron)}), ["density-epochs"], tmp_path)
    _assert_png(paths[0])


def test_activation_histograms_count_what_numpy_counts(results):
    from ibframe.plot import plot_activation_histograms
    from ibframe.store import open_run

    fig = plot_activation_histograms(results, epochs=[0, 3], bins=10)
    run = open_run(results.attrs["source"])
    assert [ax.get_title() for ax in fig.axes] == [
        f"{layer}, epoch {epoch}" for epoch in (0, 3) for layer in ("h1", "h2", "h3")
    ]
    edges = np.linspace(-1, 1, 11)  # tanh layers: [-1, 1]
    for ax in fig.axes:
        layer, epoch = ax.get_title().split(", epoch ")
        s = run.activations(layer).sel(epoch=int(epoch)).values.ravel()
        counts, _ = np.histogram(s, edges)
        assert [p.get_height() for p in ax.patches] == counts.tolist()
        assert sum(p.get_height() for p in ax.patches) == s.size  # every unit of every input
        assert ax.get_xlim() == (-1.0, 1.0)
    wide = plot_activation_histograms(results, layers=["h3"], epochs=[3], bins=4,
                                      value_range=(0.0, 0.5))
    s = run.activations("h3").sel(epoch=3).values.ravel()
    clipped, _ = np.histogram(np.clip(s, 0, 0.5), np.linspace(0, 0.5, 5))
    assert [p.get_height() for p in wide.axes[0].patches] == clipped.tolist()  # ends pile up
    with pytest.raises(ParameterError, match="value_range"):
        plot_activation_histograms(results, value_range=(1.0, 0.0))


def test_input_distances_match_scipy(results):
    from scipy.spatial.distance import pdist

    from ibframe.plot import plot_input_distances
    from ibframe.store import open_run

    # 13 bins: the inputs are 8-bit words, distances sqrt(h); with 12 bins over [0, sqrt(8)]
    # sqrt(2) lies on an edge, where an ulp of the Gram identity's (or a vectorised sqrt's)
    # rounding decides the bin. No interior edge of 13 bins is a sqrt(h).
    fig = plot_input_distances(results, bins=13)
    ax = fig.axes[0]
    run = open_run(results.attrs["source"])
    distances = pdist(np.asarray(run.x, np.float64))
    same = pdist(np.asarray(run.y)[:, None].astype(float)) == 0
    steps = ax.patches  # within (filled, edge), between (filled, edge)
    edges = steps[0].get_data().edges
    assert edges[-1] == pytest.approx(distances.max(), rel=2e-3)  # [0, largest distance]
    assert edges[-1] >= distances.max()
    for patch, chosen in ((steps[1], same), (steps[3], ~same)):
        expected, _ = np.histogram(distances[chosen], edges, density=True)
        np.testing.assert_allclose(patch.get_data().values, expected, rtol=1e-9)
    assert ax.get_xlim() == (0.0, edges[-1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["within-class", "between-class"]


def test_mi_epochs_arrows_and_the_binned_entropy_at_ten_beta(results):
    fig = plot_mi_epochs(results, arrows=[1, 3])
    ax_mi, _, ax_bin = fig.axes
    arrows = [t for t in ax_mi.texts if t.arrow_patch is not None]
    assert [a.get_text() for a in arrows] == ["1", "3"]
    mi = results["mi_x_t"].sel(layer="h3")  # the last layer drawn
    assert [a.xy for a in arrows] == [(1, pytest.approx(float(mi.sel(epoch=1)))),
                                      (3, pytest.approx(float(mi.sel(epoch=3))))]
    assert arrows[0].xyann != arrows[1].xyann  # neighbouring labels at two heights
    # beta = 0.1: 10 beta = 1, and the bin sizes are 0.1 and 0.5: the nearest is 0.5
    assert "B = 0.5" in ax_bin.get_title()
    for line, layer in zip(ax_bin.lines, ("h1", "h2", "h3"), strict=True):
        np.testing.assert_allclose(
            line.get_ydata(), results["entropy_bin"].sel(layer=layer, bin_size=0.5).values)
    assert ax_bin.get_ylabel() == "H(Bin(T_l)) (nat)"
    with pytest.raises(ParameterError, match="has no epoch 7"):
        plot_mi_epochs(results, arrows=[7])
    assert len(plot_mi_epochs(results.drop_vars("entropy_bin")).axes) == 2  # no bottom panel


def test_mi_epochs_overlays_a_beta_sweep_one_line_per_beta(tmp_path):
    runs = [make_test_run(tmp_path / f"b{beta}.zarr", n=32, epochs=3, beta=beta, seed=1)
            for beta in (0.05, 0.2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QualityWarning)
        sweep = estimate(runs, {"sp-mi": {"n_points": 256},
                                "binned-entropy": {"bin_size": [0.5, 2.0]}},
                         device="cpu", cache=False)
    fig = plot_mi_epochs(sweep, layers=["h2"])
    ax_mi, _, ax_bin = fig.axes
    lines = [line for line in ax_mi.lines if line.get_label().startswith("beta")]
    assert [line.get_label() for line in lines] == ["beta = 0.05", "beta = 0.2"]
    assert lines[0].get_color() != lines[1].get_color()  # one layer: a colour per setting
    for line, beta in zip(lines, (0.05, 0.2), strict=True):
        np.testing.assert_allclose(line.get_ydata(),
                                   sweep["mi_x_t"].sel(beta=beta, layer="h2").squeeze().values)
    assert ax_mi.get_legend().get_title().get_text() == "setting"
    # each beta's own B = 10 beta: 0.5 for 0.05, 2.0 for 0.2
    for line, (beta, size) in zip(ax_bin.lines, ((0.05, 0.5), (0.2, 2.0)), strict=True):
        np.testing.assert_allclose(
            line.get_ydata(),
            sweep["entropy_bin"].sel(beta=beta, layer="h2", bin_size=size).squeeze().values)
    assert "B = 0.5, 2" in ax_bin.get_title()
    paths = plot_results(sweep, ["mi-epochs", "info-plane"], tmp_path / "fig")
    assert [p.name for p in paths] == ["mi-epochs.png", "info-plane.png"]


def test_figures_draw_into_subfigures_of_one_figure(results, neuron):
    from matplotlib.figure import Figure

    from ibframe.plot import plot_density_epochs

    fig = Figure(figsize=(12, 8), layout="constrained")
    left, right = fig.subfigures(1, 2)
    assert plot_mi_epochs(results, arrows=[2], into=left) is fig
    assert plot_activation_scatter(results, epochs=[2], into=right) is fig
    assert len(left.axes) == 3 and [ax.get_title() for ax in right.axes] == ["h3, epoch 2"]
    other = Figure()
    assert plot_density_epochs(run=neuron, into=other.subfigures(1, 1)) is other
