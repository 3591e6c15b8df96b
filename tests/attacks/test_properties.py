"""Properties every attack result must have, checked on every attack × norm × targeted × levels.

Everything is recomputed here with code independent of advex: the norm of x_adv − x (float64
numpy), the box, the 8-bit grid, the prediction (a fresh forward of the raw module), and
success from that prediction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from advex import AttackResult, ThreatModel
from advex.attacks import (
    APGD,
    APGDT,
    BIM,
    CWL0,
    CWL2,
    EAD,
    FAB,
    FABT,
    FGSM,
    FMN,
    ILLC,
    JSMA,
    LBFGS,
    PGD,
    ZOO,
    AdversarialPatch,
    CWLinf,
    DeepFool,
    FakeImage,
    HopSkipJump,
    LocalSearch,
    OnePixel,
    OptAttack,
    ReColorAdv,
    RotationTranslation,
    SignOPT,
    Square,
    StAdv,
    Substitute,
    Universal,
    UniversalSGD,
    fast,
)
from advex.attacks.base import Attack
from advex.result import ball_tolerance

EPS = {"linf": 0.1, "l2": 1.0, "l1": 4.0, "l0": 6.0}
NORMS = {
    "fgsm": ("linf", "l2", "l1", "l0"),
    "pgd": ("linf", "l2", "l1"),
    "bim": ("linf", "l2", "l1"),
    "illc": ("linf", "l2", "l1"),
    "fake_image": ("linf", "l2", "l1", "l0"),
    "deepfool": ("linf", "l2"),
    "cw_l2": ("l2",),
    "cw_linf": ("linf",),
    "cw_l0": ("l0",),
    "jsma": ("l0",),
    "lbfgs": ("l2",),
    "fmn": ("linf", "l2", "l1", "l0"),
    "ead": ("l1",),
    "apgd": ("linf", "l2", "l1"),
    "apgd-t": ("linf", "l2", "l1"),
    "fab": ("linf", "l2", "l1"),
    "fab-t": ("linf", "l2", "l1"),
    "square": ("linf", "l2"),
    "fast": ("linf", "l2", "l1"),
    "hsja": ("linf", "l2"),
    "local_search": ("l0",),
    "one_pixel": ("l0",),
    "substitute": ("linf", "l2", "l1", "l0"),
    "opt": ("l2",),
    "sign_opt": ("l2",),
    "zoo": ("l2",),
    # distances of their own (result.metric); the norm only labels the threat
    "stadv": ("linf", "l2"),
    "rotation_translation": ("linf", "l2"),
    "recoloradv": ("linf", "l2"),
    "patch": ("l0",),
    # one perturbation fitted on the whole batch, then applied to it
    "universal": ("linf", "l2", "l1"),
    "universal_sgd": ("linf", "l2", "l1"),
}
#: Attacks measured by their own metric, run with eps=None only.
METRIC = {"stadv": "flow", "rotation_translation": "rotation_translation"}
METRIC |= {"recoloradv": "color", "patch": "patch_area"}
TARGETED = {"fgsm": (False, True), "pgd": (False, True), "bim": (False, True), "illc": (False,)}
TARGETED["fake_image"] = (True,)
TARGETED |= {"deepfool": (False,), "jsma": (True,)}
TARGETED |= {a: (False, True) for a in ("cw_l2", "cw_linf", "cw_l0", "lbfgs", "fmn", "ead")}
TARGETED |= {"apgd": (False, True), "apgd-t": (False,), "fab": (False, True)}
TARGETED |= {"fab-t": (False,), "square": (False, True), "fast": (False,)}
TARGETED |= {a: (False, True) for a in ("hsja", "local_search", "one_pixel", "substitute")}
TARGETED |= {"opt": (False, True), "sign_opt": (False, True), "zoo": (False, True)}
TARGETED |= {a: (False, True) for a in ("stadv", "rotation_translation", "recoloradv")}
# one target for a whole dataset: tests/attacks/test_{patch,universal}.py
TARGETED |= {"patch": (False,), "universal": (False,), "universal_sgd": (False,)}
# the others do not use the generator at all
RANDOMIZED = {"pgd", "fake_image", "apgd", "apgd-t", "square", "fast", "hsja", "substitute"}
RANDOMIZED |= {"local_search", "one_pixel", "opt", "sign_opt", "zoo", "patch"}
RANDOMIZED |= {"universal", "universal_sgd"}  # the order of the fitting data

MIN_NORM = {
    "deepfool",
    "cw_l2",
    "cw_linf",
    "cw_l0",
    "jsma",
    "lbfgs",
    "fmn",
    "ead",
    "fab",
    "fab-t",
    "hsja",
    "local_search",
    "one_pixel",
    "opt",
    "sign_opt",
    "zoo",
}  # also run with eps=None

CASES = [
    pytest.param(
        a,
        n,
        t,
        lv,
        bounded,
        id=f"{a}-{n}-{'targeted' if t else 'untargeted'}-{lv}{'' if bounded else '-min'}",
    )
    for a in NORMS
    for n in NORMS[a]
    for t in TARGETED[a]
    for lv in (None, 256)
    for bounded in ((True, False) if a in MIN_NORM else (False,) if a in METRIC else (True,))
]
PARAMS = ("attack", "norm", "targeted", "levels", "bounded")


def make(
    attack: str,
    norm: str,
    targeted: bool,
    levels: int | None,
    bounded: bool = True,
    seed: int = 0,
) -> Attack:
    eps = EPS[norm] if bounded else None
    threat = ThreatModel(norm, eps, levels=levels, targeted=targeted)
    if attack == "fgsm":
        return FGSM(threat, seed=seed)
    if attack == "pgd":
        return PGD(threat, steps=5, restarts=2, seed=seed)
    if attack == "bim":
        return BIM(threat, steps=5, seed=seed)
    if attack == "illc":
        return ILLC(threat, steps=5, seed=seed)
    if attack == "deepfool":
        return DeepFool(threat, steps=5, seed=seed)
    if attack == "cw_l2":
        return CWL2(threat, steps=5, binary_search_steps=2, seed=seed)
    if attack == "cw_linf":
        return CWLinf(threat, steps=5, initial_const=1.0, largest_const=4.0, seed=seed)
    if attack == "cw_l0":
        return CWL0(threat, steps=5, initial_const=1.0, largest_const=4.0, seed=seed)
    if attack == "jsma":
        return JSMA(threat, seed=seed)
    if attack == "fmn":
        return FMN(threat, steps=10, seed=seed)
    if attack == "ead":
        return EAD(threat, steps=10, binary_search_steps=3, seed=seed)
    if attack == "lbfgs":
        return LBFGS(threat, search_steps=3, max_iter=5, seed=seed)
    if attack == "apgd":
        return APGD(threat, steps=5, restarts=2, seed=seed)
    if attack == "apgd-t":
        return APGDT(threat, steps=5, n_target_classes=3, seed=seed)
    if attack == "fab":
        return FAB(threat, steps=5, seed=seed)
    if attack == "fab-t":
        return FABT(threat, steps=5, n_target_classes=3, seed=seed)
    if attack == "square":
        return Square(threat, max_queries=50, seed=seed)
    if attack == "fast":
        return fast(threat, seed=seed)
    if attack == "hsja":
        return HopSkipJump(threat, max_queries=100, init_num_evals=20, seed=seed)
    if attack == "local_search":
        return LocalSearch(threat, max_queries=100, seed=seed)
    if attack == "one_pixel":
        return OnePixel(threat, population=10, generations=5, seed=seed)
    if attack == "opt":
        return OptAttack(threat, max_queries=100, init_directions=5, directions=3, seed=seed)
    if attack == "sign_opt":
        return SignOPT(threat, max_queries=100, init_directions=5, directions=10, seed=seed)
    if attack == "zoo":
        return ZOO(threat, max_queries=60, coordinates=8, seed=seed)
    if attack == "substitute":
        return Substitute(threat, rho=1, epochs=1, per_class=1, seed=seed)
    if attack == "stadv":
        return StAdv(threat, steps=10, seed=seed)
    if attack == "rotation_translation":
        return RotationTranslation(threat, angles=5, shifts=3, seed=seed)
    if attack == "recoloradv":
        return ReColorAdv(threat, steps=10, seed=seed)
    if attack == "universal":
        return Universal(threat, max_passes=2, steps=3, batch_size=2, seed=seed)
    if attack == "universal_sgd":
        return UniversalSGD(threat, epochs=2, batch_size=2, seed=seed)
    if attack == "patch":
        return AdversarialPatch(threat, epochs=1, batch_size=8, scale=0.5, seed=seed)
    return FakeImage(threat, steps=5, seed=seed)


def np_norm(delta: torch.Tensor, norm: str) -> np.ndarray:
    d = delta.detach().flatten(1).double().numpy()
    if norm == "linf":
        return np.abs(d).max(axis=1)
    if norm == "l2":
        return np.sqrt((d**2).sum(axis=1))
    if norm == "l1":
        return np.abs(d).sum(axis=1)
    return (d != 0).sum(axis=1).astype(np.float64)


def labels(model: nn.Module, x: torch.Tensor, targeted: bool):
    """y = the model's clean prediction, except sample 0, which the model gets wrong."""
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    y = pred.clone()
    y[0] = (pred[0] + 1) % 10
    target = None
    if targeted:
        target = (y + 1 + torch.arange(len(y)) % 8) % 10  # ≠ y, and ≠ pred for sample 0
    return y, target


