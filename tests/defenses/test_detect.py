"""Feinman et al.'s KD+BU detector, ROC AUC, and the naive-vs-detector-aware evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks import FGSM, PGD
from advex.attacks.losses import margin
from advex.defenses.detect import (
    DetectionReport,
    Detector,
    KDBUDetector,
    detector_aware_loss,
    dropout_masks,
    evaluate_detector,
    log_kernel_density,
    matched_noise,
    mc_dropout_uncertainty,
    roc_auc,
    threshold_at_fpr,
)
from advex.model import Classifier

THREAT = ThreatModel("linf", 0.3)


# ----- ROC AUC and thresholds ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(seed)
    neg = torch.randint(0, 6, (40,), generator=g).float()  # few distinct values: many ties
    pos = torch.randint(2, 9, (25,), generator=g).float()
    labels = [0] * len(neg) + [1] * len(pos)
    expected = roc_auc_score(labels, torch.cat([neg, pos]).numpy())
    assert roc_auc(neg, pos) == pytest.approx(expected, abs=1e-12)
    # the definition: P(s+ > s-) + P(s+ = s-)/2
    brute = (pos[None] > neg[:, None]).double() + 0.5 * (pos[None] == neg[:, None]).double()
    assert roc_auc(neg, pos) == pytest.approx(float(brute.mean()), abs=1e-12)


def test_roc_auc_extremes() -> None:
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="scores_negative"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="scores_positive"):
        roc_auc([1.0], [[1.0]])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([math.nan], [1.0])


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.29])
def test_threshold_flags_the_stated_fraction(fpr: float) -> None:
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    t = threshold_at_fpr(scores, fpr)
    assert int((scores > t).sum()) == math.floor(fpr * 1000 + 1e-9)
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="fpr"):
            threshold_at_fpr(scores, bad)


# ----- kernel density and Bayesian uncertainty ----------------------------------------------
def test_log_kernel_density_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ref = torch.randn(7, 3, generator=g, dtype=torch.float64)
    sigma = 0.7
    got = log_kernel_density(phi, ref, sigma)
    for i in range(5):
        kd = sum(math.exp(-float(((phi[i] - r) ** 2).sum()) / sigma**2) for r in ref) / 7
        assert float(got[i]) == pytest.approx(math.log(kd), rel=1e-10)
    mask = torch.rand(5, 7, generator=g) < 0.5
    mask[:, 0] = True
    got = log_kernel_density(phi, ref, sigma, mask=mask)
    for i in range(5):
        kept = ref[mask[i]]
        kd = sum(math.exp(-float(((phi[i] - r) ** 2).sum()) / sigma**2) for r in kept) / len(kept)
        assert float(got[i]) == pytest.approx(math.log(kd), rel=1e-10)


def test_log_kernel_density_does_not_underflow() -> None:
    phi, ref = torch.full((1, 2), 100.0), torch.zeros(3, 2)
    # exp(−20000) underflows to 0; the log-density is −20000 exactly
    assert float(log_kernel_density(phi, ref, 1.0)) == pytest.approx(-20000.0)


def test_mc_dropout_uncertainty_equals_its_formula() -> None:
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(6, 4).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(4, 6, generator=g, dtype=torch.float64))
    phi = torch.randn(3, 6, generator=g, dtype=torch.float64)
    masks = dropout_masks(5, 6, 0.5, generator=g).double()
    assert set(masks.unique().tolist()) <= {0.0, 2.0}
    got = mc_dropout_uncertainty(phi, head, masks).detach()
    for i in range(3):
        with torch.no_grad():
            probs = [torch.softmax(head(m * phi[i]), dim=0) for m in masks]
        mean = sum(probs) / len(probs)
        u = sum(float(p @ p) for p in probs) / len(probs) - float(mean @ mean)
        assert float(got[i]) == pytest.approx(u, abs=1e-12)
    assert bool((got > 0).all())
    no_dropout = dropout_masks(5, 6, 0.0, generator=g).double()
    # every pass is the same network: U = 0 (to float64 rounding)
    assert float(mc_dropout_uncertainty(phi, head, no_dropout).detach().abs().max()) < 1e-15


def test_dropout_masks_follow_the_generator() -> None:
    a = dropout_masks(4, 10, 0.3, generator=torch.Generator().manual_seed(5))
    b = dropout_masks(4, 10, 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="p"):
        dropout_masks(4, 10, 1.0)
    with pytest.raises(ValueError, match="passes"):
        dropout_masks(0, 10, 0.5)


# ----- the detector on the zoo CNN ----------------------------------------------------------
@dataclass(frozen=True)
class Fitted:
    clf: Classifier
    detector: KDBUDetector
    x_train: Tensor
    y_train: Tensor
    x_fit: Tensor  # clean points the threshold was set on
    x: Tensor  # held-out evaluation points
    y: Tensor


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    """mnist_cnn, a KD+BU detector fitted on PGD points of 150 test images (1000 train
    references), and 150 other test images to evaluate on."""
    torch.set_num_threads(1)
    clf = zoo.load("mnist_cnn")
    x_train, y_train = data.load("mnist5k", split="train")
    x_test, y_test = data.load("mnist5k", split="test")
    x_train, y_train = x_train[:1000], y_train[:1000]
    x_fit, y_fit = x_test[:150], y_test[:150]
    result = PGD(THREAT, steps=20, seed=0)(clf, x_fit, y_fit)
    broken = result.success
    x_noisy = matched_noise(x_fit, result.x_adv, seed=1)
    detector = KDBUDetector(clf).fit(
        x_train, y_train, x_fit[broken], x_noisy[broken], result.x_adv[broken], fpr=0.05
    )
    return Fitted(clf, detector, x_train, y_train, x_fit[broken], x_test[150:300], y_test[150:300])


def _relu3(clf: Classifier, x: Tensor) -> Tensor:
    """The output of MnistCNN's relu3 (the last hidden layer), by running the layers by hand."""
    m = clf.module
    h = m.pool2(m.relu2(m.conv2(m.pool1(m.relu1(m.conv1(x))))))
    return m.relu3(m.fc1(m.flatten(h)))


