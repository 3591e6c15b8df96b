"""finalize (the re-check every result passes) and AttackResult's summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from advex import AttackResult, Classifier, ThreatModel
from advex.attacks import PGD
from advex.norms import lp_norm
from advex.result import ball_tolerance, check_valid, finalize, succeeded

EPS = {"linf": 0.05, "l2": 0.5, "l1": 2.0, "l0": 6.0}


def np_norm(delta: torch.Tensor, norm: str) -> np.ndarray:
    d = delta.flatten(1).double().numpy()
    return {
        "linf": lambda: np.abs(d).max(axis=1),
        "l2": lambda: np.sqrt((d**2).sum(axis=1)),
        "l1": lambda: np.abs(d).sum(axis=1),
        "l0": lambda: (d != 0).sum(axis=1).astype(float),
    }[norm]()


def _finalize(clf, x, y, x_adv, threat, target=None) -> AttackResult:
    b = len(x)
    zeros = torch.zeros(b, dtype=torch.long)
    with torch.no_grad():
        clean_pred = clf(x).argmax(dim=1)
    return finalize(
        clf,
        x,
        y,
        x_adv,
        threat,
        target=target,
        clean_pred=clean_pred,
        queries=zeros + 1,
        gradients=zeros,
        steps=zeros,
        seconds=0.0,
        attack="test",
        params={"k": 1},
    )


@pytest.mark.parametrize("levels", [None, 256])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_finalize_makes_invalid_candidates_valid_and_measures_them(
    norm: str, targeted: bool, levels, tiny_mlp: nn.Module, images
) -> None:
    clf = Classifier(tiny_mlp)
    threat = ThreatModel(norm, EPS[norm], levels=levels, targeted=targeted)
    with torch.no_grad():
        y = clf(images).argmax(dim=1)
    target = (y + 1) % 10 if targeted else None
    # candidates far outside the box and the ball, and off the grid
    g = torch.Generator().manual_seed(0)
    candidates = images + 3 * torch.randn(images.shape, generator=g)
    assert float(candidates.min()) < 0 and float(candidates.max()) > 1
    res = _finalize(clf, images, y, candidates, threat, target)

    x_adv = res.x_adv
    assert bool(((x_adv >= 0) & (x_adv <= 1)).all())
    dist = np_norm(x_adv - images, norm)
    assert (dist <= EPS[norm] + ball_tolerance(EPS[norm])).all()
    assert (dist > 0).all(), "the candidates moved every sample; so should the result"
    if levels is not None:
        assert torch.equal(x_adv, torch.round(x_adv * 255) / 255)
    np.testing.assert_allclose(res.distance.double().numpy(), dist, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        pred = clf.module(x_adv).argmax(dim=1)
    assert torch.equal(res.pred, pred)
    want = pred == target if targeted else pred != y
    assert torch.equal(res.success, want)


@pytest.mark.parametrize("levels", [None, 256])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_finalize_keeps_valid_candidates_unchanged(norm: str, levels, tiny_mlp, images) -> None:
    threat = ThreatModel(norm, EPS[norm], levels=levels)
    g = torch.Generator().manual_seed(1)
    delta = torch.zeros_like(images)
    # move two elements per sample by ±1/255 (feasible for every norm and on the grid)
    delta.view(16, -1)[:, :2] = (torch.randint(0, 2, (16, 2), generator=g) * 2 - 1) / 255
    candidates = (images + delta).clamp(0, 1)
    candidates = torch.round(candidates * 255) / 255
    y = torch.zeros(16, dtype=torch.long)
    res = _finalize(Classifier(tiny_mlp), images, y, candidates, threat)
    assert torch.equal(res.x_adv, candidates)


def test_finalize_result_does_not_alias_the_candidates(tiny_mlp, images) -> None:
    y = torch.zeros(16, dtype=torch.long)
    cand = images.clone()
    res = _finalize(Classifier(tiny_mlp), images, y, cand, ThreatModel("linf", 0.1))
    assert res.x_adv.data_ptr() != cand.data_ptr()
    assert res.x_adv.data_ptr() != images.data_ptr()


def test_finalize_counts_exactly_one_forward(tiny_mlp, images) -> None:
    clf = Classifier(tiny_mlp)
    y = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        clf(images)
    before = clf.forward_count
    finalize(
        clf,
        images,
        y,
        images + 0.5,
        ThreatModel("l2", 1.0),
        target=None,
        clean_pred=y,
        queries=y,
        gradients=y,
        steps=y,
        seconds=0.0,
        attack="test",
    )
    assert clf.forward_count - before == 16


class BatchDependent(nn.Module):
    """Class 1 iff x₀ > 0.5, with the threshold 10⁻⁵ higher in batches of more than one: the
    float rounding of another batch size, exaggerated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, :1] - 0.5 - (1e-5 if x.shape[0] > 1 else 0.0)
        return torch.cat([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("eps", [None, 0.35])
def test_finalize_repairs_points_the_attack_saw_succeed_at_the_boundary(eps) -> None:
    clf = Classifier(BatchDependent())
    x = torch.tensor([[0.2], [0.3], [0.1]])
    y = torch.zeros(3, dtype=torch.long)
    cand = torch.tensor([[0.500001], [0.9], [0.500001]])  # seen adversarial one at a time
    claimed = torch.tensor([True, True, False])
    common = dict(target=None, clean_pred=y, queries=y, gradients=y, steps=y, seconds=0.0)
    threat = ThreatModel("l2", eps)
    plain = finalize(clf, x, y, cand, threat, attack="t", **common)  # type: ignore[arg-type]
    assert plain.success.tolist() == [False, True, False]
    before = clf.forward_count
    fixed = finalize(clf, x, y, cand, threat, attack="t", claimed=claimed, **common)  # type: ignore[arg-type]
    assert fixed.success.tolist() == [True, True, False]
    assert clf.forward_count - before == 2 * 3  # the fresh pass and one outward try
    assert fixed.rechecks.tolist() == [2, 2, 2] and plain.rechecks.tolist() == [1, 1, 1]
    # moved outward by 10⁻⁴ of δ: the distance grows by that fraction, no more
    assert fixed.distance[0] == pytest.approx(0.300001 * 1.0001, rel=1e-6)
    assert torch.equal(fixed.x_adv[2], plain.x_adv[2])  # not claimed: untouched, a failure
    with torch.no_grad():
        assert bool(clf(fixed.x_adv).argmax(dim=1)[0] == 1)


def test_finalize_moves_claimed_minimum_norm_points_outward() -> None:
    clf = Classifier(BatchDependent())
    x = torch.tensor([[0.2], [0.3]])
    y = torch.zeros(2, dtype=torch.long)
    cand = torch.tensor([[0.50002], [0.9]])
    common = dict(target=None, clean_pred=y, queries=y, gradients=y, steps=y, seconds=0.0)
    claimed = torch.tensor([True, False])
    res = finalize(
        clf, x, y, cand, ThreatModel("l2"), attack="t", claimed=claimed, outward=1e-4, **common
    )  # type: ignore[arg-type]
    assert res.distance[0] == pytest.approx(0.30002 * 1.0001, rel=1e-6)  # claimed: pushed
    assert res.distance[1] == pytest.approx(0.6, rel=1e-6)  # not claimed: as given
    assert res.success.tolist() == [True, True] and res.rechecks.tolist() == [1, 1]
    bounded = finalize(
        clf, x, y, cand, ThreatModel("l2", 1.0), attack="t", claimed=claimed, outward=1e-4, **common
    )  # type: ignore[arg-type]
    assert bounded.distance[0] == pytest.approx(0.30002, rel=1e-6)  # with an eps: never moved


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_finalize_when_snapping_would_leave_the_ball(norm: str) -> None:
    """Every element just below the next grid level, δ exactly on the sphere: snapping each
    one up by 5e-5 of a step adds up past the tolerance, so finalize must round toward x."""
    n = 64
    x = torch.full((2, n), 100 / 255)
    step = torch.full((2, n), (1 - 5e-5) / 255)
    eps = float(lp_norm(step.double(), norm)[0])
    threat = ThreatModel(norm, eps, levels=256)
    model = Classifier(nn.Linear(n, 3))
    y = torch.zeros(2, dtype=torch.long)
    res = _finalize(model, x, y, x + step, threat)
    assert (np_norm(res.x_adv - x, norm) <= eps + ball_tolerance(eps)).all()
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)


def test_check_valid_raises_on_invalid_points(images) -> None:
    t = ThreatModel("linf", 0.1, levels=256)
    with pytest.raises(RuntimeError, match="box"):
        check_valid(images + 2, images, t)
    with pytest.raises(RuntimeError, match="eps"):
        check_valid((images + 0.2).clamp(0, 1), images, t)
    with pytest.raises(RuntimeError, match="grid"):
        check_valid((images + 0.3 / 255).clamp(0, 1), images, t)
    with pytest.raises(RuntimeError, match="NaN"):
        check_valid(images * math.nan, images, t)
    dist = check_valid(images, images, t)
    assert torch.equal(dist, torch.zeros(16))


def test_ball_tolerance_is_small_but_covers_float32() -> None:
    for eps in (1e-3, 8 / 255, 0.5, 10.0, 1000.0):
        tol = ball_tolerance(eps)
        assert 0 < tol <= 1e-5 * eps + 1e-6
        # float32 rounding of eps itself is inside the tolerance
        assert abs(float(np.float32(eps)) - eps) <= tol


def test_succeeded() -> None:
    pred = torch.tensor([0, 1, 2, 3])
    y = torch.tensor([0, 0, 2, 2])
    t = torch.tensor([1, 1, 1, 3])
    assert succeeded(pred, y, None, False).tolist() == [False, True, False, True]
    assert succeeded(pred, y, t, True).tolist() == [False, True, False, True]
    assert succeeded(pred, y, t, False).tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="target"):
        succeeded(pred, y, None, True)


