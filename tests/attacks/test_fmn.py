"""FMN: closed forms on a linear model, projections, targeted, ε-bounded mode, accounting."""

from __future__ import annotations

import pytest
import torch
from linear_problem import DUAL, WIDE, closed_form, linear

from advex import ThreatModel
from advex.attacks.fmn import FMN


@pytest.mark.parametrize(("norm", "rtol"), [("l2", 1e-3), ("linf", 1e-2), ("l1", 2e-2)])
def test_reaches_the_closed_form_on_a_linear_model(norm: str, rtol: float) -> None:
    """Two classes: one boundary, so the minimal ‖δ‖_p is |f|/‖w‖_q (q the dual norm)."""
    model, x, y = linear(2)
    res = FMN(ThreatModel(norm, bounds=WIDE))(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / closed_form(model, x, y, DUAL[norm])
    assert bool((ratio >= 1 - 1e-4).all()), "below the true minimum: a bug"
    assert bool((ratio <= 1 + rtol).all())


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_nearly_reaches_the_closed_form_among_many_classes(norm: str) -> None:
    """Five classes: min_k |f_k|/‖w_k‖_q. Ascent on the margin heads for the runner-up class,
    which for a few samples is not the nearest one (a local optimum of every margin-based
    minimum-norm attack); nearly all samples still land within 1% of the minimum."""
    model, x, y = linear(5)
    res = FMN(ThreatModel(norm, bounds=WIDE))(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / closed_form(model, x, y, DUAL[norm])
    assert bool((ratio >= 1 - 1e-4).all())
    assert float((ratio <= 1.01).float().mean()) >= 0.9


def test_l0_finds_the_fewest_elements_on_a_linear_model() -> None:
    """Changing element i moves f = z_1 − z_0 by at most |w_i|·(its range in the box); the
    fewest elements that close the gap are the largest such moves (a greedy closed form)."""
    model, x, y = linear(2)
    bounds = (0.0, 1.0)
    res = FMN(ThreatModel("l0", bounds=bounds))(model, x, y)
    assert bool(res.success.all())
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    xf = x.flatten(1)
    fewest = []
    for i in range(len(x)):
        k, j = 1 - int(y[i]), int(y[i])
        d = w[k] - w[j]  # raise z_k − z_j: move each element to the bound d favours
        moves = torch.where(d > 0, d * (bounds[1] - xf[i]), d * (bounds[0] - xf[i]))
        total = moves.sort(descending=True).values.cumsum(0)
        fewest.append(float(int((total < float(z[i, j] - z[i, k])).sum()) + 1))
    assert res.distance.tolist() == fewest


def test_targeted_reaches_the_target(digits) -> None:
    target = (digits.y + 3) % 10
    for norm in ("l2", "linf", "l1", "l0"):
        res = FMN(ThreatModel(norm, targeted=True), steps=50)(
            digits.model, digits.x, digits.y, target
        )
        assert bool(res.success.all()), norm
        assert torch.equal(res.pred, target)


def test_untargeted_breaks_the_trained_model_with_small_perturbations(digits) -> None:
    res = FMN(ThreatModel("l2"), steps=50)(digits.model, digits.x, digits.y)
    assert bool(res.success.all())
    # the digits are 8×8 in [0, 1]: a perturbation of norm 8 could replace the image entirely
    assert res.median_distance < 2.0


def test_eps_threat_returns_points_inside_the_ball(digits) -> None:
    """With an eps, every returned point is inside the ball; a sample stops at its first
    success there; FMN breaks at least the samples whose minimal norm fits in the ball."""
    x, y = digits.x, digits.y
    free = FMN(ThreatModel("l2"), steps=50)(digits.model, x, y)
    eps = float(free.distance.median())
    res = FMN(ThreatModel("l2", eps), steps=50)(digits.model, x, y)
    assert bool((res.distance <= eps * (1 + 1e-5) + 1e-6).all())
    assert res.success_rate >= float((free.distance <= eps).float().mean()) - 0.05
    assert int(res.queries.sum()) < int(free.queries.sum())


def test_levels_returns_grid_points_that_succeed(digits) -> None:
    threat = ThreatModel("l2", levels=256)
    res = FMN(threat, steps=50)(digits.model, digits.x, digits.y)
    assert bool(res.success.all())
    k = res.x_adv * 255
    assert bool(((k - k.round()).abs() < 1e-3).all())


def test_query_accounting_and_batching(digits, bare_min_norm) -> None:
    """One forward + backward per step, one clean forward and one of the last iterate; a
    sample's result does not depend on the batch it runs in; same call, same result."""
    x, y = digits.x[:12], digits.y[:12]
    attack = FMN(ThreatModel("linf"), steps=20)
    res = attack(digits.model, x, y)
    assert res.queries.tolist() == [22] * 12
    assert res.gradients.tolist() == [20] * 12
    again = attack(digits.model, x, y)
    assert torch.equal(res.x_adv, again.x_adv)
    split = FMN(ThreatModel("linf"), steps=20, batch_size=5)(digits.model, x, y)
    torch.testing.assert_close(split.x_adv, res.x_adv, atol=1e-6, rtol=0)


def test_defaults_and_bad_parameters() -> None:
    attack = FMN(ThreatModel("l0"))
    assert attack.steps == 100 and attack.gamma == 0.05 and attack.final_gamma == 0.001
    start, end = attack._step_sizes(torch.zeros(1, 1, 8, 8))
    assert start == pytest.approx(10 * 8) and end == pytest.approx(start / 100)
    assert FMN(ThreatModel("l2"), step_size=2.0)._step_sizes(torch.zeros(1, 3)) == (2.0, 0.02)
    for kwargs, name in [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"final_step_size": -1.0}, "final_step_size"),
        ({"gamma": 1.0}, "gamma"),
        ({"final_gamma": 0.0}, "final_gamma"),
    ]:
        with pytest.raises(ValueError, match=name):
            FMN(ThreatModel("l2"), **kwargs)  # type: ignore[arg-type]