def run(attack: Attack, model: nn.Module, x: torch.Tensor, targeted: bool) -> AttackResult:
    y, target = labels(model, x, targeted)
    return attack(model, x, y, target)


@pytest.mark.parametrize(PARAMS, CASES)
def test_result_is_valid_and_measured_by_a_fresh_forward(
    attack: str, norm: str, targeted: bool, levels, bounded: bool, tiny_mlp: nn.Module, images
) -> None:
    x = images.clone()
    y, target = labels(tiny_mlp, x, targeted)
    res = make(attack, norm, targeted, levels, bounded)(tiny_mlp, x, y, target)
    b = len(x)

    # cardinality: shape, dtype and device of every field
    assert len(res) == b
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    for name, dtype in (
        ("success", torch.bool),
        ("pred", torch.long),
        ("y", torch.long),
        ("clean_pred", torch.long),
        ("queries", torch.long),
        ("gradients", torch.long),
        ("steps", torch.long),
    ):
        field = getattr(res, name)
        assert field.shape == (b,), name
        assert field.dtype == dtype, name
        assert field.device == x.device, name
    assert res.distance.shape == (b,) and res.distance.is_floating_point()
    assert res.x_adv.device == x.device and res.distance.device == x.device
    if targeted:
        assert res.target is not None and res.target.shape == (b,)
        assert torch.equal(res.target, target)
    else:
        assert res.target is None
    assert res.threat == make(attack, norm, targeted, levels, bounded).threat
    assert res.attack == attack and isinstance(res.seconds, float) and res.seconds >= 0

    # the constraints, measured here
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all()), "outside the box"
    dist = np_norm(res.x_adv - x, norm)
    if bounded:
        assert (dist <= EPS[norm] + ball_tolerance(EPS[norm])).all(), f"max ‖δ‖ = {dist.max()}"
    if attack in METRIC:
        assert res.metric == METRIC[attack] and res.distance_metric == METRIC[attack]
        assert bool((res.distance >= 0).all()) and bool(torch.isfinite(res.distance).all())
    else:
        assert res.metric is None
        np.testing.assert_allclose(res.distance.double().numpy(), dist, rtol=1e-5, atol=1e-6)
    if levels is not None:
        assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255), "off the 8-bit grid"

    # prediction and success recomputed from the returned points
    with torch.no_grad():
        pred = tiny_mlp(res.x_adv).argmax(dim=1)
        clean = tiny_mlp(x).argmax(dim=1)
    assert torch.equal(res.pred, pred)
    assert torch.equal(res.clean_pred, clean)
    assert torch.equal(res.success, pred == target if targeted else pred != y)
    assert torch.equal(res.y, y)

    # bookkeeping
    assert bool((res.queries >= 1).all())
    # a Jacobian step is one forward and up to one backward pass per class
    assert bool((res.gradients >= 0).all()) and bool((res.gradients <= 10 * res.queries).all())
    assert bool((res.steps >= 0).all())

    # no aliasing, input untouched
    assert torch.equal(x, images)
    assert res.x_adv.data_ptr() != x.data_ptr()
    res.x_adv.add_(1.0)
    assert torch.equal(x, images)


