"""Test helpers shared by the black-box attack tests: a model wrapper that records every point
it is asked about, and a linear binary classifier with a closed-form minimal perturbation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Recorder(nn.Module):
    """Passes inputs to ``module``; keeps every batch it saw (``points``: how many inputs)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.module(x)

    @property
    def points(self) -> int:
        return sum(len(b) for b in self.inputs)

    rows = points


class Binary(nn.Module):
    """Logits (−s/2, s/2), s = w·x + b: class 1 iff s > 0; the closest adversarial point of x
    is at L2 distance |s|/‖w‖₂, along −sign(s)·w (the box permitting)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = torch.randn(d, generator=torch.Generator().manual_seed(0))
        self.b = -float(self.w.sum()) / 2  # the boundary passes through the middle of [0, 1]^d

    def s(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: Tensor) -> Tensor:
        s = self.s(x)[:, None] / 2
        return torch.cat([-s, s], dim=1)


class RowMLP(nn.Module):
    """A 64-16-10 MLP whose logits for a row do not depend on the other rows of the batch
    (products and sums per row; ``nn.Linear`` may round differently for other batch sizes)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.randn(16, 64, generator=g) / 8
        self.w2 = torch.randn(10, 16, generator=g) / 4

    def forward(self, x: Tensor) -> Tensor:
        h = (x.flatten(1)[:, None, :] * self.w1).sum(-1).relu()
        return (h[:, None, :] * self.w2).sum(-1)
