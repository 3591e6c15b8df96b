"""Exact verification (``advex.certify.mip``) against brute force on tiny networks.

The reference enumerates every activation pattern of a small network over the domain (ReLU
signs and max-pool winners, pruned by LP feasibility) and solves one LP per pattern with
``scipy.optimize.linprog``: the exact minimum margin and the exact minimal L∞/L1 distance. On
2-D inputs a dense grid checks the same numbers from the other side (a sampled point can only
be above the minimum).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from advex.certify import mip
from advex.certify.bounds import layer_bounds
from advex.certify.domain import InputDomain
from advex.certify.milp_encoding import MilpBuilder, encode_network
from advex.certify.mip import (
    Distortion,
    NumericalTroubleWarning,
    Verification,
    minimal_distortion,
    solve_property,
    verify,
)
from advex.certify.network import Affine, Dense, MaxPool, Network, ReLU
from advex.certify.spec import Halfspaces, Property

Array = np.ndarray[Any, Any]

# --------------------------------------------------------------------------- tiny networks


def _centred(model: nn.Module, shape: tuple[int, ...], seed: int, gain: float = 2.0) -> nn.Module:
    """Random weights (scaled by ``gain``) with every bias set so that each neuron's
    pre-activation has mean 0 over random inputs: decision boundaries cross the unit box."""
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(400, *shape, generator=g)
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / fan_in**0.5)
                m.bias.zero_()
                out = m(h)
                m.bias.copy_(-out.transpose(0, 1).reshape(out.shape[1], -1).mean(1))
            h = m(h)
    return model.eval()


def _mlp2d() -> nn.Module:
    """2 → 8 → 8 → 3, 16 ReLUs."""
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return _centred(model, (2,), seed=3, gain=4.0)


def _mlp8x8() -> nn.Module:
    """1×8×8 → 12 → 3, 12 ReLUs."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))
    return _centred(model, (1, 8, 8), seed=1)


def _pool8x8() -> nn.Module:
    """1×8×8 → conv 3×3 stride 2 (9 ReLUs) → max-pool 2×2 stride 1 (4 outputs) → 6 → 3."""
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, stride=2),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    return _centred(model, (1, 8, 8), seed=2)


def _points2d(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[0.3, 0.6], [0.5, 0.5], [0.8, 0.2], [0.1, 0.9], [0.65, 0.35]])
    with torch.no_grad():
        return x, model(x).argmax(1)


