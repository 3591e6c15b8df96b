"""The numbers behind the report, computed from an ``EvaluationResult`` (no HTML, no plots).

Robust accuracy from all evidence. A sample counts as broken at budget ε (in one norm) when
some attack of that norm returned a misclassified point admissible at ε: a point of an attack
run with a budget ε' ≤ ε (its ball constraint was enforced by ``finalize``), or a point whose
measured Lp distance is ≤ ε (+ ``ball_tolerance``), which covers minimum-norm attacks and
attacks run at larger budgets. Distances of attacks that report another metric (``metric``
set, e.g. stAdv's "flow") are never compared with ε: such an attack counts only at budgets
≥ its own. This "worst case over everything" can only be lower than any single attack's
robust accuracy, and is an upper bound on the true one.

Every proportion comes with a Wilson 95 % interval (``advex.evaluate.metrics.wilson_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advex.evaluate.clever import CleverResult
from advex.evaluate.metrics import (
    best_distances,
    certified_gap,
    wilson_interval,
)
from advex.evaluate.plan import PlanEntry
from advex.evaluate.run import EvaluationResult, Record
from advex.result import AttackResult, ball_tolerance
from advex.threat import parse_norm

__all__ = [
    "CertifiedBounds",
    "Proportion",
    "Strongest",
    "best_min_norm",
    "broken_at",
    "certified_at",
    "check_certified",
    "check_clever",
    "distance_stats",
    "min_norm_records",
    "norms",
    "strongest",
]


@dataclass(frozen=True)
class CertifiedBounds:
    """Certified lower bounds on the minimal adversarial distance of one model in one norm.

    Attributes:
        norm: the Lp norm of the bounds ('linf', 'l2', 'l1'; aliases accepted).
        lower: (B,) per sample, for the evaluated samples in order: no adversarial example
            exists at a distance < ``lower[i]`` from x_i. 0 (or NaN) where nothing is certified.
        method: the certifier's name, shown in the report (e.g. "ibp", "crown", "mip").
        upper: (B,) or None: the distance of a re-checked adversarial example the certifier
            found itself (the exact MILP does), ∞ where it found none.
    """

    norm: str
    lower: Tensor
    method: str = "certified"
    upper: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm))
        lower = torch.as_tensor(self.lower).detach().double().cpu()
        if lower.ndim != 1:
            raise ValueError(f"lower: expected shape (B,), got {tuple(lower.shape)}")
        if bool((lower < 0).any()):
            raise ValueError("lower: certified lower bounds must be >= 0 (or NaN)")
        object.__setattr__(self, "lower", lower)
        if self.upper is not None:
            upper = torch.as_tensor(self.upper).detach().double().cpu().reshape(-1)
            if upper.shape != lower.shape:
                raise ValueError(f"upper: expected shape {tuple(lower.shape)}")
            object.__setattr__(self, "upper", upper)

    def bounds(self) -> Tensor:
        """``lower`` with NaN (not certified) as 0."""
        return torch.nan_to_num(self.lower, nan=0.0)


@dataclass(frozen=True)
class Proportion:
    """k of n, with its Wilson 95 % interval."""

    k: int
    n: int
    interval: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", wilson_interval(self.k, self.n))

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @staticmethod
    def of(mask: Tensor) -> Proportion:
        return Proportion(int(mask.sum()), int(mask.numel()))


@dataclass(frozen=True)
class Strongest:
    """The strongest evaluation of one model in one norm: all evidence at the largest ε that
    every budgeted attack of that norm ran (the largest ε run at all if there is none)."""

    model: str
    norm: str
    eps: float
    attacks: list[str]
    robust: Proportion
    robust_mask: Tensor


def norms(plan: Sequence[PlanEntry]) -> list[str]:
    """The plan's norms in order of first appearance."""
    return list(dict.fromkeys(e.norm for e in plan))


def _records(result: EvaluationResult, model: str, norm: str) -> list[Record]:
    return [r for r in result.records if r.model == model and r.entry.norm == norm]


def min_norm_records(result: EvaluationResult, model: str, norm: str) -> list[Record]:
    """Minimum-norm (ε None), untargeted records of ``model`` in ``norm`` whose distances are
    Lp distances (``metric`` None): the ones whose distances make curves."""
    return [
        r
        for r in _records(result, model, norm)
        if r.entry.eps is None and r.result.metric is None and not r.result.threat.targeted
    ]


def broken_at(result: EvaluationResult, model: str, norm: str, eps: float) -> Tensor:
    """(B,) bool: some attack of ``norm`` has a misclassified point admissible at ``eps``
    (see the module docstring); clean mistakes are always broken."""
    broken = result.clean_pred[model] != result.y
    limit = eps + ball_tolerance(eps)
    for rec in _records(result, model, norm):
        res = rec.result
        wrong = (res.pred != res.y).cpu()
        budget = rec.entry.eps
        if budget is not None and budget <= eps:
            broken |= wrong
        elif res.metric is None:
            broken |= wrong & (res.distance.detach().double().cpu() <= limit)
    return broken


