"""Summary rows from hand-made AttackResults (advex.evaluate.metrics)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from advex.evaluate.metrics import (
    accuracy,
    json_safe,
    robust_accuracy_at,
    summary_row,
    worst_case_row,
)
from advex.evaluate.plan import PlanEntry
from advex.result import AttackResult
from advex.threat import ThreatModel


def _result(pred: list[int], y: list[int], clean: list[int], eps: float = 0.1) -> AttackResult:
    n = len(y)
    p, t, c = torch.tensor(pred), torch.tensor(y), torch.tensor(clean)
    return AttackResult(
        x_adv=torch.zeros(n, 1, 2, 2),
        success=p != t,
        distance=torch.linspace(0.0, eps, n),
        pred=p,
        y=t,
        target=None,
        clean_pred=c,
        queries=torch.full((n,), 3),
        gradients=torch.full((n,), 2),
        steps=torch.ones(n, dtype=torch.long),
        seconds=0.5,
        attack="pgd",
        threat=ThreatModel("linf", eps),
        params={"steps": 1},
    )


def test_accuracy() -> None:
    assert accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([])))
    with pytest.raises(ValueError, match="shape"):
        accuracy(torch.tensor([1]), torch.tensor([1, 2]))


def test_summary_row_counts_and_rates() -> None:
    # 4 samples: sample 3 is a clean mistake; the attack breaks sample 1.
    r = _result(pred=[0, 5, 2, 9], y=[0, 1, 2, 3], clean=[0, 1, 2, 7])
    row = summary_row("m", PlanEntry("pgd", "linf", 0.1, {"steps": 1}), r)
    assert row["model"] == "m" and row["attack"] == "pgd" and row["norm"] == "linf"
    assert row["eps"] == 0.1 and row["label"] == "pgd linf ε=0.1"
    assert row["n"] == 4
    assert row["clean_accuracy"] == 0.75
    assert row["robust_accuracy"] == 0.5
    assert row["success_rate"] == pytest.approx(1 / 3)
    assert row["n_clean_correct"] == 3 and row["n_robust"] == 2
    assert row["queries"] == 12 and row["mean_queries"] == 3.0 and row["gradients"] == 8
    assert row["params"] == {"steps": 1}
    assert row["robust_accuracy"] <= row["clean_accuracy"]
    json.dumps(row, allow_nan=False)


def test_summary_row_without_successes_has_no_median() -> None:
    r = _result(pred=[0, 1], y=[0, 1], clean=[0, 1])
    row = summary_row("m", PlanEntry("pgd", "linf", 0.1), r)
    assert row["median_distance"] is None and row["success_rate"] == 0.0
    json.dumps(row, allow_nan=False)


def test_worst_case_is_per_sample_and_below_each_attack() -> None:
    y, clean = [0, 1, 2, 3], [0, 1, 2, 3]
    a = _result(pred=[9, 1, 2, 3], y=y, clean=clean)  # breaks sample 0
    b = _result(pred=[0, 9, 2, 3], y=y, clean=clean)  # breaks sample 1
    entries = [PlanEntry("fgsm", "linf", 0.1), PlanEntry("pgd", "linf", 0.1)]
    row = worst_case_row("m", entries, [a, b])
    assert row["robust_accuracy"] == 0.5
    assert row["robust_accuracy"] <= min(a.robust_accuracy, b.robust_accuracy)
    assert row["attacks"] == ["fgsm", "pgd"] and row["n_robust"] == 2
    assert row["success_rate"] == 0.5


def test_worst_case_rejects_mixed_inputs() -> None:
    a = _result(pred=[0], y=[0], clean=[0])
    b = _result(pred=[1], y=[1], clean=[1])
    e1, e2 = PlanEntry("fgsm", "linf", 0.1), PlanEntry("pgd", "linf", 0.2)
    with pytest.raises(ValueError, match="same samples"):
        worst_case_row("m", [e1, e1], [a, b])
    with pytest.raises(ValueError, match="one \\(norm, eps\\)"):
        worst_case_row("m", [e1, e2], [a, a])
    with pytest.raises(ValueError, match="one result per entry"):
        worst_case_row("m", [e1], [])


def test_json_safe() -> None:
    value = {"a": float("nan"), "b": (1, float("inf")), 3: [2.5]}
    assert json_safe(value) == {"a": None, "b": [1, None], "3": [2.5]}


def test_summary_row_of_a_minimum_norm_l2_entry_has_rho_adv() -> None:
    """ρ_adv = mean ‖x_adv − x‖₂/‖x‖₂ over clean-correct samples the attack broke."""
    res = _result([1, 0, 2, 3], [0, 0, 2, 1], [0, 0, 2, 3])  # broken: 0 (correct), 3 (clean wrong)
    x = torch.full((4, 1, 2, 2), 0.5)  # ‖x‖₂ = 1; x_adv = 0 → ratio 1 for every sample
    entry = PlanEntry("deepfool", "l2", None)
    row = summary_row("m", entry, res, x)
    assert row["rho_adv"] == pytest.approx(1.0)
    assert "rho_adv" not in summary_row("m", PlanEntry("pgd", "l2", 1.0), res, x)
    assert "rho_adv" not in summary_row("m", entry, res)


def test_robust_accuracy_at_from_minimum_norm_distances() -> None:
    """Distances 0, 1/3, 2/3, 1 (linspace); sample 2 failed, sample 3 was wrong from the start."""
    res = _result([1, 0, 2, 3], [0, 1, 2, 1], [0, 1, 2, 3], eps=1.0)
    res.success = torch.tensor([True, True, False, True])
    # broken within ε: sample 0 from ε ≥ 0, sample 1 from ε ≥ 1/3; 2 never; 3 is a clean mistake
    got = robust_accuracy_at(res, [0.0, 0.2, 0.5, 10.0])
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5, 0.25, 0.25], dtype=torch.float64))
    assert robust_accuracy_at(res, torch.tensor(0.4)).shape == ()
