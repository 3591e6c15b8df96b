"""Auto-PGD (APGD), its targeted-DLR variant APGD-T, and L1-APGD.

Solves max_{δ ∈ D} L(f(x + δ), y), D = {‖δ‖_p ≤ ε} ∩ {lo ≤ x + δ ≤ hi}, by PGD with momentum
and a per-sample step size η that needs no tuning:

    z       = Π_D(x^k + η · s_p(∇L(x^k))),
    x^{k+1} = Π_D(x^k + α(z − x^k) + (1 − α)(x^k − x^{k−1}))     (x^1 = z, α = ``momentum``),

s_∞ = sign, s_2 = g/‖g‖₂, Π_D exact (advex.norms). η starts at 2ε, from a random point. At the
checkpoints w_j = ⌈p_j·N⌉ (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),
``checkpoints``) a sample halves η and goes back to its best-loss point when (``should_halve``)

    (1) the loss rose in fewer than ρ·(w_j − w_{j−1}) of the steps since w_{j−1}, or
    (2) η was not halved at w_{j−1} and the best loss has not improved since then.

Losses: CE or DLR = −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3). APGD-T ascends the targeted DLR
−(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2) toward the 2nd, 3rd, … most likely clean class t, each run
only on the samples still unbroken; success stays "misclassified".

L1 (Mind the box): a step moves the k coordinates of largest |g| that the box does not block,
s = sign(g)·1_top-k/k, with η = ε at first and k = 20 % of the coordinates. Every 4 % of the steps
k becomes ‖δ_best‖₀/1.5 and η becomes ε if ‖δ_best‖₀ fell by more than 5 % since the last check
(the iterate then goes back to its best point), else η/1.5, clamped to [ε/10, ε]
(``sparsity_update``). With ``large_eps``, 30 % of the steps run in the 3ε-ball, 30 % in the
2ε-ball and 40 % in the ε-ball, each stage starting from the previous stage's best-loss point
projected into the smaller ball (only points in the ε-ball are ever recorded as results).

Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks. ICML 2020. arXiv:2003.01690
Croce, Hein. Mind the box: l1-APGD for sparse adversarial attacks on image classifiers.
ICML 2021. arXiv:2103.01208

Differences from the paper and the reference code (fra31/auto-attack):

* checkpoints follow the paper's formula; the reference uses integer intervals (int(0.22N),
  shrinking by int(0.03N) down to int(0.06N)) — the same for N = 100;
* condition (1) is the paper's strict "<" (the reference: ≤, and at the first checkpoint it also
  compares with a zero-initialized entry);
* after going back to its best point a sample takes no momentum (the reference mixes in
  x_best − x^{k−1}) and counts loss increases from the best loss;
* N steps cost N gradients (at x^0 … x^{N−1}) and one forward at x^N; the reference also takes
  the gradient at x^N, which it never uses;
* random start uniform in the ball (advex.norms.random_start); the reference starts on a scaled
  uniform/Gaussian point (L∞/L2) or a projected Gaussian (L1);
* L1: coordinates the box blocks are skipped (the paper; the reference leaves them to the
  projection); without ``large_eps`` and in the first stage k starts at 20 %, later stages start
  from the sparsity of their start point; no momentum (as the reference);
* the result is the best point per sample (success first, then margin), checked at every
  evaluated point; samples stop once they succeed (``early_stop``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor

from advex.attacks import checks, losses
from advex.attacks.base import Attack, Tracker
from advex.norms import ascent, lp_norm, project_ball
from advex.threat import ThreatModel

__all__ = ["APGD", "APGDT", "checkpoints", "should_halve", "sparsity_update"]

_L1_CHECK_EVERY = 0.04  # L1: adapt k and η every 4 % of the steps (the reference)


def checkpoints(steps: int) -> list[int]:
    """The checkpoints w_j = ⌈p_j·N⌉ for p_j < 1 (w_0 = 0), increasing, without repeats."""
    checks.positive_int("steps", steps)
    p = [0, 22]  # in hundredths, so that the arithmetic is exact
    while p[-1] < 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return sorted({-(-q * steps // 100) for q in p if q < 100})


def should_halve(
    history: Tensor, best_loss: Tensor, last_best: Tensor, reduced: Tensor, rho: float
) -> Tensor:
    """Which samples halve η at a checkpoint (and go back to their best point), bool (B,).

    Args:
        history: (B, m + 1) losses at x^{w_{j−1}}, …, x^{w_j}: m = w_j − w_{j−1} steps.
        best_loss: (B,) best loss so far. last_best: (B,) best loss at the last checkpoint.
        reduced: (B,) bool, whether η was halved at the last checkpoint.
        rho: condition (1) fires when the loss rose in fewer than rho·m steps.
    """
    increases = (history[:, 1:] > history[:, :-1]).sum(dim=1)
    oscillating = increases < rho * (history.shape[1] - 1)
    stalled = ~reduced & (best_loss <= last_best)
    return oscillating | stalled


def sparsity_update(
    sparsity: Tensor, last_sparsity: Tensor, step_size: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """L1 checkpoint: (k, step size, go-back mask) from ‖δ_best‖₀ now and at the last check."""
    dropped = sparsity < 0.95 * last_sparsity
    step = torch.where(dropped, torch.full_like(step_size, eps), step_size / 1.5)
    return sparsity / 1.5, step.clamp(eps / 10, eps), dropped


def _sparse_direction(
    grad: Tensor, x_adv: Tensor, bounds: tuple[float, float], k: Tensor
) -> Tensor:
    """sign(g) on the ⌈k⌉ largest |g_i| (per sample) the box does not block, ‖·‖₁ = 1."""
    g, xa = grad.flatten(1), x_adv.flatten(1)
    blocked = ((xa >= bounds[1]) & (g > 0)) | ((xa <= bounds[0]) & (g < 0))
    mag = g.abs().masked_fill(blocked, 0.0)
    top = k.ceil().long().clamp(1, g.shape[1]).unsqueeze(1)
    kth = mag.sort(dim=1, descending=True).values.gather(1, top - 1)
    mask = (mag >= kth) & (mag > 0)
    out = g.sign() * mask / mask.sum(dim=1, keepdim=True).clamp_min(1)
    return out.reshape(grad.shape)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """torch.where with a (B,) mask broadcast over the trailing dimensions of a and b."""
    return torch.where(mask.view((-1,) + (1,) * (a.ndim - 1)), a, b)


@dataclass
class _State:
    """Per-sample state of one APGD stage, aligned with the tracker's active rows."""

    delta: Tensor
    prev: Tensor  # δ of the previous iterate, for the momentum term
    grad: Tensor
    step_size: Tensor  # η, (B,)
    best_loss: Tensor
    best_delta: Tensor
    best_grad: Tensor
    history: Tensor  # losses since the last checkpoint, (B, m)
    last_best: Tensor  # best loss at the last checkpoint
    reduced: Tensor  # η halved at the last checkpoint
    k: Tensor  # L1: how many coordinates a step moves
    sparsity: Tensor  # L1: ‖δ_best‖₀ at the last checkpoint

    def shrink(self, run: Tracker) -> None:
        """Drop the rows the tracker retired (early stop) from every field."""
        names = [f.name for f in fields(self)]
        kept = run.shrink(*(getattr(self, n) for n in names))
        for name, value in zip(names, kept, strict=True):
            setattr(self, name, value)


