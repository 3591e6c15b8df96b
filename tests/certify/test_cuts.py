"""Anderson et al.'s ReLU cuts: valid for every point of the network, violated by big-M points
outside the convex hull, and a cut-tightened LP bound between the plain LP bound and the MILP."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from advex.certify import mip
from advex.certify.bounds import layer_bounds
from advex.certify.cuts import ReluCuts
from advex.certify.domain import InputDomain
from advex.certify.milp_encoding import MilpBuilder, NetworkColumns, encode_network
from advex.certify.network import Network

Array = np.ndarray[Any, Any]


def _net(seed: int = 0, width: int = 10) -> nn.Module:
    """6 → width → width → 3 with random weights and biases centring every neuron on the box."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
    )
    h = torch.rand(400, 6, generator=g)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.copy_(2 * torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                m.bias.copy_(-(h @ m.weight.T).mean(0))
            h = m(h)
    return model.eval()


def _encoded(seed: int = 0, eps: float = 0.3) -> tuple[Network, NetworkColumns, Any, torch.Tensor]:
    model = _net(seed)
    net = Network.from_module(model, (6,))
    x0 = torch.rand(1, 6, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    dom = InputDomain.ball(x0, eps, "linf")
    lb = layer_bounds(net, dom, "ibp")
    builder = MilpBuilder()
    cols = encode_network(builder, net, lb)
    return net, cols, builder.build(), x0


def _lp_point(milp: Any, cost: Array) -> Array:
    h = milp.highs(cost, 0.0, {"threads": 1})
    h.changeColsIntegrality(
        milp.num_col, np.arange(milp.num_col, dtype=np.int32), np.zeros(milp.num_col, np.uint8)
    )
    h.run()
    return np.asarray(h.getSolution().col_value)


def test_single_neuron_cut_removes_a_big_m_point() -> None:
    """y = relu(x₁ + x₂) on [−1, 1]²: the big-M relaxation admits (x, y, a) = ((1, −1), 1, ½);
    the hull does not (x at a vertex forces y = relu(0) = 0), and the separated cut says y ≤ 0
    there."""
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()
    net = Network.from_module(model, (2,))
    dom = InputDomain.ball(torch.zeros(1, 2, dtype=torch.float64), 1.0, "linf", bounds=(-1, 1))
    lb = layer_bounds(net, dom, "ibp")
    builder = MilpBuilder()
    cols = encode_network(builder, net, lb)
    milp = builder.build()
    ((_, neurons, binaries),) = cols.relu
    point = np.zeros(milp.num_col)
    point[cols.inputs] = [1.0, -1.0]
    point[cols.layer_cols[1]] = 0.0  # v = x₁ + x₂
    point[cols.layer_cols[2][neurons]] = 1.0  # y
    point[binaries] = 0.5
    act = milp.matrix @ point  # feasible for the big-M relaxation (a fractional)
    assert (act >= milp.row_lower - 1e-12).all() and (act <= milp.row_upper + 1e-12).all()
    assert (point >= milp.col_lower).all() and (point <= milp.col_upper).all()
    cuts = ReluCuts(cols, milp).separate(point)
    assert cuts is not None and cuts.num_row == 1
    lhs = cuts.matrix @ point
    assert lhs[0] - cuts.rhs[0] == pytest.approx(1.0, abs=1e-6)  # y ≤ 0 there: violated by 1
    # the true points of the neuron satisfy it
    for x in [(1.0, -1.0), (1.0, 1.0), (-1.0, -1.0), (0.3, 0.2), (-0.7, 0.4)]:
        v = cols.assign(torch.tensor([x], dtype=torch.float64), milp.num_col)
        assert (cuts.matrix @ v - cuts.rhs).max() <= 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuts_never_cut_off_the_network(seed: int) -> None:
    """Cuts separated at LP minimizers of random objectives hold at the network's values (with
    the active branches' binaries) at random inputs of the domain."""
    _, cols, milp, _ = _encoded(seed)
    cutter = ReluCuts(cols, milp)
    assert len(cutter.layers) == 2
    g = np.random.default_rng(seed)
    pools = []
    for _ in range(5):
        cuts = cutter.separate(_lp_point(milp, g.standard_normal(milp.num_col)))
        if cuts is not None:
            pools.append(cuts)
    assert pools, "no cut separated at any LP point"
    lo = milp.col_lower[cols.inputs]
    hi = milp.col_upper[cols.inputs]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(200):
        x = torch.as_tensor(lo) + torch.as_tensor(hi - lo) * torch.rand(6, generator=gen)
        v = cols.assign(x[None], milp.num_col)
        for cuts in pools:
            assert (cuts.matrix @ v - cuts.rhs).max() <= 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_screen_bound_lies_between_lp_and_milp(seed: int) -> None:
    """For the margin of every class: plain LP bound ≤ cut-tightened bound ≤ MILP minimum, and
    the cut rounds do gain on at least one class."""
    net, cols, milp, x0 = _encoded(seed)
    cutter = ReluCuts(cols, milp)
    label = int(net.forward(x0).argmax())
    gained = False
    for j in range(3):
        if j == label:
            continue
        a = torch.zeros(1, 3, dtype=torch.float64)
        a[0, label], a[0, j] = 1.0, -1.0
        hcols, coef, const = cols.output_form(a, torch.zeros(1))
        cost = np.zeros(milp.num_col)
        cost[hcols] = coef[0]
        (plain,) = mip._lp_bounds([(milp, cost, float(const[0]))], math.inf)
        tight, point = mip._cut_screen(milp, cost, float(const[0]), cutter, math.inf)
        exact = mip._solve(milp, cost, float(const[0]), time_limit=60, rel_gap=1e-9)
        assert exact.status == "kOptimal"
        assert point is not None
        assert plain - 1e-9 <= tight <= exact.value + 1e-7
        gained |= tight > plain + 1e-6
    assert gained


def test_verify_decides_by_cuts_and_finds_lp_counterexamples() -> None:
    """``verify`` with the cut screen gives the exhaustive MILP's answer on every sample."""
    model = _net(3, width=16)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(8, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    fast = mip.verify(model, x, y, 0.08, falsifier=False)
    exact = mip.verify(model, x, y, 0.08, stop_early=False)
    assert fast.status == exact.status
    assert "unknown" not in fast.status
