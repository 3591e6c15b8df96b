"""FakeImage: class images by input optimization, from noise or from x, with a penalty."""

from __future__ import annotations

import pytest
import torch

from advex import ThreatModel
from advex.attacks import FakeImage


@pytest.mark.parametrize("step", ["l2", "sign", "raw"])
def test_from_noise_reaches_the_target_class(step: str, digits) -> None:
    x, y = digits.x[:20], digits.y[:20]
    target = (y + 1 + torch.arange(20) % 9) % 10
    threat = ThreatModel("linf", targeted=True)  # no budget: anywhere in the box
    step_size = {"l2": 0.5, "sign": 0.02, "raw": 0.5}[step]
    res = FakeImage(threat, steps=100, step=step, step_size=step_size)(digits.model, x, y, target)
    assert bool(res.success.all())
    with torch.no_grad():
        assert torch.equal(digits.model(res.x_adv).argmax(dim=1), target)
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    # from noise the result has nothing to do with x: it is far from it
    assert float(res.distance.min()) > 0.3


def test_noise_init_is_seeded(digits) -> None:
    x, y = digits.x[:4], digits.y[:4]
    target = (y + 1) % 10
    threat = ThreatModel("linf", targeted=True)
    a = FakeImage(threat, steps=3, seed=1)(digits.model, x, y, target)
    b = FakeImage(threat, steps=3, seed=1)(digits.model, x, y, target)
    c = FakeImage(threat, steps=3, seed=2)(digits.model, x, y, target)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)


def test_init_x_with_a_budget_stays_in_the_ball(digits) -> None:
    x, y = digits.x[:16], digits.y[:16]
    target = (y + 1) % 10
    threat = ThreatModel("l2", 1.5, targeted=True, levels=256)
    res = FakeImage(threat, init="x", steps=30, step_size=0.2)(digits.model, x, y, target)
    assert float(res.distance.max()) <= 1.5 + 1e-5
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)
    assert res.success.any()


def test_penalty_keeps_the_result_closer(digits) -> None:
    """The penalty λ‖x̃ − x‖₂² trades confidence for distance: larger λ, smaller distance."""
    x, y = digits.x[:16], digits.y[:16]
    target = (y + 1) % 10
    threat = ThreatModel("linf", targeted=True)
    kw = {"init": "x", "steps": 40, "step_size": 0.1, "step": "raw"}
    free = FakeImage(threat, **kw)(digits.model, x, y, target)
    tied = FakeImage(threat, penalty=5.0, **kw)(digits.model, x, y, target)
    assert float(tied.distance.mean()) < float(free.distance.mean())


def test_requires_a_targeted_threat_and_a_target(digits) -> None:
    with pytest.raises(ValueError, match="targeted"):
        FakeImage(ThreatModel("linf"))
    with pytest.raises(ValueError, match="target"):
        FakeImage(ThreatModel("linf", targeted=True), steps=2)(
            digits.model, digits.x[:2], digits.y[:2]
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init": "zeros"}, "init"),
        ({"step": "adam"}, "step"),
        ({"penalty_norm": "linf"}, "penalty_norm"),
        ({"penalty": -1.0}, "penalty"),
        ({"penalty": float("nan")}, "penalty"),
        ({"steps": 0}, "steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -1.0}, "step_size"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FakeImage(ThreatModel("linf", targeted=True), **kwargs)