# ----- clean-misclassified samples, as result.py's module docstring says ------------------
def test_clean_misclassified_untargeted_returned_unchanged_and_counted(digits) -> None:
    x, y = digits.x[:12], digits.y[:12].clone()
    wrong = torch.tensor([1, 4, 7])
    y[wrong] = (y[wrong] + 1) % 10  # the model now gets these wrong
    res = PGD(ThreatModel("linf", 0.03), steps=5)(digits.model, x, y)
    assert torch.equal(res.x_adv[wrong], x[wrong])
    assert torch.equal(res.distance[wrong], torch.zeros(3))
    assert res.success[wrong].all()
    assert (res.pred[wrong] != y[wrong]).all()
    assert torch.equal(res.queries[wrong], torch.ones(3, dtype=torch.long))
    clean_correct = torch.ones(12, dtype=torch.bool)
    clean_correct[wrong] = False
    assert torch.equal(res.clean_correct, clean_correct)
    assert res.clean_accuracy == pytest.approx(9 / 12)
    assert res.robust_accuracy == pytest.approx(float((res.pred == y).float().mean()))
    assert res.robust_accuracy <= 9 / 12
    assert res.success_rate == pytest.approx(float(res.success[clean_correct].float().mean()))


def test_targeted_success_is_target_and_robust_accuracy_is_still_y(digits) -> None:
    x, y = digits.x[:10], digits.y[:10]
    target = (y + 3) % 10
    threat = ThreatModel("linf", 0.3, targeted=True)
    res = PGD(threat, steps=20)(digits.model, x, y, target)
    assert torch.equal(res.success, res.pred == target)
    assert res.robust_accuracy == pytest.approx(float((res.pred == y).float().mean()))
    assert res.success.any()


