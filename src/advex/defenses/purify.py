"""MagNet: purification by an autoencoder (reformer) and detection by its reconstruction error.

An autoencoder AE is trained on clean data only, to reconstruct x from a noised copy:

    min_AE  E_x ‖AE(clip(x + η·N(0, I))) − x‖²₂ / n,     η = ``noise`` (0.1 in the paper).

* **Reformer**: the deployed classifier is f(clip(AE(x))): the autoencoder pulls an input back
  toward the manifold of clean data before classification.
* **Reconstruction detector**: E(x) = mean_i |x − AE(x)|_i^p (p = 1 or 2, the mean over the
  pixels as in the authors' code; a monotone function of ‖x − AE(x)‖_p, so it detects the
  same points); inputs far from the manifold reconstruct badly.
* **Probability-divergence detector**: D(x) = JSD(softmax(f(x)/T) ‖ softmax(f(AE(x))/T)).

Each detector's threshold is the clean-data quantile at a chosen false-positive rate (set on
validation data); an input is rejected when any detector fires.

Meng, Chen. MagNet: a Two-Pronged Defense against Adversarial Examples. CCS 2017.
arXiv:1705.09064

Differences from the paper: by default the autoencoders are trained for 10 epochs (the paper:
100) with Adam at lr 1e-2, batches of 32 and no L2 weight penalty (the paper: 1e-9), which
takes well under a minute on the 4000 mnist5k training digits on a CPU; ``MagNet.fit`` gives
each of the k detectors the false-positive rate fpr/k, so the union rejects at most a
fraction fpr of the clean calibration data. MagNet's score (``MagNet.score``) folds the
detectors into one number so that a detector-aware attack
(``advex.defenses.detect.detector_aware_loss``) can descend it; Carlini & Wagner (2017,
arXiv:1711.08478) showed that such adaptive attacks defeat MagNet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from advex.attacks import checks
from advex.defenses.base import Defense, defend
from advex.defenses.detect import Detector, ScoreDetector
from advex.model import Classifier, as_classifier

__all__ = [
    "Autoencoder",
    "DivergenceDetector",
    "MagNet",
    "ReconstructionDetector",
    "Reformer",
    "train_autoencoder",
]

Structure = Literal["I", "II"]


class Autoencoder(nn.Module):
    """MagNet's MNIST autoencoders: 3×3 convolutions with 3 filters and sigmoid activations.

    * ``structure="I"`` (the paper's *Detector I & Reformer*, the default): conv σ → avg-pool 2
      → conv σ → conv σ → upsample 2 → conv σ → conv (to C channels) σ. Needs even H and W.
    * ``structure="II"`` (*Detector II*): conv σ → conv σ → conv (to C channels) σ.

    All convolutions pad by 1 ("same"); the sigmoid output lies in (0, 1), the pixel range.
    Weights are initialized like PyTorch's default (U(±1/√fan_in)) from a generator seeded
    with ``seed``, so construction does not touch the global random state.
    """

    def __init__(
        self, structure: Structure = "I", *, channels: int = 1, filters: int = 3, seed: int = 0
    ) -> None:
        super().__init__()
        checks.positive_int("channels", channels)
        checks.positive_int("filters", filters)
        c, k = channels, filters

        def conv(cin: int, cout: int) -> nn.Conv2d:  # initialized below, from our generator
            return skip_init(nn.Conv2d, cin, cout, kernel_size=3, padding=1)

        if structure == "I":
            layers: list[nn.Module] = [
                conv(c, k), nn.Sigmoid(), nn.AvgPool2d(2),
                conv(k, k), nn.Sigmoid(), conv(k, k), nn.Sigmoid(),
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(k, k), nn.Sigmoid(), conv(k, c), nn.Sigmoid(),
            ]  # fmt: skip
        elif structure == "II":
            layers = [conv(c, k), nn.Sigmoid(), conv(k, k), nn.Sigmoid(), conv(k, c), nn.Sigmoid()]
        else:
            raise ValueError(f"structure: expected 'I' or 'II', got {structure!r}")
        self.structure = structure
        self.channels = c
        self.net = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    bound = 1 / math.sqrt(m.in_channels * 9)
                    m.weight.uniform_(-bound, bound, generator=g)
                    assert m.bias is not None
                    m.bias.uniform_(-bound, bound, generator=g)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction AE(x), same shape as x (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x: expected (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        if self.structure == "I" and (x.shape[2] % 2 or x.shape[3] % 2):
            raise ValueError(f"x: structure I needs even H and W, got {tuple(x.shape[2:])}")
        return self.net(x)


def train_autoencoder(
    x_train: Tensor,
    *,
    structure: Structure = "I",
    epochs: int = 10,
    noise: float = 0.1,
    lr: float = 1e-2,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    filters: int = 3,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> Autoencoder:
    """Train a MagNet autoencoder on clean images ``x_train`` (B, C, H, W) in ``bounds``.

    Minimizes the MSE between AE(clip(x + noise·N(0, I))) and x with Adam (``lr``,
    ``weight_decay``) over ``epochs`` shuffled passes of ``batch_size``. The initialization, the
    shuffling and the noise come from generators seeded with ``seed``: the same call gives the
    same weights on the same machine (CPU). Returns the autoencoder in eval mode.
    """
    if not isinstance(x_train, Tensor) or x_train.ndim != 4 or not x_train.is_floating_point():
        raise ValueError("x_train: expected a float tensor of images (B, C, H, W)")
    if len(x_train) == 0:
        raise ValueError("x_train: empty")
    checks.positive_int("epochs", epochs)
    checks.positive_int("batch_size", batch_size)
    checks.non_negative("noise", noise)
    checks.positive("lr", lr)
    checks.non_negative("weight_decay", weight_decay)
    lo, hi = float(bounds[0]), float(bounds[1])
    ae = Autoencoder(structure, channels=x_train.shape[1], filters=filters, seed=seed)
    ae.to(x_train.device)
    ae.train()
    opt = torch.optim.Adam(ae.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(int(seed) + 1)
    x_train = x_train.detach()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(order), batch_size):
                x = x_train[order[i : i + batch_size].to(x_train.device)]
                eta = torch.randn(x.shape, generator=g).to(x)
                opt.zero_grad()
                loss = F.mse_loss(ae((x + noise * eta).clamp(lo, hi)), x)
                loss.backward()
                opt.step()
    ae.eval()
    return ae


class Reformer(Defense):
    """MagNet's reformer: x ↦ clip(AE(x), lo, hi). Deterministic and differentiable."""

    def __init__(self, autoencoder: nn.Module, *, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder: expected an nn.Module, got {type(autoencoder)}")
        self.autoencoder = autoencoder
        self.bounds = (float(bounds[0]), float(bounds[1]))

    def forward(self, x: Tensor) -> Tensor:
        """The reformed input, same shape as x."""
        return self.autoencoder(x).clamp(*self.bounds)


class ReconstructionDetector(ScoreDetector):
    """MagNet's reconstruction-error detector: score(x) = mean_i |x − AE(x)|_i^p (p = 1, 2)."""

    def __init__(self, autoencoder: nn.Module, *, p: int = 1, batch_size: int = 500) -> None:
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder: expected an nn.Module, got {type(autoencoder)}")
        if p not in (1, 2) or isinstance(p, bool):
            raise ValueError(f"p: expected 1 or 2, got {p!r}")
        self.autoencoder = autoencoder
        self.p = p
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.threshold = None

    def score(self, x: Tensor) -> Tensor:
        """(B,) mean reconstruction error |x − AE(x)|^p over the pixels; differentiable."""
        diff = (x - self.autoencoder(x)).abs()
        return diff.pow(self.p).flatten(1).mean(1)

    def fit(self, x_clean: Tensor, fpr: float = 0.01) -> ReconstructionDetector:
        """Set the threshold at false-positive rate ``fpr`` on clean validation data."""
        self.calibrate(x_clean, fpr)
        return self


class DivergenceDetector(ScoreDetector):
    """MagNet's probability-divergence detector.

    score(x) = JSD(P ‖ Q), P = softmax(f(x)/T), Q = softmax(f(AE(x))/T):
    ½ KL(P ‖ M) + ½ KL(Q ‖ M), M = (P + Q)/2, computed from log-probabilities (stable). A high
    temperature T (MagNet: 10 and 40) keeps the softmax from saturating.
    """

    def __init__(
        self,
        model: nn.Module,
        autoencoder: nn.Module,
        *,
        temperature: float = 10.0,
        batch_size: int = 500,
    ) -> None:
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder: expected an nn.Module, got {type(autoencoder)}")
        self.model: Classifier = as_classifier(model)
        self.autoencoder = autoencoder
        self.temperature = checks.positive("temperature", temperature)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.threshold = None

    def score(self, x: Tensor) -> Tensor:
        """(B,) Jensen–Shannon divergence (nats) between the tempered softmax outputs."""
        t = self.temperature
        with self.model.attacking():
            log_p = F.log_softmax(self.model(x) / t, dim=1)
            log_q = F.log_softmax(self.model(self.autoencoder(x)) / t, dim=1)
        log_m = torch.logaddexp(log_p, log_q) - math.log(2)
        kl_p = (log_p.exp() * (log_p - log_m)).sum(1)
        kl_q = (log_q.exp() * (log_q - log_m)).sum(1)
        return (0.5 * (kl_p + kl_q)).clamp_min(0)

    def fit(self, x_clean: Tensor, fpr: float = 0.01) -> DivergenceDetector:
        """Set the threshold at false-positive rate ``fpr`` on clean validation data."""
        self.calibrate(x_clean, fpr)
        return self


class MagNet(ScoreDetector):
    """The deployed MagNet pipeline: detectors on the input, then ``model(reformer(x))``.

    ``classifier`` is the deployed classifier model ∘ reformer (an ``advex.Classifier``, the
    model to attack). As a detector, MagNet rejects x when any detector fires; its score is the
    largest relative excess over the thresholds, max_i (s_i(x) − t_i)/|t_i|, with threshold 0
    (so ``detect`` = any detector fires, and an adaptive attack can descend one number).
    """

    def __init__(
        self,
        model: nn.Module,
        reformer: nn.Module,
        detectors: Sequence[Detector],
        *,
        batch_size: int = 500,
    ) -> None:
        if not isinstance(reformer, nn.Module):
            raise TypeError(f"reformer: expected an nn.Module, got {type(reformer).__name__}")
        detectors = tuple(detectors)
        if not detectors:
            raise ValueError("detectors: give at least one detector")
        for i, d in enumerate(detectors):
            if not isinstance(d, Detector):
                raise TypeError(f"detectors[{i}]: expected an advex detector, got {type(d)}")
        self.model: Classifier = as_classifier(model)
        self.reformer = reformer
        self.detectors = detectors
        self.classifier: Classifier = defend(self.model, reformer)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.threshold = 0.0 if all(d.threshold is not None for d in detectors) else None

    def fit(self, x_clean: Tensor, fpr: float = 0.01) -> MagNet:
        """Calibrate every detector at false-positive rate fpr/k on clean validation data."""
        self.calibrate(x_clean, fpr)
        return self

    def calibrate(self, x_clean: Tensor, fpr: float) -> float:
        """Give each of the k detectors the false-positive rate fpr/k (union ≤ fpr)."""
        if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 <= fpr < 1:
            raise ValueError(f"fpr: expected a false-positive rate in [0, 1), got {fpr!r}")
        for d in self.detectors:
            d.calibrate(x_clean, fpr / len(self.detectors))
        self.threshold = 0.0
        return self.threshold

    def score(self, x: Tensor) -> Tensor:
        """(B,) max_i (s_i(x) − t_i)/|t_i|: > 0 exactly when some detector fires."""
        excess = []
        for i, d in enumerate(self.detectors):
            if d.threshold is None:
                raise RuntimeError(f"MagNet: detectors[{i}] has no threshold; call fit first")
            t = float(d.threshold)
            excess.append((d.score(x) - t) / max(abs(t), 1e-12))
        return torch.stack(excess).amax(dim=0)

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(labels (B,) of model(reformer(x)), rejected (B,) bool), without gradients."""
        return self.classifier.predict(x), self.detect(x)
