"""PGD, BIM and ILLC: best-so-far, restarts, early stop, and behaviour on a trained model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advex import ThreatModel
from advex.attacks import BIM, FGSM, ILLC, PGD


def test_returns_the_best_point_not_the_last_iterate(bump: nn.Module) -> None:
    """From x = 0.5 with sign steps of 0.06: 0.5 (fails) → 0.56 (succeeds) → 0.5 (fails).

    The gradient of CE(·, 0) at 0.56 points back down, so the last iterate is 0.5 again; the
    result must be the successful 0.56.
    """
    model = bump
    x = torch.full((3, 1), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    attack = PGD(
        ThreatModel("linf", 0.5), steps=2, step_size=0.06, random_start=False, early_stop=False
    )
    res = attack(model, x, y)
    with torch.no_grad():
        assert int(model(x).argmax(dim=1)[0]) == 0, "the last iterate (x itself) fails"
    assert res.success.all()
    torch.testing.assert_close(res.x_adv, torch.full((3, 1), 0.56))
    assert res.queries.tolist() == [4, 4, 4]  # clean, 2 steps, the last iterate
    assert res.gradients.tolist() == [2, 2, 2]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_more_steps_never_lose_a_success(norm: str, digits) -> None:
    """Without early stop, n steps evaluate every point m < n steps do (same seed)."""
    eps = {"linf": 0.08, "l2": 0.6}[norm]
    x, y = digits.x, digits.y
    short = PGD(ThreatModel(norm, eps), steps=3, early_stop=False)(digits.model, x, y)
    long = PGD(ThreatModel(norm, eps), steps=8, early_stop=False)(digits.model, x, y)
    assert not bool((short.success & ~long.success).any())
    assert int(long.success.sum()) > int(short.success.sum()) > 0


def test_restarts_run_only_on_unbroken_samples(digits) -> None:
    """Query accounting per sample, without early stop: 1 (clean) + (steps + 1) per restart
    the sample takes part in; it takes part in restart r only if restarts 0..r−1 failed."""
    x, y = digits.x, digits.y
    threat = ThreatModel("linf", 0.1)
    steps = 3
    runs = [
        PGD(threat, steps=steps, restarts=r, early_stop=False, seed=1)(digits.model, x, y)
        for r in (1, 2, 3)
    ]
    s1, s2 = runs[0].success, runs[1].success
    assert 0 < int(s1.sum()) < int(s2.sum()) < len(x), "the test needs samples in every group"
    want = torch.where(s1, 1, torch.where(s2, 2, 3)) * (steps + 1) + 1
    assert torch.equal(runs[2].queries, want)
    assert torch.equal(runs[2].steps, torch.where(s1, 1, torch.where(s2, 2, 3)) * steps)
    # restart r repeats the first r restarts exactly, so successes are nested
    assert not bool((s1 & ~s2).any()) and not bool((s2 & ~runs[2].success).any())


def test_early_stop_saves_queries_and_loses_nothing(digits) -> None:
    x, y = digits.x, digits.y
    threat = ThreatModel("linf", 0.1)
    fast = PGD(threat, steps=10)(digits.model, x, y)
    full = PGD(threat, steps=10, early_stop=False)(digits.model, x, y)
    assert int(fast.queries.sum()) < int(full.queries.sum())
    assert not bool((full.success & ~fast.success).any())
    assert bool((fast.queries <= full.queries).all())
    # a sample broken at step s stops there: it never takes all 10 steps plus the last iterate
    broken_early = fast.success & (fast.steps < 10)
    assert broken_early.any()
    assert bool((fast.queries[broken_early] == 1 + fast.steps[broken_early]).all())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 1.0), ("l2", 8.0), ("l1", 64.0)])
def test_huge_budget_breaks_every_sample(norm: str, eps: float, digits) -> None:
    """With ε covering the whole box, any other-class image is feasible: PGD finds one."""
    res = PGD(ThreatModel(norm, eps), steps=20)(digits.model, digits.x, digits.y)
    assert bool(res.clean_correct.all())
    assert bool(res.success.all())
    assert res.robust_accuracy == 0.0 and res.success_rate == 1.0


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0), ("l1", 2.0)])
def test_pgd_is_at_least_as_strong_as_fgsm(norm: str, eps: float, digits) -> None:
    threat = ThreatModel(norm, eps)
    fgsm = FGSM(threat)(digits.model, digits.x, digits.y)
    pgd = PGD(threat, steps=10, restarts=2)(digits.model, digits.x, digits.y)
    assert pgd.robust_accuracy <= fgsm.robust_accuracy
    assert 0 < fgsm.robust_accuracy < 1, "a budget where FGSM neither always nor never wins"


def test_trained_model_is_not_trivially_broken(digits) -> None:
    """The fixture's premise: a real classifier, robust at a tiny budget."""
    assert digits.accuracy > 0.9
    res = PGD(ThreatModel("linf", 0.01), steps=10)(digits.model, digits.x, digits.y)
    assert res.robust_accuracy > 0.9


