"""Detecting adversarial inputs: kernel density and Bayesian uncertainty, and how to evaluate it.

**Kernel density (KD).** With φ(x) the last hidden layer of the classifier and X_c the training
points of the class c = f(x) the model predicts,

    KD(x) = 1/|X_c| · Σ_{x_i ∈ X_c} exp(−‖φ(x) − φ(x_i)‖² / σ²),

reported as log KD (log-sum-exp, so far points do not underflow to log 0). Adversarial points
sit off the data manifold of the class they are pushed into: low density.

**Bayesian uncertainty (BU).** Monte Carlo dropout over T passes with softmax outputs ŷ_t,

    U(x) = 1/T Σ_t ŷ_tᵀŷ_t − (1/T Σ_t ŷ_t)ᵀ(1/T Σ_t ŷ_t) = 1/T Σ_t ‖ŷ_t − ȳ‖²,

the total predictive variance (the second form is the same number, computed without the
cancellation of the first). Adversarial points tend to have higher uncertainty.

**Detector.** A logistic regression on the z-scored pair (log KD, BU), trained with negatives =
clean and noisy points and positives = adversarial points; its logit is the detection score.

Feinman, Curtin, Shintre, Gardner. Detecting Adversarial Samples from Artifacts. 2017.
arXiv:1703.00410

**Evaluation.** ``evaluate_detector`` reports clean accuracy, the clean false-positive rate, the
ROC AUC (exact Mann–Whitney statistic, ``roc_auc``) and the robust accuracy *with detection*:
a sample counts when it is classified correctly and, after the attack, is still classified
correctly or is rejected. A detector must be evaluated against an attack that knows it:
``detector_aware_loss`` (Carlini & Wagner 2017) maximizes the classification margin minus a
multiple of the detector's score above its threshold (a hinge), so the attack looks for points
that are misclassified *and* undetected.

Carlini, Wagner. Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection
Methods. AISec 2017. arXiv:1705.07263

Differences from the papers:

* advex's zoo models have no dropout. BU applies dropout (rate p, T fixed masks drawn once from
  the detector's own ``torch.Generator``) to the last hidden features φ and recomputes only the
  last layer (the ``head``): ŷ_t = softmax(head(m_t ⊙ φ(x))), m_t ∈ {0, 1/(1−p)}^d. The masks
  are shared by all samples, so U is a deterministic, differentiable function of x that does
  not depend on how the inputs are batched.
* The kernel is the paper's exp(−d²/σ²) (scikit-learn's Gaussian kernel, used by the authors'
  code, is exp(−d²/2h²) with a normalizing constant: same ranking for σ = √2·h).
* The logistic regression is fitted in float64 by L-BFGS with a small L2 penalty (no
  scikit-learn); the paper's authors used scikit-learn's ``LogisticRegressionCV``.
* The PGD tracker (``advex.attacks.base``) only knows misclassification, so the point an attack
  returns may be misclassified but detected: ``evaluate_detector`` decides success itself
  (misclassified and not detected) from the returned ``x_adv``.
"""

from __future__ import annotations

import abc
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advex.attacks import checks
from advex.attacks.losses import margin
from advex.model import Classifier, as_classifier

__all__ = [
    "AttackDetection",
    "DetectionReport",
    "Detector",
    "DetectorAwareLoss",
    "KDBUDetector",
    "ScoreDetector",
    "detector_aware_loss",
    "dropout_masks",
    "evaluate_detector",
    "log_kernel_density",
    "matched_noise",
    "mc_dropout_uncertainty",
    "roc_auc",
    "threshold_at_fpr",
]

Features = Callable[[Tensor], Tensor]


# ----- the detector protocol -------------------------------------------------------------
@runtime_checkable
class Detector(Protocol):
    """What every advex detector offers (KD+BU here, MagNet's in ``advex.defenses.purify``).

    ``score(x)`` (B,): higher = more adversarial, differentiable in x where the detector is;
    ``detect(x)`` (B,) bool: ``score(x) > threshold``; ``threshold`` is set by ``calibrate`` at
    a false-positive rate on clean data.
    """

    threshold: float | None

    def score(self, x: Tensor) -> Tensor: ...

    def detect(self, x: Tensor) -> Tensor: ...

    def calibrate(self, x_clean: Tensor, fpr: float) -> float: ...


