"""Carlini & Wagner L2, L∞ and L0: closed forms on linear models, the binary search over c,
best-so-far across runs, early stop with ε, and the L0 attack's sparsity."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from advex import ThreatModel
from advex.attacks import cw
from advex.attacks.cw import CWL2, TanhBox
from advex.attacks.cw_l0 import CWL0
from advex.attacks.cw_linf import CWLinf
from advex.attacks.search import ConstantSearch


def linear(d: int = 20, k: int = 2, b: int = 8, seed: int = 0):
    """A linear model and inputs in [0.4, 0.6]: the box [0, 1] never binds at the optimum."""
    torch.manual_seed(seed)
    model = nn.Linear(d, k)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(b, d, generator=g) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def pairwise(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """min_{k≠y} (z_y − z_k)/‖w_y − w_k‖_q, q the dual norm: the minimal ‖δ‖_p to leave y."""
    w, bias = model.weight.detach(), model.bias.detach()
    z = x @ w.T + bias
    gap = z.gather(1, y[:, None]) - z  # (B, K)
    dw = w[y][:, None, :] - w[None, :, :]  # (B, K, d)
    dist = gap / dw.norm(p=p, dim=2)
    dist = dist.scatter(1, y[:, None], float("inf"))
    return dist.min(dim=1).values


# ----- CW-L2 ------------------------------------------------------------------------------------
def test_l2_two_classes_reaches_the_closed_form() -> None:
    """Two classes: the minimal L2 perturbation has norm |f(x)|/‖w₁ − w₀‖₂."""
    model, x, y = linear()
    res = CWL2(ThreatModel("l2"), steps=100)(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / pairwise(model, x, y, 2)
    assert bool((ratio >= 1 - 1e-4).all()), "closer than the closed-form minimum: a bug"
    assert bool((ratio <= 1.01).all()), ratio


def test_l2_multiclass_reaches_the_closed_form() -> None:
    """K classes: leaving y means crossing one of the half-spaces z_k ≥ z_y; the minimum is
    min_k (z_y − z_k)/‖w_y − w_k‖₂."""
    model, x, y = linear(d=16, k=5, b=6, seed=3)
    res = CWL2(ThreatModel("l2"), steps=100)(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / pairwise(model, x, y, 2)
    assert bool((ratio >= 1 - 1e-4).all()) and bool((ratio <= 1.01).all()), ratio


def test_l2_targeted_reaches_the_target() -> None:
    model, x, y = linear(d=16, k=5, b=6, seed=3)
    target = (y + 2) % 5
    threat = ThreatModel("l2", targeted=True)
    res = CWL2(threat, steps=100, initial_const=1.0, binary_search_steps=6)(model, x, y, target)
    assert bool(res.success.all()) and torch.equal(res.pred, target)
    # the target's half-space alone is a lower bound on the distance to its region
    w, b = model.weight.detach(), model.bias.detach()
    z = x @ w.T + b
    top = z.argmax(dim=1)
    bound = (z.gather(1, top[:, None]) - z.gather(1, target[:, None])).squeeze(1) / (
        w[top] - w[target]
    ).norm(dim=1)
    assert bool((res.distance >= bound * (1 - 1e-4)).all())


def test_l2_too_small_initial_const_still_succeeds() -> None:
    """c₀ = 10⁻⁸ fails at first; ×10 per run until it succeeds, then bisection."""
    model, x, y = linear()
    few = CWL2(
        ThreatModel("l2"), steps=50, initial_const=1e-8, binary_search_steps=2, reuse_budget=False
    )
    many = CWL2(ThreatModel("l2"), steps=50, initial_const=1e-8, binary_search_steps=12)
    assert not bool(few(model, x, y).success.any())
    res = many(model, x, y)
    assert bool(res.success.all())
    assert bool((res.distance <= 1.25 * pairwise(model, x, y, 2)).all())


def test_l2_constants_are_searched_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sample runs its own search: their constants part ways (the logits differ)."""
    seen: list[torch.Tensor] = []

    class Spy(ConstantSearch):
        def update(self, rows: torch.Tensor, success: torch.Tensor) -> None:
            super().update(rows, success)
            seen.append(self.c.clone())

    monkeypatch.setattr(cw, "ConstantSearch", Spy)
    model, x, y = linear()
    res = CWL2(ThreatModel("l2"), steps=50, binary_search_steps=6)(model, x, y)
    assert bool(res.success.all())
    final = seen[-1]
    assert final.unique().numel() > 1, "every sample ended with the same constant"