def test_kd_equals_brute_force_on_the_model_features(fitted: Fitted) -> None:
    det, clf = fitted.detector, fitted.clf
    x = fitted.x[:4]
    with torch.no_grad():
        phi = _relu3(clf, x).double()
        ref = _relu3(clf, fitted.x_train).double()
        pred = clf(x).argmax(1)
        kd = det.characteristics(x)[:, 0]
    assert det.reference is not None
    assert torch.allclose(det.reference.double(), ref, atol=1e-4)
    for i in range(4):
        same = ref[fitted.y_train == pred[i]]
        d2 = ((same - phi[i]) ** 2).sum(1)
        expected = torch.logsumexp(-d2 / 1.2**2, 0) - math.log(len(same))
        assert float(kd[i]) == pytest.approx(float(expected), rel=1e-4)


def test_feature_sources_agree(fitted: Fitted) -> None:
    """Default (input of the last Linear), the layer name 'relu3' and a callable: same φ."""
    clf, x = fitted.clf, fitted.x[:8]
    by_default = KDBUDetector(clf).logits_and_features(x)[1]
    by_name = KDBUDetector(clf, features="relu3").logits_and_features(x)[1]
    by_callable = KDBUDetector(
        clf, features=lambda v: _relu3(clf, v), head=clf.module.fc2
    ).logits_and_features(x)[1]
    assert torch.allclose(by_default, by_name)
    assert torch.allclose(by_default, by_callable, atol=1e-5)


