"""CLEVER (advex.evaluate.clever): closed form on affine models, sampling, fit, contracts."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from advex.evaluate.clever import (
    DEFAULT_RADIUS,
    CleverResult,
    clever,
    reverse_weibull_location,
)
from advex.norms import lp_norm

FAST: dict[str, Any] = {"n_batches": 8, "batch_points": 16, "shapes": (1.0,)}
DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}


def _affine(seed: int = 0, k: int = 10) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, k))


def _exact(model: nn.Sequential, x: Tensor, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    """For z = Wx + b: g_j = z_c − z_j, ‖∇g_j‖_q = ‖w_c − w_j‖_q, and d_j = g_j/‖w_c − w_j‖_q
    is the exact minimal Lp distance to class j's boundary (no box). Returns (c, L (B, K), d)."""
    layer = model[1]
    assert isinstance(layer, nn.Linear)
    weight, bias = layer.weight.detach().double(), layer.bias.detach().double()
    z = x.flatten(1).double() @ weight.T + bias
    c = z.argmax(dim=1)
    diff = weight[c][:, None, :] - weight[None, :, :]  # (B, K, D): w_c − w_j
    lips = diff.norm(p=DUAL[norm], dim=2)
    margin = z.gather(1, c[:, None]) - z
    dist = torch.where(lips > 0, margin / lips, torch.full_like(margin, math.inf))
    return c, lips, dist


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_affine_model_gives_the_exact_lipschitz_constant_and_distance(
    images: Tensor, norm: str
) -> None:
    """∇g is constant, so every batch maximum is ‖w_c − w_j‖_q and the score is the exact
    minimal distance g_j(x₀)/‖w_c − w_j‖_q (the radius is set above it so no cap applies)."""
    model = _affine()
    x = images[:6]
    c, lips, dist = _exact(model, x, norm)
    radius = 10 * float(dist[torch.isfinite(dist)].max())
    res = clever(model, x, c, norm=norm, radius=radius, **FAST)
    best = dist.amin(dim=1)  # j = c: w_c − w_c = 0, d = ∞
    torch.testing.assert_close(res.scores, best, rtol=1e-4, atol=0)
    j = res.classes
    torch.testing.assert_close(
        res.lipschitz, lips.gather(1, j[:, None]).squeeze(1), rtol=1e-5, atol=0
    )
    others = ~torch.nn.functional.one_hot(c, 10).bool()
    torch.testing.assert_close(res.class_lipschitz[others], lips[others], rtol=1e-5, atol=0)
    assert bool(res.pvalues.isnan().all())  # constant maxima: no fit, L̂ = the maximum
    assert bool(torch.isnan(res.class_scores[~others]).all())


def test_targeted_affine_scores(images: Tensor) -> None:
    model = _affine(1)
    x = images[:5]
    c, _, dist = _exact(model, x, "linf")
    target = (c + 3) % 10
    res = clever(model, x, c, norm="linf", radius=5.0, target=target, **FAST)
    assert res.targeted and res.classes.tolist() == target.tolist()
    torch.testing.assert_close(
        res.scores, dist.gather(1, target[:, None]).squeeze(1), rtol=1e-4, atol=0
    )
    computed = ~torch.isnan(res.class_scores)
    assert computed.sum(dim=1).tolist() == [1] * 5  # only the target column


def test_scores_are_capped_by_the_radius_and_nonnegative(images: Tensor) -> None:
    model = _affine()
    x = images[:4]
    c, _, dist = _exact(model, x, "l2")
    small = 0.25 * float(dist.amin())
    res = clever(model, x, c, norm="l2", radius=small, **FAST)
    torch.testing.assert_close(res.scores, torch.full((4,), small, dtype=torch.float64))
    assert res.radius == small
    res = clever(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), x, c, **FAST
    )
    assert bool((res.scores >= 0).all()) and bool((res.scores <= res.radius).all())


def test_misclassified_samples_score_zero(images: Tensor) -> None:
    model = _affine()
    x = images[:4]
    c, _, _ = _exact(model, x, "l2")
    y = c.clone()
    y[1] = (c[1] + 1) % 10
    res = clever(model, x, y, **FAST)
    assert res.correct.tolist() == [True, False, True, True]
    assert res.scores[1].item() == 0.0 and math.isnan(res.lipschitz[1].item())
    assert res.classes[1].item() == -1 and bool(torch.isnan(res.class_scores[1]).all())
    assert bool((res.scores[[0, 2, 3]] > 0).all())


