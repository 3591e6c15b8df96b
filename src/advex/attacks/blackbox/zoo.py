"""ZOO: zeroth-order coordinate descent on the C&W objective, from the model's scores only.

Solves, per sample, the C&W L2 problem with the paper's black-box loss on log-probabilities,

    min_δ  ‖x' − x‖₂² + c · f(x'),    x' = clip(x + U(δ), lo, hi),
    f(x') = max(log p_y(x') − max_{j≠y} log p_j(x'), −κ)         (untargeted),
    f(x') = max(max_{j≠t} log p_j(x') − log p_t(x'), −κ)         (targeted, t the target),

where U bilinearly upsamples the attack-space variable δ to the image (the identity on the
image grid). The oracle's scores are taken to be logits and turned into log-probabilities with
a log-softmax; a model that returns probabilities (detected on the clean pass with
``advex.model.looks_like_probabilities``) is used through log p directly. Both give the same f:
a difference of log-probabilities is the difference of the logits.

Each iteration draws, per sample, ``coordinates`` coordinates i of δ without replacement and
estimates with 2 queries per coordinate, plus one at δ itself,

    ĝ_i = (L(δ + h·e_i) − L(δ − h·e_i)) / 2h,     ĥ_i = (L(δ + h·e_i) − 2L(δ) + L(δ − h·e_i)) / h²,

L the objective above; then it updates only those coordinates:

* ZOO-ADAM (``solver="adam"``): Adam with moments and a step count t_i per coordinate,
  δ_i ← δ_i − η·√(1 − β₂^{t_i})/(1 − β₁^{t_i}) · m_i/(√v_i + 10⁻⁸), β = (0.9, 0.999);
* ZOO-Newton (``solver="newton"``): δ_i ← δ_i − η·ĝ_i/ĥ_i, where a negative ĥ_i (no
  second-order information) is replaced by 1 and ĥ_i is then raised to at least 0.1
  (``newton_step``);

and projects δ_i onto the box on the image grid (lo − x_i ≤ δ_i ≤ hi − x_i, as the paper does
for MNIST and CIFAR). The points of all active samples and all their coordinates go to the
oracle together (``run.forward(points, owner)``, in chunks of whole samples).

Attack-space reduction and hierarchical attack (``resize``, ``resize_at``): δ starts on a small
grid and grows to the next side after ``resize_at[j]`` iterations of a run (δ bilinearly
resized, Adam restarted). ``resize="auto"`` uses sides s/4, s/2, s for images of side s ≤ 64
(7, 14, 28 on MNIST) and the paper's 32, 64, 128 for larger ones. Importance sampling
(``importance``): on every grid after the first, coordinates are drawn with probability
proportional to the largest |δ| of their region (the grid cut into about 8×8 regions, max-pooled
per channel); on the first grid uniformly, as in the paper.

The constant c is found by the C&W binary search (``advex.attacks.search.ConstantSearch``):
``binary_search_steps`` runs per sample, each from δ = 0; c ×10 while no run has succeeded, then
bisection between the largest failing and the smallest succeeding c. A run is a success when one
of its queries had a log-probability margin > κ. The result is the closest adversarial point
queried over all runs (the tracker keeps it), not the last iterate.

Chen, Zhang, Sharma, Yi, Hsieh. ZOO: Zeroth Order Optimization based Black-box Attacks to Deep
Neural Networks without Training Substitute Models. AISec 2017. arXiv:1708.03999

Queries: an iteration costs 1 + 2k queries per sample for k coordinates (257 at the paper's
128). ``max_queries`` (the clean pass included) is honoured exactly: a sample that cannot pay a
full iteration gets the k = ⌊(left − 1)/2⌋ coordinates it can pay for, and is finished when fewer
than 3 queries are left. The default, 10 000 queries (about 40 iterations of 128 coordinates),
is the budget score-based attacks are usually compared at; with the default schedule it breaks
all of the first 20 mnist5k test images of the bundled ``mnist_cnn``, the 10th smallest L2
distance being 1.58 (1.35 at 20 000 queries; white-box C&W L2, 9 × 200 steps: 0.88).

Differences from the paper and its reference code (huanzhang12/ZOO-Attack):

* every sample runs its own binary search, early abort and grid schedule, and all samples share
  the oracle calls (the reference attacks one image at a time);
* the budget decides the schedule. The paper runs up to 3000 iterations per constant on MNIST
  (9 constants from c = 0.01, about 7·10⁶ queries per image) and grows ImageNet grids after
  2000 and 10 000 iterations. Here the defaults are one constant, ``initial_const=10`` (the
  reference's ImageNet setting), and ``steps=None``: the runs share the budget evenly, the last
  one spends what is left, and the first grid gets 40 % of a run's queries, the later grids the
  rest evenly (``resize_at`` overrides this; with ``steps`` the shares are of iterations). The
  paper's MNIST run: ``binary_search_steps=9, initial_const=0.01, steps=3000, resize=None`` and
  a budget of 9·3000·257 + 1 queries;
* on MNIST the paper works on the image grid; ``resize="auto"`` reduces it there too (7×7, then
  14×14, then 28×28), which at 10 000 queries breaks 20 of 20 test images against 6 of 20
  with ``resize=None``;
* the abort-early test (every tenth of a run: end it when its lowest loss has not fallen below
  0.9999× the value at the last test) never ends the last run when ``steps`` is None, so the
  budget is spent;
* importance weights get a floor of 10⁻⁶ of the largest, so a region that never moved is drawn
  only when fewer than ``coordinates`` coordinates have moved (the reference cannot draw then);
* the loss of each query is that of the point the oracle sees: x + U(δ ± h·e_i) clipped to the
  box (on a reduced grid δ is only kept within ±(hi − lo)), with its true distance. With
  ``levels`` every query lies on the value grid, so h is raised to one grid step (a smaller
  difference would be rounded away);
* with ``eps`` given, δ is scaled after each update so that ‖U(δ)‖₂ ≤ ε: clipping only shrinks
  |δ_i|, so every centre point lies in the ball, and a sample stops at its first success there.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Select, Tracker
from advex.attacks.blackbox.base import BlackBoxAttack, QueryTracker
from advex.attacks.search import ConstantSearch
from advex.model import looks_like_probabilities
from advex.norms import quantize, round_to_grid
from advex.oracle import Access
from advex.threat import ThreatModel

__all__ = ["ZOO", "newton_step"]

Solver = Literal["adam", "newton"]
_SOLVERS = ("adam", "newton")
_ABORT_RATIO = 0.9999
_ADAM_EPS = 1e-8
# Floats per oracle call (points are built and sent in chunks of whole samples): on a CPU small
# batches run faster per point (they stay in cache), on an accelerator large ones do.
_CHUNK_ELEMENTS = {"cpu": 1 << 18}
_CHUNK_DEFAULT = 1 << 24
_TINY_PROB = 1e-30
_BETAS = (0.9, 0.999)
_FIRST_SHARE = 0.4  # of a run's queries, spent on the first grid by the automatic schedule
_FLOOR = 1e-6  # importance weight of a region that has not moved (relative to the largest)


def _auto_sides(h: int, w: int) -> list[int]:
    """``resize="auto"``: side/4, side/2, side (at least 4) for images up to 64 pixels a side;
    the paper's 32, 64, 128 (those below the side, and the side up to 128) for larger ones."""
    side = max(h, w)
    if side <= 64:
        return sorted({max(math.ceil(side / d), min(side, 4)) for d in (4, 2, 1)})
    return [s for s in (32, 64, 128) if s < side] + ([side] if side <= 128 else [])


