"""JSMA: the saliency pair search, linear models where the salient pixels are known, budgets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advex import ThreatModel
from advex.attacks.jsma import JSMA, _best_pairs

TARGETED = ThreatModel("l0", targeted=True)


def linear(w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), layer)


def brute_force(alpha, beta, domain):
    """Best admissible score over all pairs p ≠ q in the domain (0 if none)."""
    n = alpha.shape[1]
    a = alpha[:, :, None] + alpha[:, None, :]
    b = beta[:, :, None] + beta[:, None, :]
    inside = domain[:, :, None] & domain[:, None, :] & ~torch.eye(n, dtype=torch.bool)
    ok = (a > 0) & (b < 0) & inside
    return torch.where(ok, a * -b, torch.zeros(())).flatten(1).max(dim=1).values


def test_pair_search_is_exact() -> None:
    """The Pareto-layer search finds the same best score as the full (n, n) map, ties included."""
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(3, 50, (1,), generator=g))
        alpha = torch.randn(6, n, generator=g)
        beta = torch.randn(6, n, generator=g) + torch.randn(1, generator=g)
        if trial % 2:  # coarse values: many ties
            alpha, beta = (alpha * 2).round() / 2, (beta * 2).round() / 2
        domain = torch.rand(6, n, generator=g) < 0.8
        domain[:, :2] = True
        pair = _best_pairs(alpha, beta, domain)
        assert bool(domain.gather(1, pair).all()) and bool((pair[:, 0] != pair[:, 1]).all())
        best = brute_force(alpha, beta, domain)
        rows = torch.arange(6)
        got = (alpha[rows, pair[:, 0]] + alpha[rows, pair[:, 1]]) * -(
            beta[rows, pair[:, 0]] + beta[rows, pair[:, 1]]
        )
        has = best > 0
        torch.testing.assert_close(got[has], best[has])


def test_no_admissible_pair_falls_back_to_the_largest_alpha() -> None:
    alpha = torch.tensor([[0.5, 2.0, -1.0, 1.0]])
    beta = torch.ones(1, 4)  # every β_pq > 0: no admissible pair
    pair = _best_pairs(alpha, beta, torch.ones(1, 4, dtype=torch.bool))
    assert sorted(pair[0].tolist()) == [1, 3]


@pytest.fixture
def salient():
    """z = Wx + b on 16 features; target 2 gains from features 0–5 only.

    ∂z_2/∂x is 1.0, 1.1, …, 1.5 on features 0–5 and −3 elsewhere; the other two classes'
    gradients sum to −1 on 0–5 and +1 elsewhere. A pair with a feature outside 0–5 has α < 0.
    With θ = 1 feature i moves by Δ_i = 1 − x_i: (0.9, 0.7, 1.0, 0.75, 0.95, 0.85), so the
    effects are α_i = (0.9, 0.77, 1.2, 0.975, 1.33, 1.275), |β_i| = Δ_i, and the best pair is
    {2, 4} (2.53 · 1.95; the largest gradients {4, 5} give 2.605 · 1.8), then {0, 5}. Pair
    {2, 4} closes 3.505 of the gap z_0 − z_2 = 5 and pair {0, 5} another 3.05.
    """
    d = 16
    w = torch.zeros(3, d)
    w[2, :6], w[2, 6:] = torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]), -3.0
    w[0, :6], w[0, 6:] = -0.5, 0.5
    w[1, :6], w[1, 6:] = -0.5, 0.5
    b = torch.tensor([0.0, -1.0, 0.525])
    x = torch.full((4, d), 0.2)
    x[:, :6] = torch.tensor([0.1, 0.3, 0.0, 0.25, 0.05, 0.15])
    model = linear(w, b)
    y = torch.zeros(4, dtype=torch.long)
    target = torch.full((4,), 2)
    with torch.no_grad():
        z = model(x)
    assert bool((z.argmax(dim=1) == 0).all())
    torch.testing.assert_close(z[:, 0] - z[:, 2], torch.full((4,), 5.0))
    return model, x, y, target


def test_linear_model_changes_only_pixels_that_raise_the_target(salient) -> None:
    model, x, y, target = salient
    res = JSMA(TARGETED, gamma=1.0)(model, x, y, target)
    assert bool(res.success.all()) and torch.equal(res.pred, target)
    changed = res.x_adv != x
    want = torch.zeros(16, dtype=torch.bool)
    want[[0, 2, 4, 5]] = True
    assert bool((changed == want).all())
    assert bool((res.x_adv[changed] == 1.0).all())  # θ = 1 pushes a pixel to hi
    assert res.distance.tolist() == [4.0] * 4
    # gradients at x, after pair 1 and after pair 2 (where the target is reached)
    assert res.steps.tolist() == [3] * 4
    assert res.gradients.tolist() == [2 * 3] * 4
    assert res.queries.tolist() == [1 + 3] * 4
    # one pair is not enough: a budget of 2 features fails, with the first pair only
    one = JSMA(TARGETED, gamma=2 / 16)(model, x, y, target)
    assert not bool(one.success.any())
    first = torch.zeros(16, dtype=torch.bool)
    first[[2, 4]] = True
    assert bool(((one.x_adv != x) == first).all())


def test_decrease_variant_only_decreases(salient) -> None:
    """Mirror the model (W → −W): now lowering features 0–5 to 0 raises the target."""
    model, x, y, target = salient
    layer = model[1]
    with torch.no_grad():
        layer.bias.add_(layer.weight @ torch.ones(16))  # z(1 − x) with the weights negated
        layer.weight.neg_()
    x = 1 - x
    with torch.no_grad():
        assert bool((model(x).argmax(dim=1) == 0).all())
    res = JSMA(TARGETED, theta=-1.0, gamma=1.0)(model, x, y, target)
    assert bool(res.success.all())
    changed = res.x_adv != x
    assert not bool(changed[:, 6:].any())
    assert bool((res.x_adv[changed] == 0.0).all())
    assert res.distance.tolist() == [4.0] * 4


@pytest.mark.parametrize("theta", [1.0, 0.3, -1.0, -0.3])
def test_direction_and_budget_on_a_trained_model(theta: float, digits) -> None:
    x, y = digits.x, digits.y
    target = (y + 3) % 10
    gamma = 0.2
    res = JSMA(TARGETED, theta=theta, gamma=gamma)(digits.model, x, y, target)
    delta = res.x_adv - x
    if theta > 0:
        assert bool((delta >= 0).all())
    else:
        assert bool((delta <= 0).all())
    assert float(delta.abs().max()) <= abs(theta) + 1e-6
    assert bool((res.distance <= math.floor(gamma * 64)).all())
    assert bool((res.distance % 2 == 0).all())  # pairs
    assert torch.equal(res.success, res.pred == target)
    if abs(theta) == 1.0:
        assert res.success_rate > 0.6


def test_a_larger_budget_only_adds_successes(digits) -> None:
    """Each sample stops at its target, so a larger γ keeps every earlier success as it was."""
    x, y = digits.x, digits.y
    target = (y + 1 + torch.arange(len(y)) % 9) % 10
    small = JSMA(TARGETED)(digits.model, x, y, target)
    large = JSMA(TARGETED, gamma=0.4)(digits.model, x, y, target)
    assert bool((small.distance <= math.floor(0.145 * 64)).all())
    assert 0.5 < small.success_rate < large.success_rate
    assert large.success_rate > 0.9
    assert torch.equal(large.x_adv[small.success], small.x_adv[small.success])


def test_eps_caps_the_number_of_changed_features(digits) -> None:
    x, y = digits.x, digits.y
    target = (y + 3) % 10
    res = JSMA(ThreatModel("l0", 4, targeted=True), gamma=1.0)(digits.model, x, y, target)
    assert bool((res.distance <= 4).all())
    assert bool((res.steps <= 2).all())


def test_batching_equals_one_sample_at_a_time(digits) -> None:
    x, y = digits.x[:10], digits.y[:10]
    target = (y + 5) % 10
    together = JSMA(TARGETED)(digits.model, x, y, target)
    alone = JSMA(TARGETED, batch_size=1)(digits.model, x, y, target)
    assert torch.equal(together.x_adv, alone.x_adv)
    assert torch.equal(together.gradients, alone.gradients)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"theta": 0.0}, "theta"),
        ({"theta": math.inf}, "theta"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": True}, "gamma"),
    ],
)
def test_bad_parameters_raise(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JSMA(TARGETED, **kwargs)


def test_untargeted_or_missing_targets_raise(salient) -> None:
    model, x, y, _ = salient
    with pytest.raises(ValueError, match=r"threat\.targeted"):
        JSMA(ThreatModel("l0"))
    with pytest.raises(ValueError, match=r"threat\.norm"):
        JSMA(ThreatModel("l2", targeted=True))
    with pytest.raises(ValueError, match="target"):
        JSMA(TARGETED)(model, x, y)
