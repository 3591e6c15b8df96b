"""L-BFGS (Szegedy et al.) against closed forms on linear models, and its bookkeeping.

For logits z = Wx + b with two classes (or a target whose only rival is y), the smallest L2
perturbation that reaches the other class is |f|/‖w‖, f = z_y − z_t, w = W_t − W_y, along w;
inside the box [lo, hi] it is δ = clip(λw, lo − x, hi − x) with the λ ≥ 0 that makes
w·δ = f (KKT), which the tests find by bisection.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks.lbfgs import LBFGS, _Search
from advex.model import as_classifier


def linear(w: Tensor, b: Tensor) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer


@pytest.fixture
def binary() -> tuple[nn.Linear, Tensor, Tensor]:
    """Two classes on 16 inputs; 12 points at L2 distance 0.05–0.15 (even rows) or 0.25–0.35
    (odd rows) from the boundary, on alternating sides; y = the model's label."""
    g = torch.Generator().manual_seed(0)
    w1 = 0.5 * torch.randn(16, generator=g)
    w = torch.stack([torch.zeros(16), w1])
    x = 0.3 + 0.4 * torch.rand(12, 16, generator=g)
    bias = -(x @ w1).mean()
    unit = w1 / w1.norm()
    to_boundary = -(x @ w1 + bias) / w1.norm()
    distance = 0.05 + 0.1 * torch.rand(12, generator=g) + 0.2 * (torch.arange(12) % 2)
    side = torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(3)
    x = x + (to_boundary + side * distance)[:, None] * unit
    model = linear(w, torch.stack([torch.tensor(0.0), bias]))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    assert 0 < int(y.sum()) < len(y)
    return model, x, y