def _grid(side: int, h: int, w: int) -> tuple[int, int]:
    """The (rows, cols) grid of a given side, the image's aspect kept, capped at the image."""
    big = max(h, w)
    return min(max(round(side * h / big), 1), h), min(max(round(side * w / big), 1), w)


def _schedule(
    grids: list[tuple[int, int]], at: list[int] | None, costs: list[int], queries: float
) -> tuple[list[int], int]:
    """Growth iterations and the iterations of a run that may spend ``queries``, an iteration
    on grid j costing ``costs[j]``. ``at`` None: the first grid gets ``_FIRST_SHARE`` of the
    queries, the later ones share the rest evenly."""
    if at is None:
        rest = (1 - _FIRST_SHARE) / max(len(grids) - 1, 1)
        shares = [_FIRST_SHARE if j == 0 else rest for j in range(len(grids))]
        if len(grids) == 1:
            shares = [1.0]
        at, total = [], 0
        for j in range(len(grids) - 1):
            total += max(round(shares[j] * queries / costs[j]), 1)
            at.append(total)
    spent = sum((b - a) * costs[j] for j, (a, b) in enumerate(itertools.pairwise([0, *at])))
    last = max(math.floor((queries - spent) / costs[len(at)]), 0)
    return at, max((at[-1] if at else 0) + last, 1)