# ----- summaries ----------------------------------------------------------------------------
def _result(success, pred, y, clean_pred, distance=None, n_target=False) -> AttackResult:
    n = len(y)
    return AttackResult(
        x_adv=torch.zeros(n, 2),
        success=torch.tensor(success),
        distance=torch.tensor(distance if distance is not None else [0.1 * i for i in range(n)]),
        pred=torch.tensor(pred),
        y=torch.tensor(y),
        target=torch.tensor(pred) if n_target else None,
        clean_pred=torch.tensor(clean_pred),
        queries=torch.arange(1, n + 1),
        gradients=torch.arange(n),
        steps=torch.ones(n, dtype=torch.long),
        seconds=0.5,
        attack="test",
        threat=ThreatModel("l2", 1.0),
        params={"steps": 3, "loss": "ce"},
    )


def test_accuracies_and_rates() -> None:
    r = _result(
        success=[True, False, True, True, True],
        pred=[1, 1, 0, 3, 0],
        y=[0, 1, 2, 3, 4],
        clean_pred=[0, 1, 2, 0, 4],
        distance=[0.5, 9.0, 0.1, 0.0, 0.3],
    )
    assert len(r) == 5
    assert r.clean_accuracy == pytest.approx(4 / 5)
    assert r.robust_accuracy == pytest.approx(2 / 5)  # pred == y on samples 1 and 3
    assert r.success_rate == pytest.approx(3 / 4)  # of the clean-correct 0, 1, 2, 4
    # over successful clean-correct samples 0, 2, 4 (sample 3 is a clean error)
    assert r.median_distance == pytest.approx(0.3)


