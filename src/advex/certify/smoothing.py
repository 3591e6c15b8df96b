"""Randomized smoothing: certified L2 robustness for any classifier, by sampling.

For a base classifier f : R^d → {0, …, K−1} and a noise level σ > 0, the smoothed classifier is

    g(x) = argmax_c P_{ε ∼ N(0, σ²I)}( f(x + ε) = c ).

Theorem 1 (Cohen et al.): if the top class c_A of g at x has probability p_A ≥ p̲_A > 1/2 under
the noise, then g(x + δ) = c_A for every ‖δ‖₂ < R = σ·Φ⁻¹(p̲_A) (the theorem's
σ/2·(Φ⁻¹(p̲_A) − Φ⁻¹(p̄_B)) with p̄_B = 1 − p̲_A). The bound is tight: for a linear f it is the
exact L2 distance from x to f's decision boundary.

g has no closed form, so both procedures of the paper estimate it by Monte Carlo:

* PREDICT — draw n noisy copies of x and count f's votes; with the top two counts n_A ≥ n_B,
  return c_A when the two-sided binomial test of n_A successes in n_A + n_B trials at p = 1/2
  has p-value ≤ α, else abstain (−1). A returned class differs from g(x) with probability ≤ α.
* CERTIFY — guess c_A from n₀ draws, then count its votes n_A on n fresh draws (independent of
  the guess); p̲_A = the one-sided Clopper–Pearson lower bound at level 1 − α, the α-quantile
  of Beta(n_A, n − n_A + 1) (0 when n_A = 0). Abstain when p̲_A < 1/2, else return c_A and
  R = σ·Φ⁻¹(p̲_A). With probability ≥ 1 − α over the noise, a returned (c_A, R) satisfies
  g(x + δ) = c_A for all ‖δ‖₂ < R.

Cohen, Rosenfeld, Kolter. Certified Adversarial Robustness via Randomized Smoothing. ICML 2019.
arXiv:1902.02918

Notes:
    The noisy inputs x + ε are not clipped to the box ``bounds``, as in the paper and its
    reference code: g smooths f over all of R^d, and that is the g the theorem speaks of and
    the one ``predict`` evaluates. Clipping would smooth another function (f ∘ clip), a
    different classifier with a different certificate. The base model must therefore accept
    inputs outside the box. ``bounds`` only checks the clean inputs.

    The noise is in pixel space (a ``Classifier``'s normalization is applied after it), so the
    radius is an L2 distance between pixel-space inputs.

    The guarantee assumes exact Gaussian sampling and exact arithmetic; float32 sampling and
    forward passes make it hold up to rounding (Voráček & Hein, Sound Randomized Smoothing in
    Floating-Point Arithmetics, ICLR 2023, arXiv:2207.07209, show how rounding can be exploited).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from advex.attacks import checks
from advex.model import Classifier, as_classifier, check_inputs

__all__ = ["ABSTAIN", "Smoothed", "SmoothingCertificate", "noise_augment"]

ABSTAIN = -1
"""The label ``predict`` and ``certify`` return where the smoothed classifier abstains."""


@dataclass
class SmoothingCertificate:
    """What ``Smoothed.certify`` returns; every field per sample.

    Attributes:
        prediction: (B,) long, the certified class c_A, or −1 (``ABSTAIN``).
        radius: (B,) float64, σ·Φ⁻¹(p̲_A): g(x + δ) = prediction for every ‖δ‖₂ < radius, with
            probability ≥ 1 − α over the noise; 0 where abstaining.
        p_lower: (B,) float64, the Clopper–Pearson lower confidence bound at level 1 − α on the
            probability of class ``selected``.
        selected: (B,) long, the class ĉ_A guessed from the n0 selection draws (``prediction``
            where not abstaining).
        counts: (B, K) long, f's votes on the n estimation draws (each row sums to n).
        y: (B,) true labels, or None.
        correct: (B,) bool, prediction == y (False where abstaining), or None without y.
        sigma, n0, n, alpha, seed: the settings of the call.
        seconds: wall time of the call.
    """

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    selected: Tensor
    counts: Tensor
    y: Tensor | None
    correct: Tensor | None
    sigma: float
    n0: int
    n: int
    alpha: float
    seed: int
    seconds: float

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> Tensor:
        """(B,) bool: the smoothed classifier abstained."""
        return self.prediction == ABSTAIN

    @property
    def abstain_rate(self) -> float:
        """Fraction of samples where the smoothed classifier abstained."""
        return float(self.abstained.double().mean()) if len(self) else 0.0

    def certified_accuracy(self, radius: float = 0.0) -> float:
        """Fraction of samples predicted correctly with certified radius ≥ ``radius``.

        Raises:
            ValueError: no labels were given to ``certify``; ``radius`` negative or not finite.
        """
        if self.correct is None:
            raise ValueError("y: certified accuracy needs the true labels; pass y to certify")
        r = checks.non_negative("radius", radius)
        if not len(self):
            return 0.0
        return float((self.correct & (self.radius >= r)).double().mean())


class Smoothed:
    """The smoothed classifier g of ``model`` under Gaussian noise N(0, σ²I).

    Args:
        model: an ``nn.Module`` or ``advex.Classifier`` mapping pixel-space inputs to logits;
            run in eval mode without gradients (its modes are restored afterwards).
        sigma: the noise level σ > 0 (in pixel units).
        batch_size: at most this many noisy inputs per forward pass.
        bounds: the valid range of clean inputs; default the Classifier's (or (0, 1)).

    Each call seeds its own ``torch.Generator`` with ``seed`` (the global generator is never
    touched), and every noisy copy of every sample gets its own draw. The same inputs, seed,
    ``batch_size`` and device give bit-identical results; the stream is consumed sample by
    sample, so a sample's noise also depends on its position in the batch. Results are returned
    on the CPU.
    """

    def __init__(
        self,
        model: Any,
        sigma: float,
        *,
        batch_size: int = 1000,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        self.classifier: Classifier = as_classifier(model, bounds=bounds)
        self.sigma = checks.positive("sigma", sigma)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.bounds = _bounds(bounds if bounds is not None else self.classifier.bounds)

    def counts(self, x: Tensor, n: int, *, seed: int = 0) -> Tensor:
        """f's votes on ``n`` noisy copies of each sample: (B, K) long, rows summing to n."""
        x, _ = self._check(x, None)
        n = checks.positive_int("n", n)
        return self._votes(x, n, _generator(seed, x.device))

    def predict(self, x: Tensor, *, n: int = 1000, alpha: float = 0.001, seed: int = 0) -> Tensor:
        """Cohen et al.'s PREDICT: g's label per sample, (B,) long, −1 where abstaining.

        Returns c_A when the binomial test of the top two counts rejects p = 1/2 at level
        ``alpha``; then the label differs from g(x) with probability ≤ ``alpha``.
        """
        x, _ = self._check(x, None)
        n = checks.positive_int("n", n)
        alpha = checks.fraction("alpha", alpha)
        votes = self._votes(x, n, _generator(seed, x.device))
        order = torch.sort(votes, dim=1, descending=True, stable=True)
        top = order.indices[:, 0]
        n_a = order.values[:, 0]
        n_b = order.values[:, 1] if votes.shape[1] > 1 else torch.zeros_like(n_a)
        pvalue = torch.from_numpy(_binomial_pvalue(n_a.numpy(), (n_a + n_b).numpy()))
        return torch.where(pvalue <= alpha, top, torch.full_like(top, ABSTAIN))

    def certify(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        seed: int = 0,
    ) -> SmoothingCertificate:
        """Cohen et al.'s CERTIFY: g's label and a certified L2 radius per sample.

        Args:
            x: clean inputs (B, ...) within ``bounds``.
            y: true labels (B,), optional; they give ``correct`` and ``certified_accuracy``.
            n0: selection draws (guess the top class).
            n: estimation draws (bound its probability), independent of the selection draws.
            alpha: the certificate fails with probability at most ``alpha`` per sample.
            seed: seeds the noise of this call.
        """
        start = time.perf_counter()
        x, labels = self._check(x, y)
        n0 = checks.positive_int("n0", n0)
        n = checks.positive_int("n", n)
        alpha = checks.fraction("alpha", alpha)
        generator = _generator(seed, x.device)
        guess = self._votes(x, n0, generator).argmax(dim=1)  # first maximum on ties
        votes = self._votes(x, n, generator)
        n_a = votes.gather(1, guess[:, None])[:, 0]
        p_lower = torch.from_numpy(_clopper_pearson_lower(n_a.numpy(), n, alpha))
        certified = p_lower >= 0.5
        radius = torch.where(
            certified,
            self.sigma * torch.from_numpy(stats.norm.ppf(p_lower.numpy().clip(0.5, 1.0))),
            torch.zeros_like(p_lower),
        )
        prediction = torch.where(certified, guess, torch.full_like(guess, ABSTAIN))
        correct = None if labels is None else prediction == labels.cpu()
        return SmoothingCertificate(
            prediction=prediction,
            radius=radius,
            p_lower=p_lower,
            selected=guess,
            counts=votes,
            y=None if labels is None else labels.cpu(),
            correct=correct,
            sigma=self.sigma,
            n0=n0,
            n=n,
            alpha=alpha,
            seed=int(seed),
            seconds=time.perf_counter() - start,
        )

    def _check(self, x: Any, y: Any) -> tuple[Tensor, Tensor | None]:
        """Inputs on the model's device, checked against ``bounds``; labels against K."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        x = x.detach().to(self.classifier.device)
        labels = torch.zeros(x.shape[0] if x.ndim else 0, dtype=torch.long) if y is None else y
        check_inputs(x, labels, bounds=self.bounds)
        if y is None:
            return x, None
        k = self.classifier.num_classes
        if k is None:
            k = int(self.classifier.logits(x[:1]).shape[1])
        _, labels, _ = check_inputs(x, y, bounds=self.bounds, num_classes=k)
        return x, labels

    def _votes(self, x: Tensor, num: int, generator: torch.Generator) -> Tensor:
        """(B, K) counts of f(x_i + ε) over ``num`` draws per sample, in chunks of rows.

        Rows are sample-major (sample i owns rows i·num … (i+1)·num − 1); each chunk of at most
        ``batch_size`` rows draws its noise from ``generator`` in row order.
        """
        clf, batch = self.classifier, x.shape[0]
        total = batch * num
        votes: Tensor | None = None
        k = 0
        with torch.no_grad(), clf.attacking():
            for begin in range(0, total, self.batch_size):
                rows = torch.arange(begin, min(begin + self.batch_size, total), device=x.device)
                owner = rows // num
                noise = torch.randn(
                    (rows.numel(), *x.shape[1:]),
                    generator=generator,
                    device=x.device,
                    dtype=x.dtype,
                )
                logits = clf(x[owner] + self.sigma * noise)
                k = int(logits.shape[1])
                chunk = torch.bincount(owner * k + logits.argmax(dim=1), minlength=batch * k)
                votes = chunk if votes is None else votes + chunk
        assert votes is not None  # total ≥ 1
        return votes.reshape(batch, k).cpu()


def noise_augment(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """x + ε with ε ∼ N(0, σ²I), for Gaussian data augmentation (training a base classifier).

    Cohen et al. train f on noisy inputs at the σ used for smoothing; that is what makes
    f(x + ε) accurate and the certified radii large. The result is not clipped to the box, to
    match the noise ``Smoothed`` certifies under. ``generator`` (on x's device) seeds the noise;
    None draws from torch's global generator.
    """
    if not isinstance(x, Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x: expected a floating-point torch.Tensor, got {_describe(x)}")
    s = checks.positive("sigma", sigma)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + s * noise


def _binomial_pvalue(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Two-sided binomial test of p = 1/2 for successes k ≥ trials/2 (scipy's binomtest).

    By symmetry of Binomial(N, 1/2) the outcomes at most as likely as k are those ≥ k and
    ≤ N − k, so the p-value is min(1, 2·P(X ≥ k)).
    """
    tail = stats.binom.sf(successes - 1, trials, 0.5)
    return np.asarray(np.minimum(1.0, 2.0 * tail), dtype=np.float64)


def _clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on p: Beta(k, N − k + 1).ppf(α), 0 at k = 0."""
    k = successes.astype(np.float64)
    safe = np.maximum(k, 1.0)  # Beta(0, ·) is undefined; its bound is 0
    bound = stats.beta.ppf(alpha, safe, trials - safe + 1.0)
    return np.asarray(np.where(k > 0, bound, 0.0), dtype=np.float64)


def _generator(seed: Any, device: torch.device) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed)


def _bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected a pair (lo, hi), got {bounds!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"bounds: expected lo < hi, got {bounds!r}")
    return lo, hi


def _describe(x: Any) -> str:
    return f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
