"""Input domains (Lp ball ∩ box) and output properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from advex.certify.domain import InputDomain
from advex.certify.spec import Halfspaces, Property, misclassification


def _lp_min(a: np.ndarray, x0: np.ndarray, eps: float, norm: str) -> float:
    """min a·x over {‖x − x0‖ ≤ eps} ∩ [0, 1]^n by linprog (variables x, t with |x − x0| ≤ t)."""
    n = len(a)
    lo, hi = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    if norm == "linf":
        return float(linprog(a, bounds=list(zip(lo, hi, strict=True))).fun)
    eye = np.eye(n)
    a_ub = np.block([[eye, -eye], [-eye, -eye], [np.zeros((1, n)), np.ones((1, n))]])
    b_ub = np.concatenate([x0, -x0, [eps]])
    res = linprog(
        np.concatenate([a, np.zeros(n)]),
        A_ub=a_ub,
        b_ub=b_ub,
        bounds=list(zip(lo, hi, strict=True)) + [(0, None)] * n,
    )
    return float(res.fun)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_minimize_is_exact(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 7, generator=g, dtype=torch.float64)
    a = torch.randn(4, 5, 7, generator=g, dtype=torch.float64)
    for eps in (0.0, 0.3, 1.5, 10.0):
        dom = InputDomain.ball(x, eps, norm)
        got = dom.minimize(a)
        for b in range(4):
            for k in range(5):
                ref = _lp_min(a[b, k].numpy(), x[b].numpy(), eps, norm)
                assert abs(float(got[b, k]) - ref) < 1e-9


def test_l2_minimum_is_a_sound_lower_bound_and_exact_without_the_box() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.full((2, 5), 0.5, dtype=torch.float64)
    a = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    dom = InputDomain.ball(x, 0.2, "l2")  # the ball lies inside the box: exact
    expected = (a * x[:, None]).sum(-1) - 0.2 * a.norm(dim=-1)
    assert torch.allclose(dom.minimize(a), expected)
    pts = torch.randn(2000, 5, generator=g, dtype=torch.float64)
    pts = 0.5 + 0.2 * pts / pts.norm(dim=1, keepdim=True) * torch.rand(2000, 1, generator=g)
    vals = torch.einsum("bkn,pn->bkp", a, pts).amin(-1)
    assert bool((vals >= dom.minimize(a) - 1e-12).all())


def test_box_and_contains() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0]])
    dom = InputDomain.ball(x, 0.3, "l1")
    lo, hi = dom.box()
    assert torch.equal(lo, torch.tensor([[0.0, 0.2, 0.7]], dtype=torch.float64))
    assert torch.equal(hi, torch.tensor([[0.3, 0.8, 1.0]], dtype=torch.float64))
    assert bool(dom.contains(torch.tensor([[0.1, 0.6, 1.0]]))[0])
    assert not bool(dom.contains(torch.tensor([[0.2, 0.7, 1.0]]))[0])  # L1 = 0.4
    assert not bool(dom.contains(torch.tensor([[-0.01, 0.5, 1.0]]))[0])  # outside the box


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm": "l0"}, "norm"),
        ({"eps": -0.1}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": [0.1, 0.2, 0.3]}, "eps"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_domain_errors(kwargs: dict, match: str) -> None:
    args = {"x": torch.rand(2, 3), "eps": 0.1, "norm": "linf"} | kwargs
    with pytest.raises(ValueError, match=match):
        InputDomain.ball(**args)
    with pytest.raises(ValueError, match="bounds"):
        InputDomain.ball(torch.full((1, 3), 2.0), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        InputDomain.ball(torch.full((1, 3), float("nan")), 0.1)


def test_property_semantics() -> None:
    disjuncts = misclassification(1, 3)
    prop = Property(torch.zeros(2), torch.ones(2), disjuncts)
    x = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.5, 0.5]])
    z = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    # A tie counts as a change of class; a point outside the input box is no counterexample.
    assert prop.violated_by(x, z).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="lower"):
        Property(torch.ones(2), torch.zeros(2), disjuncts)
    with pytest.raises(ValueError, match="disjunct"):
        Property(torch.zeros(2), torch.ones(2), ())
    with pytest.raises(ValueError, match="disagree"):
        Halfspaces(torch.ones(2, 3), torch.ones(3))
