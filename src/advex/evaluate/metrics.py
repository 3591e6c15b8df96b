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

Uncertainty and per-sample views:

* a proportion k/n comes with its Wilson score interval (Wilson, JASA 1927): with z the normal
  quantile (1.96 for 95 %),

      center = (k + z²/2)/(n + z²),   half = z·√(k(n − k)/n + z²/4)/(n + z²),

  [center − half, center + half] ⊂ [0, 1]; unlike the Wald interval k/n ± z√(p(1−p)/n) it does
  not collapse to a point at k = 0 or k = n;
* the best distance of a sample over several minimum-norm attacks on the same samples is
  d*_i = min_a {‖δ_{a,i}‖ : attack a broke i} (∞ if none did, 0 if the clean input is already
  misclassified); robust accuracy at ε is then #{clean-correct and d*_i > ε}/n for every ε;
* the empirical CDF of distances F(t) = #{d_i ≤ t}/n counts every sample in n, so samples no
  attack broke (d = ∞) keep the curve below 1;
* the certified gap u_i − l_i between a certified lower bound l_i on the minimal adversarial
  distance and the best attack's distance u_i ≥ l_i: the part of the robustness the evaluation
  leaves undecided (l_i > u_i would be a certificate contradicted by an attack: a bug).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from advex.evaluate.plan import PlanEntry
from advex.result import AttackResult

__all__ = [
    "Z95",
    "accuracy",
    "best_attack",
    "best_distances",
    "cdf",
    "certified_gap",
    "json_safe",
    "rho_adv",
    "robust_accuracy_at",
    "robust_accuracy_curve",
    "robust_accuracy_interval",
    "success_rate_interval",
    "summary_row",
    "wilson_interval",
    "worst_case_row",
]

#: The two-sided 95 % normal quantile Φ⁻¹(0.975).
Z95 = 1.959964


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
    no adversarial example within ε (its distance is > ε, or it failed): ``robust_accuracy_curve``
    on d_i = ‖δ_i‖ where the attack broke a clean-correct sample i and ∞ elsewhere. Returns a
    float64 tensor shaped like ``eps``.
    """
    correct = result.clean_correct.cpu()
    broken_at = torch.where(
        result.success.cpu() & correct,
        result.distance.detach().double().cpu(),
        torch.full(correct.shape, math.inf, dtype=torch.float64),
    )
    return robust_accuracy_curve(broken_at, correct, eps)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    center = (k + z²/2)/(n + z²), half = z·√(k(n − k)/n + z²/4)/(n + z²); returns
    (center − half, center + half), clipped to [0, 1] against rounding. ``z`` = 1.959964 gives
    95 % (two-sided). (nan, nan) for n = 0.

    Raises:
        ValueError: if k or n is not an integer, n < 0, k ∉ [0, n], or z is not finite and > 0.
    """
    k, n = _count(k, "k"), _count(n, "n")
    if n < 0:
        raise ValueError(f"n: expected a count >= 0, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k: expected 0 <= k <= n={n}, got {k}")
    if isinstance(z, bool) or not isinstance(z, int | float) or not math.isfinite(z) or z <= 0:
        raise ValueError(f"z: expected a finite number > 0, got {z!r}")
    if n == 0:
        return math.nan, math.nan
    z2 = z * z
    center = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    return max(0.0, center - half), min(1.0, center + half)


def robust_accuracy_interval(result: AttackResult, z: float = Z95) -> tuple[float, float]:
    """Wilson interval of ``result.robust_accuracy``: k = #{pred = y} of n = len(result)."""
    return wilson_interval(int((result.pred == result.y).sum()), len(result), z)


def success_rate_interval(result: AttackResult, z: float = Z95) -> tuple[float, float]:
    """Wilson interval of ``result.success_rate``: k = #{success, clean-correct} of
    n = #{clean-correct} ((nan, nan) if the model gets every clean sample wrong)."""
    correct = result.clean_correct
    k = int((result.success & correct).sum())
    return wilson_interval(k, int(correct.sum()), z)


def best_distances(results: Sequence[AttackResult]) -> Tensor:
    """Per-sample best (smallest) successful distance over attacks on the same samples.

    d*_i = min_a {distance_{a,i} : attack a succeeded on i}, ∞ where no attack succeeded and
    0 where the clean input is misclassified (by any of the results: an untargeted threat is
    then broken with δ = 0). Every result must cover the same samples (same y, and target when
    targeted), in the same Lp norm (``metric`` None: custom distances such as a flow loss are
    not comparable) and the same targeted-ness. Returns float64 (B,) on the CPU.

    Raises:
        ValueError: no results, or results that do not match as above.
    """
    table, correct = _distance_table(results)
    best = table.amin(dim=0)
    if not results[0].threat.targeted:
        best = torch.where(correct, best, torch.zeros_like(best))
    return best


def best_attack(results: Sequence[AttackResult]) -> Tensor:
    """Index into ``results`` of the attack achieving ``best_distances`` (the first on ties).

    −1 where no attack succeeded, and (untargeted) where the clean input is misclassified, as
    no attack was needed there. Returns long (B,) on the CPU.
    """
    table, correct = _distance_table(results)
    index = table.argmin(dim=0)
    none = torch.isinf(table.amin(dim=0))
    if not results[0].threat.targeted:
        none = none | ~correct
    return torch.where(none, torch.full_like(index, -1), index)