def _images(model: nn.Module, n: int = 3, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


# ------------------------------------------------------------------- the brute-force reference


def _lp(cost: Array, a: Array, b: Array, bounds: list[tuple[float, float]]) -> float | None:
    """min cost·w over {a w ≤ b} ∩ bounds, or None if infeasible."""
    res = linprog(cost, A_ub=a if len(a) else None, b_ub=b if len(b) else None, bounds=bounds)
    return float(res.fun) if res.status == 0 else None


def _domain(
    x0: Array, radius: float, norm: str, distance: bool
) -> tuple[Array, Array, list[tuple[float, float]], Array]:
    """LP over w = (x, aux): rows (A, b), variable bounds and the distance cost on w.

    linf: x in the box of the ball; with ``distance`` an aux e ≥ |x − x₀|_i (cost e).
    l1: aux s ≥ |x − x₀| with Σ s ≤ radius (cost Σ s)."""
    n = x0.shape[0]
    box = [(max(0.0, v - radius), min(1.0, v + radius)) for v in x0.tolist()]
    if norm == "linf" and not distance:
        return np.zeros((0, n)), np.zeros(0), box, np.zeros(n)
    q = 1 if norm == "linf" else n
    eye = np.eye(n)
    aux = np.ones((n, 1)) if norm == "linf" else eye
    a = np.vstack([np.hstack([eye, -aux]), np.hstack([-eye, -aux])])
    b = np.concatenate([x0, -x0])
    if norm == "l1":
        a = np.vstack([a, np.concatenate([np.zeros(n), np.ones(n)])[None]])
        b = np.concatenate([b, [radius]])
    cost = np.concatenate([np.zeros(n), np.ones(q)])
    return a, b, box + [(0.0, radius)] * q, cost


def _regions(
    net: Network, a0: Array, b0: Array, bounds: list[tuple[float, float]]
) -> Iterator[tuple[Array, Array, Array, Array]]:
    """Every activation pattern with a non-empty region: (A, b) over w and the logits M·x + c
    on it (x = the first n entries of w)."""
    n = net.input_size
    q = len(bounds) - n

    def pad(m: Array) -> Array:
        return np.hstack([m, np.zeros((m.shape[0], q))])

    lo = np.array([b[0] for b in bounds[:n]])
    hi = np.array([b[1] for b in bounds[:n]])

    def feasible(a: Array, b: Array) -> bool:
        return _lp(np.zeros(n + q), a, b, bounds) is not None

    def interval(m: Array, c: Array) -> tuple[Array, Array]:
        """Bounds of m·x + c over the box of x (prunes branches without an LP)."""
        return c + np.minimum(m * lo, m * hi).sum(1), c + np.maximum(m * lo, m * hi).sum(1)

    def walk(k: int, m: Array, c: Array, a: Array, b: Array) -> Iterator[Any]:
        layer = net.layers[k]
        if isinstance(layer, Affine):
            w = layer.matrix().toarray()
            m, c = w @ m, w @ c + layer.bias.numpy()
            if k == len(net.layers) - 1:
                yield a, b, m, c
            else:
                yield from walk(k + 1, m, c, a, b)
        elif isinstance(layer, ReLU):
            yield from relu(k, 0, m, c, a, b)
        else:
            assert isinstance(layer, MaxPool)
            yield from pool(k, layer.groups.numpy(), 0, m, c, np.zeros((0, n)), [], a, b)

    def relu(k: int, i: int, m: Array, c: Array, a: Array, b: Array) -> Iterator[Any]:
        if i == m.shape[0]:
            yield from walk(k + 1, m, c, a, b)
            return
        low, high = interval(m[i : i + 1], c[i : i + 1])
        for active in (True, False):
            if (active and high[0] <= 0) or (not active and low[0] >= 0):
                continue
            sign = -1.0 if active else 1.0
            a2 = np.vstack([a, pad(sign * m[i : i + 1])])
            b2 = np.concatenate([b, [-sign * c[i]]])
            if low[0] >= 0 or high[0] <= 0 or feasible(a2, b2):
                m2, c2 = m.copy(), c.copy()
                if not active:
                    m2[i], c2[i] = 0.0, 0.0
                yield from relu(k, i + 1, m2, c2, a2, b2)

    def pool(
        k: int,
        groups: Array,
        j: int,
        m: Array,
        c: Array,
        mo: Array,
        co: list[float],
        a: Array,
        b: Array,
    ) -> Iterator[Any]:
        if j == groups.shape[0]:
            yield from walk(k + 1, mo, np.array(co), a, b)
            return
        g = groups[j]
        low, high = interval(m[g], c[g])
        for w, win in enumerate(g):
            if high[w] < low.max():
                continue
            others = [o for o in g if o != win]
            rows = pad(m[others] - m[win][None])
            a2 = np.vstack([a, rows])
            b2 = np.concatenate([b, c[win] - c[others]])
            if feasible(a2, b2):
                yield from pool(
                    k, groups, j + 1, m, c, np.vstack([mo, m[win][None]]), [*co, c[win]], a2, b2
                )

    yield from walk(0, np.eye(n), np.zeros(n), a0, b0)


def _min_margin(net: Network, x0: Array, label: int, eps: float, norm: str) -> float:
    """min over the domain of min_{j≠y} z_y − z_j, by enumeration."""
    a0, b0, bounds, _ = _domain(x0, eps, norm, distance=False)
    q = len(bounds) - net.input_size
    best = math.inf
    for a, b, m, c in _regions(net, a0, b0, bounds):
        for j in range(m.shape[0]):
            if j != label:
                cost = np.concatenate([m[label] - m[j], np.zeros(q)])
                v = _lp(cost, a, b, bounds)
                if v is not None:
                    best = min(best, v + c[label] - c[j])
    return best


def _min_distance(net: Network, x0: Array, label: int, radius: float, norm: str) -> float:
    """min ‖x − x₀‖ over x in the ball of ``radius`` ∩ box with z_j ≥ z_y for some j."""
    a0, b0, bounds, cost = _domain(x0, radius, norm, distance=True)
    q = len(bounds) - net.input_size
    best = math.inf
    for a, b, m, c in _regions(net, a0, b0, bounds):
        for j in range(m.shape[0]):
            if j != label:
                row = np.concatenate([m[label] - m[j], np.zeros(q)])[None]
                v = _lp(cost, np.vstack([a, row]), np.concatenate([b, [c[j] - c[label]]]), bounds)
                if v is not None:
                    best = min(best, v)
    return best


def _grid(x0: Array, eps: float, steps: int = 301) -> torch.Tensor:
    """A grid over the L∞ ball ∩ [0, 1]² around a 2-D point."""
    axes = [
        torch.linspace(max(0.0, v - eps), min(1.0, v + eps), steps, dtype=torch.float64) for v in x0
    ]
    return torch.cartesian_prod(*axes)


def _margins(net: Network, x: torch.Tensor, label: int) -> torch.Tensor:
    z = net.forward(x)
    own = z[:, label]
    z = z.clone()
    z[:, label] = -torch.inf
    return own - z.amax(1)


# ------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("factory", [_mlp2d, _pool8x8])
def test_encoding_holds_the_network_at_every_point(factory: Any) -> None:
    """The network's values at any x in the domain (with the active branches' binaries) satisfy
    every row; stable ReLUs take no binary."""
    model = factory()
    shape = (2,) if factory is _mlp2d else (1, 8, 8)
    net = Network.from_module(model, shape)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, *shape, generator=g)
    dom = InputDomain.ball(x0, 0.15, "linf")
    lb = layer_bounds(net, dom, "ibp")
    builder = MilpBuilder()
    cols = encode_network(builder, net, lb)
    milp = builder.build()
    lo, hi = dom.box()
    for _ in range(20):
        x = lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=torch.float64)
        v = cols.assign(x, milp.num_col)
        assert not np.isnan(v).any()
        assert milp.violation(v) < 1e-9
    expected = sum(
        int(((lb.lower[i] < 0) & (lb.upper[i] > 0)).sum())
        for i, layer in enumerate(net.layers)
        if isinstance(layer, ReLU)
    )
    assert cols.unstable == expected
    assert int(milp.integer.sum()) >= cols.unstable


