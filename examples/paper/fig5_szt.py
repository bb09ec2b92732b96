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

#: panel -> (title, network settings, the paper's test accuracy, the paper's claim)
PANELS = {
    "a": ("tanh, beta = 0.005", {"beta": 0.005, "activation": "tanh"}, "97%",
          "I(X;T5) rises until epoch 28, falls from about epoch 80; layers 4 and 5 compress"),
    "b": ("tanh, beta = 0.005, orthonormal", {"beta": 0.005, "activation": "tanh", "orthonormal": 5e-5},
          "98%", "no compression apart from minor initial fluctuations"),
    "c": ("linear, beta = 0.01", {"beta": 0.01, "activation": "linear"}, "89%",
          "I(X;T_l) drops through clustering without nonlinearities"),
}


def main() -> None:
    args, panels = _common.panel_args(__doc__.splitlines()[0], PANELS)
    started = time.perf_counter()
    for panel in panels:
        title, network, accuracy, claim = PANELS[panel]
        _, ds = _common.information_run(
            args, "szt", f"fig5{panel}_szt", f"Fig. 5({panel}) SZT {title}", network, accuracy, claim
        )
        if panel == "a" and "loss_test" in ds:
            epochs = ds["epoch"].values
            h5 = ds["mi_x_t"].sel(layer="h5").values
            _common.compare("Fig. 5(a): first rise and fall of I(X;T5)",
                            "grows until epoch 28; drops from about epoch 80", _common.first_fall(h5, epochs))
            lowest = int(epochs[int(np.nanargmin(ds["loss_test"].values))])
            _common.compare("Fig. 5(a): epoch of the lowest test loss", "test loss rises from about epoch 3200",
                            f"epoch {lowest}")
    _common.finish(started)


if __name__ == "__main__":
    main()
