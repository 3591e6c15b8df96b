"""Randomized smoothing (Cohen et al. 2019): closed-form checks on a linear classifier.

For f(x) = [w·x > b] the smoothed class probability is P(class 1) = Φ((w·x − b)/(σ‖w‖)), so
p_A = Φ(|m|/σ) with m = (w·x − b)/‖w‖ the signed L2 distance to the decision boundary, and the
exact smoothed radius σ·Φ⁻¹(p_A) = |m|: the certificate can be compared with the truth.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from advex import Classifier
from advex.certify.smoothing import ABSTAIN, Smoothed, SmoothingCertificate, noise_augment

W = torch.tensor([1.0, 2.0, 2.0])  # ‖w‖ = 3
B = 1.5
UNIT = W / 3
ON_BOUNDARY = B * W / 9  # w·x0 = b
TANGENT = torch.tensor([0.0, 1.0, -1.0]) / math.sqrt(2)  # w·t = 0
WIDE = (-5.0, 5.0)


class _Linear(nn.Module):
    """Logits (−s, s)/2 with s = w·x − b: class 1 iff w·x > b."""

    def __init__(self) -> None:
        super().__init__()
        self.w: Tensor
        self.register_buffer("w", W.clone())
        self.rows: list[int] = []
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows.append(x.shape[0])
        self.inputs.append(x.detach().clone())
        s = x.flatten(1) @ self.w - B
        return torch.stack([-s / 2, s / 2], dim=1)


def _at(margins: list[float] | Tensor, shift: float = 0.3) -> Tensor:
    """Points at signed L2 distances ``margins`` from the boundary (off-axis by ``shift``)."""
    m = torch.as_tensor(margins, dtype=torch.float32)
    return ON_BOUNDARY + shift * TANGENT + m[:, None] * UNIT


def _true_p(margins: Tensor, sigma: float) -> Tensor:
    return torch.from_numpy(stats.norm.cdf(margins.abs().double().numpy() / sigma))


def _smoothed(sigma: float = 0.5, **kw: object) -> Smoothed:
    return Smoothed(_Linear(), sigma, bounds=WIDE, **kw)  # type: ignore[arg-type]


# ----- closed form ----------------------------------------------------------------------------
def test_p_lower_covers_the_true_probability_at_the_stated_level() -> None:
    """500 independent certificates of one point at α = 0.1: p̲_A > p_A at most ~10% of times."""
    sigma, m, trials, alpha = 0.5, 0.5, 500, 0.1
    x = _at([m] * trials)
    cert = _smoothed(sigma, batch_size=50_000).certify(x, n0=50, n=500, alpha=alpha, seed=0)
    p = float(_true_p(torch.tensor([m]), sigma))
    assert (cert.prediction == 1).all()
    misses = int((cert.p_lower > p).sum())
    assert misses <= alpha * trials + 3 * math.sqrt(trials * alpha * (1 - alpha))
    assert misses > 0, "the bound never misses: far too conservative"
    assert float(cert.p_lower.mean()) > p - 0.04  # and not loose


def test_radius_below_and_close_to_the_distance_to_the_boundary() -> None:
    margins = torch.tensor([0.2, -0.4, 0.6, -1.0])
    cert = _smoothed(0.5, batch_size=50_000).certify(_at(margins), n=100_000, seed=1)
    assert cert.prediction.tolist() == [1, 0, 1, 0]
    assert (cert.radius <= margins.abs().double()).all()
    assert (cert.radius >= margins.abs().double() - 0.03).all()
    assert (cert.p_lower <= _true_p(margins, 0.5)).all()


def test_p_lower_is_the_clopper_pearson_bound() -> None:
    """P(Binomial(n, p̲) ≥ n_A) = α: p̲ is the smallest p the one-sided test does not reject."""
    cert = _smoothed(0.5).certify(_at([0.1, 0.5, 2.0]), n0=10, n=400, alpha=0.01, seed=2)
    n_a = cert.counts.gather(1, cert.selected[:, None])[:, 0].double()
    tail = stats.binom.sf(n_a.numpy() - 1, 400, cert.p_lower.numpy())
    assert tail == pytest.approx(0.01, rel=1e-6)
    assert (cert.prediction == torch.where(cert.p_lower >= 0.5, cert.selected, ABSTAIN)).all()
    expected = torch.from_numpy(0.5 * stats.norm.ppf(cert.p_lower.numpy())).clamp_min(0)
    assert cert.radius.numpy() == pytest.approx(expected.numpy(), rel=1e-12)


def test_all_votes_for_one_class_give_the_largest_radius() -> None:
    n, alpha, sigma = 1000, 0.001, 0.25
    cert = _smoothed(sigma).certify(_at([3.0]), n=n, alpha=alpha)
    assert cert.counts.tolist() == [[0, n]]
    assert float(cert.p_lower[0]) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert float(cert.radius[0]) == pytest.approx(sigma * stats.norm.ppf(alpha ** (1 / n)))


def test_abstains_near_the_boundary_and_radius_is_zero_there() -> None:
    margins = torch.tensor([0.0] * 10 + [0.005] * 10)
    smoothed = _smoothed(0.5)
    cert = smoothed.certify(_at(margins), n=1000, seed=3)
    assert (cert.prediction == ABSTAIN).all()
    assert (cert.radius == 0).all()
    assert cert.abstain_rate == 1.0
    assert (smoothed.predict(_at(margins), n=1000, seed=3) == ABSTAIN).sum() >= 19


def test_predict_is_cohens_binomial_test() -> None:
    """PREDICT returns the top class iff scipy's two-sided binomtest(n_A, n_A + n_B) ≤ α."""
    smoothed = _smoothed(0.5)
    x = _at([0.0, 0.01, 0.02, 0.03, 0.05, 0.1, -0.3, 1.0])
    for seed in range(3):
        votes = smoothed.counts(x, 1000, seed=seed)
        pred = smoothed.predict(x, n=1000, alpha=0.05, seed=seed)
        for row, label in zip(votes.tolist(), pred.tolist(), strict=True):
            top = max(range(2), key=lambda c: row[c])
            pvalue = stats.binomtest(row[top], sum(row), 0.5).pvalue
            assert label == (top if pvalue <= 0.05 else ABSTAIN), (row, pvalue)