def test_detector_rejects_bad_settings(fitted: Fitted) -> None:
    clf = fitted.clf
    with pytest.raises(ValueError, match="features"):
        KDBUDetector(clf, features="no_such_layer")
    with pytest.raises(ValueError, match="features"):
        KDBUDetector(nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU()))
    with pytest.raises(ValueError, match="head"):
        KDBUDetector(clf, features=lambda v: v.flatten(1))
    with pytest.raises(ValueError, match="head"):
        KDBUDetector(clf, features="relu2")  # not the layer feeding fc2: no default head
    with pytest.raises(ValueError, match="dropout"):
        KDBUDetector(clf, dropout=1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        KDBUDetector(clf, bandwidth=0.0)
    unfitted = KDBUDetector(clf)
    with pytest.raises(RuntimeError, match="fit"):
        unfitted.score(fitted.x[:2])
    with pytest.raises(RuntimeError, match="fit"):
        unfitted.detect(fitted.x[:2])
    with pytest.raises(ValueError, match="y_train"):
        unfitted.fit(fitted.x_train[:50], fitted.y_train[:50] * 0, *(fitted.x[:5],) * 3)


def test_detector_is_a_detector_and_deterministic(fitted: Fitted) -> None:
    det = fitted.detector
    assert isinstance(det, Detector)
    again = KDBUDetector(fitted.clf)
    pgd = PGD(THREAT, steps=5, seed=0)(fitted.clf, fitted.x[:40], fitted.y[:40])
    noisy = matched_noise(fitted.x[:40], pgd.x_adv, seed=1)
    a = again.fit(fitted.x_train, fitted.y_train, fitted.x[:40], noisy, pgd.x_adv)
    b = KDBUDetector(fitted.clf).fit(
        fitted.x_train, fitted.y_train, fitted.x[:40], noisy, pgd.x_adv
    )
    assert a.weight is not None and b.weight is not None
    assert torch.equal(a.weight, b.weight) and a.threshold == b.threshold
    first = a.weight.clone()
    a.fit(fitted.x_train, fitted.y_train, fitted.x[:40], noisy, pgd.x_adv)  # refit: same masks
    assert torch.equal(a.weight, first)
    assert torch.equal(det.scores(fitted.x[:10]), det.scores(fitted.x[:10]))
    # a sample's score does not depend on the batch it is in (masks are shared)
    assert torch.allclose(det.scores(fitted.x[:10])[3:4], det.scores(fitted.x[3:4]), atol=1e-5)


def test_threshold_gives_the_stated_fpr_on_its_data(fitted: Fitted) -> None:
    det = fitted.detector
    n = len(fitted.x_fit)
    flagged = int(det.detect(fitted.x_fit).sum())
    assert flagged == math.floor(0.05 * n + 1e-9)
    det2 = KDBUDetector(fitted.clf)
    det2.__dict__.update(det.__dict__)
    det2.calibrate(fitted.x, 0.1)
    assert int(det2.detect(fitted.x).sum()) == math.floor(0.1 * len(fitted.x) + 1e-9)


def test_score_is_differentiable(fitted: Fitted) -> None:
    x = fitted.x[:3].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fitted.detector.score(x).sum(), x)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_matched_noise_has_the_perturbation_size() -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * torch.rand(6, 1, 8, 8, generator=g)
    x_adv = x + 0.05 * torch.randn(6, 1, 8, 8, generator=g)
    noisy = matched_noise(x, x_adv, seed=3)
    assert torch.equal(noisy, matched_noise(x, x_adv, seed=3))
    assert torch.allclose(
        (noisy - x).flatten(1).norm(dim=1), (x_adv - x).flatten(1).norm(dim=1), rtol=1e-4
    )
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1


# ----- naive vs detector-aware attacks ------------------------------------------------------
def test_naive_attacks_are_detected(fitted: Fitted) -> None:
    """Measured: PGD AUC 0.93, FGSM AUC 0.90 (ε = 0.3, 150 held-out images)."""
    for attack, floor in ((PGD(THREAT, steps=20, seed=0), 0.85), (FGSM(THREAT), 0.8)):
        report = evaluate_detector(fitted.clf, fitted.detector, attack, fitted.x, fitted.y)
        assert report.naive.auc > floor
        assert report.naive.attack_success_rate > 0.8
        assert report.naive.robust_accuracy_with_detection > report.naive.robust_accuracy


