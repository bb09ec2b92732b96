"""Fig. 5 (a-c): I(X;T_l), losses and H(Bin(T_l)) with B = 10 beta for the noisy SZT network.

Section 5.1 and Appendix B.1: the 12-10-7-5-4-3-2 network on the 12-bit SZT data, (a) tanh with
beta = 0.005, (b) the same with the orthonormal-weight step of Cisse et al. (alpha = 5e-5),
(c) linear activations with beta = 0.01. The full mode uses ibframe's SZT defaults (Adam, lr 4e-4,
minibatches of 256, 10,000 epochs, 100 log-spaced recorded epochs, every input with 32
conditional draws); the paper does not give its optimiser or epochs for this figure, and these
follow Saxe et al.'s code. Estimating the full mode costs about 11 s per recorded epoch and run
on 2 CPU cores.

    python examples/paper/fig5_szt.py [--quick] [--out DIR] [--data DIR] [--panel a|b|c]
"""

from __future__ import annotations

import time

import _common
import numpy as np

PANELS = {
    "a": ("tanh, beta = 0.005", {"beta": 0.005, "activation": "tanh"}, "97%",
          "I(X;T5) rises until epoch 28, falls from about epoch 80; layers 4 and 5 compress"),
    "b": ("tanh, beta = 0.005, orthonormal", {"beta": 0.005, "activation": "tanh", "orthonormal": 5e-5},
          "98%", "no compression apart from minor initial fluctuations"),
    "c": ("linear, beta = 0.01", {"beta": 0.01, "activation": "linear"}, "89%",
          "I(X;T_l) drops through clustering without nonlinearities"),
}


def szt_panel(args, panel: str) -> None:
    """Train, estimate, draw and compare one panel of Fig. 5 (or of Fig. 10, which reuses it)."""
    title, network, accuracy, claim = PANELS[panel]
    train = _common.settings(
        args,
        quick={"epochs": 100, "lr": 8e-3, "record": "log:6", "samples": 128, "draws": 8},
        full={"epochs": 10_000, "record": "log:100"},
    )
    path = _common.run_store(args.out, "szt", data=_common.szt_data(args), **network, **train)
    beta = network["beta"]
    ds = _common.estimate(path, {"sp-mi": {}, "binned-entropy": {"bin_size": [10 * beta]}})
    arrows = _common.arrow_epochs(ds, "h5")
    fig = _common.information_panel(path, ds, f"Fig. 5({panel}): SZT, {title}", "h5", arrows)
    _common.save(fig, args.out, f"fig5{panel}_szt")
    epochs = ds["epoch"].values
    _common.compare(f"Fig. 5({panel}): test accuracy", accuracy, _common.final_accuracy(ds))
    for layer in ("h4", "h5"):
        mi = ds["mi_x_t"].sel(layer=layer).values
        drop = float(np.nanmax(mi) - mi[-1])
        _common.compare(
            f"Fig. 5({panel}): I(X;T_{layer[1]}) start -> peak -> end", claim,
            f"{_common.first_peak_last(mi, epochs)}, compression {drop:.2f} nat",
        )
    if "loss_test" in ds:
        rise = int(epochs[int(np.nanargmin(ds["loss_test"].values))])
        paper = "rises from about epoch 3200" if panel == "a" else "not stated"
        _common.compare(f"Fig. 5({panel}): test loss minimum", paper, f"epoch {rise}")
    print(f"Fig. 5({panel}) sp-mi: {_common.convergence(ds)}")


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0])
    parser.add_argument("--panel", choices=sorted(PANELS), action="append",
                        help="panels to make (repeatable); default all")
    args = parser.parse_args()
    started = time.perf_counter()
    for panel in args.panel or sorted(PANELS):
        szt_panel(args, panel)
    _common.finish(started)


if __name__ == "__main__":
    main()
