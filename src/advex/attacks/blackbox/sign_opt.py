"""Sign-OPT: hard-label minimum-norm attack descending the sign of g's directional derivatives.

Same formulation as OPT (``OptAttack``): minimize over directions θ

    g(θ) = min {λ > 0 : f(x + λ·θ/‖θ‖) ≠ y}     (targeted: f(·) = t).

Instead of finite differences of g, which cost a boundary search each, Sign-OPT reads the sign
of each directional derivative from a single query: for θ' = θ + β·u, g(θ') < g(θ) exactly
when x + g(θ)·θ'/‖θ'‖ is already adversarial, so

    ŝ = 1/K Σ_{k=1..K} sign(g(θ + β·u_k) − g(θ)) · u_k,     u_k ~ N(0, I), ‖u_k‖₂ = 1,

costs K queries (one ``run.forward`` with K points per sample), and θ ← θ − α·ŝ with the step
size α found by the same search as OPT (α doubled while g keeps decreasing; if the first trial
does not decrease g, α quartered until it does). When the step search stalls (α < 10⁻⁴), α
restarts at 1 and β is divided by 10; a sample stops when β < 10⁻⁸. θ starts at the best of 100
random Gaussian directions. An iteration costs K + about 2 × 15 queries.

Cheng, Singh, Chen, Chen, Liu, Hsieh. Sign-OPT: A Query-Efficient Hard-label Adversarial
Attack. ICLR 2020. arXiv:1909.10773

Defaults follow the paper and the authors' reference code (github.com/cmhcbb/attackbox,
``Sign_OPT.py``): K = 200, α = 0.2, β = 0.001, 100 initial directions, 1000 iterations.
``max_queries`` defaults to 5 000 (the reference's call default is 4 000; the paper's MNIST and
CIFAR-10 curves flatten within a few thousand queries): about 18 iterations of K = 200.

Differences from the paper and its reference code (besides those listed in ``boundary``):

* targeted attacks: the reference starts from training images of the target class, which a
  pure oracle attack does not have. Here θ starts from random directions, as untargeted; pass
  ``starts`` (e.g. images of the target class) to the call to try their directions first;
* a sample whose budget cannot pay for the K sign queries of the next estimate stops there;
* for large inputs the K sign queries are split into several calls (at most 2²⁰ input
  elements per sample per call), the same for every sample.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks.blackbox.base import QueryTracker
from advex.attacks.blackbox.boundary import DirectionAttack, unit
from advex.threat import ThreatModel

__all__ = ["SignOPT"]

#: Input elements per sample in one call of the sign estimate.
_CHUNK = 2**20


class SignOPT(DirectionAttack):
    """Sign-OPT (Cheng et al. 2020): hard-label, minimum-norm, L2.

    Args:
        threat: an L2 threat model; ``eps`` optional (without it the attack returns the
            smallest adversarial perturbation it finds; with it, it stops at the first inside
            the ball).
        max_queries: label queries per sample, the clean pass included (≥ 2).
        steps: iterations at most (the budget usually ends the attack first).
        step_size: initial step size α of the step-size search.
        beta: smoothing parameter β of the random directions; binary searches stop at a
            relative tolerance of β/500.
        directions: random directions K per sign estimate (one query each).
        init_directions: random directions tried for the initial θ.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.

    Call it as ``attack(model, x, y, target=None, starts=None)``; ``starts`` (B, ...) are
    optional points (adversarial ones, e.g. of the target class) whose directions are tried
    first for the initial θ.
    """

    name: ClassVar[str] = "sign_opt"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int = 5000,
        steps: int = 1000,
        step_size: float = 0.2,
        beta: float = 0.001,
        directions: int = 200,
        init_directions: int = 100,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(
            threat,
            max_queries=max_queries,
            steps=steps,
            step_size=step_size,
            beta=beta,
            directions=directions,
            init_directions=init_directions,
            seed=seed,
            batch_size=batch_size,
            early_stop=early_stop,
        )

    def _direction(
        self, run: QueryTracker, theta: Tensor, g: Tensor, beta: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """ŝ from K single queries per sample at λ = g(θ) along θ + β·u_k."""
        k = self.directions
        shape = theta.shape[1:]
        view = (-1,) + (1,) * len(shape)
        ok = (run.budget_left >= k) & run.alive
        who = torch.nonzero(ok).squeeze(1)
        total = torch.zeros_like(theta)
        per = min(k, max(1, _CHUNK // max(theta[0].numel(), 1)))
        for first in range(0, k, per):
            m = min(per, k - first)
            u = run.randn(m, *shape)[who]  # drawn for every sample, used by those that can pay
            if who.numel() == 0:
                continue
            u = unit(u.flatten(0, 1), "l2")  # (|who|·m, ...)
            owner = who.repeat_interleave(m)
            probes = unit(theta[owner] + beta[owner].to(u.dtype).view(view) * u, "l2")
            rays = unit(probes, self.threat.norm)
            points = run.x[owner] + g[owner].to(u.dtype).view(view) * rays
            adv = run.success_of(run.forward(points, owner), owner)
            sign = torch.where(adv, -1.0, 1.0).to(u.dtype).view(view)
            total[who] += (sign * u).view(who.numel(), m, *shape).sum(dim=1)
        return total / k, None, None, ok
