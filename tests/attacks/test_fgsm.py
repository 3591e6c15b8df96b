"""FGSM and its siblings in closed form on linear models, where the gradient's sign is known.

For f(x) = Wx + b and CE, ∇ₓ CE(f(x), y) = Σ_{j≠y} p_j (W_j − W_y): with two classes its sign is
sign(W_{1−y} − W_y), whatever the probabilities; and targeted, ∇ₓ(−CE(f(x), t)) =
Σ_{j≠t} p_j (W_t − W_j).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from advex import ThreatModel
from advex.attacks import FGSM


def linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer


@pytest.fixture
def binary() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Two classes, W₁ − W₀ with no zero entry; 20 interior points; y = the model's label."""
    g = torch.Generator().manual_seed(0)
    sigma = torch.randint(0, 2, (16,), generator=g) * 2.0 - 1
    w = torch.stack([torch.zeros(16), 0.3 * sigma * (0.5 + torch.rand(16, generator=g))])
    x = 0.3 + 0.4 * torch.rand(20, 16, generator=g)
    split = (x @ w[1]).median() + 0.01  # a bias that puts about half the points in each class
    model = linear(w, torch.stack([torch.tensor(0.0), -split]))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    assert 0 < int(y.sum()) < 20, "both classes should occur"
    return model, x, y


def test_fgsm_linf_is_x_plus_eps_sign_exactly(binary) -> None:
    model, x, y = binary
    w = model.weight.detach()
    direction = torch.sign(w[1 - y] - w[y])  # per sample: toward the other class
    eps = 0.1
    res = FGSM(ThreatModel("linf", eps))(model, x, y)
    assert torch.equal(res.x_adv, x + eps * direction)
    assert res.distance.tolist() == pytest.approx([eps] * 20, abs=1e-6)
    # one gradient, one step per sample
    assert res.gradients.tolist() == [1] * 20 and res.steps.tolist() == [1] * 20


def test_fgsm_linf_clips_at_the_box(binary) -> None:
    model, x, y = binary
    w = model.weight.detach().clone()
    w[:, :4] *= 1e-3  # light weights: moving these inputs to a bound keeps every label
    model = linear(w, model.bias.detach())
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    direction = torch.sign(w[1 - y] - w[y])
    x = x.clone()
    x[:, :4] = torch.where(direction[:, :4] > 0, 0.97, 0.02)  # the step would leave the box
    with torch.no_grad():
        assert torch.equal(model(x).argmax(dim=1), y)
    unclipped = x + 0.1 * direction
    assert int(((unclipped < 0) | (unclipped > 1)).sum()) == 4 * len(x)
    res = FGSM(ThreatModel("linf", 0.1))(model, x, y)
    assert torch.equal(res.x_adv, unclipped.clamp(0, 1))


def test_fgsm_l2_is_x_plus_eps_normalized_gradient(binary) -> None:
    model, x, y = binary
    w = model.weight.detach()
    g = w[1 - y] - w[y]
    eps = 0.3
    res = FGSM(ThreatModel("l2", eps))(model, x, y)
    want = x + eps * g / g.norm(dim=1, keepdim=True)
    assert bool(((want > 0) & (want < 1)).all()), "the test wants interior points"
    torch.testing.assert_close(res.x_adv, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.distance, torch.full((20,), eps), atol=1e-6, rtol=0)


def test_fgsm_l1_is_the_sparse_sign_step(binary) -> None:
    model, x, y = binary
    w = model.weight.detach()
    g = w[1 - y] - w[y]
    eps, k = 0.4, 2  # sparsity 0.9 on 16 inputs: the top ceil(1.6) = 2 coordinates
    res = FGSM(ThreatModel("l1", eps), l1_sparsity=0.9)(model, x, y)
    top = g.abs().topk(k, dim=1).indices
    step = torch.zeros_like(g).scatter_(1, top, 1.0) * g.sign() * eps / k
    torch.testing.assert_close(res.x_adv, x + step, atol=1e-6, rtol=0)


