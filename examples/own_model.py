"""Measure information flow in your own network: add Gaussian noise, record, estimate, plot.

Any ``torch.nn.Module`` works. Put a :class:`~ibframe.recording.nn.GaussianNoise` module after each
hidden layer you want to study (T_l = S_l + Z_l, Z_l ~ N(0, beta^2 I), fresh on every forward
pass), name the modules whose outputs are S_l, and step a
:class:`~ibframe.recording.recorder.Recorder` once per epoch while you train as you always do.

    python examples/own_model.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ibframe
from ibframe.recording.nn import GaussianNoise
from ibframe.recording.recorder import Recorder, classification_metrics

BETA = 0.1


class MyNet(nn.Module):
    """A small classifier with noise after each hidden activation; the head has none."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1, self.noise1 = nn.Linear(12, 16), nn.Tanh(), GaussianNoise(BETA)
        self.fc2, self.act2, self.noise2 = nn.Linear(16, 6), nn.Tanh(), GaussianNoise(BETA)
        self.fc3, self.act3, self.noise3 = nn.Linear(6, 3), nn.Tanh(), GaussianNoise(BETA)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.noise1(self.act1(self.fc1(x)))
        x = self.noise2(self.act2(self.fc2(x)))
        x = self.noise3(self.act3(self.fc3(x)))
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inputs and epochs (seconds)")
    parser.add_argument("--out", type=Path, default=Path("own-model-out"), help="output directory")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, epochs, draws = (256, 40, 8) if args.quick else (4096, 400, 32)
    x = rng.integers(0, 2, size=(n, 12)).astype(np.float32)
    y = (x[:, :7].sum(axis=1) > 3).astype(np.int64)  # the majority of the first 7 bits
    split = np.where(rng.random(n) < 0.8, "train", "test")
    model = MyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = torch.from_numpy(split == "train")
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)

    store = args.out / "my-net.zarr"
    with Recorder(
        model, store, x=x, y=y, split=split,
        layers={"h1": "act1", "h2": "act2", "h3": "act3"},  # modules whose outputs are S_l
        noise=["noise1", "noise2", "noise3"], beta=BETA,
        draws=draws, schedule="log:12", epochs=epochs,    # conditional draws per input
        metrics_fn=classification_metrics, overwrite=True,
    ) as recorder:
        print(recorder.plan)
        for epoch in range(epochs + 1):
            if epoch:  # epoch 0 records the untrained network
                model.train()
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs[train]), labels[train])
                loss.backward()
                optimizer.step()
            recorder.step(epoch)  # records when the schedule says so

    ds = ibframe.estimate(store, ["sp-mi", "binned-entropy"], progress=False)
    for layer in ds["layer"].values:
        mi = ds["mi_x_t"].sel(layer=layer)
        print(f"I(X;T) of {layer}: {float(mi[0]):.2f} nat at epoch 0, peak {float(mi.max()):.2f} at "
              f"epoch {int(mi.idxmax('epoch'))}, {float(mi[-1]):.2f} at epoch {epochs} "
              f"(stderr {float(ds['mi_x_t_stderr'].sel(layer=layer).max()):.3f})")
    print(f"test accuracy at the end: {float(ds['accuracy_test'][-1]):.2f}")
    for path in ibframe.plot_results(ds, ["mi-epochs", "info-plane", "scatter"], args.out, run=store):
        print(f"figure: {path}")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
