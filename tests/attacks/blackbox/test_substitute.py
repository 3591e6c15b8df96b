"""Substitute transfer attack: schedule, reservoir, exact query accounting, contract, strength."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from counting import Recorder
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks import FGSM, PGD
from advex.attacks.blackbox.substitute import (
    Substitute,
    _jacobian_step,
    first_per_class,
    fit_substitute,
    periodic_step,
    reservoir_sample,
    substitute_cnn,
    substitute_mlp,
    train_substitute,
    training_set_sizes,
)
from advex.norms import on_grid
from advex.oracle import QueryBudgetError, as_oracle
from advex.result import ball_tolerance

CHEAP: dict[str, Any] = {"rho": 2, "epochs": 2, "sigma": 1, "kappa": 4, "per_class": 2}


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


class FixedLinear(nn.Module):
    """Two classes: logits (0, w·x − 0.5·Σw) — a substitute that training cannot change (its
    one parameter gets zero gradients), so the augmentation can be checked exactly."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten())
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1) @ self.w - 0.5 * self.w.sum() + 0 * self.unused
        return torch.stack([torch.zeros_like(z), z], dim=1)


# ----- the schedule ---------------------------------------------------------------------------
def test_periodic_step_flips_sign_every_tau_rounds() -> None:
    got = [periodic_step(r, 0.1, 3) for r in range(9)]
    assert got == [0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1, 0.1, 0.1]
    assert [periodic_step(r, 0.1, 1) for r in range(4)] == [0.1, -0.1, 0.1, -0.1]
    assert all(periodic_step(r, 0.2, None) == 0.2 for r in range(7))


def test_training_set_sizes_follow_the_reservoir_formula() -> None:
    # the paper's numbers: n = 100, ρ = 6 → 6,400 without reservoir sampling; σ = 3, κ = 400:
    # n·2^σ + κ(ρ − σ) = 2,000
    assert training_set_sizes(100, 6, None, 400)[-1] == 6400
    sizes = training_set_sizes(100, 6, 3, 400)
    assert sizes == [100, 200, 400, 800, 1200, 1600, 2000]
    for rho in range(3, 10):
        assert training_set_sizes(100, rho, 3, 400)[-1] == 100 * 2**3 + 400 * (rho - 3)
    assert training_set_sizes(5, 3, 0, 8) == [5, 10, 18, 26]  # min(κ, |S|) while the set is small
    assert training_set_sizes(7, 0, 3, 4) == [7]


