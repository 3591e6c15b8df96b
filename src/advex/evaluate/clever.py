"""CLEVER: an extreme-value ESTIMATE of a lower bound on the minimal adversarial distortion.

For a classifier with logits z, a point x₀ of class c and another class j, let
g_j(x) = z_c(x) − z_j(x). If L_j ≥ max_{x ∈ B_p(x₀, R)} ‖∇g_j(x)‖_q (q the dual norm of p:
1/p + 1/q = 1, so q = 2 for L2, q = 1 for L∞, q = ∞ for L1), no perturbation with
‖δ‖_p < min(g_j(x₀)/L_j, R) reaches class j (Weng et al., Theorem 3.2). CLEVER estimates the
local Lipschitz constant L_j by extreme value theory instead of bounding it:

1. draw N_b batches of N_s points uniformly in the Lp ball B_p(x₀, R), clipped to the box;
2. compute ‖∇g_j(x)‖_q at every point and keep the maximum of each batch;
3. fit a reverse Weibull distribution (``scipy.stats.weibull_max``) to the N_b maxima: its
   location a_W, the right end of its support, estimates max ‖∇g_j‖_q, L̂_j = a_W;
4. targeted score min(g_j(x₀)/L̂_j, R); untargeted score min_{j ≠ c} of the targeted scores.

The result is an ESTIMATE, NEVER A CERTIFICATE: the sampled maxima may miss the largest
gradients (a sharp ridge, gradient masking, a non-differentiable layer), the Weibull fit may be
poor, and nothing bounds the error. Goodfellow (arXiv:1804.07870) shows gradient masking makes
CLEVER overestimate the distortion; an attack that finds a smaller perturbation refutes the
score, a certificate from a verifier never does. ``CleverResult.estimate`` is always True for
that reason, and reports must label the score as an estimate.

Weng, Zhang, Chen, Yi, Su, Gao, Hsieh, Daniel. Evaluating the Robustness of Neural Networks:
An Extreme Value Theory Approach. ICLR 2018. arXiv:1801.10578

Defaults and choices (from the paper and the authors' code, github.com/huanzhang12/CLEVER):

* N_b = 500 batches of N_s = 1024 points (the paper's setting and ``collect_gradients.py``'s
  defaults ``-i 500 -N 1024``).
* radius R: the official code samples around images in [−0.5, 0.5] with radii up to 3 (L2),
  0.1 (L∞) and 30 (L1) (``estimate_gradient_norm.py``); the default here is that value times
  the width hi − lo of the classifier's box. The official L2 sampler scales a uniform point of
  the unit ball by U(0, 3), which is not uniform in the 3-ball; here points are uniform in the
  R-ball as the paper's Algorithm 1 says (``advex.norms.random_start``), then clipped to the
  box (which keeps them in the ball).
* the fit (``clever.py``'s default ``mle_reg``): the maxima are rescaled to
  (m − max m)/(max m − min m) ∈ [−1, 0]; a reverse Weibull is fitted by maximum likelihood
  with Nelder–Mead and a penalty 0.01·c² on the shape c (the authors' guard against the
  optimizer diverging), from each initial shape in (0.1, 1, 5, 10, 20, 50, 100); the fit with
  the best Kolmogorov–Smirnov p-value is kept. If every p-value is < 0.001 (or NaN) the fit is
  rejected and L̂ = max m, as in the official code.
* degenerate maxima (all equal up to 10⁻⁶ relative, e.g. an affine model whose gradient is
  constant): the Weibull fit is ill-posed; L̂ = max m, which is the exact Lipschitz constant in
  that case. Also L̂ ≥ max m always (the support of a reverse Weibull ends at its location).

Differences from the official code: c is the label y (the official code skips misclassified
images; here they get score 0 and L̂ = NaN); every class j of a sample is scored on the same
sampled points (one forward and K − 1 backward passes per chunk) instead of fresh points per
class; the untargeted score uses all K − 1 other classes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advex.model import as_classifier, check_inputs
from advex.norms import lp_norm, random_start
from advex.threat import ThreatModel, parse_norm

__all__ = ["DEFAULT_RADIUS", "DEFAULT_SHAPES", "CleverResult", "clever", "reverse_weibull_location"]

#: Sampling radius R per norm for a box of width 1 (the official code on images in [−0.5, 0.5]).
DEFAULT_RADIUS: dict[str, float] = {"l2": 3.0, "linf": 0.1, "l1": 30.0}
#: Initial Weibull shapes tried by the fit (the official ``clever.py``'s ``c_init``).
DEFAULT_SHAPES: tuple[float, ...] = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)

_DUAL = {"l2": "l2", "linf": "l1", "l1": "linf"}
_SHAPE_PENALTY = 0.01  # λ in the penalized likelihood −log L + λ·c²
_MIN_PVALUE = 1e-3  # below it every fit is rejected and the largest maximum is used
_DEGENERATE = 1e-6  # relative spread of the maxima below which no fit is attempted


@dataclass(eq=False)
class CleverResult:
    """CLEVER scores of a batch: an ESTIMATE of a lower bound, never a certificate.

    Attributes:
        scores: (B,) float64, min(g(x₀)/L̂, R) — untargeted: the minimum over classes j ≠ y;
            targeted: for class ``target``. 0 where the model misclassifies x₀.
        lipschitz: (B,) float64, L̂ of the class achieving the score (NaN where not scored).
        classes: (B,) long, that class (the target when targeted; −1 where not scored).
        correct: (B,) bool, the model classifies x₀ as y (only these are scored).
        class_scores: (B, K) float64, min(g_j(x₀)/L̂_j, R) per class j (NaN where not computed).
        class_lipschitz: (B, K) float64, L̂_j (NaN where not computed).
        margins: (B, K) float64, g_j(x₀) = z_y(x₀) − z_j(x₀) for every j.
        pvalues: (B, K) float64, Kolmogorov–Smirnov p-value of the kept Weibull fit (NaN where
            L̂_j is the largest maximum: degenerate or rejected fits, or not computed).
        norm: the Lp norm of the distortion; the gradients are measured in its dual.
        radius: the sampling radius R (also the cap on every score).
        n_batches, batch_points: N_b and N_s; ``seed``: the generator's seed.
        targeted: whether ``target`` was given.
        seconds: wall time of the call.
        estimate: always True — the scores are statistical estimates, not certified bounds.
    """

    scores: Tensor
    lipschitz: Tensor
    classes: Tensor
    correct: Tensor
    class_scores: Tensor
    class_lipschitz: Tensor
    margins: Tensor
    pvalues: Tensor
    norm: str
    radius: float
    n_batches: int
    batch_points: int
    seed: int
    targeted: bool
    seconds: float
    estimate: bool = True

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready summary (median over the scored samples); per-sample fields on request."""
        scored = self.scores[self.correct]
        out: dict[str, Any] = {
            "method": "clever",
            "estimate": True,
            "norm": self.norm,
            "radius": self.radius,
            "n_batches": self.n_batches,
            "batch_points": self.batch_points,
            "seed": self.seed,
            "targeted": self.targeted,
            "n": len(self),
            "n_scored": int(self.correct.sum()),
            "median_score": float(scored.median()) if scored.numel() else None,
            "mean_score": float(scored.mean()) if scored.numel() else None,
            "seconds": self.seconds,
        }
        if per_sample:
            out["samples"] = {
                "scores": self.scores.tolist(),
                "lipschitz": [None if math.isnan(v) else v for v in self.lipschitz.tolist()],
                "classes": self.classes.tolist(),
                "correct": self.correct.tolist(),
            }
        return out