def test_predict_agrees_with_the_side_of_the_boundary() -> None:
    margins = torch.tensor([0.3, -0.3, 1.0, -2.0])
    pred = _smoothed(0.5).predict(_at(margins), n=2000)
    assert pred.tolist() == [1, 0, 1, 0]


# ----- the certificate holds ------------------------------------------------------------------
def _ball_points(x: Tensor, radius: Tensor, count: int, seed: int) -> Tensor:
    """``count`` points per row of x at uniform random directions and distances < radius."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape[0], count, x.shape[1], generator=g)
    d = d / d.norm(dim=2, keepdim=True)
    r = radius.float()[:, None, None] * torch.rand(x.shape[0], count, 1, generator=g)
    return (x[:, None, :] + r * d).reshape(-1, x.shape[1])


def test_no_point_within_the_radius_changes_the_linear_smoothed_prediction() -> None:
    margins = torch.tensor([0.4, -0.7, 1.2])
    smoothed = _smoothed(0.5, batch_size=50_000)
    cert = smoothed.certify(_at(margins), n=20_000, seed=4)
    assert (cert.radius > 0).all()
    toward = -torch.sign(margins)[:, None] * UNIT  # the worst-case direction
    worst = _at(margins) + 0.9 * cert.radius.float()[:, None] * toward
    assert smoothed.predict(worst, n=100_000, seed=5).tolist() == cert.prediction.tolist()
    inside = _ball_points(_at(margins), cert.radius, 30, seed=6)
    pred = smoothed.predict(inside, n=20_000, seed=7).reshape(3, 30)
    others = (pred != cert.prediction[:, None]) & (pred != ABSTAIN)
    assert not others.any()
    assert (pred == ABSTAIN).sum() <= 3


def test_no_point_within_the_radius_changes_a_nonlinear_smoothed_prediction() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    smoothed = Smoothed(net, 0.25, batch_size=50_000, bounds=WIDE)
    g = torch.Generator().manual_seed(8)
    x = 2 * torch.rand(10, 2, generator=g) - 1
    cert = smoothed.certify(x, n=20_000, seed=9)
    kept = cert.radius > 0
    assert int(kept.sum()) >= 5
    inside = _ball_points(x[kept], cert.radius[kept], 20, seed=10)
    pred = smoothed.predict(inside, n=20_000, seed=11).reshape(-1, 20)
    label = cert.prediction[kept][:, None]
    assert not ((pred != label) & (pred != ABSTAIN)).any()


# ----- randomness -----------------------------------------------------------------------------
def test_the_same_seed_reproduces_bit_for_bit_and_other_seeds_differ() -> None:
    smoothed = _smoothed(0.5)
    x = _at([0.1, -0.2, 0.5])
    a, b = (smoothed.certify(x, n=500, seed=12) for _ in range(2))
    for field in ("prediction", "radius", "p_lower", "counts"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    c = smoothed.certify(x, n=500, seed=13)
    assert not torch.equal(a.counts, c.counts)
    assert torch.equal(smoothed.predict(x, seed=14), smoothed.predict(x, seed=14))
    assert not torch.equal(smoothed.counts(x, 500, seed=1), smoothed.counts(x, 500, seed=2))


def test_samples_in_a_batch_get_independent_noise() -> None:
    votes = _smoothed(0.5).counts(_at([0.2] * 4), 1000, seed=15)
    assert len({tuple(row) for row in votes.tolist()}) == 4


def test_selection_and_estimation_use_different_draws() -> None:
    """Every one of the n0 + n noisy copies is a fresh draw: no noise vector is reused."""
    model = _Linear()
    smoothed = Smoothed(model, 0.5, bounds=WIDE)
    smoothed.certify(_at([0.05, 0.05]), n0=300, n=500, seed=16)
    rows = torch.cat(model.inputs)
    assert rows.shape == (2 * 800, 3)
    assert torch.unique(rows, dim=0).shape[0] == 2 * 800
    assert smoothed.classifier.forward_count == 2 * 800


def test_forward_passes_hold_at_most_batch_size_rows() -> None:
    model = _Linear()
    smoothed = Smoothed(model, 0.5, batch_size=7, bounds=WIDE)
    cert = smoothed.certify(_at([0.1, 0.2, 0.3]), n0=5, n=50)
    assert max(model.rows) == 7
    assert sum(model.rows) == 3 * (5 + 50)
    assert cert.counts.sum(dim=1).tolist() == [50, 50, 50]


def test_noisy_inputs_are_not_clipped_to_the_box() -> None:
    seen: list[Tensor] = []

    class Spy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.clone())
            return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], dim=1)

    Smoothed(Spy(), 0.5).predict(torch.zeros(2, 1, 4, 4), n=50)
    noisy = torch.cat(seen)
    assert float(noisy.min()) < -0.5 and float(noisy.max()) > 0.5
    assert float(noisy.std()) == pytest.approx(0.5, rel=0.05)


# ----- models, fields, results ----------------------------------------------------------------
def test_module_or_classifier_eval_mode_restored(tiny_cnn: nn.Module, images: Tensor) -> None:
    tiny_cnn.train()  # Dropout would make the votes depend on torch's global generator
    y = torch.arange(16) % 10
    a = Smoothed(tiny_cnn, 0.1, batch_size=64).certify(images, y, n0=10, n=100)
    torch.manual_seed(123)
    b = Smoothed(Classifier(tiny_cnn), 0.1, batch_size=64).certify(images, y, n0=10, n=100)
    assert tiny_cnn.training and all(m.training for m in tiny_cnn.modules())
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)


def test_certificate_fields(tiny_mlp: nn.Module, images: Tensor) -> None:
    y = torch.arange(16) % 10
    cert = Smoothed(tiny_mlp, 0.05).certify(images, y, n0=20, n=200)
    assert isinstance(cert, SmoothingCertificate) and len(cert) == 16
    assert cert.prediction.shape == (16,) and cert.prediction.dtype == torch.long
    assert cert.radius.shape == (16,) and cert.radius.dtype == torch.float64
    assert cert.p_lower.shape == (16,) and cert.p_lower.dtype == torch.float64
    assert cert.counts.shape == (16, 10) and cert.counts.dtype == torch.long
    assert cert.selected.shape == (16,) and cert.selected.dtype == torch.long
    assert torch.equal(cert.prediction[~cert.abstained], cert.selected[~cert.abstained])
    assert cert.correct is not None and cert.correct.dtype == torch.bool
    assert cert.y is not None and torch.equal(cert.y, y)
    assert torch.equal(cert.correct, cert.prediction == y)
    assert (cert.counts.sum(dim=1) == 200).all()
    assert ((cert.p_lower >= 0) & (cert.p_lower < 1)).all()
    assert (cert.radius >= 0).all() and (cert.radius[cert.abstained] == 0).all()
    assert (cert.p_lower[~cert.abstained] >= 0.5).all()
    assert cert.seconds > 0 and (cert.sigma, cert.n0, cert.n, cert.alpha) == (0.05, 20, 200, 0.001)
    radii = [0.0, 0.01, 0.05, 0.1, 1.0]
    acc = [cert.certified_accuracy(r) for r in radii]
    assert acc == sorted(acc, reverse=True)
    assert acc[0] == float(cert.correct.double().mean())


def test_certified_accuracy_counts_correct_predictions_with_large_radii() -> None:
    cert = _smoothed(0.5).certify(_at([0.5, -0.5, 0.0, 1.0]), torch.tensor([1, 1, 0, 1]), n=2000)
    assert cert.prediction.tolist() == [1, 0, ABSTAIN, 1]
    assert cert.correct is not None and cert.correct.tolist() == [True, False, False, True]
    assert cert.certified_accuracy(0.0) == 0.5
    assert cert.certified_accuracy(float(cert.radius[0]) + 1e-9) == 0.25
    assert cert.certified_accuracy(10.0) == 0.0
    assert cert.abstain_rate == 0.25


# ----- errors name the argument ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma": True}, "sigma"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], match: str) -> None:
    settings: dict[str, object] = {"sigma": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        Smoothed(_Linear(), **settings)  # type: ignore[arg-type]


def test_model_type_error() -> None:
    with pytest.raises(TypeError, match="model"):
        Smoothed(lambda x: x, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n"),
        ({"n": 10.0}, "n"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
    ],
)
def test_certify_setting_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _smoothed().certify(_at([0.1]), **kwargs)  # type: ignore[arg-type]


def test_predict_setting_errors() -> None:
    smoothed = _smoothed()
    with pytest.raises(ValueError, match="n"):
        smoothed.predict(_at([0.1]), n=0)
    with pytest.raises(ValueError, match="alpha"):
        smoothed.predict(_at([0.1]), alpha=1.5)
    with pytest.raises(TypeError, match="seed"):
        smoothed.predict(_at([0.1]), seed=0.5)  # type: ignore[arg-type]


def test_input_errors() -> None:
    unit = Smoothed(_Linear(), 0.5)  # bounds (0, 1)
    with pytest.raises(ValueError, match="x: values must lie in bounds"):
        unit.predict(torch.full((1, 3), 1.5))
    with pytest.raises(ValueError, match="x: contains NaN"):
        unit.certify(torch.tensor([[0.1, float("nan"), 0.2]]))
    with pytest.raises(TypeError, match="x"):
        unit.predict([[0.1, 0.2, 0.3]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x"):
        unit.predict(torch.zeros(1, 3, dtype=torch.long))
    x = torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="y: expected shape"):
        unit.certify(x, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="y: has 3 labels"):
        unit.certify(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y: labels must be < num_classes=2"):
        unit.certify(x, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="y: labels must be >= 0"):
        unit.certify(x, torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="y"):
        unit.certify(x, torch.tensor([0.0, 1.0]))


def test_certified_accuracy_errors() -> None:
    cert = _smoothed().certify(_at([0.5]), n=100)
    with pytest.raises(ValueError, match="y"):
        cert.certified_accuracy(0.0)
    labelled = _smoothed().certify(_at([0.5]), torch.tensor([1]), n=100)
    with pytest.raises(ValueError, match="radius"):
        labelled.certified_accuracy(-0.1)


# ----- noise augmentation ---------------------------------------------------------------------
def test_noise_augment() -> None:
    x = torch.full((64, 1, 8, 8), 0.5)
    a = noise_augment(x, 0.25, torch.Generator().manual_seed(0))
    b = noise_augment(x, 0.25, torch.Generator().manual_seed(0))
    c = noise_augment(x, 0.25, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    delta = a - x
    assert float(delta.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(delta.std()) == pytest.approx(0.25, rel=0.03)
    assert float(a.min()) < 0 and float(a.max()) > 1  # not clipped
    assert noise_augment(x, 0.1).shape == x.shape  # global generator
    with pytest.raises(ValueError, match="sigma"):
        noise_augment(x, 0.0)
    with pytest.raises(TypeError, match="x"):
        noise_augment(torch.zeros(2, dtype=torch.long), 0.1)


# ----- the bundled CNN ------------------------------------------------------------------------
def test_mnist_cnn_certified_accuracy() -> None:
    """σ = 0.25, 20 test images, n = 1000 (about 3 s on one core). The CNN was not trained with
    noise, so these numbers are a smoke check, not a benchmark."""
    from advex import data, zoo

    x, y = data.load("mnist5k", split="test")
    sigma, n, alpha = 0.25, 1000, 0.001
    cert = Smoothed(zoo.load("mnist_cnn"), sigma).certify(x[:20], y[:20], n=n, alpha=alpha)
    at0, at05 = cert.certified_accuracy(0.0), cert.certified_accuracy(0.5)
    print(
        f"mnist_cnn sigma={sigma} n={n}: certified accuracy {at0:.2f} (r=0), {at05:.2f} (r=0.5), "
        f"abstain {cert.abstain_rate:.2f}, {cert.seconds:.1f} s"
    )
    assert (cert.radius >= 0).all() and (cert.radius[cert.abstained] == 0).all()
    assert (cert.radius <= sigma * stats.norm.ppf(alpha ** (1 / n)) + 1e-12).all()
    assert at0 >= at05
    assert at0 >= 0.5
