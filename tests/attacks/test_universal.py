"""Universal perturbations: the ball, the re-checked apply, a closed form, and held-out strength.

Closed form: a binary affine model z₁ − z₀ = uᵀx + c with every point in class 0 (gaps
g_i = −(uᵀx_i + c) > 0). One v fools x_i iff uᵀv > g_i, so the smallest ‖v‖_p that fools all is
max_i g_i / ‖u‖_q (q the dual norm) — reached by v along u (L2) or sign(u) (L∞); no v in a
smaller ball fools them all.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks.fitted import DatasetAttack
from advex.attacks.universal import Universal, UniversalPerturbation, UniversalSGD
from advex.norms import lp_norm
from advex.result import ball_tolerance

WIDE = (-10.0, 10.0)  # the box never binds: the closed form holds
KINDS = {"universal": Universal, "universal_sgd": UniversalSGD}
CHEAP = {"universal": {"max_passes": 2, "steps": 3}, "universal_sgd": {"epochs": 2}}


def make(kind: str, threat: ThreatModel, **kwargs) -> DatasetAttack:
    return KINDS[kind](threat, **(CHEAP[kind] | kwargs))


def one_side_affine(n: int = 64) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """Binary affine model with every point of x (n, 1, 4, 4) in class 0; returns u = w₁ − w₀."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w, b = model[1].weight, model[1].bias
        u = w[1] - w[0]
        b[1] -= (x.flatten(1) @ u + b[1] - b[0]).max() + 0.5  # largest z₁ − z₀ is −0.5
        y = model(x).argmax(dim=1)
    assert bool((y == 0).all())
    return model, x, y, u


