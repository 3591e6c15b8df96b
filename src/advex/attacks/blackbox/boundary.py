"""What the hard-label direction attacks share: the distance to the boundary along a ray.

OPT and Sign-OPT (``opt.py``, ``sign_opt.py``) recast the search for a minimal adversarial
perturbation, seen through top-1 labels only, as the minimization of a real function of a
direction θ (Cheng et al., ICLR 2019):

    g(θ) = min {λ > 0 : x + λ·θ/‖θ‖_p is adversarial}     (f(·) ≠ y, or = t when targeted),

so that the optimum θ* gives the perturbation g(θ*)·θ*/‖θ*‖_p of norm g(θ*). g is evaluated
with label queries only (``boundary_search``): a coarse search from a guess λ₀ (usually g at a
nearby direction) — λ₀·r, λ₀·r², ... outward while the point is not adversarial, λ₀/r, ...
inward while it is — brackets the boundary, then a binary search shrinks the bracket
[λ_lo, λ_hi] until λ_hi − λ_lo ≤ tol·λ_hi. λ_hi is always a queried adversarial point, so the
tracker has recorded x + g(θ)·θ/‖θ‖_p for every θ evaluated, and the best one comes out as the
result without any further work.

Everything runs batched over samples and directions: many searches (several per sample, or
none for some) advance in lockstep, one ``run.forward`` per round holding one point per search
still going; each round first stops the searches of samples that cannot pay for it
(``run.budget_left``) or are finished, and reports them as incomplete.

``DirectionAttack`` holds the rest both attacks share: the initial direction (the best of many
random ones), the step-size search along a descent direction, the outer loop, and the optional
user-given starting points.

Differences from the reference code (github.com/cmhcbb/attackbox) shared by both attacks:

* L2 only. The code normalizes the ray in the threat's norm, but an L∞ variant (ray θ/‖θ‖∞,
  so that λ is the L∞ distance) was measured too weak to offer: on 10 MNIST images with 5000
  queries Sign-OPT ended at 3.3 times DeepFool's L∞ distance, and at about twice the optimum
  on a linear model (the reference's ``Sign_OPT_lf`` is a different algorithm);
* the coarse search multiplies λ by 1.01, 1.01², 1.01⁴, ... (the ratio squares after each step)
  instead of by a constant 1.01, so a boundary far from the guess costs O(log) queries; near
  the guess it is the reference's first step;
* tolerances are relative (λ_hi − λ_lo ≤ (β/500)·λ_hi; the reference uses an absolute β/500
  on [0, 1] images, where g ≈ 1), and never finer than the float precision of x;
* an outward search gives up (g = ∞) past the box's diameter in the threat's norm (the
  reference: past λ = 20);
* every point is clipped to the box (and put on the grid with ``levels``) by the tracker before
  it is queried, so g is the boundary distance along the clipped ray and the recorded distance
  (that of the clipped point) is at most λ;
* initialization: every other random direction is smooth noise (a Gaussian on a grid of
  ⌈H/4⌉ × ⌈W/4⌉, upsampled bilinearly) instead of pixel-wise Gaussian noise: on MNIST the
  bundled CNN calls nearly every clipped pixel-noise image an 8, so with the paper's directions
  no image of an 8 ever gets a starting point (5 of the first 20 test images), while smooth
  noise is adversarial for every one of them in most draws;
* initialization: each random direction (standard deviation hi − lo) is queried once, at
  λ = min(‖θ‖_p, best g so far) — the reference first queries x + θ, then the best g — and
  bisected on [0, λ] only if that point is adversarial.

The result lies within a relative β/500 of the decision boundary (on its adversarial side).
The final re-check evaluates it once more, in a batch of another size; for a model whose
rounding depends on the batch size (``nn.Linear`` on a CPU may), a point that close can
come out on the other side, and the sample is then reported as not broken (seen once in 16
on a random 8×8 MLP, never on the bundled MNIST CNN).
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Select, Tracker
from advex.attacks.blackbox.base import BlackBoxAttack, QueryTracker
from advex.norms import lp_norm
from advex.oracle import Access
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = ["DirectionAttack", "boundary_search", "box_diameter", "unit"]

#: First ratio of the coarse search (the reference's fine-grained step).
RATIO = 1.01
#: Step-size trials of each phase of the line search (the reference's 15).
LINE_TRIALS = 15
#: Below this step size the line search is stalled: it restarts at 1 with β / 10.
MIN_STEP = 1e-4
#: Below this β a sample has converged and stops.
MIN_BETA = 1e-8
_PROBE, _GROW, _SHRINK, _BISECT, _DONE = range(5)


def unit(v: Tensor, norm: str) -> Tensor:
    """Each row of ``v`` (n, ...) divided by its norm ‖v‖_p (rows of zeros stay zero)."""
    n = lp_norm(v, norm).clamp_min(torch.finfo(v.dtype).tiny)
    return v / n.view((-1,) + (1,) * (v.ndim - 1))


def box_diameter(x: Tensor, threat: ThreatModel) -> float:
    """Largest distance between two points of the box, in the threat's norm."""
    lo, hi = threat.bounds
    d = x[0].numel()
    return (hi - lo) * (1.0 if threat.norm == "linf" else math.sqrt(d))


