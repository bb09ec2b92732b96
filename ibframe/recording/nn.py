"""Noisy networks: the Gaussian noise module, the paper's models, and noise control.

A noisy network adds Z_l ~ N(0, beta^2 I) after each hidden layer: T_l = S_l + Z_l with
S_l = f_l(T_{l-1}) (DESIGN.md §1). Here the noise is a module, :class:`GaussianNoise`, placed
right after the block whose output is S_l, so that a forward hook on that block sees S_l before
the noise, and the next block receives the noisy T_l.

Every builder returns a :class:`NoisyNetwork`: the ``torch.nn.Module`` plus, for each hidden
layer, the qualified names of the module whose output is S_l and of its noise module. That is
what :class:`ibframe.recording.recorder.Recorder` needs, and what a user gives it for a model of their own.

The models follow Goldfeld et al. (ICML 2019): the SZT network of Section 5.1, the spiral network
of Appendix B.2, the MNIST CNN of Appendix B.3, the single tanh neuron of Section 4 and the
two-neuron leaky-ReLU network of Appendix A.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ibframe.store.layout import NoiseRelation

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "linear": nn.Identity,
}


class GaussianNoise(nn.Module):
    """Add N(0, beta^2 I) noise, drawn afresh on every forward pass.

    Like dropout, the noise is active in training mode and the module is the identity in
    ``eval()`` mode, so that a trained network can be evaluated deterministically, as in the
    paper's MNIST set-up (Appendix B.3). ``always_on=True`` keeps the noise in ``eval()`` mode too,
    for evaluating the noisy network itself. The recorder does not rely on either: it replaces the
    noise with draws from its own generator (:func:`controlled_noise`).

    Parameters
    ----------
    beta
        Standard deviation of the noise; 0 makes the module the identity.
    always_on
        Add noise in ``eval()`` mode as well.
    """

    def __init__(self, beta: float, *, always_on: bool = False) -> None:
        super().__init__()
        if not math.isfinite(beta) or beta < 0:
            msg = f"beta must be a finite number >= 0, got {beta!r}"
            raise ValueError(msg)
        self.beta = float(beta)
        self.always_on = always_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta == 0 or not (self.training or self.always_on):
            return x
        return x + self.beta * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}" + (", always_on=True" if self.always_on else "")


@contextlib.contextmanager
def controlled_noise(
    model: nn.Module, modules: Iterable[str], beta: float, generator: torch.Generator
) -> Iterator[None]:
    """Within the block, make each named noise module return ``x + beta * Z``, Z from ``generator``.

    The noise is added whatever the module's train/eval mode and whatever its own implementation
    (any module whose job is to add N(0, beta^2 I) to its input qualifies), and it is drawn from
    ``generator`` only, so the global torch RNG that drives training is left untouched. Noise is
    drawn in the order the modules run, with the shape of each input, so a batch of n rows gets n
    independent draws.

    Parameters
    ----------
    model
        The network holding the modules.
    modules
        Qualified names (as in ``model.named_modules()``) of the noise modules.
    beta
        Standard deviation of the noise.
    generator
        Source of the noise; must live on the model's device.
    """
    found = dict(model.named_modules())
    targets = []
    for name in modules:
        if name not in found:
            msg = f"the model has no module named {name!r}"
            raise KeyError(msg)
        targets.append(found[name])

    def noisy(x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + beta * z

    for module in targets:
        module.forward = noisy  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in targets:
            del module.forward


@dataclass(frozen=True)
class HiddenLayer:
    """Where one hidden layer's S_l and noise live in a model.

    Attributes
    ----------
    name
        The layer's name in the run store ("h1", "pool1", ...).
    module
        Qualified name of the module whose output is S_l, the pre-noise representation (or, with
        ``pool``, the pre-noise input of that pooling).
    noise
        Qualified name of the noise module that turns S_l into T_l, or None.
    shape
        Shape of S_l for one sample: ``(units,)`` or ``(channels, height, width)``.
    activation
        The nonlinearity that produces S_l ("tanh", "relu", "linear", "leaky_relu").
    kind
        "dense" or "conv".
    description
        What the layer is, in words (e.g. which of the paper's layers); kept in the run store's
        layer attributes and shown by ``ibframe info``.
    pool
        Qualified name of a pooling module that follows the noise, or None. The layer is then
        T_l = pool(output of ``module`` + Z_l) and its recorded S_l is pool(output of ``module``),
        the noiseless pooled value; T_l is not S_l + Gaussian noise (:attr:`noise_relation`).
    """

    name: str
    module: str
    noise: str | None
    shape: tuple[int, ...]
    activation: str
    kind: Literal["dense", "conv"] = "dense"
    description: str = ""
    pool: str | None = None

    @property
    def noise_relation(self) -> NoiseRelation:
        """How T_l follows from S_l: "additive" (S + Z), "before-pooling" (pool(. + Z)) or "none"
        (T_l = S_l); kept as the run store's layer attribute ``noise``."""
        if self.noise is None:
            return "none"
        return "before-pooling" if self.pool is not None else "additive"


@dataclass
class NoisyNetwork:
    """A model together with the names of its hidden layers and noise modules.

    Attributes
    ----------
    model
        The ``torch.nn.Module``.
    layers
        The layers whose S_l are recorded, in forward order (hidden layers, and possibly the
        output layer, which has no noise after it).
    beta
        Noise standard deviation of the :class:`GaussianNoise` modules (0 if deterministic).
    description
        A JSON-able description of the architecture, kept in the run store's ``model`` attribute.
    """

    model: nn.Module
    layers: tuple[HiddenLayer, ...]
    beta: float
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def s_modules(self) -> dict[str, str]:
        """Store layer name -> qualified name of the module whose output is S_l."""
        return {layer.name: layer.module for layer in self.layers}

    @property
    def noise_modules(self) -> list[str]:
        """Qualified names of the noise modules, in forward order."""
        return [layer.noise for layer in self.layers if layer.noise is not None]


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        msg = f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}"
        raise ValueError(msg) from None


