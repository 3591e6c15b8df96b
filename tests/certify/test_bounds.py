"""Bounds (IBP, CROWN, LP, progressive): soundness against sampled and attacked inputs, the
ordering IBP ≤ CROWN ≤ LP ≤ exact (exact by enumerating activation regions), closed-form
cases, and the public ``bounds``/``certified_radius`` contracts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import Tensor, nn

from advex.certify.bounds import (
    METHODS,
    LayerBounds,
    MarginBounds,
    _LPModel,
    _State,
    bounds,
    certified_radius,
    interval_bounds,
    layer_bounds,
    margin_bounds,
)
from advex.certify.domain import InputDomain
from advex.certify.network import Affine, Network
from advex.model import Classifier

EPS = {"linf": 0.1, "l2": 0.3, "l1": 0.4}
TOL = 1e-8


# ----------------------------------------------------------------------------- tiny networks


def _dense(seed: int, d: int = 2, hidden: tuple[int, ...] = (5, 5), k: int = 3) -> Network:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    size = d
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, k))
    return Network.from_module(nn.Sequential(*layers), input_shape=(size,))


def _pool(seed: int) -> Network:
    """Conv → ReLU → max-pool, then a conv feeding a max-pool directly (overlapping windows)."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 2),
        nn.MaxPool2d(2, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3, 3),
    )
    return Network.from_module(module, input_shape=(1, 6, 6))


def _batchnorm(seed: int) -> Network:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3)
    bn.running_mean = torch.randn(3) * 0.1
    bn.running_var = torch.rand(3) + 0.5
    bn.weight.data = torch.randn(3)
    bn.bias.data = torch.randn(3) * 0.1
    module = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        bn,
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).eval()
    return Network.from_module(module, input_shape=(1, 4, 4))


NETS = {"dense": lambda: _dense(0), "pool": lambda: _pool(2), "batchnorm": lambda: _batchnorm(2)}


