"""OPT attack: hard-label minimum-norm attack as zeroth-order optimization of a direction.

With top-1 labels only, the smallest adversarial perturbation is sought as

    min_θ g(θ),   g(θ) = min {λ > 0 : f(x + λ·θ/‖θ‖) ≠ y}     (targeted: f(·) = t),

where g is evaluated by a fine-grained search from a nearby guess followed by a binary search
(``advex.attacks.blackbox.boundary``). g is continuous in θ though f is not, so it is minimized
with the randomized gradient-free estimate

    ĝ = 1/q Σ_{k=1..q} (g(θ + β·u_k) − g(θ)) / β · u_k,     u_k ~ N(0, I), ‖u_k‖₂ = 1,

and θ ← θ − α·ĝ with the step size α found by a search at each step (α doubled while g keeps
decreasing; if the first trial does not decrease g, α quartered until it does). If the best
probe θ + β·u_k beats the step, the probe is taken instead. When the step search stalls
(α < 10⁻⁴), α restarts at 1 and β is divided by 10. θ starts at the best of 100 random Gaussian
directions. Each g evaluation costs a few coarse steps and ~log₂(500/β · 0.01) bisections
(about 15 queries), so an iteration costs about (q + 2)·15 ≈ 180 queries.

Cheng, Le, Chen, Yi, Zhang, Hsieh. Query-Efficient Hard-label Black-box Attack: An
Optimization-based Approach. ICLR 2019. arXiv:1807.04457

Defaults follow the authors' reference code (github.com/cmhcbb/attackbox, ``OPT_attack.py``):
α = 0.2, β = 0.001, q = 10 directions per estimate, 100 initial directions, 1500 iterations.
``max_queries`` defaults to 20 000: Sign-OPT (same formulation, ``SignOPT``) reports needing 5
to 10 times fewer queries than OPT for the same distortion, and 20 000 is four times its 5 000
default — about 110 OPT iterations.

Differences from the paper and its reference code (besides those listed in ``boundary``):

* targeted attacks: the reference starts from training images of the target class, which a
  pure oracle attack does not have. Here θ starts from random directions, as untargeted; pass
  ``starts`` (e.g. images of the target class) to the call to try their directions first;
* estimate terms whose g(θ + β·u_k) is ∞ (no boundary within the box along that ray) are
  dropped from the average;
* a sample stops when β falls below 10⁻⁸ (the reference OPT goes on; Sign-OPT stops there),
  when its budget cannot pay for the next search, or after ``steps`` iterations.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks.blackbox.base import QueryTracker
from advex.attacks.blackbox.boundary import DirectionAttack, unit
from advex.threat import ThreatModel

__all__ = ["OptAttack"]


class OptAttack(DirectionAttack):
    """OPT attack (Cheng et al. 2019): hard-label, minimum-norm, L2.

    Args:
        threat: an L2 threat model; ``eps`` optional (without it the attack returns the
            smallest adversarial perturbation it finds; with it, it stops at the first inside
            the ball).
        max_queries: label queries per sample, the clean pass included (≥ 2).
        steps: iterations at most (the budget usually ends the attack first).
        step_size: initial step size α of the step-size search.
        beta: smoothing parameter β of the random directions; binary searches stop at a
            relative tolerance of β/500.
        directions: random directions q per gradient estimate.
        init_directions: random directions tried for the initial θ.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.

    Call it as ``attack(model, x, y, target=None, starts=None)``; ``starts`` (B, ...) are
    optional points (adversarial ones, e.g. of the target class) whose directions are tried
    first for the initial θ.
    """

    name: ClassVar[str] = "opt"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int = 20_000,
        steps: int = 1500,
        step_size: float = 0.2,
        beta: float = 0.001,
        directions: int = 10,
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
        """ĝ from q boundary searches per sample (one lockstep batch), and the best probe."""
        n, q = run.n_active, self.directions
        u = unit(run.randn(q, *theta.shape[1:]).flatten(0, 1), "l2")  # (n·q, ...)
        owner = torch.arange(n, device=g.device).repeat_interleave(q)
        b = beta.repeat_interleave(q)
        probes = unit(theta[owner] + b.view((-1,) + (1,) * (theta.ndim - 1)).to(u.dtype) * u, "l2")
        found, ok = self._g(run, owner, probes, g[owner], b)
        diff = (found - g[owner]) / b
        diff = torch.where(torch.isfinite(diff) & ok, diff, torch.zeros_like(diff))
        view = (n, q) + (1,) * (theta.ndim - 1)
        grad = (diff.to(u.dtype).view(view) * u.view(n, q, *theta.shape[1:])).mean(dim=1)
        found = torch.where(ok, found, torch.full_like(found, float("inf"))).view(n, q)
        probe_g, pick = found.min(dim=1)
        probe = probes.view(n, q, *theta.shape[1:])[torch.arange(n, device=g.device), pick]
        return grad, probe, probe_g, ok.view(n, q).all(dim=1)
