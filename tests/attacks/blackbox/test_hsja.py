"""HopSkipJump: query budget, label access, the three steps, a linear closed form, strength."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from counting import Recorder
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks.base import Attack
from advex.attacks.blackbox.base import QueryTracker
from advex.attacks.blackbox.hsja import HopSkipJump
from advex.oracle import as_oracle
from advex.result import ball_tolerance

WIDE = (-10.0, 10.0)  # a box that never binds: the linear problem has a closed form
SEARCHES = ("geometric_progression", "grid_search")


class Binary(nn.Module):
    """Logits ±(w·x + b): class 1 iff f(x) = w·x + b > 0."""

    def __init__(self, d: int, b: float = 0.3) -> None:
        super().__init__()
        self.w = torch.randn(d, generator=torch.Generator().manual_seed(0))
        self.b = b

    def f(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: Tensor) -> Tensor:
        f = self.f(x)
        return torch.stack([-f, f], dim=1)


class Brightness(nn.Module):
    """Class 1 iff the mean pixel > 0.4: uniform noise on [0, 1] is always class 1."""

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1).mean(dim=1) - 0.4
        return torch.stack([-z, z], dim=1)


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def linear_case(shape: tuple[int, ...], n: int = 8) -> tuple[Binary, Tensor, Tensor]:
    model = Binary(math.prod(shape))
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    return model, x, labels(model, x)


# ----- budget and access --------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("targeted", [False, True])
def test_queries_match_the_model_and_never_exceed_the_budget(
    norm, search, targeted, tiny_mlp, images
) -> None:
    counted = Recorder(tiny_mlp)
    y = labels(tiny_mlp, images)
    y[0] = (y[0] + 1) % 10  # misclassified: untargeted, only the clean pass
    target = (y + 1 + torch.arange(len(y)) % 8) % 10 if targeted else None
    threat = ThreatModel(norm, targeted=targeted)
    attack = HopSkipJump(threat, max_queries=150, init_num_evals=20, stepsize_search=search)
    res = attack(counted, images, y, target)
    assert counted.points == int(res.queries.sum()) + int(
        res.rechecks.sum()
    )  # + the final re-check
    assert bool((res.queries <= 150).all())
    assert bool((res.gradients == 0).all())
    if not targeted:
        assert int(res.queries[0]) == 1 and bool(res.success.all())
    # a sample that started stops only when it cannot afford another iteration
    started = res.success & (res.queries > 1)
    assert bool(started.any())
    reserve = math.ceil(math.log2(64 ** (1.5 if norm == "l2" else 2.0))) + 1
    reserve += 20 if search == "grid_search" else 0
    assert bool((res.queries[started] > 150 - reserve - 1).all())


def test_small_budget_shrinks_the_gradient_estimate(tiny_mlp, images) -> None:
    """A budget below one full iteration still runs one, with fewer vectors, and is exact."""
    counted = Recorder(tiny_mlp)
    y = labels(tiny_mlp, images)
    res = HopSkipJump(ThreatModel("l2"), max_queries=40)(counted, images, y)
    assert counted.points == int(res.queries.sum()) + int(res.rechecks.sum())
    assert bool((res.queries <= 40).all()) and bool(res.success.all())
    assert bool((res.steps >= 1).all())  # B_1 = 100 would not fit: the estimate shrank


@pytest.mark.parametrize("level", ["label", "scores"])
def test_runs_on_oracles_and_matches_the_module(level, tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    attack = HopSkipJump(ThreatModel("l2"), max_queries=120, init_num_evals=20)
    plain = attack(tiny_mlp, images, y)
    via = attack(as_oracle(tiny_mlp, level), images, y)
    assert torch.equal(plain.x_adv, via.x_adv) and torch.equal(plain.queries, via.queries)


def test_runs_on_a_label_only_callable(tiny_mlp, images) -> None:
    def label_fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tiny_mlp(torch.from_numpy(x)).argmax(dim=1).numpy()

    y = labels(tiny_mlp, images)
    attack = HopSkipJump(ThreatModel("linf"), max_queries=120, init_num_evals=20)
    res = attack(label_fn, images, y)
    assert bool(res.success.all())
    assert torch.equal(res.pred, labels(tiny_mlp, res.x_adv))


# ----- the result ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("eps", [None, "ball"])
@pytest.mark.parametrize("levels", [None, 256])
def test_result_in_box_ball_grid_and_rechecked(norm, eps, levels, tiny_mlp, images) -> None:
    bound = {"l2": 1.5, "linf": 0.15}[norm] if eps else None
    threat = ThreatModel(norm, bound, levels=levels)
    y = labels(tiny_mlp, images)
    res = HopSkipJump(threat, max_queries=150, init_num_evals=20)(tiny_mlp, images, y)
    assert res.x_adv.shape == images.shape and res.x_adv.dtype == images.dtype
    for field in ("success", "pred", "queries", "steps", "distance"):
        assert getattr(res, field).shape == (len(images),), field
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    delta = (res.x_adv - images).flatten(1)
    dist = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    torch.testing.assert_close(res.distance, dist)
    if bound is not None:
        assert float(dist.max()) <= bound + ball_tolerance(bound)
    if levels is not None:
        assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)
    pred = labels(tiny_mlp, res.x_adv)
    assert torch.equal(res.pred, pred) and torch.equal(res.success, pred != y)
    assert bool(res.success.any())


def test_eps_stops_a_sample_at_its_first_success_inside_the_ball(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    free = HopSkipJump(ThreatModel("l2"), max_queries=300, init_num_evals=20)
    loose = HopSkipJump(ThreatModel("l2", 8.0), max_queries=300, init_num_evals=20)
    a, b = free(tiny_mlp, images, y), loose(tiny_mlp, images, y)
    assert bool(b.success.all()) and bool((b.queries < a.queries).all())
    assert bool((b.distance <= 8.0).all())


def test_same_seed_same_result(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    make = lambda seed: HopSkipJump(  # noqa: E731
        ThreatModel("l2"), max_queries=120, init_num_evals=20, seed=seed
    )
    a, b, c = (make(s)(tiny_mlp, images, y) for s in (3, 3, 4))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_a_sample_is_attacked_as_if_alone(tiny_mlp, images) -> None:
    """Random draws are aligned with the batch: attacking only some samples (``active``)
    leaves their results unchanged, whatever the others needed at the start."""
    y = labels(tiny_mlp, images)
    attack = HopSkipJump(ThreatModel("linf"), max_queries=150, init_num_evals=20)
    full = attack(tiny_mlp, images, y)
    active = torch.arange(len(images)) % 3 == 0
    part = attack(tiny_mlp, images, y, active=active)
    assert torch.equal(part.x_adv[active], full.x_adv[active])
    assert torch.equal(part.queries[active], full.queries[active])


# ----- the start ----------------------------------------------------------------------------
def test_darker_noise_starts_what_uniform_noise_cannot() -> None:
    """Uniform noise is always class 1 here; a class-1 sample needs the darker tries."""
    model = Brightness()
    x = torch.full((4, 1, 6, 6), 0.3)
    x[2:] = 0.9
    y = labels(model, x)
    assert y.tolist() == [0, 0, 1, 1]
    res = HopSkipJump(ThreatModel("l2"), max_queries=600, init_num_evals=10)(model, x, y)
    assert bool(res.success.all())
    # toward the closest point: mean 0.4, at L2 distance 6·|mean − 0.4|
    want = torch.tensor([0.6, 0.6, 3.0, 3.0])
    assert bool((res.distance >= want * (1 - 1e-4)).all())
    torch.testing.assert_close(res.distance, want, rtol=0.1, atol=0)


def test_targeted_without_a_start_fails_gracefully(tiny_mlp, images) -> None:
    """No random point is ever labelled 2: the sample stays unbroken after ``init_tries``."""

    class Never2(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            z = tiny_mlp(x)
            return torch.cat([z[:, :2], z[:, 2:3] - 1e4, z[:, 3:]], dim=1)

    model = Never2()
    y = labels(model, images)
    keep = y != 2
    x, y = images[keep], y[keep]
    target = torch.full_like(y, 2)
    threat = ThreatModel("l2", targeted=True)
    res = HopSkipJump(threat, max_queries=500, init_tries=7)(model, x, y, target)
    assert not bool(res.success.any())
    assert torch.equal(res.x_adv, x)
    assert bool((res.queries == 1 + 7).all())


def test_targeted_reaches_the_target(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    with torch.no_grad():  # a label the model gives to uniform noise
        noise = tiny_mlp(torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(5)))
    common = int(noise.argmax(dim=1).mode().values)
    keep = y != common
    target = torch.full_like(y[keep], common)
    threat = ThreatModel("l2", targeted=True)
    res = HopSkipJump(threat, max_queries=200, init_num_evals=20)(
        tiny_mlp, images[keep], y[keep], target
    )
    assert bool(res.success.all()) and torch.equal(res.pred, target)


# ----- the three steps on a linear model ----------------------------------------------------
def tracker(model: nn.Module, x: Tensor, norm: str, max_queries: int = 10_000) -> QueryTracker:
    return QueryTracker(
        as_oracle(model, "label", bounds=WIDE),
        x,
        labels(model, x),
        None,
        ThreatModel(norm, bounds=WIDE),
        max_queries=max_queries,
        generator=torch.Generator().manual_seed(0),
        select="distance",
    )


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_binary_search_ends_on_the_adversarial_side_within_the_tolerance(norm) -> None:
    model, x, y = linear_case((1, 4, 4))
    run = tracker(model, x, norm)
    attack = HopSkipJump(ThreatModel(norm, bounds=WIDE))
    start = x - 5 * torch.sign(model.f(x))[:, None, None, None] * model.w.view(1, 1, 4, 4)
    assert bool((labels(model, start) != y).all())
    owner = torch.arange(len(x))
    before = run.queries.clone()
    end = attack._bisect(run, start, owner)
    assert bool((labels(model, end) != y).all())
    theta = 16 ** (-1.5 if norm == "l2" else -2.0)
    if norm == "l2":  # α·‖start − x‖ from the boundary point on the segment, α ≤ θ
        t_star = model.f(x) / (model.f(x) - model.f(start))
        boundary = x + t_star[:, None, None, None] * (start - x)
        gap = (end - boundary).flatten(1).norm(dim=1)
        assert bool((gap <= theta * (start - x).flatten(1).norm(dim=1) + 1e-5).all())
        steps = math.ceil(math.log2(1 / theta))
    else:
        reach = (start - x).flatten(1).abs().amax(dim=1)
        steps = math.ceil(math.log2(max(1.0, float(reach.max())) / theta))
    assert bool((run.queries - before == steps).all())


def test_direction_points_along_the_gradient_and_uses_the_baseline() -> None:
    model, x, y = linear_case((1, 4, 4))
    run = tracker(model, x, "l2")
    attack = HopSkipJump(ThreatModel("l2", bounds=WIDE))
    sign = torch.where(y == 0, 1.0, -1.0)  # toward the other class
    unit = model.w / model.w.norm()
    on = x - (model.f(x) / model.w.norm())[:, None, None, None] * unit.view(1, 1, 4, 4)
    on = on + 1e-4 * sign[:, None, None, None] * unit.view(1, 1, 4, 4)  # just across
    evals = torch.full((len(x),), 200)
    v = attack._direction(run, on, torch.full((len(x),), 0.01), evals, 200)
    cosine = (v.flatten(1) @ unit) * sign
    assert bool((cosine > 0.7).all()), cosine
    assert bool((run.queries == 1 + 200).all())
    # far from the boundary every decision agrees: v = ±mean(u), a random direction
    far = on + 5 * sign[:, None, None, None] * unit.view(1, 1, 4, 4)
    v = attack._direction(run, far, torch.full((len(x),), 0.01), evals, 200)
    assert bool(((v.flatten(1) @ unit).abs() < 0.7).all())
    torch.testing.assert_close(v.flatten(1).norm(dim=1), torch.ones(len(x)))


# ----- the closed form ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("norm", "shape", "queries", "within"),
    [
        ("l2", (1, 4, 4), 2000, 0.03),
        ("l2", (1, 8, 8), 3000, 0.05),
        ("linf", (1, 4, 4), 3000, 0.06),
    ],
)
@pytest.mark.parametrize("search", SEARCHES)
def test_converges_to_the_minimal_distance_of_a_linear_classifier(
    norm, shape, queries, within, search
) -> None:
    """min ‖δ‖ = |f(x)|/‖w‖₂ (L2) or |f(x)|/‖w‖₁ (L∞), the box never binding."""
    model, x, y = linear_case(shape)
    dual = model.w.norm() if norm == "l2" else model.w.abs().sum()
    want = model.f(x).abs() / dual
    threat = ThreatModel(norm, bounds=WIDE)
    res = HopSkipJump(threat, max_queries=queries, stepsize_search=search)(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / want
    assert float(ratio.min()) >= 1 - 1e-4
    limit = within if search == "geometric_progression" else 2 * within
    assert float(ratio.max()) <= 1 + limit, ratio


# ----- strength -----------------------------------------------------------------------------
def test_breaks_the_bundled_cnn() -> None:
    """10 MNIST test images, 1000 queries: all broken, median L2 1.56 measured (DeepFool,
    white-box, on the same images: 0.91). Three are 8s, the label this CNN gives to uniform
    noise: they start from the darker noise."""
    from advex import data, zoo

    model = zoo.load("mnist_cnn")
    x, y = data.load("mnist5k", split="test")
    x, y = x[:10], y[:10]
    res = HopSkipJump(ThreatModel("l2"), max_queries=1000)(model, x, y)
    assert bool(res.success.all())
    assert bool((res.queries <= 1000).all())
    assert float(res.distance.median()) < 2.0


@pytest.mark.slow
def test_breaks_the_bundled_cnn_at_5000_queries() -> None:
    """20 MNIST test images, 5000 queries: all broken, median L2 1.57 measured (DeepFool,
    white-box: 1.14)."""
    from advex import data, zoo

    model = zoo.load("mnist_cnn")
    x, y = data.load("mnist5k", split="test")
    x, y = x[:20], y[:20]
    res = HopSkipJump(ThreatModel("l2"), max_queries=5000)(model, x, y)
    assert bool(res.success.all())
    assert float(res.distance.median()) < 1.8


# ----- settings -----------------------------------------------------------------------------
def test_params_and_catalogue_attributes() -> None:
    attack = HopSkipJump(ThreatModel("linf"), max_queries=300, init_num_evals=50)
    assert isinstance(attack, Attack) and attack.name == "hsja"
    assert attack.access == "label" and attack.select == "distance" and not attack.needs_eps
    assert attack.params() == {
        "seed": 0,
        "batch_size": None,
        "early_stop": True,
        "max_queries": 300,
        "init_num_evals": 50,
        "max_num_evals": 10_000,
        "gamma": 1.0,
        "stepsize_search": "geometric_progression",
        "init_tries": 100,
    }


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_queries": 1}, "max_queries"),
        ({"max_queries": 10.0}, "max_queries"),
        ({"max_queries": True}, "max_queries"),
        ({"init_num_evals": 0}, "init_num_evals"),
        ({"init_num_evals": 2.5}, "init_num_evals"),
        ({"max_num_evals": 0}, "max_num_evals"),
        ({"max_num_evals": 50}, "max_num_evals"),  # below init_num_evals = 100
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"gamma": True}, "gamma"),
        ({"stepsize_search": "line"}, "stepsize_search"),
        ({"init_tries": 0}, "init_tries"),
        ({"seed": 1.5}, "seed"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        HopSkipJump(ThreatModel("l2"), **kwargs)


def test_bad_threats_raise() -> None:
    with pytest.raises(ValueError, match=r"threat\.norm"):
        HopSkipJump(ThreatModel("l1"))
    with pytest.raises(TypeError, match="threat"):
        HopSkipJump("l2")  # type: ignore[arg-type]