class ScoreDetector(abc.ABC):
    """A detector that thresholds a score: ``detect(x) = score(x) > threshold``.

    Subclasses implement ``score``; ``calibrate`` sets the threshold at a clean FPR.
    ``batch_size`` bounds the batches of the gradient-free helpers (``scores``, ``detect``).
    """

    threshold: float | None = None
    batch_size: int = 500

    @abc.abstractmethod
    def score(self, x: Tensor) -> Tensor:
        """(B,) detection scores, higher = more adversarial."""

    def scores(self, x: Tensor) -> Tensor:
        """``score`` without gradients, in batches of ``batch_size``."""
        _check_images("x", x)
        with torch.no_grad():
            return torch.cat(
                [self.score(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
            )

    def detect(self, x: Tensor) -> Tensor:
        """(B,) bool: the score exceeds the threshold (the input is rejected)."""
        if self.threshold is None:
            raise RuntimeError(
                f"{type(self).__name__}: no threshold yet; call fit or calibrate first"
            )
        return self.scores(x) > self.threshold

    def calibrate(self, x_clean: Tensor, fpr: float) -> float:
        """Set the threshold so that at most a fraction ``fpr`` of ``x_clean`` is flagged."""
        _check_fpr(fpr)
        self.threshold = threshold_at_fpr(self.scores(x_clean), fpr)
        return self.threshold


def threshold_at_fpr(scores: Tensor, fpr: float) -> float:
    """The threshold t that flags (score > t) a fraction ⌊fpr·n⌋/n of ``scores`` (without ties).

    t is the (⌊fpr·n⌋ + 1)-th largest score: exactly ⌊fpr·n⌋ scores lie strictly above it when
    they are distinct, never more (ties only lower the rate)."""
    _check_fpr(fpr)
    s = _scores_1d("scores", scores)
    if s.numel() == 0:
        raise ValueError("scores: need at least one clean score to set a threshold")
    k = min(math.floor(fpr * s.numel() + 1e-9), s.numel() - 1)  # 1e-9: 0.29·100 → 29
    return float(s.sort(descending=True).values[k])


def roc_auc(
    scores_negative: Tensor | Sequence[float], scores_positive: Tensor | Sequence[float]
) -> float:
    """Exact ROC AUC = P(s⁺ > s⁻) + ½ P(s⁺ = s⁻), the Mann–Whitney U statistic / (n⁻ n⁺).

    Computed from mid-ranks of the pooled scores: AUC = (R⁺ − n⁺(n⁺+1)/2) / (n⁺ n⁻), R⁺ the
    rank sum of the positives with tied scores sharing their average rank.
    """
    neg = _scores_1d("scores_negative", scores_negative).double()
    pos = _scores_1d("scores_positive", scores_positive).double()
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError("scores_negative, scores_positive: need at least one score in each")
    pooled = torch.cat([neg, pos])
    values, inverse, counts = torch.unique(pooled, return_inverse=True, return_counts=True)
    del values
    last = counts.cumsum(0).double()  # rank of the last element of each tie group (1-based)
    mid = last - (counts.double() - 1) / 2
    r_pos = mid[inverse[neg.numel() :]].sum()
    n_neg, n_pos = neg.numel(), pos.numel()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----- kernel density and Bayesian uncertainty --------------------------------------------
def log_kernel_density(
    features: Tensor, reference: Tensor, bandwidth: float, *, mask: Tensor | None = None
) -> Tensor:
    """log KD(x) = log 1/N Σ_i exp(−‖φ − φ_i‖²/σ²) per row of ``features`` (B, d).

    ``reference`` (N, d) holds the φ_i; ``mask`` (B, N) bool, optional, keeps for each row only
    the reference points where it is True (N is then their number per row). Differentiable in
    ``features``."""
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise ValueError(
            f"features, reference: expected (B, d) and (N, d), got {tuple(features.shape)} "
            f"and {tuple(reference.shape)}"
        )
    sigma = checks.positive("bandwidth", bandwidth)
    ref = reference.to(features.dtype)
    sq = (
        features.pow(2).sum(1, keepdim=True) + ref.pow(2).sum(1).unsqueeze(0) - 2 * features @ ref.T
    ).clamp_min(0)
    logits = -sq / sigma**2
    if mask is None:
        return torch.logsumexp(logits, dim=1) - math.log(ref.shape[0])
    if mask.shape != logits.shape:
        raise ValueError(f"mask: expected shape {tuple(logits.shape)}, got {tuple(mask.shape)}")
    count = mask.sum(1)
    if bool((count == 0).any()):
        raise ValueError("mask: some rows keep no reference point")
    logits = logits.masked_fill(~mask, -math.inf)
    return torch.logsumexp(logits, dim=1) - count.to(features.dtype).log()


def dropout_masks(
    passes: int, dim: int, p: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """T = ``passes`` inverted-dropout masks (T, dim): entries 0 w.p. p, else 1/(1 − p)."""
    checks.positive_int("passes", passes)
    checks.positive_int("dim", dim)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ValueError(f"p: expected a dropout rate in [0, 1), got {p!r}")
    keep = torch.rand((passes, dim), generator=generator) >= p
    return keep.float() / (1 - p)


def mc_dropout_uncertainty(features: Tensor, head: Features, masks: Tensor) -> Tensor:
    """U(x) = 1/T Σ_t ŷ_tᵀŷ_t − ȳᵀȳ with ŷ_t = softmax(head(m_t ⊙ φ(x))), per row (B,).

    ``features`` (B, d); ``masks`` (T, d). Computed as 1/T Σ_t ‖ŷ_t − ȳ‖² (equal, and ≥ 0
    exactly): 0 when all passes agree (p = 0)."""
    if masks.ndim != 2 or features.ndim != 2 or masks.shape[1] != features.shape[1]:
        raise ValueError(
            f"masks: expected shape (T, {features.shape[-1]}) for features of shape "
            f"{tuple(features.shape)}, got {tuple(masks.shape)}"
        )
    t, b = masks.shape[0], features.shape[0]
    dropped = (features.unsqueeze(0) * masks.to(features).unsqueeze(1)).reshape(t * b, -1)
    probs = F.softmax(head(dropped), dim=-1).reshape(t, b, -1)
    mean = probs.mean(0, keepdim=True)
    return (probs - mean).pow(2).sum(-1).mean(0)


def matched_noise(
    x: Tensor, x_adv: Tensor, *, seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)
) -> Tensor:
    """Noisy counterparts of ``x`` for fitting a detector (Feinman et al.'s negatives).

    Gaussian noise scaled per sample to the L2 norm of the adversarial perturbation
    ‖x_adv − x‖₂, then clipped to ``bounds``: as large a change as the attack made, but random."""
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv: expected shape {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=g).to(x)
    size = (x_adv - x).flatten(1).norm(dim=1)
    direction = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
    return (x + size.view(-1, *[1] * (x.ndim - 1)) * direction).clamp(*bounds)


# ----- the Feinman et al. detector --------------------------------------------------------
class KDBUDetector(ScoreDetector):
    """Kernel density + Bayesian uncertainty detector (Feinman et al. 2017).

    Args:
        model: the classifier to guard (``nn.Module`` or ``advex.Classifier``, pixel space).
        features: where φ(x), the last hidden layer, comes from:
            * None (default): the input of the model's last layer, when the model is an
              ``nn.Sequential`` ending in ``nn.Linear`` (captured by a forward pre-hook). For
              advex.zoo's ``MnistCNN`` that is the input of ``fc2`` = the output of ``relu3``
              (100 features); for ``MnistMLP`` the output of ``relu2``;
            * a layer name (``"relu3"``): the output of that submodule (forward hook);
            * a callable x ↦ φ(x) (B, d) in pixel space.
        head: the layers mapping φ to logits, re-run under dropout for BU. Default: the last
            ``nn.Linear`` (only with ``features`` None or the name of the layer feeding it).
        bandwidth: σ of the kernel (the paper's 1.20 for its MNIST features).
        dropout, passes: the MC-dropout rate p and number of passes T for BU.
        seed: seeds the ``torch.Generator`` that draws the dropout masks (at ``fit``).
        batch_size: batch size of the gradient-free helpers.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        features: str | Features | None = None,
        head: Features | None = None,
        bandwidth: float = 1.20,
        dropout: float = 0.5,
        passes: int = 50,
        seed: int = 0,
        batch_size: int = 500,
    ) -> None:
        self.classifier: Classifier = as_classifier(model)
        self.bandwidth = checks.positive("bandwidth", bandwidth)
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.passes = checks.positive_int("passes", passes)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.seed = int(seed)
        self._layer, self._capture_input, self._features_fn, default_head = self._resolve(features)
        if head is None:
            head = default_head
        if head is not None and not callable(head):
            raise TypeError(f"head: expected a callable features → logits, got {type(head)}")
        if head is None:
            raise ValueError(
                "head: give the layers mapping the features to logits (BU re-runs them under "
                "dropout); it is only inferred for an nn.Sequential ending in nn.Linear"
            )
        self.head: Features = head
        self.masks: Tensor | None = None
        self.reference: Tensor | None = None
        self.reference_labels: Tensor | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.threshold = None

    def _resolve(
        self, features: str | Features | None
    ) -> tuple[nn.Module | None, bool, Features | None, Features | None]:
        """(hooked layer, capture its input?, feature callable, default head)."""
        module = self.classifier.module
        children = list(module.children()) if isinstance(module, nn.Sequential) else []
        last = children[-1] if children and isinstance(children[-1], nn.Linear) else None
        if features is None:
            if last is None:
                raise ValueError(
                    "features: the model is not an nn.Sequential ending in nn.Linear; give a "
                    "layer name or a callable x ↦ φ(x)"
                )
            return last, True, None, last
        if isinstance(features, str):
            try:
                layer = module.get_submodule(features)
            except AttributeError:
                raise ValueError(f"features: the model has no layer named {features!r}") from None
            feeds_last = last is not None and len(children) >= 2 and children[-2] is layer
            return layer, False, None, last if feeds_last else None
        if callable(features):
            return None, False, features, None
        raise TypeError(
            f"features: expected None, a layer name or a callable, got {type(features).__name__}"
        )

    # ----- forward passes -----------------------------------------------------------------
    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B, K), φ(x) (B, d)) in one pass of the classifier (differentiable)."""
        _check_images("x", x)
        clf = self.classifier
        with clf.attacking():
            if self._features_fn is not None:
                return clf(x), self._features_fn(x).flatten(1)
            seen: list[Tensor] = []
            layer = self._layer
            assert layer is not None
            if self._capture_input:
                handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            else:
                handle = layer.register_forward_hook(lambda m, a, out: seen.append(out))
            try:
                logits = clf(x)
            finally:
                handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"features: the hooked layer ran {len(seen)} times, expected 1")
        return logits, seen[0].flatten(1)

    def characteristics(self, x: Tensor) -> Tensor:
        """(B, 2): (log KD, BU) of each input; differentiable in x (KD's class is f(x))."""
        if self.reference is None or self.reference_labels is None or self.masks is None:
            raise RuntimeError("KDBUDetector: call fit first")
        logits, phi = self.logits_and_features(x)
        pred = logits.argmax(dim=1)
        mask = pred.unsqueeze(1) == self.reference_labels.to(pred.device).unsqueeze(0)
        kd = log_kernel_density(phi, self.reference.to(phi.device), self.bandwidth, mask=mask)
        with self.classifier.attacking():
            bu = mc_dropout_uncertainty(phi, self.head, self.masks.to(phi.device))
        return torch.stack([kd, bu], dim=1)

    def _characteristics_nograd(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            b = self.batch_size
            return torch.cat([self.characteristics(x[i : i + b]) for i in range(0, len(x), b)])

    def score(self, x: Tensor) -> Tensor:
        """(B,) the logistic regression's logit on the z-scored (log KD, BU): higher = more
        adversarial; differentiable in x."""
        if self.weight is None or self.bias is None or self.mean is None or self.std is None:
            raise RuntimeError("KDBUDetector: call fit first")
        c = self.characteristics(x)
        z = (c - self.mean.to(c)) / self.std.to(c)
        return z @ self.weight.to(c) + self.bias.to(c)

    # ----- fitting --------------------------------------------------------------------------
    def fit(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_clean: Tensor,
        x_noisy: Tensor,
        x_adv: Tensor,
        *,
        fpr: float = 0.05,
        l2: float = 1e-3,
    ) -> KDBUDetector:
        """Fit the detector as in the paper, then set the threshold at clean FPR ``fpr``.

        ``x_train``, ``y_train``: the reference set of the densities (each class must occur).
        The logistic regression is trained on negatives = ``x_clean`` ∪ ``x_noisy`` and
        positives = ``x_adv`` (callers usually keep only points the model gets right and
        attacks the attack broke, as the paper does). ``l2``: penalty λ/2·‖w‖² on its weights.
        The threshold is set on ``x_clean``'s scores (``calibrate``).

        Keep ``x_clean`` (and the points ``x_noisy``/``x_adv`` derive from) out of
        ``x_train``: a point of the reference set finds itself at distance 0, so its log KD is
        at least −log|X_c| (about −6 with 400 references per class), far above that of unseen
        clean digits (about −65 for mnist_cnn and σ = 1.2), which teaches the regression a
        "clean" that held-out data never shows."""
        _check_fpr(fpr)
        for name, t in (("x_train", x_train), ("x_clean", x_clean), ("x_noisy", x_noisy)):
            _check_images(name, t)
        _check_images("x_adv", x_adv)
        if not isinstance(y_train, Tensor) or y_train.shape != (len(x_train),):
            raise ValueError(f"y_train: expected a label tensor of shape ({len(x_train)},)")
        if len(x_clean) + len(x_noisy) == 0 or len(x_adv) == 0:
            raise ValueError("x_clean, x_noisy, x_adv: need negatives and positives to fit")
        b = self.batch_size
        with torch.no_grad():
            first_logits, first_phi = self.logits_and_features(x_train[:1])
            k = first_logits.shape[1]
            labels = y_train.long()
            missing = sorted(set(range(k)) - set(labels.tolist()))
            if missing:
                raise ValueError(f"y_train: classes {missing} have no training point")
            phis = [
                self.logits_and_features(x_train[i : i + b])[1] for i in range(0, len(x_train), b)
            ]
        self.reference = torch.cat(phis).detach()
        self.reference_labels = labels.to(self.reference.device)
        generator = torch.Generator().manual_seed(self.seed)  # same masks on every fit
        self.masks = dropout_masks(
            self.passes, first_phi.shape[1], self.dropout, generator=generator
        )
        neg = self._characteristics_nograd(torch.cat([x_clean, x_noisy]))
        pos = self._characteristics_nograd(x_adv)
        data = torch.cat([neg, pos]).double()
        target = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]).double()
        self.mean = data.mean(0)
        self.std = data.std(0).clamp_min(1e-12)
        w, bias = _logistic_regression((data - self.mean) / self.std, target, l2=l2)
        self.weight, self.bias = w, bias
        self.calibrate(x_clean, fpr)
        return self


