"""Fig. 9 (a-d): two noisy leaky-ReLU neurons on X = {1,2,3,4} (label 0) | {5,6,7,8} (label 1/4).

Appendix A: R(u) = max(u, u/10), gradient descent at lr 0.001, squared loss. (a) the parameters
over epochs, (b, c) the densities of T_1(k) and T_2(k) over epochs, (d) I(X;T_1(k)) and
I(X;T_2(k)) with the Kolchinsky-Tracey bounds. The paper picks its initial parameters by hand and
shows them only in its Fig. 9(a), and gives neither beta nor the number of epochs: ibframe's
defaults (w1 = -0.5, b1 = 2.5, w2 = -0.5, b2 = -0.2, beta = 0.01, 20,000 epochs) are ours.

    python examples/paper/fig9_leaky_relu.py [--quick] [--out DIR]
"""

from __future__ import annotations

import time

import _common
import numpy as np
from matplotlib.figure import Figure

import ibframe

PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    train = _common.settings(
        args,
        quick={"epochs": 2000, "record": "log:25", "draws": 16},
        full={"epochs": 20_000, "record": "log:200"},
    )
    path = _common.run_store(args.out, "leaky-relu-pair", **train)
    ds = _common.estimate(path, {"sp-mi": {"bounds": True}})
    run = ibframe.open_run(path)
    epochs = run.epochs
    beta = run.beta
    params = {name: np.array([float(np.ravel(run.params(int(e))[name])[0]) for e in epochs]) for name in PARAMS}

    fig = Figure(figsize=(12, 7), layout="constrained")
    (ax_a, ax_b), (ax_c, ax_d) = fig.subplots(2, 2)
    for name, values in params.items():
        ax_a.plot(epochs, values, label=name.replace(".weight", " w").replace(".bias", " b"))
    ax_a.set(title="(a) parameters", ylabel="value")
    ax_a.legend(fontsize="x-small")
    grid = {}
    for ax, layer, title in ((ax_b, "h1", "(b) density of T_1(k)"), (ax_c, "h2", "(c) density of T_2(k)")):
        s = np.asarray(run.activations(layer).values)[:, :, 0]
        grid[layer] = t = np.linspace(s.min() - 5 * beta, s.max() + 5 * beta, 500)
        image = np.exp(-0.5 * ((t[:, None, None] - s[None]) / beta) ** 2).mean(axis=2)
        ax.pcolormesh(np.maximum(epochs, 0.5), t, np.log1p(image), shading="nearest")
        ax.set_xscale("log")
        ax.set(title=title, xlabel="epoch", ylabel="t")
    for layer, colour in (("h1", "tab:blue"), ("h2", "tab:red")):
        mi = ds["mi_x_t"].sel(layer=layer).values
        ax_d.plot(epochs, mi, color=colour, label=f"I(X;T_{layer[1]})")
        ax_d.fill_between(epochs, ds["mi_x_t_lower"].sel(layer=layer).values,
                          ds["mi_x_t_upper"].sel(layer=layer).values, color=colour, alpha=0.2, lw=0)
    ax_d.axhline(np.log(8), color="0.6", ls=":", label="ln 8")
    ax_d.set(title="(d) I(X;T_l) with Kolchinsky-Tracey bounds (band)", ylabel="nat")
    ax_d.legend(fontsize="x-small")
    for ax in (ax_a, ax_d):
        _common.epoch_axis(ax, epochs)
    _common.save(fig, args.out, "fig9_leaky_relu")

    final = {name: values[-1] for name, values in params.items()}
    _common.compare("Fig. 9(a): sign of w1 and w2 at the end", "w1 < 0 and w2 < 0",
                    f"w1 = {final['fc1.weight']:.3f}, w2 = {final['fc2.weight']:.3f}")
    _common.compare("Fig. 9(a): b2 grows", "b2 grows (lifting X_1/4 across the origin); |w2| shrinks",
                    f"b2 {params['fc2.bias'][0]:.3f} -> {final['fc2.bias']:.3f}, |w2| "
                    f"{abs(params['fc2.weight'][0]):.3f} -> {abs(final['fc2.weight']):.3f}")
    for layer in ("h1", "h2"):
        mi = ds["mi_x_t"].sel(layer=layer).values
        lower, upper = ds["mi_x_t_lower"].sel(layer=layer).values, ds["mi_x_t_upper"].sel(layer=layer).values
        tol = 2 * np.nan_to_num(ds["mi_x_t_stderr"].sel(layer=layer).values) + 1e-3
        inside = int(((mi >= lower - tol) & (mi <= upper + tol)).sum())
        _common.compare(f"Fig. 9(d): I(X;T_{layer[1]}) start -> peak -> end",
                        "rises, then falls as X_1/4 merges (layer 1); spikes as X_1/4 splits and coalesces (layer 2); no values given",
                        f"{_common.first_peak_last(mi, epochs)}; inside the bounds at {inside}/{mi.size} epochs")
    print(f"sp-mi: {_common.convergence(ds)}")
    _common.finish(started)


if __name__ == "__main__":
    main()
