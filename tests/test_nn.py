"""Noise module, model builders, noise control and the orthonormality step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ibframe.recording.nn import (
    GaussianNoise,
    controlled_noise,
    leaky_relu_pair,
    mnist_cnn,
    noisy_mlp,
    orthonormal_step,
    single_neuron,
    spiral_mlp,
    szt_mlp,
    weight_matrices,
)


def test_noise_is_active_in_training_and_identity_in_eval() -> None:
    noise = GaussianNoise(0.5)
    x = torch.zeros(20000, 3)
    noisy = noise(x)
    assert noisy.std().item() == pytest.approx(0.5, rel=0.02)
    assert noisy.mean().item() == pytest.approx(0.0, abs=0.01)
    noise.eval()
    assert torch.equal(noise(x), x)


def test_noise_always_on_and_zero_beta() -> None:
    x = torch.zeros(1000, 2)
    always = GaussianNoise(0.1, always_on=True).eval()
    assert always(x).std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(GaussianNoise(0.0)(x), x)
    with pytest.raises(ValueError, match="beta"):
        GaussianNoise(-1.0)


def test_controlled_noise_is_reproducible_and_leaves_global_rng_alone() -> None:
    net = szt_mlp(beta=0.1)
    model = net.model.eval()
    x = torch.rand(64, 12)
    deterministic = model(x)
    state = torch.random.get_rng_state()
    outputs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        with controlled_noise(model, net.noise_modules, 0.1, generator):
            outputs.append(model(x))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], deterministic)
    # afterwards the modules are GaussianNoise again: identity in eval mode
    assert torch.equal(model(x), deterministic)


def test_controlled_noise_rejects_unknown_module() -> None:
    with (
        pytest.raises(KeyError, match="nope"),
        controlled_noise(nn.Sequential(nn.Tanh()), ["nope"], 0.1, torch.Generator()),
    ):
        pass


def test_eval_network_is_deterministic_and_matches_hand_computation() -> None:
    net = noisy_mlp((12, 6, 4, 2), beta=0.3)
    model = net.model.eval()
    x = torch.rand(32, 12)
    fc1, fc2, out = model.fc1, model.fc2, model.out
    expected = out(torch.tanh(fc2(torch.tanh(fc1(x)))))
    assert torch.equal(model(x), model(x))
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize(
    ("activation", "module_type"), [("tanh", nn.Tanh), ("relu", nn.ReLU), ("linear", nn.Identity)]
)
def test_szt_mlp_architecture(activation: str, module_type: type[nn.Module]) -> None:
    net = szt_mlp(beta=0.005, activation=activation)
    linears = [m for m in net.model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (12, 10), (10, 7), (7, 5), (5, 4), (4, 3), (3, 2)
    ]  # fmt: skip
    modules = dict(net.model.named_modules())
    assert [layer.name for layer in net.layers] == ["h1", "h2", "h3", "h4", "h5"]
    assert [layer.shape for layer in net.layers] == [(10,), (7,), (5,), (4,), (3,)]
    for layer in net.layers:
        assert isinstance(modules[layer.module], module_type)
        assert isinstance(modules[layer.noise], GaussianNoise)
    # the noise comes right after the module whose output is S_l
    names = list(modules)
    for layer in net.layers:
        assert names.index(layer.noise) == names.index(layer.module) + 1
    assert net.description["widths"] == [12, 10, 7, 5, 4, 3, 2]


def test_deterministic_mlp_has_no_noise_modules() -> None:
    net = spiral_mlp(beta=0.0)
    assert net.noise_modules == []
    assert not any(isinstance(m, GaussianNoise) for m in net.model.modules())
    assert [layer.shape for layer in net.layers] == [(3,)] * 5
    assert net.model(torch.rand(5, 2)).shape == (5, 2)


def test_unknown_activation() -> None:
    with pytest.raises(ValueError, match="sigmoid"):
        noisy_mlp((2, 3, 2), beta=0.1, activation="sigmoid")


#: Appendix B.3's module order: the noise on each tanh output, before its max-pooling.
APPENDIX_B3_ORDER = [
    "conv1", "bn1", "tanh1", "noise1", "pool1",
    "conv2", "bn2", "tanh2", "noise2", "pool2",
    "flatten", "fc3", "bn3", "tanh3", "noise3", "out",
]  # fmt: skip


@pytest.mark.parametrize("size", [28, 8])
def test_mnist_cnn_default_is_appendix_b3_recorded_at_the_papers_layers(size: int) -> None:
    net = mnist_cnn(beta=0.1, input_size=size)
    model = net.model
    assert [name for name, _ in model.named_children()] == APPENDIX_B3_ORDER
    assert model.conv1.kernel_size == (5, 5) and model.conv1.padding == (2, 2)
    assert model.conv1.out_channels == 16 and model.conv2.out_channels == 32
    assert model.fc3.in_features == 32 * (size // 4) ** 2 and model.fc3.out_features == 128
    assert [(layer.name, layer.module, layer.noise, layer.pool) for layer in net.layers] == [
        ("pool1", "tanh1", "noise1", "pool1"),
        ("pool2", "tanh2", "noise2", "pool2"),
        ("fc3", "tanh3", "noise3", None),
        ("logits", "out", None, None),
    ]
    assert [layer.noise_relation for layer in net.layers] == [
        "before-pooling", "before-pooling", "additive", "none"]
    assert [layer.shape for layer in net.layers] == [
        (16, size // 2, size // 2),
        (32, size // 4, size // 4),
        (128,),
        (10,),
    ]
    assert [layer.kind for layer in net.layers] == ["conv", "conv", "dense", "dense"]
    assert model.eval()(torch.rand(3, 1, size, size)).shape == (3, 10)


def test_mnist_cnn_layer_sets_share_parameters_and_differ_in_what_they_record() -> None:
    pre = mnist_cnn(beta=0.1, input_size=8, layers="pre-pool")
    assert [name for name, _ in pre.model.named_children()] == APPENDIX_B3_ORDER
    assert [(layer.name, layer.shape, layer.noise_relation) for layer in pre.layers] == [
        ("tanh1", (16, 8, 8), "additive"), ("tanh2", (32, 4, 4), "additive"),
        ("fc3", (128,), "additive"), ("logits", (10,), "none")]
    after = mnist_cnn(beta=0.1, input_size=8, layers="noise-after-pool")
    assert [name for name, _ in after.model.named_children()] == [
        "conv1", "bn1", "tanh1", "pool1", "noise1",
        "conv2", "bn2", "tanh2", "pool2", "noise2",
        "flatten", "fc3", "bn3", "tanh3", "noise3", "out",
    ]  # fmt: skip
    assert [(layer.name, layer.module, layer.noise_relation) for layer in after.layers] == [
        ("pool1", "pool1", "additive"), ("pool2", "pool2", "additive"),
        ("fc3", "tanh3", "additive"), ("logits", "out", "none")]
    default = mnist_cnn(beta=0.1, input_size=8)
    assert pre.model.state_dict().keys() == default.model.state_dict().keys()
    assert after.model.state_dict().keys() == default.model.state_dict().keys()
    with pytest.raises(ValueError, match="pooled, pre-pool, noise-after-pool"):
        mnist_cnn(beta=0.1, layers="after")


def _s_and_t(layers: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1's S as its ``HiddenLayer`` defines it, and the T that conv2 receives."""
    torch.manual_seed(0)
    net = mnist_cnn(beta=0.1, input_size=8, layers=layers)
    layer = net.layers[0]
    seen: dict[str, torch.Tensor] = {}
    net.model.get_submodule(layer.module).register_forward_hook(
        lambda _m, _i, out: seen.setdefault("s", out))
    net.model.conv2.register_forward_pre_hook(lambda _m, args: seen.setdefault("t", args[0]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad(), controlled_noise(net.model.eval(), net.noise_modules, 0.1, generator):
        net.model(torch.rand(200, 1, 8, 8, generator=generator))
        s = seen["s"] if layer.pool is None else net.model.get_submodule(layer.pool)(seen["s"])
    return s, seen["t"]


def test_with_the_noise_after_pooling_layer_1_is_s_plus_gaussian_noise() -> None:
    s, t = _s_and_t("noise-after-pool")
    assert s.shape == t.shape == (200, 16, 4, 4)
    z = (t - s).flatten()
    # T_1 - S_1 is N(0, 0.1^2) noise: mean 0 (51,200 draws: se 4.4e-4), sd 0.1, symmetric
    assert abs(float(z.mean())) < 2e-3 and float(z.std()) == pytest.approx(0.1, rel=0.02)
    assert float((z > 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_the_papers_pooled_layer_is_not_s_plus_gaussian_noise() -> None:
    s, t = _s_and_t("pooled")
    assert s.shape == t.shape == (200, 16, 4, 4)
    # S is the max-pooling of the noiseless tanh; T the max of noisy values: T - S is biased up,
    # not zero-mean Gaussian noise (hence the layer attribute noise = "before-pooling")
    z = (t - s).flatten()
    assert float(z.mean()) > 0.02 and float((z > 0).float().mean()) > 0.6


def test_mnist_cnn_dropout_variant_is_recorded_deterministically() -> None:
    net = mnist_cnn(beta=0.1, regulariser="dropout")
    assert net.beta == 0.0 and net.noise_modules == []
    dropouts = [m for m in net.model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.2 for m in dropouts)
    order = [name for name, _ in net.model.named_children()]
    assert order.index("dropout1") == order.index("pool1") - 1  # where the noise is: before pooling
    with pytest.raises(ValueError, match="divisible by 4"):
        mnist_cnn(beta=0.1, input_size=10)


def test_single_neuron_starts_at_zero_weight() -> None:
    net = single_neuron()
    assert net.beta == 0.01
    assert net.model.fc1.weight.item() == 0.0
    out = net.model.eval()(torch.tensor([[-3.0], [3.0]]))
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.zeros(2))


def test_leaky_relu_pair() -> None:
    net = leaky_relu_pair(beta=0.0, w1=-1.0, b1=2.0, w2=1.0, b2=0.0)
    x = torch.tensor([[1.0], [5.0]])
    # R(u) = max(u, u/10): layer 1 gives R(-1 + 2) = 1 and R(-5 + 2) = -0.3, layer 2 R(1) = 1
    # and R(-0.3) = -0.03
    torch.testing.assert_close(net.model(x), torch.tensor([1.0, -0.03]))
    assert [layer.name for layer in net.layers] == ["h1", "h2"]


@torch.no_grad()
def _orthonormality_gap(model: nn.Module) -> list[float]:
    gaps = []
    for w in weight_matrices(model):
        gram = w @ w.T
        gaps.append(float(torch.linalg.norm(gram - torch.eye(len(gram)))))
    return gaps


def test_orthonormal_step_reduces_the_gap() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.Linear(10, 7), nn.Conv2d(2, 3, 3))
    before = _orthonormality_gap(model)
    for _ in range(20):
        orthonormal_step(model, 0.05)
    after = _orthonormality_gap(model)
    assert all(a < b for a, b in zip(after, before, strict=True))


def test_orthonormal_step_leaves_orthonormal_rows_alone() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4)[:3])
    orthonormal_step(layer, 0.1)
    torch.testing.assert_close(layer.weight, torch.eye(4)[:3])