def _logistic_regression(z: Tensor, target: Tensor, *, l2: float) -> tuple[Tensor, Tensor]:
    """argmin_w,b mean BCE(z·w + b, target) + l2/2·‖w‖², by L-BFGS (float64, deterministic)."""
    w = torch.zeros(z.shape[1], dtype=z.dtype, requires_grad=True)
    b = torch.zeros((), dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, target) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


# ----- the adaptive attack's loss ---------------------------------------------------------
class _Seen:
    """The last (input, output) of a watched module's forward."""

    def __init__(self) -> None:
        self.x: Tensor | None = None
        self.out: weakref.ref[Tensor] | None = None

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            self.x, self.out = args[0], weakref.ref(output)


class DetectorAwareLoss:
    """L(x) = min(margin(f(x), y), κ) − weight · max(0, score(x) − threshold + slack), per sample.

    ``margin`` is Carlini & Wagner's max_{j≠y} z_j − z_y (targeted: z_t − max_{j≠t} z_j): the
    attack is pushed across the decision boundary (by at most κ) and, while the point is
    detected or within ``slack`` of the threshold, back below the detector's threshold. The
    hinge stops pulling on the detector once the point is safely undetected, so a large
    ``weight`` does not keep the attack from misclassifying; ``slack`` (in score units) keeps
    the point away from the threshold. ``slack=math.inf`` gives the plain
    L = min(margin, κ) − weight · score(x) (up to a constant), which needs ``weight`` tuned
    to the scales of the logits and of the score.

    A loss only receives the logits: to know x, this object watches the attacked model with a
    forward hook (on ``model``; by default the detector's ``classifier``) and uses the input
    whose output are exactly the logits it receives. ``close()`` (or leaving a ``with`` block)
    removes the hook.
    """

    __name__ = "detector_aware"

    def __init__(
        self,
        detector: Detector,
        weight: float = 10.0,
        *,
        slack: float = 0.3,
        kappa: float = math.inf,
        model: nn.Module | None = None,
    ) -> None:
        if not isinstance(detector, Detector):
            raise TypeError(
                f"detector: expected an advex detector (score, detect, calibrate), got "
                f"{type(detector).__name__}"
            )
        self.detector = detector
        self.weight = checks.non_negative("weight", weight)
        for name, value in (("slack", slack), ("kappa", kappa)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0 (or math.inf), got {value!r}")
        self.slack = float(slack)
        self.kappa = float(kappa)
        watched = model if model is not None else getattr(detector, "classifier", None)
        if not isinstance(watched, nn.Module):
            raise TypeError(
                "model: give the classifier (nn.Module) the attack runs on; the detector has "
                "no `classifier` to watch"
            )
        self.model = watched
        self._seen = _Seen()
        self._handle = watched.register_forward_hook(self._seen.hook)
        self._finalizer = weakref.finalize(self, self._handle.remove)

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        seen = self._seen
        out = seen.out() if seen.out is not None else None
        if out is not logits or seen.x is None:
            raise RuntimeError(
                "detector_aware_loss: these logits are not the latest output of the watched "
                f"model ({type(self.model).__name__}); attack that model, or pass model= the "
                "classifier the attack runs on"
            )
        value = margin(logits, y, target)
        if math.isfinite(self.kappa):
            value = value.clamp(max=self.kappa)
        score = self.detector.score(seen.x).to(value.dtype)
        if math.isfinite(self.slack):
            if self.detector.threshold is None:
                raise RuntimeError("detector_aware_loss: the detector has no threshold; fit it")
            score = (score - float(self.detector.threshold) + self.slack).clamp_min(0)
        return value - self.weight * score

    def close(self) -> None:
        """Stop watching the model (remove the forward hook)."""
        self._finalizer()

    def __enter__(self) -> DetectorAwareLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detector_aware_loss(
    detector: Detector,
    weight: float = 10.0,
    *,
    slack: float = 0.3,
    kappa: float = math.inf,
    model: nn.Module | None = None,
) -> DetectorAwareLoss:
    """A loss for ``PGD(threat, loss=...)`` that seeks misclassified, undetected points.

    L = min(margin, κ) − weight · max(0, score(x) − threshold + slack) (Carlini & Wagner 2017,
    arXiv:1705.07263; see ``DetectorAwareLoss``). ``model``: the classifier the attack will
    run on (default: ``detector.classifier``; for MagNet its deployed ``classifier``). Run the
    attack with ``early_stop=False``: PGD stops a sample at its first misclassification, and
    keeps the largest-margin misclassified point, neither of which knows the detector; the
    defaults (weight 10, slack 0.3) evaded both KD+BU and MagNet on mnist_cnn at L∞ ε = 0.3."""
    return DetectorAwareLoss(detector, weight, slack=slack, kappa=kappa, model=model)


# ----- evaluation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackDetection:
    """How one attack fares against the model + detector (fractions of all n samples unless
    said otherwise).

    Attributes:
        attack: the attack's name.
        attack_success_rate: clean-correct samples misclassified after the attack (detector
            ignored), as a fraction of all samples.
        detection_rate: of those misclassified samples, the fraction the detector rejects
            (nan when there are none).
        auc: ROC AUC of the detector, clean vs adversarial scores over those samples (nan when
            there are none).
        robust_accuracy: correct on the clean point and on the attacked point (no detector).
        robust_accuracy_with_detection: correct on the clean point, and after the attack still
            correct or rejected.
    """

    attack: str
    attack_success_rate: float
    detection_rate: float
    auc: float
    robust_accuracy: float
    robust_accuracy_with_detection: float


@dataclass(frozen=True)
class DetectionReport:
    """``evaluate_detector``'s result.

    Attributes:
        n: number of samples.
        clean_accuracy: fraction classified correctly.
        fpr: fraction of the clean samples the detector rejects.
        threshold: the detector's threshold.
        naive: the attack that ignores the detector.
        adaptive: the detector-aware attack, or None.
        robust_accuracy_with_detection: per sample the worst case over the attacks run.
    """

    n: int
    clean_accuracy: float
    fpr: float
    threshold: float
    naive: AttackDetection
    adaptive: AttackDetection | None
    robust_accuracy_with_detection: float


def evaluate_detector(
    model: nn.Module,
    detector: Detector,
    attack: Any,
    x: Tensor,
    y: Tensor,
    *,
    adaptive_attack: Any | None = None,
) -> DetectionReport:
    """Evaluate ``detector`` guarding ``model`` against ``attack`` (and ``adaptive_attack``).

    Each attack is called as ``attack(model, x, y)``. Its ``success`` is not used: an attack
    only knows misclassification, so success is re-decided here from the returned ``x_adv``:
    the attacker wins a sample when the model got it right, now gets it wrong, and the detector
    does not reject the point. For a detector-aware attack pass the same ``model`` object its
    loss watches (``detector_aware_loss(detector, model=...)``). For MagNet pass
    ``magnet.classifier`` (model ∘ reformer) and ``magnet``.
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"detector: expected an advex detector, got {type(detector).__name__}")
    if not callable(attack):
        raise TypeError(f"attack: expected an attack, got {type(attack).__name__}")
    if adaptive_attack is not None and not callable(adaptive_attack):
        raise TypeError(f"adaptive_attack: expected an attack, got {type(adaptive_attack)}")
    _check_images("x", x)
    if not isinstance(y, Tensor) or y.shape != (len(x),):
        raise ValueError(f"y: expected a label tensor of shape ({len(x)},)")
    if detector.threshold is None:
        raise ValueError("detector: not calibrated (threshold is None); fit it first")
    clf = as_classifier(model)
    y = y.to(clf.device)
    correct = clf.predict(x) == y
    clean_scores = _scores(detector, x)
    flagged = clean_scores > detector.threshold
    robust = correct.clone()
    outcomes: list[AttackDetection | None] = []
    for a in (attack, adaptive_attack):
        if a is None:
            outcomes.append(None)
            continue
        x_adv = a(clf, x, y).x_adv.detach()
        fooled = correct & (clf.predict(x_adv) != y)
        adv_scores = _scores(detector, x_adv)
        detected = adv_scores > detector.threshold
        kept = correct & (~fooled | detected)
        robust &= kept
        n_fooled = int(fooled.sum())
        outcomes.append(
            AttackDetection(
                attack=str(getattr(a, "name", type(a).__name__)),
                attack_success_rate=_mean(fooled),
                detection_rate=_mean(detected[fooled]) if n_fooled else math.nan,
                auc=roc_auc(clean_scores[fooled], adv_scores[fooled]) if n_fooled else math.nan,
                robust_accuracy=_mean(correct & ~fooled),
                robust_accuracy_with_detection=_mean(kept),
            )
        )
    naive, adaptive = outcomes
    assert naive is not None
    return DetectionReport(
        n=len(x),
        clean_accuracy=_mean(correct),
        fpr=_mean(flagged),
        threshold=float(detector.threshold),
        naive=naive,
        adaptive=adaptive,
        robust_accuracy_with_detection=_mean(robust),
    )


# ----- helpers ------------------------------------------------------------------------------
def _scores(detector: Detector, x: Tensor) -> Tensor:
    if isinstance(detector, ScoreDetector):
        return detector.scores(x)
    with torch.no_grad():
        return detector.score(x)


def _mean(mask: Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else math.nan


def _scores_1d(name: str, scores: Any) -> Tensor:
    t = torch.as_tensor(scores).detach().cpu()
    if t.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of scores, got shape {tuple(t.shape)}")
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise ValueError(f"{name}: contains NaN")
    return t


def _check_images(name: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a float batch (B, ...), got {x.dtype} {tuple(x.shape)}")


def _check_fpr(fpr: object) -> None:
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 <= fpr < 1:
        raise ValueError(f"fpr: expected a false-positive rate in [0, 1), got {fpr!r}")
