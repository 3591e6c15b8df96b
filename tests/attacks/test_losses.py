"""Attack losses: definitions, sign conventions, invariances, and targeted orientation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advex.attacks import losses
from advex.attacks.losses import ce, dlr, margin


def _logits(seed: int = 0, b: int = 64, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(b, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    return z, y


def _other_max(z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """max_{j≠label} z_j by a Python loop (independent of the implementation)."""
    rows = []
    for i in range(len(z)):
        rows.append(max(float(z[i, j]) for j in range(z.shape[1]) if j != int(label[i])))
    return torch.tensor(rows, dtype=z.dtype)


def test_ce_definitions() -> None:
    z, y = _logits()
    t = (y + 1) % 10
    torch.testing.assert_close(ce(z, y), F.cross_entropy(z, y, reduction="none"))
    torch.testing.assert_close(ce(z, y, t), -F.cross_entropy(z, t, reduction="none"))
    assert ce(z, y).shape == (64,)


def test_margin_definition_and_sign() -> None:
    z, y = _logits(1)
    t = (y + 3) % 10
    m = margin(z, y)
    torch.testing.assert_close(m, _other_max(z, y) - z[torch.arange(64), y])
    # positive exactly when the point is adversarial (no ties with random float64 logits)
    assert torch.equal(m > 0, z.argmax(1) != y)
    mt = margin(z, y, t)
    torch.testing.assert_close(mt, z[torch.arange(64), t] - _other_max(z, t))
    assert torch.equal(mt > 0, z.argmax(1) == t)
    assert (m > 0).any() and (m < 0).any() and (mt > 0).any() and (mt < 0).any()


def test_margin_kappa_clamps_from_above() -> None:
    z, y = _logits(2)
    for kappa in (0.0, 0.5, 2.0):
        got = margin(z, y, kappa=kappa)
        torch.testing.assert_close(got, margin(z, y).clamp(max=kappa))
        assert float(got.max()) <= kappa
        torch.testing.assert_close(losses.get("margin", kappa=kappa)(z, y, None), got)


def test_dlr_definition_untargeted() -> None:
    z, y = _logits(3)
    s = z.sort(dim=1, descending=True).values
    want = (_other_max(z, y) - z[torch.arange(64), y]) / (s[:, 0] - s[:, 2])
    torch.testing.assert_close(dlr(z, y), want)
    assert torch.equal(dlr(z, y) > 0, z.argmax(1) != y)


def test_dlr_definition_targeted() -> None:
    z, y = _logits(4)
    t = (y + 1) % 10
    s = z.sort(dim=1, descending=True).values
    rows = torch.arange(64)
    want = -(z[rows, y] - z[rows, t]) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2)
    torch.testing.assert_close(dlr(z, y, t), want)


@pytest.mark.parametrize("targeted", [False, True])
def test_dlr_is_shift_and_scale_invariant(targeted: bool) -> None:
    z, y = _logits(5)
    t = (y + 2) % 10 if targeted else None
    g = torch.Generator().manual_seed(6)
    shift = 10 * torch.randn(64, 1, generator=g, dtype=torch.float64)
    scale = torch.rand(64, 1, generator=g, dtype=torch.float64) * 10 + 0.01
    base = dlr(z, y, t)
    torch.testing.assert_close(dlr(z + shift, y, t), base)
    torch.testing.assert_close(dlr(scale * z, y, t), base)
    torch.testing.assert_close(dlr(scale * z + shift, y, t), base)
    # margin and CE are not scale-invariant: the invariance above is a real property of DLR
    assert not torch.allclose(margin(3 * z, y, t), margin(z, y, t))


def test_dlr_needs_enough_classes() -> None:
    z, y = _logits(7, k=2)
    with pytest.raises(ValueError, match="3 classes"):
        dlr(z, y)
    z3, y3 = _logits(7, k=3)
    assert dlr(z3, y3).shape == (64,)
    with pytest.raises(ValueError, match="4 classes"):
        dlr(z3, y3, (y3 + 1) % 3)
    z4, y4 = _logits(7, k=4)
    assert dlr(z4, y4, (y4 + 1) % 4).shape == (64,)


@pytest.mark.parametrize("name", ["ce", "margin", "dlr"])
@pytest.mark.parametrize("targeted", [False, True])
def test_maximizing_the_loss_moves_toward_the_goal(name: str, targeted: bool) -> None:
    """Gradient ascent on the loss through a linear model: targeted raises the target's margin
    until it is predicted; untargeted lowers the true class's margin until it is not.

    Targeted DLR only compares z_t with z_y (Croce & Hein's definition), so for it the goal is
    z_t > z_y rather than t being the top class.
    """
    torch.manual_seed(0)
    w = torch.randn(6, 12, dtype=torch.float64)
    x0 = torch.randn(8, 12, dtype=torch.float64)
    y = (x0 @ w.T).argmax(1)  # correctly classified at the start
    t = (y + 1) % 6 if targeted else None
    loss = losses.get(name)

    def goal_margin(z: torch.Tensor) -> torch.Tensor:
        if targeted and name == "dlr":
            rows = torch.arange(len(z))
            return z[rows, t] - z[rows, y]
        return margin(z, y, t)  # > 0 once the attack succeeded

    x = x0.clone().requires_grad_(True)
    start = goal_margin(x0 @ w.T)
    assert (start < 0).all()
    for _ in range(200):
        (g,) = torch.autograd.grad(loss(x @ w.T, y, t).sum(), x)
        with torch.no_grad():
            x += 0.05 * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    end = goal_margin(x.detach() @ w.T)
    assert (end > start).all()
    assert (end > 0).all()


def test_get() -> None:
    assert losses.get("ce") is ce
    assert losses.get("dlr") is dlr
    assert losses.get("margin") is margin

    def custom(z, y, t):
        return z.sum(1)

    assert losses.get(custom) is custom
    with pytest.raises(ValueError, match="loss"):
        losses.get("hinge")
    assert set(losses.LOSSES) == {"ce", "margin", "dlr"}
