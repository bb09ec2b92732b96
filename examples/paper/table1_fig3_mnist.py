"""Table 1 and Fig. 3: the six MNIST CNNs, their test errors over seeds, and the cosine
similarity of each model's representations to the deterministic model's.

Section 2 and Appendix B.3: the CNN trained deterministic, with Gaussian noise at beta in
{0.05, 0.1, 0.2, 0.5}, and with dropout p = 0.2; SGD without momentum, minibatches of 32, 128
epochs, lr 5e-3 falling geometrically to 5e-4, augmented inputs, eight seeds shared across the
six models (same initial weights and minibatches per seed). At test time every model is
deterministic: the errors are counted with the noise and dropout off, on the whole test split,
from the parameters recorded at the last epoch. Fig. 3's cosine similarities compare each
model's recorded representations with the deterministic model's of the same seed.

    python examples/paper/table1_fig3_mnist.py [--quick] [--out DIR] [--mnist DIR|mnist-5000|sklearn-digits] [--seeds N|0-3,7]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common
import numpy as np
import torch
from matplotlib.figure import Figure

import ibframe
from ibframe.recording import datasets, experiments
from ibframe.recording.nn import mnist_cnn

#: Table 1 of the paper: errors on the 10,000 MNIST validation digits, mean ± sd over 8 seeds.
MODELS = {
    "deterministic": ("mnist-cnn", 0.0, "50 ± 4.6"),
    "noisy beta=0.05": ("mnist-cnn", 0.05, "50 ± 5.0"),
    "noisy beta=0.1": ("mnist-cnn", 0.1, "51 ± 6.9"),
    "noisy beta=0.2": ("mnist-cnn", 0.2, "86 ± 9.8"),
    "noisy beta=0.5": ("mnist-cnn", 0.5, "2200 ± 520"),
    "dropout p=0.2": ("mnist-cnn-dropout", None, "39 ± 3.9"),
}
PAPER_TEST_SIZE = 10_000


def seed_list(text: str | None, default: int) -> list[int]:
    """The seeds of ``--seeds``: a bare count N is seeds 0 to N-1, anything else is read as
    ``ibframe train --seeds`` reads it."""
    if text is None:
        return list(range(default))
    if text.strip().isdigit():
        return list(range(int(text)))
    return experiments.parse_seeds(text)


def test_errors(run_path: Path, data: datasets.Dataset) -> tuple[int, int]:
    """Errors of the last recorded parameters on the test split, deterministically (noise and
    dropout off, batch norm on its running statistics), and the test split's size."""
    run = ibframe.open_run(run_path)
    regulariser = run.attrs["model"].get("regulariser", "noise")
    network = mnist_cnn(beta=0.0, regulariser=regulariser, input_size=data.x.shape[-1], n_classes=10)
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in run.params(int(run.epochs[-1])).items()}
    network.model.load_state_dict(state)
    network.model.eval()
    test = data.indices("test")
    with torch.no_grad():
        predicted = network.model(torch.as_tensor(data.x[test])).argmax(dim=1).numpy()
    return int((predicted != data.y[test]).sum()), int(test.size)


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0])
    parser.add_argument("--mnist", help=_common.MNIST_HELP)
    parser.add_argument(
        "--seeds",
        help="a number of seeds N (seeds 0 to N-1; default 8, --quick 1), or seeds as ibframe "
        "train takes them (4-7, 0-3,7): runs trained by another process into the same --out "
        "are reused, so seeds can be trained in parallel and tabulated together",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    seeds = seed_list(args.seeds, default=1 if args.quick else 8)
    train = _common.settings(
        args,
        quick={"epochs": 3, "samples": 300, "draws": 0},
        full={"epochs": 128, "draws": 0},
    )
    train.setdefault("record", f"0,{train['epochs']}")
    source = _common.mnist_source(args)
    data = _common.mnist_dataset(source)
    print(f"MNIST data: {data.name}, {data.description}")
    errors: dict[str, list[int]] = {name: [] for name in MODELS}
    cosine: dict[str, list[np.ndarray]] = {name: [] for name in MODELS}
    test_size = 0
    for seed in seeds:
        paths = {}
        for name, (experiment, beta, _) in MODELS.items():
            extra = {} if beta is None else {"beta": beta}
            paths[name] = _common.run_store(args.out, experiment, data=source, seed=seed, **extra, **train)
            count, test_size = test_errors(paths[name], data)
            errors[name].append(count)
        for name, path in paths.items():
            ds = _common.estimate(path, {"cosine-similarity": {"other": str(paths["deterministic"])}},
                                  epochs=[train["epochs"]])
            cosine[name].append(ds)

    fig = Figure(figsize=(11, 3.4), layout="constrained")
    layers = list(cosine["deterministic"][0]["layer"].values)
    axes = fig.subplots(1, len(layers), sharey=True)
    for name in MODELS:
        if name == "deterministic":
            continue
        first = cosine[name][0]
        edges = first["cosine_bin_bounds"].values
        for ax, layer in zip(axes, layers, strict=True):
            density = np.mean([ds["cosine_density"].sel(layer=layer).values[0] for ds in cosine[name]], axis=0)
            ax.stairs(density, np.append(edges[:, 0], edges[-1, 1]), label=name)
            ax.set(title=f"layer {layer}", xlim=(-0.2, 1))
    fig.supxlabel("cosine similarity to the deterministic model")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize="x-small")
    fig.suptitle(f"Fig. 3: cosine similarity to the deterministic CNN, epoch {train['epochs']}, {len(seeds)} seed(s)")
    _common.save(fig, args.out, "fig3_cosine_mnist")

    print(f"Table 1: test errors on {test_size} test inputs of {data.name} (paper: of {PAPER_TEST_SIZE})")
    for name, (_, _, paper) in MODELS.items():
        values = np.asarray(errors[name], dtype=float)
        sd = values.std(ddof=1) if values.size > 1 else float("nan")
        rate = 100 * values.mean() / test_size
        mean, spread = (float(x) for x in paper.split(" ± "))
        _common.compare(
            f"Table 1: {name}, errors (mean ± sd over seeds)",
            f"{paper} of {PAPER_TEST_SIZE} = {100 * mean / PAPER_TEST_SIZE:.2f}% ± {100 * spread / PAPER_TEST_SIZE:.2f}%",
            f"{values.mean():.1f} ± {sd:.1f} of {test_size} = {rate:.2f}% ({values.size} seed(s))",
        )
    for name in MODELS:
        if name == "deterministic":
            continue
        means = ", ".join(
            f"{layer} {np.mean([float(ds['cosine_mean'].sel(layer=layer).values[0]) for ds in cosine[name]]):.2f}"
            for layer in layers
        )
        _common.compare(
            f"Fig. 3: mean cosine similarity, {name}",
            "large (unrelated: mean 0, sd 0.02-0.3); falls as beta grows; lower in layers 2, 3",
            means,
        )
    _common.finish(started)


if __name__ == "__main__":
    main()