def test_targeted_pgd_reaches_the_target(digits) -> None:
    target = (digits.y + 5) % 10
    threat = ThreatModel("l2", 3.0, targeted=True)
    res = PGD(threat, steps=30)(digits.model, digits.x, digits.y, target)
    assert res.success.float().mean() > 0.9
    assert torch.equal(res.success, res.pred == target)


def test_custom_loss_callable(digits) -> None:
    def toward_class_3(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return z[:, 3] - z.logsumexp(dim=1)

    x, y = digits.x[digits.y != 3], digits.y[digits.y != 3]
    attack = PGD(ThreatModel("linf", 0.5), steps=20, loss=toward_class_3, early_stop=False)
    res = attack(digits.model, x, y)
    assert attack.params()["loss"] == "toward_class_3"
    assert (res.pred == 3).float().mean() > 0.9


def test_margin_and_dlr_losses_also_break_samples(digits) -> None:
    for loss in ("margin", "dlr"):
        res = PGD(ThreatModel("linf", 0.1), steps=10, loss=loss)(digits.model, digits.x, digits.y)
        assert res.success.float().mean() > 0.3, loss


def test_step_size_default() -> None:
    assert PGD(ThreatModel("l2", 0.5), steps=10).step_size == pytest.approx(0.125)
    assert PGD(ThreatModel("l2", 0.5), steps=10, step_size=0.2).step_size == 0.2


# ----- BIM and ILLC -------------------------------------------------------------------------
def test_bim_defaults_follow_kurakin() -> None:
    bim = BIM(ThreatModel("linf", 8 / 255))
    assert bim.steps == 10  # min(ε·255 + 4, 1.25·ε·255) = min(12, 10)
    assert bim.step_size == pytest.approx(1 / 255)
    assert bim.random_start is False and bim.restarts == 1
    assert BIM(ThreatModel("linf", 16 / 255)).steps == 20  # min(20, 20)
    assert BIM(ThreatModel("linf", 0.3)).steps == int(0.3 * 255 + 4)  # min(80.5, 95.6)


def test_bim_distance_grows_by_at_most_one_step_per_iteration(digits) -> None:
    """From x with α = 1/255 and no random start, after s steps ‖δ‖∞ ≤ s/255."""
    for steps in (1, 3):
        res = BIM(ThreatModel("linf", 0.2), steps=steps, early_stop=False)(
            digits.model, digits.x, digits.y
        )
        assert float(res.distance.max()) <= steps / 255 + 1e-6
        assert float(res.distance.max()) > (steps - 1) / 255


def test_illc_descends_toward_the_least_likely_class(digits) -> None:
    """ILLC ends in the least-likely class; BIM with the same budget almost never does."""
    with torch.no_grad():
        least = digits.model(digits.x).argmin(dim=1)
    threat = ThreatModel("linf", 0.5)
    kw = {"steps": 40, "step_size": 0.02, "early_stop": False}
    illc = ILLC(threat, **kw)(digits.model, digits.x, digits.y)
    bim = BIM(threat, **kw)(digits.model, digits.x, digits.y)
    assert (illc.pred == least).float().mean() > 0.9
    assert (bim.pred == least).float().mean() < 0.5
    assert torch.equal(illc.success, illc.pred != digits.y)  # success stays untargeted


def test_illc_least_likely_labels_follow_early_stop(digits) -> None:
    """With early stop the active rows shrink; the least-likely labels must shrink with them.

    Row i of a shrunk batch must still descend toward its own least-likely class, so the
    result for a sample does not depend on which other samples stopped early.
    """
    x, y = digits.x[:16], digits.y[:16]
    threat = ThreatModel("linf", 0.3)
    together = ILLC(threat, steps=20, step_size=0.02)(digits.model, x, y)
    alone = [
        ILLC(threat, steps=20, step_size=0.02)(digits.model, x[i : i + 1], y[i : i + 1])
        for i in range(16)
    ]
    for i, r in enumerate(alone):
        torch.testing.assert_close(together.x_adv[i : i + 1], r.x_adv, atol=1e-6, rtol=0)
