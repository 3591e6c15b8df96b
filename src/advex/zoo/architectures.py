"""Small architectures for the shipped models: plain ``nn.Sequential`` stacks that output logits.

Each architecture is an ``nn.Sequential`` subclass with named layers (so state-dict keys read
``conv1.weight``, ``fc2.bias``, ...) and two class attributes, ``input_shape`` (C, H, W) and
``num_classes``. Being a flat sequence of affine layers, ReLUs, pooling and a flatten, each can be
read layer by layer by the certification code. None ends in a softmax: attacks expect logits.

The registry ``ARCHITECTURES`` maps a name to its class; ``build(name)`` makes a fresh,
randomly initialized instance (seed the global generator first for reproducible weights).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

from torch import nn

__all__ = [
    "ARCHITECTURES",
    "DigitsMLP",
    "MnistCNN",
    "MnistCNNWide",
    "MnistMLP",
    "ZooNet",
    "build",
]


class ZooNet(nn.Sequential):
    """Base of the zoo architectures: a named sequence of layers mapping (B, C, H, W) to logits."""

    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10


class MnistCNN(ZooNet):
    """Small CNN for 1×28×28 MNIST digits (162,710 parameters).

    conv1 3×3 1→16 (pad 1) → ReLU → max-pool 2 → conv2 3×3 16→32 (pad 1) → ReLU → max-pool 2
    → flatten (32·7·7 = 1568) → fc1 1568→100 → ReLU → fc2 100→10.
    """

    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, 16, kernel_size=3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(16, 32, kernel_size=3, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(32 * 7 * 7, 100)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(100, 10)),
                ]
            )
        )


class MnistCNNWide(ZooNet):
    """The small CNN at twice the width, for adversarial training (648,226 parameters).

    conv1 3×3 1→32 (pad 1) → ReLU → max-pool 2 → conv2 3×3 32→64 (pad 1) → ReLU → max-pool 2
    → flatten (64·7·7 = 3136) → fc1 3136→200 → ReLU → fc2 200→10. Robustness at L∞ ε = 0.3
    needs capacity (Madry et al. 2018, section 4): at the width of ``MnistCNN`` PGD training
    on mnist5k stalls near 70% robust accuracy under AutoAttack-grade evaluation.
    """

    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, 32, kernel_size=3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(32, 64, kernel_size=3, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(64 * 7 * 7, 200)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(200, 10)),
                ]
            )
        )


class MnistMLP(ZooNet):
    """Fully connected 784-100-100-10 ReLU network for 1×28×28 MNIST digits."""

    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(784, 100)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(100, 100)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(100, 10)),
                ]
            )
        )


class DigitsMLP(ZooNet):
    """Fully connected 64-32-10 ReLU network for the 1×8×8 scikit-learn digits."""

    input_shape: ClassVar[tuple[int, int, int]] = (1, 8, 8)
    num_classes: ClassVar[int] = 10

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(64, 32)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(32, 10)),
                ]
            )
        )


#: name → architecture class.
ARCHITECTURES: dict[str, type[ZooNet]] = {
    "mnist_cnn": MnistCNN,
    "mnist_cnn_wide": MnistCNNWide,
    "mnist_mlp": MnistMLP,
    "digits_mlp": DigitsMLP,
}


def build(name: str) -> ZooNet:
    """A freshly initialized instance of the architecture ``name``.

    Raises:
        ValueError: ``name`` is not in ``ARCHITECTURES``.
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            f"architecture: unknown name {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[name]()