def robust_accuracy_curve(
    distances: Tensor, clean_correct: Tensor, eps: Sequence[float] | Tensor
) -> Tensor:
    """Robust accuracy at each ε implied by per-sample minimal adversarial distances.

    acc(ε) = #{i : clean_correct_i and d_i > ε}/n, non-increasing in ε; d_i = ∞ for samples
    no attack broke. Returns float64 shaped like ``eps`` (NaN for an empty batch).

    Raises:
        ValueError: shapes that do not match, NaN distances, or NaN/negative budgets.
    """
    d = torch.as_tensor(distances).detach().double().cpu()
    correct = torch.as_tensor(clean_correct).detach().cpu()
    if d.ndim != 1:
        raise ValueError(f"distances: expected shape (B,), got {tuple(d.shape)}")
    if correct.shape != d.shape:
        raise ValueError(
            f"clean_correct: shape {tuple(correct.shape)} does not match distances {tuple(d.shape)}"
        )
    if correct.dtype != torch.bool:
        raise ValueError(f"clean_correct: expected a bool tensor, got dtype {correct.dtype}")
    if bool(torch.isnan(d).any()):
        raise ValueError("distances: contain NaN (use inf for samples no attack broke)")
    budgets = torch.as_tensor(eps, dtype=torch.float64).detach().cpu()
    if bool(torch.isnan(budgets).any()) or bool((budgets < 0).any()):
        raise ValueError(f"eps: expected budgets >= 0, got {budgets.tolist()}")
    if d.numel() == 0:
        return torch.full(budgets.shape, math.nan, dtype=torch.float64)
    robust = correct.unsqueeze(0) & (d.unsqueeze(0) > budgets.reshape(-1, 1))
    return robust.double().mean(dim=1).reshape(budgets.shape)


def cdf(values: Tensor) -> tuple[Tensor, Tensor]:
    """Empirical CDF F(t) = #{v_i ≤ t}/n at the distinct finite values t.

    n counts every sample, +∞ included, so F stays below 1 when some values are infinite
    (samples no attack broke). Returns (t, F(t)), both float64 on the CPU, t increasing;
    empty tensors for no finite values.

    Raises:
        ValueError: if ``values`` contain NaN or −∞.
    """
    v = torch.as_tensor(values).detach().double().cpu().flatten()
    if bool(torch.isnan(v).any()) or bool((v == -math.inf).any()):
        raise ValueError("values: expected finite numbers or +inf, found NaN or -inf")
    n = v.numel()
    finite = v[torch.isfinite(v)].sort().values
    t, counts = torch.unique_consecutive(finite, return_counts=True)
    return t, counts.cumsum(0).double() / max(n, 1)


def certified_gap(
    lower: Tensor, upper: Tensor, *, atol: float = 1e-6, rtol: float = 1e-5
) -> Tensor:
    """Per-sample gap u − l between a certified lower bound l on the minimal adversarial
    distance and an attack's distance u (an upper bound on it).

    ∞ where no attack succeeded (u = ∞), NaN where ``lower`` is NaN (not certified). A
    certificate above an attack's distance, l > u + atol + rtol·|u|, is a contradiction: a bug
    in the certifier or the attack. Returns float64 on the CPU, shaped like the inputs.

    Raises:
        ValueError: mismatched shapes, or a contradiction (naming the samples).
    """
    lo = torch.as_tensor(lower).detach().double().cpu()
    up = torch.as_tensor(upper).detach().double().cpu()
    if lo.shape != up.shape:
        raise ValueError(f"lower: shape {tuple(lo.shape)} does not match upper {tuple(up.shape)}")
    bad = lo > up + atol + rtol * up.abs()
    if bool(bad.any()):
        flat_lo, flat_up = lo.reshape(-1), up.reshape(-1)
        rows = torch.nonzero(bad.reshape(-1)).squeeze(1)
        shown = ", ".join(
            f"{int(i)} (lower={float(flat_lo[i]):.6g} > upper={float(flat_up[i]):.6g})"
            for i in rows[:10]
        )
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        raise ValueError(
            f"lower: a certified lower bound exceeds an attack's distance on {len(rows)} "
            f"sample(s): {shown}{more} — the certificate or the attack is wrong"
        )
    return up - lo


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer count, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer count, got {value!r}") from None


def _distance_table(results: Sequence[AttackResult]) -> tuple[Tensor, Tensor]:
    """(A, B) float64 distances with ∞ where attack a failed, and (B,) clean-correct (all)."""
    if len(results) == 0:
        raise ValueError("results: expected at least one AttackResult")
    first = results[0]
    for i, r in enumerate(results):
        if r.metric is not None:
            raise ValueError(
                f"results: result {i} ({r.attack}) measures {r.metric!r}, not an Lp distance"
            )
        if len(r) != len(first):
            raise ValueError(
                f"results: result {i} ({r.attack}) has {len(r)} samples, result 0 has {len(first)}"
            )
        if r.threat.norm != first.threat.norm:
            raise ValueError(
                f"results: result {i} ({r.attack}) is in norm {r.threat.norm}, result 0 in "
                f"{first.threat.norm}"
            )
        if r.threat.targeted != first.threat.targeted:
            raise ValueError("results: mixes targeted and untargeted threat models")
        if not torch.equal(r.y.cpu(), first.y.cpu()):
            raise ValueError(f"results: result {i} ({r.attack}) was run on other labels y")
        if first.threat.targeted and (
            r.target is None
            or first.target is None
            or not torch.equal(r.target.cpu(), first.target.cpu())
        ):
            raise ValueError(f"results: result {i} ({r.attack}) has other targets")
    table = torch.stack(
        [
            torch.where(
                r.success.cpu(),
                r.distance.detach().double().cpu(),
                torch.full((len(r),), math.inf, dtype=torch.float64),
            )
            for r in results
        ]
    )
    correct = torch.stack([r.clean_correct.cpu() for r in results]).all(dim=0)
    return table, correct
