"""APGD and APGD-T: the step-size schedule, the halving rule, L1 stages, and the attack itself."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

import advex.attacks.apgd as apgd
from advex import ThreatModel
from advex.attacks.apgd import APGD, APGDT, checkpoints, should_halve, sparsity_update
from advex.attacks.pgd import PGD
from advex.norms import lp_norm
from advex.result import ball_tolerance

EPS = {"linf": 0.05, "l2": 0.3, "l1": 1.0}


def _labels(model: nn.Module, x: Tensor) -> Tensor:
    """The clean predictions, so every sample starts correctly classified."""
    model.eval()
    with torch.no_grad():
        return model(x).argmax(dim=1)


# ----- the schedule and the per-sample rules, without a model -------------------------------
def test_checkpoints_follow_the_paper() -> None:
    """p = 0, .22, .41 (+.19), .57 (+.16), .70 (+.13), .80 (+.10), .87 (+.07), .93, .99 (+.06)."""
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    # ⌈p·N⌉: 2.2 → 3, 4.1 → 5, 5.7 → 6, 7, 8, 8.7 → 9, 9.3 → 10, 9.9 → 10
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1000)[:4] == [0, 220, 410, 570]
    assert checkpoints(1) == [0, 1]
    with pytest.raises(ValueError, match="steps"):
        checkpoints(0)


def test_halving_rule_on_hand_made_histories() -> None:
    """Sample 0 rises at every step: no condition. Sample 1 rises at 1 of 4 steps (< 0.75·4):
    condition (1). Sample 2 rises at 3 of 4 steps but its best loss did not improve since the
    last checkpoint, where η was kept: condition (2). Sample 3 is sample 2 with η halved at the
    last checkpoint: condition (2) does not apply."""
    history = torch.tensor(
        [
            [0.0, 1.0, 2.0, 3.0, 4.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 2.0, 3.0, 0.0],
            [0.0, 1.0, 2.0, 3.0, 0.0],
        ]
    )
    best = torch.tensor([4.0, 1.0, 5.0, 5.0])
    last_best = torch.tensor([0.0, 0.0, 5.0, 5.0])
    reduced = torch.tensor([False, False, False, True])
    halve = should_halve(history, best, last_best, reduced, rho=0.75)
    assert halve.tolist() == [False, True, True, False]
    # exactly ρ·m increases is not "fewer than": 3 of 4 with ρ = 0.75 keeps η
    assert not should_halve(history[2:3], best[:1], last_best[:1], reduced[3:], 0.75).item()
    assert should_halve(history[2:3], best[:1], last_best[:1], reduced[3:], 0.8).item()


def test_l1_sparsity_update() -> None:
    """k = ‖δ_best‖₀/1.5; η back to ε when ‖δ_best‖₀ fell by > 5 %, else η/1.5 ≥ ε/10."""
    sparsity = torch.tensor([90.0, 96.0, 96.0])
    last = torch.tensor([100.0, 100.0, 100.0])
    step = torch.tensor([0.5, 0.6, 0.12])
    k, new_step, back = sparsity_update(sparsity, last, step, eps=1.0)
    torch.testing.assert_close(k, sparsity / 1.5)
    assert back.tolist() == [True, False, False]
    torch.testing.assert_close(new_step, torch.tensor([1.0, 0.4, 0.1]))


def test_l1_direction_skips_blocked_coordinates() -> None:
    """The box blocks coordinates at hi with g > 0 and at lo with g < 0; k is per sample."""
    grad = torch.tensor([[5.0, -4.0, 3.0, 1.0], [5.0, -4.0, 3.0, 1.0]])
    x_adv = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    out = apgd._sparse_direction(grad, x_adv, (0.0, 1.0), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[0, 0, 0.5, 0.5], [1.0, 0, 0, 0]]))


def test_momentum_step() -> None:
    """z = Π(δ + η·sign g); then Π(δ + α(z − δ) + (1 − α)(δ − δ_prev)), α = 0.75; the first
    step is z itself."""
    x = torch.full((1, 4), 0.5)
    ones = torch.ones(1)
    zero = torch.zeros(1, 4)
    state = apgd._State(
        delta=zero,
        prev=torch.full((1, 4), -0.1),
        grad=torch.tensor([[1.0, -1.0, 2.0, -3.0]]),
        step_size=0.1 * ones,
        best_loss=ones,
        best_delta=zero,
        best_grad=zero,
        history=ones.unsqueeze(1),
        last_best=ones,
        reduced=ones.bool(),
        k=ones,
        sparsity=ones,
    )
    attack = APGD(ThreatModel("linf", 0.3))
    z = torch.tensor([[0.1, -0.1, 0.1, -0.1]])
    torch.testing.assert_close(attack._step(state, x, 0.3, first=True), z)
    torch.testing.assert_close(attack._step(state, x, 0.3, first=False), 0.75 * z + 0.025)
    # both points are projected: z onto the 0.08-ball, then the momentum step (0.085 → 0.08)
    want = (0.75 * 0.8 * z + 0.025).clamp(-0.08, 0.08)
    torch.testing.assert_close(attack._step(state, x, 0.08, first=False), want)


def test_large_eps_stages() -> None:
    l1 = ThreatModel("l1", 2.0)
    assert APGD(l1, steps=100)._stages() == [(6.0, 30), (4.0, 30), (2.0, 40)]
    assert APGD(l1, steps=4)._stages() == [(6.0, 1), (4.0, 1), (2.0, 2)]
    assert APGD(l1, steps=2)._stages() == [(2.0, 2)]
    assert APGD(l1, steps=100, large_eps=False)._stages() == [(2.0, 100)]
    assert APGD(ThreatModel("linf", 0.1), large_eps=True)._stages() == [(0.1, 100)]


def test_stages_start_inside_their_ball(monkeypatch: pytest.MonkeyPatch, digits) -> None:
    """Each stage starts in its own ball, the first from a random point, later ones from the
    previous stage's best point projected into the smaller ball."""
    seen: list[tuple[float, int, float, bool]] = []
    stage = APGD._stage

    def spy(self, run, loss, eps, steps, delta, first):  # type: ignore[no-untyped-def]
        seen.append((eps, steps, float(lp_norm(delta, "l1").max()), first))
        return stage(self, run, loss, eps, steps, delta, first)

    monkeypatch.setattr(APGD, "_stage", spy)
    APGD(ThreatModel("l1", 2.0), steps=10, early_stop=False)(digits.model, digits.x, digits.y)
    assert [(e, s, f) for e, s, _, f in seen] == [(6.0, 3, True), (4.0, 3, False), (2.0, 4, False)]
    assert all(norm <= eps + ball_tolerance(eps) for eps, _, norm, _ in seen)
    assert seen[1][2] > 2.0 + 1e-3, "the 2ε stage starts outside the ε-ball"


