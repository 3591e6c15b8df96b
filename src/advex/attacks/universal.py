"""Universal adversarial perturbations: one v, fitted on a dataset, that fools most inputs.

The problem (Moosavi-Dezfooli et al. 2017): find one perturbation v with

    ‖v‖_p ≤ ξ   and   P_{x∼μ}( k(clip(x + v)) ≠ k(x) ) ≥ 1 − δ,

k the classifier's label, ξ = ``threat.eps``, clip onto the box [lo, hi]. Two solvers:

``Universal`` — the paper's Algorithm 1. Passes over the shuffled fitting data; for each point
x_i that v does not fool yet, the minimal perturbation Δv_i that sends x_i + v across the
boundary (DeepFool at clip(x_i + v), ``advex.attacks.deepfool``), then

    v ← P_{p,ξ}(v + Δv_i),

P_{p,ξ} the projection onto the Lp ball of radius ξ. After each pass the fooling rate on the
fitting data is measured; the fit stops once it reaches 1 − δ or after ``max_passes``.

``UniversalSGD`` — the minibatch stochastic-gradient form (lecture 004; Shafahi, Najibi, Xu,
Dickerson, Davis, Goldstein. Universal Adversarial Training. AAAI 2020. arXiv:1811.11304):

    max_{‖v‖_p ≤ ξ} E_x L(f(clip(x + v)), k(x)),

by projected steepest ascent on minibatches, v ← P_{p,ξ}(v + α_e · s_p(∇_v mean L)), s_∞ = sign,
s_2 = g/‖g‖₂, s_1 the sparse L1 direction (``advex.norms.ascent``), α_e = ``step_size`` ·
``decay``^e in epoch e. The loss is the cross-entropy (default) or the margin
max_{j≠k} z_j − z_k clamped at κ (a point fooled by κ stops pulling v).

Targeted (``threat.targeted``): one target class t for the whole dataset; success is k(x') = t.
``Universal`` then takes the targeted DeepFool step: at the current point, with j the strongest
class other than t, the linearized minimal step onto z_t = z_j (DeepFool's dual-norm formula),
repeated until the label is t. ``UniversalSGD`` maximizes the targeted loss (−CE toward t, or
the margin z_t − max_{j≠t} z_j clamped at κ).

Moosavi-Dezfooli, Fawzi, Fawzi, Frossard. Universal adversarial perturbations. CVPR 2017.
arXiv:1610.08401

Choices and differences from the paper:

* batched: the points of a minibatch (``batch_size``, m of them unfooled) that v does not fool
  are found with one forward pass, DeepFool runs on all of them at once (one forward and
  ``candidates`` − 1 backward passes per step; ``steps`` at most), and v takes one step,

      v ← P_{p,ξ}(v + (1/√m) Σ_i Δv_i),

  a step as long as one Δv_i (the Δv_i of different points are nearly orthogonal, so their sum
  is about √m times as long) in their summed direction. ``batch_size=1`` is the paper's
  sequential rule exactly. On the bundled MNIST CNN (500 fitting images, ξ = 0.2 L∞ and 3 L2,
  two seeds) the full sum lets each minibatch overwrite v (fooling rates jump between 7 and
  31 % from pass to pass) and the mean learns slowly (10–16 % after 10 passes); this rule is
  steadier and as high or higher (15–33 % held out). A point DeepFool does not move across
  the boundary within ``steps`` adds nothing (as in ART);
* the inner DeepFool minimizes ‖Δv_i‖₂ whatever p, as in the paper (``deepfool_norm="linf"``
  takes the L∞ step instead: on the bundled CNN it fools fewer images); only the
  ``candidates`` classes of largest logit at x_i + v are considered (default 3: as strong as 10
  on the bundled CNN, and three times faster);
* the fooling rate that decides the stop, and the ``history``, are measured on the points
  ``apply`` returns: clip(x + v), rounded onto the value grid (``levels``) toward x;
* k(x) are the clean predictions (the paper's definition of fooling), not the labels y;
* the returned v is the one of the best pass (highest fooling rate on the fitting data), not
  necessarily the last — for ``UniversalSGD`` too, whose passes are epochs;
* the projection is onto the ball intersected with [lo − hi, hi − lo]^d, which changes no
  clip(x + v) but keeps v bounded (and lets the L1 ball use ``advex.norms.project_ball``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.deepfool import DeepFool, _candidate_classes
from advex.attacks.fitted import DatasetAttack, Fitted, _checked
from advex.attacks.losses import ce, margin
from advex.model import Classifier, as_classifier
from advex.norms import ascent, lp_norm, project_ball, quantize
from advex.threat import ThreatModel, parse_norm

__all__ = ["Universal", "UniversalPerturbation", "UniversalSGD"]


@dataclass(kw_only=True)
class UniversalPerturbation(Fitted):
    """One perturbation v (1, C, H, W) for every input: x' = clip(x + v, lo, hi).

    ``‖v‖_p ≤ ξ`` (``threat.eps``) in the threat's norm, so every x' is in the ball around its x
    (clipping only shrinks |x' − x|); ``distance`` is that norm.
    """

    v: Tensor

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        lo, hi = self.threat.bounds
        return (x + self.v.to(device=x.device, dtype=x.dtype)).clamp(lo, hi)

    @property
    def norm(self) -> float:
        """‖v‖_p in the threat's norm."""
        return float(lp_norm(self.v, self.threat.norm)[0])


class _Fit:
    """The state shared by both fits: the model, the labels to leave (or the target), counts."""

    def __init__(
        self, attack: DatasetAttack, model: Any, x: Tensor, y: Tensor, target: Any
    ) -> None:
        self.start = time.perf_counter()
        self.threat = attack.threat
        self.clf: Classifier = as_classifier(model, bounds=self.threat.bounds)
        self.x, self.y, self.target = _inputs(self.clf, x, y, target, self.threat)
        self.size = attack.batch_size or self.x.shape[0]
        self.generator = torch.Generator(device=self.x.device)
        self.generator.manual_seed(attack.seed)
        self.queries = 0
        self.gradients = 0
        self.history: list[float] = []
        self.best_rate = -1.0
        self.best_v = torch.zeros_like(self.x[:1])

    def labels(self) -> Tensor:
        """k(x) of the fitting data (untargeted), or the target for every point."""
        if self.target is not None:
            return torch.full_like(self.y, self.target)
        with torch.no_grad():
            return torch.cat([self.forward(xb).argmax(1) for xb in self.x.split(self.size)])

    def forward(self, x: Tensor) -> Tensor:
        self.queries += x.shape[0]
        return self.clf(x)

    def count_backward(self, n: int) -> None:
        self.gradients += n
        self.clf.backward_count += n

    def fooled(self, logits: Tensor, labels: Tensor) -> Tensor:
        pred = logits.argmax(dim=1)
        return pred == labels if self.target is not None else pred != labels

    def applied(self, x: Tensor, v: Tensor) -> Tensor:
        """clip(x + v) on the value grid: the points ``apply`` returns."""
        lo, hi = self.threat.bounds
        return quantize((x + v).clamp(lo, hi), x, self.threat)

    def project(self, v: Tensor) -> Tensor:
        """P_{p,ξ}(v) ∩ [lo − hi, hi − lo]^d (the box part changes no clip(x + v))."""
        lo, hi = self.threat.bounds
        span = hi - lo
        zero = torch.zeros_like(v)
        return project_ball(v, zero, self.threat.norm, self.threat.eps, (-span, span))

    def end_pass(self, v: Tensor, labels: Tensor) -> float:
        """Fooling rate of v on the fitting data; keeps the best v."""
        with torch.no_grad():
            hits = [
                self.fooled(self.forward(self.applied(xb, v)), lb)
                for xb, lb in zip(self.x.split(self.size), labels.split(self.size), strict=True)
            ]
        rate = float(torch.cat(hits).float().mean())
        self.history.append(rate)
        if rate > self.best_rate:
            self.best_rate, self.best_v = rate, v.detach().clone()
        return rate

    def result(self, attack: DatasetAttack) -> UniversalPerturbation:
        return UniversalPerturbation(
            attack=attack.name,
            threat=self.threat,
            params=attack.params(),
            seconds=time.perf_counter() - self.start,
            queries=self.queries,
            gradients=self.gradients,
            history=self.history,
            v=self.best_v,
        )


def _inputs(
    clf: Classifier, x: Any, y: Any, target: Any, threat: ThreatModel
) -> tuple[Tensor, Tensor, int | None]:
    """Checked (x, y) and the one target class (an int, or per-sample labels all equal)."""
    if target is not None and not isinstance(target, Tensor):
        if isinstance(target, bool) or not isinstance(target, int):
            raise ValueError(f"target: expected an int or a tensor, got {type(target).__name__}")
        n = x.shape[0] if isinstance(x, Tensor) else len(x)
        target = torch.full((n,), target, dtype=torch.long)
    x, y, labels = _checked(clf, x, y, target, threat)
    if labels is None:
        return x, y, None
    if labels.numel() and not bool((labels == labels[0]).all()):
        raise ValueError("target: a universal perturbation has one target class; got several")
    return x, y, int(labels[0]) if labels.numel() else 0


class Universal(DatasetAttack):
    """The universal perturbation of Moosavi-Dezfooli et al. (2017), by batched DeepFool steps.

    Args:
        threat: norm (linf, l2 or l1) and ξ = eps (required); targeted for one target class.
        delta: stop once the fooling rate on the fitting data reaches 1 − delta (paper: 0.2).
        max_passes: passes over the fitting data at most (ART's ``max_iter``).
        steps: DeepFool iterations per point at most (ART's DeepFool ``max_iter``).
        overshoot: DeepFool's overshoot (the paper's 0.02).
        candidates: classes DeepFool considers (those of largest logit at x + v); None: all.
        deepfool_norm: the norm DeepFool's step minimizes, "l2" (the paper's) or "linf".
        seed: seeds the shuffling. batch_size: points per minibatch (1: the paper's sequential
            algorithm exactly), and per forward pass in ``apply``.
    """

    name: ClassVar[str] = "universal"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        delta: float = 0.2,
        max_passes: int = 10,
        steps: int = 10,
        overshoot: float = 0.02,
        candidates: int | None = 3,
        deepfool_norm: str = "l2",
        seed: int = 0,
        batch_size: int | None = 32,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size)
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 <= delta < 1:
            raise ValueError(f"delta: expected a number in [0, 1), got {delta!r}")
        checks.positive_int("max_passes", max_passes)
        if deepfool_norm not in ("l2", "linf"):
            raise ValueError(f"deepfool_norm: expected 'l2' or 'linf', got {deepfool_norm!r}")
        # DeepFool checks steps, overshoot and candidates; its step is the one used here.
        self._deepfool = DeepFool(
            ThreatModel(parse_norm(deepfool_norm), None, bounds=threat.bounds),
            steps=steps,
            overshoot=overshoot,
            candidates=candidates,
        )
        self.delta = float(delta)
        self.max_passes = max_passes
        self.steps = steps
        self.overshoot = float(overshoot)
        self.candidates = candidates
        self.deepfool_norm = deepfool_norm

    def fit(
        self, model: Any, x: Tensor, y: Tensor, target: int | Tensor | None = None
    ) -> UniversalPerturbation:
        """Fit v on (x, y) (``target``: one class, int or equal labels); see the module doc."""
        run = _Fit(self, model, x, y, target)
        n = run.x.shape[0]
        v = run.best_v
        with run.clf.attacking():
            labels = run.labels()
            for _ in range(self.max_passes):
                order = torch.randperm(n, generator=run.generator, device=run.x.device)
                for rows in order.split(run.size):
                    v = self._minibatch(run, run.x[rows], labels[rows], v)
                if run.end_pass(v, labels) >= 1 - self.delta:
                    break
        return run.result(self)

    def _minibatch(self, run: _Fit, x: Tensor, labels: Tensor, v: Tensor) -> Tensor:
        """v ← P(v + Σ Δv_i/√m), Δv_i DeepFool's move at x_i + v for the m points not fooled."""
        with torch.no_grad():
            logits = run.forward(run.applied(x, v))
        todo = ~run.fooled(logits, labels)
        if not bool(todo.any()):
            return v
        lo, hi = self.threat.bounds
        start = (x[todo] + v).clamp(lo, hi)
        moves = self._deepfool_steps(run, start, labels[todo], logits[todo])
        return run.project(v + moves.sum(dim=0, keepdim=True) / math.sqrt(max(1, len(moves))))

    def _deepfool_steps(self, run: _Fit, x0: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        """DeepFool from each x0_i (batched); the moves x_adv_i − x0_i of the points it fooled.

        Untargeted: leave labels_i over the candidate classes; targeted: reach labels_i (= t).
        """
        lo, hi = self.threat.bounds
        scale = 1.0 + self.overshoot
        targeted = run.target is not None
        k = logits.shape[1] if self.candidates is None else min(self.candidates, logits.shape[1])
        classes = None if targeted else _candidate_classes(logits, labels, k)
        r_tot = torch.zeros_like(x0)
        x_adv = x0
        rows = torch.arange(x0.shape[0], device=x0.device)  # positions of the active points
        moves = torch.zeros_like(x0)
        won = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
        for step in range(self.steps + 1):
            last = step == self.steps  # only check the final point
            point = x_adv.detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                z = run.forward(point)
            done = run.fooled(z.detach(), labels)
            moves[rows[done]] = x_adv[done] - x0[done]
            won[rows[done]] = True
            keep = ~done
            if last or not bool(keep.any()):
                break
            f, w = self._linearize(run, point, z, labels, classes, keep)
            rows, x0, labels, r_tot, x_adv = (t[keep] for t in (rows, x0, labels, r_tot, x_adv))
            if classes is not None:
                classes = classes[keep]
            r_tot = r_tot + self._deepfool._step(f, w, x_adv).view_as(r_tot)
            x_adv = (x0 + scale * r_tot).clamp(lo, hi)
        return moves[won]

    def _linearize(
        self,
        run: _Fit,
        point: Tensor,
        logits: Tensor,
        labels: Tensor,
        classes: Tensor | None,
        keep: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """f (m, c) and w = ∇f (m, c, n) of the kept rows' boundaries, c candidate boundaries.

        Untargeted: f_j = z_j − z_label for the candidates j; targeted: f = z_t − z_j, j the
        strongest class other than t (one boundary, one backward pass).
        """
        if classes is None:
            others = logits.detach().scatter(1, labels.unsqueeze(1), -math.inf)
            strongest = others.argmax(dim=1, keepdim=True)
            diff = logits.gather(1, labels.unsqueeze(1)) - logits.gather(1, strongest)
            outputs = [diff[:, 0]]
        else:
            z = logits.gather(1, classes)
            diff = z[:, 1:] - z[:, :1]
            outputs = [diff[:, j] for j in range(diff.shape[1])]
        grads = []
        for j, out in enumerate(outputs):
            (g,) = torch.autograd.grad(out[keep].sum(), point, retain_graph=j < len(outputs) - 1)
            grads.append(g[keep].flatten(1))
        m = int(keep.sum())
        run.count_backward(m * len(outputs))
        return diff[keep].detach(), torch.stack(grads, dim=1)


class UniversalSGD(DatasetAttack):
    """A universal perturbation by projected minibatch steepest ascent on a clamped loss.

    Args:
        threat: norm (linf, l2 or l1) and ξ = eps (required); targeted for one target class.
        epochs: passes over the fitting data.
        step_size: α of the first epoch (default ξ/10 for L∞, ξ/4 otherwise; for L1 the
            sparse ascent direction of ``advex.norms.ascent``).
        decay: α is multiplied by this after each epoch.
        loss: "margin" (clamped at ``kappa``) or "ce".
        kappa: the clamp of the margin loss: a point fooled by κ stops pulling v.
        seed: seeds the shuffling. batch_size: points per minibatch (and per pass in ``apply``).
    """

    name: ClassVar[str] = "universal_sgd"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        epochs: int = 10,
        step_size: float | None = None,
        decay: float = 0.8,
        loss: str = "ce",
        kappa: float = math.inf,
        seed: int = 0,
        batch_size: int | None = 32,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size)
        checks.positive_int("epochs", epochs)
        eps = threat.budget()
        if step_size is None:
            step_size = eps / 2 if threat.norm == "linf" else eps / 4
        checks.positive("step_size", step_size)
        checks.fraction("decay", decay, closed=True)
        if loss not in ("margin", "ce"):
            raise ValueError(f"loss: expected 'margin' or 'ce', got {loss!r}")
        if kappa != math.inf:
            checks.non_negative("kappa", kappa)
        self.epochs = epochs
        self.step_size = float(step_size)
        self.decay = float(decay)
        self.loss = loss
        self.kappa = float(kappa)

    def fit(
        self, model: Any, x: Tensor, y: Tensor, target: int | Tensor | None = None
    ) -> UniversalPerturbation:
        """Fit v on (x, y) (``target``: one class, int or equal labels); see the module doc."""
        run = _Fit(self, model, x, y, target)
        n = run.x.shape[0]
        lo, hi = self.threat.bounds
        loss_fn = partial(margin, kappa=self.kappa) if self.loss == "margin" else ce
        v = run.best_v
        with run.clf.attacking():
            labels = run.labels()
            target = labels if run.target is not None else None
            for epoch in range(self.epochs):
                alpha = self.step_size * self.decay**epoch
                order = torch.randperm(n, generator=run.generator, device=run.x.device)
                for rows in order.split(run.size):
                    point = v.detach().requires_grad_(True)
                    with torch.enable_grad():
                        logits = run.forward((run.x[rows] + point).clamp(lo, hi))
                        tb = None if target is None else target[rows]
                        value = loss_fn(logits, labels[rows], tb).mean()
                        (grad,) = torch.autograd.grad(value, point)
                    run.count_backward(int(rows.numel()))
                    step = ascent(grad, self.threat.norm, x_adv=None, bounds=None)
                    v = run.project(v + alpha * step)
                run.end_pass(v, labels)
        return run.result(self)
