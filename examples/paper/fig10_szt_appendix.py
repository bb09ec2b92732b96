"""Fig. 10 (a-c): the SZT network of Appendix B.1, (a) tanh with beta = 0.01, (b) ReLU with
beta = 0.01, (c) ReLU with beta = 0.01 and orthonormal-weight regularisation (alpha = 5e-5).

Each panel: I(X;T_l), losses, H(Bin(T_l)) at B = 10 beta and the last layer's representations,
as in Fig. 5, and the per-layer histograms of the activations at the first, middle and last
recorded epochs (the paper's top row; its ReLU histograms pile values above 5 into the last bin,
as here). Paper: (a) saturates and clusters but compresses only mildly, (b) and (c) barely
compress; test accuracy 97%, 96% and 97%. The full mode trains as Fig. 5's.

    python examples/paper/fig10_szt_appendix.py [--quick] [--out DIR] [--data DIR] [--panel a|b|c]
"""

from __future__ import annotations

import time

import _common
import numpy as np
from matplotlib.figure import Figure

import ibframe
from ibframe.plot import plot_activation_histograms

PANELS = {
    "a": ("tanh, beta = 0.01", {"beta": 0.01, "activation": "tanh"}, "97%",
          "saturation and clustering, but compression very mild"),
    "b": ("ReLU, beta = 0.01", {"beta": 0.01, "activation": "relu"}, "96%", "almost no compression"),
    "c": ("ReLU, beta = 0.01, orthonormal", {"beta": 0.01, "activation": "relu", "orthonormal": 5e-5},
          "97%", "almost no compression, similar to (b)"),
}


def histograms(run: ibframe.Run, title: str) -> Figure:
    """Histograms of every layer's activations at the first, middle and last recorded epochs
    (ibframe.plot's ``activation-histograms``); ReLU values above 5 pile into the last bin."""
    epochs = [int(e) for e in run.epochs]
    shown = [epochs[0], epochs[len(epochs) // 2], epochs[-1]]
    relu = run.layer_attrs(run.layers[0]).get("activation") == "relu"
    fig = plot_activation_histograms(run=run, epochs=shown, value_range=(0.0, 5.0) if relu else None)
    fig.suptitle(f"{title}: activations (values beyond the range in the end bins)")
    return fig


def saturated_fraction(run: ibframe.Run, layer: str) -> float:
    """Share of the last epoch's activations with |S| > 0.95 (tanh) or S = 0 (ReLU)."""
    s = np.asarray(run.activations(layer).sel(epoch=int(run.epochs[-1])).values)
    relu = run.layer_attrs(layer).get("activation") == "relu"
    return float(np.mean(s <= 0) if relu else np.mean(np.abs(s) > 0.95))


def main() -> None:
    args, panels = _common.panel_args(__doc__.splitlines()[0], PANELS)
    started = time.perf_counter()
    for panel in panels:
        title, network, accuracy, claim = PANELS[panel]
        label = f"Fig. 10({panel}) SZT {title}"
        path, _ = _common.information_run(args, "szt", f"fig10{panel}_szt", label, network, accuracy, claim)
        run = ibframe.open_run(path)
        _common.save(histograms(run, label), args.out, f"fig10{panel}_histograms")
        text = ", ".join(f"{layer} {saturated_fraction(run, layer):.2f}" for layer in run.layers)
        what = "|S| > 0.95" if network["activation"] == "tanh" else "S = 0"
        _common.compare(f"{label}: share of activations with {what} at the end",
                        "saturation occurs (no numbers given)", text)
    _common.finish(started)


if __name__ == "__main__":
    main()
