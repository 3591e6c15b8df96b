"""DeepFool: the minimal perturbation by successive linearization of the decision boundaries.

For an affine classifier z(x) = Wx + b with true class y, the smallest perturbation (in the
Lp norm, q its dual: q = 2 for L2, q = 1 for L∞) that reaches class k's boundary is the
projection onto the hyperplane f_k(x) = z_k − z_y = 0:

    r_k = |f_k| / ‖w_k‖_q^q · |w_k|^{q−1} ⊙ sign(w_k),      ‖r_k‖_p = |f_k| / ‖w_k‖_q,

with w_k = ∇z_k − ∇z_y (L2: r_k = |f_k|/‖w_k‖₂² · w_k; L∞: r_k = |f_k|/‖w_k‖₁ · sign(w_k)),
and the minimal untargeted perturbation is r_l, l = argmin_{k≠y} |f_k| / ‖w_k‖_q. DeepFool
applies this step to the linearization of a non-linear classifier at the current point, sums
the steps, r_tot ← r_tot + r_l, and evaluates x_adv = clip(x + (1 + overshoot) · r_tot) until
x_adv is misclassified (or ``steps`` run out). On an affine classifier it is exact in one step
(up to the overshoot).

Moosavi-Dezfooli, Fawzi, Frossard. DeepFool: a simple and accurate method to fool deep neural
networks. CVPR 2016. arXiv:1511.04599

Projections (``projections``, default 1; 0 is the paper's DeepFool): once x_adv = x + δ is
misclassified, with w = ∇(z_a − z_y)(x_adv) the normal of the boundary it crossed (a its
class), δ is replaced by the smallest perturbation with the same ⟨w, δ⟩, δ ← ⟨w, δ⟩/‖w‖_q^q ·
|w|^{q−1} ⊙ sign(w) — its part along the normal (L2) — which keeps the linearized margin at
x_adv and shrinks ‖δ‖; DeepFool then goes on from there until it is misclassified again. This
is the projection step of SuperDeepFool (Abdollahpourrostam, Abroshan, Moosavi-Dezfooli.
Revisiting DeepFool: generalization and improvement. arXiv:2303.12481); it costs about twice
the steps and gives 3–20 % smaller perturbations on the bundled MNIST models. On a flat
boundary it changes nothing: a sample whose projection keeps ‖δ‖ stops there (an affine model
takes one DeepFool step and one jacobian to see that).

Differences from the paper:

* only the ``candidates`` classes with the largest clean logits are considered (Foolbox's
  default, 10: every class of a 10-class model); ``candidates=None`` uses all;
* the box [lo, hi]: coordinates of x_adv that sit on a bound the step would push through are
  left out of w_k (zero step there, and ‖w_k‖_q over the free coordinates only), so the step
  over the free coordinates still reaches the linearized boundary instead of being eaten by
  the clip; a sample may need more iterations when the clip eats the overshoot;
* a margin of 1e-4 is added to |f_l| (Foolbox adds one too), so a step lands past the boundary;
* with ``levels`` every evaluated point is rounded onto the grid; when the rounding undoes a
  step (the same logits twice), the next step is doubled, until the rounded point moves;
* the returned point is the smallest misclassified one evaluated (the tracker's best);
* all samples and candidate classes are processed in one batch: one forward and k backward
  passes per step (``Tracker.jacobian``); a sample stops as soon as it is done.

Defaults: steps=50, overshoot=0.02 (the paper's), candidates=10, projections=1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import MinNormAttack, Tracker
from advex.threat import ThreatModel

__all__ = ["DeepFool"]

_MARGIN = 1e-4  # added to |f_l| so the linearized step crosses the boundary
_TINY = 1e-12


class DeepFool(MinNormAttack):
    """DeepFool (L2 or L∞), untargeted, batched over samples and candidate classes."""

    name: ClassVar[str] = "deepfool"
    norms: ClassVar[tuple[str, ...]] = ("l2", "linf")
    supports_targeted: ClassVar[bool] = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int | None = 10,
        projections: int = 1,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        checks.positive_int("steps", steps)
        checks.non_negative("overshoot", overshoot)
        if candidates is not None and (
            isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2
        ):
            raise ValueError(f"candidates: expected an integer >= 2 or None, got {candidates!r}")
        if isinstance(projections, bool) or not isinstance(projections, int) or projections < 0:
            raise ValueError(f"projections: expected an integer >= 0, got {projections!r}")
        self.steps = steps
        self.overshoot = float(overshoot)
        self.candidates = candidates
        self.projections = projections

    def _run(self, run: Tracker) -> None:
        lo, hi = self.threat.bounds
        scale = 1.0 + self.overshoot
        n_classes = run.clean_logits.shape[1]
        k = n_classes if self.candidates is None else min(self.candidates, n_classes)
        classes = _candidate_classes(run.clean_logits, run.y, k)
        r_tot = torch.zeros_like(run.x)
        x_adv = run.x
        projected = torch.zeros(run.n_active, dtype=torch.long, device=run.x.device)
        boost = torch.ones(run.n_active, 1, dtype=run.x.dtype, device=run.x.device)
        for _ in run.steps(self.steps):
            # Gradients only where needed: rows still classified y, and rows to project.
            logits, jac = run.jacobian(x_adv, classes)
            z = logits.gather(1, classes)
            f = z[:, 1:] - z[:, :1]  # (B, k−1): z_k − z_y, < 0 while x_adv is classified y
            w = (jac[:, 1:] - jac[:, :1]).flatten(2)  # (B, k−1, n): ∇f_k
            adversarial = logits.argmax(dim=1) != run.y
            step = (boost * self._step(f, w, x_adv)).view_as(r_tot)
            r_tot = torch.where(_col(adversarial, r_tot), r_tot, r_tot + step)
            if bool(adversarial.any()):
                # SDF projection: keep the part of δ along the normal of the boundary crossed.
                delta = (x_adv - run.x).flatten(1)
                normal = _rows(w, f.argmax(dim=1))
                along = _dual_step((normal * delta).sum(dim=1, keepdim=True), normal, self.threat)
                flat = _norm(along, self.threat) >= (1 - 1e-6) * _norm(delta, self.threat)
                r_tot = torch.where(_col(adversarial, r_tot), along.view_as(r_tot) / scale, r_tot)
                projected = projected + adversarial.long()
                run.retire(adversarial & flat)  # a flat boundary: nothing to gain
                z, r_tot, classes, projected, boost = run.shrink(
                    z, r_tot, classes, projected, boost
                )
                if run.n_active == 0:
                    return
            x_adv = (run.x + scale * r_tot).clamp(lo, hi)
            with torch.no_grad():
                logits = run.forward(x_adv)
            z_new = logits.gather(1, classes)
            adversarial = logits.argmax(dim=1) != run.y
            run.retire(adversarial & (projected >= self.projections))
            # The same logits as before the step: the grid rounding (``levels``) undid it.
            stuck = (z_new == z).all(dim=1, keepdim=True)
            boost = torch.where(stuck, 2 * boost, torch.ones_like(boost))
            r_tot, x_adv, classes, projected, boost = run.shrink(
                r_tot, x_adv, classes, projected, boost
            )

    def _step(self, f: Tensor, w: Tensor, x_adv: Tensor) -> Tensor:
        """The linearized minimal step r_l (B, n) toward the closest candidate boundary."""
        lo, hi = self.threat.bounds
        point = x_adv.detach().flatten(1).unsqueeze(1)
        blocked = ((point >= hi) & (w > 0)) | ((point <= lo) & (w < 0))
        w = w.masked_fill(blocked, 0.0)
        dual = w.norm(dim=2) if self.threat.norm == "l2" else w.abs().sum(dim=2)
        best = (f.abs() / dual.clamp_min(_TINY)).argmin(dim=1)
        f_l = f.gather(1, best.unsqueeze(1)).abs() + _MARGIN
        return _dual_step(f_l, _rows(w, best), self.threat)


def _rows(w: Tensor, index: Tensor) -> Tensor:
    """w[i, index[i]] for a (B, k, n) tensor: (B, n)."""
    return w.gather(1, index.view(-1, 1, 1).expand(-1, 1, w.shape[2])).squeeze(1)


def _dual_step(size: Tensor, w: Tensor, threat: ThreatModel) -> Tensor:
    """The smallest r with ⟨w, r⟩ = size: size/‖w‖₂²·w (L2) or size/‖w‖₁·sign(w) (L∞)."""
    if threat.norm == "l2":
        return size / w.square().sum(dim=1, keepdim=True).clamp_min(_TINY) * w
    return size / w.abs().sum(dim=1, keepdim=True).clamp_min(_TINY) * w.sign()


def _norm(v: Tensor, threat: ThreatModel) -> Tensor:
    return v.norm(dim=1) if threat.norm == "l2" else v.abs().amax(dim=1)


def _col(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *[1] * (like.ndim - 1))


def _candidate_classes(clean_logits: Tensor, y: Tensor, k: int) -> Tensor:
    """(B, k) classes per sample: y first, then the k − 1 other classes of largest clean logit."""
    others = clean_logits.detach().scatter(1, y.unsqueeze(1), -math.inf)
    top = others.topk(k - 1, dim=1).indices
    return torch.cat([y.unsqueeze(1), top], dim=1)
