"""advex.norms against independent float64 references.

The references are written from the optimality conditions, not from the implementation:

* L∞: the closed form clip(v, max(−ε, l), min(ε, u));
* L2: δ(s) = clip(s·v, l, u), bisection on s ∈ [0, 1] for ‖δ(s)‖₂ = ε (KKT multiplier);
* L1: δ(λ) = sign(v)·clip(|v| − λ, 0, b), bisection on λ ≥ 0 for ‖δ(λ)‖₁ = ε;
* L0: brute force over all supports of size k (dims ≤ 8);
* and, on tiny dims, scipy's SLSQP on the projection problem itself for L2 and L1.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from advex import ThreatModel
from advex.norms import (
    ascent,
    box_limits,
    lp_norm,
    on_grid,
    project,
    project_ball,
    quantize,
    random_start,
)

BOUNDS = (0.0, 1.0)


# ----- references (float64 numpy, one sample at a time) ------------------------------------
def ref_linf(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(v, np.maximum(-eps, lo), np.minimum(eps, hi))


def ref_l2(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    def at(s: float) -> np.ndarray:
        return np.clip(s * v, lo, hi)

    if np.linalg.norm(at(1.0)) <= eps:
        return at(1.0)
    a, b = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (a + b)
        if np.linalg.norm(at(mid)) > eps:
            b = mid
        else:
            a = mid
    return at(a)


def ref_l1(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    cap = np.where(v > 0, hi, -lo)

    def at(lam: float) -> np.ndarray:
        return np.sign(v) * np.clip(np.abs(v) - lam, 0.0, cap)

    if np.abs(at(0.0)).sum() <= eps:
        return at(0.0)
    a, b = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = 0.5 * (a + b)
        if np.abs(at(mid)).sum() > eps:
            a = mid
        else:
            b = mid
    return at(b)


def ref_l0(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    k = min(round(eps), v.size)
    best, best_cost = None, math.inf
    for support in itertools.combinations(range(v.size), k):
        delta = np.zeros_like(v)
        idx = list(support)
        delta[idx] = np.clip(v[idx], lo[idx], hi[idx])
        cost = float(((delta - v) ** 2).sum())
        if cost < best_cost - 1e-15:
            best, best_cost = delta, cost
    assert best is not None
    return best


REFS = {"linf": ref_linf, "l2": ref_l2, "l1": ref_l1, "l0": ref_l0}


def reference(v: torch.Tensor, x: torch.Tensor, norm: str, eps, bounds=BOUNDS) -> torch.Tensor:
    """Apply the per-sample reference to a batch (float64)."""
    vf = v.flatten(1).double().numpy()
    xf = x.flatten(1).double().numpy()
    eps_rows = eps.tolist() if isinstance(eps, torch.Tensor) else [eps] * len(vf)
    out = [
        REFS[norm](vf[i], bounds[0] - xf[i], bounds[1] - xf[i], float(eps_rows[i]))
        for i in range(len(vf))
    ]
    return torch.tensor(np.stack(out)).reshape(v.shape)


def scenario(name: str, norm: str, seed: int, shape=(6, 2, 4)):
    """(v, x, eps) in float64 for a named situation."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    d = x[0].numel()
    eps = {"linf": 0.2, "l2": 0.6, "l1": 1.0, "l0": 3.0}[norm]
    if name == "random":
        pass
    elif name == "near_bounds":
        # a third of the coordinates on a bound, a third within 0.02 of one: the box is active
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        x = torch.where(u < 1 / 3, torch.round(x), x)
        x = torch.where((u >= 1 / 3) & (u < 2 / 3), torch.where(x > 0.5, 0.99, 0.01), x)
        v = v * 2
    elif name == "inside":
        # ‖v‖ small and x central: v is already feasible (for L0, only k nonzeros)
        x = 0.25 + 0.5 * x
        v = v * {"linf": 0.05, "l2": 0.05, "l1": 0.05, "l0": 0.2}[norm]
        if norm == "l0":
            v = torch.where(torch.rand(shape, generator=g) < 2.5 / d, v, torch.zeros_like(v))
            v.flatten(1)[:, 3:] = 0  # at most 3 nonzeros per sample
    elif name == "eps_exceeds_box":
        eps = {"linf": 5.0, "l2": 50.0, "l1": 500.0, "l0": float(d)}[norm]
        v = v * 3
    elif name == "per_sample_eps":
        base = torch.tensor([0.05, 0.3, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
        eps = base * {"linf": 0.1, "l2": 0.5, "l1": 1.0, "l0": 1.0}[norm]
        if norm == "l0":
            eps = torch.tensor([1.0, 1.0, 2.0, 3.0, 5.0, 8.0], dtype=torch.float64)
    else:
        raise AssertionError(name)
    return v, x, eps


SCENARIOS = ["random", "near_bounds", "inside", "eps_exceeds_box", "per_sample_eps"]
NORMS = ["linf", "l2", "l1", "l0"]


def eps_rows(eps, b: int) -> torch.Tensor:
    if isinstance(eps, torch.Tensor):
        return eps
    return torch.full((b,), float(eps), dtype=torch.float64)


# ----- project_ball -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("norm", NORMS)
def test_projection_equals_reference_float64(norm: str, name: str) -> None:
    for seed in range(3):
        v, x, eps = scenario(name, norm, seed)
        got = project_ball(v, x, norm, eps, BOUNDS)
        want = reference(v, x, norm, eps)
        assert got.dtype == torch.float64 and got.shape == v.shape
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def test_l0_projection_is_optimal_by_brute_force_objective() -> None:
    """Objective ‖δ − v‖² of the projection equals the brute-force minimum (ties allowed)."""
    for seed in range(5):
        v, x, _ = scenario("near_bounds", "l0", seed)
        for k in (1, 2, 4, 7):
            got = project_ball(v, x, "l0", float(k), BOUNDS)
            want = reference(v, x, "l0", float(k))
            cost_got = (got - v).flatten(1).square().sum(1)
            cost_want = (want - v).flatten(1).square().sum(1)
            torch.testing.assert_close(cost_got, cost_want, atol=1e-12, rtol=0)
            assert bool((lp_norm(got, "l0") <= k).all())


def slsqp_projection(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float, norm: str):
    """argmin ‖δ − v‖² s.t. ‖δ‖_p ≤ ε, lo ≤ δ ≤ hi, by a generic solver (L1: δ = p − q)."""
    d = v.size
    if norm == "l2":
        res = optimize.minimize(
            lambda z: ((z - v) ** 2).sum(),
            np.zeros(d),
            jac=lambda z: 2 * (z - v),
            method="SLSQP",
            bounds=list(zip(lo, hi, strict=True)),
            constraints=[{"type": "ineq", "fun": lambda z: eps**2 - (z**2).sum()}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert res.success
        return res.x
    res = optimize.minimize(
        lambda z: ((z[:d] - z[d:] - v) ** 2).sum(),
        np.zeros(2 * d),
        method="SLSQP",
        bounds=[(0, max(h, 0)) for h in hi] + [(0, max(-low, 0)) for low in lo],
        constraints=[{"type": "ineq", "fun": lambda z: eps - z.sum()}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success
    return res.x[:d] - res.x[d:]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_projection_equals_slsqp_on_tiny_dims(norm: str) -> None:
    """The projection solves argmin ‖δ − v‖² s.t. ‖δ‖_p ≤ ε, l ≤ δ ≤ u (checked by SLSQP)."""
    g = torch.Generator().manual_seed(7)
    for _ in range(6):
        x = torch.rand(1, 3, generator=g, dtype=torch.float64)
        x[0, 0] = 0.97  # one coordinate near the upper bound
        v = torch.randn(1, 3, generator=g, dtype=torch.float64)
        v[0, 0] = 0.8  # pushes through it
        eps = 0.5
        lo, hi = (t[0].numpy() for t in box_limits(x, BOUNDS))
        want = slsqp_projection(v[0].numpy(), lo, hi, eps, norm)
        got = project_ball(v, x, norm, eps, BOUNDS)[0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("norm", NORMS)
def test_projection_float32_matches_reference(norm: str, name: str) -> None:
    v, x, eps = scenario(name, norm, 11)
    got = project_ball(v.float(), x.float(), norm, eps, BOUNDS)
    assert got.dtype == torch.float32
    want = reference(v.float(), x.float(), norm, eps)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.03), ("l2", 1.5), ("l1", 5.0)])
def test_projection_float32_is_accurate_on_mnist_sized_inputs(norm: str, eps: float) -> None:
    """On 1×28×28 inputs the float32 projection stays within a few float32 ulps of eps of the
    float64 reference (the points are O(0.1), so 1e-6 is ~50 ulps of them)."""
    g = torch.Generator().manual_seed(12)
    x = torch.round(torch.rand(8, 1, 28, 28, generator=g) * 255) / 255
    v = 0.3 * torch.randn(8, 1, 28, 28, generator=g)
    got = project_ball(v, x, norm, eps, BOUNDS)
    want = reference(v, x, norm, eps)
    assert bool((lp_norm(want, norm) >= eps * (1 - 1e-9)).all()), "the ball must be active"
    tol = 4 * float(np.spacing(np.float32(eps))) + 1e-7
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_feasible_and_idempotent(norm: str, name: str, dtype) -> None:
    v, x, eps = scenario(name, norm, 5, shape=(6, 3, 5))
    v, x = v.to(dtype), x.to(dtype)
    p = project_ball(v, x, norm, eps, BOUNDS)
    lo, hi = box_limits(x, BOUNDS)
    assert bool(((p >= lo) & (p <= hi)).all()), "left the box"
    e = eps_rows(eps, len(v))
    assert bool((lp_norm(p.double(), norm) <= e * (1 + 1e-6)).all()), "left the ball"
    pp = project_ball(p, x, norm, eps, BOUNDS)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(pp, p, atol=atol, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_of_a_feasible_point_is_the_identity(norm: str) -> None:
    v, x, eps = scenario("inside", norm, 0)
    # the scenario really is feasible, so Π(v) = v exactly
    e = eps_rows(eps, len(v))
    assert bool((lp_norm(v, norm) <= e).all())
    assert bool(((x + v >= 0) & (x + v <= 1)).all())
    assert torch.equal(project_ball(v, x, norm, eps, BOUNDS), v)


@pytest.mark.parametrize("norm", NORMS)
def test_eps_larger_than_the_box_is_the_box_projection(norm: str) -> None:
    v, x, eps = scenario("eps_exceeds_box", norm, 3)
    lo, hi = box_limits(x, BOUNDS)
    torch.testing.assert_close(project_ball(v, x, norm, eps, BOUNDS), v.clamp(lo, hi))


def test_per_sample_eps_equals_one_call_per_sample() -> None:
    for norm in NORMS:
        v, x, eps = scenario("per_sample_eps", norm, 4)
        batched = project_ball(v, x, norm, eps, BOUNDS)
        for i in range(len(v)):
            single = project_ball(v[i : i + 1], x[i : i + 1], norm, float(eps[i]), BOUNDS)
            torch.testing.assert_close(batched[i : i + 1], single, atol=1e-12, rtol=0)


def test_eps_none_projects_onto_the_box_only_and_threat_wrapper_agrees() -> None:
    v, x, _ = scenario("random", "l2", 0)
    lo, hi = box_limits(x, BOUNDS)
    assert torch.equal(project_ball(v, x, "l2", None, BOUNDS), v.clamp(lo, hi))
    t = ThreatModel("l1", 0.7)
    assert torch.equal(project(v, x, t), project_ball(v, x, "l1", 0.7, BOUNDS))


def test_other_bounds() -> None:
    """Bounds other than (0, 1): the box is [lo − x, hi − x]."""
    bounds = (-1.0, 2.0)
    g = torch.Generator().manual_seed(9)
    x = -1 + 3 * torch.rand(5, 8, generator=g, dtype=torch.float64)
    v = 3 * torch.randn(5, 8, generator=g, dtype=torch.float64)
    for norm, eps in (("linf", 0.5), ("l2", 1.5), ("l1", 2.0), ("l0", 3.0)):
        got = project_ball(v, x, norm, eps, bounds)
        torch.testing.assert_close(got, reference(v, x, norm, eps, bounds), atol=1e-9, rtol=0)


@pytest.mark.parametrize("bounds", [(-math.inf, 0.6), (0.0, math.inf), (-math.inf, math.inf)])
def test_l2_projection_with_an_unbounded_side(bounds) -> None:
    """A box open on one or both sides (``InputDomain`` allows it): no 0·∞ turns into NaN, and
    the projection still equals the reference."""
    g = torch.Generator().manual_seed(4)
    x = 0.5 * torch.rand(20, 12, generator=g)
    v = torch.randn(20, 12, generator=g)
    got = project_ball(v, x, "l2", 0.7, bounds)
    assert not bool(torch.isnan(got).any())
    want = reference(v, x, "l2", 0.7, bounds).to(got.dtype)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_of_a_tensor_that_requires_grad(norm: str) -> None:
    """Projecting a δ that requires grad (e.g. inside a training loop) gives the same point
    and a gradient, and leaves the input untouched."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 10, generator=g)
    v = (2 * torch.randn(6, 10, generator=g)).requires_grad_(True)
    before = v.detach().clone()
    got = project_ball(v, x, norm, 1.2, BOUNDS)
    torch.testing.assert_close(got.detach(), project_ball(before, x, norm, 1.2, BOUNDS))
    assert torch.equal(v.detach(), before)
    if got.requires_grad:
        (grad,) = torch.autograd.grad(got.sum(), v)
        assert bool(torch.isfinite(grad).all())


def test_unknown_norm_raises() -> None:
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="norm"):
        project_ball(v, v, "l3", 1.0, BOUNDS)
    with pytest.raises(ValueError, match="norm"):
        lp_norm(v, "l3")


# ----- random_start -------------------------------------------------------------------------
START_EPS = {"linf": 0.1, "l2": 1.0, "l1": 3.0, "l0": 5.0}


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_inside_ball_and_box(norm: str, images: torch.Tensor) -> None:
    x = images.clone()
    x[:, :, :2] = 0.0  # rows on the lower bound
    x[:, :, -2:] = 1.0  # and on the upper one
    t = ThreatModel(norm, START_EPS[norm])
    delta = random_start(x, t, torch.Generator().manual_seed(0))
    assert delta.shape == x.shape and delta.dtype == x.dtype
    lo, hi = box_limits(x, t.bounds)
    assert bool(((delta >= lo) & (delta <= hi)).all())
    assert bool((lp_norm(delta.double(), norm) <= t.eps * (1 + 1e-6)).all())
    assert bool((lp_norm(delta, norm) > 0).all()), "a start that does not move"


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_is_deterministic_for_a_seeded_generator(norm: str, images) -> None:
    t = ThreatModel(norm, START_EPS[norm])
    a = random_start(images, t, torch.Generator().manual_seed(5))
    b = random_start(images, t, torch.Generator().manual_seed(5))
    c = random_start(images, t, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.4), ("l1", 0.4)])
def test_random_start_is_uniform_in_the_ball(norm: str, eps: float) -> None:
    """Uniform in a d-dim ball ⇔ (‖δ‖/ε)^d ~ U(0, 1); in particular radii are spread, not all ε.

    x = 0.5 and ε small enough that the box never clips, so this tests the ball sampler itself.
    """
    d = 16
    x = torch.full((2000, 1, 4, 4), 0.5, dtype=torch.float64)
    delta = random_start(x, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    r = lp_norm(delta, norm) / eps
    assert float(r.max()) <= 1 + 1e-12
    assert float(r.min()) < 0.9, "every start is on the sphere"
    assert stats.kstest((r**d).numpy(), "uniform").pvalue > 1e-3


def test_random_start_l0_changes_at_most_k_elements(images) -> None:
    t = ThreatModel("l0", 4)
    delta = random_start(images, t, torch.Generator().manual_seed(0))
    assert bool((lp_norm(delta, "l0") <= 4).all())
    assert bool((lp_norm(delta, "l0") >= 1).all())


def test_random_start_needs_eps(images) -> None:
    with pytest.raises(ValueError, match="eps"):
        random_start(images, ThreatModel("linf"), torch.Generator())


# ----- ascent -------------------------------------------------------------------------------
def _grad(seed: int = 0, shape=(8, 1, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_ascent_linf_is_the_sign() -> None:
    g = _grad()
    g[0, 0, 0, :3] = 0.0
    s = ascent(g, "linf")
    assert torch.equal(s, g.sign())
    # it is the maximizer of ⟨g, s⟩ over ‖s‖∞ ≤ 1: the value is ‖g‖₁
    torch.testing.assert_close((g * s).flatten(1).sum(1), lp_norm(g, "l1"))


def test_ascent_l2_is_unit_and_parallel() -> None:
    g = _grad()
    s = ascent(g, "l2")
    torch.testing.assert_close(lp_norm(s, "l2"), torch.ones(len(g)))
    torch.testing.assert_close((g * s).flatten(1).sum(1), lp_norm(g, "l2"))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_ascent_l1_sparse_unit_and_never_blocked(sparsity: float, images) -> None:
    g = _grad(1)
    x_adv = images[: len(g)].clone()
    x_adv[:, :, :3] = 1.0  # on the upper bound: positive gradients there are blocked
    x_adv[:, :, -3:] = 0.0  # on the lower bound: negative gradients there are blocked
    s = ascent(g, "l1", x_adv=x_adv, bounds=BOUNDS, sparsity=sparsity)
    d = g[0].numel()
    k = math.ceil((1 - sparsity) * d)
    torch.testing.assert_close(lp_norm(s, "l1"), torch.ones(len(g)))
    assert bool((lp_norm(s, "l0") <= k).all())
    assert bool((lp_norm(s, "l0") >= 1).all())
    blocked = ((x_adv >= 1) & (g > 0)) | ((x_adv <= 0) & (g < 0))
    assert not bool((blocked & (s != 0)).any()), "a step into a bound"
    assert bool(((s == 0) | (s.sign() == g.sign())).all())
    # the support is the largest |g| among the unblocked coordinates
    mag = torch.where(blocked, torch.zeros_like(g), g.abs()).flatten(1)
    on = (s != 0).flatten(1)
    smallest_on = torch.where(on, mag, torch.full_like(mag, math.inf)).amin(1)
    largest_off = torch.where(on, torch.zeros_like(mag), mag).amax(1)
    assert bool((smallest_on >= largest_off).all())


def test_ascent_l1_without_bounds_is_top_k_sign() -> None:
    g = _grad(2, shape=(3, 20))
    s = ascent(g, "l1", sparsity=0.8)  # k = 4
    top = g.abs().topk(4, dim=1).indices
    want = torch.zeros_like(g).scatter_(1, top, 1.0) * g.sign() / 4
    torch.testing.assert_close(s, want)


def test_ascent_errors() -> None:
    g = _grad()
    with pytest.raises(ValueError, match="l0"):
        ascent(g, "l0")
    with pytest.raises(ValueError, match="norm"):
        ascent(g, "l3")
    with pytest.raises(ValueError, match="sparsity"):
        ascent(g, "l1", sparsity=1.0)
    with pytest.raises(ValueError, match="sparsity"):
        ascent(g, "l1", sparsity=-0.1)


# ----- quantize -----------------------------------------------------------------------------
Q = ThreatModel("linf", 0.1, levels=256)


def _perturbed(images: torch.Tensor, seed: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images + scale * torch.randn(images.shape, generator=g)).clamp(0, 1)


def test_quantize_lands_exactly_on_the_8bit_grid(images) -> None:
    x_adv = _perturbed(images, 0)
    q = quantize(x_adv, images, Q)
    assert torch.equal(q, torch.round(q * 255) / 255)
    assert bool(on_grid(q, Q).all())
    assert bool(((q >= 0) & (q <= 1)).all())
    # it rounds to a neighbour: never more than one grid step away
    assert float((q - x_adv).abs().max()) <= 1 / 255 + 1e-7


@pytest.mark.parametrize("snap", [True, False])
def test_quantize_never_moves_away_from_x(images, snap: bool) -> None:
    """With x on the grid, q_i is on x'_i's side of x_i and |q_i − x_i| ≤ |x'_i − x_i|: strictly
    with snap=False; with snap, up to the documented 1e-4 of a grid step."""
    slack = 1e-4 / 255 if snap else 0.0
    for seed in range(5):
        x_adv = _perturbed(images, seed, scale=0.05)
        q = quantize(x_adv, images, Q, snap=snap)
        assert bool(((q - images).abs() <= (x_adv - images).abs() + slack).all())
        assert bool(((q - images) * (x_adv - images) >= 0).all())
        assert torch.equal(q, torch.round(q * 255) / 255)


def test_quantize_near_a_grid_value() -> None:
    """x = 1/255, x' = (3 − 5e-5)/255: snapping takes x' to level 3 (float noise: it is "on" the
    grid), at most 1e-4 of a step away from x'; strict rounding takes it to level 2."""
    x = torch.tensor([[1 / 255]])
    x_adv = torch.tensor([[(3 - 5e-5) / 255]])
    snapped = quantize(x_adv, x, Q)
    strict = quantize(x_adv, x, Q, snap=False)
    assert float((snapped - x_adv).abs()) <= 1e-4 / 255
    assert torch.equal(snapped, torch.tensor([[3 / 255]]))
    assert torch.equal(strict, torch.tensor([[2 / 255]]))
    assert float((strict - x).abs()) <= float((x_adv - x).abs())


def test_quantize_snap_keeps_float_noise_on_its_level(images) -> None:
    """x + 8/255 computed in float32 is level k + 8 (the reason snapping exists)."""
    x_adv = (images + 8 / 255).clamp(0, 1)
    q = quantize(x_adv, images, Q)
    want = torch.clamp(torch.round(images * 255) + 8, max=255) / 255
    assert torch.equal(q, want)


def test_quantize_never_increases_any_norm_and_stays_in_the_ball(images) -> None:
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5), ("l1", 2.0), ("l0", 10.0)):
        t = ThreatModel(norm, eps, levels=256)
        delta = random_start(images, t, torch.Generator().manual_seed(1))
        x_adv = images + delta
        q = quantize(x_adv, images, t)
        assert bool((lp_norm(q - images, norm) <= lp_norm(x_adv - images, norm) + 1e-6).all())
        assert bool((lp_norm((q - images).double(), norm) <= eps * (1 + 1e-6)).all())


def test_quantize_is_the_identity_on_the_grid(images) -> None:
    assert torch.equal(quantize(images, images, Q), images)
    other = torch.round(_perturbed(images, 3) * 255) / 255
    assert torch.equal(quantize(other, images, Q), other)


def test_quantize_other_bounds_and_levels() -> None:
    t = ThreatModel("l2", 1.0, bounds=(-1.0, 1.0), levels=5)  # grid −1, −0.5, 0, 0.5, 1
    x = torch.tensor([[0.0, 0.5, -1.0, 1.0, 0.0, -0.5]])
    x_adv = torch.tensor([[0.3, 0.2, -0.7, 0.6, -0.74, 0.9]])
    q = quantize(x_adv, x, t)  # each element rounds to the grid value next to it on x's side
    torch.testing.assert_close(q, torch.tensor([[0.0, 0.5, -1.0, 1.0, -0.5, 0.5]]))
    assert bool(on_grid(q, t).all())


def test_quantize_without_levels_is_a_no_op(images) -> None:
    x_adv = _perturbed(images, 0)
    assert quantize(x_adv, images, ThreatModel("linf", 0.1)) is x_adv


def test_on_grid_per_sample(images) -> None:
    x = images.clone()
    x[3, 0, 0, 0] += 0.4 / 255
    flags = on_grid(x, Q)
    assert flags.shape == (len(x),) and flags.dtype == torch.bool
    assert flags.tolist() == [i != 3 for i in range(len(x))]
    assert bool(on_grid(x, ThreatModel()).all())


# ----- lp_norm ------------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "ord_"), [("linf", np.inf), ("l2", 2), ("l1", 1), ("l0", 0)])
def test_lp_norm_against_numpy(norm: str, ord_) -> None:
    d = _grad(4, shape=(7, 3, 2, 2)).double()
    d[2] = 0.0
    d[4, 0, 0] = 0.0
    got = lp_norm(d, norm)
    want = np.linalg.norm(d.flatten(1).numpy(), ord=ord_, axis=1)
    assert got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_round_to_grid_is_nearest_grid_value() -> None:
    from advex.norms import round_to_grid

    threat = ThreatModel("linf", 0.1, levels=256)
    x = torch.rand(4, 1, 6, 6, dtype=torch.float32)
    r = round_to_grid(x, threat)
    assert torch.equal(r, torch.round(r * 255) / 255)
    assert float((r - x).abs().max()) <= 0.5 / 255 + 1e-7
    assert torch.equal(round_to_grid(r, threat), r)
    assert torch.equal(round_to_grid(x, ThreatModel("linf", 0.1)), x)


def test_l2_newton_projection_equals_the_sorted_one() -> None:
    """The iterative L2 ∩ box projection agrees with the closed-form sort-based one, on many
    elements at the lower bound (as on MNIST) and on a few with a huge dynamic range."""
    from advex.norms import _project_l2, _project_l2_sorted, box_limits

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 6, 6, generator=g)
    x[x < 0.4] = 0.0
    v = torch.randn(60, 1, 6, 6, generator=g) * torch.rand(60, 1, 1, 1, generator=g)
    v[:5] *= torch.logspace(-6, 3, 36).reshape(1, 1, 6, 6)
    eps = (torch.rand(60, 1, generator=g) * 3).double().float()
    lo, hi = (t.flatten(1) for t in box_limits(x, (0.0, 1.0)))
    newton = _project_l2(v.flatten(1), eps, lo, hi)
    exact = _project_l2_sorted(v.flatten(1), eps, lo, hi)
    torch.testing.assert_close(newton, exact, atol=2e-6, rtol=0)
    assert bool((newton.norm(dim=1, keepdim=True) <= eps * (1 + 1e-6)).all())
