"""A small affine classifier and its exact minimal adversarial distance (closed form).

Shared by the minimum-norm attack tests: without a binding box, the smallest ‖δ‖_p that moves
x from class c to class s of z = Wx + b is (z_c − z_s)/‖w_c − w_s‖_q (q the dual norm).
"""

from __future__ import annotations

import math

import torch
from torch import nn

WIDE = (-10.0, 10.0)  # a box that never binds: the linear problem has a closed form
DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}


def linear(classes: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fixed-seed Linear(16 → classes) model, 32 inputs 1×4×4, and its predictions as labels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dual: float) -> torch.Tensor:
    """min_{s≠c} (z_c − z_s)/‖w_c − w_s‖_q: the smallest ‖δ‖_p that reaches another class."""
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    gap = z.gather(1, y[:, None]) - z  # (B, K)
    diff = w[y][:, None, :] - w[None, :, :]  # (B, K, d)
    dist = gap / diff.norm(p=dual, dim=2).clamp_min(1e-12)
    dist[torch.arange(len(y)), y] = math.inf
    return dist.min(dim=1).values
