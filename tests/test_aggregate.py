"""ibframe.aggregate: mean and sd (or quantiles) over runs, against numpy; figures and summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection

import ibframe
from ibframe.cli import print_summary
from ibframe.errors import ParameterError
from ibframe.plot import plot_mi_epochs, plot_results
from ibframe.testing import make_test_run


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    """sp-mi and binned entropy of four small runs: seeds 0-2 at beta 0.1, seed 3 at 0.2."""
    root: Path = tmp_path_factory.mktemp("runs")
    paths = []
    for seed, beta in ((0, 0.1), (1, 0.1), (2, 0.1), (3, 0.2)):
        make_test_run(root / f"s{seed}.zarr", seed=seed, beta=beta, epochs=3).close()
        paths.append(root / f"s{seed}.zarr")
    with pytest.warns(ibframe.errors.QualityWarning):
        return ibframe.estimate(paths, ["sp-mi", "binned-entropy"])


def test_mean_and_sd_match_numpy(several):
    agg = ibframe.aggregate(several, over="run")
    values = several["mi_x_t"].values  # (run, epoch, layer)
    np.testing.assert_allclose(agg["mi_x_t"].values, values.mean(axis=0))
    np.testing.assert_allclose(agg["mi_x_t_sd"].values, values.std(axis=0, ddof=1))
    entropy = several["entropy_bin"].values
    np.testing.assert_allclose(agg["entropy_bin_sd"].values, entropy.std(axis=0, ddof=1))
    assert agg["mi_x_t"].dims == ("epoch", "layer")
    assert agg["mi_x_t_sd"].attrs["units"] == "nat"
    assert agg["mi_x_t_sd"].attrs["role"] == "spread"
    assert "run" not in agg.dims and "seed" not in agg.coords
    assert agg.attrs["aggregate"] == "mean ± sd over 4 runs"
    # the metrics come along: a test error over seeds is one line
    np.testing.assert_allclose(agg["loss_test_sd"].values,
                               several["loss_test"].values.std(axis=0, ddof=1))


def test_standard_errors_biases_and_flags(several):
    agg = ibframe.aggregate(several)
    se = several["mi_x_t_stderr"].values
    np.testing.assert_allclose(agg["mi_x_t_stderr"].values,
                               np.sqrt((se**2).sum(axis=0)) / se.shape[0])
    np.testing.assert_allclose(agg["mi_x_t_bias"].values,
                               several["mi_x_t_bias"].values.mean(axis=0))
    assert "mi_x_t_bias_sd" not in agg and "n_samples_sd" not in agg
    np.testing.assert_array_equal(agg["converged"].values,
                                  several["converged"].values.all(axis=0))
    np.testing.assert_array_equal(agg["saturated"].values,
                                  several["saturated"].values.any(axis=0))


def test_quantile_bands_match_numpy(several):
    agg = ibframe.aggregate(several, kind="quantile", quantiles=(0.25, 0.75))
    values = several["mi_x_t"].values
    np.testing.assert_allclose(agg["mi_x_t"].values, np.median(values, axis=0))
    np.testing.assert_allclose(agg["mi_x_t_low"].values, np.quantile(values, 0.25, axis=0))
    np.testing.assert_allclose(agg["mi_x_t_high"].values, np.quantile(values, 0.75, axis=0))
    assert "mi_x_t_stderr" not in agg  # a median has no simple Monte Carlo error


def test_aggregate_by_beta_groups_the_runs(several):
    agg = ibframe.aggregate(several, by="beta")
    assert agg["mi_x_t"].dims[0] == "beta"
    assert agg["beta"].values.tolist() == [0.1, 0.2]
    values = several["mi_x_t"].values
    np.testing.assert_allclose(agg["mi_x_t"].sel(beta=0.1).values, values[:3].mean(axis=0))
    np.testing.assert_allclose(agg["mi_x_t_sd"].sel(beta=0.1).values,
                               values[:3].std(axis=0, ddof=1))
    np.testing.assert_allclose(agg["mi_x_t"].sel(beta=0.2).values, values[3])
    assert np.isnan(agg["mi_x_t_sd"].sel(beta=0.2).values).all()  # one run: no sd


def test_aggregate_refuses_what_it_cannot_do(several):
    with pytest.raises(ParameterError, match="cannot aggregate over 'seed'"):
        ibframe.aggregate(several, over="seed")
    with pytest.raises(ParameterError, match="kind must be"):
        ibframe.aggregate(several, kind="range")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="quantiles"):
        ibframe.aggregate(several, kind="quantile", quantiles=(0.9, 0.1))
    with pytest.raises(ParameterError, match="cannot group by 'epoch'"):
        ibframe.aggregate(several, by="epoch")


def test_results_file_keeps_the_run_coordinates(several, tmp_path):
    path = ibframe.save_results(several, tmp_path / "r.nc")
    back = ibframe.load_results(path)
    assert back.sel(beta=0.1).sizes["run"] == 3
    np.testing.assert_array_equal(back["mi_x_t"].values, several["mi_x_t"].values)


def test_mi_epochs_draws_the_mean_with_a_band_of_one_sd_per_setting(several):
    """Seeds 0-2 (beta 0.1) are one setting, drawn as their mean and sd; seed 3 (beta 0.2) another."""
    fig = plot_mi_epochs(several)
    ax = fig.axes[0]
    seeds = ibframe.aggregate(several.sel(beta=0.1))
    layer = "h2"
    index = [str(v) for v in several["layer"].values].index(layer)
    line = ax.get_lines()[index]
    np.testing.assert_allclose(line.get_ydata(), seeds["mi_x_t"].sel(layer=layer).values)
    assert line.get_label() == "h2, beta = 0.1"
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = bands[2 * index].get_paths()[0].vertices[:, 1]  # each layer: the sd band, then stderr's
    mean, sd = seeds["mi_x_t"].sel(layer=layer).values, seeds["mi_x_t_sd"].sel(layer=layer).values
    assert ys.max() == pytest.approx((mean + sd).max())
    assert ys.min() == pytest.approx((mean - sd).min())
    alone = next(line for line in ax.get_lines() if line.get_label() == "h2, beta = 0.2")
    np.testing.assert_allclose(alone.get_ydata(), several["mi_x_t"].sel(beta=0.2, layer=layer)
                               .squeeze().values)
    assert alone.get_linestyle() == "--"  # beta 0.2: one run, its own line style
    assert "mean ± sd over 3 runs" in ax.get_legend().get_title().get_text()


def test_plot_results_draws_every_kind_of_several_runs(several, tmp_path):
    paths = plot_results(several, kinds=["mi-epochs", "info-plane", "binned-entropy"],
                         out_dir=tmp_path)
    assert [p.name for p in paths] == ["mi-epochs.png", "info-plane.png", "binned-entropy.png"]


def test_summary_shows_mean_and_sd_across_runs(several, capsys):
    print_summary(several)
    out = capsys.readouterr().out
    agg = ibframe.aggregate(several)
    mean = float(agg["mi_x_t"].sel(layer="h1").isel(epoch=-1))
    sd = float(agg["mi_x_t_sd"].sel(layer="h1").isel(epoch=-1))
    assert f"{mean:.4g} ± {sd:.2g}" in out
    assert "mean ± sd over 4 runs" in out


def test_mi_epochs_of_runs_grouped_by_beta_draws_one_line_per_beta(several):
    """aggregate(by="beta") keeps its groups apart in the figure, labelled by beta."""
    agg = ibframe.aggregate(several, by="beta")
    assert agg.attrs["grouped_by"] == "beta"
    assert agg.attrs["aggregate"] == "mean ± sd over 1-3 runs per beta"
    ax = plot_mi_epochs(agg, layers=["h2"]).axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith("beta")]
    assert [line.get_label() for line in lines] == ["beta = 0.1", "beta = 0.2"]
    for line, beta in zip(lines, (0.1, 0.2), strict=True):
        np.testing.assert_allclose(line.get_ydata(), agg["mi_x_t"].sel(beta=beta, layer="h2").values)
    assert "per beta" in ax.get_legend().get_title().get_text()