class APGD(Attack):
    """Auto-PGD with CE or DLR loss; restarts run only on samples still unbroken."""

    name: ClassVar[str] = "apgd"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str | losses.Loss = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        large_eps: bool | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        self.steps = checks.positive_int("steps", steps)
        self.restarts = checks.positive_int("restarts", restarts)
        self.rho = checks.fraction("rho", rho, closed=True)
        self.momentum = checks.fraction("momentum", momentum, closed=True)
        if large_eps is not None and not isinstance(large_eps, bool):
            raise ValueError(f"large_eps: expected True, False or None, got {large_eps!r}")
        self.large_eps = threat.norm == "l1" and large_eps is not False
        if isinstance(loss, str) and loss not in ("ce", "dlr"):
            raise ValueError(f"loss: expected 'ce', 'dlr' or a callable, got {loss!r}")
        if not isinstance(loss, str) and not callable(loss):
            raise ValueError(f"loss: expected 'ce', 'dlr' or a callable, got {loss!r}")
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss = losses.get(loss)

    def _losses(self, run: Tracker) -> Iterator[losses.Loss]:
        """The loss of each run; every run after the first sees only unbroken samples."""
        for _ in run.restarts(self.restarts):
            yield self._loss

    def _stages(self) -> list[tuple[float, int]]:
        """(radius, steps) per stage: 3ε, 2ε, ε for 30/30/40 % of the steps with large_eps."""
        eps, n = self.threat.budget(), self.steps
        if not self.large_eps:
            return [(eps, n)]
        a = min(math.ceil(0.3 * n), (n - 1) // 2)
        return [(f * eps, s) for f, s in ((3, a), (2, a), (1, n - 2 * a)) if s > 0]

    def _run(self, run: Tracker) -> None:
        threat = self.threat
        for loss in self._losses(run):
            delta = last = None
            for eps, steps in self._stages():
                if not run.n_active:
                    break
                if delta is None:
                    start = run.random_start(threat.with_eps(eps))
                else:
                    start = project_ball(delta, run.x, threat.norm, eps, threat.bounds)
                last, delta = self._stage(run, loss, eps, steps, start, first=delta is None)
            if run.n_active and last is not None:
                with torch.no_grad():
                    run.forward(run.x + last)

    def _stage(
        self, run: Tracker, loss: losses.Loss, eps: float, steps: int, delta: Tensor, first: bool
    ) -> tuple[Tensor, Tensor]:
        """``steps`` APGD steps in the ε-ball from δ; returns (last iterate, best-loss point)."""
        l1 = self.threat.norm == "l1"
        if l1:
            every = max(1, int(_L1_CHECK_EVERY * steps))
            marks = set(range(every, steps, every))
        else:
            marks = set(checkpoints(steps)[1:])
        b, n = delta.shape[0], delta[0].numel()
        ones = delta.new_ones(b)
        sparsity = ones * n if first else lp_norm(delta, "l0")
        s = _State(
            delta=delta,
            prev=delta,
            grad=torch.zeros_like(delta),
            step_size=ones * (eps if l1 else 2 * eps),
            best_loss=ones * -math.inf,
            best_delta=delta,
            best_grad=torch.zeros_like(delta),
            history=delta.new_zeros(b, 0),
            last_best=ones * -math.inf,
            reduced=ones.bool(),
            k=ones * 0.2 * n if first else sparsity / 1.5,
            sparsity=sparsity,
        )
        for i in run.steps(steps):
            _, value, s.grad = run.value_and_grad(s.delta, loss)
            better = value > s.best_loss
            s.best_loss = torch.where(better, value, s.best_loss)
            s.best_delta = _where(better, s.delta, s.best_delta)
            s.best_grad = _where(better, s.grad, s.best_grad)
            s.history = torch.cat([s.history, value.unsqueeze(1)], dim=1)
            s.shrink(run)
            if not run.n_active:
                break
            if i in marks:
                self._checkpoint(s, eps)
            s.prev, s.delta = s.delta, self._step(s, run.x, eps, first=i == 0)
        return s.delta, s.best_delta

    def _checkpoint(self, s: _State, eps: float) -> None:
        """Adapt η (and k for L1) per sample; the samples whose η changed go back to their best."""
        if self.threat.norm == "l1":
            sparsity = lp_norm(s.best_delta, "l0")
            s.k, s.step_size, back = sparsity_update(sparsity, s.sparsity, s.step_size, eps)
            s.sparsity = sparsity
        else:
            back = should_halve(s.history, s.best_loss, s.last_best, s.reduced, self.rho)
            s.step_size = torch.where(back, s.step_size / 2, s.step_size)
            s.reduced, s.last_best = back, s.best_loss
        s.delta = _where(back, s.best_delta, s.delta)
        s.prev = _where(back, s.best_delta, s.prev)
        s.grad = _where(back, s.best_grad, s.grad)
        s.history = torch.where(back, s.best_loss, s.history[:, -1]).unsqueeze(1)

    def _step(self, s: _State, x: Tensor, eps: float, first: bool) -> Tensor:
        """The next iterate: a projected step, then (after the first, not L1) momentum."""
        threat = self.threat
        if threat.norm == "l1":
            direction = _sparse_direction(s.grad, x + s.delta, threat.bounds, s.k)
        else:
            direction = ascent(s.grad, threat.norm)
        eta = s.step_size.view((-1,) + (1,) * (x.ndim - 1))
        z = project_ball(s.delta + eta * direction, x, threat.norm, eps, threat.bounds)
        if first or threat.norm == "l1":
            return z
        a = self.momentum
        moved = s.delta + a * (z - s.delta) + (1 - a) * (s.delta - s.prev)
        return project_ball(moved, x, threat.norm, eps, threat.bounds)


class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss toward each of the top other classes in turn.

    Runs ``restarts`` times per target class (restarts × targets runs in all), each run only on
    the samples still unbroken; the targets are the classes of rank 2 … n_target_classes + 1 in
    the clean logits (capped at the number of classes).
    """

    name: ClassVar[str] = "apgd-t"
    supports_targeted: ClassVar[bool] = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        large_eps: bool | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(
            threat,
            steps=steps,
            restarts=restarts,
            loss="dlr",
            rho=rho,
            momentum=momentum,
            large_eps=large_eps,
            seed=seed,
            batch_size=batch_size,
            early_stop=early_stop,
        )
        self.n_target_classes = checks.positive_int("n_target_classes", n_target_classes)
        self.loss = "dlr-targeted"

    def _losses(self, run: Tracker) -> Iterator[losses.Loss]:
        """Targets of rank 2 … n_target_classes + 1 (capped at the class count), restarts each."""
        last = min(self.n_target_classes + 1, run.clean_logits.shape[1])
        ranks = range(2, last + 1)
        for r in run.restarts(self.restarts * len(ranks)):
            yield self._toward_rank(run, ranks[r // self.restarts])

    @staticmethod
    def _toward_rank(run: Tracker, rank: int) -> losses.Loss:
        def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
            # run.clean_logits always holds the active rows, so the targets follow early stop.
            t = run.clean_logits.argsort(dim=1, descending=True)[:, rank - 1]
            return losses.dlr(logits, y, t)

        return targeted_dlr