@pytest.mark.parametrize(PARAMS, CASES)
def test_clean_misclassified_sample(
    attack, norm, targeted, levels, bounded, tiny_mlp, images
) -> None:
    """Sample 0 is misclassified: untargeted, it is returned unchanged at distance 0 with one
    query; targeted, it is attacked like any other (its prediction is not the target)."""
    res = run(make(attack, norm, targeted, levels, bounded), tiny_mlp, images, targeted)
    if targeted:
        assert not bool(res.clean_correct[0])
        assert int(res.queries[0]) > 1
    else:
        assert torch.equal(res.x_adv[0], images[0])
        assert float(res.distance[0]) == 0.0
        assert bool(res.success[0])
        assert int(res.queries[0]) == 1 and int(res.gradients[0]) == 0


@pytest.mark.parametrize(PARAMS, CASES)
def test_seed_determinism(attack, norm, targeted, levels, bounded, tiny_mlp, images) -> None:
    a = run(make(attack, norm, targeted, levels, bounded, seed=3), tiny_mlp, images, targeted)
    b = run(make(attack, norm, targeted, levels, bounded, seed=3), tiny_mlp, images, targeted)
    c = run(make(attack, norm, targeted, levels, bounded, seed=4), tiny_mlp, images, targeted)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success) and torch.equal(a.queries, b.queries)
    if attack in RANDOMIZED:
        assert not torch.equal(a.x_adv, c.x_adv), "the seed changes nothing"
    else:
        assert torch.equal(a.x_adv, c.x_adv), "a deterministic attack depends on the seed"