def test_reservoir_sample_is_a_uniform_subset() -> None:
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(20)
    for _ in range(4000):
        pick = reservoir_sample(20, 5, g)
        assert pick.shape == (5,) and len(set(pick.tolist())) == 5
        assert int(pick.min()) >= 0 and int(pick.max()) < 20
        hits[pick] += 1
    # each item is kept with probability k/n = 1/4: 1000 of 4000 draws, sd ≈ 27
    assert float((hits - 1000).abs().max()) < 120, hits
    assert torch.equal(reservoir_sample(3, 5, g), torch.arange(3))
    a = reservoir_sample(50, 7, torch.Generator().manual_seed(3))
    b = reservoir_sample(50, 7, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_jacobian_step_on_a_linear_substitute() -> None:
    """∇ log F_1 = (1 − p_1)·w, ∇ log F_0 = −p_1·w: the step is ±λ·sign(w), clipped."""
    w = torch.tensor([1.0, -2.0, 0.0, 3.0])
    model = FixedLinear(w)
    x = torch.tensor([[0.5, 0.5, 0.5, 0.95], [0.5, 0.02, 0.5, 0.5]])
    new = _jacobian_step(model, x, torch.tensor([1, 0]), 0.1, (0.0, 1.0))
    torch.testing.assert_close(new[0], torch.tensor([0.6, 0.4, 0.5, 1.0]))  # clipped at 1
    torch.testing.assert_close(new[1], torch.tensor([0.4, 0.12, 0.5, 0.4]))
    back = _jacobian_step(model, x, torch.tensor([1, 0]), -0.1, (0.0, 1.0))
    torch.testing.assert_close(back[1], torch.tensor([0.6, 0.0, 0.5, 0.6]))  # clipped at 0


# ----- training -----------------------------------------------------------------------------
def test_fit_queries_and_augmented_points_exactly(images: Tensor) -> None:
    """Each round asks the oracle once, about exactly the new points: x ± λ·sign(∇ log F_c)."""
    w = torch.linspace(-1, 1, 64)
    oracle = Recorder(FixedLinear(w.flip(0)))  # some other linear rule labels the points
    seed = images[:6]
    fit = fit_substitute(
        oracle,
        seed,
        architecture=lambda: FixedLinear(w),
        rho=4,
        lam=0.05,
        tau=2,
        sigma=2,
        kappa=5,
        epochs=1,
    )
    assert fit.sizes == [6, 12, 24, 29, 34] == training_set_sizes(6, 4, 2, 5)
    assert fit.queries == 34 == oracle.points
    assert [len(b) for b in oracle.inputs] == [6, 6, 12, 5, 5]  # one batched call per round
    assert torch.equal(oracle.inputs[0], seed)
    s = seed
    lab = labels(oracle.module, seed)
    for r, batch in enumerate(oracle.inputs[1:]):
        step = 0.05 if r < 2 else -0.05  # τ = 2
        # the substitute never changes, so each new point is a Jacobian step from some s ∈ S_r
        want = _jacobian_step(fit.model, s, lab, step, (0.0, 1.0))
        close = (batch[:, None] - want[None]).flatten(2).abs().amax(dim=2) < 1e-6
        assert bool(close.any(dim=1).all()), f"round {r}"
        if r < 2:  # every point augmented, in order
            torch.testing.assert_close(batch, want)
        s = torch.cat([s, batch])
        lab = torch.cat([lab, labels(oracle.module, batch)])


def test_fit_learns_the_oracle_and_leaves_the_global_rng_alone(digits) -> None:
    state = torch.get_rng_state()
    fit = fit_substitute(digits.model, first_per_class(digits.x, digits.y, 3), rho=3, epochs=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert not fit.model.training
    assert fit.num_classes == 10 and len(fit.agreement) == 4
    assert fit.agreement[-1] > 0.8  # it fits the labelled set
    again = fit_substitute(digits.model, first_per_class(digits.x, digits.y, 3), rho=3, epochs=5)
    for p, q in zip(fit.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)  # same seed → same substitute
    other = train_substitute(
        digits.model, first_per_class(digits.x, digits.y, 3), rho=3, epochs=5, seed=1
    )
    assert isinstance(other, nn.Module)
    assert not torch.equal(next(other.parameters()), next(fit.model.parameters()))


def test_fit_respects_a_total_oracle_budget(tiny_mlp: nn.Module, images: Tensor) -> None:
    oracle = as_oracle(tiny_mlp, "label", budget=30)
    with pytest.raises(QueryBudgetError):
        fit_substitute(oracle, images[:10], rho=2, sigma=None, epochs=1)  # needs 40


def test_architectures() -> None:
    x = torch.rand(3, 2, 12, 10)
    assert substitute_mlp((2, 12, 10), 7)(x).shape == (3, 7)
    assert substitute_cnn((2, 12, 10), 7)(x).shape == (3, 7)
    with pytest.raises(ValueError, match="input_shape"):
        substitute_cnn((2, 3, 10), 7)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"rho": -1}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"lam": 0.0}, "lam"),
        ({"tau": 0}, "tau"),
        ({"sigma": -1}, "sigma"),
        ({"kappa": 0}, "kappa"),
        ({"epochs": 0}, "epochs"),
        ({"train_batch_size": 0}, "train_batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"num_classes": 0}, "num_classes"),
        ({"architecture": 3}, "architecture"),
        ({"architecture": lambda: "not a module"}, "architecture"),
        ({"architecture": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 2))}, "architecture"),
        ({"seed": 1.0}, "seed"),
    ],
)
def test_fit_errors(options, match, tiny_mlp: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match=match):
        fit_substitute(tiny_mlp, images, **{"rho": 1, "epochs": 1, **options})


@pytest.mark.parametrize(
    "seed_data", ["images", torch.rand(4, 1, 8, 8) + 1, torch.full((2, 1, 8, 8), float("nan"))]
)
def test_fit_rejects_bad_seed_data(seed_data, tiny_mlp: nn.Module) -> None:
    with pytest.raises(ValueError, match="seed_data"):
        fit_substitute(tiny_mlp, seed_data, rho=1, epochs=1)


