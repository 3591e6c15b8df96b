"""Each objective's loss against its formula, written out independently on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advex.defenses.objectives import (
    ALP,
    OBJECTIVES,
    PGDAT,
    TRADES,
    Distillation,
    EnsembleAT,
    FastFGSM,
    FGSMMix,
    GradientPenalty,
    Standard,
)

EPS = 0.1


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).double()


@pytest.fixture
def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 1, 4, 4), generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return x, y


def _grad_ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def _pgd(model: nn.Module, x: Tensor, y: Tensor, start: Tensor, steps: int, size: float) -> Tensor:
    """Signed-gradient ascent on CE, projected onto the L∞ ball ∩ [0, 1] after each step."""
    xa = (x + start.clamp(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        xa = xa + size * _grad_ce(model, xa, y).sign()
        xa = torch.min(torch.max(xa, x - EPS), x + EPS).clamp(0, 1)
    return xa


def _uniform_start(x: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((x.shape[0], x[0].numel()), generator=g, dtype=x.dtype)
    return ((u * 2 - 1) * EPS).reshape(x.shape)


def _run(objective, model, x, y, seed=0, step=0):  # type: ignore[no-untyped-def]
    return objective.loss(
        model, x, y, eps=EPS, generator=torch.Generator().manual_seed(seed), step=step
    )


def test_standard_with_temperature(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _net(0)
    out = _run(Standard(temperature=4.0), model, x, y)
    z = model(x)
    expected = -(F.log_softmax(z / 4.0, dim=1).gather(1, y[:, None])).mean()
    torch.testing.assert_close(out.loss, expected)


def test_fgsm_mix(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _net(1)
    out = _run(FGSMMix(eps=EPS, alpha=0.3), model, x, y)
    x_adv = (x + EPS * _grad_ce(model, x, y).sign()).clamp(0, 1)
    expected = 0.3 * F.cross_entropy(model(x), y) + 0.7 * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(out.loss, expected)


def test_fast_fgsm_from_a_random_start(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _net(2)
    out = _run(FastFGSM(eps=EPS), model, x, y, seed=5)
    x_adv = _pgd(model, x, y, _uniform_start(x, 5), steps=1, size=1.25 * EPS)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x_adv), y))


def test_pgd_at(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _net(3)
    out = _run(PGDAT(eps=EPS, steps=7), model, x, y, seed=9)
    x_adv = _pgd(model, x, y, _uniform_start(x, 9), steps=7, size=2.5 * EPS / 7)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x_adv), y))
    torch.testing.assert_close(out.logits, model(x_adv))


def test_trades(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _net(4)
    out = _run(TRADES(eps=EPS, beta=3.0, steps=5, step_size=0.03), model, x, y, seed=2)
    g = torch.Generator().manual_seed(2)
    p = F.softmax(model(x), dim=1).detach()
    xa = (x + 0.001 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    for _ in range(5):
        xa = xa.detach().requires_grad_(True)
        kl = (p * (p.log() - F.log_softmax(model(xa), dim=1))).sum()
        (grad,) = torch.autograd.grad(kl, xa)
        xa = torch.min(torch.max(xa + 0.03 * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    clean, adv = model(x), model(xa.detach())
    pc = F.softmax(clean, dim=1)
    kl = (pc * (pc.log() - F.log_softmax(adv, dim=1))).sum(dim=1).mean()
    torch.testing.assert_close(out.loss, F.cross_entropy(clean, y) + 3.0 * kl)


def test_alp(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _net(5)
    out = _run(ALP(eps=EPS, alpha=0.25, weight=0.7, steps=4), model, x, y, seed=1)
    x_adv = _pgd(model, x, y, _uniform_start(x, 1), steps=4, size=2.5 * EPS / 4)
    clean, adv = model(x), model(x_adv)
    expected = (
        0.25 * F.cross_entropy(clean, y)
        + 0.75 * F.cross_entropy(adv, y)
        + 0.7 * ((clean - adv) ** 2).sum(dim=1).mean()
    )
    torch.testing.assert_close(out.loss, expected)


def test_ensemble_alternates_between_current_and_static_models(
    batch: tuple[Tensor, Tensor],
) -> None:
    x, y = batch
    model, static = _net(6), _net(7)
    objective = EnsembleAT(eps=EPS, static=[static])
    for step, source in ((0, model), (1, static), (2, model)):
        out = _run(objective, model, x, y, step=step)
        x_adv = (x + EPS * _grad_ce(source, x, y).sign()).clamp(0, 1)
        expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
        torch.testing.assert_close(out.loss, expected)
    assert not any(p.requires_grad for p in static.parameters())


def test_gradient_penalty_on_a_linear_model_has_its_closed_form(
    batch: tuple[Tensor, Tensor],
) -> None:
    """For f(x) = Wx + b, ∇ₓCE = Wᵀ(softmax(f(x)) − e_y)."""
    x, y = batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    out = _run(GradientPenalty(weight=0.4), model, x, y)
    w = model[1].weight
    p = F.softmax(model(x), dim=1)
    grad = (p - F.one_hot(y, 3).double()) @ w  # (B, 16)
    expected = F.cross_entropy(model(x), y) + 0.4 * grad.pow(2).sum(dim=1).mean()
    torch.testing.assert_close(out.loss, expected)
    # double backprop: the penalty's gradient reaches the weights
    out.loss.backward()
    with_penalty = w.grad.clone()
    w.grad = None
    F.cross_entropy(model(x), y).backward()
    assert not torch.allclose(with_penalty, w.grad)


def test_distillation_matches_soft_cross_entropy(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    teacher, student = _net(8), _net(9)
    out = _run(Distillation(teacher=teacher, temperature=20.0), student, x, y)
    soft = F.softmax(teacher(x) / 20.0, dim=1)
    expected = -(soft * F.log_softmax(student(x) / 20.0, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(out.loss, expected)


def test_inner_attack_leaves_modes_and_grads_alone(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ).double()
    model.train()
    stats = model[2].running_mean.clone()
    _run(PGDAT(eps=EPS, steps=3), model, x, y)
    assert model.training and all(m.training for m in model.modules())
    # only the outer forward (train mode) updated the batch-norm statistics, once
    assert model[2].num_batches_tracked.item() == 1
    assert not torch.equal(stats, model[2].running_mean)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PGDAT(eps=0.0), "eps"),
        (lambda: PGDAT(eps=0.1, steps=0), "steps"),
        (lambda: PGDAT(eps=0.1, norm="l0"), "norm"),
        (lambda: TRADES(eps=0.1, beta=-1.0), "beta"),
        (lambda: FGSMMix(eps=0.1, alpha=1.5), "alpha"),
        (lambda: EnsembleAT(eps=0.1, static=[]), "static"),
        (lambda: Standard(temperature=0.0), "temperature"),
        (lambda: Distillation(teacher="net", temperature=10.0), "teacher"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_name_the_argument(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_every_objective_is_registered_and_describes_itself() -> None:
    assert set(OBJECTIVES) == {
        "standard",
        "fgsm",
        "fast",
        "pgd",
        "trades",
        "alp",
        "ensemble",
        "gradient_penalty",
        "distillation",
    }
    assert PGDAT(eps=0.3).params() == {
        "objective": "pgd",
        "eps": 0.3,
        "norm": "linf",
        "steps": 10,
        "step_size": None,
    }
