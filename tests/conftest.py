"""Shared fixtures: tiny fixed-seed models and data that make every test run in seconds on a CPU.

Each fixture seeds its own ``torch.Generator``/global seed inside itself, so a test's result
does not depend on which tests ran before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models: thread start-up costs more than it saves (and 2 shared cores thrash)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(seed: int, d: int = 64, hidden: int = 16, k: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))


@pytest.fixture
def bare_min_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch off the final segment search and the outward margin of minimum-norm attacks
    (tests of the algorithm: the point the attack itself found is returned)."""
    from advex.attacks.base import MinNormAttack

    monkeypatch.setattr(MinNormAttack, "line_search_steps", 0)
    monkeypatch.setattr(MinNormAttack, "boundary_margin", 0.0)


@pytest.fixture
def tiny_mlp() -> nn.Module:
    """Random-weight MLP 1×8×8 → 10 logits (fresh per test, fixed seed)."""
    return _mlp(0)


@pytest.fixture
def tiny_cnn() -> nn.Module:
    """Random-weight CNN 1×8×8 → 10 logits with BatchNorm and Dropout (train/eval matter)."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 8 * 8, 10),
    )


class _Bump(nn.Module):
    """Logits (0, 0.2 − 100·(x − 0.55)²) on one input: class 1 only on |x − 0.55| < 0.0447.

    From x = 0.5 (class 0), sign steps of 0.06 oscillate 0.5 → 0.56 (class 1) → 0.5: a model
    where the last iterate of an attack fails but an earlier one succeeded.
    """

    def forward(self, x: Tensor) -> Tensor:
        z1 = 0.2 - 100 * (x[:, 0] - 0.55) ** 2
        return torch.stack([torch.zeros_like(z1), z1], dim=1)


@pytest.fixture
def bump() -> nn.Module:
    return _Bump()


@pytest.fixture
def images() -> Tensor:
    """16 random images 1×8×8 in [0, 1] on the 8-bit grid (multiples of 1/255)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 1, 8, 8, generator=g)
    return torch.round(x * 255) / 255


@dataclass(frozen=True)
class Digits:
    """A small MLP trained on scikit-learn's 8×8 digits, and held-out samples it gets right."""

    model: nn.Module
    x: Tensor  # (N, 1, 8, 8), on the 8-bit grid
    y: Tensor  # (N,), the model classifies every one correctly
    accuracy: float  # test accuracy of the model, before the filtering above


@pytest.fixture(scope="session")
def digits() -> Digits:
    """Train a 64-32-10 MLP on load_digits for a second; keep 64 test samples it gets right."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x_all = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x_all = torch.round(x_all * 255) / 255
    y_all = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(len(x_all), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_all[train]), y_all[train])
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        pred = model(x_all[test]).argmax(dim=1)
    correct = pred == y_all[test]
    keep = test[correct][:64]
    return Digits(model, x_all[keep], y_all[keep], float(correct.float().mean()))