# ----- the attack: queries ----------------------------------------------------------------------
def test_queries_are_counted_exactly(tiny_mlp: nn.Module, images: Tensor) -> None:
    counted = Recorder(tiny_mlp)
    y = labels(tiny_mlp, images)
    y[0] = (y[0] + 1) % 10  # misclassified: only the clean pass
    attack = Substitute(ThreatModel("linf", 0.1), **CHEAP)
    res = attack(counted, images, y)
    training = res.params["training_queries"]
    assert training == attack.last_training_queries
    n0 = len(first_per_class(images, y, 2))
    assert training == training_set_sizes(n0, 2, 1, 4)[-1]
    assert counted.points == training + int(res.queries.sum()) + int(res.rechecks.sum())
    assert int(res.queries[0]) == 1 and bool((res.queries[1:] == 2).all())
    assert bool((res.gradients == 0).all()) and bool((res.steps[1:] == 1).all())
    assert res.params["substitute_attack"] == "fgsm" and res.params["architecture"] == "mlp"


def test_trains_once_per_call_not_per_batch(tiny_mlp: nn.Module, images: Tensor) -> None:
    counted = Recorder(tiny_mlp)
    y = labels(tiny_mlp, images)
    attack = Substitute(ThreatModel("linf", 0.1), batch_size=5, **CHEAP)
    res = attack(counted, images, y)
    assert counted.points == attack.last_training_queries + int(res.queries.sum()) + int(
        res.rechecks.sum()
    )
    assert res.params["training_queries"] == attack.last_training_queries


def test_seed_data_is_the_initial_collection(tiny_mlp: nn.Module, images: Tensor) -> None:
    seed = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    counted = Recorder(tiny_mlp)
    attack = Substitute(ThreatModel("linf", 0.1), seed_data=seed, rho=1, epochs=1)
    attack(counted, images, labels(tiny_mlp, images))
    assert torch.equal(counted.inputs[0], seed)  # the first oracle call labels S_0
    assert attack.last_training_queries == 14
    assert attack.params()["seed_data"] == 7


def test_first_per_class() -> None:
    y = torch.tensor([3, 1, 3, 3, 1, 0])
    x = torch.arange(6.0)[:, None]
    assert first_per_class(x, y, 2).flatten().tolist() == [0.0, 1.0, 2.0, 4.0, 5.0]


# ----- the attack: access and contract ---------------------------------------------------------
def test_every_active_sample_gets_a_perturbed_query(tiny_mlp: nn.Module, images: Tensor) -> None:
    """Also the samples the substitute already gets wrong (they get an FGSM step on it)."""
    counted = Recorder(tiny_mlp)
    y = labels(tiny_mlp, images)
    attack = Substitute(ThreatModel("linf", 0.1), **CHEAP)
    attack(counted, images, y)
    sub = attack.last_substitute
    assert sub is not None
    assert bool((labels(sub, images) != y).any()), "the test needs a substitute error"
    transfer_query = counted.inputs[-2]  # before the final re-check
    assert transfer_query.shape == images.shape
    moved = (transfer_query - images).flatten(1).abs().amax(dim=1)
    torch.testing.assert_close(moved, torch.full((16,), 0.1))


@pytest.mark.parametrize("access", ["label", "scores", "module", "callable"])
def test_access_levels(access: str, tiny_mlp: nn.Module, images: Tensor) -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tiny_mlp(torch.from_numpy(batch)).argmax(dim=1).numpy()

    model = {
        "label": lambda: as_oracle(tiny_mlp, "label"),
        "scores": lambda: as_oracle(tiny_mlp, "scores"),
        "module": lambda: tiny_mlp,
        "callable": lambda: predict,
    }[access]()
    y = labels(tiny_mlp, images)
    res = Substitute(ThreatModel("linf", 0.2), **CHEAP)(model, images, y)
    assert res.x_adv.shape == images.shape and res.success.dtype == torch.bool
    torch.testing.assert_close(res.pred, labels(tiny_mlp, res.x_adv))


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0), ("l1", 4.0), ("l0", 6)])
@pytest.mark.parametrize("levels", [None, 256])
def test_properties(norm, eps, levels, tiny_mlp: nn.Module, images: Tensor) -> None:
    threat = ThreatModel(norm, eps, levels=levels)
    y = labels(tiny_mlp, images)
    res = Substitute(threat, **CHEAP)(tiny_mlp, images, y)
    assert res.x_adv.shape == images.shape and res.x_adv.dtype == images.dtype
    for name in ("success", "distance", "pred", "queries", "gradients", "steps"):
        assert getattr(res, name).shape == (16,), name
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    delta = (res.x_adv - images).flatten(1).double()
    dist = {
        "linf": delta.abs().amax(dim=1),
        "l2": delta.norm(dim=1),
        "l1": delta.abs().sum(dim=1),
        "l0": (delta != 0).sum(dim=1).double(),
    }[norm]
    assert float(dist.max()) <= eps + ball_tolerance(eps)
    if levels is not None:
        assert bool(on_grid(res.x_adv, threat).all())
    pred = labels(tiny_mlp, res.x_adv)
    assert torch.equal(res.pred, pred) and torch.equal(res.success, pred != y)
    assert bool(res.success.any()), "nothing transferred on the tiny model"
    again = Substitute(threat, **CHEAP)(tiny_mlp, images, y)
    assert torch.equal(again.x_adv, res.x_adv)


