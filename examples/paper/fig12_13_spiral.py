"""Figs. 12 (a, b) and 13: the spiral network of Appendix B.2 (2-3-3-3-3-3-2, tanh).

Fig. 12: I(X;T_l), losses, H(Bin(T_l)) at B = 10 beta and layer 5's representations with
beta = 0.005, (a) without and (b) with orthonormal-weight regularisation (alpha = 5e-5); the
paper says only that they "illustrate a connection between clustering and compression". Fig. 13:
H(Bin(T_l)) with B = 0.001 for the deterministic network. The paper gives neither the spiral's
parameters nor the training set-up: the data are ibframe's `spiral()` defaults and the training
is the SZT set-up of Fig. 5.

    python examples/paper/fig12_13_spiral.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import time

import _common
from matplotlib.figure import Figure

import ibframe

CLAIM = "compression with clustering in (a), none in (b) (no values given)"


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    for panel, extra in (("a", {}), ("b", {"orthonormal": 5e-5})):
        title = f"Fig. 12({panel}) spiral tanh, beta = 0.005" + (", orthonormal" if extra else "")
        _common.information_run(args, "spiral", f"fig12{panel}_spiral", title,
                                {"beta": 0.005, "activation": "tanh", **extra}, "not stated", CLAIM)

    train = _common.settings(args, _common.SZT_QUICK, _common.SZT_FULL)
    path = _common.run_store(args.out, "spiral", beta=0.0, activation="tanh", **train)
    ds = _common.estimate(path, {"binned-entropy": {"bin_size": [0.001]}})
    entropy = ds["entropy_bin"].squeeze()
    epochs = ds["epoch"].values
    n = ibframe.open_run(path).n_samples
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for layer in entropy["layer"].values:
        ax.plot(epochs, entropy.sel(layer=layer).values, label=str(layer))
    ax.axhline(math.log(n), color="0.5", ls=":", label=f"ln {n}")
    ax.set(ylabel="H(Bin(T_l)) (nat), B = 0.001", title="Fig. 13: deterministic spiral network")
    ax.legend(fontsize="x-small")
    _common.epoch_axis(ax, epochs)
    _common.save(fig, args.out, "fig13_spiral_binned")
    text = ", ".join(f"{layer} {float(entropy.sel(layer=layer).values[-1]):.2f}" for layer in entropy["layer"].values)
    _common.compare("Fig. 13: H(Bin(T_l)) at the last epoch, B = 0.001",
                    f"reveals some clustering (no values given; ln n = {math.log(n):.2f})", text)
    _common.finish(started)


if __name__ == "__main__":
    main()
