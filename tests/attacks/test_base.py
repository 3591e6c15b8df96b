"""The Attack base class (checks, batching, restoring the model) and the per-sample Tracker."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from advex import Classifier, ThreatModel
from advex.attacks import ATTACKS, BIM, FGSM, ILLC, PGD, FakeImage, MinNormAttack, Tracker
from advex.model import ProbabilityOutputWarning


@pytest.fixture
def bump_tracker(bump: nn.Module):
    """A Tracker on the bump model (see conftest) for n copies of x = 0.5, label 0."""

    def make(threat: ThreatModel, n: int = 1, **kw) -> Tracker:
        x = torch.full((n, 1), 0.5)
        y = torch.zeros(n, dtype=torch.long)
        return Tracker(Classifier(bump), x, y, None, threat, generator=torch.Generator(), **kw)

    return make


# ----- Tracker ------------------------------------------------------------------------------
def test_tracker_starts_from_the_clean_point(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.1), n=3)
    assert run.queries.tolist() == [1, 1, 1]
    assert run.gradients.tolist() == [0, 0, 0] and run.step_count.tolist() == [0, 0, 0]
    assert run.clean_pred.tolist() == [0, 0, 0]
    assert run.n_active == 3 and not bool(run.best_success.any())
    assert torch.equal(run.best, run.x) and run.best.data_ptr() != run.x.data_ptr()


def test_tracker_keeps_the_best_point_not_the_last(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.1), early_stop=False)
    with torch.no_grad():
        run.forward(run.x + 0.06)  # success, margin 0.19
        run.forward(run.x + 0.0)  # failure: must not replace a success
        run.forward(run.x + 0.09)  # success with a smaller margin 0.04
    assert run.queries.tolist() == [4]
    assert bool(run.best_success[0])
    torch.testing.assert_close(run.best, torch.tensor([[0.56]]))


def test_tracker_select_distance_prefers_the_closer_success(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("l2", 0.1), early_stop=False, select="distance")
    with torch.no_grad():
        run.forward(run.x + 0.06)  # success at distance 0.06 (larger margin)
        run.forward(run.x + 0.02)  # success at distance 0.02 (smaller margin)
    torch.testing.assert_close(run.best, torch.tensor([[0.52]]))
    torch.testing.assert_close(run.best_distance, torch.tensor([0.02]))


def test_tracker_ranks_successes_by_the_attacks_own_distance(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("l2"), early_stop=False, select="distance")
    with torch.no_grad():
        run.forward(run.x + 0.06, distance=torch.tensor([5.0]))  # success, measure 5
        assert run.last_improved.tolist() == [True]
        run.forward(run.x + 0.02, distance=torch.tensor([1.0]))  # success, measure 1
        assert run.last_improved.tolist() == [True]
        run.forward(run.x + 0.04, distance=torch.tensor([3.0]))  # closer in L2 is not enough
        assert run.last_improved.tolist() == [False]
    torch.testing.assert_close(run.best, torch.tensor([[0.52]]))
    torch.testing.assert_close(run.best_measure, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="distance"):
        run.forward(run.x, distance=torch.ones(2))


class _Shift(MinNormAttack):
    """A toy transformation attack: x + c for a few c, measured by 10·c (metric "shift")."""

    name = "toy_shift"
    metric = "shift"

    def _run(self, run: Tracker) -> None:
        for c in (0.08, 0.06, 0.04, 0.2):
            with torch.no_grad():
                run.forward(run.x + c, distance=torch.full((run.n_active,), 10 * c))


def test_an_attack_with_its_own_metric_reports_it(bump: nn.Module) -> None:
    x = torch.full((3, 1), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    result = _Shift(ThreatModel("l2"))(bump, x, y)
    assert result.success.all() and result.metric == "shift"
    assert result.distance_metric == "shift" and result.to_dict()["metric"] == "shift"
    torch.testing.assert_close(result.distance, torch.full((3,), 0.4))  # c = 0.04, no line search
    torch.testing.assert_close(result.x_adv, torch.full((3, 1), 0.54))
    plain = PGD(ThreatModel("l2", 0.1), steps=2)(bump, x, y)
    assert plain.metric is None and plain.distance_metric == "l2"


def test_tracker_among_failures_keeps_the_larger_margin(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.5), early_stop=False)  # clean margin z1 = −0.05
    with torch.no_grad():
        run.forward(run.x + 0.3)  # z1 = −6.05: worse than the clean point
        run.forward(run.x - 0.02)  # z1 = −0.29: worse
    torch.testing.assert_close(run.best, run.x)
    with torch.no_grad():
        run.forward(run.x + 0.005)  # z1 = −0.0025: still a failure, but a better one
        run.forward(run.x - 0.01)  # z1 = −0.16: worse again
    assert not bool(run.best_success[0])
    torch.testing.assert_close(run.best, torch.tensor([[0.505]]))


def test_tracker_never_records_points_outside_the_ball(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.03), early_stop=False)
    with torch.no_grad():
        logits = run.forward(run.x + 0.06)  # adversarial, but 0.06 > eps
    assert int(logits.argmax(dim=1)) == 1
    assert not bool(run.best_success[0])
    torch.testing.assert_close(run.best, run.x)


def test_tracker_evaluates_the_quantized_point(bump) -> None:
    run = Tracker(
        Classifier(bump),
        torch.full((1, 1), 128 / 255),
        torch.zeros(1, dtype=torch.long),
        None,
        ThreatModel("linf", 0.1, levels=256),
        generator=torch.Generator(),
        early_stop=False,
    )
    with torch.no_grad():
        run.forward(run.x + 12.7 / 255)  # → (128 + 12)/255, rounded toward x
    assert bool(run.best_success[0])
    assert torch.equal(run.best, torch.tensor([[140 / 255]]))


def test_tracker_early_stop_shrinks_the_active_rows(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.1), n=3)
    delta = torch.tensor([[0.06], [0.0], [0.06]])
    extra = torch.arange(3.0).unsqueeze(1)
    with torch.no_grad():
        run.forward(run.x + delta)
    assert run.done.tolist() == [True, False, True]
    delta, extra = run.shrink(delta, extra)
    assert run.n_active == 1 and run.rows.tolist() == [1]
    assert delta.tolist() == [[0.0]] and extra.tolist() == [[1.0]]
    with torch.no_grad():
        run.forward(run.x + delta)
    assert run.queries.tolist() == [2, 3, 2]  # only the active row was queried


def test_tracker_without_early_stop_keeps_every_row(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.1), n=2, early_stop=False)
    with torch.no_grad():
        run.forward(run.x + torch.tensor([[0.06], [0.0]]))
    (d,) = run.shrink(torch.zeros(2, 1))
    assert run.n_active == 2 and d.shape == (2, 1)


def test_tracker_value_and_grad(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.1), n=2)
    delta = torch.tensor([[0.01], [-0.01]])

    def loss(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return z[:, 1]

    logits, values, grad = run.value_and_grad(delta, loss)
    x = 0.5 + delta[:, 0]
    torch.testing.assert_close(values, 0.2 - 100 * (x - 0.55) ** 2)
    torch.testing.assert_close(grad[:, 0], -200 * (x - 0.55))
    assert run.gradients.tolist() == [1, 1] and run.queries.tolist() == [2, 2]
    assert not logits.requires_grad and not values.requires_grad

    _, values_p, _ = run.value_and_grad(delta, loss, penalty=lambda d: 10 * d[:, 0].abs())
    torch.testing.assert_close(values_p, values - 0.1)


def test_min_norm_tracker_does_not_stop_at_the_first_success(bump_tracker) -> None:
    """select='distance' without eps: a success keeps the sample active (it may get closer)."""
    run = bump_tracker(ThreatModel("l2"), n=2, select="distance")
    with torch.no_grad():
        run.forward(run.x + torch.tensor([[0.06], [0.0]]))
    assert run.done.tolist() == [False, False]
    assert run.best_success.tolist() == [True, False]
    (d,) = run.shrink(torch.zeros(2, 1))
    assert run.n_active == 2 and d.shape == (2, 1)
    with torch.no_grad():
        run.forward(run.x + torch.tensor([[0.03], [0.0]]))  # closer and still adversarial
    torch.testing.assert_close(run.best_distance[0], torch.tensor(0.03))


def test_min_norm_tracker_with_eps_stops_inside_the_ball(bump_tracker) -> None:
    """select='distance' with eps: a success inside the ball finishes the sample."""
    run = bump_tracker(ThreatModel("l2", 0.05), n=2, select="distance")
    with torch.no_grad():
        run.forward(run.x + torch.tensor([[0.06], [0.03]]))  # outside the ball / inside
    assert run.done.tolist() == [False, True]
    assert run.best_success.tolist() == [False, True]  # the 0.06 point is never recorded


def test_min_norm_tracker_rounds_to_the_nearest_grid_value(bump) -> None:
    """Without eps the quantized view is the nearest grid value (toward x would lose ground)."""
    run = Tracker(
        Classifier(bump),
        torch.full((1, 1), 128 / 255),
        torch.zeros(1, dtype=torch.long),
        None,
        ThreatModel("l2", levels=256),
        generator=torch.Generator(),
        select="distance",
    )
    with torch.no_grad():
        run.forward(run.x + 12.7 / 255)  # nearest: 141/255
    assert torch.equal(run.best, torch.tensor([[141 / 255]]))


def test_tracker_line_search_keeps_the_closest_success_on_the_segment(bump_tracker) -> None:
    """Bump model: class 1 on |x − 0.55| < 0.0447. From a success at 0.59 (distance 0.09) the
    bisection on x + t·0.09 converges to the near edge of the bump, 0.5053."""
    run = bump_tracker(ThreatModel("l2"), n=2, select="distance")
    with torch.no_grad():
        run.forward(run.x + torch.tensor([[0.09], [0.0]]))  # sample 1 has no success
    before = run.queries.clone()
    run.line_search(12)
    edge = 0.55 - math.sqrt(0.2 / 100)
    assert bool(run.best_success[0]) and not bool(run.best_success[1])
    assert edge - 0.5 <= float(run.best_distance[0]) <= edge - 0.5 + 0.09 / 2**11
    assert (run.queries - before).tolist() == [12, 0]  # only successful samples search


def test_tracker_retire(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("l2"), n=3, select="distance")
    extra = torch.arange(3.0)
    run.retire(torch.tensor([False, True, False]))
    (extra,) = run.shrink(extra)
    assert run.rows.tolist() == [0, 2] and extra.tolist() == [0.0, 2.0]
    run.retire(torch.tensor([True, False]))
    (extra,) = run.shrink(extra)
    assert run.rows.tolist() == [2] and extra.tolist() == [2.0]
    with pytest.raises(ValueError, match="finished"):
        run.retire(torch.tensor([True, False]))


def test_tracker_jacobian_of_a_linear_model() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    x = 0.1 + 0.8 * torch.rand(5, 1, 2, 3)
    with torch.no_grad():
        y = module(x).argmax(dim=1)
    run = Tracker(Classifier(module), x, y, None, ThreatModel("l2"), generator=torch.Generator())
    classes = torch.stack([y, (y + 1) % 4, (y + 3) % 4], dim=1)
    logits, jac = run.jacobian(run.x + 0.01, classes)
    assert jac.shape == (5, 3, 1, 2, 3)
    weight = module[1].weight.detach()
    torch.testing.assert_close(jac.flatten(2), weight[classes])
    torch.testing.assert_close(logits, module(x + 0.01).detach())
    assert run.queries.tolist() == [2] * 5 and run.gradients.tolist() == [3] * 5
    with pytest.raises(ValueError, match="classes"):
        run.jacobian(run.x, y)


def test_tracker_steps_and_restarts(bump_tracker) -> None:
    run = bump_tracker(ThreatModel("linf", 0.1), n=3, early_stop=False)
    restarts = []
    for r in run.restarts(3):
        restarts.append(r)
        for _ in run.steps(2):
            with torch.no_grad():
                run.forward(run.x + (torch.tensor([[0.06], [0.0], [0.0]]) if r == 0 else 0.06))
    # restart 0 breaks sample 0; restart 1 runs on samples 1 and 2 only and breaks them; no 2
    assert restarts == [0, 1]
    assert run.step_count.tolist() == [2, 4, 4]
    assert run.queries.tolist() == [3, 5, 5]


# ----- Attack: errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: PGD({"norm": "linf", "eps": 0.1}), TypeError, "threat"),
        (lambda: PGD(ThreatModel("l0", 3)), ValueError, "threat.norm"),
        (lambda: BIM(ThreatModel("l0", 3)), ValueError, "threat.norm"),
        (lambda: PGD(ThreatModel("linf")), ValueError, "threat.eps"),
        (lambda: BIM(ThreatModel("linf")), ValueError, "threat.eps"),
        (lambda: ILLC(ThreatModel("linf")), ValueError, "threat.eps"),
        (lambda: FGSM(ThreatModel("l2")), ValueError, "threat.eps"),
        (lambda: PGD(ThreatModel("linf", 0.1), steps=0), ValueError, "steps"),
        (lambda: PGD(ThreatModel("linf", 0.1), steps=-3), ValueError, "steps"),
        (lambda: PGD(ThreatModel("linf", 0.1), steps=2.5), ValueError, "steps"),
        (lambda: PGD(ThreatModel("linf", 0.1), restarts=0), ValueError, "restarts"),
        (lambda: PGD(ThreatModel("linf", 0.1), step_size=-0.01), ValueError, "step_size"),
        (lambda: PGD(ThreatModel("linf", 0.1), step_size=0.0), ValueError, "step_size"),
        (lambda: PGD(ThreatModel("linf", 0.1), step_size=float("nan")), ValueError, "step_size"),
        (lambda: PGD(ThreatModel("linf", 0.1), batch_size=0), ValueError, "batch_size"),
        (lambda: BIM(ThreatModel("linf", 0.1), steps=0), ValueError, "steps"),
        (lambda: PGD(ThreatModel("linf", 0.1), loss="nope"), ValueError, "loss"),
        (lambda: ILLC(ThreatModel("linf", 0.1, targeted=True)), ValueError, "targeted"),
        (lambda: FakeImage(ThreatModel("linf", 0.1)), ValueError, "targeted"),
    ],
)
def test_constructor_errors(build, error, match) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("name", ["steps", "restarts", "batch_size"])
def test_a_bool_is_not_a_count(name: str) -> None:
    """True is an int in Python; as a count it is a mistake (ThreatModel rejects levels=True)."""
    with pytest.raises(ValueError, match=name):
        PGD(ThreatModel("linf", 0.1), **{name: True})


@pytest.fixture
def setup(tiny_mlp, images):
    with torch.no_grad():
        y = tiny_mlp(images).argmax(dim=1)
    return tiny_mlp, images, y


def test_targeted_threat_without_target_raises(setup) -> None:
    model, x, y = setup
    with pytest.raises(ValueError, match="target"):
        PGD(ThreatModel("linf", 0.1, targeted=True), steps=2)(model, x, y)


def test_target_equal_to_y_raises(setup) -> None:
    model, x, y = setup
    target = (y + 1) % 10
    target[5] = y[5]
    with pytest.raises(ValueError, match="target"):
        FGSM(ThreatModel("linf", 0.1, targeted=True))(model, x, y, target)


def test_untargeted_threat_given_a_target_raises(setup) -> None:
    model, x, y = setup
    with pytest.raises(ValueError, match="untargeted"):
        PGD(ThreatModel("linf", 0.1), steps=2)(model, x, y, (y + 1) % 10)


def test_off_grid_inputs_with_levels_raise(setup) -> None:
    model, x, y = setup
    with pytest.raises(ValueError, match="grid"):
        FGSM(ThreatModel("linf", 0.1, levels=256))(model, (x + 0.3 / 255).clamp(0, 1), y)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda x, y: (x.numpy(), y), TypeError, "^x:"),
        (lambda x, y: (x * float("nan"), y), ValueError, "NaN"),
        (lambda x, y: (x + 1.5, y), ValueError, "bounds"),
        (lambda x, y: (x, y[:-1]), ValueError, "^y:"),
        (lambda x, y: (x, y + 10), ValueError, "num_classes=10"),
        (lambda x, y: (x, y.float()), TypeError, "^y:"),
    ],
)
def test_bad_inputs_raise_before_any_attack(setup, mutate, error, match) -> None:
    model, x, y = setup
    xb, yb = mutate(x, y)
    with pytest.raises(error, match=match):
        PGD(ThreatModel("linf", 0.1), steps=2)(model, xb, yb)


def test_probability_outputs_warn_during_an_attack(tiny_mlp, images) -> None:
    model = nn.Sequential(tiny_mlp, nn.Softmax(dim=1))
    with torch.no_grad():
        y = model(images).argmax(dim=1)
    with pytest.warns(ProbabilityOutputWarning):
        FGSM(ThreatModel("linf", 0.1))(model, images, y)


def test_a_failing_attack_restores_the_model(tiny_cnn, images) -> None:
    class Failing(FGSM):
        def _run(self, run: Tracker) -> None:
            raise RuntimeError("inside the attack")

    tiny_cnn.eval()
    with torch.no_grad():
        y = tiny_cnn(images).argmax(dim=1)  # every sample correct: the attack does run
    tiny_cnn.train()
    with pytest.raises(RuntimeError, match="inside"):
        Failing(ThreatModel("linf", 0.1))(tiny_cnn, images, y)
    assert all(m.training for m in tiny_cnn.modules())
    assert all(p.requires_grad for p in tiny_cnn.parameters())


# ----- batching, params, catalogue -----------------------------------------------------------
def test_batching_gives_valid_results_of_the_right_length(digits) -> None:
    x, y = digits.x[:20], digits.y[:20]
    threat = ThreatModel("l2", 1.0, levels=256)
    res = PGD(threat, steps=4, batch_size=7)(digits.model, x, y)
    assert len(res) == 20 and res.x_adv.shape == x.shape
    assert float(res.distance.max()) <= 1.0 + 1e-5
    assert torch.equal(res.x_adv, torch.round(res.x_adv * 255) / 255)
    with torch.no_grad():
        pred = digits.model(res.x_adv).argmax(dim=1)
    assert torch.equal(res.success, pred != y)
    assert torch.equal(res.y, y)


def test_batching_does_not_change_a_deterministic_attack(digits) -> None:
    x, y = digits.x[:20], digits.y[:20]
    threat = ThreatModel("linf", 0.05)
    whole = BIM(threat, steps=5)(digits.model, x, y)
    parts = BIM(threat, steps=5, batch_size=7)(digits.model, x, y)
    torch.testing.assert_close(parts.x_adv, whole.x_adv)
    assert torch.equal(parts.queries, whole.queries)


@pytest.mark.parametrize(
    "attack",
    [
        PGD(ThreatModel("linf", 0.1), steps=4, restarts=2, batch_size=7),
        PGD(ThreatModel("l2", 0.5), steps=3, early_stop=False),
        FGSM(ThreatModel("l1", 2.0)),
    ],
    ids=["pgd-restarts-batched", "pgd-no-early-stop", "fgsm"],
)
def test_classifier_counters_agree_with_the_result(attack, digits) -> None:
    """Every forward an attack makes is a query of some sample, plus one final re-check per
    sample; every backward is a gradient of some sample."""
    clf = Classifier(digits.model, num_classes=10)
    x, y = digits.x[:20], digits.y[:20]
    res = attack(clf, x, y)
    assert clf.forward_count == int(res.queries.sum()) + int(res.rechecks.sum())
    assert clf.backward_count == int(res.gradients.sum())
    assert int(res.gradients.sum()) > 0


def test_params_and_repr() -> None:
    attack = PGD(ThreatModel("l2", 0.5), steps=7, restarts=2, seed=3)
    p = attack.params()
    assert p["steps"] == 7 and p["restarts"] == 2 and p["seed"] == 3
    assert p["step_size"] == pytest.approx(2.5 * 0.5 / 7) and p["loss"] == "ce"
    assert "threat" not in p and not any(k.startswith("_") for k in p)
    json.dumps(p)
    r = repr(attack)
    assert r.startswith("PGD(") and "l2 eps=0.5" in r and "steps=7" in r


def test_catalogue() -> None:
    fixed = {"fgsm", "bim", "illc", "pgd", "fake_image", "apgd", "apgd-t", "square"}
    fixed |= {"standard", "fast", "substitute"}  # the ensembles; transfer from a substitute
    fixed |= {"universal", "universal_sgd"}  # one perturbation fitted on the whole batch
    minimum_norm = {"deepfool", "cw_l2", "cw_linf", "cw_l0", "jsma", "lbfgs", "fmn", "ead"}
    minimum_norm |= {"fab", "fab-t", "hsja", "opt", "sign_opt", "zoo"}
    sparse = {"local_search", "one_pixel"}  # few pixels, eps (a pixel cap) optional
    # distances of their own (result.metric), no eps; the patch is fitted on a whole dataset
    metric = {"stadv": "flow", "rotation_translation": "rotation_translation"}
    metric |= {"recoloradv": "color", "patch": "patch_area"}
    assert set(ATTACKS) == fixed | minimum_norm | sparse | set(metric)
    for name, kind in metric.items():
        assert ATTACKS[name].metric == kind and not ATTACKS[name].needs_eps
        assert ATTACKS[name].select == ("margin" if name == "patch" else "distance")
        assert ATTACKS[name].per_batch == (name != "patch")
    assert ATTACKS["pgd"] is PGD and ATTACKS["fgsm"] is FGSM and ATTACKS["bim"] is BIM
    assert ATTACKS["illc"] is ILLC and ATTACKS["fake_image"] is FakeImage
    for name, cls in ATTACKS.items():
        assert cls.name == name
        if name in metric:
            continue
        whole = {"substitute", "universal", "universal_sgd"}
        assert cls.metric is None and cls.per_batch == (name not in whole)
        assert (cls.select == "distance") == (name in minimum_norm)
        assert issubclass(cls, MinNormAttack) == (
            name in minimum_norm - {"hsja", "opt", "sign_opt", "zoo"}
        )
        assert cls.needs_eps == (name in fixed - {"fake_image"})