# --------------------------------------------------------------------------- verify: exact


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("linf", 0.15), ("l1", 0.2)])
def test_min_margin_equals_enumeration_2d(norm: str, eps: float) -> None:
    model = _mlp2d()
    net = Network.from_module(model, (2,))
    x, y = _points2d(model)
    x, y = x[[1, 2, 4]], y[[1, 2, 4]]
    res = verify(model, x, y, eps, norm=norm, bounds_method="ibp", stop_early=False)
    for i in range(len(y)):
        exact = _min_margin(net, x[i].double().numpy(), int(y[i]), eps, norm)
        # Equal up to the safety margin SAFETY·(1 + |bound|) taken off every certificate.
        assert exact - 1e-4 <= float(res.margin_lower[i]) <= exact + 1e-9
        assert res.status[i] == ("robust" if exact > 0 else "not robust")
        if norm == "linf":  # a sampled point is never below the minimum
            grid_min = float(_margins(net, _grid(x[i].double().numpy(), eps), int(y[i])).min())
            assert exact <= grid_min + 1e-9
            assert grid_min - exact < 0.02


@pytest.mark.parametrize("factory", [_mlp8x8, _pool8x8])
def test_min_margin_equals_enumeration_8x8(factory: Any) -> None:
    model = factory()
    net = Network.from_module(model, (1, 8, 8))
    x, y = _images(model)
    eps = 0.02
    res = verify(model, x, y, eps, bounds_method="ibp", stop_early=False)
    for i in range(len(y)):
        exact = _min_margin(net, x[i].reshape(-1).double().numpy(), int(y[i]), eps, "linf")
        assert exact - 1e-4 <= float(res.margin_lower[i]) <= exact + 1e-9
        assert res.status[i] == ("robust" if exact > 0 else "not robust")


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("linf", 0.15), ("l1", 0.2)])
def test_early_stop_gives_the_same_answer(norm: str, eps: float) -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    full = verify(model, x, y, eps, norm=norm, bounds_method="ibp", stop_early=False)
    fast = verify(model, x, y, eps, norm=norm, bounds_method="ibp")
    assert fast.status == full.status
    decided = [s for s in fast.decided_by if s]
    assert set(decided) <= {"clean", "falsifier", "bounds", "lp", "milp"}
    # The certified lower bound is never above the exact minimum.
    assert bool((fast.margin_lower[fast.robust] <= full.margin_lower[fast.robust] + 1e-6).all())


