"""HopSkipJump: a decision-based (top-1 label only) minimum-norm attack, L2 and L∞.

With φ(x') = +1 if x' is adversarial (untargeted: label ≠ y; targeted: label = t) and −1
otherwise, it seeks min ‖x' − x‖_p subject to φ(x') = +1 by iterating on the decision boundary.
From a boundary point x_{t−1} at distance d_{t−1} = ‖x_{t−1} − x‖_p, iteration t = 1, 2, ...:

1. gradient-direction estimate with B_t = min(B_0·√t, B_max) unit-L2 random vectors u_b
   (Gaussian for L2, uniform on [−1, 1]^d for L∞, both normalized):
       v = (1/B_t) Σ_b (φ(x_{t−1} + δ_t u_b) − φ̄) u_b,     φ̄ = the mean of the decisions
   (the baseline; when all decisions agree, v = φ̄ · mean(u_b)), with δ_1 = 0.1·(hi − lo) and
   δ_t = √d·θ·d_{t−1} (L2) or d·θ·d_{t−1} (L∞); the update direction is v/‖v‖₂ (L2) or
   sign(v) (L∞);
2. step size by geometric progression: ξ = d_{t−1}/√t, halved until x_{t−1} + ξ·v is
   adversarial ("grid_search": ξ ∈ d_{t−1}·logspace(−4, 0, 20) at once, every adversarial one
   searched in step 3, the closest kept);
3. binary search between x and x̃ = x_{t−1} + ξ·v back to the boundary, on the segment
   (1 − α)·x + α·x̃, α ∈ [0, 1], to tolerance θ (L2), or on clip(x̃, x − α, x + α),
   α ∈ [0, ‖x̃ − x‖∞], to tolerance min(θ·‖x̃ − x‖∞, θ) (L∞); x_t is the adversarial end.

θ = γ/d^{3/2} (L2) or γ/d² (L∞), d the input dimension. The start is a random point of the
box the model gets wrong (targeted: labels t), moved to the boundary by the binary search.

Chen, Jordan, Wainwright. HopSkipJumpAttack: A Query-Efficient Decision-Based Attack. IEEE
Symposium on Security and Privacy 2020. arXiv:1904.02144

The samples of a batch run in lockstep: one oracle call per round of a search holds the query
of every sample still searching, and one call (chunked when large) holds the B_t queries of
every sample's gradient estimate. Every query counts against the sample's ``max_queries``, the
clean pass included, and every query is recorded (the tracker keeps the closest adversarial
point seen, so a sample stopped by its budget keeps its best). Differences from the paper and
its reference code (Jianbo Chen's ``hsja.py``):

* a query budget (default 5000) instead of an iteration count (the reference runs 40
  iterations, about 17 000 queries on MNIST). Before each iteration a sample plans it: it keeps
  the queries of one binary search and of one step-size query (20 for the grid search), and
  estimates the gradient with min(B_t, what is left) vectors; a sample that cannot afford one
  vector stops. Searches cut short by the budget leave the last adversarial point they reached;
* random draws: the gradient vectors come from the tracker's batch-aligned stream (B_t drawn
  for every sample of the batch, in chunks), the starting noise from a second aligned stream,
  so a sample's draws do not depend on how many tries or queries the others needed;
* the start: the paper draws uniform noise on the box until it is adversarial (the reference
  gives up after 10 000 draws). Here the first try is that noise; later tries draw uniform
  noise on [lo, lo + s·(hi − lo)] with s ~ U(0, 1) per try, darker images that some models
  label differently (uniform noise on MNIST is one class for the bundled CNN, so a sample of
  that class would never start). After ``init_tries`` tries without success the sample is
  left unbroken. The targeted attack has no target image: it searches the same noise for the
  target label and often fails on models that never give that label to noise;
* the start goes to the boundary with one binary search of the attack's norm and tolerance
  (the reference first blends toward x to tolerance 0.001, then runs that search too);
* the halving of the geometric progression stops after ⌈log₂(1/θ)⌉ halvings (the reference
  loops until success); a sample whose step fails keeps x_{t−1} for the next iteration;
* δ_t uses the distance of the boundary point x_{t−1} (the paper's d_{t−1}); the reference
  code uses that of x̃ before its binary search;
* with ``levels`` the oracle sees the rounded points, while the search keeps continuous ones
  (the gradient estimate degrades once δ_t is below the grid step).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import ClassVar, cast

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Select, Tracker
from advex.attacks.blackbox.base import BlackBoxAttack, QueryTracker, first_per_owner
from advex.norms import lp_norm
from advex.oracle import Access
from advex.threat import ThreatModel

__all__ = ["HopSkipJump"]

#: Most elements one draw of gradient-estimate vectors may hold (for the whole batch).
_CHUNK = 1 << 24
#: Step sizes of the grid search: this many, from 1 down to 1e-4 times the distance.
_GRID_SIZE = 20
_STEP_SEARCHES = ("geometric_progression", "grid_search")
_TINY = 1e-12


@contextlib.contextmanager
def _stream(run: Tracker, generator: torch.Generator) -> Iterator[None]:
    """Draw ``run.rand`` & co. from ``generator`` (batch-aligned) inside the block."""
    main, run.generator = run.generator, generator
    try:
        yield
    finally:
        run.generator = main


def _column(t: Tensor, like: Tensor) -> Tensor:
    """(n,) → (n, 1, ..., 1) broadcastable against ``like`` (n, ...)."""
    return t.view((-1,) + (1,) * (like.ndim - 1))


def _affordable(run: QueryTracker, owner: Tensor, want: Tensor) -> Tensor:
    """The points of ``want`` each owner can pay for now, the first ones first."""
    idx = torch.nonzero(want).squeeze(1)
    if idx.numel() == 0:
        return want
    o = owner[idx]
    order = torch.argsort(o, stable=True)
    counts = torch.bincount(o, minlength=run.n_active)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(o)
    rank[order] = torch.arange(o.numel(), device=o.device) - first[o[order]]
    out = torch.zeros_like(want)
    out[idx[rank < run.budget_left[o]]] = True
    return out


class HopSkipJump(BlackBoxAttack):
    """HopSkipJump (HSJA): boundary walk with estimated gradient directions; labels only.

    Args:
        threat: an L2 or L∞ threat model; ``eps=None`` for the smallest perturbation within the
            budget, or an ``eps`` to stop each sample at its first success inside the ball.
        max_queries: oracle queries per sample, the clean pass included (≥ 2).
        init_num_evals: B_0, the gradient-estimate size of the first iteration.
        max_num_evals: B_max, the largest gradient-estimate size (≥ ``init_num_evals``).
        gamma: γ in the binary-search tolerance θ = γ/d^{3/2} (L2) or γ/d² (L∞).
        stepsize_search: "geometric_progression" (the paper's default) or "grid_search".
        init_tries: random starting points tried per sample before giving up.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    name: ClassVar[str] = "hsja"
    norms: ClassVar[tuple[str, ...]] = ("l2", "linf")
    access: ClassVar[Access] = "label"
    needs_eps: ClassVar[bool] = False
    select: ClassVar[Select] = "distance"
    boundary_margin: ClassVar[float] = 1e-4  # binary searches end within ~1e-5 of the boundary

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int = 5000,
        init_num_evals: int = 100,
        max_num_evals: int = 10_000,
        gamma: float = 1.0,
        stepsize_search: str = "geometric_progression",
        init_tries: int = 100,
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
        self.init_num_evals = checks.positive_int("init_num_evals", init_num_evals)
        self.max_num_evals = checks.positive_int("max_num_evals", max_num_evals)
        if max_num_evals < init_num_evals:
            raise ValueError(
                f"max_num_evals: expected an integer >= init_num_evals={init_num_evals}, "
                f"got {max_num_evals!r}"
            )
        self.gamma = checks.positive("gamma", gamma)
        if stepsize_search not in _STEP_SEARCHES:
            raise ValueError(
                f"stepsize_search: expected one of {', '.join(_STEP_SEARCHES)}, "
                f"got {stepsize_search!r}"
            )
        self.stepsize_search = stepsize_search
        self.init_tries = checks.positive_int("init_tries", init_tries)

    # ----- the loop ------------------------------------------------------------------------
    def _run(self, tracker: Tracker) -> None:
        run = cast(QueryTracker, tracker)
        d = run.x[0].numel()
        lo, hi = self.threat.bounds
        with torch.no_grad():
            start, found = self._start(run)
            run.retire(~found)
            (start,) = run.shrink(start)
            if run.n_active == 0:
                return
            x_b = self._bisect(run, start, torch.arange(run.n_active, device=start.device))
            dist = lp_norm(x_b - run.x, self.threat.norm)
            delta = torch.full_like(dist, 0.1 * (hi - lo))
            x_b, dist, delta, evals = self._plan(run, x_b, dist, delta, 1)
            for i in run.steps(self.max_queries):
                t = i + 1
                v = self._direction(run, x_b, delta, evals, self._evals(t))
                x_b, dist = self._step(run, x_b, v, dist, t)
                delta = self.gamma * dist / d
                x_b, dist, delta, evals = self._plan(run, x_b, dist, delta, t + 1)

    def _evals(self, t: int) -> int:
        """B_t = min(B_0·√t, B_max)."""
        return min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)

    def _theta(self, run: QueryTracker) -> float:
        """The binary-search tolerance θ = γ/d^{3/2} (L2) or γ/d² (L∞)."""
        d = run.x[0].numel()
        return self.gamma / d ** (1.5 if self.threat.norm == "l2" else 2.0)

    def _search_steps(self, run: QueryTracker, reach: Tensor) -> Tensor:
        """Binary-search steps from α ∈ [0, reach] down to the tolerance (long, per point)."""
        theta = self._theta(run)
        if self.threat.norm == "l2":
            ratio = torch.full_like(reach, 1.0 / theta)
        else:  # tolerance min(θ·reach, θ)
            ratio = reach.clamp_min(1.0) / theta
        return torch.ceil(torch.log2(ratio)).clamp_min(0).long()

    def _plan(
        self, run: QueryTracker, x_b: Tensor, dist: Tensor, delta: Tensor, t: int
    ) -> tuple[Tensor, ...]:
        """Gradient-estimate size of iteration ``t`` per sample: B_t, less what the step-size
        and binary searches need; samples that cannot afford one vector stop."""
        reserve = self._search_steps(run, dist) + (1 if self._geometric else _GRID_SIZE)
        evals = torch.clamp(run.budget_left - reserve, max=self._evals(t))
        run.retire(evals < 1)
        return run.shrink(x_b, dist, delta, evals)

    @property
    def _geometric(self) -> bool:
        return self.stepsize_search == "geometric_progression"

    def _grid(self, like: Tensor) -> Tensor:
        """The grid search's step sizes as fractions of the distance, largest first."""
        return torch.logspace(0.0, -4.0, _GRID_SIZE, device=like.device, dtype=like.dtype)

    # ----- the start -----------------------------------------------------------------------
    def _start(self, run: QueryTracker) -> tuple[Tensor, Tensor]:
        """A random adversarial point per sample (uniform noise, then darker noise) and
        whether one was found within ``init_tries`` tries."""
        lo, hi = self.threat.bounds
        x = run.x
        start = x.clone()
        found = torch.zeros(run.n_active, dtype=torch.bool, device=x.device)
        # own stream: how many tries the others need does not shift a sample's later draws
        seed = torch.randint(0, 2**62, (1,), generator=run.generator, device=x.device)
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))
        with _stream(run, generator):
            for k in range(self.init_tries):
                want = ~found & run.alive
                if not bool(want.any()):
                    break
                u = run.rand(*x.shape[1:])
                scale = run.rand(*(1,) * (x.ndim - 1)) if k else 1.0
                noise = lo + (hi - lo) * scale * u
                idx = torch.nonzero(want).squeeze(1)
                hit = run.success_of(run.forward(noise[idx], idx), idx)
                start[idx[hit]] = noise[idx[hit]]
                found[idx[hit]] = True
        return start, found

    # ----- the three steps of an iteration ---------------------------------------------------
    def _direction(
        self, run: QueryTracker, x_b: Tensor, delta: Tensor, evals: Tensor, nominal: int
    ) -> Tensor:
        """Step 1: the update direction at the boundary points ``x_b`` from ``evals`` (≤
        ``nominal``) decisions per sample at x_b + δ·u (chunked; ``nominal`` vectors are drawn
        for every sample so its random stream does not depend on the others' budgets)."""
        lo, hi = self.threat.bounds
        n, shape = x_b.shape[0], x_b.shape[1:]
        size = run.best.shape[0]
        chunk = max(1, min(nominal, _CHUNK // max(size * x_b[0].numel(), 1)))
        alive = run.alive
        rows = torch.arange(n, device=x_b.device)
        sum_phi_u = torch.zeros_like(x_b)
        sum_u = torch.zeros_like(x_b)
        sum_phi = torch.zeros_like(delta)
        count = torch.zeros_like(delta)
        for j in range(0, nominal, chunk):
            m = min(chunk, nominal - j)
            l2 = self.threat.norm == "l2"
            u = run.randn(m, *shape) if l2 else run.rand(m, *shape) * 2 - 1
            u = u / u.flatten(2).norm(dim=2).clamp_min(_TINY).view(n, m, *(1,) * len(shape))
            use = (j + torch.arange(m, device=x_b.device))[None, :] < evals[:, None]
            use &= alive[:, None]
            if not bool(use.any()):
                continue
            owner = rows[:, None].expand(n, m)[use]
            step = _column(delta[owner], u[use])
            points = (x_b[owner] + step * u[use]).clamp(lo, hi)
            phi = run.success_of(run.forward(points, owner), owner).to(x_b.dtype) * 2 - 1
            u_eff = (points - x_b[owner]) / step
            sum_phi_u.index_add_(0, owner, _column(phi, u_eff) * u_eff)
            sum_u.index_add_(0, owner, u_eff)
            sum_phi.index_add_(0, owner, phi)
            count.index_add_(0, owner, torch.ones_like(phi))
        mean = sum_phi / count.clamp_min(1)
        same = _column(mean.abs() == 1, x_b)
        v = torch.where(same, _column(mean, x_b) * sum_u, sum_phi_u - _column(mean, x_b) * sum_u)
        if self.threat.norm == "linf":
            return v.sign()
        return v / _column(lp_norm(v, "l2").clamp_min(_TINY), v)

    def _step(
        self, run: QueryTracker, x_b: Tensor, v: Tensor, dist: Tensor, t: int
    ) -> tuple[Tensor, Tensor]:
        """Steps 2 and 3: move along ``v`` by the step-size search, then back to the boundary.
        Returns the new boundary points and their distances (unchanged where no step won)."""
        if self._geometric:
            moved, won = self._geometric_step(run, x_b, v, dist, t)
            owner = torch.nonzero(won).squeeze(1)
            if owner.numel():
                x_b = x_b.clone()
                x_b[owner] = self._bisect(run, moved[owner], owner)
        else:
            x_b = self._grid_step(run, x_b, v, dist)
        return x_b, lp_norm(x_b - run.x, self.threat.norm)

    def _geometric_step(
        self, run: QueryTracker, x_b: Tensor, v: Tensor, dist: Tensor, t: int
    ) -> tuple[Tensor, Tensor]:
        """ξ = dist/√t, halved until x_b + ξ·v (in the box) is adversarial; the points found
        and where one was."""
        lo, hi = self.threat.bounds
        xi = dist / math.sqrt(t)
        moved = x_b.clone()
        won = torch.zeros_like(dist, dtype=torch.bool)
        halvings = int(self._search_steps(run, torch.ones(1)).item())
        for _ in range(halvings + 1):
            want = ~won & run.alive
            if not bool(want.any()):
                break
            idx = torch.nonzero(want).squeeze(1)
            points = (x_b[idx] + _column(xi[idx], v) * v[idx]).clamp(lo, hi)
            hit = run.success_of(run.forward(points, idx), idx)
            moved[idx[hit]] = points[hit]
            won[idx[hit]] = True
            xi[idx[~hit]] /= 2
        return moved, won

    def _grid_step(self, run: QueryTracker, x_b: Tensor, v: Tensor, dist: Tensor) -> Tensor:
        """ξ ∈ dist·logspace(−4, 0, 20) at once; every adversarial x_b + ξ·v goes to the
        boundary; the closest boundary point replaces x_b."""
        lo, hi = self.threat.bounds
        grid = self._grid(dist)
        n, k = x_b.shape[0], grid.numel()
        owner = torch.arange(n, device=x_b.device).repeat_interleave(k)
        xi = (dist[:, None] * grid[None, :]).flatten()
        points = (x_b[owner] + _column(xi, x_b) * v[owner]).clamp(lo, hi)
        ask = _affordable(run, owner, run.alive[owner])
        hit = torch.zeros_like(ask)
        hit[ask] = run.success_of(run.forward(points[ask], owner[ask]), owner[ask])
        if not bool(hit.any()):
            return x_b
        found = self._bisect(run, points[hit], owner[hit])
        dist_found = lp_norm(found - run.x[owner[hit]], self.threat.norm)
        best, _ = first_per_owner(torch.argsort(dist_found, stable=True), owner[hit])
        rows = owner[hit][best]
        better = dist_found[best] < dist[rows]
        x_b = x_b.clone()
        x_b[rows[better]] = found[best][better]
        return x_b

    def _bisect(self, run: QueryTracker, start: Tensor, owner: Tensor) -> Tensor:
        """Step 3: binary search from x (not adversarial) to each adversarial ``start`` (m, ...)
        of sample ``owner`` (m,), in lockstep; returns the adversarial ends."""
        x = run.x[owner]
        if self.threat.norm == "l2":
            high = torch.ones(len(owner), device=x.device, dtype=x.dtype)
        else:
            high = lp_norm(start - x, "linf")
        steps = self._search_steps(run, high)
        low = torch.zeros_like(high)
        for k in range(int(steps.max()) if steps.numel() else 0):
            ask = _affordable(run, owner, (k < steps) & run.alive[owner])
            if not bool(ask.any()):
                break
            mid = (low[ask] + high[ask]) / 2
            points = self._toward(x[ask], start[ask], mid)
            hit = run.success_of(run.forward(points, owner[ask]), owner[ask])
            high[ask] = torch.where(hit, mid, high[ask])
            low[ask] = torch.where(hit, low[ask], mid)
        return self._toward(x, start, high)

    def _toward(self, x: Tensor, start: Tensor, alpha: Tensor) -> Tensor:
        """The search path from x (α = 0) to ``start``: (1 − α)·x + α·start (L2), or
        clip(start, x − α, x + α) (L∞)."""
        a = _column(alpha, x)
        if self.threat.norm == "l2":
            return x + a * (start - x)
        return x + torch.maximum(torch.minimum(start - x, a), -a)