def test_targeted_and_other_white_box_attacks(tiny_mlp: nn.Module, images: Tensor) -> None:
    threat = ThreatModel("linf", 0.3, targeted=True)
    y = labels(tiny_mlp, images)
    target = (y + 1) % 10
    res = Substitute(threat, attack=PGD(threat, steps=5), **CHEAP)(tiny_mlp, images, y, target)
    assert torch.equal(res.success, labels(tiny_mlp, res.x_adv) == target)
    assert res.params["substitute_attack"] == "pgd"


def test_the_global_rng_is_untouched(tiny_mlp: nn.Module, images: Tensor) -> None:
    state = torch.get_rng_state()
    Substitute(ThreatModel("linf", 0.1), **CHEAP)(tiny_mlp, images, labels(tiny_mlp, images))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"attack": "fgsm"}, "attack"),
        ({"attack": FGSM(ThreatModel("linf", 0.2))}, "attack"),
        ({"per_class": 0}, "per_class"),
        ({"seed_data": torch.rand(2, 1, 8, 8) * 2}, "seed_data"),
        ({"seed_data": [0.5]}, "seed_data"),
        ({"architecture": "mlp"}, "architecture"),
        ({"rho": -1}, "rho"),
        ({"lam": float("inf")}, "lam"),
        ({"tau": 0}, "tau"),
        ({"sigma": 1.5}, "sigma"),
        ({"kappa": 0}, "kappa"),
        ({"epochs": 0}, "epochs"),
        ({"train_batch_size": 0}, "train_batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"seed": "0"}, "seed"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_constructor_errors(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        Substitute(ThreatModel("linf", 0.1), **options)


def test_needs_eps() -> None:
    with pytest.raises(ValueError, match="eps"):
        Substitute(ThreatModel("l2", None))


# ----- strength on the bundled CNN -------------------------------------------------------------
def test_strength_on_the_bundled_cnn() -> None:
    """10 train images per class seed the substitute (MLP, ρ = 6, σ = 3, κ = 400: 2,000
    queries); measured: agreement 0.753 on the 1,000 test images, transfer success of FGSM
    L∞ 0.3 0.367 on the first 100 (98 clean-correct), ~4 s on one CPU thread."""
    from advex import data, zoo

    model = zoo.load("mnist_cnn")
    x_train, y_train = data.load("mnist5k", split="train")
    x, y = data.load("mnist5k", split="test")
    start = time.perf_counter()
    attack = Substitute(ThreatModel("linf", 0.3), seed_data=first_per_class(x_train, y_train, 10))
    res = attack(model, x[:100], y[:100])
    seconds = time.perf_counter() - start
    assert res.params["training_queries"] == 2000
    sub = attack.last_substitute
    assert sub is not None
    agreement = float((labels(sub, x) == labels(model, x)).float().mean())
    assert agreement >= 0.70, agreement
    assert res.success_rate >= 0.30, res.success_rate
    assert bool((res.queries <= 2).all())
    assert seconds < 60, seconds


@pytest.mark.slow
def test_a_cnn_substitute_transfers_better() -> None:
    """The same with ``substitute_cnn``: measured agreement 0.851, transfer success 0.612 on
    the first 100 test images (98 clean-correct), ~30 s on one CPU thread."""
    from advex import data, zoo

    model = zoo.load("mnist_cnn")
    x_train, y_train = data.load("mnist5k", split="train")
    x, y = data.load("mnist5k", split="test")
    attack = Substitute(
        ThreatModel("linf", 0.3),
        seed_data=first_per_class(x_train, y_train, 10),
        architecture=lambda: substitute_cnn((1, 28, 28), 10),
    )
    res = attack(model, x[:100], y[:100])
    sub = attack.last_substitute
    assert sub is not None
    agreement = float((labels(sub, x) == labels(model, x)).float().mean())
    assert agreement >= 0.80, agreement
    assert res.success_rate >= 0.50, res.success_rate
