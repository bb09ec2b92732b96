"""Fig. 1: I(X;Bin(T_l)) = H(Bin(T_l)) over epochs for several bin sizes, deterministic SZT network.

Section 1 and 5.1: the 12-10-7-5-4-3-2 tanh network of Shwartz-Ziv & Tishby without noise
(beta = 0), X uniform over the 4096 inputs. For small bins the curves sit at H(X) = ln 4096 =
8.318 nats; larger bins give the rise and fall read as "compression". The paper does not list
its bin sizes; we use 1e-4, 1e-3, 1e-2 and 0.1. The full mode trains as ibframe's SZT default
(Adam, lr 4e-4, minibatches of 256, 10,000 epochs, 100 log-spaced recorded epochs, every input).

    python examples/paper/fig1_binned_szt.py [--quick] [--out DIR] [--data DIR]
"""

from __future__ import annotations

import math
import time

import _common
from matplotlib.figure import Figure

BIN_SIZES = [1e-4, 1e-3, 1e-2, 1e-1]


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    train = _common.settings(
        args,
        quick={"epochs": 150, "lr": 8e-3, "record": "log:10"},
        full={"epochs": 10_000, "record": "log:100"},
    )
    path = _common.run_store(args.out, "szt", data=_common.szt_data(args), beta=0.0, **train)
    ds = _common.estimate(path, {"binned-entropy": {"bin_size": BIN_SIZES}})
    entropy = ds["entropy_bin"]
    epochs = ds["epoch"].values
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, len(BIN_SIZES), sharey=True)
    for ax, size in zip(axes, BIN_SIZES, strict=True):
        for layer in entropy["layer"].values:
            ax.plot(epochs, entropy.sel(layer=layer, bin_size=size).values, label=str(layer))
        ax.axhline(math.log(4096), color="0.6", ls=":", lw=0.8)
        ax.set_title(f"bin size {size:g}", fontsize="medium")
        _common.epoch_axis(ax, epochs)
    axes[0].set_ylabel("H(Bin(T_l)) (nat)")
    axes[0].legend(fontsize="x-small", title="layer")
    fig.suptitle("Fig. 1: binned entropy of the deterministic SZT network (dotted: ln 4096)")
    _common.save(fig, args.out, "fig1_binned_szt")

    smallest = entropy.sel(bin_size=BIN_SIZES[0])
    _common.compare(
        "Fig. 1: H(Bin(T_l)) at the smallest bin, lowest over layers and epochs",
        "converges to ln(2^12) = 8.3 for small bins",
        f"{float(smallest.min()):.3f} nat (bin {BIN_SIZES[0]:g}; ln 4096 = {math.log(4096):.3f})",
    )
    for size in BIN_SIZES[2:]:
        drops = {
            str(layer): float(entropy.sel(layer=layer, bin_size=size).max()
                              - entropy.sel(layer=layer, bin_size=size).values[-1])
            for layer in entropy["layer"].values
        }
        text = ", ".join(f"{k} {v:.2f}" for k, v in drops.items())
        _common.compare(f"Fig. 1: fall from peak to end, bin {size:g} (nat)",
                        "larger bins show rise-and-fall (no numbers given)", text)
    _common.finish(started)


if __name__ == "__main__":
    main()
