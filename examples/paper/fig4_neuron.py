"""Fig. 4 (a-d): one noisy tanh neuron, T(k) = tanh(w_k X + b_k) + Z, on X = {-3,-1,1} | {3}.

Section 4: beta = 0.01, squared loss, gradient descent at lr 0.01, w starting at 0. (a) the
density p_T(k) at epochs 250 and 2500, (b) p_T(k) over epochs, (c) I(X;T(k)) over epochs, with
dips where the X_{-1} Gaussians merge (around 1e3 and 1e4 in the paper), (d) I(X;T(k)) for
several beta. The paper does not list the beta values of (d); we train one neuron per beta in
{0.01, 0.02, 0.05, 0.1}.

    python examples/paper/fig4_neuron.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import time

import _common
import numpy as np
from matplotlib.figure import Figure

import ibframe
from ibframe.plot import plot_density_epochs, plot_mi_epochs


def merge_epoch(mi: np.ndarray, epochs: np.ndarray, clusters: float) -> int | None:
    """The first epoch after the peak at which exp(I) falls below ``clusters`` resolvable points."""
    peak = int(np.argmax(mi))
    below = np.flatnonzero(np.exp(mi[peak:]) < clusters)
    return int(epochs[peak + below[0]]) if below.size else None


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    train = _common.settings(args, {"epochs": 3000, "record": "log:40"},
                             {"epochs": 100_000, "record": "log:200"})
    epochs = train["epochs"]
    betas = (0.01, 0.1) if args.quick else (0.01, 0.02, 0.05, 0.1)
    runs = {beta: _common.run_store(args.out, "neuron", beta=beta, **train) for beta in betas}
    results = {beta: _common.estimate(path, ["sp-mi"]) for beta, path in runs.items()}

    run = ibframe.open_run(runs[0.01])
    recorded = run.epochs
    mi = results[0.01]["mi_x_t"].sel(layer="h1").values
    sweep = _common.estimate(list(runs.values()), ["sp-mi"])  # the cached runs along `run`

    fig = Figure(figsize=(11, 9.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.4])
    shown = sorted({int(recorded[np.argmin(np.abs(recorded - target))]) for target in (250, 2500)})
    plot_density_epochs(run=run, epochs=shown, into=top)  # (a) and (b)
    top.suptitle("(a) density p_T(k) at two epochs, (b) over epochs, beta = 0.01")
    left, right = bottom.subfigures(1, 2)
    plot_mi_epochs(results[0.01], into=left)
    left.axes[0].axhline(math.log(4), color="0.6", ls=":", label="ln 4")
    left.axes[0].legend(fontsize="small")
    left.axes[0].set_title("(c) I(X;T(k)), beta = 0.01")
    plot_mi_epochs(sweep, into=right)  # one line per beta
    right.axes[0].set_title("(d) I(X;T(k)) for several beta")
    _common.save(fig, args.out, "fig4_neuron")

    final = run.params(int(recorded[-1]))
    w, b = float(final["fc1.weight"].ravel()[0]), float(final["fc1.bias"].ravel()[0])
    _common.compare("Fig. 4: learned b/w at the last epoch", "about -2.3", f"{b / w:.2f} (epoch {recorded[-1]}, w = {w:.2f})")
    _common.compare("Fig. 4(c): I(X;T) at epoch 0 (w = 0, all Gaussians superimposed)", "0", f"{mi[0]:.3f} nat")
    _common.compare("Fig. 4(c): peak I(X;T)", "near ln 4 = 1.386 (not stated)", f"{mi.max():.3f} nat at epoch {recorded[np.argmax(mi)]}")
    first, second = merge_epoch(mi, recorded, 3.5), merge_epoch(mi, recorded, 2.5)
    _common.compare("Fig. 4(c): first merge (exp I < 3.5)", "dip around epoch 1e3", str(first))
    _common.compare("Fig. 4(c): second merge (exp I < 2.5)", "dip around epoch 1e4", f"{second} (of {epochs} epochs)")
    finals = ", ".join(f"beta {beta:g}: {ds['mi_x_t'].sel(layer='h1').values[-1]:.2f}" for beta, ds in results.items())
    _common.compare("Fig. 4(d): final I(X;T) per beta", "larger beta: the X_-1 Gaussians never resolve, I rises as classes separate", finals)
    print(f"sp-mi: {_common.convergence(results[0.01])}")
    _common.finish(started)


if __name__ == "__main__":
    main()
