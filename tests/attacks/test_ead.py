"""EAD: the shrinkage operator, success and sparsity on a trained model, the search over c."""

from __future__ import annotations

import pytest
import torch

from advex import ThreatModel
from advex.attacks.ead import EAD, shrinkage_threshold
from advex.attacks.fmn import FMN


def test_shrinkage_operator_matches_its_formula() -> None:
    z = torch.tensor([[0.5, 0.05, -0.05, -0.5, 0.2, -0.2, 0.1, -0.1, 0.0]])
    lower = torch.tensor([[-1.0, -1.0, -1.0, -0.3, -1.0, -0.05, -1.0, -1.0, -1.0]])
    upper = torch.tensor([[0.3, 1.0, 1.0, 1.0, 0.02, 1.0, 1.0, 1.0, 1.0]])
    out = shrinkage_threshold(z, 0.1, lower, upper)
    # z > β: min(z − β, u); |z| ≤ β: 0; z < −β: max(z + β, l)
    want = torch.tensor([[0.3, 0.0, 0.0, -0.3, 0.02, -0.05, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, want)
    inside = torch.tensor([[0.4, -0.4]])
    torch.testing.assert_close(
        shrinkage_threshold(inside, 0.1, -torch.ones(1, 2), torch.ones(1, 2)),
        torch.tensor([[0.3, -0.3]]),
    )


def test_breaks_the_trained_model_with_sparse_perturbations(digits) -> None:
    """EAD succeeds everywhere with sparse perturbations whose L1 distance is well below that
    of the L2-minimal perturbation (found by FMN)."""
    x, y = digits.x, digits.y
    res = EAD(ThreatModel("l1"), steps=100, binary_search_steps=6)(digits.model, x, y)
    assert bool(res.success.all())
    fmn_l2 = FMN(ThreatModel("l2"), steps=50)(digits.model, x, y)
    l1_of_l2 = (fmn_l2.x_adv - x).flatten(1).abs().sum(dim=1)
    assert res.median_distance < 0.7 * float(l1_of_l2.median())
    changed = ((res.x_adv - x).flatten(1) != 0).float().mean()
    assert float(changed) < 0.3, "most pixels stay untouched"


def test_targeted_reaches_the_target(digits) -> None:
    target = (digits.y + 3) % 10
    res = EAD(ThreatModel("l1", targeted=True), steps=100, binary_search_steps=6)(
        digits.model, digits.x, digits.y, target
    )
    assert bool(res.success.all())
    assert torch.equal(res.pred, target)


def test_constant_too_small_to_move_then_the_search_raises_it(digits) -> None:
    """With c₀ = 1e-6 one FISTA step moves δ by α·c·|∂f| < β: the shrinkage keeps δ = 0, so
    one constant finds nothing; the ×10 search reaches a working c within a few steps."""
    x, y = digits.x[:16], digits.y[:16]
    one = EAD(ThreatModel("l1"), steps=30, binary_search_steps=1, initial_const=1e-6)
    res = one(digits.model, x, y)
    assert not bool(res.success.any())
    assert bool((res.distance == 0).all())
    many = EAD(ThreatModel("l1"), steps=30, binary_search_steps=9, initial_const=1e-6)
    assert bool(many(digits.model, x, y).success.all())


def test_query_accounting_batching_and_determinism(digits) -> None:
    """Without abort-early: per step a forward+backward at ν_k and a forward at δ_k, per
    constant; a sample's result does not depend on its batch; same call, same result."""
    x, y = digits.x[:10], digits.y[:10]
    attack = EAD(ThreatModel("l1"), steps=15, binary_search_steps=3, abort_early=False)
    res = attack(digits.model, x, y)
    assert res.queries.tolist() == [1 + 3 * 15 * 2] * 10
    assert res.gradients.tolist() == [3 * 15] * 10
    assert res.steps.tolist() == [3 * 15] * 10
    assert torch.equal(attack(digits.model, x, y).x_adv, res.x_adv)
    split = EAD(
        ThreatModel("l1"), steps=15, binary_search_steps=3, abort_early=False, batch_size=3
    )(digits.model, x, y)
    torch.testing.assert_close(split.x_adv, res.x_adv, atol=1e-6, rtol=0)


def test_abort_early_saves_queries(digits) -> None:
    x, y = digits.x, digits.y
    kw = {"steps": 100, "binary_search_steps": 4}
    fast = EAD(ThreatModel("l1"), **kw)(digits.model, x, y)
    full = EAD(ThreatModel("l1"), abort_early=False, **kw)(digits.model, x, y)
    assert int(fast.queries.sum()) < int(full.queries.sum())
    assert fast.success_rate == full.success_rate == 1.0


def test_eps_threat_returns_points_inside_the_ball(digits) -> None:
    x, y = digits.x, digits.y
    free = EAD(ThreatModel("l1"), steps=50, binary_search_steps=5)(digits.model, x, y)
    eps = float(free.distance.median())
    res = EAD(ThreatModel("l1", eps), steps=50, binary_search_steps=5)(digits.model, x, y)
    assert bool((res.distance <= eps * (1 + 1e-5) + 1e-6).all())
    assert res.success_rate >= 0.5 - 0.05


def test_kappa_demands_a_confidence_margin(digits) -> None:
    """κ > 0 only counts runs whose margin reaches κ: the chosen c grow, so do distances."""
    x, y = digits.x[:16], digits.y[:16]
    kw = {"steps": 50, "binary_search_steps": 5, "abort_early": False}
    plain = EAD(ThreatModel("l1"), **kw)(digits.model, x, y)
    strong = EAD(ThreatModel("l1"), kappa=5.0, **kw)(digits.model, x, y)
    assert strong.median_distance > plain.median_distance


def test_levels_returns_grid_points(digits) -> None:
    res = EAD(ThreatModel("l1", levels=256), steps=50, binary_search_steps=5)(
        digits.model, digits.x, digits.y
    )
    k = res.x_adv * 255
    assert bool(((k - k.round()).abs() < 1e-3).all())
    assert res.success_rate > 0.9


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="norm"):
        EAD(ThreatModel("l2"))
    for kwargs, name in [
        ({"steps": 0}, "steps"),
        ({"binary_search_steps": 0}, "binary_search_steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"initial_const": -1.0}, "initial_const"),
        ({"beta": float("nan")}, "beta"),
        ({"kappa": -0.1}, "kappa"),
    ]:
        with pytest.raises(ValueError, match=name):
            EAD(ThreatModel("l1"), **kwargs)  # type: ignore[arg-type]