def noisy_mlp(widths: Sequence[int], *, beta: float, activation: str = "tanh") -> NoisyNetwork:
    """A fully connected network with Gaussian noise after every hidden activation.

    Hidden layer l is ``fc{l} -> act{l} -> noise{l}``; S_l is the output of ``act{l}``. The last
    layer ``out`` is linear and noiseless and returns logits (the softmax lives in the
    cross-entropy loss). Weights use PyTorch's default initialisation.

    Parameters
    ----------
    widths
        Layer widths from input to output, e.g. ``(12, 10, 7, 5, 4, 3, 2)``.
    beta
        Noise standard deviation; 0 gives a deterministic network (no noise modules).
    activation
        Hidden nonlinearity: "tanh", "relu" or "linear".
    """
    if len(widths) < 3:
        msg = f"an MLP needs an input, at least one hidden and an output width, got {widths}"
        raise ValueError(msg)
    model = nn.Sequential()
    layers = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths[:-1]), 1):
        model.add_module(f"fc{i}", nn.Linear(fan_in, fan_out))
        model.add_module(f"act{i}", _activation(activation))
        noise = None
        if beta > 0:
            noise = f"noise{i}"
            model.add_module(noise, GaussianNoise(beta))
        layers.append(HiddenLayer(f"h{i}", f"act{i}", noise, (fan_out,), activation))
    model.add_module("out", nn.Linear(widths[-2], widths[-1]))
    description = {
        "architecture": "mlp",
        "widths": [int(w) for w in widths],
        "activation": activation,
        "beta": float(beta),
    }
    return NoisyNetwork(model, tuple(layers), float(beta), description)


def szt_mlp(*, beta: float, activation: str = "tanh") -> NoisyNetwork:
    """The SZT network 12-10-7-5-4-3-2 of Shwartz-Ziv & Tishby (2017), Section 5.1 of the paper.

    Noise after each of the five hidden layers; a 2-way softmax output (logits).
    """
    return noisy_mlp((12, 10, 7, 5, 4, 3, 2), beta=beta, activation=activation)


