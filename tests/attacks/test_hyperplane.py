"""Projection onto a hyperplane ∩ box: closed forms, brute force (scipy), the unreachable case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from advex.attacks.hyperplane import project_hyperplane

NORMS = ("linf", "l2", "l1")


def _instances(n: int, d: int, seed: int, box: float = 1.0):
    """n random problems in float64: x inside [0, 1]^d, hyperplanes that cut the box."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[:, 0] *= torch.rand(n, generator=g, dtype=torch.float64) < 0.7  # some zero weights
    target = torch.rand(n, d, generator=g, dtype=torch.float64) * box  # a point in the box
    b = -(w * target).sum(dim=1)  # the hyperplane passes through it: reachable
    return x, w, b


def _norm(v: np.ndarray, norm: str) -> float:
    return float({"linf": np.abs(v).max(), "l2": np.linalg.norm(v), "l1": np.abs(v).sum()}[norm])


def _brute_force(x: np.ndarray, w: np.ndarray, c: float, norm: str) -> float:
    """min ‖δ‖_p s.t. ⟨w, δ⟩ = c, −x ≤ δ ≤ 1 − x, by scipy (LP for L1/L∞, SLSQP for L2)."""
    d = len(x)
    if norm == "l2":
        res = minimize(
            lambda v: v @ v,
            np.zeros(d),
            jac=lambda v: 2 * v,
            bounds=list(zip(-x, 1 - x, strict=True)),
            constraints=[{"type": "eq", "fun": lambda v: w @ v - c, "jac": lambda v: w}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert res.success, res.message
        return float(np.sqrt(res.fun))
    if norm == "l1":  # δ = p − m, p, m ≥ 0: min Σ p + m
        cost = np.ones(2 * d)
        eq = np.concatenate([w, -w])[None]
        bounds = [(0, 1 - xi) for xi in x] + [(0, xi) for xi in x]
    else:  # variables (δ, t): min t, −t ≤ δ_i ≤ t
        cost = np.concatenate([np.zeros(d), [1.0]])
        eq = np.concatenate([w, [0.0]])[None]
        eye = np.eye(d)
        ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
        bounds = [(-xi, 1 - xi) for xi in x] + [(0, None)]
    res = linprog(
        cost,
        A_ub=None if norm == "l1" else ub,
        b_ub=None if norm == "l1" else np.zeros(2 * d),
        A_eq=eq,
        b_eq=[c],
        bounds=bounds,
        method="highs",
    )
    assert res.status == 0, res.message
    return float(res.fun)


@pytest.mark.parametrize("norm", NORMS)
def test_matches_brute_force_inside_the_box(norm: str) -> None:
    x, w, b = _instances(40, 6, seed=int(NORMS.index(norm)))
    delta = project_hyperplane(x, w, b, 0.0, 1.0, norm)
    # feasible: on the hyperplane, inside the box
    torch.testing.assert_close(
        (w * (x + delta)).sum(dim=1) + b, torch.zeros(40, dtype=torch.float64), atol=1e-9, rtol=0
    )
    assert bool(((x + delta >= -1e-12) & (x + delta <= 1 + 1e-12)).all())
    # optimal: the same norm as the brute-force solution
    c = -((w * x).sum(dim=1) + b)
    for i in range(40):
        best = _brute_force(x[i].numpy(), w[i].numpy(), float(c[i]), norm)
        got = _norm(delta[i].numpy(), norm)
        assert got == pytest.approx(best, rel=1e-6, abs=1e-8), i


def test_l2_satisfies_the_kkt_conditions_and_agrees_with_the_qp() -> None:
    """The L2 solution is unique: δ itself matches the QP's, and δ = clip(λw) for one λ."""
    x, w, b = _instances(20, 5, seed=7)
    delta = project_hyperplane(x, w, b, 0.0, 1.0, "l2")
    c = -((w * x).sum(dim=1) + b)
    for i in range(20):
        xi, wi = x[i].numpy(), w[i].numpy()
        res = minimize(
            lambda v: v @ v,
            np.zeros(5),
            jac=lambda v: 2 * v,
            bounds=list(zip(-xi, 1 - xi, strict=True)),
            constraints=[{"type": "eq", "fun": lambda v, wi=wi, ci=float(c[i]): wi @ v - ci}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        np.testing.assert_allclose(delta[i].numpy(), res.x, atol=1e-5)
        free = (delta[i] > -x[i] + 1e-9) & (delta[i] < 1 - x[i] - 1e-9) & (w[i] != 0)
        ratios = delta[i][free] / w[i][free]
        if ratios.numel() > 1:
            torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))


@pytest.mark.parametrize("norm", NORMS)
def test_closed_forms_without_a_binding_box(norm: str) -> None:
    """A box that never binds: L2 δ = c·w/‖w‖², L∞ δ = c·sign(w)/‖w‖₁, L1 all on argmax |w_i|."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 9, generator=g, dtype=torch.float64)
    w = torch.randn(16, 9, generator=g, dtype=torch.float64)
    b = torch.randn(16, generator=g, dtype=torch.float64)
    c = -((w * x).sum(dim=1) + b).unsqueeze(1)
    delta = project_hyperplane(x, w, b, -1e6, 1e6, norm)
    if norm == "l2":
        expected = c * w / w.square().sum(dim=1, keepdim=True)
    elif norm == "linf":
        expected = c * w.sign() / w.abs().sum(dim=1, keepdim=True)
    else:
        top = w.abs().argmax(dim=1, keepdim=True)
        expected = torch.zeros_like(w).scatter(1, top, c / w.gather(1, top))
    torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_unreachable_hyperplane_gives_the_closest_box_corner(norm: str) -> None:
    """Out of reach: every coordinate with w_i ≠ 0 goes to the bound that moves ⟨w, δ⟩ toward c;
    coordinates with w_i = 0 stay."""
    x = torch.tensor([[0.2, 0.5, 0.9, 0.4], [0.3, 0.3, 0.3, 0.3]], dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 3.0, -0.5]], dtype=torch.float64)
    b = torch.tensor([-100.0, 100.0])  # c = −(⟨w, x⟩ + b): +≈100 in row 0, −≈100 in row 1
    delta = project_hyperplane(x, w, b.double(), 0.0, 1.0, norm)
    expected = torch.tensor([[0.8, -0.5, 0.1, 0.0], [0.7, -0.3, -0.3, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(delta, expected)


@pytest.mark.parametrize("norm", NORMS)
def test_points_already_on_the_plane_and_images(norm: str) -> None:
    """δ = 0 on the hyperplane; (B, C, H, W) inputs come back in their shape; float32 works."""
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    b = -(w * x).flatten(1).sum(dim=1)
    assert torch.equal(project_hyperplane(x, w, b, 0.0, 1.0, norm), torch.zeros_like(x))
    delta = project_hyperplane(x, w, b + 0.1, 0.0, 1.0, norm)
    assert delta.shape == x.shape and delta.dtype == torch.float32
    torch.testing.assert_close((w * (x + delta)).flatten(1).sum(dim=1) + b + 0.1, torch.zeros(3))


def test_bad_arguments() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="norm"):
        project_hyperplane(x, x, torch.zeros(2), 0.0, 1.0, "l0")
    with pytest.raises(ValueError, match="w, b"):
        project_hyperplane(x, torch.zeros(2, 4), torch.zeros(2), 0.0, 1.0, "l2")
