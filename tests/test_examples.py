"""Every script in examples/ runs in its --quick mode, as a user runs it, and does what it says.

Each script runs as a subprocess. The paper scripts must write their figures and print at least
one comparison line per claim they check (``[compare] WHAT | paper: ... | ours: ...`` with both
sides filled in). They share one output directory, so the Fig. 6 script reuses the SZT runs the
Fig. 5 script trained, as the scripts' own --out reuse promises. With ``IBFRAME_TEST_DATA`` the
SZT scripts use the real SZT data, else the generated stand-in.

The plugin template is installed as a user would install it, from a copy, with pip (no
dependencies, no build isolation: setuptools comes with torch), into a temporary target
directory on PYTHONPATH, and its own tests run against that installation: its entry point is
real, so the test that ``ibframe estimators`` lists it means what it says. Installing into a fresh
virtual environment would also reinstall torch and take minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PAPER = EXAMPLES / "paper"
COMPARE = re.compile(r"^\[compare\] (?P<what>.+?) \| paper: (?P<paper>.+?) \| ours: (?P<ours>.+)$")

#: script -> (figures it writes, the least number of comparison lines), in the order they run.
PAPER_SCRIPTS = {
    "fig1_binned_szt.py": (["fig1_binned_szt"], 3),
    "fig4_neuron.py": (["fig4_neuron"], 6),
    "fig5_szt.py": (["fig5a_szt", "fig5b_szt", "fig5c_szt"], 10),
    "fig6_distances_szt.py": (["fig6a_distances_szt", "fig6b_distances_szt"], 6),
    "fig9_leaky_relu.py": (["fig9_leaky_relu"], 4),
    "fig10_szt_appendix.py": (
        [f"fig10{p}_{kind}" for p in "abc" for kind in ("szt", "histograms")], 12),
    "fig12_13_spiral.py": (["fig12a_spiral", "fig12b_spiral", "fig13_spiral_binned"], 7),
    "table1_fig3_mnist.py": (["fig3_cosine_mnist"], 11),
    "fig7_fig8_slopes_mnist.py": (
        ["fig7_binned_mnist", "sec52_unit_slopes_mnist", "fig8_distances_mnist"], 7),
}


def run_script(script: Path, out: Path, *extra: str) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    data = os.environ.get("IBFRAME_TEST_DATA")
    if data and (Path(data) / "var_u.mat").is_file():
        env["IBFRAME_SZT_DATA"] = data
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, env=env, cwd=out.parent, timeout=600, check=False,
    )
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"


@pytest.fixture(scope="module")
def paper_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("paper") / "out"


def test_every_paper_script_is_tested():
    scripts = {p.name for p in PAPER.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(PAPER_SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", list(PAPER_SCRIPTS))
def test_paper_script_draws_its_figures_and_compares(script: str, paper_out: Path):
    figures, least = PAPER_SCRIPTS[script]
    stdout = run_script(PAPER / script, paper_out)
    for name in figures:
        assert_png(paper_out / f"{name}.png")
    lines = [line for line in stdout.splitlines() if line.startswith("[compare]")]
    assert len(lines) >= least, f"{script} printed {len(lines)} comparison lines:\n{stdout}"
    for line in lines:
        match = COMPARE.match(line)
        assert match, f"malformed comparison line: {line}"
        assert match["paper"].strip() and match["ours"].strip(), line
    if script.startswith("fig4"):  # the one curve whose value is known exactly: w = 0 at epoch 0
        start = next(line for line in lines if "at epoch 0" in line)
        assert abs(float(COMPARE.match(start)["ours"].split()[0])) < 0.01


@pytest.mark.slow
def test_own_model_records_estimates_and_plots(tmp_path: Path):
    out = tmp_path / "own"
    stdout = run_script(EXAMPLES / "own_model.py", out)
    for name in ("mi-epochs", "info-plane", "scatter"):
        assert_png(out / f"{name}.png")
    assert (out / "my-net.zarr").is_dir()
    values = [float(v) for v in re.findall(r"I\(X;T\) of h\d: (\S+) nat", stdout)]
    assert len(values) == 3 and all(0 <= v <= 6.0 for v in values), stdout  # ln 256 = 5.55


@pytest.mark.slow
def test_analysis_queries_several_runs(tmp_path: Path):
    import pandas as pd

    out = tmp_path / "analysis"
    stdout = run_script(EXAMPLES / "analysis.py", out)
    assert "epoch of maximum I(X;T)" in stdout
    assert_png(out / "beta_sweep.png")
    frame = pd.read_csv(out / "mi.csv")
    assert {"run", "epoch", "layer", "mi_x_t", "seed", "beta"} <= set(frame.columns)
    assert sorted(frame["beta"].unique()) == [0.05, 0.1]
    assert frame.groupby("beta")["seed"].nunique().tolist() == [2, 2]


@pytest.mark.slow
def test_plugin_template_installs_and_passes_its_own_tests(tmp_path: Path):
    source = tmp_path / "ibframe-saturation"
    shutil.copytree(EXAMPLES / "plugin_template", source,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True,
    )
    assert list(site.glob("ibframe_saturation-*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=source, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b9 passed\b", done.stdout), done.stdout[-2000:]
