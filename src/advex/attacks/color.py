"""ReColorAdv: a functional adversarial attack that recolours every pixel with one function.

A functional attack changes an image x (B, C, H, W) through one function f of a pixel's
colour, applied to every pixel of the image alike: x'_p = f(x_p). ReColorAdv makes f a
piecewise-multilinear function on a regular grid of K points per axis over the colour cube
(trilinear for RGB, C = 3; linear for greyscale intensities, C = 1), stored as perturbations
of the identity at the grid points g:

    f(c) = c + Σ_g w_g(c) · δ_g,      w_g(c) the multilinear interpolation weights,

so f is exactly the identity when δ = 0, exact at the grid points (f(g) = g + δ_g) and linear
in between. One function per image. The attack solves, per sample,

    max_δ  min(m(x'), κ) − λ · R_smooth(δ)   s.t.  ‖δ_g‖_∞ ≤ ε_color,  g + δ_g ∈ [0, 1]^C,

    m = max_{j≠y} Z_j − Z_y  (untargeted),   m = Z_t − max_{j≠t} Z_j  (targeted),
    R_smooth(δ) = Σ_g Σ_{h ∈ N(g)} ‖δ_g − δ_h‖₂,

Z the logits (the C&W margin, ``advex.attacks.losses.margin``), N(g) the 2C axis neighbours
of g (each adjacent pair counted from both ends, as the double sum reads), from δ = 0 with
Adam on δ, each step followed by the exact Euclidean projection onto the constraints. Colours
are measured in units of the input range: c = (x − lo)/(hi − lo) ∈ [0, 1]^C for bounds
(lo, hi), and ε_color is a fraction of that range.

Monotonicity (``monotone``): the paper constrains f by closeness to the identity and by
smoothness only; it asks no ordering of colours. For greyscale images the default here is a
non-decreasing intensity function (``monotone=True``, our choice, not the paper's): then
x_p ≤ x_q implies x'_p ≤ x'_q (up to float rounding, ~10⁻⁷), so the image's order of
intensities is kept and the attack cannot invert or redraw strokes.
The projection is exact: the grid values v = g + δ of a line are projected onto
{v non-decreasing} ∩ {lo_k ≤ v_k ≤ hi_k} (monotone bounds) by the min–max formula of bounded
isotonic regression, v*_k = max_{i≤k} min_{j≥k} clip(mean(v_i..v_j), lo_j, hi_i)
(``isotonic_box``). For colour images ``monotone=True`` makes each output channel
non-decreasing in its own input channel of the working space (each grid line along axis c,
component c); off by default, as in the paper.

The distance reported (``AttackResult.distance``, ``metric == "color"``) is the function's
deviation from the identity, max_c ‖f(c) − c‖_∞ = max_g ‖δ_g‖_∞ (multilinear interpolation
takes its extremes at grid points), in units of the input range: ≤ ε_color for every result.
In "rgb" every pixel then moves by at most (hi − lo)·ε_color per channel (plus the rounding
onto the value grid); in "yuv" the bound holds for the YUV coordinates, and an RGB channel may
move up to ~1.4× as far.
The tracker keeps, among the successful points, the one of smallest deviation. The function
behind each returned point is ``ColorResult.functions`` (δ on the grid); ``ColorResult.
color_function()`` re-applies it: x_adv = round(clip(f(x))) (rounded onto the value grid
when the threat has ``levels``). The smoothness R_smooth of each function is
``ColorFunction.smoothness()``.

Laidlaw, Feizi. Functional Adversarial Attacks. NeurIPS 2019. arXiv:1906.00001

Settings. The official code (github.com/cassidylaidlaw/ReColorAdv, ``recoloradv/utils.py``,
``get_attack_from_name``) runs ReColorAdv in CIELUV with a 16×32×32 grid, ε = 0.06 per
channel, λ = 0.05 on R_smooth (``norms.smoothness``: both directions of every adjacent pair),
the C&W loss with κ = ∞, and 100 Adam steps of learning rate 10⁻³ from the identity.
Defaults here: 100 steps, λ = 0.05, κ = ∞, from the identity; for colour images (C ≥ 2) a
12-point grid per axis and ε_color = 0.03, the paper's RGB setting as the advex issue quotes it
(the paper's own text was not at hand to check these two numbers); for greyscale (C = 1, not
in the paper) a 32-point grid and ε_color = 0.3 (see the strength curve in
tests/attacks/test_color.py: intensity functions are a weak threat on MNIST, a global
brightness/contrast change in effect). The learning rate is
ε_color/30 by default (the official ratio is ε/60 over 100 steps; /30 leaves room to reach
the box and then move along it). λ weighs R_smooth against logit margins, so it depends on
the model's logit scale: on a random CNN whose logits differ by ~0.1, λ = 0.05 outweighs the
margin and the attack stalls (tests use λ = 0 or 10⁻³ there).

Differences from the paper and its reference code:

* colour spaces: "rgb" (the default) and "yuv" (normalised so that the RGB cube maps into
  [0, 1]³; f acts there and its change is mapped back linearly, x' = x + (hi − lo)·A⁻¹Δ, so
  δ = 0 is still exactly the identity). CIELUV is not implemented. Colours a YUV function
  sends outside the RGB gamut are clipped to the box, as every result is.
* the ε-box is enforced by an exact projection after each Adam step (the reference clamps the
  parameters to [0, 1], to the colour gamut, then to the ε-box).
* a sample stops at its first success (``early_stop``); with ``early_stop=False`` it runs all
  steps and the success of smallest deviation is returned.
* no additive δ on top (the paper's ReColorAdv + delta) and no combination with stAdv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Attack, Tracker
from advex.attacks.losses import margin
from advex.attacks.optim import Adam
from advex.result import AttackResult, succeeded
from advex.threat import ThreatModel

__all__ = [
    "SPACES",
    "ColorFunction",
    "ColorResult",
    "ReColorAdv",
    "isotonic_box",
    "project_function",
    "smoothness",
]

SPACES: tuple[str, ...] = ("rgb", "yuv")

#: Defaults for colour (C ≥ 2, the paper's RGB setting) and greyscale (C = 1) images.
_COLOR_GRID, _COLOR_EPS = 12, 0.03
_GREY_GRID, _GREY_EPS = 32, 0.3
#: Grid points per sample at most (K^C values per channel).
_MAX_GRID_POINTS = 1 << 20
_SQRT_TINY = 1e-10


# ----- the colour space -------------------------------------------------------------------------
def _yuv_matrix() -> tuple[Tensor, Tensor]:
    """(A, b) with w = A·c + b the YUV coordinates of RGB c ∈ [0, 1]³, scaled into [0, 1]³."""
    wr, wg, wb = 0.299, 0.587, 0.114
    y = torch.tensor([wr, wg, wb], dtype=torch.float64)
    u = 0.492 * (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - y)
    v = 0.877 * (torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) - y)
    # U, V are odd in the colour: their range over the cube is ±(sum of positive coefficients)
    u_range = float(u.clamp(min=0).sum())
    v_range = float(v.clamp(min=0).sum())
    a = torch.stack([y, u / (2 * u_range), v / (2 * v_range)])
    b = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    return a, b


def _to_space(c: Tensor, space: str) -> Tensor:
    """Colours c (B, C, N) in [0, 1] → coordinates of ``space`` in [0, 1]."""
    if space == "rgb":
        return c
    a, b = _yuv_matrix()
    w = torch.einsum("ij,bjn->bin", a.to(c), c) + b.to(c)[None, :, None]
    return w.clamp(0.0, 1.0)


def _from_space(change: Tensor, space: str) -> Tensor:
    """A change of coordinates (B, C, N) of ``space`` → the change of colour it makes."""
    if space == "rgb":
        return change
    a, _ = _yuv_matrix()
    return torch.einsum("ij,bjn->bin", torch.linalg.inv(a).to(change), change)


# ----- the function on the grid -----------------------------------------------------------------
class _Lookup:
    """Multilinear interpolation weights of fixed points u (B, C, N) ∈ [0, 1] on a K-grid.

    ``self(delta)`` with δ (B, C, K, …, K) is Σ_g w_g(u)·δ_g (B, C, N): the 2^C corners of the
    cell around each point, weights Π_c (t_c or 1 − t_c).
    """

    def __init__(self, u: Tensor, grid: int) -> None:
        c = u.shape[1]
        s = u.clamp(0.0, 1.0) * (grid - 1)
        cell = s.floor().clamp(0, grid - 2)
        t = s - cell
        cell = cell.long()
        strides = [grid ** (c - 1 - a) for a in range(c)]
        base = sum(cell[:, a] * strides[a] for a in range(c))
        index, weight = [], []
        for corner in range(1 << c):
            offset = 0
            w = torch.ones_like(t[:, 0])
            for a in range(c):
                if corner >> (c - 1 - a) & 1:
                    offset += strides[a]
                    w = w * t[:, a]
                else:
                    w = w * (1 - t[:, a])
            index.append(base + offset)
            weight.append(w)
        self.index = torch.stack(index, dim=1)  # (B, 2^C, N)
        self.weight = torch.stack(weight, dim=1)  # (B, 2^C, N)

    def keep(self, mask: Tensor) -> None:
        self.index, self.weight = self.index[mask], self.weight[mask]

    def __call__(self, delta: Tensor) -> Tensor:
        b, c = delta.shape[:2]
        n = self.index.shape[2]
        flat = delta.reshape(b, c, -1)
        out = delta.new_zeros(b, c, n)
        for corner in range(self.index.shape[1]):
            idx = self.index[:, corner, None, :].expand(b, c, n)
            out = out + self.weight[:, corner, None, :] * flat.gather(2, idx)
        return out


def _grid_values(grid: int, like: Tensor) -> Tensor:
    """The K grid coordinates k/(K − 1), k = 0 … K − 1, in the dtype and device of ``like``."""
    return (torch.arange(grid, dtype=torch.float64) / (grid - 1)).to(like)


def smoothness(delta: Tensor) -> Tensor:
    """R_smooth(δ) = Σ_g Σ_{h∈N(g)} ‖δ_g − δ_h‖₂ per sample, δ (B, C, K, …, K).

    N(g): the axis neighbours of g on the grid; every adjacent pair counts twice (from each
    end), as in the paper's double sum and the reference code. Zero for constant shifts."""
    c = delta.shape[1]
    total = delta.new_zeros(delta.shape[0])
    for axis in range(c):
        squares = delta.diff(dim=2 + axis).square().sum(dim=1)
        # √(s + τ) − √τ: 0 at s = 0 with a zero (not NaN) gradient there; τ is below float
        # resolution for any s that matters
        norms = (squares + _SQRT_TINY**2).sqrt() - _SQRT_TINY
        total = total + norms.flatten(1).sum(dim=1)
    return 2 * total


