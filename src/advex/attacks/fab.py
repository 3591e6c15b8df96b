"""FAB, the fast adaptive boundary attack, and its targeted version FAB-T (L∞, L2, L1).

FAB looks for the smallest ‖δ‖_p that changes the decision by projecting onto linearized
decision boundaries. At the iterate x⁽ⁱ⁾ (x⁽⁰⁾ = x, the clean point, true class c), for each
class s ≠ c with f_s = z_s − z_c and g_s = ∇f_s(x⁽ⁱ⁾), the boundary of s is approximated by the
hyperplane π_s = {z : f_s + ⟨g_s, z − x⁽ⁱ⁾⟩ = 0}; FAB picks the closest one,

    s = argmin_{s≠c} |f_s| / ‖g_s‖_q          (q the dual norm: 1/p + 1/q = 1),

and projects onto π_s ∩ box both the iterate and the clean point (``hyperplane.py``, exact):
δ⁽ⁱ⁾ = proj(x⁽ⁱ⁾) − x⁽ⁱ⁾ and δ_x = proj(x) − x. The next iterate is a biased mix of the two,

    α = min(‖δ⁽ⁱ⁾‖_p / (‖δ⁽ⁱ⁾‖_p + ‖δ_x‖_p), α_max),
    x⁽ⁱ⁺¹⁾ = Π_box((1 − α)(x⁽ⁱ⁾ + η·δ⁽ⁱ⁾) + α(x + η·δ_x)),

(η ≥ 1 overshoots the boundary a little), and once x⁽ⁱ⁺¹⁾ is adversarial it steps back toward
the clean point, x⁽ⁱ⁺¹⁾ ← x + β(x⁽ⁱ⁺¹⁾ − x), so the search goes on from the good side. The
smallest adversarial point seen is returned. FAB-T (the version in AutoAttack) solves the same
untargeted problem by running the targeted linearization (s fixed to one target: one gradient,
of z_t − z_c, per step instead of K) toward the classes ranked 2, 3, ..., n_target_classes + 1 by
the clean logits, in turn, each on the samples still unbroken.

Croce, Hein. Minimally distorted adversarial examples with a fast adaptive boundary attack.
ICML 2020. arXiv:1907.02044
Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks. ICML 2020. arXiv:2003.01690 (FAB-T)

Differences from the paper and the reference code (fra31/auto-attack, ``fab_pt.py``):

* restart r > 0 starts at x + ρ·v, v a random direction of unit ‖·‖_p (uniform cube / Gaussian
  directions, as the reference), ρ = min(ε, ‖δ*‖_p)/2 with δ* the best perturbation found by
  any earlier restart (the reference only knows the current run's, i.e. ρ = ε/2). Without an
  ``eps`` ε is the reference's default (0.3, 1, 5 for L∞, L2, L1) times (hi − lo);
* with an ``eps``, restarts (and FAB-T's later target classes) run only on samples with no
  success inside the ε-ball yet, and a sample stops at its first one; without an ``eps`` they
  run on every sample and shrink the perturbation further (the smallest success is kept);
* ``n_target_classes`` in untargeted FAB (None: all classes, the paper) restricts the
  linearization to the n other classes of largest clean logit (n + 1 gradients per step);
  in FAB-T it is capped at K − 1;
* a targeted threat model (``FAB`` only; success means the target t is predicted) linearizes
  the single pair (c, s = t), with c the largest non-target class at the last point evaluated
  (y at first) rather than always y: the iterate must overtake whichever class wins there
  (2 gradients per step);
* every evaluated point (the linearization point and the new iterate) goes through the tracker,
  which keeps the smallest success; without an ``eps`` it is finally trimmed by a bisection
  toward x (``MinNormAttack``). Per step: 2 forward passes, and K backward passes untargeted
  (n + 1 with ``n_target_classes`` = n ≥ 2), 1 for a single pair (targeted, FAB-T, n = 1).

Defaults are the paper's: steps=100, α_max=0.1, η=1.05, β=0.9; FAB-T n_target_classes=9.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import MinNormAttack, Tracker
from advex.attacks.hyperplane import project_hyperplane
from advex.norms import lp_norm
from advex.result import succeeded
from advex.threat import ThreatModel

__all__ = ["FAB", "FABT"]

_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}
#: The reference's default ε, the restart radius scale when the threat model has none.
_DEFAULT_EPS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}
_TINY = 1e-12


class FAB(MinNormAttack):
    """Fast adaptive boundary attack: projections onto the closest linearized boundary.

    Args:
        threat: the threat model (linf, l2 or l1; ``eps=None`` for the smallest perturbation,
            or an ``eps`` to stop each sample at its first success inside the ε-ball).
        steps: iterations per restart (one Jacobian of the linearized classes and one forward
            pass each).
        restarts: runs per sample; the first starts at x, later ones at random points near it.
        alpha_max: the largest weight α of the step from the clean point.
        eta: overshoot η ≥ 1 of each projection step.
        beta: step back x + β(x' − x) toward the clean point after a success, in (0, 1].
        n_target_classes: None (all classes) or the number of other classes, by clean logit,
            that each step linearizes (see the module docstring).
        seed, batch_size, early_stop: see ``Attack``. Only restarts r > 0 draw random numbers.
    """

    name: ClassVar[str] = "fab"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        n_target_classes: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        checks.positive_int("steps", steps)
        checks.positive_int("restarts", restarts)
        checks.fraction("alpha_max", alpha_max, closed=True)
        if checks.positive("eta", eta) < 1:
            raise ValueError(f"eta: expected a finite number >= 1, got {eta!r}")
        checks.fraction("beta", beta, closed=True)
        if n_target_classes is not None:
            checks.positive_int("n_target_classes", n_target_classes)
            if threat.targeted:
                raise ValueError(
                    "n_target_classes: a targeted threat model linearizes the target only; "
                    "leave it None"
                )
        self.steps = steps
        self.restarts = restarts
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)
        self.n_target_classes = n_target_classes

    # ----- which runs, and which classes each step linearizes ---------------------------
    def _runs(self, run: Tracker) -> Iterator[tuple[int | None, bool]]:
        """(target rank or None, random start) per run; see the module docstring."""
        for r in self._restarts(run):
            yield None, r > 0

    def _restarts(self, run: Tracker) -> Iterator[int]:
        """With an eps, restarts only on samples not yet successful; without, on all."""
        if self.threat.eps is None:
            return iter(range(self.restarts))
        return run.restarts(self.restarts)

    def _classes(self, run: Tracker, rank: int | None, rival: Tensor) -> Tensor:
        """(B, k) classes per active row: the class to leave first, then the ones to reach."""
        if run.target is not None:  # a targeted threat: the target only
            return torch.stack([rival, run.target], dim=1)
        y = run.y.unsqueeze(1)
        n_classes = run.clean_logits.shape[1]
        if rank is None and self.n_target_classes is None:  # all: y, y + 1, ... (mod K)
            return (y + torch.arange(n_classes, device=y.device)) % n_classes
        others = run.clean_logits.scatter(1, y, -math.inf).argsort(dim=1, descending=True)
        if rank is not None:  # FAB-T: the rank-th other class only
            return torch.cat([y, others[:, rank - 1 : rank]], dim=1)
        return torch.cat([y, others[:, : min(self.n_target_classes or 1, n_classes - 1)]], dim=1)

    @staticmethod
    def _rival(run: Tracker, logits: Tensor) -> Tensor:
        """The class to leave: y, or for a targeted threat the top non-target class at
        ``logits`` (the last point evaluated)."""
        if run.target is None:
            return run.y
        return logits.scatter(1, run.target.unsqueeze(1), -math.inf).argmax(dim=1)

    # ----- the attack ------------------------------------------------------------------
    def _run(self, run: Tracker) -> None:
        if run.clean_logits.shape[1] < 2:
            raise ValueError("model: FAB needs at least 2 classes")
        for rank, random in self._runs(run):
            self._attack(run, rank, random)

    def _attack(self, run: Tracker, rank: int | None, random: bool) -> None:
        """One run of ``steps`` FAB iterations on the active rows."""
        threat = self.threat
        lo, hi = threat.bounds
        x_adv = self._random_start(run) if random else run.x.clone()
        rival = self._rival(run, run.clean_logits)
        for _ in run.steps(self.steps):
            classes = self._classes(run, rank, rival)
            f, g = self._linearize(run, x_adv, classes)
            x_adv, f, g, rival = run.shrink(x_adv, f, g, rival)
            if run.n_active == 0:
                return
            x_adv = self._step(run.x, x_adv, f, g).clamp(lo, hi)
            with torch.no_grad():
                logits = run.forward(x_adv)
            won = succeeded(logits.argmax(dim=1), run.y, run.target, threat.targeted)
            rival = self._rival(run, logits)
            back = run.x + self.beta * (x_adv - run.x)
            x_adv = torch.where(won.view(-1, *[1] * (x_adv.ndim - 1)), back, x_adv)
            x_adv, rival = run.shrink(x_adv, rival)

    @staticmethod
    def _linearize(run: Tracker, x_adv: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """f_s = z_s − z_c (B, k − 1) and g_s = ∇f_s (B, k − 1, d) at x_adv, c = classes[:, 0].

        A single pair costs one gradient (of the difference); more classes one per class.
        """
        if classes.shape[1] == 2:

            def gap(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
                z = logits.gather(1, classes)
                return z[:, 1] - z[:, 0]

            _, values, grad = run.value_and_grad(x_adv - run.x, gap)
            return values.unsqueeze(1), grad.flatten(1).unsqueeze(1)
        logits, jac = run.jacobian(x_adv, classes)
        z = logits.gather(1, classes)
        return z[:, 1:] - z[:, :1], (jac[:, 1:] - jac[:, :1]).flatten(2)

    def _step(self, x: Tensor, x_adv: Tensor, f: Tensor, g: Tensor) -> Tensor:
        """The FAB update from f (B, k − 1) and g (B, k − 1, d) at x_adv (see module doc)."""
        norm = self.threat.norm
        lo, hi = self.threat.bounds
        dual = lp_norm(g.flatten(0, 1), _DUAL[norm]).view(f.shape)
        s = (f.abs() / dual.clamp_min(_TINY)).argmin(dim=1)
        w = g[torch.arange(len(s), device=s.device), s]  # (B, d)
        f_s = f.gather(1, s.unsqueeze(1)).squeeze(1)
        flat, flat_x = x_adv.flatten(1), x.flatten(1)
        b = f_s - (w * flat).sum(dim=1)  # the hyperplane ⟨w, z⟩ + b = 0
        both = project_hyperplane(
            torch.cat([flat, flat_x]), torch.cat([w, w]), torch.cat([b, b]), lo, hi, norm
        )
        d_adv, d_x = both.chunk(2)
        n_adv = lp_norm(d_adv, norm).clamp_min(1e-8)
        n_x = lp_norm(d_x, norm).clamp_min(1e-8)
        alpha = (n_adv / (n_adv + n_x)).clamp(max=self.alpha_max).unsqueeze(1)
        mix = (1 - alpha) * (flat + self.eta * d_adv) + alpha * (flat_x + self.eta * d_x)
        return mix.view_as(x_adv)

    def _random_start(self, run: Tracker) -> Tensor:
        """x + ρ·v, ‖v‖_p = 1 random, ρ = min(ε, ‖δ*‖_p)/2, clipped to the box."""
        norm = self.threat.norm
        lo, hi = self.threat.bounds
        x = run.x
        eps = self.threat.eps if self.threat.eps is not None else _DEFAULT_EPS[norm] * (hi - lo)
        radius = run.best_distance[run.rows].clamp(max=eps) / 2
        d = x[0].numel()
        v = 2 * run.rand(d) - 1 if norm == "linf" else run.randn(d)
        v = v / lp_norm(v, norm).clamp_min(_TINY).unsqueeze(1)
        delta = (radius.to(x.dtype).unsqueeze(1) * v).view_as(x)
        return (x + delta).clamp(lo, hi)


class FABT(FAB):
    """FAB-T: untargeted FAB run as targeted FAB toward each of the runner-up clean classes.

    Args:
        n_target_classes: how many target classes to try, in order of clean logit (ranked 2,
            3, ..., n + 1; capped at K − 1). Default 9, AutoAttack's.
        others: see ``FAB``.
    """

    name: ClassVar[str] = "fab-t"
    supports_targeted: ClassVar[bool] = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        n_target_classes: int = 9,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        if n_target_classes is None:
            raise ValueError("n_target_classes: expected a positive integer, got None")
        super().__init__(
            threat,
            steps=steps,
            restarts=restarts,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            n_target_classes=n_target_classes,
            seed=seed,
            batch_size=batch_size,
            early_stop=early_stop,
        )

    def _runs(self, run: Tracker) -> Iterator[tuple[int | None, bool]]:
        n_targets = min(self.n_target_classes or 1, run.clean_logits.shape[1] - 1)
        for rank in range(1, n_targets + 1):
            for r in self._restarts(run):
                yield rank, r > 0