def test_checkpoints_see_the_steps_since_the_last_one(
    monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    """The halving rule is asked at every checkpoint with the losses since the previous one."""
    intervals: list[int] = []

    def spy(history: Tensor, *args: object) -> Tensor:
        intervals.append(history.shape[1] - 1)
        return should_halve(history, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(apgd, "should_halve", spy)
    APGD(ThreatModel("linf", 0.05), early_stop=False)(digits.model, digits.x[:4], digits.y[:4])
    marks = checkpoints(100)
    assert intervals == [b - a for a, b in itertools.pairwise(marks)]


# ----- the attack -----------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_stays_in_the_ball_and_the_box(norm: str, cls: type[APGD], tiny_mlp, images) -> None:
    threat = ThreatModel(norm, EPS[norm] * 4, bounds=(0.0, 1.0))
    y = _labels(tiny_mlp, images)
    res = cls(threat, steps=10, early_stop=False)(tiny_mlp, images, y)
    dist = lp_norm(res.x_adv - images, norm)
    assert float(dist.max()) <= threat.budget() + ball_tolerance(threat.budget())
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.success.any(), "a budget large enough to break some samples"


@pytest.mark.parametrize(
    ("model", "norm", "eps"),
    [("tiny_mlp", "linf", 0.05), ("tiny_cnn", "l2", 0.3), ("tiny_mlp", "l2", 0.3)],
)
def test_at_least_as_strong_as_pgd(model: str, norm: str, eps: float, request, images) -> None:
    net = request.getfixturevalue(model)
    y = _labels(net, images)
    threat = ThreatModel(norm, eps)
    pgd = PGD(threat, steps=20)(net, images, y)
    res = APGD(threat, steps=20)(net, images, y)
    assert res.robust_accuracy <= pgd.robust_accuracy
    assert 0 < res.robust_accuracy < 1


def test_l1_at_least_as_strong_as_pgd(digits) -> None:
    threat = ThreatModel("l1", 2.0)
    pgd = PGD(threat, steps=20)(digits.model, digits.x, digits.y)
    res = APGD(threat, steps=20)(digits.model, digits.x, digits.y)
    assert res.robust_accuracy <= pgd.robust_accuracy < 1
    # sparse: the L1 steps move few coordinates
    assert float(lp_norm(res.x_adv - digits.x, "l0").median()) < 16


def test_apgd_t_is_at_least_as_strong_as_apgd_ce(digits) -> None:
    threat = ThreatModel("linf", 0.1)
    ce = APGD(threat, steps=20)(digits.model, digits.x, digits.y)
    targeted = APGDT(threat, steps=20)(digits.model, digits.x, digits.y)
    assert targeted.robust_accuracy <= ce.robust_accuracy
    assert 0 < ce.robust_accuracy < 1
    assert torch.equal(targeted.success, targeted.pred != digits.y)  # success stays untargeted


def test_deterministic_for_a_fixed_seed(tiny_mlp, images) -> None:
    y = _labels(tiny_mlp, images)
    threat = ThreatModel("l2", 0.3)
    a = APGD(threat, steps=10, seed=3)(tiny_mlp, images, y)
    b = APGD(threat, steps=10, seed=3)(tiny_mlp, images, y)
    c = APGD(threat, steps=10, seed=4)(tiny_mlp, images, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_query_accounting(digits) -> None:
    """One gradient per step and sample; one forward for the clean point and per run's end."""
    x, y = digits.x, digits.y
    threat = ThreatModel("linf", 0.1)
    full = APGD(threat, steps=10, early_stop=False)(digits.model, x, y)
    assert full.gradients.tolist() == [10] * len(x)
    assert full.queries.tolist() == [12] * len(x)
    res = APGD(threat, steps=10, restarts=3)(digits.model, x, y)
    assert bool((res.gradients <= 10 * 3).all()) and bool((res.queries <= 1 + 3 * 11).all())
    assert bool((res.gradients < 10).any()), "early stop saves gradients"
    t = APGDT(threat, steps=10, n_target_classes=3, restarts=2)(digits.model, x, y)
    assert bool((t.gradients <= 10 * 2 * 3).all())
    assert int(t.gradients.max()) == 60, "an unbroken sample runs every target and restart"


class _Gate(nn.Module):
    """tiny MLP logits plus 10 on class 0 when pixel (0, 0) is above 0.5: samples with that
    pixel at 1 and label 0 are never broken (ε < 0.5), the others are the MLP's."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: Tensor) -> Tensor:
        gate = (x[:, 0, 0, 0] > 0.5).float()
        return self.mlp(x) + 10 * gate.unsqueeze(1) * torch.eye(10)[0]


@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_early_stop_keeps_per_sample_state_aligned(cls: type[APGD], tiny_mlp, images) -> None:
    """Interleave samples broken at once with samples never broken. Dropping the broken rows
    must not change what the others do: their results equal those of a run without early
    stop (same random starts), where every row takes every step."""
    model = _Gate(tiny_mlp)
    x = images.clone()
    never = torch.arange(len(x)) % 2 == 1
    x[never, 0, 0, 0] = 1.0
    x[~never, 0, 0, 0] = 0.0
    y = torch.where(never, 0, _labels(model, x))
    threat = ThreatModel("linf", 0.3)
    fast = cls(threat, steps=30)(model, x, y)
    full = cls(threat, steps=30, early_stop=False)(model, x, y)
    assert bool(fast.success[~never].all()) and bool((fast.steps[~never] <= 2).all())
    assert not fast.success[never].any()
    torch.testing.assert_close(fast.x_adv[never], full.x_adv[never], atol=0, rtol=0)
    assert bool((fast.gradients[never] == full.gradients[never]).all())


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_targeted(loss: str, digits) -> None:
    target = (digits.y + 5) % 10
    threat = ThreatModel("l2", 3.0, targeted=True)
    res = APGD(threat, steps=20, loss=loss)(digits.model, digits.x, digits.y, target)
    assert res.success.float().mean() > 0.9
    assert torch.equal(res.success, res.pred == target)


def test_apgd_t_rejects_targeted_threats() -> None:
    with pytest.raises(ValueError, match=r"threat\.targeted"):
        APGDT(ThreatModel("linf", 0.1, targeted=True))


def test_dlr_needs_three_classes(bump: nn.Module) -> None:
    x, y = torch.full((2, 1), 0.5), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="DLR needs at least 3 classes"):
        APGD(ThreatModel("linf", 0.1), loss="dlr")(bump, x, y)
    with pytest.raises(ValueError, match="DLR needs at least"):
        APGDT(ThreatModel("linf", 0.1))(bump, x, y)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"momentum": 0.0}, "momentum"),
        ({"momentum": 2.0}, "momentum"),
        ({"loss": "margin"}, "loss"),
        ({"loss": 3}, "loss"),
        ({"large_eps": "yes"}, "large_eps"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        APGD(ThreatModel("linf", 0.1), **kwargs)


def test_bad_arguments_apgd_t() -> None:
    with pytest.raises(ValueError, match="n_target_classes"):
        APGDT(ThreatModel("linf", 0.1), n_target_classes=0)
    with pytest.raises(ValueError, match=r"threat\.eps"):
        APGD(ThreatModel("linf"))
    with pytest.raises(ValueError, match=r"threat\.norm"):
        APGD(ThreatModel("l0", 3))


def test_names_and_params() -> None:
    a, t = APGD(ThreatModel("l1", 1.0)), APGDT(ThreatModel("linf", 0.1))
    assert (a.name, t.name) == ("apgd", "apgd-t")
    assert a.params()["large_eps"] is True and t.params()["large_eps"] is False
    assert t.params()["loss"] == "dlr-targeted" and t.params()["n_target_classes"] == 9
