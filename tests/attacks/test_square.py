"""Square attack: the p schedule, query budget, the random-search structure, strength."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks.base import Attack
from advex.attacks.blackbox import Square
from advex.attacks.blackbox.square import (
    _l2_update,
    _side_l2,
    _side_linf,
    meta_pseudo_gaussian,
    p_schedule,
)
from advex.attacks.losses import margin
from advex.model import Classifier
from advex.norms import random_start
from advex.result import ball_tolerance

EPS = {"linf": 0.05, "l2": 0.5}


class Recorder(nn.Module):
    """Passes inputs to ``module``; keeps every batch, its logits and whether grad was on."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.inputs: list[Tensor] = []
        self.logits: list[Tensor] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        z = self.module(x)
        self.inputs.append(x.detach().clone())
        self.logits.append(z.detach().clone())
        self.grad_enabled.append(torch.is_grad_enabled())
        return z


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def random_noise_successes(model: nn.Module, x: Tensor, y: Tensor, threat, n: int) -> Tensor:
    """Samples broken by at least one of ``n`` uniform random points in the ball (baseline)."""
    g = torch.Generator().manual_seed(0)
    hit = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(n):
            hit |= model(x + random_start(x, threat, g)).argmax(dim=1) != y
    return hit


# ----- the schedule and the window side ----------------------------------------------------
def test_p_schedule_halves_at_the_papers_thresholds() -> None:
    p = 0.8
    edges = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
    assert p_schedule(0, 10_000, p) == p
    for k, t in enumerate(edges):
        assert p_schedule(t, 10_000, p) == p / 2**k, t
        assert p_schedule(t + 1, 10_000, p) == p / 2 ** (k + 1), t
    assert p_schedule(9_999, 10_000, p) == p / 512
    # rescaled to the budget: iteration i of 1000 is iteration 10·i of 10 000
    want = [p, p / 2, p / 2, p / 4, p / 4, p / 8]
    assert [p_schedule(i, 1000, p) for i in (1, 2, 5, 6, 20, 21)] == want
    # not rescaled (AutoAttack's 5000-query Square): the 10 000-query thresholds as they are
    assert [p_schedule(i, 5000, p, rescale=False) for i in (10, 11, 50, 51, 4000, 4001)] == [
        p,
        p / 2,
        p / 2,
        p / 4,
        p / 64,
        p / 128,
    ]
    with pytest.raises(ValueError, match="rescale"):
        Square(ThreatModel("l2", 1.0), rescale=1)  # type: ignore[arg-type]


def test_window_sides() -> None:
    assert _side_linf(0.8, 32, 32) == 29  # round(√819.2)
    assert _side_linf(0.8, 8, 8) == 7 and _side_linf(1.0, 8, 8) == 7  # at most h − 1
    assert _side_linf(1e-4, 8, 8) == 1  # at least 1
    assert _side_l2(0.1, 32, 32) == 11  # round(√102.4) = 10, made odd
    assert _side_l2(1e-4, 32, 32) == 3  # at least 3
    assert _side_l2(1.0, 4, 4) == 4  # at most min(h, w)