def test_fgsm_l0_maximizes_the_linearized_loss(binary) -> None:
    """⟨∇, δ⟩ equals the brute-force maximum over supports of size k with δ_i at the bound."""
    model, x, y = binary
    x = x[:, :6].contiguous()
    x[:, 0] = 1.0  # a coordinate on the bound: no room upward
    w6 = model.weight.detach()[:, :6]
    model = linear(w6, torch.stack([torch.tensor(0.0), -(x @ w6[1]).median() - 0.01]))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    assert 0 < int(y.sum()) < len(y)
    w = model.weight.detach()
    g = w[1 - y] - w[y]  # ∝ the CE gradient (positive factor p_{1−y})
    lo, hi = -x, 1 - x
    for k in (1, 2, 4):
        res = FGSM(ThreatModel("l0", k))(model, x, y)
        delta = res.x_adv - x
        assert bool((res.distance <= k).all())
        got = (g * delta).sum(1)
        gain = torch.maximum(g * lo, g * hi)  # best linear gain per coordinate, at a bound
        best = torch.tensor(
            [
                max(float(gain[i, list(s)].sum()) for s in itertools.combinations(range(6), k))
                for i in range(len(x))
            ]
        )
        torch.testing.assert_close(got, best, atol=1e-6, rtol=1e-6)


@pytest.fixture
def three_class() -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """W = [0; σc; −σc], class 0 favoured by its bias: every x is classified 0."""
    g = torch.Generator().manual_seed(1)
    sigma = torch.randint(0, 2, (16,), generator=g) * 2.0 - 1
    c = 0.1 * (0.5 + torch.rand(16, generator=g))
    w = torch.stack([torch.zeros(16), sigma * c, -sigma * c])
    model = linear(w, torch.tensor([3.0, 0.0, 0.0]))
    x = 0.3 + 0.4 * torch.rand(12, 16, generator=g)
    y = torch.zeros(12, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(dim=1), y)
    return model, x, y, sigma


def test_fgsm_targeted_moves_toward_the_target(three_class) -> None:
    """Toward t = 1 the gradient of −CE(z, 1) is p₀σc + 2p₂σc: sign +σ; toward t = 2: −σ."""
    model, x, y, sigma = three_class
    target = torch.tensor([1, 2] * 6)
    eps = 0.1
    res = FGSM(ThreatModel("linf", eps, targeted=True))(model, x, y, target)
    direction = torch.where(target.unsqueeze(1) == 1, sigma, -sigma)
    assert torch.equal(res.x_adv, x + eps * direction)
    # the two targets move in opposite directions, each raising its own logit
    w = model.weight.detach()
    delta = res.x_adv - x
    assert bool(((delta * w[target]).sum(1) > 0).all())
    assert torch.equal(delta[0].sign(), -delta[1].sign())
    # the same thing said generically: targeted FGSM *descends* CE(·, t), x − ε·sign(∇CE(x, t))
    xg = x.clone().requires_grad_(True)
    ce_t = torch.nn.functional.cross_entropy(model(xg), target, reduction="sum")
    (grad,) = torch.autograd.grad(ce_t, xg)
    assert torch.equal(res.x_adv, x - eps * grad.sign())


def test_fgsm_untargeted_three_classes(three_class) -> None:
    """Untargeted: ∇ CE(z, 0) = (p₁ − p₂)σc, so the sign is sign(z₁ − z₂)·σ."""
    model, x, y, sigma = three_class
    with torch.no_grad():
        z = model(x)
    direction = torch.sign(z[:, 1] - z[:, 2]).unsqueeze(1) * sigma
    assert bool((direction != 0).all())
    res = FGSM(ThreatModel("linf", 0.1))(model, x, y)
    assert torch.equal(res.x_adv, x + 0.1 * direction)


def test_fgsm_margin_loss_gives_the_same_linf_step(binary) -> None:
    model, x, y = binary
    a = FGSM(ThreatModel("linf", 0.1))(model, x, y)
    b = FGSM(ThreatModel("linf", 0.1), loss="margin")(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: FGSM(ThreatModel("linf")), ValueError, "eps"),
        (lambda: FGSM("linf"), TypeError, "threat"),  # type: ignore[arg-type]
        (lambda: FGSM(ThreatModel("linf", 0.1), batch_size=0), ValueError, "batch_size"),
        (lambda: FGSM(ThreatModel("linf", 0.1), batch_size=-2), ValueError, "batch_size"),
        (lambda: FGSM(ThreatModel("linf", 0.1), loss="hinge"), ValueError, "loss"),
        (lambda: FGSM(ThreatModel("linf", 0.1), seed=1.5), ValueError, "seed"),  # type: ignore
    ],
)
def test_fgsm_constructor_errors(build, error, match) -> None:
    with pytest.raises(error, match=match):
        build()


def test_fgsm_step_is_bounded_by_eps_even_at_a_tiny_eps(binary) -> None:
    model, x, y = binary
    eps = 1e-4
    res = FGSM(ThreatModel("l2", eps))(model, x, y)
    assert float(res.distance.max()) <= eps * (1 + 1e-5) + 1e-6
    assert not math.isnan(float(res.distance.sum()))