def isotonic_box(v: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Euclidean projection of rows v (N, K) onto {v non-decreasing, lo ≤ v ≤ hi}.

    ``lo`` and ``hi`` (K,) must be non-decreasing with lo ≤ hi. Exact, by the min–max formula
    v*_k = max_{i≤k} min_{j≥k} clip(mean(v_i … v_j), lo_j, hi_i): the pooled blocks of the
    pool-adjacent-violators algorithm for the separable losses (v_k − w)² + 1[lo_k ≤ w ≤ hi_k].
    The result is non-decreasing and inside the bounds exactly (no rounding can break it: each
    v*_k is a max/min over nested sets of the same numbers). O(K²) per row, vectorized.
    """
    n, k = v.shape
    prefix = torch.cat([v.new_zeros(n, 1), v.cumsum(dim=1)], dim=1)
    i = torch.arange(k, device=v.device)
    length = (i[None, :] - i[:, None] + 1).clamp(min=1).to(v)  # [i, j] = j − i + 1
    mean = (prefix[:, None, 1:] - prefix[:, :-1, None]) / length  # (N, i, j)
    block = torch.minimum(torch.maximum(mean, lo[None, None, :]), hi[None, :, None])
    upper = i[None, :] >= i[:, None]  # j ≥ i
    block = block.masked_fill(~upper, math.inf)
    # suffix minimum over j ≥ k, then maximum over i ≤ k
    suffix = block.flip(2).cummin(dim=2).values.flip(2)  # [i, k] = min_{j≥k} block[i, j]
    suffix = suffix.masked_fill(~upper, -math.inf)  # keep i ≤ k
    return suffix.amax(dim=1)


def project_function(delta: Tensor, eps: float, *, monotone: bool = False) -> Tensor:
    """The exact projection of grid perturbations δ (B, C, K, …, K) onto the feasible set.

    Feasible: |δ_g| ≤ ε and g + δ_g ∈ [0, 1] for every grid point and channel; with
    ``monotone`` also g_c + δ_{g,c} non-decreasing along grid axis c for every channel c (for
    C = 1: a non-decreasing intensity function). The constraints on different channels and
    different grid lines are independent, so the projection splits into box clamps and, for
    the grid lines that violate the order, ``isotonic_box``.
    """
    c, grid = delta.shape[1], delta.shape[2]
    g = _grid_values(grid, delta)
    out = delta.clone()
    for axis in range(c):
        line = delta[:, axis].movedim(axis + 1, -1)  # (B, ..., K): lines along axis
        shape = line.shape
        rows = line.reshape(-1, grid)
        clamped = torch.maximum(torch.minimum(rows, (1 - g).clamp(max=eps)), (-g).clamp(min=-eps))
        if monotone:
            values = g + rows
            bad = (values.diff(dim=1) < 0).any(dim=1)
            if bool(bad.any()):
                lo = (g - eps).clamp(min=0.0)
                hi = (g + eps).clamp(max=1.0)
                clamped[bad] = isotonic_box(values[bad], lo, hi) - g
        out[:, axis] = clamped.reshape(shape).movedim(-1, axis + 1)
    return out


@dataclass(frozen=True)
class ColorFunction:
    """A batch of colour functions f_i(c) = c + Σ_g w_g(c)·δ_{i,g}, one per image.

    Attributes:
        delta: (B, C, K, …, K) the perturbation of the identity at the grid points, in units
            of the input range; ``delta[i, c, k_1, …, k_C]`` is channel c of f_i − id at the
            grid point (k_1, …, k_C)/(K − 1) of the working space.
        space: the working colour space, "rgb" or "yuv" (see the module docstring).
        bounds: (lo, hi) the input range; colours are (x − lo)/(hi − lo).
    """

    delta: Tensor
    space: str = "rgb"
    bounds: tuple[float, float] = (0.0, 1.0)

    @property
    def grid(self) -> int:
        return int(self.delta.shape[2])

    def change(self, x: Tensor) -> Tensor:
        """f(x) − x, x (B, C, ...) or (B, D), before clipping to the box (differentiable in
        ``delta``)."""
        images = _as_images(x)
        lookup = _lookup(images, self.grid, self.space, self.bounds)
        return _change(images, self.delta, lookup, self).reshape(x.shape)

    def __call__(self, x: Tensor) -> Tensor:
        """f(x) clipped to the box: x (B, C, ...) with the batch of ``delta``."""
        lo, hi = self.bounds
        return (x + self.change(x)).clamp(lo, hi)

    def deviation(self) -> Tensor:
        """(B,) max_c ‖f(c) − c‖_∞ = max_g ‖δ_g‖_∞: the distance ReColorAdv reports."""
        return self.delta.abs().flatten(1).amax(dim=1)

    def smoothness(self) -> Tensor:
        """(B,) R_smooth(δ), see ``smoothness``."""
        return smoothness(self.delta)

    def is_monotone(self, tol: float = 0.0) -> Tensor:
        """(B,) bool: every channel's grid values non-decreasing along its own axis."""
        c, grid = self.delta.shape[1], self.grid
        g = _grid_values(grid, self.delta)
        ok = torch.ones(self.delta.shape[0], dtype=torch.bool, device=self.delta.device)
        for axis in range(c):
            line = self.delta[:, axis].movedim(axis + 1, -1) + g
            ok &= (line.diff(dim=-1) >= -tol).flatten(1).all(dim=1)
        return ok


def _as_images(x: Tensor) -> Tensor:
    """x (B, C, ...) as it is; (B, D) vectors as D greyscale values (B, 1, D)."""
    return x[:, None] if x.ndim == 2 else x


def _lookup(x: Tensor, grid: int, space: str, bounds: tuple[float, float]) -> _Lookup:
    lo, hi = bounds
    colors = ((x - lo) / (hi - lo)).reshape(x.shape[0], x.shape[1], -1)
    return _Lookup(_to_space(colors, space), grid)


def _change(x: Tensor, delta: Tensor, lookup: _Lookup, fn: ColorFunction | ReColorAdv) -> Tensor:
    lo, hi = fn.bounds
    return ((hi - lo) * _from_space(lookup(delta), fn.space)).reshape(x.shape)


# ----- the result -------------------------------------------------------------------------------
@dataclass
class ColorResult(AttackResult):
    """An ``AttackResult`` with the colour function behind each returned point.

    Attributes:
        functions: (B, C, K, …, K) δ of each returned point's function (see ``ColorFunction``);
            zero (the identity) where the attack found nothing better than x itself (samples
            misclassified already, or not attacked). ``distance`` is its deviation.
    """

    functions: Tensor | None = None

    PER_SAMPLE: ClassVar[tuple[str, ...]] = (*AttackResult.PER_SAMPLE, "functions")

    def color_function(self) -> ColorFunction:
        """The returned functions as a ``ColorFunction``: x_adv = round(f(x)) per sample."""
        if self.functions is None:
            raise ValueError("functions: this result carries no colour functions")
        space = str(self.params.get("space", "rgb"))
        return ColorFunction(self.functions, space=space, bounds=self.threat.bounds)


# ----- the attack -------------------------------------------------------------------------------
class ReColorAdv(Attack):
    """ReColorAdv: Adam on one colour function per image, projected onto its ε-box.

    Args:
        threat: a ``ThreatModel`` with ``eps=None`` (the function's own bound is
            ``eps_color``); ``norm`` only labels the image change, ``distance`` is the
            function's deviation (``metric == "color"``). Targeted or untargeted.
        eps_color: ε, the bound max_g ‖δ_g‖_∞ ≤ ε on the function's change, a fraction of the
            input range. None: 0.03 for colour images (the paper's RGB setting), 0.3 for
            greyscale.
        grid: K, grid points per colour axis (≥ 2). None: 12 for colour, 32 for greyscale.
        space: the working colour space, "rgb" or "yuv" (3 channels).
        monotone: keep each channel non-decreasing in its own input channel (for greyscale:
            f non-decreasing). None: True for greyscale, False for colour (as the paper).
        steps: Adam steps per sample (one forward + backward each); one more forward
            evaluates the last iterate.
        step_size: Adam's learning rate on δ. None: ε/30.
        smooth_weight: λ ≥ 0, the weight of R_smooth (the reference code: 0.05).
        kappa: κ ≥ 0 (∞ allowed), the C&W confidence: the margin counts up to κ.
        random_start: start from δ uniform in [−ε, ε] (projected) instead of the identity.
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``; with ``early_stop`` a
            sample stops at its first success.

    Inputs are (B, C, ...) with channels on dim 1 ((B, D) vectors are D greyscale values);
    "yuv" needs C = 3.
    """

    name: ClassVar[str] = "recoloradv"
    result_type: ClassVar[type[AttackResult]] = ColorResult
    needs_eps: ClassVar[bool] = False
    select: ClassVar[Any] = "distance"
    metric: ClassVar[str | None] = "color"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        eps_color: float | None = None,
        grid: int | None = None,
        space: str = "rgb",
        monotone: bool | None = None,
        steps: int = 100,
        step_size: float | None = None,
        smooth_weight: float = 0.05,
        kappa: float = math.inf,
        random_start: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        checks.no_eps(threat.eps, f"{self.name} bounds the colour function itself (eps_color)")
        if eps_color is not None:
            checks.positive("eps_color", eps_color)
            if eps_color > 1:
                raise ValueError(f"eps_color: expected a number in (0, 1], got {eps_color!r}")
        self.eps_color = None if eps_color is None else float(eps_color)
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 2):
            raise ValueError(f"grid: expected an integer >= 2 or None, got {grid!r}")
        self.grid = grid
        if space not in SPACES:
            raise ValueError(f"space: expected one of {SPACES}, got {space!r}")
        self.space = space
        if monotone is not None and not isinstance(monotone, bool):
            raise ValueError(f"monotone: expected True, False or None, got {monotone!r}")
        self.monotone = monotone
        self.steps = checks.positive_int("steps", steps)
        self.step_size = None if step_size is None else checks.positive("step_size", step_size)
        self.smooth_weight = checks.non_negative("smooth_weight", smooth_weight)
        if not (isinstance(kappa, int | float) and kappa == math.inf):
            kappa = checks.non_negative("kappa", kappa)
        self.kappa = float(kappa)
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start: expected a bool, got {random_start!r}")
        self.random_start = random_start

    @property
    def bounds(self) -> tuple[float, float]:
        return self.threat.bounds

    def settings(self, channels: int) -> tuple[int, float, bool, float]:
        """(grid, eps_color, monotone, step_size) for images of ``channels`` channels."""
        grey = channels == 1
        grid = self.grid or (_GREY_GRID if grey else _COLOR_GRID)
        eps = self.eps_color or (_GREY_EPS if grey else _COLOR_EPS)
        monotone = grey if self.monotone is None else self.monotone
        step_size = self.step_size or eps / 30
        return grid, eps, monotone, step_size

    # ----- the result carries the functions ---------------------------------------------------
    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = super()._checked(clf, x, y, target)
        self._check_shape(x)
        return x, y, target

    def _extras(self, x: Tensor) -> dict[str, Tensor]:
        c = _as_images(x).shape[1]
        grid = self.settings(c)[0]
        return {"functions": x.new_zeros(x.shape[0], c, *([grid] * c))}

    def _check_shape(self, x: Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"x: expected (B, C, ...) images, got shape {tuple(x.shape)}")
        c = 1 if x.ndim == 2 else x.shape[1]
        if self.space == "yuv" and c != 3:
            raise ValueError(f"space: 'yuv' needs 3 channels, x has {c}")
        grid = self.settings(c)[0]
        if grid**c > _MAX_GRID_POINTS:
            raise ValueError(
                f"x: {c} channels need a grid of {grid}^{c} points per channel; at most "
                f"{_MAX_GRID_POINTS} are allowed (pass a smaller grid)"
            )

    # ----- the optimization ---------------------------------------------------------------------
    def _run(self, run: Tracker) -> None:
        shape = tuple(run.x.shape)
        images = _as_images(run.x)
        c = images.shape[1]
        grid, eps, monotone, step_size = self.settings(c)
        lookup = _lookup(images, grid, self.space, self.bounds)
        if self.random_start:
            delta = (2 * run.rand(c, *([grid] * c)) - 1) * eps
            delta = project_function(delta, eps, monotone=monotone)
        else:
            delta = run.x.new_zeros(run.n_active, c, *([grid] * c))
        adam = Adam(step_size)

        def evaluate(delta: Tensor, grad: bool) -> tuple[Tensor, Tensor | None]:
            delta = delta.detach().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                x_adv = run.x + _change(images, delta, lookup, self).reshape(shape)
                deviation = delta.detach().abs().flatten(1).amax(dim=1)
                logits = run.forward(x_adv, distance=deviation, extras={"functions": delta})
                if not grad:
                    return logits.detach(), None
                adv = margin(logits, run.y, run.labels_target, kappa=self.kappa)
                values = adv - self.smooth_weight * smoothness(delta)
                (g,) = torch.autograd.grad(values.sum(), delta)
            run.gradients[run.rows] += 1
            run.clf.backward_count += run.n_active
            return logits.detach(), g

        for _ in run.steps(self.steps):
            logits, g = evaluate(delta, True)
            assert g is not None
            delta = project_function(adam.step(delta, -g), eps, monotone=monotone)
            if self.early_stop:
                won = succeeded(logits.argmax(dim=1), run.y, run.target, self.threat.targeted)
                if bool(won.any()):
                    run.retire(won)
                    keep = ~won
                    images = images[keep]
                    lookup.keep(keep)
                    adam.keep(keep)
                    shape = (int(keep.sum()), *shape[1:])
                    (delta,) = run.shrink(delta)
        if run.n_active:
            evaluate(delta, False)
