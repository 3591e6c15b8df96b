"""Summary numbers of an evaluation, computed from ``AttackResult``s.

For n samples with labels y, clean predictions c and predictions p on the attack's points:

* clean accuracy = #{c = y}/n;
* robust accuracy = #{p = y}/n (a clean mistake counts as broken, as in AutoAttack);
* success rate = #{p ≠ y, c = y}/#{c = y}, the fraction of clean-correct samples broken;
* median distance = median ‖x_adv − x‖ over the samples the attack broke;
* worst-case robust accuracy at one (norm, ε) over several attacks on the same samples:
  #{p_a = y for every attack a}/n — a sample is robust only if no attack broke it, so it is
  never above any single attack's robust accuracy;
* robust accuracy at ε from a minimum-norm result: #{c = y and not (broken with ‖δ‖ ≤ ε)}/n,
  one curve over every ε from one run;
* ρ_adv (DeepFool's empirical robustness) = mean ‖x_adv − x‖₂/‖x‖₂ over the clean-correct
  samples a minimum-norm attack broke.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from advex.evaluate.plan import PlanEntry
from advex.result import AttackResult

__all__ = [
    "accuracy",
    "json_safe",
    "rho_adv",
    "robust_accuracy_at",
    "summary_row",
    "worst_case_row",
]


def accuracy(pred: Tensor, y: Tensor) -> float:
    """Fraction of ``pred == y`` (NaN for an empty batch)."""
    if pred.shape != y.shape:
        raise ValueError(f"pred: shape {tuple(pred.shape)} does not match y {tuple(y.shape)}")
    return float((pred == y).float().mean()) if y.numel() else math.nan


def summary_row(
    model: str,
    entry: PlanEntry,
    result: AttackResult,
    x: Tensor | None = None,
    flags: Sequence[Any] = (),
) -> dict[str, Any]:
    """One results row: the model, the plan entry and ``result.to_dict()``'s summary.

    ``params`` are all the attack's settings; ``plan_params`` only those the plan entry set.
    Adds ``label``, ``n_clean_correct`` and ``n_robust`` (counts behind the two accuracies); for
    a minimum-norm L2 entry (``eps`` None) with the clean inputs ``x`` given, also ``rho_adv``;
    ``flags`` lists the names of the sanity checks that fired (``advex.evaluate.checks.Flag``).
    """
    row: dict[str, Any] = {"model": model, "label": entry.label}
    row.update(result.to_dict())
    row["attack"] = entry.attack
    row["norm"] = entry.norm
    row["eps"] = entry.eps
    row["plan_params"] = dict(entry.params)
    row["n_clean_correct"] = int(result.clean_correct.sum())
    row["n_robust"] = int((result.pred == result.y).sum())
    if x is not None and entry.eps is None and entry.norm == "l2":
        row["rho_adv"] = rho_adv(result, x)
    row["flags"] = [f.name for f in flags if f.fired]
    return json_safe(row)


def worst_case_row(
    model: str, entries: Sequence[PlanEntry], results: Sequence[AttackResult]
) -> dict[str, Any]:
    """Per-sample worst case over attacks run at the same (norm, ε) on the same samples."""
    if not results or len(entries) != len(results):
        raise ValueError("results: expected one result per entry, at least one")
    norms = {(e.norm, e.eps) for e in entries}
    if len(norms) != 1:
        raise ValueError(f"entries: expected one (norm, eps), got {sorted(map(str, norms))}")
    first = results[0]
    if any(not torch.equal(r.y, first.y) for r in results):
        raise ValueError("results: the attacks were not run on the same samples")
    robust = torch.stack([r.pred == r.y for r in results]).all(dim=0)
    clean_correct = first.clean_correct
    n_robust = int(robust.sum())
    n_correct = int(clean_correct.sum())
    return json_safe(
        {
            "model": model,
            "norm": entries[0].norm,
            "eps": entries[0].eps,
            "attacks": [e.attack for e in entries],
            "n": len(first),
            "clean_accuracy": first.clean_accuracy,
            "robust_accuracy": float(robust.float().mean()),
            "success_rate": (n_correct - int((robust & clean_correct).sum())) / n_correct
            if n_correct
            else None,
            "n_robust": n_robust,
        }
    )


def json_safe(value: Any) -> Any:
    """``value`` with NaN/Inf floats replaced by None and tuples by lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def rho_adv(result: AttackResult, x: Tensor) -> float:
    """DeepFool's robustness measure ρ̂_adv: the mean of ‖x_adv − x‖₂ / ‖x‖₂.

    The mean runs over samples the model classifies correctly and the attack broke (NaN if
    there are none); ``x`` are the clean inputs the result was computed on.
    """
    if x.shape != result.x_adv.shape:
        raise ValueError(f"x: expected shape {tuple(result.x_adv.shape)}, got {tuple(x.shape)}")
    mask = result.success & result.clean_correct
    if not bool(mask.any()):
        return math.nan
    x = x.to(result.x_adv.device)
    delta = (result.x_adv - x).flatten(1).double().norm(dim=1)
    size = x.flatten(1).double().norm(dim=1)
    return float((delta[mask] / size[mask].clamp_min(1e-12)).mean())


def robust_accuracy_at(result: AttackResult, eps: Sequence[float] | Tensor) -> Tensor:
    """Robust accuracy at each budget in ``eps`` implied by a minimum-norm result.

    A sample counts as robust at ε when the model classifies it correctly and the attack found
    no adversarial example within ε (its distance is > ε, or it failed). Returns a float64
    tensor shaped like ``eps``.
    """
    budgets = torch.as_tensor(eps, dtype=torch.float64).cpu()
    correct = result.clean_correct.cpu()
    broken_at = torch.where(
        result.success.cpu() & correct,
        result.distance.detach().double().cpu(),
        torch.full_like(result.distance, math.inf, dtype=torch.float64).cpu(),
    )
    robust = correct.unsqueeze(0) & (broken_at.unsqueeze(0) > budgets.reshape(-1, 1))
    return robust.double().mean(dim=1).reshape(budgets.shape)