def _inputs(net: Network, batch: int = 3, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *net.input_shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- attackers


def _project(p: Tensor, domain: InputDomain) -> Tensor:
    """A point of the domain near p (within the ball, then clipped into the box)."""
    c = domain.center.repeat(p.shape[0] // domain.batch, 1)
    e = domain.eps.repeat(p.shape[0] // domain.batch)[:, None]
    d = p - c
    if domain.norm == "linf":
        d = torch.maximum(torch.minimum(d, e), -e)
    else:
        size = d.norm(dim=1, keepdim=True) if domain.norm == "l2" else d.abs().sum(1, keepdim=True)
        d = d * torch.clamp(e / size.clamp_min(1e-12), max=1.0)
    lo, hi = domain.bounds
    return (c + d).clamp(lo, hi)


def _samples(domain: InputDomain, n: int = 200, seed: int = 0) -> Tensor:
    """(n·B, d) points of the domain: random interior points and extremes (vertices,
    ±ε along coordinates, random directions at full radius)."""
    g = torch.Generator().manual_seed(seed)
    b, d = domain.center.shape
    c = domain.center.repeat(n, 1)
    e = domain.eps.repeat(n)[:, None]
    direction = torch.randn(n * b, d, generator=g, dtype=torch.float64)
    signs = torch.randint(0, 2, (n * b, d), generator=g).to(torch.float64) * 2 - 1
    if domain.norm == "linf":
        pts = [c + e * (2 * torch.rand(n * b, d, generator=g, dtype=torch.float64) - 1)]
        pts.append(c + e * signs)
    else:
        size = direction.norm(dim=1, keepdim=True)
        if domain.norm == "l1":
            size = direction.abs().sum(1, keepdim=True)
        scale = torch.rand(n * b, 1, generator=g, dtype=torch.float64)
        pts = [c + e * direction / size * scale, c + e * direction / size]
        axis = torch.eye(d, dtype=torch.float64)[torch.randint(0, d, (n * b,), generator=g)]
        pts.append(c + e * axis * signs)
    return torch.cat([_project(p, domain) for p in pts])


def _descend(net: Network, domain: InputDomain, objective, rows: int, steps: int = 30) -> Tensor:
    """Projected steepest descent from the centre on ``rows`` copies of the batch, each copy
    minimizing its own objective(points) (rows·B,) entry; returns the final points."""
    c = domain.center.repeat(rows, 1)
    e = float(domain.eps.max())
    step = 2.5 * e / steps
    g = torch.Generator().manual_seed(1)
    p = _project(
        c + 0.5 * e * (torch.rand(c.shape, generator=g, dtype=torch.float64) - 0.5), domain
    )
    for _ in range(steps):
        p = p.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(p).sum(), p)
        if domain.norm == "linf":
            move = grad.sign()
        elif domain.norm == "l2":
            move = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            top = grad.abs().argmax(1, keepdim=True)
            move = torch.zeros_like(grad).scatter(1, top, grad.gather(1, top).sign())
        p = _project(p.detach() - step * move, domain)
    return p.detach()


def _attack_points(net: Network, domain: InputDomain, y: Tensor) -> list[Tensor]:
    """Points that push each neuron of each layer up and down, and each margin down."""
    b = domain.batch
    out = []
    sizes = [net.input_size] + [layer.out_size for layer in net.layers]
    for i, n in enumerate(sizes):
        if i == 0 or n > 64:
            continue
        for sign in (1.0, -1.0):
            neuron = torch.arange(n).repeat_interleave(b)

            def objective(p: Tensor, i: int = i, neuron: Tensor = neuron, sign: float = sign):
                v = net.activations(p)[i]
                return sign * v.gather(1, neuron[:, None])[:, 0]

            out.append(_descend(net, domain, objective, n))
    k = net.num_classes
    cls = torch.arange(k).repeat_interleave(b)
    labels = y.repeat(k)

    def margin(p: Tensor) -> Tensor:
        z = net.forward(p)
        return z.gather(1, labels[:, None])[:, 0] - z.gather(1, cls[:, None])[:, 0]

    out.append(_descend(net, domain, margin, k))
    return out


def _assert_contains(net: Network, lb: LayerBounds, points: Tensor) -> None:
    reps = points.shape[0] // lb.domain.batch
    for i, act in enumerate(net.activations(points)):
        lo, hi = lb.lower[i].repeat(reps, 1), lb.upper[i].repeat(reps, 1)
        assert bool((act >= lo - TOL).all()), f"layer {i}: a point falls below the lower bound"
        assert bool((act <= hi + TOL).all()), f"layer {i}: a point exceeds the upper bound"


def _assert_margins(net: Network, margins: Tensor, y: Tensor, points: Tensor) -> None:
    reps = points.shape[0] // len(y)
    z = net.forward(points)
    labels = y.repeat(reps)
    actual = z.gather(1, labels[:, None]) - z
    actual[torch.arange(len(labels)), labels] = torch.inf
    assert bool((actual >= margins.repeat(reps, 1) - TOL).all())


# ----------------------------------------------------------------------------- soundness


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("method", METHODS)
def test_no_sampled_or_attacked_input_violates_a_bound(name: str, norm: str, method: str) -> None:
    net = NETS[name]()
    x = _inputs(net)
    y = net.forward(x).argmax(1)
    domain = InputDomain.ball(x, EPS[norm], norm)
    lb = layer_bounds(net, domain, method)
    margins = margin_bounds(net, domain, y, method)
    points = [_samples(domain), *_attack_points(net, domain, y)]
    for p in points:
        assert bool(domain.contains(p[: domain.batch]).all())
        _assert_contains(net, lb, p)
        _assert_margins(net, margins, y, p)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_per_sample_eps_and_a_deeper_dense_net(norm: str) -> None:
    net = _dense(5, d=4, hidden=(6, 6, 6), k=4)
    x = _inputs(net, batch=4, seed=3)
    y = net.forward(x).argmax(1)
    domain = InputDomain.ball(x, torch.tensor([0.0, 0.05, 0.1, 0.3]), norm)
    points = _samples(domain)
    for method in METHODS:
        _assert_contains(net, layer_bounds(net, domain, method), points)
        _assert_margins(net, margin_bounds(net, domain, y, method), y, points)


# ----------------------------------------------------------------------------- ordering


def _le(a: list[Tensor], b: list[Tensor], tol: float = 0.0) -> bool:
    return all(bool((u <= v + tol).all()) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_each_method_is_at_least_as_tight_as_the_one_before(name: str, norm: str) -> None:
    net = NETS[name]()
    x = _inputs(net, seed=4)
    y = net.forward(x).argmax(1)
    domain = InputDomain.ball(x, EPS[norm], norm)
    b = {m: layer_bounds(net, domain, m) for m in METHODS}
    mb = {m: margin_bounds(net, domain, y, m) for m in METHODS}
    # lower bounds rise and upper bounds fall along ibp → crown → progressive
    assert _le(b["ibp"].lower, b["crown"].lower) and _le(b["crown"].upper, b["ibp"].upper)
    assert _le(b["crown"].lower, b["progressive"].lower)
    assert _le(b["progressive"].upper, b["crown"].upper)
    assert bool((mb["ibp"] <= mb["crown"]).all() and (mb["crown"] <= mb["progressive"]).all())
    assert _le(b["ibp"].lower, b["lp"].lower) and _le(b["lp"].upper, b["ibp"].upper)
    if norm != "l2":  # the LP sees only the box for L2; CROWN sees the ball
        assert _le(b["crown"].lower, b["lp"].lower, 1e-7)
        assert _le(b["lp"].upper, b["crown"].upper, 1e-7)
        assert bool((mb["crown"] <= mb["lp"] + 1e-7).all())
    # on these nets the extra work pays somewhere
    assert bool((mb["crown"] > mb["ibp"]).any())


def _regions(net: Network, box: list[tuple[float, float]], a_ub: np.ndarray, b_ub: np.ndarray):
    """Every activation region of a dense 2-D ReLU net over {x in box, a_ub·x ≤ b_ub}, found
    neuron by neuron (branches checked feasible by an LP): yields the region's constraints and
    the affine maps x ↦ M x + m of the input of every layer (list over layer indices)."""
    weights = [(layer.weight.numpy(), layer.bias.numpy()) for layer in net.layers[::2]]

    def feasible(a: np.ndarray, b: np.ndarray) -> bool:
        res = linprog(np.zeros(2), A_ub=a, b_ub=b, bounds=box, method="highs")
        return res.status == 0

    def walk(layer: int, a: np.ndarray, b: np.ndarray, maps: list):
        w, c = weights[layer]
        m, off = maps[-1]
        pre = (w @ m, w @ off + c)
        if layer == len(weights) - 1:
            yield a, b, [*maps, pre]
            return
        yield from split(layer, 0, a, b, [*maps, pre], np.ones(len(c)))

    def split(layer: int, i: int, a, b, maps, pattern):
        pm, po = maps[-1]
        if i == len(pattern):
            post = (pm * pattern[:, None], po * pattern)
            yield from walk(layer + 1, a, b, [*maps, post])
            return
        for active in (1.0, 0.0):
            # active: −(pm_i x + po_i) ≤ 0; inactive: pm_i x + po_i ≤ 0
            s = -1.0 if active else 1.0
            a2 = np.vstack([a, s * pm[i]])
            b2 = np.append(b, -s * po[i])
            if feasible(a2, b2):
                p2 = pattern.copy()
                p2[i] = active
                yield from split(layer, i + 1, a2, b2, maps, p2)

    x_map = (np.eye(2), np.zeros(2))
    yield from walk(0, a_ub, b_ub, [x_map])


def _exact(net: Network, domain: InputDomain, sample: int, index: int, rows: np.ndarray):
    """min over the domain of rows·v_index, by enumerating activation regions: (len(rows),)."""
    c = domain.center[sample].numpy()
    e = float(domain.eps[sample])
    box = [(max(0.0, ci - e), min(1.0, ci + e)) for ci in c]
    if domain.norm == "l1":  # ±(x1 − c1) ± (x2 − c2) ≤ ε
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=2)))
        a_ub, b_ub = signs, e + signs @ c
    else:
        a_ub, b_ub = np.zeros((0, 2)), np.zeros(0)
    best = np.full(len(rows), np.inf)
    for a, b, maps in _regions(net, box, a_ub, b_ub):
        m, off = maps[index]
        for r, row in enumerate(rows):
            res = linprog(row @ m, A_ub=a, b_ub=b, bounds=box, method="highs")
            if res.status == 0:
                best[r] = min(best[r], res.fun + row @ off)
    return best


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_lp_is_below_the_exact_minimum_found_by_enumeration(norm: str) -> None:
    net = _dense(7)  # 2-5-5-3: 10 ReLUs
    x = torch.tensor([[0.4, 0.6], [0.7, 0.2]], dtype=torch.float64)
    y = net.forward(x).argmax(1)
    domain = InputDomain.ball(x, 0.25, norm)
    lb = {m: layer_bounds(net, domain, m) for m in METHODS}
    mb = {m: margin_bounds(net, domain, y, m) for m in METHODS}
    n = net.layers[2].out_size
    eye = np.eye(n)
    for s in range(2):
        low = _exact(net, domain, s, 3, eye)
        high = -_exact(net, domain, s, 3, -eye)
        k = net.num_classes
        spec = np.eye(k)[int(y[s])] - np.eye(k)
        margin = _exact(net, domain, s, 5, spec)
        margin[int(y[s])] = np.inf
        for m in METHODS:
            assert bool((lb[m].lower[3][s].numpy() <= low + 1e-7).all()), m
            assert bool((lb[m].upper[3][s].numpy() >= high - 1e-7).all()), m
            assert bool((mb[m][s].numpy() <= margin + 1e-7).all()), m
        # and the LP is the closest: no looser than CROWN
        assert bool((mb["lp"][s] >= mb["crown"][s] - 1e-7).all())