def clever(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    radius: float | None = None,
    n_batches: int = 500,
    batch_points: int = 1024,
    target: Tensor | None = None,
    seed: int = 0,
    chunk: int = 1024,
    shapes: Sequence[float] = DEFAULT_SHAPES,
) -> CleverResult:
    """CLEVER scores of ``model`` at inputs ``x`` (B, ...) with labels ``y`` (B,).

    An estimate of a lower bound on the minimal adversarial Lp distortion (see the module
    docstring), NEVER a certificate. Untargeted (min over classes j ≠ y) unless ``target``
    (B,) is given.

    Args:
        model: an ``nn.Module`` or ``advex.Classifier`` returning logits; its box bounds are
            the sampling box.
        norm: "l2", "linf" or "l1" (the distortion's norm p; gradients use the dual q).
        radius: the sampling radius R and cap of the score; None for ``DEFAULT_RADIUS[norm]``
            × (hi − lo).
        n_batches: N_b, the number of batch maxima the Weibull is fitted to.
        batch_points: N_s, the number of points per batch.
        target: (B,) target classes for targeted scores, each ≠ y.
        seed: seed of the ``torch.Generator`` that draws the points (same seed, same
            ``chunk`` and inputs: same scores).
        chunk: points per forward pass (memory grows with chunk × input size; one class's
            gradient is held at a time).
        shapes: initial Weibull shapes tried by the fit.

    Raises:
        ValueError: a bad norm, radius ≤ 0, counts < 1 (n_batches < 2), empty ``shapes``,
            a target equal to y, or invalid inputs (``advex.model.check_inputs``).
    """
    started = time.perf_counter()
    norm = parse_norm(norm)
    if norm not in _DUAL:
        raise ValueError(f"norm: CLEVER supports l2, linf and l1, got {norm!r}")
    n_batches = _positive_int(n_batches, "n_batches", minimum=2)
    batch_points = _positive_int(batch_points, "batch_points")
    chunk = _positive_int(chunk, "chunk")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    shapes = tuple(float(c) for c in shapes)
    if not shapes or any(not math.isfinite(c) or c <= 0 for c in shapes):
        raise ValueError(f"shapes: expected initial Weibull shapes > 0, got {shapes!r}")
    clf = as_classifier(model)
    lo, hi = clf.bounds
    if radius is None:
        radius = DEFAULT_RADIUS[norm] * (hi - lo)
    if isinstance(radius, bool) or not isinstance(radius, int | float):
        raise ValueError(f"radius: expected a number > 0, got {radius!r}")
    radius = float(radius)
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius: expected a finite number > 0, got {radius!r}")
    x, y, target = check_inputs(x, y, bounds=clf.bounds, target=target)
    device = clf.device
    x, y = x.to(device), y.to(device)
    logits = clf.logits(x).double()
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"model: expected logits for at least 2 classes, got {k}")
    x, y, target = check_inputs(x, y, bounds=clf.bounds, num_classes=k, target=target)
    if target is not None and bool((target == y).any()):
        same = torch.nonzero(target == y).squeeze(1)[:10].tolist()
        raise ValueError(f"target: equals y for samples {same}; a target must differ from y")

    b = x.shape[0]
    margins = logits.gather(1, y[:, None]) - logits  # g_j(x₀) = z_y − z_j
    correct = logits.argmax(dim=1) == y
    rows = torch.nonzero(correct).squeeze(1)
    if target is None:
        others = torch.arange(k, device=device).expand(b, k)
        others = others[others != y[:, None]].reshape(b, k - 1)
    else:
        others = target[:, None]
    threat = ThreatModel(norm, radius, bounds=(lo, hi))
    generator = torch.Generator(device=device).manual_seed(seed)
    maxima = _batch_maxima(
        clf, x[rows], y[rows], others[rows], threat, n_batches, batch_points, chunk, generator
    )

    nan = torch.full((b, k), math.nan, dtype=torch.float64)
    class_lipschitz, pvalues, class_scores = nan.clone(), nan.clone(), nan.clone()
    margins_cpu = margins.cpu()
    for i, row in enumerate(rows.tolist()):
        for col, j in enumerate(others[row].tolist()):
            lip, pvalue = reverse_weibull_location(maxima[i, col], shapes)
            class_lipschitz[row, j] = lip
            pvalues[row, j] = pvalue
            class_scores[row, j] = _score(float(margins_cpu[row, j]), lip, radius)

    scores = torch.zeros(b, dtype=torch.float64)
    lipschitz = torch.full((b,), math.nan, dtype=torch.float64)
    classes = torch.full((b,), -1, dtype=torch.long)
    if rows.numel():
        r = rows.cpu()
        filled = torch.where(torch.isnan(class_scores[r]), math.inf, class_scores[r])
        best = filled.argmin(dim=1)
        scores[r] = filled.gather(1, best[:, None]).squeeze(1)
        lipschitz[r] = class_lipschitz[r].gather(1, best[:, None]).squeeze(1)
        classes[r] = best
    return CleverResult(
        scores=scores,
        lipschitz=lipschitz,
        classes=classes,
        correct=correct.cpu(),
        class_scores=class_scores,
        class_lipschitz=class_lipschitz,
        margins=margins_cpu,
        pvalues=pvalues,
        norm=norm,
        radius=radius,
        n_batches=n_batches,
        batch_points=batch_points,
        seed=seed,
        targeted=target is not None,
        seconds=time.perf_counter() - started,
    )