def closed_form(model: nn.Linear, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """|z_y − z_t| / ‖W_t − W_y‖ per sample: the L2 distance to the half-space z_t ≥ z_y."""
    with torch.no_grad():
        z = model(x)
    w = model.weight.detach()
    f = z.gather(1, y[:, None]) - z.gather(1, t[:, None])
    return f.squeeze(1) / (w[t] - w[y]).norm(dim=1)


def boxed_closed_form(model: nn.Linear, x: Tensor, y: Tensor, bounds: tuple[float, float]):
    """Minimal ‖δ‖₂ with w·δ ≥ f and lo ≤ x + δ ≤ hi (two classes), by bisection on λ."""
    w_all = model.weight.detach().double()
    with torch.no_grad():
        z = model(x).double()
    t = 1 - y
    w = w_all[t] - w_all[y]
    f = (z.gather(1, y[:, None]) - z.gather(1, t[:, None])).squeeze(1)
    lower, upper = bounds[0] - x.double(), bounds[1] - x.double()
    lam_lo, lam_hi = torch.zeros(len(x), dtype=torch.float64), torch.full((len(x),), 1e3)
    for _ in range(200):
        lam = (lam_lo + lam_hi) / 2
        reach = (torch.clamp(lam[:, None] * w, lower, upper) * w).sum(dim=1)
        lam_lo = torch.where(reach < f, lam, lam_lo)
        lam_hi = torch.where(reach < f, lam_hi, lam)
    delta = torch.clamp(lam_hi[:, None] * w, lower, upper)
    assert bool(((delta * w).sum(dim=1) >= f - 1e-9).all()), "the box allows no success"
    return delta.norm(dim=1)


WIDE = (-20.0, 20.0)


@pytest.mark.parametrize("targeted", [False, True])
def test_two_classes_reach_the_closed_form_minimum(binary, targeted: bool) -> None:
    model, x, y = binary
    t = 1 - y
    threat = ThreatModel("l2", bounds=WIDE, targeted=targeted)
    res = LBFGS(threat)(model, x, y, t if targeted else None)
    want = closed_form(model, x, y, t)
    assert bool(res.success.all())
    ratio = res.distance / want
    assert bool((ratio >= 1 - 1e-4).all()), "closer than the minimum: the check is wrong"
    assert float(ratio.max()) <= 1.02, ratio.tolist()


def test_close_to_the_boundary_needs_large_constants(binary) -> None:
    """At distance d the best c is ‖w‖/4d (two classes): d = 0.003 needs c ≈ 10³, 3–4
    geometric steps from c₀ = 1 before the bisection on log c starts; 15 solves suffice."""
    model, x, y = binary
    x, y = x[:6], y[:6]
    w = model.weight.detach()
    unit = (w[1] - w[0]) / (w[1] - w[0]).norm()
    near = x + (closed_form(model, x, y, 1 - y) - 0.003)[:, None] * unit * (1 - 2 * y[:, None])
    res = LBFGS(ThreatModel("l2", bounds=WIDE), search_steps=15)(model, near, y)
    want = closed_form(model, near, y, 1 - y)
    torch.testing.assert_close(want, torch.full_like(want, 0.003), rtol=1e-3, atol=0)
    ratio = res.distance / want
    assert bool(res.success.all()) and float(ratio.min()) >= 1 - 1e-3
    assert float(ratio.max()) <= 1.02, ratio.tolist()


def test_targeted_multiclass_reaches_the_target_at_the_closed_form(binary) -> None:
    """Five classes; classes 2–4 have bias −100, so only y competes with the target."""
    model, x, y = binary
    g = torch.Generator().manual_seed(5)
    w = torch.cat([model.weight.detach(), torch.randn(3, 16, generator=g)])
    b = torch.cat([model.bias.detach(), torch.full((3,), -100.0)])
    model5 = linear(w, b)
    t = 1 - y
    res = LBFGS(ThreatModel("l2", bounds=WIDE, targeted=True))(model5, x, y, t)
    assert bool(res.success.all()) and torch.equal(res.pred, t)
    ratio = res.distance / closed_form(model5, x, y, t)
    assert float(ratio.min()) >= 1 - 1e-4 and float(ratio.max()) <= 1.02, ratio.tolist()


def test_box_constraints_shape_the_optimum() -> None:
    """Four heavy inputs (w = 2) sit 0.005–0.02 below the bound the optimum would push them
    past; the box-constrained minimum moves them to the bound and the light inputs (w = 0.2)
    the rest of the way, much farther than |f|/‖w‖. L-BFGS-B finds it (clipping an
    unconstrained solution would fail, or land farther)."""
    g = torch.Generator().manual_seed(4)
    w1 = torch.cat([torch.full((4,), 2.0), torch.full((12,), 0.2)])
    bias = -9.0
    model = linear(torch.stack([torch.zeros(16), w1]), torch.tensor([0.0, bias]))
    room = 0.005 + 0.015 * torch.rand(10, 1, generator=g)
    free_distance = 0.08 + 0.07 * torch.rand(10, generator=g)
    x = torch.cat([(1 - room).expand(10, 4), 0.4 + 0.2 * torch.rand(10, 12, generator=g)], 1)
    light = torch.cat([torch.zeros(4), w1[4:]])
    shift = (-free_distance * w1.norm() - bias - x @ w1) / light.norm()
    x = x + shift[:, None] * light / light.norm()
    assert bool(((x >= 0) & (x <= 1)).all())
    y = torch.zeros(10, dtype=torch.long)
    free = closed_form(model, x, y, 1 - y)
    torch.testing.assert_close(free, free_distance)
    boxed = boxed_closed_form(model, x, y, (0.0, 1.0)).float()
    assert bool((boxed > 1.5 * free).all()), "the box should matter"
    res = LBFGS(ThreatModel("l2"))(model, x, y)
    assert bool(res.success.all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    ratio = res.distance / boxed
    assert float(ratio.min()) >= 1 - 1e-4 and float(ratio.max()) <= 1.02, ratio.tolist()


def test_search_is_geometric_both_ways_then_bisects_log_c() -> None:
    """In c·D + L a success means c may grow (smaller δ), a failure that c must shrink."""
    search = _Search(3, 1.0, increasing=False, dtype=torch.float64)
    rows = torch.arange(3)
    search.update(rows, torch.tensor([True, False, True]))
    torch.testing.assert_close(search.c, torch.tensor([10.0, 0.1, 10.0], dtype=torch.float64))
    search.update(rows, torch.tensor([True, False, False]))
    # still no failure / no success: ×10 / ÷10; bracketed c ∈ [1, 10]: the geometric midpoint
    want = torch.tensor([100.0, 0.01, math.sqrt(10)], dtype=torch.float64)
    torch.testing.assert_close(search.c, want)
    search.update(torch.tensor([2]), torch.tensor([True]))  # √10 works: c ∈ [√10, 10]
    torch.testing.assert_close(search.c[2], torch.tensor(10**0.75, dtype=torch.float64))


def test_search_moves_the_constant_the_right_way(binary, bare_min_norm) -> None:
    """From a huge c₀ the minimizer is δ ≈ 0 (a failure; only L-BFGS-B's first trial step of
    length 1 crosses the boundary), so the search must lower c; from a tiny c₀ the first
    minimizer is far beyond the boundary, so it must raise c. Later solves repeat the first
    ones exactly, so more solves never lose a point."""
    model, x, y = binary
    x, y = x[:6], y[:6]
    threat = ThreatModel("l2", bounds=WIDE)
    want = closed_form(model, x, y, 1 - y)

    def attack(c0: float, steps: int) -> Tensor:
        res = LBFGS(threat, initial_const=c0, search_steps=steps)(model, x, y)
        assert bool(res.success.all())
        return res.distance

    for c0 in (1e4, 1e-4):
        first, few, many = attack(c0, 1), attack(c0, 4), attack(c0, 14)
        assert bool((first > 2 * want).all())
        assert bool((few < first).all()) and bool((many <= few).all())
        assert float((many / want).max()) <= 1.02


def test_eps_stops_samples_once_inside_the_ball(binary) -> None:
    """Even rows are 0.05–0.15 from the boundary, odd rows 0.25–0.35: ε = 0.2 splits them."""
    model, x, y = binary
    inside = torch.arange(len(x)) % 2 == 0
    fixed = LBFGS(ThreatModel("l2", 0.2, bounds=WIDE))(model, x, y)
    free = LBFGS(ThreatModel("l2", bounds=WIDE))(model, x, y)
    assert torch.equal(fixed.success, inside)
    assert bool((fixed.distance <= 0.2 * (1 + 1e-5) + 1e-6).all())
    assert bool((fixed.queries[inside] < free.queries[inside]).all())


def predicted(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def test_targeted_reaches_the_target(tiny_mlp: nn.Module, images: Tensor) -> None:
    """Targets: each sample's third most likely class (on this random MLP some classes cannot
    be reached anywhere in the box)."""
    with torch.no_grad():
        ranked = tiny_mlp(images).argsort(dim=1, descending=True)
    y, t = ranked[:, 0], ranked[:, 2]
    res = LBFGS(ThreatModel("l2", targeted=True), search_steps=4, max_iter=20)(
        tiny_mlp, images, y, t
    )
    assert bool(res.success.all()) and torch.equal(res.pred, t)


def test_batched_equals_per_sample(tiny_mlp: nn.Module, images: Tensor) -> None:
    """Each sample has its own L-BFGS-B run: batching changes nothing but the model's
    arithmetic. In float64 the results agree to ~1e-13; in float32 the model's batch-size
    dependent rounding (~1e-7) can steer a non-convex solve elsewhere (a few % apart)."""
    clf = as_classifier(tiny_mlp.double())
    x = images[:8].double()
    with torch.no_grad():
        y = clf(x).argmax(dim=1)  # also tells the classifier its number of classes
    settings = dict(search_steps=4, max_iter=20)
    together = LBFGS(ThreatModel("l2"), **settings)(clf, x, y)
    alone = LBFGS(ThreatModel("l2"), batch_size=1, **settings)(clf, x, y)
    assert together.x_adv.dtype == torch.float64
    assert bool(together.success.all()) and torch.equal(together.success, alone.success)
    torch.testing.assert_close(together.distance, alone.distance, rtol=1e-9, atol=1e-9)
    assert torch.equal(together.queries, alone.queries)


def test_grid_levels_and_bookkeeping(tiny_mlp: nn.Module, images: Tensor, bare_min_norm) -> None:
    """8-bit outputs still succeed; every evaluation is one forward + one backward."""
    y = predicted(tiny_mlp, images)
    res = LBFGS(ThreatModel("l2", levels=256), search_steps=4, max_iter=20)(tiny_mlp, images, y)
    assert bool(res.success.all())
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)
    assert torch.equal(res.queries, res.gradients + 1)  # the clean forward, then all v&g
    assert torch.equal(res.steps, res.gradients)  # one evaluation per round
    assert bool((res.gradients <= 4 * (2 * 20 + 21)).all())


def test_deterministic(tiny_mlp: nn.Module, images: Tensor) -> None:
    y = predicted(tiny_mlp, images)
    a = LBFGS(ThreatModel("l2"), search_steps=3, max_iter=10)(tiny_mlp, images, y)
    b = LBFGS(ThreatModel("l2"), search_steps=3, max_iter=10, seed=7)(tiny_mlp, images, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)


class _Breaks(nn.Module):
    """A linear model that raises on its n-th call."""

    def __init__(self, inner: nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("model broke")
        return self.inner(x)


def test_model_errors_propagate_and_leave_no_threads(binary) -> None:
    model, x, y = binary
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="model broke"):
        LBFGS(ThreatModel("l2"))(_Breaks(model, 5), x, y)
    assert threading.active_count() == before


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"search_steps": 0}, "search_steps"),
        ({"search_steps": 2.5}, "search_steps"),
        ({"max_iter": 0}, "max_iter"),
        ({"memory": 0}, "memory"),
        ({"initial_const": 0.0}, "initial_const"),
        ({"initial_const": -1.0}, "initial_const"),
        ({"initial_const": math.nan}, "initial_const"),
        ({"initial_const": math.inf}, "initial_const"),
        ({"tol": -1e-3}, "tol"),
        ({"tol": math.nan}, "tol"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LBFGS(ThreatModel("l2"), **kwargs)


@pytest.mark.parametrize("norm", ["linf", "l1", "l0"])
def test_only_l2(norm: str) -> None:
    with pytest.raises(ValueError, match=r"threat\.norm"):
        LBFGS(ThreatModel(norm))
