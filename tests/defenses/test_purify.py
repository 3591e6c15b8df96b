"""MagNet: the autoencoders, the reformer, the reconstruction and divergence detectors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks import PGD
from advex.defenses.base import Defense, defend, is_nondifferentiable, is_randomized
from advex.defenses.detect import Detector, detector_aware_loss, evaluate_detector, roc_auc
from advex.defenses.purify import (
    Autoencoder,
    DivergenceDetector,
    MagNet,
    ReconstructionDetector,
    Reformer,
    train_autoencoder,
)
from advex.model import Classifier


@dataclass(frozen=True)
class Setup:
    clf: Classifier
    ae: Autoencoder
    x_train: Tensor
    x_val: Tensor  # clean data the thresholds are set on
    x: Tensor  # held-out test points
    y: Tensor


@pytest.fixture(scope="module")
def setup() -> Setup:
    """mnist_cnn and a structure-II autoencoder trained 3 epochs on 1000 mnist5k images (~1 s)."""
    torch.set_num_threads(1)
    clf = zoo.load("mnist_cnn")
    x_train, _ = data.load("mnist5k", split="train")
    x_test, y_test = data.load("mnist5k", split="test")
    ae = train_autoencoder(x_train[:1000], structure="II", epochs=3, lr=3e-2, batch_size=32, seed=0)
    return Setup(clf, ae, x_train[:1000], x_test[:300], x_test[300:500], y_test[300:500])


# ----- autoencoders ---------------------------------------------------------------------------
@pytest.mark.parametrize(("structure", "params"), [("I", 30 + 3 * 84 + 28), ("II", 30 + 84 + 28)])
def test_autoencoder_structures(structure: str, params: int) -> None:
    ae = Autoencoder(structure, seed=0)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ae(x)
    assert out.shape == x.shape and float(out.min()) > 0 and float(out.max()) < 1
    assert sum(p.numel() for p in ae.parameters()) == params
    convs = [m for m in ae.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert all(c.out_channels == 3 for c in convs[:-1]) and convs[-1].out_channels == 1


def test_autoencoder_init_is_seeded_without_the_global_generator() -> None:
    state = torch.get_rng_state()
    a, b, c = Autoencoder(seed=4), Autoencoder(seed=4), Autoencoder(seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.state_dict()["net.0.weight"], c.state_dict()["net.0.weight"])


def test_autoencoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="structure"):
        Autoencoder("III")
    with pytest.raises(ValueError, match="filters"):
        Autoencoder(filters=0)
    with pytest.raises(ValueError, match="even"):
        Autoencoder("I")(torch.rand(1, 1, 7, 7))
    with pytest.raises(ValueError, match="x"):
        Autoencoder(channels=3)(torch.rand(1, 1, 8, 8))
    assert Autoencoder("II")(torch.rand(1, 1, 7, 7)).shape == (1, 1, 7, 7)


def test_train_autoencoder_is_deterministic_and_learns(setup: Setup) -> None:
    x = setup.x_train[:128]
    a = train_autoencoder(x, structure="I", epochs=1, batch_size=32, seed=3)
    b = train_autoencoder(x, structure="I", epochs=1, batch_size=32, seed=3)
    c = train_autoencoder(x, structure="I", epochs=1, batch_size=32, seed=4)
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.state_dict()["net.0.weight"], c.state_dict()["net.0.weight"])
    assert not a.training
    # the fixture's autoencoder reconstructs held-out digits far better than its initialization
    with torch.no_grad():
        trained = F.mse_loss(setup.ae(setup.x), setup.x)
        initial = F.mse_loss(Autoencoder("II", seed=0)(setup.x), setup.x)
    assert float(trained) < 0.25 * float(initial)


def test_train_autoencoder_rejects_bad_settings() -> None:
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="epochs"):
        train_autoencoder(x, epochs=0)
    with pytest.raises(ValueError, match="noise"):
        train_autoencoder(x, noise=-0.1)
    with pytest.raises(ValueError, match="lr"):
        train_autoencoder(x, lr=0.0)
    with pytest.raises(ValueError, match="x_train"):
        train_autoencoder(torch.rand(4, 8, 8))


# ----- reformer -------------------------------------------------------------------------------
def test_reformer_is_deterministic_differentiable_and_in_bounds(setup: Setup) -> None:
    reformer = Reformer(setup.ae, bounds=(0.2, 0.8))
    assert isinstance(reformer, Defense)
    assert not reformer.randomized and reformer.differentiable
    x = setup.x[:16].clone().requires_grad_(True)
    out = reformer(x)
    assert torch.equal(out, reformer(x))
    assert bool((out >= torch.tensor(0.2)).all()) and bool((out <= torch.tensor(0.8)).all())
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert float(grad.abs().sum()) > 0
    model = defend(setup.clf, Reformer(setup.ae))
    assert not is_randomized(model) and not is_nondifferentiable(model)


def test_reformer_keeps_clean_accuracy(setup: Setup) -> None:
    """Measured on these 200 digits: 0.945 with the reformer (the model alone: 0.975)."""
    model = defend(setup.clf, Reformer(setup.ae))
    accuracy = float((model.predict(setup.x) == setup.y).float().mean())
    assert accuracy > 0.9


# ----- detectors ------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
def test_reconstruction_score_formula(setup: Setup, p: int) -> None:
    det = ReconstructionDetector(setup.ae, p=p)
    x = setup.x[:5]
    with torch.no_grad():
        expected = ((x - setup.ae(x)).abs() ** p).mean(dim=(1, 2, 3))
        assert torch.allclose(det.score(x), expected)
    assert bool((ReconstructionDetector(nn.Identity(), p=p).scores(x) == 0).all())
    with pytest.raises(ValueError, match="p"):
        ReconstructionDetector(setup.ae, p=3)


def test_reconstruction_detector_flags_noise_not_clean(setup: Setup) -> None:
    """Measured on 200 held-out digits: clean 0.5 % flagged, Gaussian noise σ = 0.3: 100 %."""
    det = ReconstructionDetector(setup.ae, p=1).fit(setup.x_val, fpr=0.02)
    assert isinstance(det, Detector)
    # the threshold gives the stated FPR on the data it was set on
    assert int(det.detect(setup.x_val).sum()) == math.floor(0.02 * len(setup.x_val))
    g = torch.Generator().manual_seed(0)
    noisy = (setup.x + 0.3 * torch.randn(setup.x.shape, generator=g)).clamp(0, 1)
    clean_rate = float(det.detect(setup.x).float().mean())
    noise_rate = float(det.detect(noisy).float().mean())
    assert clean_rate < 0.06 and noise_rate > 0.9
    assert roc_auc(det.scores(setup.x), det.scores(noisy)) > 0.95


def test_divergence_is_the_jensen_shannon_divergence(setup: Setup) -> None:
    det = DivergenceDetector(setup.clf, setup.ae, temperature=10.0)
    x = setup.x[:6]
    with torch.no_grad():
        p = F.softmax(setup.clf(x).double() / 10, dim=1)
        q = F.softmax(setup.clf(setup.ae(x)).double() / 10, dim=1)
        m = (p + q) / 2
        jsd = 0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)
        assert torch.allclose(det.score(x).double(), jsd, atol=1e-6)
    assert bool((det.scores(x) >= 0).all())
    same = DivergenceDetector(setup.clf, nn.Identity()).scores(x)
    assert float(same.abs().max()) < 1e-6
    with pytest.raises(ValueError, match="temperature"):
        DivergenceDetector(setup.clf, setup.ae, temperature=0.0)
    with pytest.raises(RuntimeError, match="fit"):
        det.detect(x)


# ----- the pipeline -----------------------------------------------------------------------------
def _magnet(setup: Setup) -> MagNet:
    detectors = [
        ReconstructionDetector(setup.ae, p=1),
        DivergenceDetector(setup.clf, setup.ae, temperature=10.0),
    ]
    return MagNet(setup.clf, Reformer(setup.ae), detectors).fit(setup.x_val, fpr=0.02)


def test_magnet_rejects_when_any_detector_fires(setup: Setup) -> None:
    magnet = _magnet(setup)
    assert isinstance(magnet, Detector) and magnet.threshold == 0.0
    g = torch.Generator().manual_seed(1)
    x = torch.cat([setup.x[:50], (setup.x[:50] + 0.2 * torch.randn(50, 1, 28, 28, generator=g))])
    x = x.clamp(0, 1)
    fired = torch.stack([d.detect(x) for d in magnet.detectors]).any(dim=0)
    assert torch.equal(magnet.detect(x), fired)
    assert 0 < int(fired.sum()) < len(x)
    labels, rejected = magnet.classify(x)
    with torch.no_grad():
        expected = setup.clf(magnet.reformer(x)).argmax(1)
    assert torch.equal(labels, expected) and torch.equal(rejected, fired)
    # each of the k detectors gets fpr/k: the union stays within fpr on the calibration data
    assert float(magnet.detect(setup.x_val).float().mean()) <= 0.02
    with pytest.raises(ValueError, match="detectors"):
        MagNet(setup.clf, Reformer(setup.ae), [])
    with pytest.raises(TypeError, match="detectors"):
        MagNet(setup.clf, Reformer(setup.ae), [object()])
    with pytest.raises(RuntimeError, match="fit"):
        MagNet(setup.clf, Reformer(setup.ae), [ReconstructionDetector(setup.ae)]).score(x)


def test_detector_aware_attack_breaks_magnet(setup: Setup) -> None:
    """PGD on model ∘ reformer at L∞ ε = 0.3: the naive attack misclassifies almost every digit
    but every one is rejected (robust accuracy with detection 0.96 on 80 digits); the
    detector-aware PGD (Carlini & Wagner 2017) evades the detectors: detection rate 1.0 →
    0.013, robust accuracy with detection 0.96 → 0.025 (measured)."""
    magnet = _magnet(setup)
    threat = ThreatModel("linf", 0.3)
    x, y = setup.x[:80], setup.y[:80]
    with detector_aware_loss(magnet) as loss:
        adaptive = PGD(threat, steps=40, loss=loss, early_stop=False, seed=0)
        report = evaluate_detector(
            magnet.classifier, magnet, PGD(threat, steps=20, seed=0), x, y, adaptive_attack=adaptive
        )
    assert report.adaptive is not None
    assert report.naive.attack_success_rate > 0.8 and report.naive.detection_rate > 0.9
    assert report.naive.robust_accuracy_with_detection > 0.85
    assert report.adaptive.detection_rate < 0.3
    assert (
        report.adaptive.robust_accuracy_with_detection
        < report.naive.robust_accuracy_with_detection - 0.5
    )