def newton_step(grad: Tensor, hess: Tensor, lr: float) -> Tensor:
    """ZOO-Newton's coordinate step η·ĝ/ĥ (to subtract). A negative ĥ carries no second-order
    information and is replaced by 1 (a gradient step); ĥ is then raised to at least 0.1."""
    hess = torch.where(hess < 0, torch.ones_like(hess), hess).clamp_min(0.1)
    return lr * grad / hess


def _upsample(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (n, C, h, w) to ``size`` (identity when the size is already right)."""
    if tuple(t.shape[-2:]) == size:
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def _region_max(delta: Tensor) -> Tensor:
    """|δ| max-pooled over regions of about 1/8 of the grid side, spread back over each region."""
    h, w = delta.shape[-2:]
    k = (max(h // 8, 1), max(w // 8, 1))
    pooled = F.max_pool2d(delta.abs(), k, stride=k, ceil_mode=True)
    return pooled.repeat_interleave(k[0], dim=2).repeat_interleave(k[1], dim=3)[..., :h, :w]


class ZOO(BlackBoxAttack):
    """ZOO (ZOO-ADAM / ZOO-Newton): coordinate-wise finite differences on the C&W objective.

    Args:
        threat: an L2 ``ThreatModel``; ``eps=None`` for the smallest perturbation.
        max_queries: oracle queries per sample, the clean pass included (≥ 2).
        solver: "adam" (ZOO-ADAM, the default) or "newton" (ZOO-Newton).
        coordinates: coordinates estimated and updated per iteration and sample (2 queries each).
        step_size: η, Adam's learning rate or the Newton step's scale.
        h: finite-difference step.
        binary_search_steps: runs per sample, one constant c each.
        steps: iterations per run at most; None: the budget shared evenly among the runs, the
            last one running until the budget is spent.
        initial_const: c₀, every sample's first constant.
        kappa: confidence κ ≥ 0: f is clipped at −κ, and a run counts as a success for the
            search when one of its queries had a log-probability margin > κ.
        abort_early: end a run when its lowest loss has not fallen below 0.9999× its value a
            tenth of the run before (never the last run when ``steps`` is None).
        resize: sides of the attack-space grids, smallest first (the image's aspect kept, capped
            at the image); "auto" (see the module docstring) or None (the image grid).
        resize_at: iterations of a run after which the grid grows to the next side; None: the
            first grid gets 40 % of a run's queries (of its iterations with ``steps``), the
            later ones share the rest evenly.
        importance: draw coordinates by importance on every grid after the first.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    name: ClassVar[str] = "zoo"
    norms: ClassVar[tuple[str, ...]] = ("l2",)
    access: ClassVar[Access] = "scores"
    needs_eps: ClassVar[bool] = False
    select: ClassVar[Select] = "distance"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int = 10_000,
        solver: Solver = "adam",
        coordinates: int = 128,
        step_size: float = 0.01,
        h: float = 1e-4,
        binary_search_steps: int = 1,
        steps: int | None = None,
        initial_const: float = 10.0,
        kappa: float = 0.0,
        abort_early: bool = True,
        resize: tuple[int, ...] | Literal["auto"] | None = "auto",
        resize_at: tuple[int, ...] | None = None,
        importance: bool = True,
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
        if solver not in _SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(_SOLVERS)}, got {solver!r}")
        self.solver = solver
        self.coordinates = checks.positive_int("coordinates", coordinates)
        self.step_size = checks.positive("step_size", step_size)
        self.h = checks.positive("h", h)
        self.binary_search_steps = checks.positive_int("binary_search_steps", binary_search_steps)
        self.steps = None if steps is None else checks.positive_int("steps", steps)
        self.initial_const = checks.positive("initial_const", initial_const)
        self.kappa = checks.non_negative("kappa", kappa)
        self.abort_early = bool(abort_early)
        self._resize = _checked_sides("resize", resize, allow_auto=True)
        self._resize_at = cast(
            "tuple[int, ...] | None", _checked_sides("resize_at", resize_at, allow_auto=False)
        )
        self.resize = _describe(self._resize)
        self.resize_at = _describe(self._resize_at)
        self.importance = bool(importance)

    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = super()._checked(clf, x, y, target)
        if x.ndim != 4:
            raise ValueError(f"x: zoo needs images of shape (B, C, H, W), got {tuple(x.shape)}")
        return x, y, target

    # ----- the schedule -------------------------------------------------------------------------
    def _plan(self, shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], list[int], int]:
        """For images of ``shape`` (C, H, W): the grids of a run, the iterations after which each
        but the last grows, and the iterations of a run (with ``steps=None``: those a run's
        share of the budget pays for)."""
        ch, height, width = shape
        if self._resize is None:
            grids = [(height, width)]
        else:
            sides = _auto_sides(height, width) if self._resize == "auto" else self._resize
            grids = [_grid(side, height, width) for side in sides]
        at = None if self._resize_at is None else list(self._resize_at)
        if at is not None:
            grids = grids[: len(at) + 1]
            at = at[: len(grids) - 1]
        if self.steps is not None:  # a schedule in iterations
            costs, queries = [1] * len(grids), float(self.steps)
        else:  # in queries: an iteration costs 1 + 2k
            costs = [2 * min(self.coordinates, ch * gh * gw) + 1 for gh, gw in grids]
            queries = (self.max_queries - 1) / self.binary_search_steps
        at, iters = _schedule(grids, at, costs, queries)
        return grids, at, self.steps if self.steps is not None else iters

    # ----- the loop -----------------------------------------------------------------------------
    def _run(self, tracker: Tracker) -> None:
        run = cast(QueryTracker, tracker)
        n, ch, height, width = run.x.shape
        dev, dtype = run.x.device, run.x.dtype
        grids, at_list, share = self._plan((ch, height, width))
        every = math.ceil(share / 10)
        state = _State(n, ch, grids, self.initial_const, dev, dtype)
        search = ConstantSearch(n, self.initial_const, device=dev, dtype=torch.float64)
        at = torch.tensor([*at_list, -1], device=dev)  # growth iteration per grid (−1: none)
        last = self.binary_search_steps - 1
        fd = self.h if self.threat.levels is None else max(self.h, self.threat.step or 0.0)
        probs = looks_like_probabilities(run.clean_logits)

        for _ in run.steps(self.max_queries):
            # ----- plan: the coordinates each sample can pay for -------------------------------
            run.retire(run.budget_left < 3)
            state.keep(run)
            if run.n_active == 0:
                return
            room = torch.tensor([ch * g[0] * g[1] for g in grids], device=dev)[state.stage]
            k_each = ((run.budget_left - 1) // 2).clamp(max=self.coordinates)
            k_each = torch.minimum(k_each, room)
            k = int(k_each.max())
            idx = self._draw(run, state, grids, k)
            valid = torch.arange(k, device=dev)[None, :] < k_each[:, None]

            # ----- query δ and δ ± h·e_i; estimate the derivatives ----------------------------
            loss, found = self._losses(run, state, grids, idx, valid, fd, probs)
            state.found |= found
            center, plus, minus = loss[:, 0], loss[:, 1::2], loss[:, 2::2]
            grad = (plus - minus) / (2 * fd)
            if self.solver == "adam":
                new = state.adam(idx, valid, grad.to(dtype), self.step_size)
            else:
                hess = (plus - 2 * center[:, None] + minus) / (fd * fd)
                step = newton_step(grad, hess, self.step_size).to(dtype)
                new = state.delta.flatten(1).gather(1, idx) - step
            state.write(idx, valid, self._box(run, state, grids, idx, new))
            if self.threat.eps is not None:
                self._into_ball(state, grids, (height, width))

            # ----- early abort, growth of the grid, end of a run -------------------------------
            state.lowest = torch.minimum(state.lowest, center)
            state.it += 1
            end = torch.zeros_like(state.found)
            if self.steps is not None:
                end = state.it >= self.steps
            elif last > 0:
                end = (state.it >= share) & (state.run_index < last)
            if self.abort_early:
                check = state.it % every == 0
                stalled = check & (state.lowest > _ABORT_RATIO * state.previous)
                if self.steps is None:
                    stalled &= state.run_index < last
                state.previous = torch.where(check, state.lowest, state.previous)
                end |= stalled
            grow = state.it == at[state.stage]
            if bool(grow.any()):
                state.grow(grow, grids)
            if bool(end.any()):
                search.update(state.slot[end], state.found[end])
                state.restart(end, search.c[state.slot])
                run.retire(state.run_index > last)
            state.keep(run)

    # ----- pieces of one iteration ------------------------------------------------------------
    def _draw(
        self, run: QueryTracker, state: _State, grids: list[tuple[int, int]], k: int
    ) -> Tensor:
        """k distinct coordinates per sample on its grid (flat indices into the padded δ):
        uniform on the first grid, by importance (|δ| max-pooled per region) on later ones
        (Efraimidis–Spirakis keys log(u)/w: the top k is a draw without replacement ∝ w)."""
        delta = state.delta
        _, ch, rows_max, cols_max = delta.shape
        u = run.rand(ch * rows_max * cols_max).clamp_min(1e-12)
        keys = torch.full_like(u, -math.inf)
        for s, (gh, gw) in enumerate(grids):
            rows = state.stage == s
            if not bool(rows.any()):
                continue
            inside = torch.zeros(ch, rows_max, cols_max, dtype=torch.bool, device=delta.device)
            inside[:, :gh, :gw] = True
            key = u[rows]
            if self.importance and s > 0:
                weight = _region_max(delta[rows][:, :, :gh, :gw])
                top = weight.flatten(1).amax(dim=1).clamp_min(1e-30)
                full = torch.zeros_like(delta[rows])
                full[:, :, :gh, :gw] = weight / top[:, None, None, None] + _FLOOR
                key = key.log() / full.flatten(1)
            keys[rows] = key.masked_fill(~inside.flatten()[None, :], -math.inf)
        return keys.topk(k, dim=1).indices

    def _losses(
        self,
        run: QueryTracker,
        state: _State,
        grids: list[tuple[int, int]],
        idx: Tensor,
        valid: Tensor,
        fd: float,
        probs: bool,
    ) -> tuple[Tensor, Tensor]:
        """The objective at δ and at δ ± h·e_i, (n, 1 + 2k) float64: column 0 at δ, then + and −
        for each coordinate (NaN where not paid for); and whether some query was adversarial
        with margin > κ, (n,)."""
        n = state.delta.shape[0]
        size = (run.x.shape[2], run.x.shape[3])
        k = idx.shape[1]
        dev = state.delta.device
        targeted = self.threat.targeted
        label = run.target if targeted else run.y
        if label is None:  # pragma: no cover - the base class checks targets
            raise ValueError("target: a targeted threat model needs target labels")
        want = torch.ones(n, 2 * k + 1, dtype=torch.bool, device=dev)
        want[:, 1::2] = valid
        want[:, 2::2] = valid
        out = torch.full((n, 2 * k + 1), math.nan, device=dev, dtype=torch.float64)
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        elements = _CHUNK_ELEMENTS.get(dev.type, _CHUNK_DEFAULT)
        chunk = max(1, elements // (run.x[0].numel() * (2 * k + 1)))
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            x = run.x[lo:hi]
            base, basis = self._directions(state, lo, hi, grids, idx[lo:hi], size)
            step = fd * basis
            pm = torch.stack([base[:, None] + step, base[:, None] - step], dim=2).flatten(1, 2)
            points = torch.cat([base[:, None], pm], dim=1) + x[:, None]
            mask = want[lo:hi]
            local = torch.arange(hi - lo, device=dev)[:, None].expand_as(mask)[mask]
            query = self._valid(points[mask], x[local])
            scores = run.forward(query, local + lo)
            f = _log_margin(scores, label[lo:hi][local], targeted, probs)
            dist = (query - x[local]).double().flatten(1).square().sum(dim=1)
            out[lo:hi][mask] = dist + state.c[lo:hi][local] * f.clamp_min(-self.kappa)
            hit = torch.zeros(hi - lo, dtype=torch.long, device=dev)
            hit.index_add_(0, local, (-f > self.kappa).long())
            found[lo:hi] = hit > 0
        return out, found

    def _directions(
        self,
        state: _State,
        lo: int,
        hi: int,
        grids: list[tuple[int, int]],
        idx: Tensor,
        size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """U(δ) (r, C, H, W) and U(e_i) of the chosen coordinates (r, k, C, H, W), rows lo:hi."""
        delta, stage = state.delta[lo:hi], state.stage[lo:hi]
        r, ch, rows_max, cols_max = delta.shape
        k = idx.shape[1]
        base = delta.new_zeros(r, ch, *size)
        basis = delta.new_zeros(r, k, ch, *size)
        for s, (gh, gw) in enumerate(grids):
            rows = stage == s
            if not bool(rows.any()):
                continue
            base[rows] = _upsample(delta[rows][:, :, :gh, :gw], size)
            ones = delta.new_zeros(int(rows.sum()) * k, ch * rows_max * cols_max)
            ones.scatter_(1, idx[rows].reshape(-1, 1), 1.0)
            ones = ones.view(-1, ch, rows_max, cols_max)[:, :, :gh, :gw]
            basis[rows] = _upsample(ones, size).view(-1, k, ch, *size)
        return base, basis

    def _valid(self, points: Tensor, x: Tensor) -> Tensor:
        """Points as the tracker queries them: clipped to the box, then onto the value grid."""
        lo, hi = self.threat.bounds
        clipped = points.clamp(lo, hi)
        if self.threat.levels is None:
            return clipped
        if self.threat.eps is None:
            return round_to_grid(clipped, self.threat)
        return quantize(clipped, x, self.threat)

    def _box(
        self,
        run: QueryTracker,
        state: _State,
        grids: list[tuple[int, int]],
        idx: Tensor,
        new: Tensor,
    ) -> Tensor:
        """Updated coordinates clipped to lo − x ≤ δ ≤ hi − x on the image grid (the paper's
        projection), to |δ| ≤ hi − lo on a reduced one."""
        lo, hi = self.threat.bounds
        out = new.clamp(lo - hi, hi - lo)
        image = (run.x.shape[2], run.x.shape[3])
        if tuple(state.delta.shape[2:]) != image or grids[-1] != image:
            return out
        xv = run.x.flatten(1).gather(1, idx)
        boxed = torch.minimum(torch.maximum(new, lo - xv), hi - xv)
        return torch.where((state.stage == len(grids) - 1)[:, None], boxed, out)

    def _into_ball(
        self, state: _State, grids: list[tuple[int, int]], size: tuple[int, int]
    ) -> None:
        """Scale δ so that ‖U(δ)‖₂ ≤ ε: U is linear and clipping only shrinks |δ_i|, so every
        centre point is then inside the ball."""
        eps = self.threat.budget()
        norms = torch.zeros(state.delta.shape[0], device=state.delta.device, dtype=torch.float64)
        for s, (gh, gw) in enumerate(grids):
            rows = state.stage == s
            if bool(rows.any()):
                up = _upsample(state.delta[rows][:, :, :gh, :gw], size)
                norms[rows] = up.flatten(1).double().norm(dim=1)
        scale = (eps * (1 - 1e-6) / norms.clamp_min(1e-30)).clamp(max=1.0)
        state.delta = state.delta * scale.to(state.delta.dtype)[:, None, None, None]


def _log_margin(scores: Tensor, label: Tensor, targeted: bool, probs: bool) -> Tensor:
    """The paper's f before the clip at −κ, in float64: log p_y − max_{j≠y} log p_j
    (untargeted) or max_{j≠t} log p_j − log p_t (targeted)."""
    s = scores.double()
    logp = s.clamp_min(_TINY_PROB).log() if probs else torch.log_softmax(s, dim=1)
    own = logp.gather(1, label[:, None]).squeeze(1)
    other = logp.scatter(1, label[:, None], -math.inf).amax(dim=1)
    return other - own if targeted else own - other


def _checked_sides(
    name: str, value: object, *, allow_auto: bool
) -> tuple[int, ...] | Literal["auto"] | None:
    """``resize``/``resize_at``: None, "auto" (resize only) or an increasing tuple of ints ≥ 1."""
    if value is None or (allow_auto and value == "auto"):
        return value
    what = "'auto', None" if allow_auto else "None"
    if not isinstance(value, tuple | list) or len(value) == 0:
        raise ValueError(f"{name}: expected {what} or a non-empty tuple of integers, got {value!r}")
    items = tuple(checks.positive_int(name, s) for s in value)
    if any(b <= a for a, b in itertools.pairwise(items)):
        raise ValueError(f"{name}: expected increasing integers, got {value!r}")
    return items


def _describe(value: tuple[int, ...] | str | None) -> str | None:
    return value if value is None or isinstance(value, str) else ",".join(map(str, value))


class _State:
    """Per-sample state of the runs, row-aligned with the tracker's active rows: δ on a padded
    grid (the largest), coordinate Adam moments and step counts, the grid index, the iteration
    and run index, the constant c and the early-abort record."""

    def __init__(
        self,
        n: int,
        ch: int,
        grids: list[tuple[int, int]],
        c: float,
        dev: torch.device,
        dtype: torch.dtype,
    ) -> None:
        rows_max, cols_max = max(g[0] for g in grids), max(g[1] for g in grids)
        self.delta = torch.zeros(n, ch, rows_max, cols_max, device=dev, dtype=dtype)
        size = ch * rows_max * cols_max
        self.m = torch.zeros(n, size, device=dev, dtype=dtype)
        self.v = torch.zeros_like(self.m)
        self.t = torch.ones_like(self.m)  # the paper's per-coordinate epoch, from 1
        self.stage = torch.zeros(n, dtype=torch.long, device=dev)
        self.it = torch.zeros_like(self.stage)
        self.run_index = torch.zeros_like(self.stage)
        self.slot = torch.arange(n, device=dev)  # row in the ConstantSearch
        self.c = torch.full((n,), c, device=dev, dtype=torch.float64)
        self.found = torch.zeros(n, dtype=torch.bool, device=dev)
        self.previous = torch.full((n,), math.inf, device=dev, dtype=torch.float64)
        self.lowest = torch.full_like(self.previous, math.inf)

    _FIELDS = (
        "delta",
        "m",
        "v",
        "t",
        "stage",
        "it",
        "run_index",
        "slot",
        "c",
        "found",
        "previous",
        "lowest",
    )

    def keep(self, run: QueryTracker) -> None:
        """Follow ``run.shrink``: drop the rows of finished samples."""
        kept = run.shrink(*(getattr(self, f) for f in self._FIELDS))
        for f, value in zip(self._FIELDS, kept, strict=True):
            setattr(self, f, value)

    def adam(self, idx: Tensor, valid: Tensor, grad: Tensor, lr: float) -> Tensor:
        """ZOO-ADAM on the chosen coordinates; returns their new values (moments updated where
        ``valid``)."""
        b1, b2 = _BETAS
        m = b1 * self.m.gather(1, idx) + (1 - b1) * grad
        v = b2 * self.v.gather(1, idx) + (1 - b2) * grad * grad
        t = self.t.gather(1, idx)
        corr = (1 - b2**t).sqrt() / (1 - b1**t)
        self.m = self.m.scatter(1, idx, torch.where(valid, m, self.m.gather(1, idx)))
        self.v = self.v.scatter(1, idx, torch.where(valid, v, self.v.gather(1, idx)))
        self.t = self.t.scatter(1, idx, torch.where(valid, t + 1, t))
        return self.delta.flatten(1).gather(1, idx) - lr * corr * m / (v.sqrt() + _ADAM_EPS)

    def write(self, idx: Tensor, valid: Tensor, new: Tensor) -> None:
        flat = self.delta.flatten(1)
        new = torch.where(valid & torch.isfinite(new), new, flat.gather(1, idx))
        self.delta = flat.scatter(1, idx, new).view_as(self.delta)

    def grow(self, rows: Tensor, grids: list[tuple[int, int]]) -> None:
        """Move ``rows`` to their next grid: δ bilinearly resized, Adam restarted."""
        delta = self.delta.clone()
        for s in range(len(grids) - 1):
            sel = rows & (self.stage == s)
            if not bool(sel.any()):
                continue
            (gh, gw), (nh, nw) = grids[s], grids[s + 1]
            block = torch.zeros_like(delta[sel])
            block[:, :, :nh, :nw] = _upsample(delta[sel][:, :, :gh, :gw], (nh, nw))
            delta[sel] = block
        self.delta = delta
        self._reset_adam(rows)
        self.stage = self.stage + rows.long()

    def restart(self, rows: Tensor, c: Tensor) -> None:
        """Start the next run of ``rows`` from δ = 0 on the first grid with constant ``c``."""
        self.c = torch.where(rows, c, self.c)
        self.delta = self.delta.masked_fill(rows[:, None, None, None], 0.0)
        self._reset_adam(rows)
        self.stage = self.stage.masked_fill(rows, 0)
        self.it = self.it.masked_fill(rows, 0)
        self.found = self.found & ~rows
        self.previous = self.previous.masked_fill(rows, math.inf)
        self.lowest = self.lowest.masked_fill(rows, math.inf)
        self.run_index = self.run_index + rows.long()

    def _reset_adam(self, rows: Tensor) -> None:
        self.m = self.m.masked_fill(rows[:, None], 0.0)
        self.v = self.v.masked_fill(rows[:, None], 0.0)
        self.t = self.t.masked_fill(rows[:, None], 1.0)
