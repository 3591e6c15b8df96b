"""Sanity checks: each fires on a model built to trigger it and stays quiet on honest models."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advex import ThreatModel, as_classifier
from advex.attacks import APGD, APGDT, FGSM, Ensemble, Square, fast, standard
from advex.evaluate import checks


class _Softmax(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).softmax(dim=1)


class _Noisy(nn.Module):
    """Random self-ensemble style: Gaussian noise on the input at every forward pass."""

    def __init__(self, inner: nn.Module, sigma: float = 0.3) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


class _Staircase(nn.Module):
    """A non-differentiable input quantizer (4 levels) in front of the model: zero gradients."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 3) / 3)


def _by_name(flags: list[checks.Flag]) -> dict[str, checks.Flag]:
    return {f.name: f for f in flags}


@pytest.mark.filterwarnings("ignore::advex.model.ProbabilityOutputWarning")
def test_probability_outputs_fire_on_softmax_and_not_on_logits(digits):
    x = digits.x
    assert checks.probability_outputs(as_classifier(_Softmax(digits.model)), x).fired
    assert not checks.probability_outputs(as_classifier(digits.model), x).fired


def test_randomized_model_fires_on_noise_and_not_on_a_plain_model(digits):
    torch.manual_seed(0)
    assert checks.randomized_model(as_classifier(_Noisy(digits.model)), digits.x).fired
    assert not checks.randomized_model(as_classifier(digits.model), digits.x).fired


def test_vanishing_gradients_fire_on_a_staircase(digits):
    f = checks.vanishing_gradients(as_classifier(_Staircase(digits.model)), digits.x, digits.y)
    assert f.fired and f.value == 1.0
    g = checks.vanishing_gradients(as_classifier(digits.model), digits.x, digits.y)
    assert not g.fired and g.value == 0.0


def test_large_eps_fires_when_gradients_are_masked(digits):
    threat = ThreatModel("linf", 0.05)
    clf = as_classifier(_Staircase(digits.model))
    f = checks.large_eps(clf, digits.x, digits.y, threat, seed=0)
    assert f.fired and f.value > 0.5
    g = checks.large_eps(as_classifier(digits.model), digits.x, digits.y, threat, seed=0)
    assert not g.fired and g.value == 0.0


def test_blackbox_stronger_fires_on_a_staircase(digits):
    threat = ThreatModel("linf", 0.1)
    model = _Staircase(digits.model)
    members = [APGD(threat, steps=20), Square(threat, max_queries=300)]
    res = Ensemble(threat, members)(model, digits.x, digits.y)
    f = checks.blackbox_stronger(res)
    assert f.fired, f.message
    assert f.value == pytest.approx(float((res.broken_by == 1).float().mean()))
    # a plain model: the white-box attacks break what can be broken, Square adds nothing
    white = [APGD(threat), APGDT(threat)]
    res = Ensemble(threat, [*white, Square(threat, max_queries=300)])(
        digits.model, digits.x, digits.y
    )
    assert not checks.blackbox_stronger(res).fired
    # not an ensemble, or no black-box member after a white-box one: not measured
    assert not checks.blackbox_stronger(APGD(threat)(digits.model, digits.x, digits.y)).fired


def test_not_converged_fires_on_a_weak_evaluation(digits):
    threat = ThreatModel("linf", 0.08)
    weak = Ensemble(threat, [FGSM(threat)])
    res = weak(digits.model, digits.x, digits.y)
    f = checks.not_converged(
        as_classifier(digits.model), digits.x, digits.y, res, seed=0, max_samples=64
    )
    assert f.fired and f.value > checks.CONVERGENCE_DROP
    strong = fast(threat)
    res = strong(digits.model, digits.x, digits.y)
    g = checks.not_converged(
        as_classifier(digits.model), digits.x, digits.y, res, seed=0, max_samples=64
    )
    assert not g.fired, g.message


def test_nondeterministic_fires_on_a_randomized_model(digits):
    threat = ThreatModel("linf", 0.05)
    attack = fast(threat)
    torch.manual_seed(0)
    noisy = as_classifier(_Noisy(digits.model, sigma=0.05))
    assert checks.nondeterministic(noisy, digits.x, digits.y, attack, max_samples=16).fired
    plain = as_classifier(digits.model)
    assert not checks.nondeterministic(plain, digits.x, digits.y, attack, max_samples=16).fired


def test_run_checks_on_a_plain_model_is_quiet_and_reports_every_check(digits):
    threat = ThreatModel("linf", 0.06)
    members = [APGD(threat), APGDT(threat, n_target_classes=3), Square(threat, max_queries=300)]
    attack = Ensemble(threat, members)
    res = attack(digits.model, digits.x, digits.y)
    flags = checks.run_checks(digits.model, digits.x, digits.y, attack, res, max_samples=64)
    assert [f.name for f in flags] == [
        "probability_outputs",
        "randomized_model",
        "vanishing_gradients",
        "blackbox_stronger",
        "large_eps",
        "not_converged",
        "nondeterministic",
    ]
    assert not any(f.fired for f in flags), [f.message for f in flags if f.fired]
    for f in flags:
        d = f.to_dict()
        assert set(d) == {"name", "fired", "message", "advice", "value"}


def test_run_checks_on_a_staircase_fires_the_masking_flags(digits):
    threat = ThreatModel("linf", 0.1)
    model = _Staircase(digits.model)
    attack = Ensemble(threat, [APGD(threat, steps=20), Square(threat, max_queries=300)])
    res = attack(model, digits.x, digits.y)
    flags = checks.run_checks(model, digits.x, digits.y, attack, res)
    fired = {f.name for f in flags if f.fired}
    assert {"vanishing_gradients", "blackbox_stronger", "large_eps"} <= fired
    assert "probability_outputs" not in fired and "randomized_model" not in fired


@pytest.mark.slow
def test_standard_evaluation_of_the_bundled_cnn_is_quiet():
    from advex import data, zoo

    x, y = data.load("mnist5k", split="test")
    x, y = x[:100], y[:100]
    model = zoo.load("mnist_cnn")
    threat = ThreatModel("linf", 0.1)
    attack = standard(threat)
    res = attack(model, x, y)
    assert 0.05 < res.robust_accuracy < res.clean_accuracy
    flags = checks.run_checks(model, x, y, attack, res)
    assert not any(f.fired for f in flags), [f.message for f in flags if f.fired]