def _common_eps(result: EvaluationResult, model: str, norm: str) -> float | None:
    budgets: dict[tuple[str, str], set[float]] = {}
    for rec in _records(result, model, norm):
        if rec.entry.eps is not None:
            key = (rec.entry.attack, repr(sorted(rec.entry.params.items())))
            budgets.setdefault(key, set()).add(rec.entry.eps)
    if not budgets:
        return None
    common = set.intersection(*budgets.values())
    return max(common) if common else max(set.union(*budgets.values()))


def strongest(result: EvaluationResult, model: str, norm: str) -> Strongest | None:
    """The strongest evaluation of ``model`` in ``norm`` (None without a budgeted attack)."""
    eps = _common_eps(result, model, norm)
    if eps is None:
        return None
    broken = broken_at(result, model, norm, eps)
    attacks = list(dict.fromkeys(r.entry.attack for r in _records(result, model, norm)))
    return Strongest(model, norm, eps, attacks, Proportion.of(~broken), ~broken)


def best_min_norm(result: EvaluationResult, model: str, norm: str) -> Tensor | None:
    """Per-sample best distance over the minimum-norm attacks of ``norm`` (∞: none broke the
    sample, 0: clean mistake); None without a minimum-norm Lp result."""
    recs = min_norm_records(result, model, norm)
    if not recs:
        return None
    return best_distances([r.result for r in recs])


def attack_distances(res: AttackResult) -> Tensor:
    """(B,) float64: the distance where the attack broke a clean-correct sample, ∞ elsewhere."""
    hit = (res.success & res.clean_correct).cpu()
    d = res.distance.detach().double().cpu()
    return torch.where(hit, d, torch.full_like(d, math.inf))


def distance_stats(res: AttackResult) -> tuple[float, float]:
    """Median and mean distance over the successful, clean-correct samples (NaN if none)."""
    d = attack_distances(res)
    d = d[torch.isfinite(d)]
    if d.numel() == 0:
        return math.nan, math.nan
    return float(d.quantile(0.5)), float(d.mean())


def certified_at(cert: CertifiedBounds, correct: Tensor, eps: float) -> Tensor:
    """(B,) bool: the model is right on x_i and its certified bound exceeds ``eps``
    (strictly: a bound equal to ε leaves the sphere ‖δ‖ = ε open)."""
    return correct.cpu() & (cert.bounds() > eps)


def certified_gaps(
    cert: CertifiedBounds, best: Tensor, correct: Tensor
) -> tuple[Tensor | None, str | None]:
    """Gaps u − l on the clean-correct samples, or (None, message) on a contradiction."""
    mask = correct.cpu()
    try:
        return certified_gap(cert.bounds()[mask], best[mask]), None
    except ValueError as err:
        return None, str(err)


def _as_list(value: Any, kind: type, what: str, model: str) -> list[Any]:
    items = list(value) if isinstance(value, Sequence) else [value]
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(
                f"{what}: expected {kind.__name__} (or a list of them) for model {model!r}, "
                f"got {type(item).__name__}"
            )
    return items


def _check_model(result: EvaluationResult, model: str, what: str) -> None:
    if model not in result.clean_pred:
        raise ValueError(
            f"{what}: model {model!r} is not in the evaluation (models: "
            f"{', '.join(map(repr, result.model_names))})"
        )


def check_certified(
    result: EvaluationResult, certified: Mapping[str, Any] | None
) -> dict[str, list[CertifiedBounds]]:
    """``certified`` (model → CertifiedBounds or a list of them) checked against the run."""
    out: dict[str, list[CertifiedBounds]] = {}
    n = int(result.y.shape[0])
    for model, value in (certified or {}).items():
        _check_model(result, model, "certified")
        items = _as_list(value, CertifiedBounds, "certified", model)
        for c in items:
            if c.lower.shape[0] != n:
                raise ValueError(
                    f"certified: model {model!r} has {c.lower.shape[0]} bounds for {n} samples"
                )
        out[model] = items
    return out


def check_clever(
    result: EvaluationResult, clever: Mapping[str, Any] | None
) -> dict[str, list[CleverResult]]:
    """``clever`` (model → CleverResult or a list of them) checked against the run; a result
    may cover only the first samples (CLEVER is costly), never more than the run has."""
    out: dict[str, list[CleverResult]] = {}
    n = int(result.y.shape[0])
    for model, value in (clever or {}).items():
        _check_model(result, model, "clever")
        items = _as_list(value, CleverResult, "clever", model)
        for c in items:
            if len(c) > n:
                raise ValueError(f"clever: model {model!r} has {len(c)} scores for {n} samples")
        out[model] = items
    return out