def _batch_maxima(
    clf: Any,
    x: Tensor,
    y: Tensor,
    others: Tensor,
    threat: ThreatModel,
    n_batches: int,
    batch_points: int,
    chunk: int,
    generator: torch.Generator,
) -> np.ndarray:
    """max over each batch of N_s points of ‖∇(z_y − z_j)‖_q: float64 (n, J, N_b).

    The n·N_b·N_s points are laid out sample-major and processed ``chunk`` at a time: one
    forward pass, then one backward pass per class column j (the chunk's points are
    independent, so the gradient of Σ g_j is every point's own gradient)."""
    n, cols = others.shape
    per_sample = n_batches * batch_points
    out = torch.full((n * cols * n_batches,), -math.inf, dtype=torch.float64, device=x.device)
    dual = _DUAL[threat.norm]
    with clf.attacking():
        for start in range(0, n * per_sample, chunk):
            idx = torch.arange(start, min(start + chunk, n * per_sample), device=x.device)
            s, batch = idx // per_sample, (idx % per_sample) // batch_points
            x0 = x[s]
            points = (x0 + random_start(x0, threat, generator)).detach().requires_grad_(True)
            z = clf(points)
            zc = z.gather(1, y[s, None]).squeeze(1)
            for col in range(cols):
                g = zc - z.gather(1, others[s, col, None]).squeeze(1)
                (grad,) = torch.autograd.grad(g.sum(), points, retain_graph=col < cols - 1)
                norms = lp_norm(grad.detach(), dual).double()
                out.scatter_reduce_(0, (s * cols + col) * n_batches + batch, norms, "amax")
    return out.reshape(n, cols, n_batches).cpu().numpy()


