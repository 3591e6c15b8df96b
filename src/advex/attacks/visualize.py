"""Class images by gradient descent on the input ("fake images", lecture 002).

With the network's weights fixed, find an input the model assigns to a chosen class:

    x̃ = argmin_{x̃ ∈ D} CE(f(x̃), t) + λ · ‖x̃ − x‖_p^p      (p ∈ {1, 2}),

starting from uniform noise in the box (``init="noise"``) or from x (``init="x"``), by
gradient descent x̃ ← Π_D(x̃ − α · s(∇)), s the L2-normalized gradient (``step="l2"``), its sign
(``step="sign"``) or the raw gradient as in the lecture (``step="raw"``). D is the box, and the
ε-ball around x when the threat model has an eps. With λ = 0 and noise init this is the
lecture's "fake image"; with λ > 0 and init x it is a penalized targeted attack.

Szegedy et al. Intriguing properties of neural networks. ICLR 2014. arXiv:1312.6199 (the
penalty form); Simonyan, Vedaldi, Zisserman. Deep Inside Convolutional Networks. 2013.
arXiv:1312.6034 (class images by input optimization).

The returned point is the most confident one for the target (largest margin), since every
step after the first success only raises the target's confidence; ``early_stop`` is off by
default for the same reason.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from advex.attacks import checks, losses
from advex.attacks.base import Attack, Tracker
from advex.norms import ascent, lp_norm, project
from advex.threat import ThreatModel

__all__ = ["FakeImage"]


class FakeImage(Attack):
    """Targeted input optimization from noise or from x, with an optional distance penalty."""

    name: ClassVar[str] = "fake_image"
    needs_eps: ClassVar[bool] = False
    requires_targeted: ClassVar[bool] = True

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        step_size: float = 0.5,
        init: Literal["noise", "x"] = "noise",
        penalty: float = 0.0,
        penalty_norm: Literal["l2", "l1"] = "l2",
        step: Literal["l2", "sign", "raw"] = "l2",
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        if init not in ("noise", "x"):
            raise ValueError(f"init: expected 'noise' or 'x', got {init!r}")
        if step not in ("l2", "sign", "raw"):
            raise ValueError(f"step: expected 'l2', 'sign' or 'raw', got {step!r}")
        if penalty_norm not in ("l2", "l1"):
            raise ValueError(f"penalty_norm: expected 'l2' or 'l1', got {penalty_norm!r}")
        checks.non_negative("penalty", penalty)
        checks.positive_int("steps", steps)
        checks.positive("step_size", step_size)
        self.steps, self.step_size, self.init = steps, float(step_size), init
        self.penalty, self.penalty_norm, self.step = float(penalty), penalty_norm, step

    def _run(self, run: Tracker) -> None:
        threat = self.threat
        lo, hi = threat.bounds
        if self.init == "noise":
            noise = run.rand(*run.x.shape[1:])
            delta = project(lo + (hi - lo) * noise - run.x, run.x, threat)
        else:
            delta = torch.zeros_like(run.x)
        power = 2 if self.penalty_norm == "l2" else 1

        def penalty(d: Tensor) -> Tensor:
            return self.penalty * lp_norm(d, self.penalty_norm) ** power

        for _ in run.steps(self.steps):
            _, _, grad = run.value_and_grad(delta, losses.ce, penalty if self.penalty else None)
            delta, grad = run.shrink(delta, grad)
            if self.step == "raw":
                direction = grad
            else:
                direction = ascent(grad, "l2" if self.step == "l2" else "linf")
            delta = project(delta + self.step_size * direction, run.x, threat)
        if run.n_active:
            with torch.no_grad():
                run.forward(run.x + delta)
