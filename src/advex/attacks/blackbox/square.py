"""Square attack: score-based black-box random search for L∞ and L2 perturbations.

Solves max_{δ ∈ D} L(f(x + δ), y), D = {‖δ‖_p ≤ ε} ∩ {lo ≤ x + δ ≤ hi}, with forward passes
only. At iteration i a candidate δ' differs from the current δ on a random s×s window (all
channels, a new position per sample), and δ ← δ' only where L(δ') > L(δ) strictly. The window
shrinks with the fraction p_i = ``p_schedule(i, max_queries, p_init)`` of pixels it covers:
p_init halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations of a 10 000
query budget, rescaled to ``max_queries`` (``rescale=True``, the reference's default) or not
(AutoAttack's choice for its 5000-query Square: the windows shrink half as fast).

* L∞, s = round(√(p·h·w)) within [1, min(h, w) − 1]. Init: vertical stripes, δ = ±ε with one
  sign per column and channel. Candidate: δ on the window set to ±ε, one sign per channel,
  drawn again while the window would not change.
* L2, s = max(round(√(p·h·w)), 3) made odd, at most min(h, w). Init: tiles of side
  max(min(h, w) // 5, 1) holding ±η_s (sign per tile and channel), scaled to ‖δ‖₂ = ε, with η_s
  the "meta pseudo-Gaussian" bump: on the top half Σ_{k ≥ d} 1/(k + 1)², d the Chebyshev
  distance to the half's centre, minus the same on the bottom half, unit norm, transposed at
  random. Candidate (Algorithm 3 of the paper), with windows W1, W2 and per channel:
      δ'_{W1} = (ρη_s + δ_{W1}/‖δ_{W1}‖₂) · a/‖ρη_s + δ_{W1}/‖δ_{W1}‖₂‖₂,   ρ = ±1,
      a² = ‖δ_{W1 ∪ W2}‖₂² + (ε² − ‖δ‖₂²)₊ / c,      δ'_{W2 \\ W1} = 0,
  so the mass of W2 moves into W1 and ‖δ'‖₂ = ε before the box.
Every point is projected onto ball ∩ box (``advex.norms.project``: the clip the reference uses).

Loss: ``margin`` (default) maximizes max_{j≠y} z_j − z_y (untargeted) or z_t − max_{j≠t} z_j
(targeted), i.e. it minimizes the paper's margin loss z_y − max_{j≠y} z_j; for targeted attacks
the paper uses the cross-entropy toward the target, available as ``loss="ce"``.

Andriushchenko, Croce, Flammarion, Hein. Square Attack: a query-efficient black-box adversarial
attack via random search. ECCV 2020. arXiv:1912.00049

Differences from the paper and its reference code (max-andr/square-attack):

* queries: the budget counts the tracker's clean pass. Restart 0 spends the clean pass, the
  init and ``max_queries − 2`` iterations; each later restart (only on unbroken samples) the
  init and ``max_queries − 1`` iterations. An unbroken sample spends exactly
  ``restarts · max_queries`` forward passes;
* every sample draws its own window positions (the reference L2 code shares them across the
  batch), and the L2 side is capped at min(h, w) so small images work. The positions keep the
  reference's range, top-left corners in [0, h − s) × [0, w − s), so no window covers the
  last row or column. On the 284 samples that reach Square in ``standard`` at L2 ε = 2 on
  ``mnist_cnn_pgd``, all h − s + 1 positions broke 98.8 and the reference's range 102.8 (mean
  of 5 seeds, standard deviation about 5; torchattacks' Square 102.4;
  ``benchmarks/square_leftover.py``): within the noise, but the same direction in both runs;
* the L∞ sign redraw stops after 16 tries (the reference loops until the window changes);
* the L2 init tiles the image with ⌊h/s⌋ × ⌊w/s⌋ centred tiles, each transposed at random per
  sample (the reference lays 5 tiles from an offset and may run past the edge);
* the default targeted loss is the margin, not the cross-entropy;
* with ``levels`` the loss is that of the rounded point the tracker evaluates, while the search
  keeps the continuous δ;
* the result is the tracker's best point (success first, then the largest margin): with the
  margin loss, the last accepted one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from advex.attacks import checks, losses
from advex.attacks.base import Tracker
from advex.attacks.blackbox.base import BlackBoxAttack
from advex.norms import box_limits, lp_norm, project, shrink_into
from advex.threat import ThreatModel

__all__ = ["Square", "p_schedule"]

#: Iterations (of a 10 000-query budget) after which p halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_REDRAWS = 16
_TINY = 1e-12


def p_schedule(i: int, max_queries: int, p_init: float, rescale: bool = True) -> float:
    """Fraction p of pixels the window covers at iteration ``i`` (piecewise constant); the
    thresholds are those of a 10 000-query budget, scaled to ``max_queries`` if ``rescale``."""
    it = int(i / max_queries * 10_000) if rescale else i
    return p_init / 2 ** sum(it > t for t in _HALVINGS)


def _side_linf(p: float, h: int, w: int) -> int:
    """L∞ window side: round(√(p·h·w)), at least 1 and at most min(h, w) − 1."""
    return min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))


def _side_l2(p: float, h: int, w: int) -> int:
    """L2 window side: round(√(p·h·w)), at least 3, odd, at most min(h, w)."""
    s = max(round(math.sqrt(p * h * w)), 3)
    return min(s + 1 - s % 2, min(h, w))


def _bump(rows: int, cols: int, like: Tensor) -> Tensor:
    """Pseudo-Gaussian bump (rows, cols): Σ_{k ≥ d} 1/(k + 1)², d the Chebyshev distance to
    (rows // 2, cols // 2); unit L2 norm."""
    opts: dict[str, Any] = {"device": like.device, "dtype": like.dtype}
    k = max(rows // 2, cols // 2) + 1
    tail = (1 / torch.arange(1, k + 1, **opts).square()).flip(0).cumsum(0).flip(0)
    i = (torch.arange(rows, device=like.device) - rows // 2).abs()
    j = (torch.arange(cols, device=like.device) - cols // 2).abs()
    out = tail[torch.maximum(i[:, None], j[None, :])]
    return out / out.norm().clamp_min(_TINY)


def meta_pseudo_gaussian(s: int, like: Tensor) -> Tensor:
    """The paper's η_s (s, s): a bump on the top half minus one on the bottom, unit norm."""
    out = torch.cat([_bump(s // 2, s, like), -_bump(s - s // 2, s, like)])
    return out / out.norm().clamp_min(_TINY)


@functools.lru_cache(maxsize=64)
def _eta(s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``meta_pseudo_gaussian(s)`` computed once per side, dtype and device (never modified)."""
    return meta_pseudo_gaussian(s, torch.empty(0, dtype=dtype, device=device))


def _window(
    b: int, s: int, h: int, w: int, run: Tracker, *, all_positions: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """A random s×s window per sample: mask (B, 1, H, W) as 0/1 in x's dtype (float masks: on
    the CPU, bool tensors and ``where`` cost several times a multiply) and each row's / column's
    index inside the window, (B, H) and (B, W) (outside: < 0 or ≥ s).

    The top-left corner is uniform in [0, h − s) × [0, w − s), the reference's range (a window
    never covers the last row or column), or at 0 where the window spans the whole side;
    ``all_positions``: in [0, h − s] × [0, w − s] (for comparisons, see
    ``benchmarks/square_leftover.py``)."""
    dev = run.x.device
    extra = 1 if all_positions else 0
    top = run.randint(max(h - s + extra, 1), 1)
    left = run.randint(max(w - s + extra, 1), 1)
    rows = torch.arange(h, device=dev) - top
    cols = torch.arange(w, device=dev) - left
    inside_r = ((rows >= 0) & (rows < s)).to(run.x.dtype)
    inside_c = ((cols >= 0) & (cols < s)).to(run.x.dtype)
    return inside_r[:, None, :, None] * inside_c[:, None, None, :], rows, cols


def _signs(shape: tuple[int, ...], run: Tracker) -> Tensor:
    """Random ±1 of ``shape`` in the dtype of x."""
    bits = run.randint(2, *shape[1:])
    return (bits * 2 - 1).to(run.x.dtype)


def _norm_hw(t: Tensor) -> Tensor:
    """Per-sample, per-channel L2 norm over the pixels, (B, C, 1, 1)."""
    return t.square().sum(dim=(2, 3), keepdim=True).sqrt()


def _l2_update(delta: Tensor, in1: Tensor, in2: Tensor, bump: Tensor, eps: float) -> Tensor:
    """Algorithm 3, lines 4–9: per channel, window W1 (mask ``in1``) gets the direction
    ``bump`` + δ_{W1}/‖δ_{W1}‖₂ with the mass of W1 ∪ W2 plus a 1/c share of the unused budget;
    W2 \\ W1 (mask ``in2``) is zeroed. Masks are 0/1 (bool or float); ``bump`` is 0 outside W1.
    If ‖δ‖₂ ≤ ε, the result has ‖δ'‖₂ = ε."""
    m1, m2 = in1.to(delta.dtype), in2.to(delta.dtype)
    union = torch.maximum(m1, m2)
    unused = (eps**2 - lp_norm(delta, "l2").square()).clamp_min(0)[:, None, None, None]
    avail = (_norm_hw(delta * union).square() + unused / delta.shape[1]).sqrt()
    old = delta * m1
    update = bump + old / (_norm_hw(old) + 1e-10)  # 0 outside W1, like bump and old
    update = update / _norm_hw(update).clamp_min(_TINY) * avail
    return delta * (1 - union) + update


class Square(BlackBoxAttack):
    """Square attack (random search on square windows); score-based, no gradients.

    Args:
        threat: an L∞ or L2 threat model with ``eps``.
        max_queries: oracle queries per sample and restart, the clean pass included (≥ 2).
        p_init: initial fraction of pixels a window covers, in (0, 1].
        restarts: runs from a fresh init, each only on samples still unbroken.
        rescale: scale the p schedule to ``max_queries`` (else the 10 000-query thresholds
            apply as they are, as in AutoAttack's ensemble).
        loss: what the search maximizes: "margin" (default), "ce" (the paper's targeted
            loss), "dlr", or a callable ``loss(logits, y, target)``.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    name: ClassVar[str] = "square"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str = "margin",
        rescale: bool = True,
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
        self.p_init = checks.fraction("p_init", p_init, closed=True)
        self.restarts = checks.positive_int("restarts", restarts)
        self.rescale = checks.flag("rescale", rescale)
        self._loss = losses.get(loss)
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")

    def _budget(self) -> int:
        return self.max_queries * self.restarts

    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = super()._checked(clf, x, y, target)
        if x.ndim != 4:
            raise ValueError(f"x: square needs images of shape (B, C, H, W), got {tuple(x.shape)}")
        return x, y, target

    def _run(self, run: Tracker) -> None:
        candidate = self._linf_candidate if self.threat.norm == "linf" else self._l2_candidate
        with torch.no_grad():
            for r in run.restarts(self.restarts):
                delta = self._init(run)
                value = self._loss(run.forward(run.x + delta), run.y, run.labels_target)
                delta, value = run.shrink(delta, value)
                for i in run.steps(self.max_queries - (2 if r == 0 else 1)):
                    p = p_schedule(i, self.max_queries, self.p_init, self.rescale)
                    new = candidate(run, delta, p)
                    new_value = self._loss(run.forward(run.x + new), run.y, run.labels_target)
                    better = new_value > value
                    delta = torch.where(better[:, None, None, None], new, delta)
                    value = torch.where(better, new_value, value)
                    delta, value = run.shrink(delta, value)

    def _init(self, run: Tracker) -> Tensor:
        """The paper's initial point: vertical stripes (L∞) or tiled bumps (L2)."""
        b, c, h, w = run.x.shape
        eps = self.threat.budget()
        if self.threat.norm == "linf":
            delta = eps * _signs((b, c, 1, w), run).expand(b, c, h, w)
            return project(delta, run.x, self.threat)
        s = max(min(h, w) // 5, 1)
        n_h, n_w = h // s, w // s
        eta = meta_pseudo_gaussian(s, run.x)
        flip = run.rand(1, n_h, n_w, 1, 1)
        tiles = torch.where(flip < 0.5, eta.T, eta) * _signs((b, c, n_h, n_w, 1, 1), run)
        tiles = tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, c, n_h * s, n_w * s)
        top, left = (h - n_h * s) // 2, (w - n_w * s) // 2
        delta = torch.zeros_like(run.x)
        delta[:, :, top : top + n_h * s, left : left + n_w * s] = tiles
        delta = delta * eps / lp_norm(delta, "l2").clamp_min(_TINY)[:, None, None, None]
        return project(delta, run.x, self.threat)

    def _linf_candidate(self, run: Tracker, delta: Tensor, p: float) -> Tensor:
        """δ with one random s×s window set to ±ε (a sign per channel), in ball ∩ box.

        The sign patterns of ``_REDRAWS`` tries are drawn at once (a fixed number of draws per
        step keeps each sample's random stream independent of the others, see ``Tracker.rand``);
        the first pattern that changes the window is used. Whether a pattern changes it is
        decided per channel: channel c stays the same under sign σ iff every window pixel
        already holds clip(σε) (the box-clipped value).
        """
        b, c, h, w = delta.shape
        eps = self.threat.budget()
        lo, hi = self.threat.bounds
        mask = _window(b, _side_linf(p, h, w), h, w, run)[0] > 0
        signs = _signs((b, _REDRAWS, c), run)
        low = (lo - run.x).clamp(min=-eps)  # the box-clipped values of −ε and +ε
        high = (hi - run.x).clamp(max=eps)
        outside = ~mask

        def unchanged(value: Tensor) -> Tensor:  # (B, C): the window already holds ``value``
            return ((delta - value).abs().le(1e-7) | outside).flatten(2).all(dim=2)

        same = torch.where(signs > 0, unchanged(high)[:, None], unchanged(low)[:, None])
        changes = ~same.all(dim=2)  # (B, R): pattern k changes the window
        pick = torch.where(changes.any(dim=1), changes.float().argmax(dim=1), 0)
        sign = signs[torch.arange(b, device=delta.device), pick][:, :, None, None]
        return torch.where(mask, torch.where(sign > 0, high, low), delta)

    def _l2_candidate(self, run: Tracker, delta: Tensor, p: float) -> Tensor:
        """Algorithm 3: move the mass of window W2 into W1 plus a new bump; ‖δ'‖₂ = ε."""
        b, c, h, w = delta.shape
        eps = self.threat.budget()
        s = _side_l2(p, h, w)
        in1, rows, cols = _window(b, s, h, w, run)
        in2, _, _ = _window(b, s, h, w, run)
        eta = _eta(s, delta.dtype, delta.device)
        flip = run.rand(1, 1) < 0.5
        etas = torch.where(flip, eta.T, eta)  # (B, s, s)
        r = rows.clamp(0, s - 1)[:, :, None]
        q = cols.clamp(0, s - 1)[:, None, :]
        bump = etas[torch.arange(b, device=delta.device)[:, None, None], r, q]
        bump = bump[:, None] * in1 * _signs((b, c, 1, 1), run)
        new = _l2_update(delta, in1, in2, bump, eps)
        # ‖δ'‖₂ = ε, so the clip to the box lies in the ball up to rounding: then it is the
        # projection onto ball ∩ box (the nearest box point, and feasible), with a row over ε
        # by rounding scaled back; otherwise the general projection
        lo, hi = box_limits(run.x, self.threat.bounds)
        clipped = torch.clamp(new, lo, hi)
        if not bool((lp_norm(clipped, "l2") <= eps * (1 + 1e-6)).all()):
            return project(new, run.x, self.threat)
        return shrink_into(clipped, eps, "l2")
