"""Network extraction for the certifiers: same function as the module, exact matrices, clear
errors for what cannot be encoded."""

from __future__ import annotations

import pytest
import torch
from certify_nets import randomize_batchnorm
from torch import nn

from advex import zoo
from advex.certify.network import (
    Affine,
    Conv,
    Dense,
    MaxPool,
    Network,
    ReLU,
    Scale,
    UnsupportedLayerError,
)
from advex.model import Classifier


def _everything() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, stride=2),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 6, 2, groups=2),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=1),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(6, 5),
            nn.BatchNorm1d(5),
            nn.ReLU(),
            nn.Linear(5, 3),
        )
    )


@pytest.mark.parametrize("name", ["mnist_mlp", "mnist_cnn", "digits_mlp"])
def test_zoo_models_are_read_exactly(name: str) -> None:
    clf = zoo.load(name)
    net = Network.from_module(clf)
    x = torch.rand(4, *net.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = clf.module.double()(x.double())
    clf.module.float()
    assert torch.allclose(net(x), expected, atol=1e-10)


def test_every_supported_layer_with_normalization_folded() -> None:
    module = _everything()
    clf = Classifier(module, mean=[0.3, 0.5], std=[0.2, 0.4])
    net = Network.from_module(clf, (2, 13, 13))
    kinds = [type(layer) for layer in net.layers]
    # BatchNorm folded into the conv and the linear layer before it; the normalization stays
    # a Scale (the first conv is padded, so folding it in would change the border).
    assert kinds == [Scale, Conv, ReLU, Conv, Conv, ReLU, MaxPool, Dense, ReLU, Dense]
    x = torch.rand(5, 2, 13, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = clf.double()(x.double())
    assert torch.allclose(net(x), expected, atol=1e-12)
    assert net.num_relus() == 4 * 7 * 7 + 6 * 2 * 2 + 5


def test_normalization_is_folded_into_a_dense_or_unpadded_conv_layer() -> None:
    torch.manual_seed(2)
    for module, shape in [
        (nn.Sequential(nn.Flatten(), nn.Linear(18, 4), nn.ReLU(), nn.Linear(4, 3)), (2, 3, 3)),
        (nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)), (2, 3, 3)),
    ]:
        clf = Classifier(module.eval(), mean=[0.3, 0.5], std=[0.2, 0.4])
        net = Network.from_module(clf, shape)
        assert not any(isinstance(layer, Scale) for layer in net.layers)
        x = torch.rand(6, *shape)
        with torch.no_grad():
            assert torch.allclose(net(x), clf.double()(x.double()), atol=1e-12)


# The affine layers of _everything() with its normalization (layer list in the test above):
# Scale, Conv (BatchNorm folded in), Conv (average pooling), grouped Conv, Dense, Dense.
@pytest.mark.parametrize("index", [0, 1, 3, 4, 7, 9])
def test_matrix_and_backward_agree_with_forward(index: int) -> None:
    clf = Classifier(_everything(), mean=[0.3, 0.5], std=[0.2, 0.4])
    layer = Network.from_module(clf, (2, 13, 13)).layers[index]
    assert isinstance(layer, Affine)
    g = torch.Generator().manual_seed(index)
    a = torch.tensor(layer.matrix().toarray())
    v = torch.randn(3, layer.in_size, generator=g, dtype=torch.float64)
    lam = torch.randn(2, 4, layer.out_size, generator=g, dtype=torch.float64)
    assert torch.allclose(layer.apply(v), v @ a.T, atol=1e-12)
    assert torch.allclose(layer.backward(lam), lam @ a, atol=1e-12)
    assert torch.allclose(layer.abs_apply(v.abs()), v.abs() @ a.abs().T, atol=1e-12)
    lo, hi = layer.interval(v - 0.1, v + 0.1)
    corners = v + 0.1 * torch.sign(torch.randn(50, *v.shape, generator=g, dtype=torch.float64))
    out = layer.forward(corners.reshape(-1, layer.in_size)).reshape(50, 3, -1)
    assert bool((out >= lo - 1e-12).all()) and bool((out <= hi + 1e-12).all())


def test_strided_conv_backward_with_skipped_border() -> None:
    """A stride that skips the last row: the transpose must restore the full input size."""
    conv = Conv(torch.randn(2, 1, 2, 2), torch.randn(2), in_shape=(1, 6, 6), stride=(3, 3))
    a = torch.tensor(conv.matrix().toarray())
    lam = torch.randn(3, conv.out_size, dtype=torch.float64)
    assert torch.allclose(conv.backward(lam), lam @ a, atol=1e-12)


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (nn.Sigmoid(), "Sigmoid"),
        (nn.MaxPool2d(2, padding=1), "max pooling"),
        (nn.Conv2d(1, 1, 3, dilation=2), "dilation"),
        (nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "zero"),
    ],
)
def test_unsupported_layers_are_named(layer: nn.Module, match: str) -> None:
    module = nn.Sequential(nn.Conv2d(1, 1, 1), layer, nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UnsupportedLayerError, match=match):
        Network.from_module(module, (1, 8, 8))


def test_non_sequential_container_is_refused() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="Residual"):
        Network.from_module(nn.Sequential(Residual(), nn.Linear(4, 2)), (4,))


def test_missing_input_shape_and_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        Network.from_module(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(UnsupportedLayerError, match="expects 5 inputs"):
        Network.from_module(nn.Sequential(nn.Linear(5, 2)), (4,))
    with pytest.raises(UnsupportedLayerError, match="affine"):
        Network([ReLU((3,))], (3,))
