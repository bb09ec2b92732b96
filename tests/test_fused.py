"""The fused CPU loop (ibframe/kernels/_fused.py) against float64 references, and the torch path
it replaces: same sums, same log densities, and a clean fallback without Numba."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ibframe.kernels import _fused as fused
from ibframe.kernels._engine import Problem, _Dense, log_sums
from ibframe.kernels.mixture import draw_points, gaussian_mixture_entropy, mixture_log_density

pytestmark = pytest.mark.skipif(not fused.enabled(), reason="needs numba (the fast extra)")


def reference_sums(exponents: torch.Tensor) -> torch.Tensor:
    """Row sums of 2**exponents in float64 (exponents already float64)."""
    return torch.exp2(exponents).sum(-1)


def test_inner_product_form_matches_float64() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(300, 7, generator=g, dtype=torch.float64) * 3
    c = torch.randn(7, 1000, generator=g, dtype=torch.float64)
    out = torch.zeros(300, dtype=torch.float64)
    fused.exp2_row_sums(p.float().contiguous(), c.float().contiguous(), 100, 900, out)
    ref = reference_sums((p @ c)[:, 100:900])
    # float32 operands: the exponents carry float32 rounding (|e| up to ~60 here)
    assert torch.allclose(out, ref, rtol=2e-5, atol=0)


def test_skipped_column_is_left_out() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.randn(64, 5, generator=g, dtype=torch.float64)
    c = torch.randn(5, 700, generator=g, dtype=torch.float64)
    skip = torch.randint(-1, 700, (64,), generator=g)
    out = torch.zeros(64, dtype=torch.float64)
    fused.exp2_row_sums(p.float().contiguous(), c.float().contiguous(), 0, 700, out, skip)
    exponents = p @ c
    rows = torch.nonzero(skip >= 0).squeeze(1)
    exponents[rows, skip[rows]] = -math.inf
    assert torch.allclose(out, reference_sums(exponents), rtol=1e-5, atol=0)


def test_overflowing_rows_are_inf_and_far_terms_vanish() -> None:
    p = torch.tensor([[1.0], [1.0]], dtype=torch.float32)
    c = torch.tensor([[130.0, 0.0, -500.0, -5000.0]], dtype=torch.float32)
    out = torch.zeros(2, dtype=torch.float64)
    fused.exp2_row_sums(p[:1], c, 0, 4, out[:1])
    fused.exp2_row_sums(p[1:], c, 1, 4, out[1:])
    assert math.isinf(out[0])  # 2**130 overflows float32: the caller redoes such rows
    assert out[1] == pytest.approx(1.0, rel=1e-7)  # 2**0 plus terms below 2**-126


def test_difference_form_is_exact_where_the_inner_product_cancels() -> None:
    """Centres near +-1 (saturated tanh), beta = 1e-3: the inner-product form would lose the
    exponent to cancellation in float32; the difference form keeps float32's relative error."""
    rng = np.random.default_rng(2)
    d, beta = 5, 1e-3
    centres = np.sign(rng.normal(size=(600, d))) * (1 - 1e-4) + 2 * beta * rng.normal(size=(600, d))
    points = centres[:200] + beta * rng.normal(size=(200, d))
    sigma = 0.5 / beta**2 / math.log(2.0)
    a = torch.from_numpy(rng.uniform(0, 5, 200))
    b = torch.from_numpy(-rng.uniform(0, 3, 600))
    out = torch.zeros(200, dtype=torch.float64)
    fused.exp2_row_sums_diff(torch.from_numpy(points), a.float(),
                             torch.from_numpy(np.ascontiguousarray(centres.T)), b.float(),
                             sigma, 0, 600, out)
    dist = ((torch.from_numpy(points)[:, None] - torch.from_numpy(centres)[None]) ** 2).sum(-1)
    exponents = a.float().double()[:, None] + b.float().double()[None] - sigma * dist
    ref = reference_sums(exponents.clamp(min=-126.0))
    assert torch.allclose(out, ref, rtol=2e-5, atol=0)


def _problem(centres: np.ndarray, beta: float, n_points: int, groups: int) -> Problem:
    rng = np.random.default_rng(3)
    mu = torch.from_numpy(centres)[None]
    n = centres.shape[0]
    atoms = torch.from_numpy(rng.integers(0, groups, n)).sort().values
    return Problem(
        centers=mu, log_weights=torch.full((1, n), -math.log(n), dtype=torch.float64),
        atoms=atoms, n_atoms=groups, own=torch.from_numpy(rng.integers(0, n, (1, n_points))),
        noise=torch.from_numpy(rng.normal(size=(1, n_points, centres.shape[1]))).float(),
        beta=beta, scale=0.5 / beta**2, exp_dtype=torch.float32,
    )


