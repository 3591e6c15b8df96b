"""FAB and FAB-T: closed forms on linear models, the box, ε-bounded mode, targets, accounting."""

from __future__ import annotations

import math

import pytest
import torch
from linear_problem import DUAL, WIDE, closed_form, linear
from torch import nn

from advex import ThreatModel
from advex.attacks.fab import FAB, FABT
from advex.attacks.hyperplane import project_hyperplane
from advex.norms import lp_norm


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_reaches_the_closed_form_on_a_linear_model(norm: str) -> None:
    """Five classes: FAB linearizes every class, and on an affine model the linearization is
    exact, so it finds min_s |f_s|/‖w_s − w_c‖_q for every sample (within 1 %)."""
    model, x, y = linear(5)
    res = FAB(ThreatModel(norm, bounds=WIDE), steps=20)(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / closed_form(model, x, y, DUAL[norm])
    assert bool((ratio >= 1 - 1e-4).all()), "below the true minimum: a bug"
    assert bool((ratio <= 1.01).all()), float(ratio.max())


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_respects_a_binding_box(norm: str) -> None:
    """Two classes in [0, 1], class 1 only near one corner of the box: the minimum is the
    projection onto the boundary ∩ box (tested against scipy in test_hyperplane), larger than
    without the box."""
    torch.manual_seed(0)
    # float64: the L1 solution may sit within float32 rounding of the boundary (the box clips
    # the overshoot η away), where the final re-check in another batch could flip the label
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        w = model[1].weight[1] - model[1].weight[0]
        corner = (w > 0).double()  # the box point with the largest z_1 − z_0
        top = float(w @ corner + model[1].bias[1] - model[1].bias[0])
        model[1].bias[1] -= top - 0.2  # max over the box of z_1 − z_0 is 0.2
        y = model(x).argmax(dim=1)
    assert not bool(y.any()), "every x is class 0"
    res = FAB(ThreatModel(norm), steps=30)(model, x, y)
    w = (model[1].weight[1] - model[1].weight[0]).detach().expand(16, -1)
    b = (model[1].bias[1] - model[1].bias[0]).detach().expand(16)
    exact = lp_norm(project_hyperplane(x.flatten(1), w, b, 0.0, 1.0, norm), norm)
    unboxed = closed_form(model, x, y, DUAL[norm])
    assert bool((exact > 1.05 * unboxed).any()), "the box should bind for some samples"
    assert bool(res.success.all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    ratio = res.distance / exact
    assert bool((ratio >= 1 - 1e-4).all()) and bool((ratio <= 1.01).all()), ratio


def test_breaks_the_trained_model_with_small_perturbations(digits) -> None:
    res = FAB(ThreatModel("l2"), steps=50)(digits.model, digits.x, digits.y)
    assert bool(res.success.all())
    assert res.median_distance < 2.0  # 8×8 in [0, 1]: norm 8 could replace the whole image


def test_eps_threat_returns_points_inside_the_ball(digits) -> None:
    """With an eps, every returned point is inside the ball, a sample stops at its first success
    there, and FAB breaks (nearly) every sample whose minimal norm it found fits in the ball."""
    x, y = digits.x, digits.y
    free = FAB(ThreatModel("linf"), steps=30)(digits.model, x, y)
    eps = float(free.distance.median())
    res = FAB(ThreatModel("linf", eps), steps=30)(digits.model, x, y)
    assert bool((res.distance <= eps * (1 + 1e-5) + 1e-6).all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert res.success_rate >= float((free.distance <= eps).float().mean()) - 0.05
    assert int(res.queries.sum()) < int(free.queries.sum())


def test_targeted_threat_reaches_the_target(digits) -> None:
    """Success is the target predicted; the targeted linearization costs 1 gradient per step.
    With several classes between x and the target, the single-hyperplane projections can cycle
    between them, so FAB falls short of FMN here (which reaches every target)."""
    target = (digits.y + 3) % 10
    for norm in ("l2", "linf", "l1"):
        res = FAB(ThreatModel(norm, targeted=True), steps=50)(
            digits.model, digits.x, digits.y, target
        )
        assert res.success_rate >= 0.85, norm
        assert torch.equal(res.pred[res.success], target[res.success]), norm
        assert int(res.gradients.max()) == 50, "one gradient, of z_t − z_c, per step"


def test_fab_t_tries_more_targets_and_breaks_more(digits) -> None:
    """FAB-T with 9 targets: its first target run is the 1-target run, and later targets only run
    on the samples still unbroken, so robust accuracy can only drop; each costs 1 gradient/step."""
    threat = ThreatModel("l2", 0.6)
    one = FABT(threat, steps=20, n_target_classes=1)(digits.model, digits.x, digits.y)
    nine = FABT(threat, steps=20)(digits.model, digits.x, digits.y)
    assert nine.robust_accuracy <= one.robust_accuracy
    assert nine.robust_accuracy < 1.0 and one.robust_accuracy > 0.0
    assert int(one.gradients.max()) == 20
    assert int(nine.gradients.max()) > 20  # some sample needed a second target
    broken = one.success
    assert torch.equal(nine.x_adv[broken], one.x_adv[broken]), "finished samples never rerun"


def test_fab_t_without_eps_keeps_the_smallest_over_all_targets(digits, bare_min_norm) -> None:
    x, y = digits.x[:16], digits.y[:16]
    one = FABT(ThreatModel("l2"), steps=20, n_target_classes=1)(digits.model, x, y)
    three = FABT(ThreatModel("l2"), steps=20, n_target_classes=3)(digits.model, x, y)
    assert bool((three.distance <= one.distance + 1e-6).all())
    assert three.gradients.tolist() == [3 * 20] * 16  # every sample tries every target


def test_restarts_without_eps_shrink_the_distance(digits) -> None:
    x, y = digits.x[:16], digits.y[:16]
    one = FAB(ThreatModel("linf"), steps=10)(digits.model, x, y)
    more = FAB(ThreatModel("linf"), steps=10, restarts=3)(digits.model, x, y)
    assert bool((more.distance <= one.distance + 1e-6).all())
    assert more.gradients.tolist() == [3 * 10 * 10] * 16  # all samples, every restart


def test_query_accounting(digits, bare_min_norm) -> None:
    """Per step: one Jacobian of the classes linearized (1 forward, 10 backward for all) and one
    forward of the new iterate."""
    x, y = digits.x[:8], digits.y[:8]
    res = FAB(ThreatModel("l2"), steps=7)(digits.model, x, y)
    assert res.queries.tolist() == [1 + 2 * 7] * 8
    assert res.gradients.tolist() == [10 * 7] * 8
    top3 = FAB(ThreatModel("l2"), steps=7, n_target_classes=3)(digits.model, x, y)
    assert top3.gradients.tolist() == [4 * 7] * 8
    pair = FAB(ThreatModel("l2"), steps=7, n_target_classes=1)(digits.model, x, y)
    assert pair.gradients.tolist() == [7] * 8  # one pair: a single gradient of z_s − z_c


def test_determinism_and_batching(digits) -> None:
    x, y = digits.x[:12], digits.y[:12]
    threat = ThreatModel("l2", 0.5)  # some samples survive the first run: restarts matter
    attack = FAB(threat, steps=10, restarts=3, seed=5)
    a, b = attack(digits.model, x, y), attack(digits.model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    other = FAB(threat, steps=10, restarts=3, seed=6)(digits.model, x, y)
    assert not torch.equal(a.x_adv, other.x_adv), "restarts should depend on the seed"
    plain = FAB(ThreatModel("l1"), steps=10)
    split = FAB(ThreatModel("l1"), steps=10, batch_size=5)(digits.model, x, y)
    torch.testing.assert_close(split.x_adv, plain(digits.model, x, y).x_adv, atol=1e-6, rtol=0)


def test_levels_returns_grid_points_that_succeed(digits) -> None:
    res = FAB(ThreatModel("l2", levels=256), steps=30)(digits.model, digits.x, digits.y)
    assert bool(res.success.all())
    k = res.x_adv * 255
    assert bool(((k - k.round()).abs() < 1e-3).all())


def test_defaults_names_and_bad_arguments() -> None:
    fab, fab_t = FAB(ThreatModel("linf")), FABT(ThreatModel("linf", 0.03))
    assert (fab.name, fab_t.name) == ("fab", "fab-t")
    assert (fab.steps, fab.restarts, fab.alpha_max, fab.eta, fab.beta) == (100, 1, 0.1, 1.05, 0.9)
    assert fab.n_target_classes is None and fab_t.n_target_classes == 9
    with pytest.raises(ValueError, match=r"threat\.targeted"):
        FABT(ThreatModel("linf", 0.03, targeted=True))
    with pytest.raises(ValueError, match=r"threat\.norm"):
        FAB(ThreatModel("l0"))
    with pytest.raises(ValueError, match="n_target_classes"):
        FAB(ThreatModel("l2", targeted=True), n_target_classes=3)
    for kwargs, name in [
        ({"steps": 0}, "steps"),
        ({"restarts": 1.5}, "restarts"),
        ({"alpha_max": 0.0}, "alpha_max"),
        ({"alpha_max": 1.5}, "alpha_max"),
        ({"eta": 0.9}, "eta"),
        ({"eta": math.nan}, "eta"),
        ({"beta": 0.0}, "beta"),
        ({"beta": 1.1}, "beta"),
        ({"n_target_classes": 0}, "n_target_classes"),
        ({"n_target_classes": None}, "n_target_classes"),
    ]:
        if kwargs.get("n_target_classes", 1) is not None:
            with pytest.raises(ValueError, match=name):
                FAB(ThreatModel("l2"), **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=name):
            FABT(ThreatModel("l2"), **kwargs)  # type: ignore[arg-type]
