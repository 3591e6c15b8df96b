"""Intervals, best distances, robust-accuracy curves, CDFs and certified gaps (metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from advex.evaluate.metrics import (
    best_attack,
    best_distances,
    cdf,
    certified_gap,
    robust_accuracy_at,
    robust_accuracy_curve,
    robust_accuracy_interval,
    success_rate_interval,
    wilson_interval,
)
from advex.result import AttackResult
from advex.threat import Norm, ThreatModel

INF = math.inf


def _result(
    distance: list[float],
    success: list[bool],
    y: list[int],
    clean: list[int],
    *,
    norm: Norm = "l2",
    attack: str = "a",
    metric: str | None = None,
    targeted: bool = False,
    target: list[int] | None = None,
) -> AttackResult:
    """A hand-made minimum-norm result; pred = y where the attack failed, y + 1 where it won."""
    n = len(y)
    t, s = torch.tensor(y), torch.tensor(success)
    c = torch.tensor(clean)
    pred = torch.where(s, t + 1, c)
    if targeted:
        assert target is not None
        pred = torch.where(s, torch.tensor(target), c)
    return AttackResult(
        x_adv=torch.zeros(n, 1, 2, 2),
        success=s,
        distance=torch.tensor(distance),
        pred=pred,
        y=t,
        target=None if target is None else torch.tensor(target),
        clean_pred=c,
        queries=torch.ones(n, dtype=torch.long),
        gradients=torch.ones(n, dtype=torch.long),
        steps=torch.ones(n, dtype=torch.long),
        seconds=0.1,
        attack=attack,
        threat=ThreatModel(norm, None, targeted=targeted),
        metric=metric,
    )


# --- Wilson intervals -------------------------------------------------------------------------
# z = 1.959964, z² = 3.841459; n + z² = 13.841459 for n = 10.
# k = 0:  center = half = (z²/2)/(n + z²)            → (0, z²/(n + z²)) = (0, 0.277533)
# k = 10: center = (n + z²/2)/(n + z²), half = center − n/(n + z²) → (10/13.841459, 1)
# k = 5:  center = 1/2, half = z·√(2.5 + z²/4)/(n + z²) = 1.959964·1.860206/13.841459 = 0.263407


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (0, 10, (0.0, 0.277533)),
        (10, 10, (0.722467, 1.0)),
        (5, 10, (0.236593, 0.763407)),
    ],
)
def test_wilson_interval_hand_computed(k: int, n: int, expected: tuple[float, float]) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-6)
    assert hi == pytest.approx(expected[1], abs=1e-6)


def test_wilson_interval_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 1), (1, 1), (0, 10), (3, 7), (5, 10), (10, 10), (17, 250), (999, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(float(ci.low), abs=1e-7)
        assert hi == pytest.approx(float(ci.high), abs=1e-7)


def test_wilson_interval_contains_the_proportion_and_stays_in_unit_interval() -> None:
    for n in (1, 2, 5, 37, 1000):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            wide_lo, wide_hi = wilson_interval(k, n, z=3.0)  # a larger z widens the interval
            assert wide_lo <= lo and hi <= wide_hi
    # more samples, narrower interval at the same proportion
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] < (
        wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]
    )


def test_wilson_interval_edge_cases_and_errors() -> None:
    lo, hi = wilson_interval(0, 0)
    assert math.isnan(lo) and math.isnan(hi)
    three, seven = torch.tensor(3), torch.tensor(7)  # integer tensors count too
    assert wilson_interval(three, seven) == wilson_interval(3, 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k: expected 0 <= k <= n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="k: expected 0 <= k <= n"):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError, match="n: expected a count >= 0"):
        wilson_interval(0, -1)
    with pytest.raises(ValueError, match="k: expected an integer"):
        wilson_interval(2.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n: expected an integer"):
        wilson_interval(1, True)
    with pytest.raises(ValueError, match="z: expected a finite number > 0"):
        wilson_interval(1, 10, z=0.0)
    with pytest.raises(ValueError, match="z: expected a finite number > 0"):
        wilson_interval(1, 10, z=math.inf)


def test_intervals_of_an_attack_result() -> None:
    # 5 samples: sample 4 is a clean mistake (returned as a success at distance 0);
    # the attack breaks samples 0 and 1 of the 4 clean-correct ones.
    r = _result(
        [0.1, 0.2, 0.0, 0.0, 0.0],
        [True, True, False, False, True],
        [0, 1, 2, 3, 4],
        [0, 1, 2, 3, 9],
    )
    assert r.robust_accuracy == pytest.approx(2 / 5) and r.success_rate == pytest.approx(2 / 4)
    assert robust_accuracy_interval(r) == wilson_interval(2, 5)
    assert success_rate_interval(r) == wilson_interval(2, 4)
    lo, hi = robust_accuracy_interval(r, z=1.0)
    assert lo <= r.robust_accuracy <= hi
    none_correct = _result([0.0], [True], [0], [5])
    assert all(math.isnan(v) for v in success_rate_interval(none_correct))


# --- best distances ---------------------------------------------------------------------------


def _three_attacks() -> list[AttackResult]:
    """5 samples, y = 0..4; sample 3 is a clean mistake; nobody breaks sample 4."""
    y, clean = [0, 1, 2, 3, 4], [0, 1, 2, 7, 4]
    a = _result([0.5, 0.9, 0.0, 0.0, 0.0], [True, True, False, True, False], y, clean, attack="a")
    b = _result([0.3, 1.2, 0.8, 0.0, 0.0], [True, True, True, True, False], y, clean, attack="b")
    c = _result([0.3, 0.4, 0.7, 0.0, 2.0], [True, False, False, True, False], y, clean, attack="c")
    return [a, b, c]


def test_best_distances_and_best_attack_by_hand() -> None:
    results = _three_attacks()
    best = best_distances(results)
    assert best.dtype == torch.float64 and best.shape == (5,)
    # sample 0: min(0.5, 0.3, 0.3) = 0.3 (b first); 1: c failed at 0.4 → a's 0.9;
    # 2: only b succeeded (0.8; c's 0.7 failed); 3: clean mistake → 0; 4: nobody → ∞
    torch.testing.assert_close(best, torch.tensor([0.3, 0.9, 0.8, 0.0, INF], dtype=torch.float64))
    assert best_attack(results).tolist() == [1, 0, 1, -1, -1]
    for r in results:  # the best is never above any single attack's successful distance
        mask = r.success & r.clean_correct
        assert bool((best[mask] <= r.distance[mask].double()).all())


def test_best_distances_of_one_result_and_targeted() -> None:
    (a, *_rest) = _three_attacks()
    torch.testing.assert_close(
        best_distances([a]), torch.tensor([0.5, 0.9, INF, 0.0, INF], dtype=torch.float64)
    )
    t1 = _result([0.4, 0.6], [True, True], [0, 1], [0, 1], targeted=True, target=[2, 2])
    t2 = _result([0.2, 0.9], [True, False], [0, 1], [0, 1], targeted=True, target=[2, 2])
    torch.testing.assert_close(
        best_distances([t1, t2]), torch.tensor([0.2, 0.6], dtype=torch.float64)
    )
    assert best_attack([t1, t2]).tolist() == [1, 0]


def test_best_distances_rejects_mismatched_results() -> None:
    a = _result([0.1, 0.2], [True, True], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="at least one"):
        best_distances([])
    with pytest.raises(ValueError, match="has 1 samples"):
        best_distances([a, _result([0.1], [True], [0], [0])])
    with pytest.raises(ValueError, match="norm linf"):
        best_distances([a, _result([0.1, 0.2], [True, True], [0, 1], [0, 1], norm="linf")])
    with pytest.raises(ValueError, match="other labels"):
        best_distances([a, _result([0.1, 0.2], [True, True], [1, 0], [1, 0])])
    flow = _result([0.1, 0.2], [True, True], [0, 1], [0, 1], metric="flow")
    with pytest.raises(ValueError, match="not an Lp distance"):
        best_distances([a, flow])
    t = _result([0.1, 0.2], [True, True], [0, 1], [0, 1], targeted=True, target=[1, 0])
    with pytest.raises(ValueError, match="mixes targeted"):
        best_attack([a, t])
    t2 = _result([0.1, 0.2], [True, True], [0, 1], [0, 1], targeted=True, target=[2, 2])
    with pytest.raises(ValueError, match="other targets"):
        best_distances([t, t2])


# --- robust accuracy curves -------------------------------------------------------------------


def test_robust_accuracy_curve_by_hand_and_monotone() -> None:
    d = torch.tensor([0.0, 0.2, 0.5, INF, 0.1], dtype=torch.float64)
    correct = torch.tensor([True, True, True, True, False])
    eps = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 100.0]
    got = robust_accuracy_curve(d, correct, eps)
    # robust at ε iff correct and d > ε: ε=0 → {1,2,3}; 0.2 → {2,3}; 0.5 → {3}
    expected = torch.tensor([3, 3, 2, 2, 1, 1, 1], dtype=torch.float64) / 5
    torch.testing.assert_close(got, expected)
    grid = torch.linspace(0, 1, 101)
    curve = robust_accuracy_curve(
        torch.rand(50, generator=torch.Generator().manual_seed(0)),
        torch.ones(50, dtype=torch.bool),
        grid,
    )
    assert bool((curve[1:] <= curve[:-1]).all()) and curve.shape == grid.shape
    assert robust_accuracy_curve(d, correct, torch.tensor(0.3)).shape == ()
    empty = robust_accuracy_curve(torch.zeros(0), torch.zeros(0, dtype=torch.bool), [0.1])
    assert math.isnan(float(empty[0]))


def test_robust_accuracy_curve_errors() -> None:
    ok = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="distances: expected shape"):
        robust_accuracy_curve(torch.zeros(2, 2), ok, [0.1])
    with pytest.raises(ValueError, match="clean_correct: shape"):
        robust_accuracy_curve(torch.zeros(3), ok, [0.1])
    with pytest.raises(ValueError, match="clean_correct: expected a bool"):
        robust_accuracy_curve(torch.zeros(2), torch.ones(2), [0.1])
    with pytest.raises(ValueError, match="distances: contain NaN"):
        robust_accuracy_curve(torch.tensor([0.1, math.nan]), ok, [0.1])
    with pytest.raises(ValueError, match="eps: expected budgets >= 0"):
        robust_accuracy_curve(torch.zeros(2), ok, [-0.1])


def test_robust_accuracy_at_equals_the_curve_on_best_distances() -> None:
    """One result: robust_accuracy_at is the curve on best_distances([result])."""
    results = _three_attacks()
    grid = torch.linspace(0, 2.5, 26)
    for r in results:
        torch.testing.assert_close(
            robust_accuracy_at(r, grid),
            robust_accuracy_curve(best_distances([r]), r.clean_correct, grid),
        )
    # over all attacks: never above any single attack's curve
    combined = robust_accuracy_curve(best_distances(results), results[0].clean_correct, grid)
    for r in results:
        assert bool((combined <= robust_accuracy_at(r, grid) + 1e-12).all())


# --- CDF and certified gap --------------------------------------------------------------------


def test_cdf_counts_infinite_values_in_n() -> None:
    t, f = cdf(torch.tensor([0.3, INF, 0.1, 0.3, 0.0]))
    torch.testing.assert_close(t, torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64))
    torch.testing.assert_close(f, torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64))
    t, f = cdf(torch.tensor([2.0, 1.0]))
    assert t.tolist() == [1.0, 2.0] and f.tolist() == [0.5, 1.0]
    t, f = cdf(torch.tensor([INF, INF]))
    assert t.numel() == 0 and f.numel() == 0
    t, f = cdf(torch.zeros(0))
    assert t.numel() == 0
    with pytest.raises(ValueError, match="values: expected finite"):
        cdf(torch.tensor([0.1, math.nan]))
    with pytest.raises(ValueError, match="values: expected finite"):
        cdf(torch.tensor([-INF]))


def test_certified_gap() -> None:
    lower = torch.tensor([0.1, 0.0, 0.5, math.nan, 0.3])
    upper = torch.tensor([0.4, 0.2, INF, 0.7, 0.3 + 1e-7])  # last: equal up to float noise
    gap = certified_gap(lower, upper)
    assert gap.dtype == torch.float64
    assert gap[0].item() == pytest.approx(0.3) and gap[1].item() == pytest.approx(0.2)
    assert math.isinf(gap[2].item()) and math.isnan(gap[3].item())
    assert gap[4].item() == pytest.approx(0.0, abs=1e-6)


def test_certified_gap_raises_on_a_contradiction_naming_the_samples() -> None:
    lower = torch.tensor([0.1, 0.5, 0.2, 0.9])
    upper = torch.tensor([0.4, 0.3, 0.2, 0.8])
    with pytest.raises(ValueError, match=r"on 2 sample\(s\): 1 \(lower=0\.5 > upper=0\.3\), 3"):
        certified_gap(lower, upper)
    with pytest.raises(ValueError, match="lower: shape"):
        certified_gap(torch.zeros(2), torch.zeros(3))
