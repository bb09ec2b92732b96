"""Fig. 7, Fig. 8 and Section 5.2's per-unit slopes: clustering in the deterministic (dropout)
MNIST CNN.

Section 5.2 and Appendix B.3: the CNN trained with dropout p = 0.2 (SGD, minibatches of 32, 128
epochs, lr 5e-3 to 5e-4, augmented inputs), recorded deterministically. Fig. 7: H(Bin(T_l)) with
two bins, [-1, 0] and (0, 1], stays near ln n for every layer and epoch (n = 10,000 in the paper).
Section 5.2: the slope over epochs 1-128 of each layer-3 unit's binned entropy, for bin sizes
1e-4 to 1e-1; the paper reports a least negative mean slope of -0.002 nats/epoch with standard
deviations of at most 0.001. Fig. 8: within- and between-class pairwise distances in the input
space and in each layer at epochs 0, 1, 32 and 128.

ibframe's CNN is the paper's network and records its layers 1-4: pool1 and pool2 (after
max-pooling), fc3 and the logits (``--layer-set pre-pool`` in ``ibframe train`` records tanh1 and
tanh2 before pooling instead). Fig. 7's statement is about the tanh layers 1-3; the 10 logits are
drawn too, but their two-bin entropy is capped at ln 2^10 = ln 1024, so the comparison leaves them
out.

    python examples/paper/fig7_fig8_slopes_mnist.py [--quick] [--out DIR] [--mnist DIR|mnist-5000|sklearn-digits]
"""

from __future__ import annotations

import math
import time

import _common
import numpy as np
from matplotlib.figure import Figure

import ibframe
from ibframe.plot import input_distances, plot_input_distances

FULL_RECORD = "0,1,2,3,4,6,8,12,16,24,32,48,64,80,96,112,128"


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0])
    parser.add_argument("--mnist", help=_common.MNIST_HELP)
    args = parser.parse_args()
    started = time.perf_counter()
    train = _common.settings(
        args,
        quick={"epochs": 3, "record": "all", "samples": 300},
        full={"epochs": 128, "record": FULL_RECORD},
    )
    path = _common.run_store(args.out, "mnist-cnn-dropout", data=_common.mnist_source(args), **train)
    run = ibframe.open_run(path)
    epochs = [int(e) for e in run.epochs]
    n = run.n_samples

    # Fig. 7
    binned = _common.estimate(path, {"binned-entropy": {"n_bins": [2], "value_range": [-1.0, 1.0]}})
    entropy = binned["entropy_bin"].squeeze()
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for layer in entropy["layer"].values:
        ax.plot(epochs, entropy.sel(layer=layer).values, marker=".", label=str(layer))
    ax.axhline(math.log(n), color="0.5", ls=":", label=f"ln {n}")
    ax.set(ylabel="H(Bin(T_l)) (nat), 2 bins", title="Fig. 7: binned entropy of the dropout CNN")
    ax.legend(fontsize="small")
    _common.epoch_axis(ax, epochs)
    _common.save(fig, args.out, "fig7_binned_mnist")
    tanh_layers = run.layers[:3]  # the paper's layers 1-3; the logits' 2^10 bins cap theirs
    _common.compare(
        "Fig. 7: H(Bin(T_l)) with 2 bins, lowest over layers 1-3 and epochs",
        "about ln(10000) = 9.210 for all layers and epochs (n = 10000)",
        f"{float(entropy.sel(layer=tanh_layers).min()):.3f} nat (ln {n} = {math.log(n):.3f})",
    )

    # Section 5.2
    later = [e for e in epochs if e >= 1]
    slopes_ds = _common.estimate(path, ["unit-entropy-slopes"], layers=["fc3"], epochs=later)
    slopes = slopes_ds["unit_entropy_slope"].sel(layer="fc3")
    mean, sd = slopes.mean("unit").values, slopes.std("unit").values
    sizes = slopes["unit_bin_size"].values
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(np.arange(sizes.size), mean, yerr=sd, fmt="o", capsize=3)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(np.arange(sizes.size), [f"{s:g}" for s in sizes])
    ax.set(xlabel="bin size", ylabel="slope (nat/epoch)", title="Sec. 5.2: layer-3 unit entropy slopes, mean ± sd")
    _common.save(fig, args.out, "sec52_unit_slopes_mnist")
    by_size = ", ".join(f"B={s:g}: {m:+.4f} ± {d:.4f}" for s, m, d in zip(sizes, mean, sd, strict=True))
    _common.compare("Sec. 5.2: least negative mean slope of layer-3 units (nat/epoch)", "-0.002",
                    f"{float(mean.max()):+.4f} (epochs {later[0]}-{later[-1]})")
    _common.compare("Sec. 5.2: largest sd of the slopes (nat/epoch)", "0.001", f"{float(sd.max()):.4f}")
    _common.compare("Sec. 5.2: slopes per bin size", "most units compress (negative slopes)", by_size)

    # Fig. 8
    shown = sorted({e for e in (0, 1, 32, 128) if e in epochs} | {epochs[-1]})
    distances = _common.estimate(path, ["distance-histogram"], epochs=shown)
    layers = list(distances["layer"].values)
    fig = Figure(figsize=(2.6 * len(shown), 1.9 * (len(layers) + 1.4)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.4, len(layers)])
    plot_input_distances(run=run, into=top)
    edges, within, between = input_distances(run)
    axes = bottom.subplots(len(layers), len(shown), squeeze=False)
    separation = {}
    for row, layer in enumerate(layers):
        for col, epoch in enumerate(shown):
            _common.distance_panel(axes[row, col], distances, layer, epoch, fill=False,
                                   sizes=("small", "x-small"))
            near, far = _common.distance_modes(distances, layer, epoch)
            separation[(layer, epoch)] = far / max(near, 1e-12)
    fig.suptitle("Fig. 8: within-class (blue) and between-class (orange) pairwise distances")
    _common.save(fig, args.out, "fig8_distances_mnist")
    _common.compare("Fig. 8: input space, between/within mode ratio", "within mode lower, substantial overlap",
                    f"{_common.mode(edges, between) / _common.mode(edges, within):.2f}")
    for layer in layers:
        text = ", ".join(f"epoch {e}: {separation[(layer, e)]:.2f}" for e in shown)
        _common.compare(f"Fig. 8: {layer}, between/within mode ratio",
                        "layers 1-2 barely separate; layers 3-4 separate after one epoch", text)
    _common.finish(started)


if __name__ == "__main__":
    main()
