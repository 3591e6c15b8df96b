"""Carlini & Wagner's L∞ attack: a shrinking threshold τ on every coordinate of δ.

‖δ‖∞ is a poor objective for gradient descent (its gradient touches one coordinate), so the
attack penalizes every coordinate above a threshold τ instead and shrinks τ. With the tanh box
of ``advex.attacks.cw`` (x'(w) = lo + (hi − lo)·(tanh(w) + 1)/2, δ = x'(w) − x'(w₀)) it
minimizes, with Adam on w,

    c·f(x + δ) + Σ_i max(|δ_i| − τ, 0),   f = max(κ − margin, 0)   (as in the L2 attack).

Starting with τ = hi − lo and c = c₀ = 10⁻⁵: a run at (τ, c) takes at most ``steps`` Adam
iterations and succeeds at the first iterate whose loss is below 10⁻⁴·c (every |δ_i| ≲ τ) and
that is adversarial. On success τ ← 0.9·min(τ, ‖δ‖∞) and the next run starts from that point
(warm start, Adam restarted, c kept); on failure c ← 2c and the run goes on from where it is.
A sample is done when c reaches ``largest_const`` (20) or τ falls below (hi − lo)/256. The
result is the adversarial iterate of smallest ‖δ‖∞ (the ``Tracker`` keeps it).

Carlini, Wagner. Towards Evaluating the Robustness of Neural Networks. IEEE Symposium on
Security and Privacy (S&P) 2017. arXiv:1608.04644

Differences from the paper and its reference code (github.com/carlini/nn_robust_attacks,
``li_attack.py``, one image at a time): samples run as a batch, each with its own τ, c and
Adam state, and leave the batch when done. The run at one c also ends early (``abort_early``)
when its loss has not fallen below 0.9999× its value ``steps/10`` iterations before (the rule
of the paper's L2 attack); the reference always spends ``steps`` iterations per c, which makes
the last, failing τ of every sample cost up to log₂(20/c)·``steps`` iterations. δ is measured
from x'(w₀), so the start is x exactly. With ``eps`` given a sample stops at its first success
within ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import MinNormAttack, Tracker
from advex.attacks.cw import (
    TanhBox,
    hinge,
)
from advex.attacks.losses import margin
from advex.attacks.optim import Adam
from advex.threat import ThreatModel

__all__ = ["CWLinf"]

_ABORT_RATIO = 0.9999
_WORKS = 1e-4  # a run succeeds when its loss is below this fraction of c


def _excess(tau: Tensor) -> Callable[[Tensor], Tensor]:
    """δ ↦ Σ_i max(|δ_i| − τ, 0) per sample, τ (B,)."""

    def penalty(delta: Tensor) -> Tensor:
        d = delta.flatten(1).abs()
        return (d - tau.unsqueeze(1)).clamp_min(0).sum(dim=1)

    return penalty


class CWLinf(MinNormAttack):
    """Carlini & Wagner L∞: Adam on c·f + Σ max(|δ_i| − τ, 0) with a shrinking τ per sample.

    Args:
        threat: an L∞ ``ThreatModel``; ``eps=None`` for the smallest perturbation.
        steps: Adam iterations per constant at most.
        step_size: Adam's learning rate on w.
        initial_const: c₀.
        largest_const: a sample stops when c reaches this value.
        const_factor: c grows by this factor when a run fails.
        tau_factor: τ shrinks by this factor after a success.
        kappa: confidence κ ≥ 0 the runs ask of a success (margin > κ).
        abort_early: end the run at one c when its loss stalls (see the module docstring).
    """

    name: ClassVar[str] = "cw_linf"
    norms: ClassVar[tuple[str, ...]] = ("linf",)

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 1000,
        step_size: float = 5e-3,
        initial_const: float = 1e-5,
        largest_const: float = 20.0,
        const_factor: float = 2.0,
        tau_factor: float = 0.9,
        kappa: float = 0.0,
        abort_early: bool = True,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        self.steps = checks.positive_int("steps", steps)
        self.step_size = checks.positive("step_size", step_size)
        self.initial_const = checks.positive("initial_const", initial_const)
        self.largest_const = checks.above(
            "largest_const", largest_const, self.initial_const, "initial_const"
        )
        self.const_factor = checks.above("const_factor", const_factor, 1.0)
        self.tau_factor = checks.fraction("tau_factor", tau_factor)
        self.kappa = checks.non_negative("kappa", kappa)
        self.abort_early = bool(abort_early)

    def _run(self, run: Tracker) -> None:
        n, dev, dtype = run.n_active, run.x.device, run.x.dtype
        lo, hi = self.threat.bounds
        box = TanhBox(run.x, self.threat.bounds)
        w = box.w0.clone()
        adam = Adam(self.step_size)
        c = torch.full((n,), self.initial_const, device=dev, dtype=dtype)
        tau = torch.full((n,), hi - lo, device=dev, dtype=dtype)
        previous = torch.full((n,), math.inf, device=dev, dtype=dtype)
        it = torch.zeros(n, dtype=torch.long, device=dev)  # iteration at the current c
        every = math.ceil(self.steps / 10)
        smallest_tau = (hi - lo) / 256

        for _ in run.steps(2**62):
            t = torch.tanh(w)
            delta = box.delta(w, t)
            objective = partial(hinge, c=c, kappa=self.kappa)
            logits, values, grad = run.value_and_grad(delta, objective, _excess(tau))
            loss = -values
            works = (loss < _WORKS * c) & (margin(logits, run.y, run.labels_target) > self.kappa)
            stepped = adam.step(w, -box.chain(grad, w, t))
            at = it % every == 0  # the paper's abort rule, as in the L2 attack
            stalled = at & (loss > _ABORT_RATIO * previous)
            if not self.abort_early:
                stalled = torch.zeros_like(stalled)
            previous = torch.where(at, loss, previous)
            it += 1
            grow = ~works & (stalled | (it >= self.steps))
            # success: shrink τ and restart from this point; failure at this c: double c
            actual = delta.flatten(1).abs().amax(dim=1)
            tau = torch.where(works, self.tau_factor * torch.minimum(tau, actual), tau)
            w = torch.where(works.reshape(-1, *[1] * (w.ndim - 1)), w, stepped)
            adam.reset(works)
            c = torch.where(grow, c * self.const_factor, c)
            restart = works | grow
            it = it.masked_fill(restart, 0)
            previous = previous.masked_fill(restart, math.inf)
            finished = (tau < smallest_tau) | (c >= self.largest_const)
            if bool(finished.any()):
                run.retire(finished)
            keep = ~run.done[run.rows]
            if not bool(keep.all()):
                w, c, tau, previous, it = run.shrink(w, c, tau, previous, it)
                box.keep(keep)
                adam.keep(keep)