# ----------------------------------------------------------------------- minimal distortion


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_minimal_distortion_equals_enumeration_2d(norm: str) -> None:
    model = _mlp2d()
    net = Network.from_module(model, (2,))
    x, y = _points2d(model)
    x, y = x[[0, 1, 4]], y[[0, 1, 4]]
    res = minimal_distortion(model, x, y, norm=norm, bounds_method="ibp")
    for i in range(len(y)):
        x0 = x[i].double().numpy()
        assert bool(res.exact[i])
        upper = float(res.upper[i])
        # d* ≤ upper (x_adv is adversarial), so the ball of radius upper holds the minimum.
        exact = _min_distance(net, x0, int(y[i]), 1.01 * upper + 1e-6, norm)
        assert float(res.lower[i]) <= exact + 1e-9
        assert upper == pytest.approx(exact, rel=2e-4, abs=1e-7)
        _check_adversarial(model, x[i], y[i], res, i, norm)


@pytest.mark.parametrize("factory", [_mlp8x8, _pool8x8])
def test_minimal_distortion_equals_enumeration_8x8(factory: Any) -> None:
    model = factory()
    net = Network.from_module(model, (1, 8, 8))
    x, y = _images(model, n=1 if factory is _pool8x8 else 2)
    res = minimal_distortion(model, x, y, norm="linf", bounds_method="ibp")
    for i in range(len(y)):
        upper = float(res.upper[i])
        x0 = x[i].reshape(-1).double().numpy()
        exact = _min_distance(net, x0, int(y[i]), 1.01 * upper + 1e-6, "linf")
        assert float(res.lower[i]) <= exact + 1e-9
        assert upper == pytest.approx(exact, rel=2e-4, abs=1e-7)
        _check_adversarial(model, x[i], y[i], res, i, "linf")


def _check_adversarial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, res: Distortion, i: int, norm: str
) -> None:
    """x_adv is misclassified by a float64 forward pass, in the box, at distance ``upper``."""
    adv = res.x_adv[i]
    assert bool(((adv >= 0) & (adv <= 1)).all())
    with torch.no_grad():
        z = copy.deepcopy(model).double()(adv[None].double())
    assert int(z.argmax(1)) != int(y)
    delta = (adv.double() - x.double()).reshape(-1)
    dist = {"linf": delta.abs().max(), "l1": delta.abs().sum(), "l2": delta.norm()}[norm]
    assert float(dist) == pytest.approx(float(res.upper[i]), abs=1e-12)


def _grid_l2(net: Network, x0: torch.Tensor, label: int, step: float = 1e-3) -> float:
    axis = torch.arange(0.0, 1.0 + step / 2, step, dtype=torch.float64)
    pts = torch.cartesian_prod(axis, axis)
    bad = _margins(net, pts, label) < 0
    return float((pts[bad] - x0.double()).norm(dim=1).min())