class _Recorder(nn.Module):
    """Passes inputs to ``inner`` and keeps a copy of every batch it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_points_lie_in_the_ball_and_the_box(norm: str) -> None:
    x = torch.full((1, 1, 8, 8), 0.02)
    x[0, 0, 0, :4] = 0.99  # near both ends of the box: clipping matters
    model = _Recorder(_affine())
    with torch.no_grad():
        y = model.inner(x).argmax(dim=1)
    model.seen.clear()
    radius = {"l2": 0.5, "linf": 0.1, "l1": 2.0}[norm]
    clever(model, x, y, norm=norm, radius=radius, chunk=50, **FAST)
    points = torch.cat(model.seen[1:])  # [0] is the clean pass
    assert points.shape[0] == FAST["n_batches"] * FAST["batch_points"]
    assert float(points.min()) >= 0.0 and float(points.max()) <= 1.0
    dist = lp_norm(points - x, norm)
    assert float(dist.max()) <= radius * (1 + 1e-5)
    assert float(dist.max()) > 0.5 * radius  # not collapsed onto x₀


def test_same_seed_same_scores_other_seed_other_points(tiny_mlp: nn.Module, images: Tensor) -> None:
    x = images[:3]
    with torch.no_grad():
        y = tiny_mlp(x).argmax(dim=1)
    kwargs: dict[str, Any] = {
        "n_batches": 10,
        "batch_points": 16,
        "shapes": (1.0,),
        "target": (y + 1) % 10,
    }
    a = clever(tiny_mlp, x, y, seed=5, **kwargs)
    b = clever(tiny_mlp, x, y, seed=5, **kwargs)
    other = clever(tiny_mlp, x, y, seed=6, **kwargs)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    torch.testing.assert_close(a.lipschitz, b.lipschitz, rtol=0, atol=0)
    assert not torch.equal(a.lipschitz, other.lipschitz)


def test_result_fields_and_json(tiny_mlp: nn.Module, images: Tensor) -> None:
    x = images[:3]
    with torch.no_grad():
        y = tiny_mlp(x).argmax(dim=1)
    res = clever(tiny_mlp, x, y, norm="linf", **FAST)
    assert isinstance(res, CleverResult) and res.estimate is True and len(res) == 3
    for name in ("scores", "lipschitz"):
        t = getattr(res, name)
        assert t.shape == (3,) and t.dtype == torch.float64 and t.device.type == "cpu"
    assert res.classes.dtype == torch.long and res.correct.dtype == torch.bool
    for name in ("class_scores", "class_lipschitz", "margins", "pvalues"):
        t = getattr(res, name)
        assert t.shape == (3, 10) and t.dtype == torch.float64
    assert res.radius == DEFAULT_RADIUS["linf"] and res.norm == "linf" and not res.targeted
    assert (res.n_batches, res.batch_points, res.seed) == (8, 16, 0)
    # the score is the minimum over the classes, at the reported class
    torch.testing.assert_close(res.scores, res.class_scores.nan_to_num(math.inf).amin(dim=1))
    assert bool((res.margins.gather(1, y[:, None]) == 0).all())
    row = res.to_dict(per_sample=True)
    assert row["estimate"] is True and row["n_scored"] == 3
    json.dumps(row, allow_nan=False)


def test_default_radius_scales_with_the_box(images: Tensor) -> None:
    from advex.model import Classifier

    model = Classifier(_affine(), bounds=(-1.0, 1.0))
    x = images[:2] * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    assert clever(model, x, y, **FAST).radius == pytest.approx(2 * DEFAULT_RADIUS["l2"])


def test_bad_inputs_raise(images: Tensor) -> None:
    model = _affine()
    x = images[:2]
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    with pytest.raises(ValueError, match="norm: CLEVER supports"):
        clever(model, x, y, norm="l0", **FAST)
    with pytest.raises(ValueError, match="norm: expected one of"):
        clever(model, x, y, norm="l3", **FAST)
    for radius in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="radius: expected a finite number > 0"):
            clever(model, x, y, radius=radius, **FAST)
    with pytest.raises(ValueError, match="n_batches: expected an integer >= 2"):
        clever(model, x, y, n_batches=1, batch_points=4)
    with pytest.raises(ValueError, match="batch_points: expected an integer >= 1"):
        clever(model, x, y, n_batches=4, batch_points=0)
    with pytest.raises(ValueError, match="chunk: expected an integer >= 1"):
        clever(model, x, y, chunk=0, **FAST)
    with pytest.raises(ValueError, match="shapes: expected initial Weibull shapes"):
        clever(model, x, y, n_batches=4, batch_points=4, shapes=())
    with pytest.raises(ValueError, match="target: equals y for samples \\[1\\]"):
        clever(model, x, y, target=torch.stack([(y[0] + 1) % 10, y[1]]), **FAST)
    with pytest.raises(ValueError, match="x: values must lie in bounds"):
        clever(model, x + 2, y, **FAST)
    with pytest.raises(ValueError, match="y: labels must be < num_classes=10"):
        clever(model, x, torch.tensor([0, 10]), **FAST)


def test_reverse_weibull_location_recovers_a_known_end_point() -> None:
    from scipy.stats import weibull_max

    rng = np.random.default_rng(0)
    sample = weibull_max.rvs(3.0, loc=2.0, scale=0.5, size=400, random_state=rng)
    loc, pvalue = reverse_weibull_location(sample)
    assert loc == pytest.approx(2.0, rel=0.02) and loc >= sample.max()
    assert 0.001 <= pvalue <= 1.0
    # degenerate (constant) maxima: the value itself, no fit
    loc, pvalue = reverse_weibull_location(np.full(20, 1.5))
    assert loc == 1.5 and math.isnan(pvalue)
    with pytest.raises(ValueError, match="maxima: expected at least 2"):
        reverse_weibull_location([1.0])
    with pytest.raises(ValueError, match="maxima: contain NaN"):
        reverse_weibull_location([1.0, math.nan])


def test_clever_is_mostly_below_deepfool_on_a_trained_mlp(digits: Any) -> None:
    """Soft check, documented: CLEVER estimates a LOWER bound on the minimal distortion, so it
    should not exceed the distance of an adversarial example DeepFool actually finds — on
    most samples (it is an estimate: nothing forbids a few exceptions). Measured on these 8
    samples with N_b = 20, N_s = 32: 8/8 below (L2), scores ≈ 0.8 × DeepFool's distance."""
    from advex.attacks import DeepFool
    from advex.threat import ThreatModel

    x, y = digits.x[:8], digits.y[:8]
    res = clever(digits.model, x, y, n_batches=20, batch_points=32, shapes=(1.0,))
    found = DeepFool(ThreatModel("l2"))(digits.model, x, y)
    assert bool(found.success.all())
    below = (res.scores <= found.distance.double() * (1 + 1e-6)).float().mean().item()
    assert below >= 0.75, f"CLEVER above DeepFool's distance on {1 - below:.0%} of samples"
    assert bool((res.scores > 0).all())