def test_success_rate_and_median_are_nan_without_clean_correct_samples() -> None:
    r = _result(success=[True, True], pred=[1, 0], y=[0, 1], clean_pred=[1, 0])
    assert math.isnan(r.success_rate)
    assert math.isnan(r.median_distance)
    d = r.to_dict()
    assert d["success_rate"] is None and d["median_distance"] is None
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize("per_sample", [False, True])
def test_to_dict_is_json(per_sample: bool) -> None:
    r = _result(success=[True, False, True], pred=[1, 1, 2], y=[0, 1, 2], clean_pred=[0, 1, 2])
    d = r.to_dict(per_sample=per_sample)
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["n"] == 3
    assert back["norm"] == "l2" and back["eps"] == 1.0 and back["bounds"] == [0.0, 1.0]
    assert back["robust_accuracy"] == pytest.approx(2 / 3)
    assert back["params"] == {"steps": 3, "loss": "ce"}
    assert back["mean_queries"] == pytest.approx(2.0)
    assert back["queries"] == 1 + 2 + 3 and back["gradients"] == 0 + 1 + 2
    if per_sample:
        samples = back["samples"]
        assert samples["success"] == [True, False, True]
        assert samples["pred"] == [1, 1, 2] and samples["target"] is None
        assert samples["queries"] == [1, 2, 3] and samples["steps"] == [1, 1, 1]
        assert len(samples["distance"]) == 3
    else:
        assert "samples" not in back


def test_to_dict_per_sample_only_adds_fields() -> None:
    """The docstring says per_sample gives *also* the per-sample fields: summary keys keep
    their meaning (e.g. "queries" stays the total, not a list)."""
    r = _result(success=[True, False, True], pred=[1, 1, 2], y=[0, 1, 2], clean_pred=[0, 1, 2])
    summary, full = r.to_dict(), r.to_dict(per_sample=True)
    changed = {k for k in summary if full.get(k) != summary[k]}
    assert not changed, f"per_sample=True changed summary fields {sorted(changed)}"


def test_to_dict_of_a_real_attack_is_json(digits) -> None:
    res = PGD(ThreatModel("l2", 0.5, levels=256), steps=3)(digits.model, digits.x[:6], digits.y[:6])
    json.dumps(res.to_dict(per_sample=True), allow_nan=False)


def test_concat() -> None:
    a = _result(success=[True, False], pred=[1, 1], y=[0, 1], clean_pred=[0, 1], n_target=True)
    b = _result(success=[True], pred=[2], y=[0], clean_pred=[1], n_target=True)
    c = AttackResult.concat([a, b])
    assert len(c) == 3
    for name in ("x_adv", "success", "distance", "pred", "y", "target", "clean_pred", "queries"):
        assert torch.equal(getattr(c, name), torch.cat([getattr(a, name), getattr(b, name)]))
    assert c.seconds == pytest.approx(1.0)
    assert AttackResult.concat([a, b], seconds=7.0).seconds == 7.0
    assert c.threat == a.threat and c.attack == "test"
    assert c.robust_accuracy == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="parts"):
        AttackResult.concat([])