def test_minimal_distortion_l2_scip_matches_grid() -> None:
    pytest.importorskip("pyscipopt")
    model = _mlp2d()
    net = Network.from_module(model, (2,))
    x, y = _points2d(model)
    x, y = x[:3], y[:3]
    res = minimal_distortion(model, x, y, norm="l2", bounds_method="ibp", solver="scip")
    assert res.solver == ["scip"] * 3
    for i in range(3):
        grid = _grid_l2(net, x[i], int(y[i]))
        assert bool(res.exact[i])
        assert float(res.upper[i]) <= grid + 1e-9  # the grid's best point is adversarial
        assert float(res.upper[i]) >= grid - 2e-3  # the closest point is near a grid point
        _check_adversarial(model, x[i], y[i], res, i, "l2")


def test_minimal_distortion_l2_interval_brackets_the_grid() -> None:
    model = _mlp2d()
    net = Network.from_module(model, (2,))
    x, y = _points2d(model)
    res = minimal_distortion(model, x[:3], y[:3], norm="l2", bounds_method="ibp", solver="interval")
    assert res.solver == ["interval"] * 3
    for i in range(3):
        grid = _grid_l2(net, x[i], int(y[i]))
        assert float(res.lower[i]) <= grid + 1e-9
        assert float(res.upper[i]) >= grid - 2e-3
        assert float(res.lower[i]) <= float(res.upper[i])


def test_minimal_distortion_clean_mistake_is_zero() -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    wrong = (y[:1] + 1) % 3
    res = minimal_distortion(model, x[:1], wrong)
    assert float(res.upper[0]) == 0.0 and float(res.lower[0]) == 0.0 and bool(res.exact[0])
    assert res.solver == ["clean"]


def test_minimal_distortion_with_given_upper() -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    free = minimal_distortion(model, x[:2], y[:2], bounds_method="ibp")
    given = minimal_distortion(model, x[:2], y[:2], upper=free.upper * 1.5, bounds_method="ibp")
    assert torch.allclose(given.upper, free.upper, rtol=2e-4)
    # A radius below d*: nothing inside, so d* ≥ that radius and no point is returned.
    small = minimal_distortion(model, x[:2], y[:2], upper=free.lower * 0.5, bounds_method="ibp")
    assert bool(torch.isinf(small.upper).all())
    assert torch.allclose(small.lower, free.lower * 0.5, rtol=0, atol=1e-6)
    assert bool(torch.isnan(small.x_adv).all())


# ------------------------------------------------------------------- soundness and re-checks


def test_counterexamples_are_rechecked() -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    for falsifier in (True, False):
        res = verify(model, x, y, 0.15, bounds_method="ibp", falsifier=falsifier)
        broken = [i for i, s in enumerate(res.status) if s == "not robust"]
        assert broken
        for i in broken:
            adv = res.counterexample[i]
            assert float((adv - x[i].double()).abs().max()) <= 0.15 + 1e-12
            with torch.no_grad():
                z = copy.deepcopy(model).double()(adv[None])
            margin = z[0, y[i]] - z[0].scatter(0, y[i : i + 1], -torch.inf).max()
            assert float(margin) < 0
            assert float(res.margin_adv[i]) == pytest.approx(float(margin), abs=1e-12)
        for i in set(range(len(y))) - set(broken):
            assert bool(torch.isnan(res.counterexample[i]).all())
            assert math.isnan(float(res.margin_adv[i]))


@pytest.mark.parametrize("factory, eps", [(_mlp2d, 0.1), (_pool8x8, 0.02)])
def test_robust_samples_survive_strong_pgd(factory: Any, eps: float) -> None:
    from advex import ThreatModel
    from advex.attacks import PGD

    model = factory()
    x, y = _points2d(model) if factory is _mlp2d else _images(model, n=6)
    res = verify(model, x, y, eps, bounds_method="ibp")
    robust = res.robust
    assert bool(robust.any())
    attack = PGD(ThreatModel("linf", eps=eps), steps=100, restarts=10, seed=1)
    result = attack(model, x[robust], y[robust])
    assert not bool(result.success.any())
    assert bool((res.margin_lower[robust] > 0).all())