def test_meta_pseudo_gaussian() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    for s in (1, 3, 5, 8):
        eta = meta_pseudo_gaussian(s, like)
        assert eta.shape == (s, s)
        torch.testing.assert_close(eta.norm(), like.new_tensor(1.0))
        assert bool((eta[: s // 2] > 0).all()) and bool((eta[s // 2 :] < 0).all())
    eta = meta_pseudo_gaussian(6, like)
    # each half peaks at its centre and decays with the Chebyshev distance
    assert eta[1, 3] == eta[:3].max() and eta[4, 3] == eta[3:].min()
    assert eta[1, 3] > eta[0, 2] > eta[0, 0]


@pytest.mark.parametrize("overlap", [False, True])
def test_l2_update_moves_the_mass_of_w2_into_w1(overlap: bool) -> None:
    """Algorithm 3: W2 \\ W1 zeroed, the rest outside W1 kept, W1 ∝ bump + δ_W1/‖δ_W1‖ with
    the mass of W1 ∪ W2 plus the unused budget shared among channels; ‖δ'‖₂ = ε."""
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    norm = torch.tensor([1.0, 0.6], dtype=torch.float64)  # on the sphere; with some unused
    delta = delta / delta.flatten(1).norm(dim=1).view(2, 1, 1, 1) * norm.view(2, 1, 1, 1)
    eps = 1.0
    in1 = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    in2 = torch.zeros_like(in1)
    in1[:, :, 1:4, 1:4] = True
    if overlap:
        in2[:, :, 2:5, 2:5] = True
    else:
        in2[:, :, 5:8, 4:7] = True
    bump = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * in1
    new = _l2_update(delta, in1, in2, bump, eps)
    union = in1 | in2
    torch.testing.assert_close(new[~union.expand_as(new)], delta[~union.expand_as(delta)])
    assert bool((new[(in2 & ~in1).expand_as(new)] == 0).all())
    torch.testing.assert_close(new.flatten(1).norm(dim=1), torch.full((2,), eps).double())
    old = delta * in1
    unit = old / old.square().sum(dim=(2, 3), keepdim=True).sqrt()
    direction = (bump + unit).flatten(2)
    got = (new * in1).flatten(2)
    cosine = (direction * got).sum(2) / (direction.norm(dim=2) * got.norm(dim=2))
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    unused = (eps**2 - delta.flatten(1).square().sum(1))[:, None]
    want = ((delta * union).flatten(2).square().sum(2) + unused / 3).sqrt()
    torch.testing.assert_close(got.norm(dim=2), want)


# ----- queries ------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_queries_match_the_model_and_never_exceed_the_budget(norm, tiny_mlp, images) -> None:
    counted = Recorder(tiny_mlp)
    clf = Classifier(counted, num_classes=10)
    y = labels(tiny_mlp, images)
    y[0] = (y[0] + 1) % 10  # misclassified: only the clean pass
    res = Square(ThreatModel(norm, EPS[norm]), max_queries=40)(clf, images, y)
    rows = sum(len(x) for x in counted.inputs)
    assert rows == int(res.queries.sum()) + int(res.rechecks.sum())  # + the final re-check
    assert bool((res.queries <= 40).all())
    assert int(res.queries[0]) == 1
    unbroken = ~res.success
    assert bool(unbroken.any()) and bool(res.success[1:].any()), "the test needs both kinds"
    assert bool((res.queries[unbroken] == 40).all())  # an unbroken sample spends it all
    assert bool((res.queries[1:][res.success[1:]] < 40).all())  # early stop
    assert bool((res.steps[unbroken] == 38).all())  # clean pass + init + 38 iterations
    assert bool((res.gradients == 0).all()) and not any(counted.grad_enabled)


def test_restarts_get_their_own_budget_on_unbroken_samples(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    threat = ThreatModel("linf", 0.03)
    gained = 0
    for seed in range(8):
        one = Square(threat, max_queries=30, seed=seed)(tiny_mlp, images, y)
        two = Square(threat, max_queries=30, restarts=2, seed=seed)(tiny_mlp, images, y)
        assert bool(one.success.any())
        gained += int((two.success & ~one.success).sum())
        # restart 0 is the same run; later restarts only on what it left unbroken
        assert torch.equal(two.queries[one.success], one.queries[one.success])
        assert bool((two.queries[~one.success] > 30).all())
        assert bool((two.queries[~two.success] == 60).all())
        assert not bool((one.success & ~two.success).any())
    assert gained > 0, "the second restart never broke anything new"


# ----- every queried point, and the random-search structure --------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 12)])
def test_every_query_lies_in_ball_and_box(norm, shape) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), 10))
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
    x[0] = 0.0  # the box binds everywhere on this one
    rec = Recorder(model)
    eps = EPS[norm] * (3 if norm == "l2" else 1)
    Square(ThreatModel(norm, eps), max_queries=50, early_stop=False)(rec, x, labels(model, x))
    queried = torch.stack(rec.inputs[1:-1])  # skip the clean pass and the re-check
    assert queried.shape[:2] == (49, 6)  # init + 48 iterations, all six samples every time
    assert float(queried.min()) >= 0.0 and float(queried.max()) <= 1.0
    delta = (queried - x).flatten(2)
    dist = delta.abs().amax(dim=2) if norm == "linf" else delta.norm(dim=2)
    assert float(dist.max()) <= eps + ball_tolerance(eps)
    assert float(dist[:, 1:].min()) > 0.5 * eps  # the search stays near the sphere


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_far_from_the_box_points_sit_on_the_sphere(norm) -> None:
    """With a box that never binds, L∞ points are ±ε everywhere and L2 points have ‖δ‖₂ = ε."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 10, 10))
    x = torch.zeros(4, 3, 10, 10)
    rec = Recorder(model)
    threat = ThreatModel(norm, 0.5, bounds=(-10.0, 10.0))
    Square(threat, max_queries=30, early_stop=False)(rec, x, labels(model, x))
    delta = torch.stack(rec.inputs[2:-1]).flatten(2)
    if norm == "linf":
        torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.5))
    else:
        torch.testing.assert_close(delta.norm(dim=2), torch.full(delta.shape[:2], 0.5))


def test_candidates_change_one_window_of_the_best_point(tiny_mlp, images) -> None:
    """Each L∞ candidate differs from the current point (the best so far: acceptance is
    strict improvement of the loss) on an s×s window, s = the schedule's side, and only there."""
    rec = Recorder(tiny_mlp)
    x, y = images[:4], labels(tiny_mlp, images[:4])
    queries = 60
    Square(ThreatModel("linf", 0.02), max_queries=queries, early_stop=False)(rec, x, y)
    points = torch.stack(rec.inputs[1:-1])  # (init + iterations, B, 1, 8, 8)
    values = torch.stack([margin(z, y) for z in rec.logits[1:-1]])
    accepted = 0
    for i in range(1, len(points)):
        current = values[:i].argmax(dim=0)  # strict: the first of equal values stays
        best = points[current, torch.arange(4)]
        changed = (points[i] != best)[:, 0]
        s = _side_linf(p_schedule(i - 1, queries, 0.8), 8, 8)
        for b in range(4):
            r, c = torch.nonzero(changed[b], as_tuple=True)
            assert r.numel() > 0, "a candidate must change the window"
            assert int(r.max() - r.min()) < s and int(c.max() - c.min()) < s
        accepted += int((values[i] > values[:i].amax(dim=0)).sum())
    assert accepted > 0


# ----- strength -----------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_beats_random_noise_with_the_same_queries(norm, eps, tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    threat = ThreatModel(norm, eps)
    res = Square(threat, max_queries=200)(tiny_mlp, images, y)
    noise = random_noise_successes(tiny_mlp, images, y, threat, 200)
    assert bool(res.clean_correct.all())
    assert int(res.success.sum()) > int(noise.sum())
    assert int(res.success.sum()) >= len(images) // 3


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_targeted_reaches_the_target_sometimes(loss, tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    target = (y + 1) % 10
    res = Square(ThreatModel("linf", 0.1, targeted=True), max_queries=200, loss=loss)(
        tiny_mlp, images, y, target
    )
    assert bool(res.success.any())
    assert torch.equal(res.success, res.pred == target)


def test_deterministic_for_a_seed(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    threat = ThreatModel("l2", 0.3)
    a = Square(threat, max_queries=40, seed=3)(tiny_mlp, images, y)
    b = Square(threat, max_queries=40, seed=3)(tiny_mlp, images, y)
    c = Square(threat, max_queries=40, seed=4)(tiny_mlp, images, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_params_and_registry_attributes() -> None:
    attack = Square(ThreatModel("linf", 0.1), max_queries=100, p_init=0.3, loss="ce")
    assert isinstance(attack, Attack) and attack.name == "square"
    assert attack.params() == {
        "seed": 0,
        "batch_size": None,
        "early_stop": True,
        "max_queries": 100,
        "p_init": 0.3,
        "restarts": 1,
        "loss": "ce",
        "rescale": True,
    }


def test_breaks_the_bundled_cnn_within_a_small_budget() -> None:
    """Measured: L∞ 0.3 on the first 50 test images, 200 queries: 49/50 broken (median 10
    queries); with 1000 queries 50/50."""
    from advex import data, zoo

    x, y = data.load("mnist5k", split="test")
    x, y = x[:50], y[:50]
    result = Square(ThreatModel("linf", 0.3), max_queries=200, seed=0)(zoo.load("mnist_cnn"), x, y)
    assert result.success_rate >= 0.94
    assert int(result.queries.max()) <= 200
    assert float(result.queries[result.success].float().median()) <= 30


# ----- bad arguments ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_queries": 1}, "max_queries"),
        ({"max_queries": 0}, "max_queries"),
        ({"max_queries": 10.0}, "max_queries"),
        ({"max_queries": True}, "max_queries"),
        ({"p_init": 0.0}, "p_init"),
        ({"p_init": 1.5}, "p_init"),
        ({"p_init": float("nan")}, "p_init"),
        ({"loss": "hinge"}, "loss"),
        ({"restarts": 0}, "restarts"),
    ],
)
def test_bad_arguments_raise(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        Square(ThreatModel("linf", 0.1), **kwargs)


def test_bad_threats_and_inputs_raise(tiny_mlp) -> None:
    Square(ThreatModel("linf", 0.1), p_init=1.0)  # the closed end is fine
    with pytest.raises(ValueError, match=r"threat\.norm"):
        Square(ThreatModel("l1", 1.0))
    with pytest.raises(ValueError, match=r"threat\.eps"):
        Square(ThreatModel("linf"))
    x = torch.rand(2, 64)
    with pytest.raises(ValueError, match="x: square needs images"):
        Square(ThreatModel("linf", 0.1))(tiny_mlp, x, labels(tiny_mlp, x))
