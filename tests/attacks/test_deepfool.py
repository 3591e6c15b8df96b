"""DeepFool: closed forms on affine classifiers, the box, the grid, and a trained model.

For z(x) = Wx + b the minimal perturbation from class y to the boundary with class k is
|f_k|/‖w_k‖_q along the dual direction of w_k = W_k − W_y (f_k = z_k − z_y; q = 2 for L2,
q = 1 for L∞), and the untargeted minimum is the smallest of them over k ≠ y.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advex import ThreatModel
from advex.attacks.base import MinNormAttack
from advex.attacks.deepfool import DeepFool
from advex.evaluate.metrics import rho_adv

WIDE = (-10.0, 10.0)  # the box never binds: the unconstrained closed forms hold


def linear(w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), layer)


def affine(k: int, d: int = 12, n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g)
    b = torch.randn(k, generator=g)
    x = torch.rand(n, d, generator=g)
    model = linear(w, b)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, w, b, x, y


def closed_form(w, b, x, y, q: float, margin: float = 1e-4) -> torch.Tensor:
    """(|f_l| + margin)/‖w_l‖_q, l = argmin_{k≠y} |f_k|/‖w_k‖_q, per sample (float64).

    margin = 0 is the exact minimum; DeepFool adds 1e-4 to |f_l| to land past the boundary.
    """
    w, b, x = w.double(), b.double(), x.double()
    z = x @ w.T + b
    f = z - z.gather(1, y[:, None])
    dual = (w[None, :, :] - w[y][:, None, :]).norm(p=q, dim=2)
    dist = f.abs() / dual
    dist[torch.arange(len(y)), y] = math.inf
    best = dist.argmin(dim=1, keepdim=True)
    return ((f.gather(1, best).abs() + margin) / dual.gather(1, best)).squeeze(1)


@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0)])
def test_binary_affine_is_exact_in_one_step(norm: str, q: float, bare_min_norm) -> None:
    """f = wᵀx + b: r* = −f/‖w‖²·w (L2), −f/‖w‖₁·sign(w) (L∞); one jacobian, two gradients."""
    model, w, b, x, y = affine(2)
    threat = ThreatModel(norm, bounds=WIDE)
    res = DeepFool(threat, overshoot=0.0, projections=0)(model, x, y)
    assert bool(res.success.all())
    want = closed_form(w, b, x, y, q)
    torch.testing.assert_close(res.distance.double(), want, rtol=2e-5, atol=1e-6)
    assert bool((res.distance.double() >= closed_form(w, b, x, y, q, margin=0) - 1e-6).all())
    # the direction: along w₁ − w₀ toward the other class
    v = (w[1] - w[0]) * torch.where(y == 0, 1.0, -1.0)[:, None]
    direction = v if norm == "l2" else v.sign()
    cos = nn.functional.cosine_similarity(res.x_adv - x, direction, dim=1)
    assert bool((cos > 1 - 1e-5).all())
    assert res.steps.tolist() == [1] * len(x)
    assert res.gradients.tolist() == [2] * len(x)
    assert res.queries.tolist() == [3] * len(x)  # clean, the jacobian at x, the check at x_adv
    # the projection finds the boundary flat: one more jacobian to see it, the same point
    projected = DeepFool(threat, overshoot=0.0, projections=3)(model, x, y)
    assert torch.equal(projected.x_adv, res.x_adv)
    assert projected.steps.tolist() == [2] * len(x)


@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0)])
@pytest.mark.parametrize("projections", [0, 1])
def test_multiclass_affine_reaches_the_closest_boundary(
    norm, q, projections, bare_min_norm
) -> None:
    model, w, b, x, y = affine(6, seed=1)
    want = closed_form(w, b, x, y, q)
    attack = DeepFool(ThreatModel(norm, bounds=WIDE), overshoot=0.0, projections=projections)
    res = attack(model, x, y)
    assert bool(res.success.all())
    torch.testing.assert_close(res.distance.double(), want, rtol=2e-5, atol=1e-6)
    assert bool((res.distance.double() >= closed_form(w, b, x, y, q, margin=0) - 1e-6).all())
    assert res.steps.tolist() == [1 + projections] * len(x)
    # with the overshoot: the same point scaled by 1.02 (up to the 1e-4 margin)
    res = DeepFool(ThreatModel(norm, bounds=WIDE), projections=projections)(model, x, y)
    torch.testing.assert_close(res.distance.double(), 1.02 * want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0)])
def test_the_final_line_search_trims_the_overshoot(norm: str, q: float) -> None:
    """With the default segment search, the 2 % overshoot is bisected away: the distance lands
    within 2⁻¹⁶ (16 bisections) of the exact minimum, never below it, and the returned point
    lies the outward margin (10⁻⁴ of δ) past that."""
    model, w, b, x, y = affine(6, seed=1)
    exact = closed_form(w, b, x, y, q, margin=0)
    res = DeepFool(ThreatModel(norm, bounds=WIDE))(model, x, y)
    assert bool(res.success.all())
    d = res.distance.double()
    out = 1 + MinNormAttack.boundary_margin
    assert MinNormAttack.boundary_margin == 1e-4
    assert bool((d >= exact * out - 1e-6).all())
    assert bool((d <= exact * (1 + 1.03 / 2**16) * out + 1e-5).all())
    assert bool((res.queries >= 16).all())  # the 16 forward passes of the bisection


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_returned_points_clear_the_boundary_by_the_margin(norm: str, monkeypatch) -> None:
    """The point is x + (1 + 10⁻⁴)·δ for the δ the attack ended with: on an affine model the
    logit margin grows by 10⁻⁴ of the clean gap, far past float noise, so another batch size
    or memory layout agrees that the point is adversarial."""
    model, _, _, x, y = affine(6, seed=1)
    res = DeepFool(ThreatModel(norm, bounds=WIDE))(model, x, y)
    monkeypatch.setattr(MinNormAttack, "boundary_margin", 0.0)
    tight = DeepFool(ThreatModel(norm, bounds=WIDE))(model, x, y)
    torch.testing.assert_close(res.x_adv - x, (1 + 1e-4) * (tight.x_adv - x), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        z, z0 = model(res.x_adv).double(), model(x).double()
    own = z.gather(1, y[:, None]).squeeze(1)
    best_other = z.scatter(1, y[:, None], -math.inf).amax(dim=1)
    gap = z0.gather(1, y[:, None]).squeeze(1) - z0.scatter(1, y[:, None], -math.inf).amax(1)
    assert bool((best_other - own > 0.5e-4 * gap).all())
    # each point alone, a sample at a time, is still adversarial
    alone = torch.cat([model(res.x_adv[i : i + 1]).argmax(1) for i in range(len(x))])
    assert bool((alone != y).all())


def test_candidates_limit_the_classes_and_the_gradients() -> None:
    """candidates=2 looks only at the runner-up class; its boundary may not be the closest."""
    model, _, _, x, y = affine(6, seed=1)
    all_classes = DeepFool(ThreatModel("l2", bounds=WIDE), overshoot=0.0)(model, x, y)
    two = DeepFool(ThreatModel("l2", bounds=WIDE), overshoot=0.0, candidates=2)(model, x, y)
    assert bool(two.success.all())
    assert two.gradients.tolist() == [2 * 2] * len(x)  # the step and the projection check
    assert all_classes.gradients.tolist() == [2 * 6] * len(x)
    assert bool((two.distance >= all_classes.distance - 1e-5).all())
    assert bool((two.distance > all_classes.distance + 1e-4).any())


def test_blocked_coordinates_do_not_waste_the_step(bare_min_norm) -> None:
    """Inputs at 0 where w pushes below 0 cannot move: the step uses the free ones only.

    Binary f = wᵀx + b with x_i = 0 and w_i < 0 on the first half: the minimal perturbation in
    the box is |f|/‖w_free‖₂ along w_free (the free coordinates stay inside the box).
    """
    d = 16
    w1 = torch.cat([-torch.ones(d // 2), torch.linspace(0.5, 1.0, d // 2)])
    w = torch.stack([torch.zeros(d), w1])
    x = torch.cat([torch.zeros(5, d // 2), 0.3 + 0.1 * torch.rand(5, d // 2)], dim=1)
    b = torch.tensor([0.0, -float(x[0, d // 2 :] @ w1[d // 2 :]) - 0.2])
    model = linear(w, b)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    assert bool((y == 0).all())
    res = DeepFool(ThreatModel("l2"), overshoot=0.0, projections=0)(model, x, y)
    free = w1[d // 2 :]
    f = (x @ w1 + b[1]).abs()
    torch.testing.assert_close(res.distance, (f + 1e-4) / free.norm(), rtol=2e-5, atol=1e-6)
    assert bool(res.success.all()) and res.steps.tolist() == [1] * 5
    assert torch.equal(res.x_adv[:, : d // 2], x[:, : d // 2])


def test_breaks_a_trained_model_and_projections_shrink_the_perturbation(digits) -> None:
    x, y = digits.x, digits.y
    plain = DeepFool(ThreatModel("l2"), projections=0)(digits.model, x, y)
    refined = DeepFool(ThreatModel("l2"))(digits.model, x, y)
    assert plain.success_rate == 1.0 and refined.success_rate == 1.0
    assert refined.median_distance < plain.median_distance
    assert float(plain.steps.float().mean()) < 10  # DeepFool is fast
    linf = DeepFool(ThreatModel("linf"))(digits.model, x, y)
    assert linf.success_rate == 1.0
    assert bool((linf.distance <= refined.distance + 1e-6).all())  # ‖δ‖∞ ≤ ‖δ‖₂ of any δ


def test_batching_equals_one_sample_at_a_time(digits) -> None:
    x, y = digits.x[:12], digits.y[:12]
    together = DeepFool(ThreatModel("l2"))(digits.model, x, y)
    alone = DeepFool(ThreatModel("l2"), batch_size=1)(digits.model, x, y)
    torch.testing.assert_close(together.x_adv, alone.x_adv, atol=1e-5, rtol=0)
    assert torch.equal(together.steps, alone.steps)
    assert torch.equal(together.gradients, alone.gradients)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_grid_keeps_searching_when_rounding_undoes_success(norm: str, digits) -> None:
    res = DeepFool(ThreatModel(norm, levels=256))(digits.model, digits.x, digits.y)
    assert res.success_rate == 1.0
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)
    free = DeepFool(ThreatModel(norm))(digits.model, digits.x, digits.y)
    assert res.median_distance < 1.2 * free.median_distance


def test_with_eps_only_points_inside_the_ball_count(digits) -> None:
    x, y = digits.x, digits.y
    free = DeepFool(ThreatModel("l2"))(digits.model, x, y)
    eps = free.median_distance
    res = DeepFool(ThreatModel("l2", eps))(digits.model, x, y)
    assert bool((res.distance <= eps * (1 + 1e-5) + 1e-6).all())
    assert 0.3 < res.success_rate < 1.0
    # with a budget a sample stops at its first success inside the ball
    assert bool((res.steps <= free.steps).all())


def test_clean_misclassified_sample_is_left_alone() -> None:
    model, _, _, x, y = affine(3, seed=2)
    y = y.clone()
    y[0] = (y[0] + 1) % 3
    res = DeepFool(ThreatModel("l2"))(model, x, y)
    assert torch.equal(res.x_adv[0], x[0]) and int(res.gradients[0]) == 0


def test_rho_adv_is_the_mean_relative_l2_over_broken_correct_samples() -> None:
    model, _, _, x, y = affine(3, seed=2)
    y = y.clone()
    y[0] = (y[0] + 1) % 3  # misclassified: excluded
    res = DeepFool(ThreatModel("l2", bounds=WIDE), steps=1)(model, x, y)
    mask = res.success & res.clean_correct
    want = ((res.x_adv - x).norm(dim=1) / x.norm(dim=1))[mask].double().mean()
    assert rho_adv(res, x) == pytest.approx(float(want), rel=1e-6)
    assert bool(mask.sum() == len(x) - 1)
    res.success[:] = False
    assert math.isnan(rho_adv(res, x))
    with pytest.raises(ValueError, match="x: expected shape"):
        rho_adv(res, x[:3])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"overshoot": math.nan}, "overshoot"),
        ({"candidates": 1}, "candidates"),
        ({"candidates": True}, "candidates"),
        ({"projections": -1}, "projections"),
    ],
)
def test_bad_parameters_raise(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeepFool(ThreatModel("l2"), **kwargs)


def test_unsupported_threats_raise() -> None:
    with pytest.raises(ValueError, match=r"threat\.norm"):
        DeepFool(ThreatModel("l1"))
    with pytest.raises(ValueError, match=r"threat\.targeted"):
        DeepFool(ThreatModel("l2", targeted=True))