def _view(t: Tensor, like: Tensor) -> Tensor:
    return t.view((-1,) + (1,) * (like.ndim - 1))


def boundary_search(
    run: QueryTracker,
    owner: Tensor,
    rays: Tensor,
    start: Tensor,
    tol: Tensor,
    limit: float,
    *,
    bracket: bool = False,
) -> tuple[Tensor, Tensor]:
    """g along each of m rays: the smallest λ with x[owner] + λ·ray adversarial, to tolerance.

    Args:
        run: the tracker; every point is queried (and recorded) through ``run.forward``.
        owner: (m,) long, the active sample each search belongs to (any number per sample).
        rays: (m, ...) the directions θ/‖θ‖_p.
        start: (m,) the guess λ₀ > 0 the coarse search starts from; with ``bracket``, a λ
            already known to be adversarial: the binary search runs on [0, λ₀] at once.
        tol: (m,) relative tolerance: the search stops when λ_hi − λ_lo ≤ tol·λ_hi.
        limit: an outward search that passes max(limit, λ₀) gives up with λ = ∞.

    Returns:
        (λ_hi (m,) float64 — ∞ where no adversarial point was found —, complete (m,) bool:
        False where the search was stopped early because its sample was finished or could not
        pay for the next round; λ_hi is then the best adversarial λ queried, or ∞).
    """
    m = owner.numel()
    dev = rays.device
    f64: dict[str, Any] = {"device": dev, "dtype": torch.float64}
    start = start.to(**f64)
    tol = tol.to(**f64).clamp_min(4 * torch.finfo(rays.dtype).eps)
    cap = start.clamp_min(limit)
    lo = torch.zeros(m, **f64)
    hi = start.clone() if bracket else torch.full((m,), math.inf, **f64)
    phase = torch.full((m,), _BISECT if bracket else _PROBE, dtype=torch.long, device=dev)
    k = torch.zeros(m, **f64)  # coarse steps taken: the next ratio is RATIO ** 2**k
    complete = torch.ones(m, dtype=torch.bool, device=dev)
    if bracket:
        phase[(hi - lo) <= tol * hi] = _DONE
    while True:
        live = phase != _DONE
        if not bool(live.any()):
            break
        counts = torch.bincount(owner[live], minlength=run.n_active)
        short = (counts > run.budget_left) | run.done[run.rows]
        stop = live & short[owner]
        if bool(stop.any()):
            complete[stop] = False
            phase[stop] = _DONE
            live &= ~stop
            if not bool(live.any()):
                break
        idx = torch.nonzero(live).squeeze(1)
        p, low, high = phase[idx], lo[idx], hi[idx]
        ratio = torch.pow(RATIO, torch.pow(2.0, k[idx]))
        lam = torch.where(p == _PROBE, start[idx], (low + high) / 2)
        lam = torch.where(p == _GROW, torch.minimum(low * ratio, cap[idx]), lam)
        lam = torch.where(p == _SHRINK, high / ratio, lam)
        who = owner[idx]
        points = run.x[who] + _view(lam.to(rays.dtype), rays) * rays[idx]
        adv = run.success_of(run.forward(points, who), who)
        # the bracket: an adversarial λ is a new λ_hi, any other a new λ_lo
        hi[idx] = torch.where(adv, lam, high)
        lo[idx] = torch.where(adv, low, lam)
        # probe → shrink (adversarial) or grow; grow → bisect once adversarial, or give up
        # past the cap; shrink → bisect once not adversarial
        new = p.clone()
        new = torch.where((p == _PROBE) & adv, _SHRINK, new)
        new = torch.where((p == _PROBE) & ~adv, _GROW, new)
        new = torch.where((p == _GROW) & adv, _BISECT, new)
        new = torch.where((p == _GROW) & ~adv & (lam >= cap[idx]), _DONE, new)
        new = torch.where((p == _SHRINK) & ~adv, _BISECT, new)
        coarse = ((p == _GROW) & ~adv) | ((p == _SHRINK) & adv)
        k[idx] = torch.where(coarse, k[idx] + 1, k[idx])
        k[idx] = torch.where(p == _PROBE, torch.zeros_like(lam), k[idx])
        converged = (new == _BISECT) & ((hi[idx] - lo[idx]) <= tol[idx] * hi[idx])
        phase[idx] = torch.where(converged, _DONE, new)
    return hi, complete


