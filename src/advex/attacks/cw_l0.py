"""Carlini & Wagner's L0 attack: the L2 attack on a shrinking set of pixels it may change.

‖δ‖₀ is not differentiable, so the attack runs the L2 attack of ``advex.attacks.cw``
restricted to an allowed set A of pixels (δ_i = 0 outside A),

    minimize ‖δ_A‖₂² + c·f(x + δ_A),   f = max(κ − margin, 0),  κ = 0.01,

and shrinks A while the restricted attack still succeeds:

1. run Adam on w (tanh box) from the previous solution (warm start); the run succeeds at the
   first iterate with f < 10⁻⁴ (adversarial with margin ≳ κ); after ``steps`` iterations
   without success c ← 2c and the run goes on; when c reaches ``largest_const`` the sample is
   done and the last success is the answer;
2. after a success, with g = ∇_x margin(x + δ) (one more gradient), the contribution of pixel i
   is s_i = Σ_channels g_i·δ_i, the first-order share of the margin that pixel i carries;
   remove from A the allowed pixels of smallest s_i: one (``one_at_a_time``, the paper's
   text), or — the reference code's batch rule — in increasing order of s_i until one with
   s_i > 0.01 has been removed or ⌈0.3·√(#changed pixels)⌉ have; then go to 1 with the same c.

The result is the adversarial iterate with the fewest changed elements (the ``Tracker`` keeps
it). A pixel is all channels at one position of an input (B, C, H, W) — the paper fixes whole
pixels — but advex's L0 distance counts changed *elements*, so a changed RGB pixel counts up
to 3; ``independent_channels=True`` treats every element as its own unit (inputs of other
ranks always do).

Carlini, Wagner. Towards Evaluating the Robustness of Neural Networks. IEEE Symposium on
Security and Privacy (S&P) 2017. arXiv:1608.04644

Differences from the paper and its reference code (github.com/carlini/nn_robust_attacks,
``l0_attack.py``, one image at a time): samples run as a batch, each with its own allowed set,
c and Adam state. The ranking uses the margin's gradient in input space, as the paper writes
(the reference ranks by |Σ_c δ|·Σ_c |∂loss/∂w| with the tanh-space gradient of the whole
loss, which at a solution is mostly the distance term). The run at one c also ends early
(``abort_early``) when its loss has not fallen below 0.9999× its value ``steps/10``
iterations before (the paper's L2 rule); the reference always spends ``steps`` iterations per
c. Changes below 10⁻⁴·(hi − lo) are set to exactly 0 (the reference counts them as
unchanged), so they do not count toward ‖δ‖₀.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import MinNormAttack, Tracker
from advex.attacks.cw import (
    TanhBox,
    hinge,
    squared_l2,
)
from advex.attacks.losses import margin
from advex.attacks.optim import Adam
from advex.threat import ThreatModel

__all__ = ["CWL0"]

_ABORT_RATIO = 0.9999
_WORKS = 1e-4  # a run succeeds when f is below this
_UNCHANGED = 1e-4  # |δ_i| below this fraction of hi − lo counts as no change
_BIG_CHANGE = 0.01  # the batch rule stops after removing a pixel that carries more margin
_BATCH_FRACTION = 0.3  # ... or after ⌈0.3·√(#changed pixels)⌉ pixels


class CWL0(MinNormAttack):
    """Carlini & Wagner L0: the L2 attack on an allowed set that shrinks while it succeeds.

    Args:
        threat: an L0 ``ThreatModel``; ``eps=None`` for the fewest changed elements.
        steps: Adam iterations per constant at most.
        step_size: Adam's learning rate on w.
        initial_const: c₀.
        largest_const: a sample stops when c reaches this value.
        const_factor: c grows by this factor when a run fails.
        kappa: confidence κ the runs ask of a success (the reference's 0.01).
        one_at_a_time: remove one pixel per success (the paper's text) instead of the
            reference code's batch rule.
        independent_channels: treat each element, not each pixel, as a unit.
        abort_early: end the run at one c when its loss stalls (see the module docstring).
    """

    name: ClassVar[str] = "cw_l0"
    norms: ClassVar[tuple[str, ...]] = ("l0",)

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 1000,
        step_size: float = 1e-2,
        initial_const: float = 1e-3,
        largest_const: float = 2e6,
        const_factor: float = 2.0,
        kappa: float = 0.01,
        one_at_a_time: bool = False,
        independent_channels: bool = False,
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
        self.kappa = checks.non_negative("kappa", kappa)
        self.one_at_a_time = bool(one_at_a_time)
        self.independent_channels = bool(independent_channels)
        self.abort_early = bool(abort_early)

    def _units(self, x: Tensor) -> tuple[int, ...]:
        """Shape of the allowed-set mask of one sample: (1, H, W) for pixels, else x's."""
        if x.ndim == 4 and not self.independent_channels:
            return (1, *x.shape[2:])
        return tuple(x.shape[1:])

    def _run(self, run: Tracker) -> None:
        n, dev, dtype = run.n_active, run.x.device, run.x.dtype
        lo, hi = self.threat.bounds
        tiny = _UNCHANGED * (hi - lo)
        box = TanhBox(run.x, self.threat.bounds)
        w = box.w0.clone()
        adam = Adam(self.step_size)
        allowed = torch.ones((n, *self._units(run.x)), dtype=torch.bool, device=dev)
        c = torch.full((n,), self.initial_const, device=dev, dtype=dtype)
        previous = torch.full((n,), math.inf, device=dev, dtype=dtype)
        it = torch.zeros(n, dtype=torch.long, device=dev)  # iteration at the current c
        probe = torch.zeros(n, dtype=torch.bool, device=dev)  # this step measures ∇ margin
        every = math.ceil(self.steps / 10)
        kappa = self.kappa

        def objective(z: Tensor, y: Tensor, t: Tensor | None) -> Tensor:
            return torch.where(probe, margin(z, y, t), hinge(z, y, t, c=c, kappa=kappa))

        def penalty(delta: Tensor) -> Tensor:
            return torch.where(probe, torch.zeros_like(c), squared_l2(delta))

        for _ in run.steps(2**62):
            t = torch.tanh(w)
            delta = box.delta(w, t) * allowed
            delta = torch.where(delta.abs() < tiny, torch.zeros_like(delta), delta)
            logits, values, grad = run.value_and_grad(delta, objective, penalty)
            m = margin(logits, run.y, run.labels_target)
            loss = -values
            col = (-1,) + (1,) * (w.ndim - 1)

            # rows that were probing: shrink their allowed set, start a new run (same c)
            if bool(probe.any()):
                allowed = torch.where(
                    probe.reshape(col), self._shrink(allowed, grad, delta, tiny), allowed
                )
                adam.reset(probe)

            # rows optimizing: success → probe next; else one Adam step (c doubles on failure)
            works = ~probe & ((kappa - m) < _WORKS) & (m > 0)
            stepped = adam.step(w, -box.chain(grad, w, t))
            optimizing = ~probe & ~works
            w = torch.where(optimizing.reshape(col), stepped, w)
            at = optimizing & (it % every == 0)
            stalled = at & (loss > _ABORT_RATIO * previous)
            if not self.abort_early:
                stalled = torch.zeros_like(stalled)
            previous = torch.where(at, loss, previous)
            it = it + optimizing.long()
            grow = optimizing & (stalled | (it >= self.steps))
            c = torch.where(grow, c * self.const_factor, c)
            restart = grow | probe
            it = it.masked_fill(restart, 0)
            previous = previous.masked_fill(restart, math.inf)
            empty = ~allowed.flatten(1).any(dim=1)
            finished = (c >= self.largest_const) | (probe & empty)
            probe = works
            if bool(finished.any()):
                run.retire(finished)
            keep = ~run.done[run.rows]
            if not bool(keep.all()):
                w, c, previous, it, probe, allowed = run.shrink(w, c, previous, it, probe, allowed)
                box.keep(keep)
                adam.keep(keep)

    def _shrink(self, allowed: Tensor, grad: Tensor, delta: Tensor, tiny: float) -> Tensor:
        """The allowed sets after removing the pixels that carry the least margin."""
        share = grad * delta  # first-order contribution of each element to the margin
        changed = delta.abs() >= tiny
        if allowed.shape[1:] != share.shape[1:]:  # pixels: sum the channels
            share = share.sum(dim=1, keepdim=True)
            changed = changed.any(dim=1, keepdim=True)
        flat = allowed.flatten(1)
        score = torch.where(
            flat, share.flatten(1), torch.full_like(flat, math.inf, dtype=share.dtype)
        )
        n_allowed = flat.sum(dim=1)
        if self.one_at_a_time:
            count = torch.ones_like(n_allowed)
        else:
            n_changed = changed.flatten(1).sum(dim=1).to(share.dtype)
            limit = torch.ceil(_BATCH_FRACTION * n_changed.sqrt()).long().clamp_min(1)
            small = (flat & (score <= _BIG_CHANGE)).sum(dim=1)
            count = torch.minimum(limit, small + 1)
        count = torch.minimum(count, n_allowed)
        rank = score.argsort(dim=1, stable=True).argsort(dim=1)
        remove = rank < count.unsqueeze(1)
        return (flat & ~remove).reshape(allowed.shape)