def test_clean_mistake_is_its_own_counterexample() -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    res = verify(model, x[:2], (y[:2] + 1) % 3, 0.01)
    assert res.status == ["not robust", "not robust"]
    assert res.decided_by == ["clean", "clean"]
    assert torch.equal(res.counterexample, x[:2].double())
    assert bool((res.margin_adv < 0).all())


def _hard_net() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 10)
    )


def test_time_limit_is_unknown_never_robust() -> None:
    model = _hard_net()
    x, y = _images(model, n=2)
    res = verify(model, x, y, 0.3, time_limit=0.02, bounds_method="ibp", falsifier=False)
    # No proof fits in 20 ms; a counterexample might (it is re-checked), a proof never.
    assert "unknown" in res.status and "robust" not in res.status
    for status, by in zip(res.status, res.decided_by, strict=True):
        assert (status, by) in {("unknown", ""), ("not robust", "milp")}
    assert res.certified_accuracy == 0.0 and res.decided_fraction < 1.0


def test_solver_error_warns_and_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    monkeypatch.setattr(mip, "_status_name", lambda h: "kSolveError")
    with pytest.warns(NumericalTroubleWarning, match="kSolveError"):
        res = verify(model, x, y, 0.15, bounds_method="ibp", falsifier=False)
    # Proofs by interval bounds and re-checked counterexamples survive; no solver bound does.
    for status, by in zip(res.status, res.decided_by, strict=True):
        assert (status, by) in {("robust", "bounds"), ("unknown", ""), ("not robust", "milp")}
    assert "unknown" in res.status