def test_enumeration_agrees_with_a_dense_grid() -> None:
    net = _dense(7)
    x = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    domain = InputDomain.ball(x, 0.25, "linf")
    g = torch.linspace(0.15, 0.65, 401, dtype=torch.float64)
    h = torch.linspace(0.35, 0.85, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(g, h)
    pre = net.activations(grid)[3]
    low = _exact(net, domain, 0, 3, np.eye(5))
    assert np.allclose(low, pre.min(0).values.numpy(), atol=2e-3)
    assert bool((pre.min(0).values.numpy() >= low - 1e-9).all())


# ----------------------------------------------------------------------------- closed forms


def test_stable_neurons_give_exact_bounds() -> None:
    """All ReLUs active on the domain: the net is affine there, so CROWN and LP are exact."""
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        for lin in (module[0], module[2]):
            lin.weight.abs_()
            lin.bias.fill_(0.5)
    net = Network.from_module(module, input_shape=(3,))
    x = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    for norm in ("linf", "l1"):
        domain = InputDomain.ball(x, 0.2, norm)
        matrix = torch.eye(3, dtype=torch.float64)
        for layer in net.layers:
            if isinstance(layer, Affine):
                matrix = layer.backward(torch.eye(layer.out_size, dtype=torch.float64)) @ matrix
        const = net.forward(torch.zeros(1, 3, dtype=torch.float64))[0]
        rows = torch.cat([matrix, -matrix])[None]
        low_high = domain.minimize(rows)[0]
        exact_lo, exact_hi = low_high[:2] + const, -(low_high[2:]) + const
        for method in ("crown", "lp", "progressive"):
            lb = layer_bounds(net, domain, method)
            assert torch.allclose(lb.lower[-1][0], exact_lo, atol=1e-7), (norm, method)
            assert torch.allclose(lb.upper[-1][0], exact_hi, atol=1e-7), (norm, method)
        ibp = interval_bounds(net, domain)
        assert bool((ibp.lower[-1][0] < exact_lo - 1e-6).any())


@pytest.mark.parametrize("name", sorted(NETS))
def test_eps_zero_gives_the_forward_pass(name: str) -> None:
    net = NETS[name]()
    x = _inputs(net)
    y = net.forward(x).argmax(1)
    domain = InputDomain.ball(x, 0.0, "linf")
    acts = net.activations(x)
    z = acts[-1]
    clean = z.gather(1, y[:, None]) - z
    clean[torch.arange(len(y)), y] = torch.inf
    for method in METHODS:
        lb = layer_bounds(net, domain, method)
        for i, a in enumerate(acts):
            assert torch.allclose(lb.lower[i], a, atol=1e-9) and torch.allclose(
                lb.upper[i], a, atol=1e-9
            )
        assert torch.allclose(margin_bounds(net, domain, y, method), clean, atol=1e-9)


def test_lp_time_limit_zero_keeps_the_interval_bounds() -> None:
    net = _dense(0)
    domain = InputDomain.ball(_inputs(net), 0.1, "l1")
    lp = layer_bounds(net, domain, "lp", time_limit=0.0)
    ibp = interval_bounds(net, domain)
    assert all(torch.equal(a, b) for a, b in zip(lp.lower, ibp.lower, strict=True))


def test_lp_bound_from_duals_matches_the_solver_objective() -> None:
    net = _dense(0)
    domain = InputDomain.ball(_inputs(net, batch=1), 0.2, "l1")
    ibp = interval_bounds(net, domain)
    state = _State(domain, ibp.lower, ibp.upper)
    model = _LPModel(domain, 0)
    model.extend(net, state, 0, 2)
    w = net.layers[2].weight.numpy()
    for j in range(w.shape[0]):
        val = model.minimize(2, np.arange(w.shape[1]), w[j], 0.0, state.clock)
        assert val is not None
        objective = model.h.getInfo().objective_function_value
        assert objective - 1e-6 <= val <= objective + 1e-12


# ----------------------------------------------------------------------------- bundled model


def test_certified_samples_are_never_broken_by_pgd() -> None:
    from advex import ThreatModel, data, zoo
    from advex.attacks import PGD

    clf = zoo.load("mnist_mlp")
    x, y = data.load("mnist5k", split="test")
    x, y = x[:40], y[:40]
    crown = bounds(clf, x, y, 0.01, method="crown")
    progressive = bounds(clf, x, y, 0.01, method="progressive")
    ibp = bounds(clf, x, y, 0.01, method="ibp")
    attack = PGD(ThreatModel("linf", eps=0.01), steps=40, restarts=1)(clf, x, y)
    broken = attack.success.cpu()
    for res in (ibp, crown, progressive):
        assert not bool((res.certified & broken).any()), res.method
    assert bool((crown.certified >= ibp.certified).all())
    assert bool((progressive.certified >= crown.certified).all())
    assert crown.certified_accuracy > 0.5


# ----------------------------------------------------------------------------- public API


def test_bounds_result_fields() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    clf = Classifier(module, mean=[0.5], std=[0.25])
    x = _inputs(Network.from_module(clf, input_shape=(1, 4, 4)), batch=5)
    x = x.to(torch.float32)
    y = clf(x).argmax(1)
    res = bounds(clf, x, y, 0.01)
    assert isinstance(res, MarginBounds)
    assert res.margins.shape == (5, 4) and res.margins.dtype == torch.float64
    assert res.certified.shape == (5,) and res.certified.dtype == torch.bool
    assert bool(torch.isinf(res.margins[torch.arange(5), y]).all())
    assert res.method == "crown" and res.norm == "linf" and res.seconds >= 0
    assert torch.equal(res.eps, torch.full((5,), 0.01, dtype=torch.float64))
    assert 0.0 <= res.certified_accuracy <= 1.0
    net = Network.from_module(clf, input_shape=(1, 4, 4))
    same = bounds(net, x.reshape(5, -1), y, 0.01)
    assert torch.allclose(same.margins, res.margins)
    # certified means every margin bound is positive
    assert torch.equal(res.certified, (res.margins > 0).all(1))


def test_bounds_rejects_bad_input() -> None:
    net = _dense(0)
    x = _inputs(net)
    y = torch.zeros(3, dtype=torch.long)
    cases = [
        (dict(eps=-0.1), "eps"),
        (dict(x=x.clone().fill_(float("nan"))), "x"),
        (dict(x=x + 2), "x"),
        (dict(x=torch.rand(3, 5, dtype=torch.float64)), "x"),
        (dict(y=torch.zeros(2, dtype=torch.long)), "y"),
        (dict(y=torch.full((3,), 7)), "y"),
        (dict(method="mip"), "method"),
        (dict(norm="l0"), "norm"),
    ]
    for change, name in cases:
        args = {"x": x, "y": y, "eps": 0.1, "method": "crown", "norm": "linf"} | change
        with pytest.raises(ValueError, match=name):
            bounds(net, args["x"], args["y"], args["eps"], method=args["method"], norm=args["norm"])
    with pytest.raises(TypeError, match="model"):
        bounds("net", x, y, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        layer_bounds(net, InputDomain.ball(x, 0.1), "exact")
    with pytest.raises(ValueError, match="tol"):
        certified_radius(net, x, y, tol=0.0)


def test_certified_radius_is_certified_and_ordered() -> None:
    net = _dense(4, d=2, hidden=(8,), k=3)
    x = _inputs(net, batch=6, seed=5)
    y = net.forward(x).argmax(1)
    y[0] = (y[0] + 1) % 3  # a wrong label: radius 0
    r_ibp = certified_radius(net, x, y, method="ibp", tol=1e-3)
    r_crown = certified_radius(net, x, y, method="crown", tol=1e-3)
    assert r_crown.shape == (6,) and r_crown.dtype == torch.float64
    assert float(r_crown[0]) == 0.0
    assert bool((r_crown >= r_ibp - 1e-3).all())
    ok = r_crown > 0
    assert bool(ok.any())
    res = bounds(net, x[ok], y[ok], r_crown[ok], method="crown")
    assert bool(res.certified.all())
    r_l2 = certified_radius(net, x, y, norm="l2", tol=1e-3)
    assert bool((r_l2 >= r_crown - 1e-3).all())  # the L2 ball of radius r lies in the L∞ one


@pytest.mark.slow
def test_crown_on_the_bundled_cnn_is_sound_against_pgd() -> None:
    from advex import ThreatModel, data, zoo
    from advex.attacks import PGD

    clf = zoo.load("mnist_cnn")
    x, y = data.load("mnist5k", split="test")
    x, y = x[:4], y[:4]
    res = bounds(clf, x, y, 0.01, method="crown")
    ibp = bounds(clf, x, y, 0.01, method="ibp")
    assert bool((res.margins >= ibp.margins).all())
    attack = PGD(ThreatModel("linf", eps=0.01), steps=40, restarts=1)(clf, x, y)
    assert not bool((res.certified & attack.success.cpu()).any())
    with torch.no_grad():
        z = Network.from_module(clf).forward(attack.x_adv.cpu())
    adv = z.gather(1, y[:, None]) - z
    adv[torch.arange(4), y] = torch.inf
    assert bool((res.margins <= adv + 1e-6).all())