def gaps(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        z = model(x)
    return z[:, 0] - z[:, 1]


@pytest.fixture(scope="module")
def mnist() -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    """The bundled standard CNN, 300 train images to fit on, 500 test images held out."""
    model = zoo.load("mnist_cnn")
    x, y = data.load("mnist5k", split="train")
    xt, yt = data.load("mnist5k", split="test")
    return model, x[:300], y[:300], xt[:500], yt[:500]


# ----- exceptions -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "kwargs", "name"),
    [
        ("universal", {"delta": -0.1}, "delta"),
        ("universal", {"delta": 1.0}, "delta"),
        ("universal", {"delta": True}, "delta"),
        ("universal", {"max_passes": 0}, "max_passes"),
        ("universal", {"steps": 0}, "steps"),
        ("universal", {"overshoot": -0.5}, "overshoot"),
        ("universal", {"candidates": 1}, "candidates"),
        ("universal", {"deepfool_norm": "l1"}, "deepfool_norm"),
        ("universal", {"batch_size": 0}, "batch_size"),
        ("universal", {"seed": "a"}, "seed"),
        ("universal_sgd", {"epochs": 0}, "epochs"),
        ("universal_sgd", {"step_size": 0.0}, "step_size"),
        ("universal_sgd", {"decay": 0.0}, "decay"),
        ("universal_sgd", {"decay": 1.5}, "decay"),
        ("universal_sgd", {"loss": "dlr"}, "loss"),
        ("universal_sgd", {"kappa": -1.0}, "kappa"),
        ("universal_sgd", {"batch_size": 1.5}, "batch_size"),
    ],
)
def test_bad_parameters_name_themselves(kind: str, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        KINDS[kind](ThreatModel("linf", 0.1), **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_threats_it_cannot_serve_are_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="eps"):
        KINDS[kind](ThreatModel("linf", None))
    with pytest.raises(ValueError, match="norm"):
        KINDS[kind](ThreatModel("l0", 3))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_targets_name_themselves(kind: str, tiny_mlp: nn.Module, images: Tensor) -> None:
    y = torch.zeros(len(images), dtype=torch.long)
    targeted = make(kind, ThreatModel("linf", 0.1, targeted=True))
    with pytest.raises(ValueError, match="target"):
        targeted.fit(tiny_mlp, images, y)  # targeted needs a target
    with pytest.raises(ValueError, match="target"):
        targeted.fit(tiny_mlp, images, y, torch.arange(len(images)) % 10)  # several classes
    with pytest.raises(ValueError, match="target"):
        targeted.fit(tiny_mlp, images, y, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        make(kind, ThreatModel("linf", 0.1)).fit(tiny_mlp, images, y, 3)  # untargeted


# ----- the ball, the box, the grid, the re-check --------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0), ("l1", 4.0)])
def test_v_stays_in_the_ball(kind: str, norm: str, eps: float, digits) -> None:
    fitted = make(kind, ThreatModel(norm, eps)).fit(digits.model, digits.x, digits.y)
    assert isinstance(fitted, UniversalPerturbation)
    assert fitted.v.shape == (1, *digits.x.shape[1:])
    assert fitted.norm <= eps + ball_tolerance(eps)
    assert float(lp_norm(fitted.v, norm)[0]) == pytest.approx(fitted.norm)
    assert fitted.norm > 0.5 * eps  # it did move
    assert fitted.attack == kind and fitted.threat.eps == eps
    assert fitted.seconds > 0 and fitted.queries > 0 and fitted.gradients > 0
    assert 1 <= len(fitted.history) <= 2 and all(0 <= h <= 1 for h in fitted.history)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("targeted", [False, True])
def test_apply_is_rechecked_in_box_ball_and_grid(kind: str, targeted: bool, digits) -> None:
    eps = 0.2
    threat = ThreatModel("linf", eps, levels=256, targeted=targeted)
    x, y = digits.x, digits.y
    fitted = make(kind, threat).fit(digits.model, x[:32], y[:32], 3 if targeted else None)
    target = torch.full_like(y, 3) if targeted else None
    res = fitted.apply(digits.model, x, y, target)
    assert res.x_adv.shape == x.shape and res.attack == kind and res.threat == threat
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)
    assert bool((lp_norm(res.x_adv - x, "linf") <= eps + ball_tolerance(eps)).all())
    # the same v on every image (up to the clip and the rounding toward x)
    shift = (res.x_adv - x).abs()
    assert bool((shift <= fitted.v.abs() + 1e-6).all())
    with torch.no_grad():
        pred = digits.model(res.x_adv).argmax(dim=1)
    assert torch.equal(res.pred, pred)
    want = pred == 3 if targeted else pred != y
    assert torch.equal(res.success, want)
    assert res.queries.tolist() == [1] * len(x) and res.gradients.tolist() == [0] * len(x)


@pytest.mark.parametrize("kind", KINDS)
def test_call_fits_and_applies_to_the_same_inputs(kind: str, digits) -> None:
    attack = make(kind, ThreatModel("l2", 1.5))
    res = attack(digits.model, digits.x, digits.y)
    fitted = attack.fit(digits.model, digits.x, digits.y)
    again = fitted.apply(digits.model, digits.x, digits.y)
    assert torch.equal(res.x_adv, again.x_adv) and torch.equal(res.success, again.success)
    assert fitted.fooling_rate(digits.model, digits.x) == pytest.approx(
        float((again.pred != again.clean_pred).float().mean())
    )


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_v(kind: str, digits) -> None:
    threat = ThreatModel("linf", 0.15)
    a = make(kind, threat, seed=4).fit(digits.model, digits.x, digits.y)
    b = make(kind, threat, seed=4).fit(digits.model, digits.x, digits.y)
    c = make(kind, threat, seed=5).fit(digits.model, digits.x, digits.y)
    assert torch.equal(a.v, b.v) and a.history == b.history
    assert not torch.equal(a.v, c.v)  # the seed drives the shuffling


def test_universal_stops_once_the_fooling_rate_is_reached(digits) -> None:
    """delta: the first pass whose fooling rate reaches 1 − delta ends the fit."""
    threat = ThreatModel("l2", 3.0)
    fitted = Universal(threat, delta=0.9, max_passes=5).fit(digits.model, digits.x, digits.y)
    assert len(fitted.history) == 1 and fitted.history[0] >= 0.1
    longer = Universal(threat, delta=0.0, max_passes=3).fit(digits.model, digits.x, digits.y)
    assert len(longer.history) == 3 or longer.history[-1] == 1.0
    # the v returned is the best pass's
    best = max(longer.history)
    assert longer.fooling_rate(digits.model, digits.x) == pytest.approx(best)


# ----- the closed form ------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0)])
def test_one_direction_fools_every_point_on_one_side(norm: str, q: float) -> None:
    """ξ 5 % above max_i g_i/‖u‖_q: fooling rate 1; ξ 5 % below: no v can fool them all."""
    model, x, y, u = one_side_affine()
    need = float(gaps(model, x).max() / u.norm(p=q))
    fitted = Universal(ThreatModel(norm, 1.05 * need, bounds=WIDE)).fit(model, x, y)
    assert fitted.history[0] == 1.0 and len(fitted.history) == 1
    assert fitted.fooling_rate(model, x) == 1.0
    assert fitted.norm <= 1.05 * need * (1 + 1e-5)
    # Hölder: uᵀv ≤ ‖u‖_q‖v‖_p, and fooling the farthest point needs uᵀv > max g = need·‖u‖_q,
    # so v is aligned with u (L2) or sign(u) (L∞) to within need/ξ = 1/1.05
    v = fitted.v.flatten()
    assert float(u @ v) >= float(gaps(model, x).max())
    assert float(u @ v) / float(u.norm(p=q) * lp_norm(fitted.v, norm)[0]) >= 1 / 1.05
    # below the bound, the fit cannot reach 1 (and says so)
    short = Universal(ThreatModel(norm, 0.95 * need, bounds=WIDE), max_passes=3).fit(model, x, y)
    assert max(short.history) < 1.0 and short.fooling_rate(model, x) < 1.0
    # the SGD variant finds it too
    sgd = UniversalSGD(ThreatModel(norm, 1.05 * need, bounds=WIDE)).fit(model, x, y)
    assert sgd.fooling_rate(model, x) == 1.0


# ----- strength on the bundled CNN, held out --------------------------------------------------
def test_universal_fools_held_out_images(mnist) -> None:
    """L∞ ξ = 0.2, fitted on 300 train images: measured 20.0 % of 500 test images fooled.

    A random ±ξ sign pattern (the same size) fools under 5 % of them.
    """
    model, x, y, xt, _ = mnist
    threat = ThreatModel("linf", 0.2)
    fitted = Universal(threat).fit(model, x, y)
    assert fitted.norm <= 0.2 + ball_tolerance(0.2)
    rate = fitted.fooling_rate(model, xt)
    assert rate >= 0.17
    g = torch.Generator().manual_seed(0)
    noise = 0.2 * (torch.rand(fitted.v.shape, generator=g) * 2 - 1).sign()
    random = UniversalPerturbation(attack="noise", threat=threat, v=noise)
    assert random.fooling_rate(model, xt) < 0.05 < rate


def test_universal_sgd_fools_held_out_images(mnist) -> None:
    """L∞ ξ = 0.2, 300 train images, 5 epochs: measured 34.4 % of 500 test images fooled."""
    model, x, y, xt, _ = mnist
    fitted = UniversalSGD(ThreatModel("linf", 0.2), epochs=5).fit(model, x, y)
    assert fitted.norm <= 0.2 + ball_tolerance(0.2)
    assert fitted.fooling_rate(model, xt) >= 0.3


@pytest.mark.parametrize(
    ("kind", "target", "want"), [("universal", 2, 0.35), ("universal_sgd", 8, 0.25)]
)
def test_targeted_universal_reaches_the_target(mnist, kind: str, target: int, want: float) -> None:
    """One v toward one class, L∞ ξ = 0.2, 300 fitting images: measured 39.6 % (Universal → 2)
    and 28.7 % (UniversalSGD → 8, 5 epochs) of the held-out images not already in the class."""
    model, x, y, xt, yt = mnist
    threat = ThreatModel("linf", 0.2, targeted=True)
    attack = Universal(threat) if kind == "universal" else UniversalSGD(threat, epochs=5)
    fitted = attack.fit(model, x, y, torch.full((len(x),), target))
    with torch.no_grad():
        keep = model(xt).argmax(dim=1) != target
    res = fitted.apply(model, xt[keep], yt[keep], torch.full((int(keep.sum()),), target))
    assert torch.equal(res.success, res.pred == target)
    assert float(res.success.float().mean()) >= want