def spiral_mlp(*, beta: float, activation: str = "tanh") -> NoisyNetwork:
    """The spiral network of Appendix B.2: the SZT architecture with 3 units per hidden layer.

    Two inputs, five hidden layers of 3 units, a 2-way softmax output (2-3-3-3-3-3-2).
    """
    return noisy_mlp((2, 3, 3, 3, 3, 3, 2), beta=beta, activation=activation)


#: The layers :func:`mnist_cnn` can record, the first the default: "pooled", the paper's network
#: (noise before max-pooling) recorded at the paper's layers 1-4; "pre-pool", the same network
#: recorded at the tanh outputs of layers 1 and 2 (each S + Z, for the SP estimator);
#: "noise-after-pool", a variant with the noise after each max-pooling, recorded at the pooled
#: layers, each S + Z.
CNN_LAYER_SETS: tuple[str, ...] = ("pooled", "pre-pool", "noise-after-pool")


def mnist_cnn(
    *,
    beta: float,
    regulariser: Literal["noise", "dropout"] = "noise",
    dropout: float = 0.2,
    input_size: int = 28,
    in_channels: int = 1,
    n_classes: int = 10,
    layers: str = "pooled",
) -> NoisyNetwork:
    """The MNIST CNN of Appendix B.3, with the input size as a parameter.

    conv(16, 5x5, pad 2) - BN - tanh - noise - maxpool 2x2, conv(32, 5x5, pad 2) - BN - tanh -
    noise - maxpool 2x2, FC(128) - BN - tanh - noise, FC(n_classes): the appendix's order, the
    noise (or dropout) on the tanh outputs before each max-pooling. With 28x28 inputs the first FC
    layer has 32x7x7 = 1568 inputs; with the 8x8 digits stand-in it has 32x2x2 = 128.

    ``layers`` chooses what is recorded (docs/recording.md, *The MNIST CNN's layers*):

    * "pooled" (default): the paper's "Layer 1" to "Layer 4", ``pool1`` and ``pool2`` (the
      max-pooled tanh outputs), ``fc3`` (the tanh of the FC layer) and ``logits`` (the output,
      T_4 = S_4). The S of ``pool1``/``pool2`` is the max-pooling of the noiseless tanh output
      (with the noise of the layers before, not its own); the layer itself is
      T = maxpool(tanh + Z), which is not S + Gaussian noise (layer attribute ``noise`` =
      "before-pooling"), so sample propagation does not apply to it without an analysis beta.
    * "pre-pool": the same network, recording the tanh outputs before pooling, ``tanh1`` and
      ``tanh2`` (each T = S + Z), then ``fc3`` and ``logits``.
    * "noise-after-pool": not the paper's network: the noise (or dropout) moves after each
      max-pooling, T_l = maxpool(tanh(...)) + Z_l, and ``pool1``, ``pool2``, ``fc3``, ``logits``
      are recorded, every noisy one S + Z. In ``eval()`` mode, without noise and dropout, all
      three compute the same function with the same parameter names.

    Parameters
    ----------
    beta
        Noise standard deviation with ``regulariser="noise"``; ignored with "dropout".
    regulariser
        "noise" for additive Gaussian noise, "dropout" for dropout with probability ``dropout``
        (the paper's comparison). A dropout network is recorded as deterministic (beta 0): at
        recording time it runs in ``eval()`` mode, where dropout is the identity.
    dropout
        Dropout probability with ``regulariser="dropout"``.
    input_size
        Height and width of the (square) input; must be divisible by 4.
    in_channels, n_classes
        Input channels and output classes.
    layers
        One of :data:`CNN_LAYER_SETS`: "pooled", "pre-pool" or "noise-after-pool".
    """
    if input_size % 4:
        msg = f"input_size must be divisible by 4 (two 2x2 poolings), got {input_size}"
        raise ValueError(msg)
    if regulariser not in ("noise", "dropout"):
        msg = f"regulariser must be 'noise' or 'dropout', got {regulariser!r}"
        raise ValueError(msg)
    if layers not in CNN_LAYER_SETS:
        msg = f"layers must be one of {', '.join(CNN_LAYER_SETS)}, got {layers!r}"
        raise ValueError(msg)
    noisy = regulariser == "noise" and beta > 0
    model = nn.Sequential()

    def regularise(index: int) -> str | None:
        """Add the noise (or dropout) module of layer ``index``; return the noise module's name."""
        if noisy:
            model.add_module(f"noise{index}", GaussianNoise(beta))
            return f"noise{index}"
        if regulariser == "dropout":
            model.add_module(f"dropout{index}", nn.Dropout(dropout))
        return None

    def conv_block(index: int, fan_in: int, channels: int, side: int) -> HiddenLayer:
        """conv - BN - tanh - noise - pool (noise - pool swapped in "noise-after-pool")."""
        model.add_module(f"conv{index}", nn.Conv2d(fan_in, channels, 5, padding=2))
        model.add_module(f"bn{index}", nn.BatchNorm2d(channels))
        model.add_module(f"tanh{index}", nn.Tanh())
        pool, tanh = f"pool{index}", f"tanh{index}"
        pooled_shape = (channels, side // 2, side // 2)
        if layers == "noise-after-pool":
            model.add_module(pool, nn.MaxPool2d(2))
            return HiddenLayer(
                pool, pool, regularise(index), pooled_shape, "tanh", "conv",
                f"paper's Layer {index}: 2x2 max-pooling of tanh(BN(conv)), with the noise moved "
                "after the pooling (not the paper's order)",
            )
        noise = regularise(index)
        model.add_module(pool, nn.MaxPool2d(2))
        if layers == "pre-pool":
            return HiddenLayer(
                tanh, tanh, noise, (channels, side, side), "tanh", "conv",
                f"tanh(BN(conv)) of the paper's Layer {index} before its noise and 2x2 max-pooling",
            )
        return HiddenLayer(
            pool, tanh, noise, pooled_shape, "tanh", "conv",
            f"paper's Layer {index}: 2x2 max-pooling of tanh(BN(conv)); S pools the noiseless "
            "tanh, T pools tanh + noise",
            pool=pool,
        )

    layer1 = conv_block(1, in_channels, 16, input_size)
    layer2 = conv_block(2, 16, 32, input_size // 2)
    side = input_size // 4
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc3", nn.Linear(32 * side * side, 128))
    model.add_module("bn3", nn.BatchNorm1d(128))
    model.add_module("tanh3", nn.Tanh())
    layer3 = HiddenLayer(
        "fc3", "tanh3", regularise(3), (128,), "tanh", "dense",
        "paper's Layer 3: tanh(BN(fully connected 128)), noise after it",
    )
    model.add_module("out", nn.Linear(128, n_classes))
    layer4 = HiddenLayer(
        "logits", "out", None, (n_classes,), "linear", "dense",
        "paper's Layer 4: the logits, the output T_4 = S_4 (no noise after it)",
    )
    effective_beta = float(beta) if noisy else 0.0
    description = {
        "architecture": "mnist-cnn",
        "input_size": input_size,
        "in_channels": in_channels,
        "n_classes": n_classes,
        "regulariser": regulariser,
        "beta": effective_beta,
        "dropout": dropout if regulariser == "dropout" else None,
        "layers": layers,
    }
    return NoisyNetwork(model, (layer1, layer2, layer3, layer4), effective_beta, description)


def single_neuron(*, beta: float = 0.01, w: float = 0.0, b: float = 0.0) -> NoisyNetwork:
    """The single noisy tanh neuron of Section 4: T = tanh(w x + b) + Z, Z ~ N(0, beta^2).

    The neuron is both the hidden layer ("h1", S = tanh(w x + b)) and the output: the model
    returns the noisy T, one value per input, which the squared loss compares with the labels.
    Section 4 starts from w = 0.
    """
    model = nn.Sequential()
    linear = nn.Linear(1, 1)
    with torch.no_grad():
        linear.weight.fill_(w)
        linear.bias.fill_(b)
    model.add_module("fc1", linear)
    model.add_module("act1", nn.Tanh())
    noise = None
    if beta > 0:
        noise = "noise1"
        model.add_module(noise, GaussianNoise(beta))
    model.add_module("flatten", nn.Flatten(0))
    layers = (HiddenLayer("h1", "act1", noise, (1,), "tanh"),)
    description = {"architecture": "single-neuron", "activation": "tanh", "beta": float(beta)}
    return NoisyNetwork(model, layers, float(beta), description)


def leaky_relu_pair(
    *,
    beta: float = 0.01,
    w1: float = -0.5,
    b1: float = 2.5,
    w2: float = -0.5,
    b2: float = -0.2,
    negative_slope: float = 0.1,
) -> NoisyNetwork:
    """The two-neuron leaky-ReLU network of Appendix A.

    T_1 = R(w1 x + b1) + Z_1 and T_2 = R(w2 T_1 + b2) + Z_2 with R(u) = max(u, u/10); the model
    returns T_2, one value per input, for the squared loss. The paper picks its initial
    parameters by hand and shows them only in its Fig. 9(a). The defaults here are ours, chosen so
    that gradient descent (lr 0.001) follows the course the paper describes: w1 < 0 clusters
    X_{1/4} = {5..8} on the flat side of R, w2 < 0 negates layer 1, and b2 grows from -0.2 to about
    0.22, lifting the X_{1/4} bundle across the origin while |w2| shrinks.
    """
    model = nn.Sequential()
    layers = []
    for i, (w, b) in enumerate(((w1, b1), (w2, b2)), 1):
        linear = nn.Linear(1, 1)
        with torch.no_grad():
            linear.weight.fill_(w)
            linear.bias.fill_(b)
        model.add_module(f"fc{i}", linear)
        model.add_module(f"act{i}", nn.LeakyReLU(negative_slope))
        noise = None
        if beta > 0:
            noise = f"noise{i}"
            model.add_module(noise, GaussianNoise(beta))
        layers.append(HiddenLayer(f"h{i}", f"act{i}", noise, (1,), "leaky_relu"))
    model.add_module("flatten", nn.Flatten(0))
    description = {
        "architecture": "leaky-relu-pair",
        "negative_slope": negative_slope,
        "beta": float(beta),
    }
    return NoisyNetwork(model, tuple(layers), float(beta), description)


def weight_matrices(model: nn.Module) -> Iterator[torch.Tensor]:
    """The weights of every linear and convolutional layer, as (out, fan_in) matrix views."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            yield module.weight.view(module.weight.shape[0], -1)


@torch.no_grad()
def orthonormal_step(model: nn.Module, alpha: float) -> None:
    """Pull each weight matrix towards orthonormal rows: W <- W - alpha (W W^T - I) W.

    The secondary update of Cisse et al. (2017) that the paper applies after every gradient step
    (Appendix B.1, alpha = 5e-5 there), to every linear layer and, with the kernel flattened to
    (out, in * k * k), every convolution.
    """
    for w in weight_matrices(model):
        gram = w @ w.T
        gram.diagonal().sub_(1.0)
        w.sub_(alpha * (gram @ w))


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: int = 2,
    max_rotation: float = 10.0,
    max_shear: float = 10.0,
) -> torch.Tensor:
    """Appendix B.3's data augmentation: a fresh random affine map of every image in a batch.

    Each image (n, channels, h, w) is translated by whole pixels drawn uniformly from
    {-max_shift, ..., max_shift} in x and y, rotated by an angle from U(-max_rotation,
    max_rotation) degrees and sheared by an angle from U(-max_shear, max_shear) degrees, with
    bilinear resampling and zeros outside the image; the draws come from ``generator`` alone.
    """
    n, _, h, w = x.shape
    device = generator.device

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=device) * 2 - 1) * math.radians(limit)

    angle, shear = uniform(max_rotation), uniform(max_shear)
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=device)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    theta = torch.zeros(n, 2, 3, device=device)
    # rotation times shear [[1, tan], [0, 1]], in affine_grid's normalised coordinates
    theta[:, 0, 0], theta[:, 0, 1] = cos, cos * tan - sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, sin * tan + cos
    theta[:, 0, 2] = 2.0 * shift[:, 0] / w  # a pixel is 2/w of the normalised width
    theta[:, 1, 2] = 2.0 * shift[:, 1] / h
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
