"""``AttackResult`` and ``finalize``, the re-check every result passes before it is returned.

``finalize`` is the only constructor attacks use. It takes the candidate points an attack
found and makes them valid, then measures them itself:

1. clip to the box [lo, hi];
2. project onto the threat model's ball (when ``eps`` is given) — exact, see ``advex.norms``;
3. round onto the value grid toward the clean point (when ``levels`` is given), which never
   increases any ‖x' − x‖_p;
4. check the three constraints (raising ``RuntimeError`` if any fails: a bug, never silence);
5. run the model once more on the returned points: ``pred`` and ``success`` come from that
   pass, ``distance`` from the returned points. For a black-box attack this pass asks the
   oracle for labels; it is not one of the attack's queries (``queries`` excludes it) but the
   oracle's own totals include it.
   A point the attack saw succeed that the fresh pass puts on the other side of the decision
   boundary (float rounding differs between batch sizes, and minimum-norm attacks end within
   ~10⁻⁵ of the boundary) is moved outward by 10⁻⁴, 10⁻³ or 10⁻² of its perturbation until a
   fresh pass agrees (``_repair``); otherwise it is reported as a failure.

Clean samples the model already gets wrong: for an untargeted threat they are returned
unchanged (x' = x, distance 0) and count as successes, as in AutoAttack; ``robust_accuracy``
is therefore the fraction of samples the model still classifies correctly after the attack,
and ``success_rate`` is the fraction of *clean-correct* samples the attack broke. For a
targeted threat, success means ``pred == target`` and robust accuracy is still ``pred == y``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from advex.model import Classifier
from advex.norms import lp_norm, on_grid, project, quantize
from advex.oracle import Oracle
from advex.threat import ThreatModel

__all__ = ["AttackResult", "ball_tolerance", "finalize", "succeeded"]


def ball_tolerance(eps: float) -> float:
    """Stated tolerance on ‖δ‖ ≤ eps for returned points: 1e-5·eps + 1e-6 (float32 rounding)."""
    return 1e-5 * eps + 1e-6


def succeeded(pred: Tensor, y: Tensor, target: Tensor | None, targeted: bool) -> Tensor:
    """Success per sample: pred ≠ y (untargeted) or pred = target (targeted)."""
    if targeted:
        if target is None:
            raise ValueError("target: a targeted threat model needs target labels")
        return pred == target
    return pred != y


@dataclass
class AttackResult:
    """What an attack returns, every field measured on the returned points.

    Attributes:
        x_adv: adversarial points (B, ...), valid for ``threat``.
        success: (B,) bool, decided by a fresh forward pass on ``x_adv``.
        distance: (B,) ‖x_adv − x‖ in the threat's norm.
        pred: (B,) labels the model gives ``x_adv``.
        y: (B,) true labels; ``target`` (B,) or None.
        clean_pred: (B,) labels the model gives the clean inputs.
        queries: (B,) forward passes spent on each sample (the final re-check excluded).
        gradients: (B,) backward passes spent on each sample.
        steps: (B,) iterations each sample was active.
        seconds: wall time of the whole attack call.
        attack: attack name; ``threat``: the threat model; ``params``: the attack's settings.
        rechecks: (B,) forward passes of the final re-check each sample was part of (1, or more
            where a boundary point was repaired, see ``finalize``); not in ``queries``. So the
            model saw Σ queries + Σ rechecks points in all.
        metric: what ``distance`` measures when it is not ``threat.norm`` (e.g. "flow" for
            stAdv's flow loss); None for the Lp distance. See ``distance_metric``.
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    pred: Tensor
    y: Tensor
    target: Tensor | None
    clean_pred: Tensor
    queries: Tensor
    gradients: Tensor
    steps: Tensor
    seconds: float
    attack: str
    threat: ThreatModel
    params: dict[str, Any] = field(default_factory=dict)
    rechecks: Tensor | None = None
    metric: str | None = None

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def distance_metric(self) -> str:
        """The name of what ``distance`` measures: ``metric``, or the threat's norm."""
        return self.metric or self.threat.norm

    @property
    def clean_correct(self) -> Tensor:
        """(B,) bool: the model classified the clean input correctly."""
        return self.clean_pred == self.y

    @property
    def clean_accuracy(self) -> float:
        return _mean(self.clean_correct)

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples still classified correctly on ``x_adv``."""
        return _mean(self.pred == self.y)

    @property
    def success_rate(self) -> float:
        """Fraction of clean-correct samples the attack succeeded on (NaN if there are none)."""
        ok = self.clean_correct
        if not bool(ok.any()):
            return math.nan
        return _mean(self.success[ok])

    @property
    def median_distance(self) -> float:
        """Median distance over successful, clean-correct samples (NaN if none)."""
        mask = self.success & self.clean_correct
        if not bool(mask.any()):
            return math.nan
        return float(self.distance[mask].double().quantile(0.5))

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready summary; with ``per_sample`` also the per-sample fields under "samples"."""
        out: dict[str, Any] = {
            "attack": self.attack,
            "norm": self.threat.norm,
            "eps": self.threat.eps,
            "bounds": list(self.threat.bounds),
            "levels": self.threat.levels,
            "targeted": self.threat.targeted,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": _nan_to_none(self.success_rate),
            "median_distance": _nan_to_none(self.median_distance),
            "metric": self.distance_metric,
            "seconds": self.seconds,
            "queries": int(self.queries.sum()),
            "gradients": int(self.gradients.sum()),
            "mean_queries": float(self.queries.float().mean()),
            "params": self.params,
        }
        if per_sample:
            out["samples"] = dict(
                success=self.success.tolist(),
                distance=self.distance.tolist(),
                pred=self.pred.tolist(),
                y=self.y.tolist(),
                target=None if self.target is None else self.target.tolist(),
                clean_pred=self.clean_pred.tolist(),
                queries=self.queries.tolist(),
                gradients=self.gradients.tolist(),
                steps=self.steps.tolist(),
                rechecks=None if self.rechecks is None else self.rechecks.tolist(),
            )
        return out

    #: The per-sample tensor fields (``target`` too, when not None).
    PER_SAMPLE: ClassVar[tuple[str, ...]] = (
        "x_adv",
        "success",
        "distance",
        "pred",
        "y",
        "target",
        "clean_pred",
        "queries",
        "gradients",
        "steps",
        "rechecks",
    )

    def map_samples(self, fn: Callable[[Tensor], Tensor]) -> Self:
        """A copy (of the same class) with ``fn`` applied to every per-sample tensor."""
        changes: dict[str, Any] = {}
        for name in self.PER_SAMPLE:
            value = getattr(self, name)
            changes[name] = None if value is None else fn(value)
        return dataclasses.replace(self, **changes)

    def take(self, rows: Tensor) -> Self:
        """The result restricted to the samples ``rows`` (indices or a bool mask)."""
        return self.map_samples(lambda t: t[rows])

    @staticmethod
    def concat(parts: list[AttackResult], seconds: float | None = None) -> AttackResult:
        """Join results of consecutive batches of the same attack and threat.

        The result has the class of ``parts[0]`` (a subclass's per-sample fields, its
        ``PER_SAMPLE``, are joined too; its other fields are taken from the first part)."""
        if not parts:
            raise ValueError("parts: nothing to concatenate")
        first = parts[0]
        names = first.PER_SAMPLE
        joined: dict[str, Any] = {}
        for name in names:
            values = [getattr(p, name) for p in parts]
            joined[name] = None if values[0] is None else torch.cat(values)
        rest = {
            f.name: getattr(first, f.name)
            for f in dataclasses.fields(first)
            if f.name not in names and f.name != "seconds"
        }
        total = sum(p.seconds for p in parts) if seconds is None else seconds
        return type(first)(**rest, **joined, seconds=total)


def _mean(t: Tensor) -> float:
    return float(t.float().mean()) if t.numel() else math.nan


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def make_valid(x_adv: Tensor, x: Tensor, threat: ThreatModel) -> Tensor:
    """Clip to the box, project onto the ball, round onto the grid toward x: a feasible point."""
    lo, hi = threat.bounds
    x_adv = x_adv.clamp(lo, hi)
    if threat.eps is None:
        return quantize(x_adv, x, threat)
    x_adv = (x + project(x_adv - x, x, threat)).clamp(lo, hi)
    snapped = quantize(x_adv, x, threat)
    # Snapping float noise onto the grid may grow ‖δ‖ by ~1e-7 per element; where that adds up
    # past the tolerance (L1/L2 on many elements), round strictly toward x instead.
    over = lp_norm(snapped - x, threat.norm) > threat.eps + ball_tolerance(threat.eps)
    if bool(over.any()):
        strict = quantize(x_adv, x, threat, snap=False)
        snapped = torch.where(over.reshape(-1, *[1] * (x.ndim - 1)), strict, snapped)
    return snapped


def check_valid(x_adv: Tensor, x: Tensor, threat: ThreatModel) -> Tensor:
    """Raise ``RuntimeError`` unless every point is in the box, the ball and on the grid.

    Returns the per-sample distances ‖x_adv − x‖ in the threat's norm.
    """
    lo, hi = threat.bounds
    if not bool(torch.isfinite(x_adv).all()):
        raise RuntimeError("internal error: adversarial points contain NaN or Inf")
    if float(x_adv.min()) < lo or float(x_adv.max()) > hi:
        raise RuntimeError("internal error: adversarial points outside the box after finalize")
    distance = lp_norm(x_adv - x, threat.norm)
    if threat.eps is not None:
        worst = float(distance.max())
        if worst > threat.eps + ball_tolerance(threat.eps):
            raise RuntimeError(
                f"internal error: ‖δ‖={worst:.8g} exceeds eps={threat.eps:g} after finalize"
            )
    if threat.levels is not None and not bool(on_grid(x_adv, threat).all()):
        raise RuntimeError("internal error: adversarial points off the value grid after finalize")
    return distance


#: Outward moves tried on a point a fresh pass sees on the wrong side of the boundary.
_REPAIR_STEPS = (1e-4, 1e-3, 1e-2)


def _labels(model: Classifier | Oracle, x: Tensor) -> Tensor:
    return model.labels(x) if isinstance(model, Oracle) else model(x).argmax(dim=1)


def _repair(
    model: Classifier | Oracle,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    x_adv: Tensor,
    threat: ThreatModel,
    pred: Tensor,
    success: Tensor,
    claimed: Tensor,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Move the points the attack saw succeed, and the fresh pass does not, outward.

    Returns x_adv, pred, success and the number of passes over the batch (the first included)."""
    passes = 1
    lost = claimed.to(success.device) & ~success
    if threat.norm == "l0" or not bool(lost.any()):
        return x_adv, pred, success, passes
    view = (-1,) + (1,) * (x.ndim - 1)
    for s in _REPAIR_STEPS:
        rows = torch.nonzero(lost).squeeze(1)
        xr = x[rows]
        moved = make_valid(xr + (1 + s) * (x_adv[rows] - xr), xr, threat)
        grew = lp_norm(moved - xr, threat.norm) > lp_norm(x_adv[rows] - xr, threat.norm)
        trial = x_adv.clone()
        trial[rows] = torch.where(grew.reshape(view), moved, x_adv[rows])
        p = _labels(model, trial)  # the whole batch: the same float rounding as the first pass
        passes += 1
        won = lost & succeeded(p, y, target, threat.targeted)
        x_adv = torch.where(won.reshape(view), trial, x_adv)
        pred = torch.where(won, p, pred)
        success = success | won
        lost = lost & ~won
        if not bool(lost.any()):
            break
    return x_adv, pred, success, passes


def finalize(
    model: Classifier | Oracle,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    threat: ThreatModel,
    *,
    target: Tensor | None,
    clean_pred: Tensor,
    queries: Tensor,
    gradients: Tensor,
    steps: Tensor,
    seconds: float,
    attack: str,
    params: dict[str, Any] | None = None,
    claimed: Tensor | None = None,
    outward: float = 0.0,
    distance: Tensor | None = None,
    metric: str | None = None,
) -> AttackResult:
    """Make candidates valid, check them, and measure them with one fresh forward pass.

    ``claimed`` (B,) bool, optional: the samples the attack saw succeed at ``x_adv``. A
    minimum-norm attack leaves its points within ~10⁻⁵ of the decision boundary, where the
    float rounding of a different batch size can move the logits across it; for such a sample
    the point is moved outward along its perturbation, x + (1 + s)·δ for s = 10⁻⁴, 10⁻³, 10⁻²
    (kept only if it stays valid), until a fresh pass agrees. Each try is one more pass over the
    batch; samples no try repairs are reported as failures, as the fresh pass says.

    ``outward`` > 0 (minimum-norm searches, ``eps=None``): every claimed point is first moved to
    x + (1 + outward)·δ, so that it stays adversarial under other float rounding too (another
    batch size or memory layout of the user's own re-check); decision-based attacks end their
    binary searches within ~10⁻⁵ of the boundary.

    ``distance`` (B,) and ``metric``, optional: for attacks whose distance is not the threat's
    Lp norm (a flow loss, a colour-function distance), the attack's measure of the
    transformation behind each returned point, reported instead of ‖x_adv − x‖ under the name
    ``metric``. The box, ball and grid are checked all the same.
    """
    measure = distance
    if measure is not None:
        if metric is None:
            raise ValueError("metric: a custom distance needs the name of what it measures")
        if measure.shape != y.shape or not bool(torch.isfinite(measure).all()):
            raise RuntimeError(
                f"internal error: custom distances must be finite with shape {tuple(y.shape)}"
            )
    with torch.no_grad():
        x_adv = make_valid(x_adv.detach(), x, threat)
        if outward > 0 and claimed is not None and threat.eps is None and threat.norm != "l0":
            pushed = make_valid(x + (1 + outward) * (x_adv - x), x, threat)
            view = (-1,) + (1,) * (x.ndim - 1)
            x_adv = torch.where(claimed.to(x.device).reshape(view), pushed, x_adv)
        distance = check_valid(x_adv, x, threat)
        pred = _labels(model, x_adv)
        success = succeeded(pred, y, target, threat.targeted)
        if claimed is not None:
            x_adv, pred, success, passes = _repair(
                model, x, y, target, x_adv, threat, pred, success, claimed
            )
            distance = check_valid(x_adv, x, threat)
        else:
            passes = 1
        if measure is not None:
            distance = measure.detach().to(device=x.device, dtype=x.dtype)
    return AttackResult(
        x_adv=x_adv,
        success=success,
        distance=distance,
        pred=pred,
        y=y,
        target=target,
        clean_pred=clean_pred,
        queries=queries,
        gradients=gradients,
        steps=steps,
        seconds=seconds,
        attack=attack,
        threat=threat,
        params=dict(params or {}),
        rechecks=torch.full_like(y, passes),
        metric=metric if measure is not None else None,
    )
