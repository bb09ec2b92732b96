"""Fig. 6 (a, b): within- and between-class pairwise distances of the noisy SZT network's layers,
(a) tanh with beta = 0.005, (b) the same with orthonormal-weight regularisation.

Section 5.1: the runs of Fig. 5(a) and (b) (the same settings, so with the same --out they are
trained once). As training goes on, tight clusters form from layer 3 on in (a), and not in (b).

    python examples/paper/fig6_distances_szt.py [--quick] [--out DIR] [--data DIR]
"""

from __future__ import annotations

import time

import _common
from fig5_szt import PANELS
from matplotlib.figure import Figure

import ibframe


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    train = _common.settings(args, _common.SZT_QUICK, _common.SZT_FULL)
    for panel, claim in (("a", "clusters form from layer 3 on"), ("b", "no tight clustering")):
        title, network, _, _ = PANELS[panel]
        path = _common.run_store(args.out, "szt", data=_common.szt_data(args), **network, **train)
        epochs = [int(e) for e in ibframe.open_run(path).epochs]
        shown = [epochs[0], epochs[len(epochs) // 3], epochs[2 * len(epochs) // 3], epochs[-1]]
        ds = _common.estimate(path, ["distance-histogram"], epochs=shown)
        layers = [str(layer) for layer in ds["layer"].values]
        fig = Figure(figsize=(2.4 * len(shown), 1.6 * len(layers)), layout="constrained")
        axes = fig.subplots(len(layers), len(shown), squeeze=False)
        for row, layer in enumerate(layers):
            for col, epoch in enumerate(shown):
                _common.distance_panel(axes[row, col], ds, layer, epoch, fill=True,
                                       sizes=("x-small", "xx-small"))
        fig.suptitle(f"Fig. 6({panel}): SZT {title}; within-class (blue), between-class (orange)")
        _common.save(fig, args.out, f"fig6{panel}_distances_szt")
        for layer in layers[2:]:
            text = ", ".join(
                "epoch {}: {:.2f}/{:.2f}".format(e, *_common.distance_modes(ds, layer, e)) for e in (shown[0], shown[-1])
            )
            _common.compare(f"Fig. 6({panel}): {layer} within/between distance modes", claim, text)
    _common.finish(started)


if __name__ == "__main__":
    main()
