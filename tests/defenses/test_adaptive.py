"""BPDA, EOT, adapt and Adaptive (Athalye, Carlini, Wagner 2018): exact forward passes, the
gradients they stand for, a user's model left alone, and the gap to naive attacks they close."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advex import data, zoo
from advex.attacks import PGD
from advex.attacks.ensemble import Ensemble, EnsembleResult
from advex.defenses.adaptive import BPDA, EOT, Adaptive, _stream, adapt, needs_adapting
from advex.defenses.base import Defense, defend
from advex.defenses.base import seed as seed_defenses
from advex.defenses.randomized import random_self_ensemble
from advex.defenses.transforms import JPEG, BitDepth, GaussianNoise, RandomTranslate, ResizePad
from advex.model import Classifier
from advex.result import ball_tolerance
from advex.threat import ThreatModel


# ----- tiny defenses of our own --------------------------------------------------------------
class Round(Defense):
    """Rounds to ``levels`` values; its stand-in s(x) = 2x has gradient 2 (not the identity's)."""

    differentiable = False

    def __init__(self, levels: int = 2) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        k = self.levels - 1
        return torch.round(x * k) / k

    def backward_surrogate(self, x: Tensor) -> Tensor:
        return 2 * x


class Noise(Defense):
    """x + σ·z with z from the defense's own generator."""

    randomized = True

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sigma * self.randn(*x.shape, like=x)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


@pytest.fixture
def x() -> Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(6, 1, 8, 8, generator=g)


@pytest.fixture(scope="module")
def mnist() -> tuple[Classifier, Tensor, Tensor]:
    x, y = data.load("mnist5k", split="test")
    return zoo.load("mnist_cnn"), x, y


def _grad(model: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    point = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((model(point) * w).sum(), point)
    return g


# ----- BPDA ----------------------------------------------------------------------------------
def test_bpda_forward_is_the_defense_exactly_and_its_gradient_the_surrogates(x: Tensor) -> None:
    d = Round(levels=5)
    w = torch.randn_like(x)
    for backward, slope in (("surrogate", 2.0), ("identity", 1.0)):
        b = BPDA(d, backward)
        point = x.clone().requires_grad_(True)
        out = b(point)
        assert torch.equal(out, d(x))
        (g,) = torch.autograd.grad((out * w).sum(), point)
        assert torch.allclose(g, slope * w)
    squared = BPDA(d, lambda t: t**2)
    assert torch.allclose(_grad(squared, x, w), 2 * x * w)
    with torch.no_grad():
        assert torch.equal(squared(x), d(x))
    assert b.defense is d  # shared, not copied


def test_bpda_through_jpeg_uses_its_smooth_codec(x: Tensor) -> None:
    jpeg = JPEG(quality=50)
    w = torch.randn_like(x)
    b = BPDA(jpeg)
    point = x.clone().requires_grad_(True)
    assert torch.equal(b(point), jpeg(x))
    assert torch.allclose(_grad(b, x, w), _grad(jpeg.backward_surrogate, x, w))
    assert _grad(jpeg, x, w).abs().max() == 0  # what the naive attack sees


def test_bpda_rejects_bad_arguments(x: Tensor) -> None:
    with pytest.raises(ValueError, match="backward"):
        BPDA(Round(), "straight")
    with pytest.raises(TypeError, match="backward"):
        BPDA(Round(), 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="defense"):
        BPDA(lambda t: t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        BPDA(Round(), lambda t: t[:, :, :4]).forward(x.clone().requires_grad_(True))


# ----- EOT -----------------------------------------------------------------------------------
def test_eot_of_one_draw_is_one_forward_pass(x: Tensor) -> None:
    model = nn.Sequential(Noise(0.3), _net())
    seed_defenses(model, 7)
    one = model(x)
    seed_defenses(model, 7)
    assert torch.equal(EOT(model, 1)(x), one)


def test_eot_of_a_deterministic_model_is_the_model(x: Tensor) -> None:
    net = _net()
    assert torch.allclose(EOT(net, 7)(x), net(x), atol=1e-6)
    assert torch.allclose(EOT(net, 7, chunk=3)(x), net(x), atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_eot_gradient_is_the_mean_of_per_draw_gradients(x: Tensor, chunk: int | None) -> None:
    model = nn.Sequential(Noise(0.3), _net())
    k = 4
    w = torch.randn(x.shape[0], 10)
    seed_defenses(model, 11)
    eot = EOT(model, k, chunk=chunk)
    got = _grad(eot, x, w)
    after_eot = model[0].generator.get_state()
    # the same draws, one at a time: pass i on the batch, or one pass on the repeated batch
    seed_defenses(model, 11)
    if chunk == 1:
        expected = torch.stack([_grad(model, x, w) for _ in range(k)]).mean(dim=0)
    else:
        per = chunk or k
        parts = []
        for _ in range(k // per):
            point = x.clone().requires_grad_(True)
            z = model(point.repeat(per, 1, 1, 1)).reshape(per, x.shape[0], 10)
            (g,) = torch.autograd.grad((z * w).sum(), point)
            parts.append(g)
        expected = torch.stack(parts).sum(dim=0) / k
    assert torch.allclose(got, expected, atol=1e-6)
    # recomputing chunks on the backward pass replays their draws and leaves the stream as is
    assert torch.equal(after_eot, model[0].generator.get_state())
    # and differs from one draw's gradient
    seed_defenses(model, 11)
    assert not torch.allclose(got, _grad(model, x, w), atol=1e-4)


def test_eot_averages_logits_over_independent_draws(x: Tensor) -> None:
    model = nn.Sequential(Noise(0.3), _net())
    seed_defenses(model, 3)
    z = model(x.repeat(5, 1, 1, 1)).reshape(5, x.shape[0], 10)
    seed_defenses(model, 3)
    assert torch.allclose(EOT(model, 5)(x), z.mean(dim=0), atol=1e-6)
    assert not torch.allclose(z[0], z[1])


def test_eot_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="samples"):
        EOT(_net(), 0)
    with pytest.raises(ValueError, match="chunk"):
        EOT(_net(), 3, chunk=0)
    with pytest.raises(TypeError, match="model"):
        EOT("net", 3)  # type: ignore[arg-type]


# ----- adapt ---------------------------------------------------------------------------------
def test_adapt_leaves_the_users_model_alone(x: Tensor) -> None:
    net = _net()
    rounding, noise = Round(levels=5), Noise(0.2)
    deployed = defend(Classifier(net, num_classes=10, bounds=(0.0, 1.0)), rounding, noise)
    modules = list(deployed.modules())
    children = [list(m.children()) for m in modules]
    state = {k: v.clone() for k, v in deployed.state_dict().items()}
    view = adapt(deployed, eot_samples=3)
    assert list(deployed.modules()) == modules
    assert [list(m.children()) for m in modules] == children
    assert not any(isinstance(m, BPDA | EOT) for m in deployed.modules())
    assert all(torch.equal(v, state[k]) for k, v in deployed.state_dict().items())
    assert [id(p) for p in view.parameters()] == [id(p) for p in deployed.parameters()]
    # the view: the rounding behind BPDA (the same defense object), the whole in EOT
    assert isinstance(view.module, EOT) and view.module.samples == 3
    (bpda,) = [m for m in view.modules() if isinstance(m, BPDA)]
    assert bpda.defense is rounding
    assert any(m is noise for m in view.modules())
    assert view.bounds == deployed.bounds and view.num_classes == 10
    # adapting a view again changes nothing; a model without such defenses is returned as is
    assert adapt(view, eot_samples=3) is view
    plain = Classifier(net)
    assert adapt(plain) is plain and not needs_adapting(plain)
    blurred = defend(net, Defense())
    assert adapt(blurred) is blurred


def test_the_view_of_a_deterministic_defense_computes_the_same_function(x: Tensor) -> None:
    deployed = defend(_net(), Round(levels=3))
    view = adapt(deployed)
    assert isinstance(view, Classifier) and not isinstance(view.module, EOT)
    with torch.no_grad():
        assert torch.equal(view(x), deployed(x))
    w = torch.randn(x.shape[0], 10)
    assert _grad(deployed, x, w).abs().max() == 0
    assert _grad(view, x, w).abs().max() > 0


# ----- Adaptive ------------------------------------------------------------------------------
def test_adaptive_on_an_undefended_model_is_the_attack(digits) -> None:
    threat = ThreatModel("linf", 0.1)
    pgd = PGD(threat, steps=5)
    plain = pgd(digits.model, digits.x[:20], digits.y[:20])
    res = Adaptive(pgd)(digits.model, digits.x[:20], digits.y[:20])
    for name in ("x_adv", "success", "pred", "clean_pred", "queries", "gradients", "steps"):
        assert torch.equal(getattr(res, name), getattr(plain, name)), name
    assert res.attack == "pgd"
    assert res.params["adaptive"] == {"eot_samples": None, "bpda": None}


def test_adaptive_rejects_bad_arguments() -> None:
    pgd = PGD(ThreatModel("linf", 0.1))
    with pytest.raises(TypeError, match="attack"):
        Adaptive("pgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already"):
        Adaptive(Adaptive(pgd))
    with pytest.raises(ValueError, match="eot_samples"):
        Adaptive(pgd, eot_samples=0)
    with pytest.raises(ValueError, match="backward"):
        Adaptive(pgd, bpda="straight")
    with pytest.raises(ValueError, match="eot_chunk"):
        Adaptive(pgd, eot_chunk=0)


def _check_valid(res, x: Tensor, y: Tensor, threat: ThreatModel) -> None:
    delta = (res.x_adv - x).flatten(1).abs().amax(dim=1)
    assert float(delta.max()) <= threat.eps + ball_tolerance(threat.eps)
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert torch.equal(res.success, res.pred != y)
    # a sample the deployed model gets wrong on the clean input is never counted robust
    assert bool(((res.pred == y) <= (res.clean_pred == y)).all())


def test_adaptive_closes_the_gap_of_jpeg(mnist) -> None:
    """Measured (200 images, L∞ ε = 0.1, PGD-20): naive 97.5 %, adaptive 65.0 % robust."""
    clf, x, y = mnist
    x, y = x[:200], y[:200]
    deployed = defend(clf, JPEG(quality=50))
    threat = ThreatModel("linf", 0.1)
    pgd = PGD(threat, steps=20)
    naive = pgd(deployed, x, y)
    res = Adaptive(pgd)(deployed, x, y)
    assert naive.robust_accuracy >= 0.9
    assert res.robust_accuracy <= naive.robust_accuracy - 0.2
    assert res.clean_accuracy == naive.clean_accuracy  # deterministic: the same clean pass
    _check_valid(res, x, y, threat)
    with torch.no_grad():  # success decided by the deployed model itself
        assert torch.equal(res.pred, deployed.predict(res.x_adv))
    assert res.params["adaptive"] == {"eot_samples": None, "bpda": "surrogate"}


def test_adaptive_closes_the_gap_of_bit_depth_reduction(mnist) -> None:
    """Measured (200 images, L∞ ε = 0.2, PGD-10): naive 96.5 %, adaptive 0 % robust.
    (One bit, thresholding at ½, is truly robust-ish on MNIST at this budget: most pixels sit
    at 0 or 1, and only those within ε of ½ can change: 97.5 % naive, 91.5 % adaptive.)"""
    clf, x, y = mnist
    x, y = x[:200], y[:200]
    deployed = defend(clf, BitDepth(bits=2))
    threat = ThreatModel("linf", 0.2)
    pgd = PGD(threat, steps=10)
    naive = pgd(deployed, x, y)
    res = Adaptive(pgd, bpda="identity")(deployed, x, y)
    assert naive.robust_accuracy >= 0.9
    assert res.robust_accuracy <= 0.1
    _check_valid(res, x, y, threat)


def test_adaptive_closes_the_gap_of_gaussian_noise(mnist) -> None:
    """Measured (100 images, L∞ ε = 0.15, PGD-20, EOT over 4 draws, σ = 0.2): naive 39 %,
    adaptive 17 % robust; each decided on one draw of the randomized model."""
    clf, x, y = mnist
    x, y = x[:100], y[:100]
    deployed = defend(clf, GaussianNoise(0.2))
    threat = ThreatModel("linf", 0.15)
    pgd = PGD(threat, steps=20)
    naive = pgd(deployed, x, y)
    attack = Adaptive(pgd, eot_samples=4)
    res = attack(deployed, x, y)
    assert res.robust_accuracy <= naive.robust_accuracy - 0.1
    _check_valid(res, x, y, threat)
    assert res.params["adaptive"] == {"eot_samples": 4, "bpda": None}
    # the decision is one draw seeded from (seed, batch): reproduce it
    seed_defenses(deployed, _stream(attack.seed, 0, 1))
    with torch.no_grad(), deployed.attacking():
        assert torch.equal(res.clean_pred, deployed(x).argmax(dim=1))
    again = attack(deployed, x, y)
    assert torch.equal(again.x_adv, res.x_adv) and torch.equal(again.pred, res.pred)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resizepad", "shift"])
def test_adaptive_closes_the_gap_of_random_spatial_defenses(mnist, name: str) -> None:
    """Measured (100 images, L∞ ε = 0.2, PGD-20, EOT over 4 draws): resize-and-pad naive 15 %,
    adaptive 5 %; random shifts by ≤ 2 pixels naive 21 %, adaptive 9 %."""
    clf, x, y = mnist
    x, y = x[:100], y[:100]
    deployed = defend(clf, ResizePad() if name == "resizepad" else RandomTranslate(2))
    threat = ThreatModel("linf", 0.2)
    pgd = PGD(threat, steps=20)
    naive = pgd(deployed, x, y)
    res = Adaptive(pgd, eot_samples=4)(deployed, x, y)
    assert res.robust_accuracy <= naive.robust_accuracy - 0.05
    _check_valid(res, x, y, threat)


def test_adaptive_runs_batch_by_batch_as_in_one_call(digits) -> None:
    """Batch i reseeds the defenses from (seed, i): a call on all equals calls per batch (what a
    results store that resumes relies on), and the same seed gives the same result."""
    deployed = defend(digits.model, Noise(0.2), Round(levels=8))
    x, y = digits.x[:24], digits.y[:24]
    pgd = PGD(ThreatModel("linf", 0.1), steps=4, batch_size=10)
    attack = Adaptive(pgd, eot_samples=3, eot_chunk=2)  # chunks: recomputed on backward
    whole = attack(deployed, x, y)
    parts = [
        attack(deployed, x[lo : lo + 10], y[lo : lo + 10], batch_offset=i)
        for i, lo in enumerate(range(0, 24, 10))
    ]
    for name in ("x_adv", "success", "pred", "clean_pred", "queries", "steps", "rechecks"):
        joined = torch.cat([getattr(p, name) for p in parts])
        assert torch.equal(getattr(whole, name), joined), name
    assert torch.equal(attack(deployed, x, y).x_adv, whole.x_adv)


def test_adaptive_ensemble_keeps_each_member_on_the_points_still_robust(mnist) -> None:
    clf, x, y = mnist
    x, y = x[:60], y[:60]
    deployed = defend(clf, JPEG(quality=50))
    threat = ThreatModel("linf", 0.1)
    first, second = PGD(threat, steps=5, loss="ce"), PGD(threat, steps=5, loss="margin")
    res = Adaptive(Ensemble(threat, [first, second]))(deployed, x, y)
    assert isinstance(res, EnsembleResult) and res.members == ["pgd", "pgd"]
    (rows0, part0), (rows1, _) = res.member_results
    broken_first = set(rows0[part0.success].tolist())
    assert broken_first and not broken_first & set(rows1.tolist())  # second: only the rest
    assert torch.equal(res.broken_by >= 0, res.success & res.clean_correct)
    alone = [Adaptive(a)(deployed, x, y).robust_accuracy for a in (first, second)]
    assert res.robust_accuracy <= min(alone)
    assert res.robust_accuracy < PGD(threat, steps=5)(deployed, x, y).robust_accuracy - 0.1
    _check_valid(res, x, y, threat)


def test_noise_layers_inside_a_network_are_averaged_over(digits) -> None:
    """Random self-ensemble (noise layers before every layer) is randomized inside the network:
    the view is the network in EOT, with the same parameters; results are reproducible."""
    rse = random_self_ensemble(digits.model, init_sigma=0.2, inner_sigma=0.1)
    view = adapt(rse, eot_samples=3)
    assert isinstance(view.module, EOT)
    assert [id(p) for p in view.parameters()] == [id(p) for p in rse.parameters()]
    x, y = digits.x[:20], digits.y[:20]
    threat = ThreatModel("linf", 0.1)
    attack = Adaptive(PGD(threat, steps=5), eot_samples=3)
    res = attack(rse, x, y)
    _check_valid(res, x, y, threat)
    assert torch.equal(attack(rse, x, y).x_adv, res.x_adv)
    assert res.params["adaptive"] == {"eot_samples": 3, "bpda": None}
