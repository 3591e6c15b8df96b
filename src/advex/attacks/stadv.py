"""stAdv: spatially transformed adversarial examples.

Instead of adding δ to the pixels, stAdv moves them: a flow field f (B, 2, H, W) says where each
output pixel reads the input, x' = warp(x, f), with bilinear interpolation (``advex.attacks.
spatial.warp``; every channel moves with the same flow). It solves

    min_f  L_adv(x') + τ · L_flow(f),

    L_adv = max(max_{i≠t} Z_i(x') − Z_t(x'), −κ)        (targeted, t the target)
    L_adv = max(Z_y(x') − max_{i≠y} Z_i(x'), −κ)        (untargeted),

    L_flow = Σ_p Σ_{q ∈ N(p)} √(‖Δu_p − Δu_q‖² + ‖Δv_p − Δv_q‖² + ε)    (``spatial.flow_loss``),

Z the logits, from f = 0. The result is, per sample, the adversarial point of smallest flow loss
among every point the optimizer evaluated (the ``Tracker`` keeps it, ranked by L_flow), and
``AttackResult.distance`` is that flow loss (``result.metric == "flow"``). The flow behind each
returned point comes back as ``FlowResult.flow``: x_adv = round(warp(x, flow)) (rounded onto the
value grid when the threat has ``levels``).

Xiao, Zhu, Li, He, Liu, Song. Spatially Transformed Adversarial Examples. ICLR 2018.
arXiv:1801.02612

Threat model: ``eps=None`` (a flow has no Lp budget); ``norm`` is only the label of the image
change ("linf" or "l2") and is not what ``distance`` measures. Box and value grid are still
enforced and the success re-checked by a fresh forward pass, as for every advex result.

Differences from the paper and its reference code (github.com/rakutentech/stAdv):

* the optimizer: Adam on each sample's own objective (independent per-sample steps), learning
  rate ``lr`` pixels per step decayed to 0 by a cosine schedule over ``steps``, instead of
  L-BFGS. We tried torch's L-BFGS (strong-Wolfe line search) on the batch's summed objective,
  as the reference runs scipy's L-BFGS-B on a batch (shared line search, stopping test and
  quasi-Newton memory): on 30 MNIST test images with the bundled CNN it found 65 % (Adam 100 %)
  untargeted without ``levels``, and nothing at all with ``levels=256`` — the model then sees
  the rounded image, a piecewise-constant function of f whose line search stalls at once.
* ``adapt`` (default on): a sample that has not yet succeeded halves its τ every ``steps/10``
  steps, so a τ too large for it (the flow term outweighing the margin before the boundary)
  does not leave it unbroken; samples that succeed keep the paper's τ. On the same 30 images,
  targeted (t = y + 1): 87 % → 100 % success, median flow loss on the common successes
  unchanged. ``adapt=False`` keeps τ fixed, as in the paper.
* N(p) are the 4 axis neighbours (the reference uses the 4 diagonal ones, under which a
  checkerboard flow costs nothing); pairs across the image border are left out, and √ε is
  subtracted per term so that a constant flow has loss exactly 0 (see ``spatial.flow_loss``).
* the border rule of the resampling is a setting (``padding``): "zeros" follows the paper's
  formula (pixels outside the image count as 0), "border" clamps the sampling point into the
  image.
* the flows come back on the result (``FlowResult.flow``), not only the images.

Measured (first 100 mnist5k test images, bundled ``mnist_cnn``, ``levels=256``, defaults):
100 % untargeted, median flow loss 73.2; 100 % targeted to y + 1, median 129.7; on the L∞
PGD-trained ``mnist_cnn_pgd`` 81.6 % untargeted, median 85.6. 1000 steps instead of 500 lower
the flow loss by ~5 %, 300 raise it by ~2 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Tracker
from advex.attacks.losses import margin
from advex.attacks.optim import Adam
from advex.attacks.spatial import Padding, TransformAttack, check_padding, flow_loss, warp
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = ["FlowResult", "StAdv"]


@dataclass
class FlowResult(AttackResult):
    """An ``AttackResult`` with the flow field behind each returned point.

    Attributes:
        flow: (B, 2, H, W) the flow of each returned point, in pixels ([:, 0] rows, [:, 1]
            columns; see ``advex.attacks.spatial.warp``); zero where the attack found nothing
            better than x itself (samples misclassified already, or not attacked).
    """

    flow: Tensor | None = None

    PER_SAMPLE: ClassVar[tuple[str, ...]] = (*AttackResult.PER_SAMPLE, "flow")


class StAdv(TransformAttack):
    """stAdv: optimize a flow field f on L_adv(warp(x, f)) + τ·L_flow(f); returns a FlowResult.

    Args:
        threat: a ``ThreatModel`` with ``eps=None``; ``norm`` ("linf" or "l2") only labels the
            image change, ``distance`` is the flow loss. Targeted or untargeted.
        steps: Adam steps per sample (one forward + backward pass each).
        tau: τ, the weight of the flow loss (the paper: 0.05).
        kappa: κ ≥ 0, the confidence asked of L_adv (0 in the paper).
        lr: Adam's initial learning rate on the flow, in pixels (cosine decay to 0).
        padding: the resampling's border rule, "zeros" (the paper's formula) or "border".
        adapt: halve τ every ``steps/10`` steps for the samples not yet broken.
        flow_eps: ε inside the square roots of the flow loss.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack`` (no randomness used).
    """

    name: ClassVar[str] = "stadv"
    metric: ClassVar[str | None] = "flow"
    result_type: ClassVar[type[AttackResult]] = FlowResult

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 500,
        tau: float = 0.05,
        kappa: float = 0.0,
        lr: float = 0.1,
        padding: Padding = "zeros",
        adapt: bool = True,
        flow_eps: float = 1e-8,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        self.steps = checks.positive_int("steps", steps)
        self.tau = checks.non_negative("tau", tau)
        self.kappa = checks.non_negative("kappa", kappa)
        self.lr = checks.positive("lr", lr)
        self.adapt = bool(adapt)
        self.padding = check_padding(padding)
        self.flow_eps = checks.positive("flow_eps", flow_eps)

    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        **options: Any,
    ) -> FlowResult:
        """Attack as ``Attack.__call__`` (``options``: its keyword arguments); the result also
        carries the flows (``FlowResult.flow``)."""
        return cast(FlowResult, super().__call__(model, x, y, target, **options))

    def _extras(self, x: Tensor) -> dict[str, Tensor]:
        b, _, h, w = x.shape
        return {"flow": x.new_zeros(b, 2, h, w)}

    # ----- the optimization -------------------------------------------------------------------
    def _objective(self, run: Tracker, flow: Tensor, tau: Tensor | float) -> Tensor:
        """The gradient of the per-sample objective L_adv + τ·L_flow at ``flow`` (one forward
        + backward, recorded with its flow loss and its flow)."""
        flow = flow.detach().requires_grad_(True)
        with torch.enable_grad():
            smooth = flow_loss(flow, self.flow_eps)
            point = warp(run.x, flow, padding=self.padding)
            logits = run.forward(point, distance=smooth, extras={"flow": flow})
            adv = -margin(logits, run.y, run.labels_target, kappa=self.kappa)
            values = adv + tau * smooth
            (grad,) = torch.autograd.grad(values.sum(), flow)
        run.gradients[run.rows] += 1
        run.clf.backward_count += run.n_active
        return grad

    def _run(self, run: Tracker) -> None:
        flow = run.x.new_zeros(run.n_active, 2, *run.x.shape[2:])
        tau = torch.full((run.n_active,), self.tau, device=flow.device, dtype=flow.dtype)
        adam = Adam(self.lr)
        every = max(self.steps // 10, 1)
        for i in run.steps(self.steps):
            if self.adapt and i and i % every == 0:
                tau = torch.where(run.best_success[run.rows], tau, tau / 2)
            grad = self._objective(run, flow, tau)
            adam.lr = self.lr * 0.5 * (1 + math.cos(math.pi * i / self.steps))
            flow = adam.step(flow, grad)
