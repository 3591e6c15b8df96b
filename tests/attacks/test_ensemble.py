"""The ensemble: members run only on samples still robust; worst case per sample; recipes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advex import ThreatModel
from advex.attacks import APGD, FGSM, PGD, Ensemble, Square, fast, standard
from advex.attacks.ensemble import EnsembleResult
from advex.result import ball_tolerance


def _members(threat: ThreatModel, seed: int) -> list:
    return [
        FGSM(threat, seed=seed),
        PGD(threat, steps=5, seed=seed),
        Square(threat, max_queries=200, seed=seed),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.5)])
def test_never_more_robust_than_any_member_alone(digits, norm: str, eps: float, seed: int):
    threat = ThreatModel(norm, eps)
    x, y = digits.x, digits.y
    ens = Ensemble(threat, _members(threat, seed), seed=seed)(digits.model, x, y)
    alone = [m(digits.model, x, y) for m in _members(threat, seed)]
    assert 0 < ens.robust_accuracy < 1, "the case must leave some samples robust"
    for res in alone:
        assert ens.robust_accuracy <= res.robust_accuracy, res.attack
    # and per sample: a sample robust in the ensemble was attacked by every member
    robust = torch.nonzero(ens.pred == ens.y).squeeze(1)
    for rows, part in ens.member_results:
        assert set(robust.tolist()) <= set(rows.tolist())
        assert not bool(part.success[torch.isin(rows, robust)].any())


def test_members_only_see_unbroken_samples_and_costs_add_up(digits):
    threat = ThreatModel("linf", 0.06)
    x, y = digits.x, digits.y
    ens = Ensemble(threat, _members(threat, 0))(digits.model, x, y)
    assert isinstance(ens, EnsembleResult)
    assert ens.members == ["fgsm", "pgd", "square"]
    seen = torch.zeros(len(y), dtype=torch.long)
    broken_before = torch.zeros(len(y), dtype=torch.bool)
    for i, (rows, part) in enumerate(ens.member_results):
        assert not bool(broken_before[rows].any()), "a member was given a broken sample"
        seen[rows] += part.queries
        broken_before[rows[part.success]] = True
        assert torch.equal(
            ens.broken_by[rows[part.success]], torch.full_like(rows[part.success], i)
        )
    assert torch.equal(ens.queries, seen + 1)  # + the ensemble's own clean pass
    assert torch.equal(broken_before, ens.broken_by >= 0)
    assert torch.equal(ens.success, ens.broken_by >= 0)  # all clean-correct here
    # the returned points are valid and re-checked
    assert float(ens.distance.max()) <= 0.06 + ball_tolerance(0.06)
    with torch.no_grad():
        assert torch.equal(digits.model(ens.x_adv).argmax(dim=1), ens.pred)
    counts = ens.broken_counts()
    assert sum(counts.values()) == int(ens.success.sum())


def test_clean_mistakes_are_not_attacked(digits):
    threat = ThreatModel("linf", 0.06)
    x, y = digits.x[:8], digits.y[:8].clone()
    y[:3] = (y[:3] + 1) % 10  # now misclassified
    ens = Ensemble(threat, _members(threat, 0))(digits.model, x, y)
    assert ens.success[:3].all() and (ens.broken_by[:3] == -1).all()
    assert (ens.distance[:3] == 0).all()
    for rows, _ in ens.member_results:
        assert not bool(torch.isin(rows, torch.arange(3)).any())


def test_recipes_are_deterministic_and_have_the_standard_members(digits):
    threat = ThreatModel("linf", 0.06)
    s = standard(threat, seed=3)
    assert [a.name for a in s.attacks] == ["apgd", "apgd-t", "fab-t", "square"]
    assert s.attacks[1].n_target_classes == 9 and s.attacks[2].n_target_classes == 9
    assert s.attacks[3].max_queries == 5000
    assert all(a.seed == 3 for a in s.attacks)
    assert [a.name for a in standard(ThreatModel("l1", 5.0)).attacks] == ["apgd", "apgd-t"]
    f = fast(threat, seed=3)
    assert [a.name for a in f.attacks] == ["apgd", "apgd-t"]
    x, y = digits.x[:24], digits.y[:24]
    a, b = f(digits.model, x, y), f(digits.model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.broken_by, b.broken_by)


def test_standard_is_at_least_as_strong_as_apgd_ce(digits):
    threat = ThreatModel("linf", 0.05)
    x, y = digits.x[:32], digits.y[:32]
    ens = fast(threat)(digits.model, x, y)
    ce = APGD(threat)(digits.model, x, y)
    assert ens.robust_accuracy <= ce.robust_accuracy


def test_bad_members_raise():
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="attacks: expected at least one"):
        Ensemble(threat, [])
    with pytest.raises(ValueError, match="share the threat model"):
        Ensemble(threat, [FGSM(ThreatModel("linf", 0.2))])
    with pytest.raises(TypeError, match="attacks"):
        Ensemble(threat, [nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="untargeted only"):
        standard(ThreatModel("linf", 0.1, targeted=True))
    with pytest.raises(ValueError, match="needs eps"):
        standard(ThreatModel("linf", None))