def reverse_weibull_location(
    maxima: np.ndarray | Sequence[float], shapes: Sequence[float] = DEFAULT_SHAPES
) -> tuple[float, float]:
    """Estimate the right end of the distribution of ``maxima``: (L̂, KS p-value).

    Fits a reverse Weibull F(m) = exp(−((a − m)/b)^c), m ≤ a, by penalized maximum likelihood
    (penalty 0.01·c²) on the maxima rescaled to [−1, 0], from each initial shape in
    ``shapes``, keeping the fit with the best Kolmogorov–Smirnov p-value; L̂ = max(a, max m).
    Falls back to L̂ = max m (p-value NaN) when the maxima are all equal up to 10⁻⁶ relative
    (the fit is ill-posed) or every fit has p < 0.001.

    Raises:
        ValueError: fewer than 2 maxima, or NaN/infinite ones.
    """
    m = np.asarray(maxima, dtype=np.float64).reshape(-1)
    if m.size < 2:
        raise ValueError(f"maxima: expected at least 2 values, got {m.size}")
    if not np.isfinite(m).all():
        raise ValueError("maxima: contain NaN or Inf")
    top, spread = float(m.max()), float(m.max() - m.min())
    if spread <= _DEGENERATE * max(abs(top), 1e-30):
        return top, math.nan
    from scipy.stats import kstest, weibull_max

    rescaled = (m - top) / spread
    best_p, best_loc = -math.inf, math.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for c0 in shapes:
            try:
                c, loc, scale = weibull_max.fit(rescaled, c0, optimizer=_penalized_fmin)
                pvalue = float(kstest(rescaled, "weibull_max", args=(c, loc, scale)).pvalue)
            except (ValueError, RuntimeError, FloatingPointError):
                continue
            if math.isfinite(pvalue) and math.isfinite(loc) and pvalue > best_p:
                best_p, best_loc = pvalue, float(loc)
    if best_p < _MIN_PVALUE:
        return top, math.nan
    return max(top + best_loc * spread, top), best_p


def _penalized_fmin(
    func: Callable[..., float], x0: np.ndarray, args: tuple[Any, ...] = (), disp: int = 0
) -> np.ndarray:
    """Nelder–Mead on −log L(c, loc, scale) + 0.01·c² (the shape is the first parameter)."""
    from scipy.optimize import fmin

    def penalized(theta: np.ndarray, *a: Any) -> float:
        return float(func(theta, *a)) + _SHAPE_PENALTY * float(theta[0]) ** 2

    return np.asarray(fmin(penalized, x0, args=args, xtol=1e-4, ftol=1e-4, disp=0))


def _score(margin: float, lipschitz: float, radius: float) -> float:
    """min(g(x₀)/L̂, R); 0 for g ≤ 0, R for a flat g (L̂ = 0) with g > 0."""
    if margin <= 0:
        return 0.0
    if lipschitz <= 0:
        return radius
    return min(margin / lipschitz, radius)


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value