def test_unsound_bounds_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds that exclude the domain's centre make every answer but a re-checked
    counterexample unknown (an infeasible MILP would otherwise read as a proof)."""
    model = _mlp2d()
    x, y = _points2d(model)
    real = mip._layer_bounds

    def too_tight(*args: Any) -> Any:
        lb = real(*args)
        lb.lower[1] = lb.upper[1] + 1.0  # the first pre-activations above their true values
        lb.upper[1] = lb.upper[1] + 2.0
        return lb

    monkeypatch.setattr(mip, "_layer_bounds", too_tight)
    with pytest.warns(NumericalTroubleWarning, match="centre"):
        res = verify(model, x, y, 0.05, bounds_method="ibp", falsifier=False)
    assert res.status == ["unknown"] * len(y)


def test_infeasible_exhaustive_milp_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    real = mip._solve

    def infeasible(*args: Any, **kwargs: Any) -> Any:
        run = real(*args, **kwargs)
        return mip._Run("kInfeasible", -math.inf, math.inf, None, run.seconds)

    monkeypatch.setattr(mip, "_solve", infeasible)
    with pytest.warns(NumericalTroubleWarning, match="infeasible"):
        res = verify(model, x, y, 0.15, bounds_method="ibp", stop_early=False)
    assert "robust" not in res.status


def test_lp_dual_bound_is_sound_and_tight() -> None:
    """The weak-duality bound of the LP screen is ≤ the LP optimum and within 1e-6 of it."""
    model = _mlp2d()
    net = Network.from_module(model, (2,))
    x, _ = _points2d(model)
    dom = InputDomain.ball(x[:1].double(), 0.15, "linf")
    lb = layer_bounds(net, dom, "ibp")
    builder = MilpBuilder()
    cols = encode_network(builder, net, lb)
    milp = builder.build()
    hcols, coef, const = cols.output_form(torch.tensor([[1.0, -1.0, 0.0]]), torch.zeros(1))
    cost = np.zeros(milp.num_col)
    cost[hcols] = coef[0]
    (bound,) = mip._lp_bounds([(milp, cost, float(const[0]))], math.inf)
    a = milp.matrix.toarray()
    finite_hi = np.isfinite(milp.row_upper)
    finite_lo = np.isfinite(milp.row_lower)
    res = linprog(
        cost,
        A_ub=np.vstack([a[finite_hi], -a[finite_lo]]),
        b_ub=np.concatenate([milp.row_upper[finite_hi], -milp.row_lower[finite_lo]]),
        bounds=list(zip(milp.col_lower, milp.col_upper, strict=True)),
    )
    assert bound <= res.fun + const[0] + 1e-9
    assert bound == pytest.approx(res.fun + const[0], abs=1e-6)


# --------------------------------------------------------------------------- properties


def _abs_net() -> Network:
    """z₀ = relu(x₀ − x₁), z₁ = relu(x₁ − x₀) on [0, 1]²: never both positive, each ≤ 1."""
    w1 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    return Network(
        [Dense(w1, torch.zeros(2)), ReLU((2,)), Dense(torch.eye(2), torch.zeros(2))], (2,)
    )


def _box() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(2), torch.ones(2)


@pytest.mark.parametrize("falsifier", [True, False])
def test_property_sat_has_a_rechecked_counterexample(falsifier: bool) -> None:
    net = _abs_net()
    lo, hi = _box()
    # z₀ ≥ 0.9: only near x = (1, 0).
    prop = Property(lo, hi, (Halfspaces(torch.tensor([[-1.0, 0.0]]), torch.tensor([-0.9])),))
    res = solve_property(net, prop, time_limit=10, falsifier=falsifier)
    assert res.status == "sat"
    assert res.counterexample is not None and res.outputs is not None
    assert bool(prop.violated_by(res.counterexample[None], res.outputs[None])[0])
    assert torch.allclose(res.outputs, net.forward(res.counterexample[None])[0])
    # without PGD, the descent from the LP minimizer or the MILP finds it
    assert res.decided_by in (("falsifier",) if falsifier else ("lp", "milp"))


def test_property_unsat_by_bounds_and_by_milp() -> None:
    net = _abs_net()
    lo, hi = _box()
    # z₀ ≥ 1.5 is beyond the interval bound of z₀.
    beyond = Property(lo, hi, (Halfspaces(torch.tensor([[-1.0, 0.0]]), torch.tensor([-1.5])),))
    res = solve_property(net, beyond, time_limit=10, bounds_method="ibp")
    assert (res.status, res.decided_by) == ("unsat", "bounds")
    assert res.lower > 0
    # z₀ ≥ 0.4 and z₁ ≥ 0.4 together (two rows): the relaxation allows it, the network not.
    both = Halfspaces(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), torch.tensor([-0.4, -0.4]))
    res = solve_property(net, Property(lo, hi, (both,)), time_limit=10, bounds_method="ibp")
    assert res.status == "unsat"
    assert res.decided_by == "milp"
    assert res.counterexample is None


def test_property_union_is_sat_if_one_disjunct_is() -> None:
    net = _abs_net()
    lo, hi = torch.tensor([0.0, 0.0]), torch.tensor([0.5, 1.0])
    never = Halfspaces(torch.tensor([[-1.0, 0.0]]), torch.tensor([-0.6]))  # z₀ ≤ 0.5 here
    some = Halfspaces(torch.tensor([[0.0, -1.0]]), torch.tensor([-0.95]))  # z₁ ≥ 0.95 at (0, 1)
    res = solve_property(net, Property(lo, hi, (never, some)), time_limit=10, falsifier=False)
    assert res.status == "sat"
    assert res.counterexample is not None
    assert float(res.counterexample[0]) <= 0.5 + 1e-12


# ---------------------------------------------------------------- cardinality and exceptions


def test_result_fields() -> None:
    model = _pool8x8()
    x, y = _images(model, n=3)
    res = verify(model, x, y, 0.05, bounds_method="ibp")
    assert isinstance(res, Verification) and len(res) == 3
    assert res.robust.shape == (3,) and res.robust.dtype == torch.bool
    assert res.counterexample.shape == x.shape and res.counterexample.dtype == torch.float64
    for t in (res.margin_lower, res.margin_adv, res.seconds):
        assert t.shape == (3,) and t.dtype == torch.float64
    assert res.unstable.shape == (3,)
    assert res.eps == 0.05 and res.norm == "linf" and res.bounds_method == "ibp"
    assert res.certified_accuracy == pytest.approx(float(res.robust.double().mean()))
    assert 0.0 <= res.decided_fraction <= 1.0
    assert bool((res.seconds >= 0).all())
    dist = minimal_distortion(model, x[:2], y[:2], bounds_method="ibp")
    assert isinstance(dist, Distortion) and len(dist) == 2
    assert dist.x_adv.shape == x[:2].shape
    for t in (dist.lower, dist.upper, dist.seconds):
        assert t.shape == (2,) and t.dtype == torch.float64
    assert dist.exact.dtype == torch.bool
    assert bool((dist.lower <= dist.upper).all())


def test_network_input_is_accepted() -> None:
    model = _mlp2d()
    net = Network.from_module(model, (2,))
    x, y = _points2d(model)
    a = verify(net, x, y, 0.1, bounds_method="ibp")
    b = verify(model, x, y, 0.1, bounds_method="ibp")
    assert a.status == b.status


def test_default_bounds_method_is_the_tightest_available() -> None:
    from advex.certify.bounds import METHODS

    model = _mlp2d()
    x, y = _points2d(model)
    res = verify(model, x[:1], y[:1], 0.05)
    assert res.bounds_method == ("progressive" if "progressive" in METHODS else "ibp")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"norm": "l2"}, "norm"),
        ({"eps": -0.1}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"time_limit": 0}, "time_limit"),
        ({"bounds_method": "magic"}, "bounds_method"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_verify_rejects_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    args = {"eps": 0.1, **kwargs}
    eps = args.pop("eps")
    with pytest.raises(ValueError, match=name):
        verify(model, x, y, eps, **args)


def test_verify_rejects_bad_data() -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    with pytest.raises(ValueError, match="x"):
        verify(model, x + 2, y, 0.1)
    with pytest.raises(ValueError, match="y"):
        verify(model, x, y[:2], 0.1)
    with pytest.raises(ValueError, match="y"):
        verify(model, x, y + 5, 0.1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"norm": "l0"}, "norm"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"upper": -1.0}, "upper"),
        ({"upper": torch.ones(3)}, "upper"),
        ({"solver": "gurobi"}, "solver"),
        ({"time_limit": -1.0}, "time_limit"),
    ],
)
def test_minimal_distortion_rejects_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    model = _mlp2d()
    x, y = _points2d(model)
    with pytest.raises(ValueError, match=name):
        minimal_distortion(model, x, y, **kwargs)


def test_solve_property_rejects_mismatched_sizes() -> None:
    net = _abs_net()
    prop = Property(torch.zeros(3), torch.ones(3), (Halfspaces(torch.ones(1, 2), torch.zeros(1)),))
    with pytest.raises(ValueError, match="prop"):
        solve_property(net, prop)
    prop = Property(torch.zeros(2), torch.ones(2), (Halfspaces(torch.ones(1, 4), torch.zeros(1)),))
    with pytest.raises(ValueError, match="prop"):
        solve_property(net, prop)
    with pytest.raises(TypeError, match="net"):
        solve_property(_mlp2d(), prop)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ a trained network


@pytest.mark.slow
def test_digits_mlp_decided_and_consistent_with_pgd(digits: Any) -> None:
    from advex import ThreatModel
    from advex.attacks import PGD

    x, y = digits.x[:12], digits.y[:12]
    res = verify(digits.model, x, y, 0.03, time_limit=30)
    assert res.decided_fraction == 1.0
    robust = res.robust
    if bool(robust.any()):
        attack = PGD(ThreatModel("linf", eps=0.03), steps=100, restarts=5, seed=2)
        assert not bool(attack(digits.model, x[robust], y[robust]).success.any())
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalTroubleWarning)
        verify(digits.model, x[:4], y[:4], 0.01, time_limit=30)
