"""Greedy local search (LocSearchAdv): a score-based black-box attack that changes few pixels.

Works in the box's centred, normalised coordinates u = (x − m)/(hi − lo) ∈ [−½, ½],
m = (lo + hi)/2 (the paper's LB = −½ ≤ 0 ≤ UB = ½). Each round i, from the current image Î
(Î = x at the start) and a set of candidate pixel locations P (10 % of the locations, drawn at
random, at the start):

1. score every (a, b) ∈ P by the model's probability of the true class (untargeted) or minus
   that of the target (targeted) at PERT(Î, a, b) — Î with the probe applied to pixel (a, b),
   all channels;
2. keep the t locations P* with the lowest scores (the most important pixels);
3. Î ← Î with CYC(r · u) applied to every channel of the pixels in P*, where the cyclic map
   CYC(z) = z + 1 if z < −½, z − 1 if z > ½, z otherwise keeps each value in the box;
4. query Î: stop on success (top-1, or with ``k > 1`` once the true class leaves the top k);
5. P ← the union of the (2d + 1) × (2d + 1) squares centred on P*, cut to the image;

for at most R rounds. All the probes of all active samples in a round are one oracle call
(chunked when huge), and the check of step 4 is a second.

Narodytska, Kasiviswanathan. Simple Black-Box Adversarial Perturbations for Deep Networks.
CVPR Workshops 2017. arXiv:1612.06299 (Algorithm 3, LocSearchAdv, with CYCLIC, Algorithm 2).

Defaults are the paper's: r = 1.5, d = 5, t = 5, R = 150, 10 % of the pixels probed in the
first round. Differences from the paper:

* the probe. The paper's PERT sets the pixel to p · sign(u) with a large p (p = 10 in
  normalised units in Foolbox), far outside the valid range; advex queries only points in the
  box, where p · sign(u) leaves a saturated pixel (a black MNIST background) where it is. The
  probe here moves each channel by p · (hi − lo) toward the box end farther from its value,
  clipped to the box: with the default p = 1, to that end — the largest change the box allows,
  which is what a large p measures. The paper's adaptive p (raised while the true class keeps
  a high average probability over the probes, lowered below 0.3) is not used;
* the paper's implementation note (a pixel perturbed in a round is not perturbed again for a
  few rounds) is not applied: this is Algorithm 3 as printed;
* scores are read as logits and turned into probabilities with a softmax;
* L0 budget: ``threat.eps`` counts changed input *elements*; a pixel with C channels is C of
  them, so at most ⌊eps / C⌋ pixels may differ from x (``eps=None``: no limit beyond the
  rounds). Once that many pixels are changed, only changed pixels are probed and perturbed;
  below it, step 2 takes new pixels only while the count allows;
* queries: a round costs |P| probes + 1 check. Where a sample's budget cannot pay for all of
  P, a random subset of |P| − (what is missing) locations is probed; a sample left with fewer
  than 2 queries stops (its last query, if any, unused). The clean pass counts;
* a probe that succeeds is a success too (the tracker records every query), so the returned
  point may be a probe — one pixel away from the current image;
* targeted attacks (not in the paper) maximize the target's probability; ``k > 1`` is
  untargeted only and needs ``early_stop=False`` (with early stop the tracker ends a sample at
  its first top-1 success, before its true class can leave the top k).
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

__all__ = ["LocalSearch", "cyclic"]

#: Most input elements (points × C·H·W) sent to the oracle in one call.


def cyclic(u: Tensor, r: float) -> Tensor:
    """CYCLIC (Algorithm 2) in centred, normalised units: r · u wrapped into [−½, ½]."""
    z = r * u
    return torch.where(z < -0.5, z + 1.0, torch.where(z > 0.5, z - 1.0, z)).clamp(-0.5, 0.5)


def _score(scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """What step 2 minimizes: p_y (untargeted) or −p_t (targeted), p = softmax(scores)."""
    prob = F.softmax(scores.float(), dim=1)
    if target is None:
        return prob.gather(1, y[:, None]).squeeze(1)
    return -prob.gather(1, target[:, None]).squeeze(1)


class LocalSearch(BlackBoxAttack):
    """Greedy local search over pixel locations (LocSearchAdv); score-based, L0 in spirit.

    Args:
        threat: an L0 threat model; ``eps`` (changed elements, optional) caps the changed
            pixels at ⌊eps / C⌋.
        max_queries: oracle queries per sample, the clean pass included (≥ 2).
        rounds: R, the most rounds per sample.
        r: the cyclic perturbation factor, in [0, 2].
        p: the probe's step as a fraction of the box range, toward the farther box end, in
            (0, 1] (1: to that end).
        d: half side of the neighbourhood square (≥ 0).
        t: pixels perturbed per round (≥ 1).
        init_fraction: fraction of the pixel locations probed in the first round, in (0, 1]
            (at least one location).
        k: untargeted success threshold for the search's own stop: the true class out of the
            top k (k > 1 needs ``early_stop=False``).
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    name: ClassVar[str] = "local_search"
    norms: ClassVar[tuple[str, ...]] = ("l0",)
    needs_eps: ClassVar[bool] = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int = 10_000,
        rounds: int = 150,
        r: float = 1.5,
        p: float = 1.0,
        d: int = 5,
        t: int = 5,
        init_fraction: float = 0.1,
        k: int = 1,
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
        self.rounds = checks.positive_int("rounds", rounds)
        self.r = checks.non_negative("r", r)
        if self.r > 2:
            raise ValueError(f"r: expected a number in [0, 2], got {r!r}")
        self.p = checks.fraction("p", p, closed=True)
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"d: expected an integer >= 0, got {d!r}")
        self.d = d
        self.t = checks.positive_int("t", t)
        self.init_fraction = checks.fraction("init_fraction", init_fraction, closed=True)
        self.k = checks.positive_int("k", k)
        if self.k > 1 and threat.targeted:
            raise ValueError("k: top-k misclassification (k > 1) is untargeted only")
        if self.k > 1 and early_stop:
            raise ValueError(
                "k: k > 1 needs early_stop=False (early stop ends a sample at its first "
                "top-1 success)"
            )

    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = super()._checked(clf, x, y, target)
        if x.ndim != 4:
            raise ValueError(
                f"x: local_search needs images of shape (B, C, H, W), got {tuple(x.shape)}"
            )
        if self.threat.eps is not None and self.threat.eps < x.shape[1]:
            raise ValueError(
                f"threat.eps: local_search changes whole pixels ({x.shape[1]} elements each); "
                f"eps={self.threat.eps:g} allows none"
            )
        return x, y, target

    # ----- the pieces -----------------------------------------------------------------------
    def _probe(self, values: Tensor) -> Tensor:
        """Each channel moved by p·(hi − lo) toward the farther box end, clipped."""
        lo, hi = self.threat.bounds
        up = values < (lo + hi) / 2
        step = self.p * (hi - lo)
        return torch.where(up, (values + step).clamp(max=hi), (values - step).clamp(min=lo))

    def _perturb(self, values: Tensor) -> Tensor:
        """CYC(r · u) in the box's centred, normalised units."""
        lo, hi = self.threat.bounds
        mid, span = (lo + hi) / 2, hi - lo
        return (mid + cyclic((values - mid) / span, self.r) * span).clamp(lo, hi)

    def _initial(self, run: Tracker, h: int, w: int) -> Tensor:
        """(n, H, W) bool: round(init_fraction · H · W) random locations per sample (≥ 1)."""
        n_init = min(max(round(self.init_fraction * h * w), 1), h * w)
        keys = run.rand(h * w)
        picked = keys.argsort(dim=1)[:, :n_init]
        mask = torch.zeros_like(keys, dtype=torch.bool).scatter_(1, picked, True)
        return mask.view(-1, h, w)

    def _neighbourhood(self, chosen: Tensor) -> Tensor:
        """(n, H, W) bool: the union of the (2d + 1)-squares centred on ``chosen``."""
        if self.d == 0:
            return chosen
        side = 2 * self.d + 1
        grown = F.max_pool2d(chosen[:, None].float(), side, stride=1, padding=self.d)
        return grown[:, 0] > 0

    # ----- the loop ---------------------------------------------------------------------------
    def _run(self, run: Tracker) -> None:
        run = cast(QueryTracker, run)
        _, c, h, w = run.x.shape
        n_classes = run.clean_logits.shape[1]
        if self.k > 1 and self.k >= n_classes:
            raise ValueError(f"k: expected k < the number of classes ({n_classes}), got {self.k}")
        cap = None if self.threat.eps is None else int(self.threat.eps) // c
        with torch.no_grad():
            image = run.x.clone()
            cand = self._initial(run, h, w)
            for _ in run.steps(self.rounds):
                keys = run.rand(h * w)  # drawn every round: streams stay aligned
                changed = (image != run.x).any(dim=1).flatten(1)  # (n, HW)
                n_changed = changed.sum(dim=1)
                flat = cand.flatten(1)
                if cap is not None:
                    full = (n_changed >= cap)[:, None]
                    flat = flat & (changed | ~full)
                # the budget: the probes and one check
                room = run.budget_left - 1
                stuck = (room < 1) | ~flat.any(dim=1)
                if bool(stuck.any()):
                    run.retire(stuck)
                    image, flat, keys, changed, n_changed = run.shrink(
                        image, flat, keys, changed, n_changed
                    )
                    room = run.budget_left - 1
                    if run.n_active == 0:
                        return
                over = flat.sum(dim=1) > room
                if bool(over.any()):
                    order = torch.where(flat, keys, torch.full_like(keys, 2.0))
                    rank = order.argsort(dim=1).argsort(dim=1)
                    flat = torch.where(over[:, None], flat & (rank < room[:, None]), flat)
                scores = self._probe_scores(run, image, flat)
                image, flat, scores, changed, n_changed = run.shrink(
                    image, flat, scores, changed, n_changed
                )
                if run.n_active == 0:
                    return
                chosen = self._choose(scores, changed, n_changed, cap)
                mask = chosen.view(-1, 1, h, w)
                image = torch.where(mask, self._perturb(image), image)
                out = run.forward(image)
                if self.k > 1:
                    top = out.topk(self.k, dim=1).indices
                    run.retire(~(top == run.y[:, None]).any(dim=1))
                cand = self._neighbourhood(chosen.view(-1, h, w))
                image, cand = run.shrink(image, cand)

    def _probe_scores(self, run: QueryTracker, image: Tensor, flat: Tensor) -> Tensor:
        """Query PERT(Î, a, b) for every candidate (a, b) of every sample in one call;
        returns the scores (n, HW), +inf where no probe was made."""
        n, _, h, w = image.shape
        owner, loc = torch.nonzero(flat, as_tuple=True)
        rows, cols = loc // w, loc % w
        points = image[owner]
        at = torch.arange(owner.numel(), device=owner.device)
        points[at, :, rows, cols] = self._probe(points[at, :, rows, cols])
        out = run.forward(points, owner)
        target = run.labels_target
        value = _score(out, run.y[owner], None if target is None else target[owner])
        scores = torch.full((n, h * w), math.inf, device=image.device)
        scores[owner, loc] = value
        return scores

    def _choose(
        self, scores: Tensor, changed: Tensor, n_changed: Tensor, cap: int | None
    ) -> Tensor:
        """(n, HW) bool: the t lowest scores, new pixels only while the L0 cap allows."""
        order = scores.argsort(dim=1, stable=True)
        finite = scores.gather(1, order).isfinite()
        ok = finite
        if cap is not None:
            new = finite & ~changed.gather(1, order)
            room = (cap - n_changed)[:, None]
            ok = finite & (~new | (new.cumsum(dim=1) <= room))
        take = ok & (ok.cumsum(dim=1) <= self.t)
        return torch.zeros_like(take).scatter_(1, order, take)
