"""Writes tests/data/format1-run, a run store of ``ibframe_format`` 1 as ibframe wrote it before
format 2 (commit 3532c43): no checksums, and zarr's default of not writing a chunk equal to the
fill value, so some chunks are legitimately absent (the all-zero labels, the epoch-0 coordinate,
the NaN metric of epoch 1). tests/test_store_integrity.py checks that it stays readable. (No
``.zarr`` suffix: .gitignore ignores those.)

Run with ibframe at that commit: ``python tests/data/make_format1_run.py``.
"""

from pathlib import Path

import numpy as np

import ibframe

HERE = Path(__file__).resolve().parent


def expected_s(epoch: int, n: int = 6, units: int = 3) -> np.ndarray:
    """Draw 0 and two conditional draws of layer h1 at ``epoch``: (sample, 3, unit)."""
    base = np.arange(n * 3 * units, dtype=np.float32).reshape(n, 3, units) / 100
    return base + epoch


if __name__ == "__main__":
    x = np.linspace(-1, 1, 18, dtype=np.float32).reshape(6, 3)
    with ibframe.create_run(
        HERE / "format1-run", x=x, y=np.zeros(6, dtype=np.int64),
        split=["train"] * 4 + ["test"] * 2, beta=0.1, draws=2,
        layers={"h1": 3, "conv": (2, 1, 2)}, overwrite=True,
    ) as run:
        for epoch in (0, 1, 3):
            s = expected_s(epoch)
            conv = np.concatenate([s, s[..., :1]], axis=2).reshape(6, 3, 2, 1, 2)
            metrics = {"loss_train": 1.0 / (1 + epoch), "accuracy_test": np.nan if epoch == 1 else 0.5}
            run.append_epoch(epoch, {"h1": s, "conv": conv}, metrics=metrics,
                             params={"w": np.full((2, 2), float(epoch), np.float32)})
