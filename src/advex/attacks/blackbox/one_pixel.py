"""One-pixel attack: differential evolution over a few pixels, from the model's scores only.

A candidate is k pixels, each a vector (row, col, v_1, …, v_C): a position and a value per
channel in the box. Applying it to x sets those pixels of x to those values (positions rounded
to the nearest integer). Untargeted, the search minimizes the probability of the true class,
p_y(x'); targeted, it maximizes that of the target, p_t(x') (p = softmax of the scores).

Differential evolution, DE/rand/1 without crossover: from a population of N candidates, each
generation makes one child per member i,

    c_i = a_{r1} + F · (a_{r2} − a_{r3}),     r1, r2, r3 distinct and ≠ i, drawn afresh,

clipped to the valid ranges (rows in [0, H − 1], columns in [0, W − 1], values in the box),
and the child replaces its parent when its fitness is no worse. The initial population has
positions uniform over the image and values N(m, (127/255)·(hi − lo)) around the box's middle
m, clipped — the paper's U(1, 32) and N(128, 127) for 8-bit images.

Su, Vargas, Sakurai. One Pixel Attack for Fooling Deep Neural Networks. IEEE Transactions on
Evolutionary Computation 23(5), 2019. arXiv:1710.08864

Defaults are the paper's: N = 400, F = 0.5, at most 100 generations after the initial
population, no crossover. Differences from the paper:

* stopping: the paper stops early when the true class's probability drops below 5 %
  (untargeted, CIFAR-10) or the target's exceeds 50 % (targeted, ImageNet); advex stops a
  sample at its first success (the label changes, or is the target), which is reached first;
* every child is scored in one oracle call per generation for all active samples (chunked when
  huge); the whole population is queried, the clean pass counted: the default budget is
  1 + N · (generations + 1) queries per sample. With a smaller ``max_queries`` the last
  generation (or the initial population) is cut to what is left: only the first members get a
  child, and unscored initial members never win a comparison;
* out-of-range mutants are clipped to the range (the paper does not say; SciPy's DE redraws
  them at random);
* L0: ``threat.eps`` counts changed input elements, and a pixel has C of them, so the attack
  needs ``eps`` None or at least k · C (``ValueError`` otherwise); every query changes at most
  k pixels of x, so every point stays in the ball;
* scores are read as logits and turned into probabilities with a softmax.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Tracker
from advex.attacks.blackbox.base import BlackBoxAttack, QueryTracker
from advex.threat import ThreatModel

__all__ = ["OnePixel", "apply_pixels"]

#: Standard deviation of the initial values, as a fraction of the box range (127 of 255).
_INIT_STD = 127 / 255


def apply_pixels(x: Tensor, candidates: Tensor) -> Tensor:
    """x (n, C, H, W) with the pixels of ``candidates`` (n, k, 2 + C) written in.

    Each pixel is (row, col, v_1, …, v_C); positions are rounded and clipped to the image.
    Pixels later in the list overwrite earlier ones at the same position.
    """
    n, _, h, w = x.shape
    out = x.clone()
    at = torch.arange(n, device=x.device)
    rows = candidates[..., 0].round().clamp(0, h - 1).long()
    cols = candidates[..., 1].round().clamp(0, w - 1).long()
    for j in range(candidates.shape[1]):
        out[at, :, rows[:, j], cols[:, j]] = candidates[:, j, 2:].to(out.dtype)
    return out


def _fitness(scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """What DE minimizes: p_y (untargeted) or −p_t (targeted), p = softmax(scores)."""
    prob = F.softmax(scores.float(), dim=1)
    if target is None:
        return prob.gather(1, y[:, None]).squeeze(1)
    return -prob.gather(1, target[:, None]).squeeze(1)


class OnePixel(BlackBoxAttack):
    """One-pixel attack (differential evolution over k pixels); score-based, L0.

    Args:
        threat: an L0 threat model; ``eps`` (changed elements) None or ≥ ``pixels`` · C.
        pixels: k, the pixels each candidate changes (1 in the paper's title; 3 and 5 also
            studied).
        population: N, the candidates per sample (≥ 4: DE/rand/1 needs three others).
        generations: DE iterations after the initial population.
        f: F, the mutation's scale factor, in (0, 2].
        max_queries: oracle queries per sample, the clean pass included (≥ 2); None for the
            whole run, 1 + N · (generations + 1).
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    name: ClassVar[str] = "one_pixel"
    norms: ClassVar[tuple[str, ...]] = ("l0",)
    needs_eps: ClassVar[bool] = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        pixels: int = 1,
        population: int = 400,
        generations: int = 100,
        f: float = 0.5,
        max_queries: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        self.pixels = checks.positive_int("pixels", pixels)
        self.population = checks.positive_int("population", population)
        if self.population < 4:
            raise ValueError(f"population: expected an integer >= 4, got {population!r}")
        if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
            raise ValueError(f"generations: expected an integer >= 0, got {generations!r}")
        self.generations = generations
        self.f = checks.positive("f", f)
        if self.f > 2:
            raise ValueError(f"f: expected a number in (0, 2], got {f!r}")
        if max_queries is None:
            max_queries = 1 + self.population * (self.generations + 1)
        super().__init__(
            threat,
            max_queries=max_queries,
            seed=seed,
            batch_size=batch_size,
            early_stop=early_stop,
        )

    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = super()._checked(clf, x, y, target)
        if x.ndim != 4:
            raise ValueError(
                f"x: one_pixel needs images of shape (B, C, H, W), got {tuple(x.shape)}"
            )
        need = self.pixels * x.shape[1]
        if self.threat.eps is not None and self.threat.eps < need:
            raise ValueError(
                f"threat.eps: {self.pixels} pixel(s) of {x.shape[1]} channel(s) change up to "
                f"{need} elements; eps={self.threat.eps:g} is smaller (lower pixels or raise eps)"
            )
        return x, y, target

    # ----- the pieces -----------------------------------------------------------------------
    def _initial(self, run: Tracker) -> Tensor:
        """(n, N, k, 2 + C): positions uniform over the image, values N(m, σ²) in the box."""
        _, c, h, w = run.x.shape
        lo, hi = self.threat.bounds
        shape = (self.population, self.pixels)
        rows = run.rand(*shape) * h - 0.5  # rounds to 0 … H − 1 uniformly
        cols = run.rand(*shape) * w - 0.5
        values = (lo + hi) / 2 + _INIT_STD * (hi - lo) * run.randn(*shape, c)
        return self._clip(torch.cat([rows[..., None], cols[..., None], values], dim=-1), h, w)

    def _clip(self, cand: Tensor, h: int, w: int) -> Tensor:
        lo, hi = self.threat.bounds
        return torch.cat(
            [
                cand[..., :1].clamp(0, h - 1),
                cand[..., 1:2].clamp(0, w - 1),
                cand[..., 2:].clamp(lo, hi),
            ],
            dim=-1,
        )

    def _donors(self, run: Tracker) -> tuple[Tensor, Tensor, Tensor]:
        """r1, r2, r3 (n, N): distinct indices ≠ i for each member i, as offsets from i."""
        size = self.population
        i = torch.arange(size, device=run.x.device)
        a = 1 + run.randint(size - 1, size)
        b = 1 + run.randint(size - 2, size)
        c = 1 + run.randint(size - 3, size)
        b = b + (b >= a).long()  # uniform on {1, …, N − 1} \ {a}
        small, large = torch.minimum(a, b), torch.maximum(a, b)
        c = c + (c >= small).long()
        c = c + (c >= large).long()  # uniform on {1, …, N − 1} \ {a, b}
        return (i + a) % size, (i + b) % size, (i + c) % size

    def _evaluate(self, run: QueryTracker, cand: Tensor, count: Tensor) -> Tensor:
        """Fitness (n, N) of the first ``count`` (n,) members of each sample's ``cand``, in
        one oracle call; +inf for the others."""
        n, size = cand.shape[:2]
        used = torch.arange(size, device=cand.device)[None, :] < count[:, None]
        owner, member = torch.nonzero(used, as_tuple=True)
        points = apply_pixels(run.x[owner], cand[owner, member])
        out = run.forward(points, owner)
        target = run.labels_target
        value = _fitness(out, run.y[owner], None if target is None else target[owner])
        fit = torch.full((n, size), math.inf, device=cand.device)
        fit[owner, member] = value
        return fit

    # ----- the loop ---------------------------------------------------------------------------
    def _run(self, run: Tracker) -> None:
        run = cast(QueryTracker, run)
        _, _, h, w = run.x.shape
        with torch.no_grad():
            pop = self._initial(run)
            count = run.budget_left.clamp(max=self.population)
            fit = self._evaluate(run, pop, count)
            pop, fit = run.shrink(pop, fit)
            for _ in run.steps(self.generations):
                r1, r2, r3 = self._donors(run)
                at = torch.arange(run.n_active, device=pop.device)[:, None]
                child = pop[at, r1] + self.f * (pop[at, r2] - pop[at, r3])
                child = self._clip(child, h, w)
                count = run.budget_left.clamp(max=self.population)
                child_fit = self._evaluate(run, child, count)
                better = child_fit <= fit
                pop = torch.where(better[..., None, None], child, pop)
                fit = torch.where(better, child_fit, fit)
                pop, fit = run.shrink(pop, fit)