def _random_direction(run: QueryTracker, j: int) -> Tensor:
    """The j-th initial direction (n, ...): N(0, I) for even j; for odd j and images at least
    4×4, smooth noise: N(0, 1) on a grid of ⌈H/4⌉ × ⌈W/4⌉ per channel, upsampled bilinearly."""
    shape = run.x.shape[1:]
    if j % 2 == 0 or len(shape) != 3 or min(shape[1:]) < 4:
        return run.randn(*shape)
    c, h, w = shape
    coarse = run.randn(c, -(-h // 4), -(-w // 4))
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


class DirectionAttack(BlackBoxAttack):
    """Base of OPT and Sign-OPT: minimize g(θ) by descent steps with a step-size search.

    Subclasses implement ``_direction``: the descent direction at θ (an estimate of ∇g or of
    its sign) from label queries.

    Args:
        threat: an L2 threat model; ``eps`` optional (minimum-norm attack).
        max_queries: oracle queries per sample, the clean pass included (≥ 2).
        steps: descent iterations at most (the budget usually ends the attack first).
        step_size: initial step size α of the step-size search (> 0).
        beta: the smoothing parameter β of the random directions θ + β·u (> 0); binary
            searches stop at a relative tolerance of β/500.
        directions: random directions per descent direction estimate.
        init_directions: random directions tried for the initial θ (≥ 1).
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    norms: ClassVar[tuple[str, ...]] = ("l2",)
    access: ClassVar[Access] = "label"
    needs_eps: ClassVar[bool] = False
    select: ClassVar[Select] = "distance"
    boundary_margin: ClassVar[float] = 1e-4  # binary searches end within ~1e-5 of the boundary

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int,
        steps: int,
        step_size: float,
        beta: float,
        directions: int,
        init_directions: int = 100,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(
            threat,
            max_queries=max_queries,
            seed=seed,
            batch_size=batch_size,
            early_stop=early_stop,
        )
        self.steps = checks.positive_int("steps", steps)
        self.step_size = checks.positive("step_size", step_size)
        self.beta = checks.positive("beta", beta)
        self.directions = checks.positive_int("directions", directions)
        self.init_directions = checks.positive_int("init_directions", init_directions)
        self._starts: Tensor | None = None
        self._batch_starts: Tensor | None = None

    # ----- optional starting points ------------------------------------------------------
    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        *,
        active: Tensor | None = None,
        batch_offset: int = 0,
        starts: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` on ``x`` (B, ...) with labels ``y`` (B,) (and ``target``).

        ``starts`` (B, ...), optional: a point per sample, adversarial if possible (e.g. an
        image of the target class for a targeted attack). Its direction starts − x is tried
        first, before the random ones, as a candidate initial θ; a start that is not
        adversarial is simply not used. See ``advex.attacks.base.Attack.__call__`` for the rest.
        """
        if starts is None:
            return super().__call__(model, x, y, target, active=active, batch_offset=batch_offset)
        if not isinstance(starts, Tensor) or not torch.is_floating_point(starts):
            raise ValueError("starts: expected a floating-point torch.Tensor like x")
        shape = tuple(getattr(x, "shape", ()))
        if tuple(starts.shape) != shape:
            raise ValueError(f"starts: expected the shape of x {shape}, got {tuple(starts.shape)}")
        if not bool(torch.isfinite(starts).all()):
            raise ValueError("starts: contains NaN or Inf")
        self._starts = starts.detach()
        try:
            return super().__call__(model, x, y, target, active=active, batch_offset=batch_offset)
        finally:
            self._starts = self._batch_starts = None

    def _run_batch(
        self,
        clf: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        index: int,
        active: Tensor | None = None,
    ) -> AttackResult:
        if self._starts is not None:
            lo = index * (self.batch_size or self._starts.shape[0])
            self._batch_starts = self._starts[lo : lo + x.shape[0]].to(x.device, x.dtype)
        return super()._run_batch(clf, x, y, target, index, active)

    # ----- the loop --------------------------------------------------------------------------
    def _run(self, tracker: Tracker) -> None:
        run = cast(QueryTracker, tracker)  # BlackBoxAttack always runs in a QueryTracker
        with torch.no_grad():
            theta, g = self._initial(run)
            run.retire(~torch.isfinite(g))
            alpha = torch.full_like(g, self.step_size)
            beta = torch.full_like(g, self.beta)
            theta, g, alpha, beta = run.shrink(theta, g, alpha, beta)
            for _ in run.steps(self.steps):
                direction, probe, probe_g, ok = self._direction(run, theta, g, beta)
                new, new_g, alpha, complete = self._line_search(
                    run, theta, g, direction, alpha, beta, ok
                )
                if probe is not None and probe_g is not None:  # OPT: a probe may beat the step
                    better = probe_g < new_g
                    new = torch.where(_view(better, new), probe, new)
                    new_g = torch.where(better, probe_g, new_g)
                theta, g = new, new_g
                stalled = alpha < MIN_STEP
                alpha = torch.where(stalled, torch.ones_like(alpha), alpha)
                beta = torch.where(stalled, beta / 10, beta)
                run.retire(~(ok & complete) | (beta < MIN_BETA))
                theta, g, alpha, beta = run.shrink(theta, g, alpha, beta)

    @abc.abstractmethod
    def _direction(
        self, run: QueryTracker, theta: Tensor, g: Tensor, beta: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """Descent direction at θ (n, ...) with g(θ) = ``g`` (n,); returns (direction,
        the best probed θ or None, its g or None, ok (n,): False where the budget ran out)."""

    # ----- shared pieces ---------------------------------------------------------------------
    def _limit(self, run: QueryTracker) -> float:
        return box_diameter(run.x, self.threat)

    def _g(
        self, run: QueryTracker, owner: Tensor, theta: Tensor, start: Tensor, beta: Tensor
    ) -> tuple[Tensor, Tensor]:
        """g at each θ (L2-unit rows) of ``owner``'s samples, searched from ``start``."""
        rays = unit(theta, self.threat.norm)
        return boundary_search(run, owner, rays, start, beta / 500, self._limit(run))

    def _initial(self, run: QueryTracker) -> tuple[Tensor, Tensor]:
        """The best of ``init_directions`` random directions (after the start, if given).

        Direction j is queried once per sample, at λ = min(‖θ_j‖_p, best g so far); if that
        point is adversarial, g(θ_j) is bisected on [0, λ]. Returns θ (n, ...) at unit L2 norm
        and g (n,) float64 (∞ where no direction was adversarial).
        """
        n = run.n_active
        x = run.x
        lo, hi = self.threat.bounds
        theta = torch.zeros_like(x)
        g = torch.full((n,), math.inf, device=x.device, dtype=torch.float64)
        starts = None if self._batch_starts is None else self._batch_starts[run.rows]
        tol = torch.full_like(g, self.beta / 500)
        for j in range(self.init_directions + (starts is not None)):
            if starts is not None and j == 0:
                d = starts.clamp(lo, hi) - x
            else:
                d = _random_direction(run, j - (starts is not None)) * (hi - lo)
            lam0 = lp_norm(d, self.threat.norm).to(torch.float64)
            lam = torch.minimum(lam0, g)
            ask = (lam0 > 0) & (run.budget_left >= 1) & run.alive
            who = torch.nonzero(ask).squeeze(1)
            if who.numel() == 0:
                continue
            rays = unit(d[who], self.threat.norm)
            points = x[who] + _view(lam[who].to(x.dtype), rays) * rays
            adv = run.success_of(run.forward(points, who), who)
            who, rays = who[adv], rays[adv]
            if who.numel() == 0:
                continue
            found, _ = boundary_search(
                run, who, rays, lam[who], tol[who], self._limit(run), bracket=True
            )
            better = found < g[who]
            g[who[better]] = found[better]
            theta[who[better]] = unit(d[who[better]], "l2")
        return theta, g

    def _line_search(
        self,
        run: QueryTracker,
        theta: Tensor,
        g: Tensor,
        direction: Tensor,
        alpha: Tensor,
        beta: Tensor,
        active: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The reference's step-size search along −``direction`` from θ (``active`` samples).

        Growing: θ' = θ − α·direction (unit norm) with α doubled after each trial, while g(θ')
        keeps decreasing (at most 15 trials). If no trial improved on g(θ), shrinking: α /= 4
        before each trial until g(θ') < g(θ) (at most 15). Returns (θ', g', α, complete (n,):
        False where the budget stopped a search); θ' = θ where nothing improved or the sample
        was not ``active``.
        """
        n = run.n_active
        best, best_g = theta.clone(), g.clone()
        alpha = alpha.clone()
        phase = torch.where(active, 0, 2)  # 0 grow, 1 shrink, 2 done
        trials = torch.zeros_like(phase)
        complete = torch.ones(n, dtype=torch.bool, device=g.device)
        while bool((phase < 2).any()):
            idx = torch.nonzero(phase < 2).squeeze(1)
            shrinking = phase[idx] == 1
            alpha[idx] = torch.where(shrinking, alpha[idx] / 4, alpha[idx])
            step = _view(alpha[idx].to(theta.dtype), theta) * direction[idx]
            new = unit(theta[idx] - step, "l2")
            found, ok = self._g(run, idx, new, best_g[idx], beta[idx])
            complete[idx[~ok]] = False
            # growing: keep the improvement, double α, go on while it improves
            reference = torch.where(shrinking, g[idx], best_g[idx])
            better = ok & (found < reference)
            best[idx[better]] = new[better]
            best_g[idx[better]] = found[better]
            trials[idx] += 1
            alpha[idx] = torch.where(shrinking, alpha[idx], alpha[idx] * 2)
            grow_on = ~shrinking & better & (trials[idx] < LINE_TRIALS)
            grow_end = ~shrinking & ~grow_on
            improved = best_g[idx] < g[idx]
            next_phase = torch.where(grow_end & ~improved, 1, 2)
            next_phase = torch.where(grow_on, 0, next_phase)
            shrink_on = shrinking & ~better & (trials[idx] < LINE_TRIALS)
            next_phase = torch.where(shrink_on, 1, next_phase)
            next_phase = torch.where(ok, next_phase, 2)
            restart = (next_phase == 1) & ~shrinking
            trials[idx] = torch.where(restart, 0, trials[idx])
            phase[idx] = next_phase
        return best, best_g, alpha, complete