@pytest.mark.parametrize(("beta", "spread", "form"), [
    (0.3, 1.0, torch.float32),  # float32 inner products
    (0.005, 0.25, "float32 differences"),  # near the origin: float32 coordinates suffice
    (0.002, 1.0, "float64 differences"),  # far out at small beta: float64 coordinates
])
def test_dense_pass_equals_the_torch_path_and_float64(beta: float, spread: float, form: object,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    centres = spread * np.tanh(2 * rng.normal(size=(3000, 4)))
    problem = _problem(centres, beta, 700, groups=3)
    dense = _Dense(problem)
    chosen = dense.gemm_dtype if dense.gemm_dtype == torch.float32 else (
        f"{str(dense.diff_dtype).removeprefix('torch.')} differences")
    assert chosen == form
    fast, used = log_sums(problem, "dense")
    assert used == "dense"
    monkeypatch.setenv(fused.ENV_FUSED, "0")
    assert not fused.enabled()
    slow, _ = log_sums(problem, "dense")
    exact, _ = log_sums(Problem(**{**problem.__dict__, "exp_dtype": torch.float64}), "dense")
    # an atom without a term above 2**-126 is -inf on torch (flushed) and ~-87 when fused
    near = exact > -60.0
    assert torch.equal(near, fast > -60.0)
    assert torch.allclose(slow[near], exact[near], rtol=0, atol=2e-5)
    error = fast[near] - exact[near]
    if form != "float32 differences":
        assert float(error.abs().max()) <= 2e-5
    else:  # the coordinates' rounding: a few 1e-5 at most, unbiased (1e-7 on average)
        assert float(error.abs().max()) <= 1e-4
        assert abs(float(error.mean())) <= 1e-6


def test_pruned_estimate_is_the_same_with_and_without_the_fused_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Clustered centres: the neighbour path evaluates its chunks densely (fused or torch)."""
    rng = np.random.default_rng(5)
    corners = np.sign(rng.normal(size=(40, 6))) * (1 - 1e-4)
    centres = corners[rng.integers(0, 40, 20000)] + 3e-3 * rng.normal(size=(20000, 6))
    points = draw_points(np.ones(20000), 20000, 6, seed=0)
    fast = mixture_log_density(centres, 0.01, points, strategy="neighbours")
    monkeypatch.setenv(fused.ENV_FUSED, "0")
    slow = mixture_log_density(centres, 0.01, points, strategy="neighbours")
    assert fast.strategy == slow.strategy == "neighbours"
    assert torch.allclose(fast.log_density, slow.log_density, rtol=0, atol=2e-5)


def test_without_numba_the_torch_path_runs() -> None:
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from ibframe.kernels import _fused\n"
        "from ibframe.kernels.mixture import gaussian_mixture_entropy\n"
        "assert not _fused.enabled()\n"
        "c = np.tanh(np.random.default_rng(0).normal(size=(2000, 3)))\n"
        "print(gaussian_mixture_entropy(c, 0.1, n_mc=1, seed=0))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    centres = np.tanh(np.random.default_rng(0).normal(size=(2000, 3)))
    here = gaussian_mixture_entropy(centres, 0.1, n_mc=1, seed=0)
    assert float(done.stdout) == pytest.approx(here, abs=1e-6)


def test_a_second_process_loads_the_loops_from_numbas_cache(tmp_path: Path) -> None:
    """The compiled loops are cached on disk: a new process loads them instead of compiling
    again (7-8 s per process while they were closures, which Numba cannot key)."""
    code = (
        "from ibframe.kernels import _fused, _fused_loops\n"
        "assert _fused.enabled()\n"
        "stats = [getattr(_fused_loops, name).stats for name in _fused.LOOPS]\n"
        "print(sum(sum(s.cache_hits.values()) for s in stats),"
        " sum(sum(s.cache_misses.values()) for s in stats))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env).stdout.split() for _ in range(2)]
    assert int(runs[0][1]) > 0  # the first process compiled ...
    hits, misses = map(int, runs[1])
    # ... the second loaded every signature: the inner-product forms in float32, the
    # difference forms in float32 and float64, and the leaf route's three loops
    assert misses == 0 and hits == 9


def test_batch_loops_equal_one_call_per_mixture_and_atom() -> None:
    """A batch of small mixtures (h(T|X=x)) in one call gives each mixture's and atom's sums
    exactly as the one-mixture loops do."""
    g = torch.Generator().manual_seed(2)
    p = torch.randn(6, 33, 5, generator=g).contiguous()
    c = torch.randn(6, 5, 40, generator=g).contiguous()
    points, centres = torch.randn(6, 33, 3, generator=g, dtype=torch.float64), torch.randn(
        6, 3, 40, generator=g, dtype=torch.float64)
    a, b = torch.randn(6, 33, generator=g), torch.randn(6, 40, generator=g)
    bounds = torch.tensor([0, 25, 25, 40])  # three atoms, the second empty
    batch, diff_batch = torch.zeros(6, 33, 3, dtype=torch.float64), torch.zeros(6, 33, 3,
                                                                               dtype=torch.float64)
    fused.exp2_row_sums_batch(p, c, bounds, batch)
    fused.exp2_row_sums_diff_batch(points, a, centres, b, 2.0, bounds, diff_batch)
    for m in range(6):
        for atom in range(3):
            one, diff = torch.zeros(33, dtype=torch.float64), torch.zeros(33, dtype=torch.float64)
            start, stop = int(bounds[atom]), int(bounds[atom + 1])
            fused.exp2_row_sums(p[m], c[m], start, stop, one)
            fused.exp2_row_sums_diff(points[m].contiguous(), a[m], centres[m], b[m], 2.0, start,
                                     stop, diff)
            assert torch.equal(batch[m, :, atom], one)
            assert torch.equal(diff_batch[m, :, atom], diff)
    assert (batch[:, :, 1] == 0).all()
