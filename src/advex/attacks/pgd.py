"""Projected gradient descent (Madry et al.) and the basic iterative method (Kurakin et al.).

Solves max_{δ ∈ D} L(f(x + δ), y), D = {‖δ‖_p ≤ ε} ∩ {lo ≤ x + δ ≤ hi}, by

    δ ← Π_D(δ + α · s_p(∇_δ L)),

s_∞ = sign, s_2 = g/‖g‖₂, s_1 = the sparse L1 direction (advex.norms.ascent), Π_D exact.
PGD starts from a uniform random point in the ball and restarts on unbroken samples; BIM
(I-FGSM) starts at x with α = 1/255 and min(255ε + 4, 1.25·255ε) steps (other
norms: 20 steps of 2.5ε/20); ILLC is BIM that
descends the cross-entropy toward the least-likely class y_LL = argmin_j f_j(x).

Madry, Makelov, Schmidt, Tsipras, Vladu. Towards Deep Learning Models Resistant to
Adversarial Attacks. ICLR 2018. arXiv:1706.06083
Kurakin, Goodfellow, Bengio. Adversarial Examples in the Physical World. ICLR workshop 2017.
arXiv:1607.02533

Differences: the returned point is the best one found per sample (success first, then the
largest margin), not the last iterate; samples stop once they succeed (``early_stop``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from advex.attacks import checks, losses
from advex.attacks.base import Attack, Tracker
from advex.norms import ascent, project
from advex.threat import ThreatModel

__all__ = ["BIM", "ILLC", "PGD"]


class PGD(Attack):
    """PGD with random start and restarts; restarts run only on samples still unbroken."""

    name: ClassVar[str] = "pgd"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        l1_sparsity: float = 0.99,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        checks.positive_int("steps", steps)
        checks.positive_int("restarts", restarts)
        if step_size is not None:
            checks.positive("step_size", step_size)
        self.steps = steps
        self.step_size = (
            float(step_size) if step_size is not None else 2.5 * threat.budget() / steps
        )
        self.restarts = restarts
        self.random_start = random_start
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss = losses.get(loss)
        self.l1_sparsity = l1_sparsity

    def _loss_for(self, run: Tracker) -> losses.Loss:
        """The loss this run ascends (ILLC overrides it)."""
        return self._loss

    def _run(self, run: Tracker) -> None:
        threat = self.threat
        for _ in run.restarts(self.restarts):
            loss = self._loss_for(run)
            delta = run.random_start() if self.random_start else torch.zeros_like(run.x)
            for _ in run.steps(self.steps):
                _, _, grad = run.value_and_grad(delta, loss)
                delta, grad = run.shrink(delta, grad)
                step = ascent(
                    grad,
                    threat.norm,
                    x_adv=run.x + delta,
                    bounds=threat.bounds,
                    sparsity=self.l1_sparsity,
                )
                delta = project(delta + self.step_size * step, run.x, threat)
            if run.n_active:
                with torch.no_grad():
                    run.forward(run.x + delta)


def _default_steps(threat: ThreatModel) -> int:
    """Kurakin's min(255ε + 4, 1.25·255ε) steps for L∞; 20 steps for the other norms."""
    eps = threat.budget()
    if threat.norm != "linf":
        return 20
    return max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))


def _default_step_size(threat: ThreatModel) -> float:
    """α = 1/255 for L∞ (Kurakin); for the other norms 2.5·ε/20, PGD's rule for 20 steps."""
    return 1 / 255 if threat.norm == "linf" else 2.5 * threat.budget() / 20


class BIM(PGD):
    """Basic iterative method / I-FGSM: PGD from x, no random start, Kurakin's defaults."""

    name: ClassVar[str] = "bim"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int | None = None,
        step_size: float | None = None,
        loss: str = "ce",
        l1_sparsity: float = 0.99,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        if threat.eps is None:
            raise ValueError(f"threat.eps: {self.name} is a fixed-budget attack and needs eps")
        super().__init__(
            threat,
            steps=steps if steps is not None else _default_steps(threat),
            step_size=step_size if step_size is not None else _default_step_size(threat),
            restarts=1,
            random_start=False,
            loss=loss,
            l1_sparsity=l1_sparsity,
            seed=seed,
            batch_size=batch_size,
            early_stop=early_stop,
        )


class ILLC(BIM):
    """Iterative least-likely class: BIM that descends CE toward argmin_j f_j(x)."""

    name: ClassVar[str] = "illc"
    supports_targeted: ClassVar[bool] = False

    def _loss_for(self, run: Tracker) -> losses.Loss:
        def toward_least_likely(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
            # run.clean_logits always holds the active rows, so the labels follow early stop.
            least_likely = run.clean_logits.argmin(dim=1)
            return -F.cross_entropy(logits, least_likely, reduction="none")

        return toward_least_likely