def test_detector_aware_attack_evades_the_detector(fitted: Fitted) -> None:
    """The gap: a detector-aware PGD (Carlini & Wagner 2017) drives the detection rate from
    0.23 to 0.014 and the robust accuracy with detection from 0.23 to 0.013 (measured on
    150 held-out digits, L∞ ε = 0.3; clean FPR 0.047 at the threshold set for 0.05)."""
    det = fitted.detector
    naive = PGD(THREAT, steps=20, seed=0)
    with detector_aware_loss(det) as loss:
        adaptive = PGD(THREAT, steps=20, loss=loss, early_stop=False, seed=0)
        report = evaluate_detector(
            fitted.clf, det, naive, fitted.x, fitted.y, adaptive_attack=adaptive
        )
    assert isinstance(report, DetectionReport) and report.adaptive is not None
    naive_out, adaptive_out = report.naive, report.adaptive
    assert report.clean_accuracy > 0.95 and report.fpr <= 0.1
    assert naive_out.detection_rate > 0.15
    assert adaptive_out.detection_rate < naive_out.detection_rate - 0.12
    assert adaptive_out.auc < naive_out.auc - 0.1  # 0.75 vs 0.93: the hinge stops below t
    assert (
        adaptive_out.robust_accuracy_with_detection
        < naive_out.robust_accuracy_with_detection - 0.12
    )
    # still misclassified: the attack evades the detector, it does not give up
    assert adaptive_out.attack_success_rate > 0.8
    assert report.robust_accuracy_with_detection <= min(
        naive_out.robust_accuracy_with_detection, adaptive_out.robust_accuracy_with_detection
    )


def test_detector_aware_loss_checks_where_its_logits_come_from(fitted: Fitted) -> None:
    clf, det = fitted.clf, fitted.detector
    loss = detector_aware_loss(det, 2.0, slack=0.5)
    plain = detector_aware_loss(det, 2.0, slack=math.inf, kappa=1.0)
    x, y = fitted.x[:4], fitted.y[:4]
    logits = clf(x)
    value = loss(logits, y, None)
    linear = plain(clf(x), y, None)  # each loss reads the input of the latest forward pass
    assert det.threshold is not None
    hinge = (det.score(x) - det.threshold + 0.5).clamp_min(0)
    assert torch.allclose(value, margin(logits, y) - 2 * hinge, atol=1e-4)
    assert torch.allclose(linear, margin(logits, y).clamp(max=1) - 2 * det.score(x), atol=1e-4)
    plain.close()
    with pytest.raises(RuntimeError, match="watched"):
        loss(logits.clone(), y, None)
    loss.close()
    assert not clf._forward_hooks
    with pytest.raises(TypeError, match="model"):
        detector_aware_loss(_NoClassifier(), 1.0)
    with pytest.raises(ValueError, match="weight"):
        detector_aware_loss(det, -1.0)


class _NoClassifier:
    threshold = 0.0

    def score(self, x: Tensor) -> Tensor:
        return x.flatten(1).sum(1)

    def detect(self, x: Tensor) -> Tensor:
        return self.score(x) > 0

    def calibrate(self, x_clean: Tensor, fpr: float) -> float:
        return 0.0


def test_evaluate_detector_rejects_bad_input(fitted: Fitted) -> None:
    attack = FGSM(THREAT)
    with pytest.raises(TypeError, match="detector"):
        evaluate_detector(fitted.clf, object(), attack, fitted.x, fitted.y)
    with pytest.raises(ValueError, match="y"):
        evaluate_detector(fitted.clf, fitted.detector, attack, fitted.x, fitted.y[:3])
    with pytest.raises(ValueError, match="calibrated"):
        evaluate_detector(fitted.clf, KDBUDetector(fitted.clf), attack, fitted.x, fitted.y)