def test_random_affine_pure_shifts_move_images_by_whole_pixels():
    from ibframe.recording.nn import random_affine

    x = torch.zeros(64, 1, 12, 12)
    x[:, 0, 5, 6] = 1.0  # one bright pixel
    out = random_affine(x, torch.Generator().manual_seed(0), max_rotation=0.0, max_shear=0.0)
    moved = [tuple(torch.nonzero(img[0] > 0.5)[0].tolist()) for img in out]
    shifts = {(r - 5, c - 6) for r, c in moved}
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(64))  # exact copies, nothing lost
    assert shifts <= {(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)}
    assert len(shifts) > 10  # draws cover many of the 25 shifts


def test_random_affine_rotates_and_shears_within_the_paper_ranges():
    from ibframe.recording.nn import random_affine

    x = torch.zeros(200, 1, 28, 28)
    x[:, 0, 4:24, 13:15] = 1.0  # a vertical bar through the centre
    out = random_affine(x, torch.Generator().manual_seed(1), max_shift=0)
    # tilt of the bar from the centroid of its top and bottom halves
    rows = torch.arange(28.0)[:, None]
    cols = torch.arange(28.0)[None, :]
    tilts = []
    for img in out[:, 0]:
        top, bottom = img[:14], img[14:]
        ct = (top * cols).sum() / top.sum()
        cb = (bottom * cols).sum() / bottom.sum()
        rt = (top * rows[:14]).sum() / top.sum()
        rb = (bottom * rows[14:]).sum() / bottom.sum()
        tilts.append(math.degrees(math.atan2(float(cb - ct), float(rb - rt))))
    tilts = torch.tensor(tilts)
    # rotation and shear of up to 10 degrees each tilt a vertical bar by up to ~20 degrees
    assert tilts.abs().max() < 21
    assert tilts.std() > 3  # and they vary
    same = random_affine(x, torch.Generator().manual_seed(1), max_shift=0)
    assert torch.equal(out, same)  # seeded


def test_mnist_training_augments_only_when_asked(tmp_path):
    from ibframe.recording.experiments import BUILTIN_EXPERIMENTS, train

    spec = BUILTIN_EXPERIMENTS["mnist-cnn"]
    assert spec.defaults.augment and spec.augment is not None
    calls = []

    def counting(x, generator):
        calls.append(x.shape[0])
        return spec.augment(x, generator)

    import dataclasses

    counted = dataclasses.replace(spec, augment=counting)
    train(counted, out=tmp_path / "a.zarr", epochs=1, samples=64, record="all", draws=0,
          data="sklearn-digits")
    assert calls
    calls.clear()
    train(counted, out=tmp_path / "b.zarr", epochs=1, samples=64, record="all", draws=0,
          augment=False, data="sklearn-digits")
    assert calls == []
