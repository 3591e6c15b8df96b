"""Fast gradient sign method and its fast gradient siblings for the other norms.

One step along the steepest-ascent direction of the loss at the clean point:

    δ* = Π_D(ε · s_p(∇ₓ L(f(x), y)))       (untargeted: ascend L(·, y); targeted: descend L(·, t))

with s_∞ = sign (FGSM proper), s_2 = g/‖g‖₂, s_1 the sparse L1 direction (advex.norms.ascent)
and Π_D the projection onto ball ∩ box. For L0 the step is the exact maximizer of the
linearized loss ⟨g, δ⟩ over {‖δ‖₀ ≤ k} ∩ box: push the k elements with the largest
|g_i|·(room to the bound in the direction of g_i) to that bound.

Goodfellow, Shlens, Szegedy. Explaining and Harnessing Adversarial Examples. ICLR 2015.
arXiv:1412.6572
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks import losses
from advex.attacks.base import Attack, Tracker
from advex.norms import ascent, box_limits, project
from advex.threat import ThreatModel

__all__ = ["FGSM", "l0_step"]


class FGSM(Attack):
    """One gradient step of size ε in the threat's norm (L∞: the sign of the gradient)."""

    name: ClassVar[str] = "fgsm"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1", "l0")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss: str = "ce",
        l1_sparsity: float = 0.99,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size)
        self.loss = loss
        self._loss = losses.get(loss)
        self.l1_sparsity = l1_sparsity

    def _run(self, run: Tracker) -> None:
        threat = self.threat
        for _ in run.steps(1):
            _, _, grad = run.value_and_grad(torch.zeros_like(run.x), self._loss)
            if threat.norm == "l0":
                delta = l0_step(grad, run.x, int(threat.budget()), threat.bounds)
            else:
                step = ascent(
                    grad, threat.norm, x_adv=run.x, bounds=threat.bounds, sparsity=self.l1_sparsity
                )
                delta = project(threat.budget() * step, run.x, threat)
            with torch.no_grad():
                run.forward(run.x + delta)


def l0_step(grad: Tensor, x: Tensor, k: int, bounds: tuple[float, float]) -> Tensor:
    """argmax ⟨g, δ⟩ over ‖δ‖₀ ≤ k and the box: the k largest gains |g_i|·room_i, at the bound."""
    lo, hi = box_limits(x, bounds)
    room = torch.where(grad > 0, hi, lo)
    gain = (grad * room).reshape(len(x), -1)
    top = gain.topk(min(k, gain.shape[1]), dim=1).indices
    mask = torch.zeros_like(gain).scatter_(1, top, 1.0).reshape(x.shape)
    return torch.where((mask > 0) & (grad != 0), room, torch.zeros_like(room))