@pytest.mark.parametrize(PARAMS, CASES)
def test_model_state_untouched(
    attack, norm, targeted, levels, bounded, tiny_cnn: nn.Module, images
):
    """Train mode restored, requires_grad restored, no .grad left, BatchNorm stats unchanged."""
    tiny_cnn.train()
    stats = [t.clone() for t in tiny_cnn[1].buffers()]
    params = [p.detach().clone() for p in tiny_cnn.parameters()]
    tiny_cnn.eval()
    x = images
    y, target = labels(tiny_cnn, x, targeted)
    tiny_cnn.train()
    make(attack, norm, targeted, levels, bounded)(tiny_cnn, x, y, target)
    assert all(m.training for m in tiny_cnn.modules())
    assert all(p.requires_grad and p.grad is None for p in tiny_cnn.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, tiny_cnn[1].buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params, tiny_cnn.parameters(), strict=True))


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "bim", "fake_image", "deepfool", "cw_l2", "fmn"])
def test_other_bounds_and_grid(attack: str) -> None:
    """Bounds (−1, 1) with 256 levels: the grid is −1 + 2k/255, the box [−1, 1]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    g = torch.Generator().manual_seed(1)
    x = -1 + 2 * torch.randint(0, 256, (10, 1, 4, 4), generator=g) / 255
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    targeted = attack == "fake_image"
    threat = ThreatModel("l2", 1.0, bounds=(-1.0, 1.0), levels=256, targeted=targeted)
    kinds = {"fgsm": FGSM, "pgd": PGD, "bim": BIM, "fake_image": FakeImage, "deepfool": DeepFool}
    kind = {"cw_l2": CWL2, "fmn": FMN}.get(attack) or kinds[attack]
    kw = {} if attack == "fgsm" else {"steps": 5}
    target = (y + 1) % 5 if targeted else None
    res = kind(threat, **kw)(model, x, y, target)
    assert bool(((res.x_adv >= -1) & (res.x_adv <= 1)).all())
    k = (res.x_adv + 1) / 2 * 255
    assert float((k - k.round()).abs().max()) < 1e-4
    assert (np_norm(res.x_adv - x, "l2") <= 1.0 + ball_tolerance(1.0)).all()
    assert bool((res.x_adv != x).any())