class _Runs(ConstantSearch):
    """Counts the runs each sample ends (``update`` is called once per ended run)."""

    log: ClassVar[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []

    def update(self, rows: torch.Tensor, success: torch.Tensor) -> None:
        super().update(rows, success)
        _Runs.log.append((rows.clone(), self.lower[rows].clone(), self.upper[rows].clone()))


def _runs_per_sample(monkeypatch, attack: CWL2, model, x, y):
    _Runs.log = []
    monkeypatch.setattr(cw, "ConstantSearch", _Runs)
    res = attack(model, x, y)
    runs = torch.zeros(len(x), dtype=torch.long)
    for rows, _, _ in _Runs.log:
        runs[rows] += 1
    return res, runs


def test_l2_paper_mode_runs_exactly_binary_search_steps(monkeypatch) -> None:
    model, x, y = linear()
    attack = CWL2(ThreatModel("l2"), steps=40, binary_search_steps=5, reuse_budget=False)
    res, runs = _runs_per_sample(monkeypatch, attack, model, x, y)
    assert runs.tolist() == [5] * len(x)
    assert bool((res.gradients <= 5 * 40).all())


def test_l2_reuse_budget_spends_saved_iterations_on_more_runs(monkeypatch) -> None:
    """Runs on a linear model abort early, so the default fits more than 9 runs into the same
    per-sample bound of binary_search_steps × steps iterations; each sample stops once c is
    bracketed to c_precision, and never does worse than the paper's exactly-9 runs."""
    model, x, y = linear()
    paper = CWL2(ThreatModel("l2"), steps=200, reuse_budget=False)(model, x, y)
    attack = CWL2(ThreatModel("l2"), steps=200, c_precision=0.01)
    res, runs = _runs_per_sample(monkeypatch, attack, model, x, y)
    assert bool(res.success.all())
    assert bool((runs > 9).any()), runs
    assert bool((res.gradients <= 9 * 200).all())
    assert bool((res.distance <= paper.distance * (1 + 1e-3)).all())
    # each sample stopped with c bracketed to 1 % (or at the iteration bound)
    lower, upper = torch.zeros(len(x)), torch.full((len(x),), float("inf"))
    for rows, lo, up in _Runs.log:
        lower[rows], upper[rows] = lo, up
    bracketed = (upper - lower) <= 0.01 * upper
    assert bool((bracketed | (res.gradients == 9 * 200)).all()), (lower, upper)
    assert bool(bracketed.any())


def test_l2_c_precision_is_checked() -> None:
    with pytest.raises(ValueError, match="c_precision"):
        CWL2(ThreatModel("l2"), c_precision=0.0)
    with pytest.raises(ValueError, match="reuse_budget"):
        CWL2(ThreatModel("l2"), reuse_budget=1)  # type: ignore[arg-type]


def test_l2_returns_the_closest_evaluated_success_over_all_runs(monkeypatch) -> None:
    """The result is the closest adversarial point among *all* evaluated iterates of all runs
    (the tracker's best), not the last run's last iterate (final line search switched off)."""
    monkeypatch.setattr(CWL2, "line_search_steps", 0)
    monkeypatch.setattr(CWL2, "boundary_margin", 0.0)
    model, x, y = linear(b=4)
    points: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Logged(nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            z = model(v)
            points.append((v.detach().clone(), z.argmax(dim=1)))
            return z

    # sample i of every evaluated batch: match rows by their clean input (rows shrink)
    attack = CWL2(ThreatModel("l2"), steps=30, binary_search_steps=5, reuse_budget=False)
    res = attack(Logged(), x, y)
    best = torch.full((len(x),), float("inf"))
    last = torch.full((len(x),), float("nan"))
    for v, pred in points[1:-1]:  # skip the clean pass and finalize's re-check
        d = (v[:, None, :] - x[None, :, :]).norm(dim=2)  # (rows evaluated, B)
        owner = d.argmin(dim=1)  # perturbations are far smaller than the spread of x
        dist = d.gather(1, owner[:, None]).squeeze(1)
        adv = pred != y[owner]
        best[owner[adv]] = torch.minimum(best[owner[adv]], dist[adv])
        last[owner[adv]] = dist[adv]
    torch.testing.assert_close(res.distance, best, rtol=1e-5, atol=1e-6)
    assert bool((res.distance <= last + 1e-7).all())
    assert bool((res.distance < last - 1e-6).any()), "the test needs a run whose end is worse"


def test_l2_eps_stops_at_the_first_success_inside_the_ball() -> None:
    model, x, y = linear()
    need = pairwise(model, x, y, 2)
    eps = float(need.max()) * 1.5
    free = CWL2(ThreatModel("l2"), steps=100)(model, x, y)
    bounded = CWL2(ThreatModel("l2", eps), steps=100)(model, x, y)
    assert bool(bounded.success.all())
    assert bool((bounded.distance <= eps * (1 + 1e-5)).all())
    assert bool((bounded.queries < free.queries).all())
    # an ε below the minimum cannot be met: no success, nothing outside the ball returned
    tight = CWL2(ThreatModel("l2", float(need.min()) * 0.9), steps=30, binary_search_steps=3)
    res = tight(model, x, y)
    assert not bool(res.success.any())


def test_l2_batches_equal_single_samples() -> None:
    model, x, y = linear(b=5)
    attack = CWL2(ThreatModel("l2"), steps=40, binary_search_steps=4)
    whole = attack(model, x, y)
    alone = CWL2(ThreatModel("l2"), steps=40, binary_search_steps=4, batch_size=1)(model, x, y)
    torch.testing.assert_close(whole.x_adv, alone.x_adv, rtol=0, atol=1e-5)
    assert torch.equal(whole.queries, alone.queries)
    again = attack(model, x, y)
    assert torch.equal(whole.x_adv, again.x_adv)


def test_l2_on_the_8bit_grid(digits) -> None:
    threat = ThreatModel("l2", levels=256)
    attack = CWL2(threat, steps=50, binary_search_steps=5, initial_const=1.0, step_size=0.05)
    res = attack(digits.model, digits.x[:8], digits.y[:8])
    assert bool(res.success.all())
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)


def test_l2_kappa_asks_for_a_margin(digits) -> None:
    """With κ the search only counts runs that reach margin > κ: the constants, and with them
    the distance, grow."""
    x, y = digits.x[:6], digits.y[:6]
    settings = {"steps": 50, "binary_search_steps": 5, "initial_const": 1.0, "step_size": 0.05}
    plain = CWL2(ThreatModel("l2"), **settings)(digits.model, x, y)
    strong = CWL2(ThreatModel("l2"), kappa=5.0, **settings)(digits.model, x, y)
    assert bool(plain.success.all()) and bool(strong.success.all())
    assert float(strong.distance.median()) > float(plain.distance.median())


# ----- CW-L∞ ------------------------------------------------------------------------------------
def test_linf_reaches_the_closed_form() -> None:
    """Two classes: the minimal L∞ perturbation has norm |f(x)|/‖w₁ − w₀‖₁."""
    model, x, y = linear()
    threat = ThreatModel("linf")
    attack = CWLinf(threat, steps=100, step_size=2e-3, initial_const=0.01, tau_factor=0.97)
    res = attack(model, x, y)
    assert bool(res.success.all())
    ratio = res.distance / pairwise(model, x, y, 1)
    assert bool((ratio >= 1 - 1e-4).all()), "closer than the closed-form minimum: a bug"
    assert bool((ratio <= 1.03).all()), ratio


def test_linf_targeted_and_eps(digits) -> None:
    x, y = digits.x[:6], digits.y[:6]
    target = (y + 1) % 10
    attack = CWLinf(ThreatModel("linf", targeted=True), steps=50, initial_const=0.01)
    res = attack(digits.model, x, y, target)
    assert bool(res.success.all()) and torch.equal(res.pred, target)
    eps = float(res.distance.max()) * 1.2
    bounded = CWLinf(ThreatModel("linf", eps, targeted=True), steps=50, initial_const=0.01)
    out = bounded(digits.model, x, y, target)
    assert bool(out.success.all()) and bool((out.distance <= eps * (1 + 1e-5)).all())
    assert bool((out.queries < res.queries).all())


# ----- CW-L0 ------------------------------------------------------------------------------------
L0_FAST = {"steps": 20, "largest_const": 1e2}  # a failing run gives up sooner; tests only


def test_l0_changes_fewer_elements_than_l2(digits) -> None:
    x, y = digits.x[:6], digits.y[:6]
    settings = {"steps": 50, "binary_search_steps": 5, "initial_const": 1.0, "step_size": 0.05}
    l2 = CWL2(ThreatModel("l2"), **settings)(digits.model, x, y)
    l0 = CWL0(ThreatModel("l0"), **L0_FAST)(digits.model, x, y)
    assert bool(l0.success.all())
    changed_l2 = (l2.x_adv != x).flatten(1).sum(dim=1)
    changed_l0 = (l0.x_adv != x).flatten(1).sum(dim=1)
    assert torch.equal(changed_l0.to(l0.distance.dtype), l0.distance)
    assert bool((changed_l0 < changed_l2).all())
    assert float(l0.distance.float().mean()) < 0.25 * float(changed_l2.float().mean())


def test_l0_removes_whole_pixels_unless_told_otherwise() -> None:
    """On (B, C, H, W) inputs the allowed set is per pixel: every changed pixel changes in all
    C channels, so ‖δ‖₀ = C·(changed pixels); with independent channels fewer elements do."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 4, 4, generator=g) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    pixels = CWL0(ThreatModel("l0"), **L0_FAST)(model, x, y)
    elements = CWL0(ThreatModel("l0"), independent_channels=True, **L0_FAST)(model, x, y)
    assert bool(pixels.success.all()) and bool(elements.success.all())
    changed = (pixels.x_adv != x).any(dim=1).flatten(1).sum(dim=1)
    assert torch.equal(pixels.distance, 3.0 * changed)
    assert bool((elements.distance < pixels.distance).all())


@pytest.mark.slow
def test_l0_one_at_a_time_takes_more_runs(digits) -> None:
    """The paper's text removes one pixel per success; the reference's batch rule several."""
    x, y = digits.x[:3], digits.y[:3]
    batch = CWL0(ThreatModel("l0"), **L0_FAST)(digits.model, x, y)
    single = CWL0(ThreatModel("l0"), one_at_a_time=True, **L0_FAST)(digits.model, x, y)
    assert bool(batch.success.all()) and bool(single.success.all())
    assert int(single.queries.sum()) > int(batch.queries.sum())


def test_l0_eps_stops_early() -> None:
    model, x, y = linear(b=4)
    free = CWL0(ThreatModel("l0"), **L0_FAST)(model, x, y)
    k = float(free.distance.max()) + 5
    bounded = CWL0(ThreatModel("l0", k), **L0_FAST)(model, x, y)
    assert bool(bounded.success.all()) and bool((bounded.distance <= k).all())
    assert bool((bounded.queries < free.queries).all())


# ----- pieces and contracts ---------------------------------------------------------------------
def test_tanh_box_starts_at_x_and_stays_in_the_box() -> None:
    x = torch.tensor([[0.0, 0.3, 1.0, 0.5]])
    box = TanhBox(x, (0.0, 1.0))
    assert torch.equal(box.delta(box.w0), torch.zeros_like(x))
    far = box.point(box.w0 + torch.tensor([[50.0, -50.0, -50.0, 3.0]]))
    assert bool(((far >= 0) & (far <= 1)).all())
    # ∂δ/∂w by autograd equals the chain rule the attack applies
    w = torch.randn(1, 4, requires_grad=True)
    (g,) = torch.autograd.grad(box.delta(w).sum(), w)
    torch.testing.assert_close(box.chain(torch.ones(1, 4), w.detach()), g)


@pytest.mark.parametrize(
    ("kind", "kwargs", "name"),
    [
        (CWL2, {"steps": 0}, "steps"),
        (CWL2, {"binary_search_steps": 1.5}, "binary_search_steps"),
        (CWL2, {"step_size": -1.0}, "step_size"),
        (CWL2, {"initial_const": 0.0}, "initial_const"),
        (CWL2, {"kappa": -1.0}, "kappa"),
        (CWLinf, {"tau_factor": 1.0}, "tau_factor"),
        (CWLinf, {"largest_const": 1e-6}, "largest_const"),
        (CWLinf, {"const_factor": 1.0}, "const_factor"),
        (CWL0, {"largest_const": float("inf")}, "largest_const"),
        (CWL0, {"kappa": float("nan")}, "kappa"),
    ],
)
def test_bad_parameters_name_themselves(kind, kwargs, name) -> None:
    norm = {CWL2: "l2", CWLinf: "linf", CWL0: "l0"}[kind]
    with pytest.raises(ValueError, match=name):
        kind(ThreatModel(norm), **kwargs)


@pytest.mark.parametrize(("kind", "norm"), [(CWL2, "linf"), (CWLinf, "l2"), (CWL0, "l2")])
def test_wrong_norm_is_refused(kind, norm) -> None:
    with pytest.raises(ValueError, match=r"threat\.norm"):
        kind(ThreatModel(norm))
