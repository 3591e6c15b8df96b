"""LocalSearch (greedy local search, LocSearchAdv): CYCLIC, the probe, the neighbourhood, the
greedy choice, the query budget, the L0 cap, properties, a model where one pixel decides, and
strength on the bundled MNIST CNN."""

from __future__ import annotations

import pytest
import torch
from counting import Recorder
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks.base import Attack
from advex.attacks.blackbox.local_search import LocalSearch, cyclic
from advex.model import Classifier
from advex.oracle import AccessError, as_oracle

KEY = (3, 5)  # the pixel that decides on the one-pixel models below


class OnePixelDecides(nn.Module):
    """Two classes on 1×8×8 images: z_1 = 10·x[KEY] + Σ w_ij x_ij − 4, z_0 = 0, with small
    weights w ≥ 0 (0.02 / (1 + distance to KEY)) everywhere else. On images of 0.2 the model
    says 0; raising KEY to 1 says 1; no other single pixel (nor 20 of them) comes close."""

    def __init__(self) -> None:
        super().__init__()
        r = torch.arange(8.0)[:, None] - KEY[0]
        c = torch.arange(8.0)[None, :] - KEY[1]
        w = 0.02 / (1 + (r.square() + c.square()).sqrt())
        w[KEY] = 10.0
        self.register_buffer("w", w)

    def forward(self, x: Tensor) -> Tensor:
        z1 = (x[:, 0] * self.w).sum(dim=(1, 2)) - 4.0
        return torch.stack([torch.zeros_like(z1), z1], dim=1)


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def changed_pixels(x_adv: Tensor, x: Tensor) -> Tensor:
    """(B, H, W) bool: pixels where any channel differs."""
    return (x_adv != x).any(dim=1)


@pytest.fixture
def flat_images() -> Tensor:
    return torch.full((4, 1, 8, 8), 0.2)


# ----- the pieces ---------------------------------------------------------------------------
def test_cyclic_wraps_into_the_box() -> None:
    u = torch.tensor([-0.5, -0.4, -0.2, 0.0, 0.2, 0.4, 0.5])
    want = torch.tensor([0.25, 0.4, -0.3, 0.0, 0.3, -0.4, -0.25])
    torch.testing.assert_close(cyclic(u, 1.5), want)
    many = torch.linspace(-0.5, 0.5, 1001)
    for r in (0.0, 0.7, 1.0, 1.5, 2.0):
        out = cyclic(many, r)
        assert float(out.min()) >= -0.5 and float(out.max()) <= 0.5
    torch.testing.assert_close(cyclic(many, 1.0), many)


def test_probe_and_perturb_in_box_units() -> None:
    attack = LocalSearch(ThreatModel("l0", bounds=(-1.0, 3.0)), p=1.0)
    v = torch.tensor([-1.0, 0.5, 1.0, 2.5, 3.0])
    # the probe goes to the farther end of [−1, 3] (the middle goes down)
    torch.testing.assert_close(attack._probe(v), torch.tensor([3.0, 3.0, -1.0, -1.0, -1.0]))
    half = LocalSearch(ThreatModel("l0", bounds=(-1.0, 3.0)), p=0.25)  # steps of 1
    torch.testing.assert_close(half._probe(v), torch.tensor([0.0, 1.5, 0.0, 1.5, 2.0]))
    # CYC in centred units u = (v − 1)/4: −½ → ¼ → v = 2; ½ → −¼ → v = 0
    torch.testing.assert_close(
        attack._perturb(torch.tensor([-1.0, 3.0, 1.0])), torch.tensor([2.0, 0.0, 1.0])
    )


def test_neighbourhood_is_the_union_of_squares() -> None:
    attack = LocalSearch(ThreatModel("l0"), d=1)
    chosen = torch.zeros(1, 6, 6, dtype=torch.bool)
    chosen[0, 0, 0] = chosen[0, 4, 3] = True
    grown = attack._neighbourhood(chosen)[0]
    want = torch.zeros(6, 6, dtype=torch.bool)
    want[0:2, 0:2] = True
    want[3:6, 2:5] = True
    assert torch.equal(grown, want)
    assert torch.equal(LocalSearch(ThreatModel("l0"), d=0)._neighbourhood(chosen), chosen)


def test_choose_takes_the_t_lowest_within_the_cap() -> None:
    attack = LocalSearch(ThreatModel("l0"), t=2)
    inf = float("inf")
    scores = torch.tensor([[0.5, 0.1, inf, 0.3, 0.2, 0.9]])
    changed = torch.tensor([[False, False, False, False, True, False]])
    got = attack._choose(scores, changed, changed.sum(dim=1), None)
    assert got[0].nonzero().flatten().tolist() == [1, 4]
    # cap 2 with one pixel changed: one new pixel (1), then the changed one (4)
    got = attack._choose(scores, changed, changed.sum(dim=1), 2)
    assert got[0].nonzero().flatten().tolist() == [1, 4]
    # cap 1, already reached: only the changed pixel
    got = attack._choose(scores, changed, changed.sum(dim=1), 1)
    assert got[0].nonzero().flatten().tolist() == [4]


# ----- the greedy step, read off the queries -------------------------------------------------
def test_first_round_perturbs_the_t_most_important_probed_pixels(tiny_mlp, images) -> None:
    """Round 1 probes round(0.1·64) = 6 random pixels of x, then the check query differs from
    x exactly on the t = 3 probes with the lowest true-class probability, each by CYC."""
    rec = Recorder(tiny_mlp)
    x, y = images[:6], labels(tiny_mlp, images[:6])
    attack = LocalSearch(ThreatModel("l0"), t=3, rounds=1, early_stop=False)
    attack(rec, x, y)
    probes, check = rec.inputs[1], rec.inputs[2]
    assert probes.shape[0] == 6 * 6 and check.shape[0] == 6
    probs = torch.softmax(tiny_mlp(probes).detach(), dim=1)
    owner = torch.arange(6).repeat_interleave(6)
    p_true = probs[torch.arange(36), y[owner]].view(6, 6)
    diff = (probes - x[owner]).flatten(1) != 0
    assert bool((diff.sum(dim=1) == 1).all()), "each probe changes one pixel"
    where = diff.float().argmax(dim=1).view(6, 6)
    for b in range(6):
        best = where[b, p_true[b].argsort()[:3]]
        changed = torch.nonzero((check[b] != x[b]).flatten()).flatten()
        assert sorted(changed.tolist()) == sorted(best.tolist())
        want = attack._perturb(x[b].flatten()[changed])
        torch.testing.assert_close(check[b].flatten()[changed], want)
        # the probe moved the pixel to the farther end of [0, 1]
        moved = probes[b * 6 : (b + 1) * 6].flatten(1)[torch.arange(6), where[b]]
        far = torch.where(x[b].flatten()[where[b]] < 0.5, 1.0, 0.0)
        torch.testing.assert_close(moved, far)


def test_next_candidates_are_the_neighbourhood_of_the_chosen(tiny_mlp, images) -> None:
    rec = Recorder(tiny_mlp)
    x, y = images[:1], labels(tiny_mlp, images[:1])
    LocalSearch(ThreatModel("l0"), t=2, d=1, rounds=2, early_stop=False)(rec, x, y)
    check1, probes2 = rec.inputs[2], rec.inputs[3]
    chosen = (check1 != x).any(dim=1)
    neighbours = LocalSearch(ThreatModel("l0"), d=1)._neighbourhood(chosen)
    probed = ((probes2 - check1) != 0).any(dim=1)  # (n_probes, 8, 8), one pixel each
    assert probed.shape[0] == int(neighbours.sum())
    assert torch.equal(probed.any(dim=0), neighbours[0])


# ----- queries --------------------------------------------------------------------------------
@pytest.mark.parametrize("max_queries", [20, 90, 400])
def test_queries_match_the_model_and_never_exceed_the_budget(max_queries, tiny_mlp, images):
    rec = Recorder(tiny_mlp)
    clf = Classifier(rec, num_classes=10)
    y = labels(tiny_mlp, images)
    y[0] = (y[0] + 1) % 10  # misclassified: only the clean pass
    res = LocalSearch(ThreatModel("l0"), max_queries=max_queries, t=1, d=1)(clf, images, y)
    assert rec.rows == int(res.queries.sum()) + int(res.rechecks.sum())  # + the final re-check
    assert bool((res.queries <= max_queries).all())
    assert int(res.queries[0]) == 1
    unbroken = ~res.success
    # an unbroken sample spends its budget (at most one query is left when a round ends on it)
    assert bool((res.queries[unbroken] >= max_queries - 1).all())
    assert bool((res.gradients == 0).all())


def test_rounds_bound_the_work(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    res = LocalSearch(ThreatModel("l0"), rounds=3, early_stop=False)(tiny_mlp, images, y)
    assert bool((res.steps == 3).all())
    assert bool((res.queries < 10_000).all())


def test_top_k_runs_on_until_the_true_class_leaves_the_top_k(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    one = LocalSearch(ThreatModel("l0"), max_queries=600)(tiny_mlp, images, y)
    three = LocalSearch(ThreatModel("l0"), max_queries=600, k=3, early_stop=False)(
        tiny_mlp, images, y
    )
    assert bool(one.success.all()) and bool(three.success.all())
    assert bool((three.queries >= one.queries).all())
    assert bool((three.queries < 600).any()), "no sample left the top 3"
    assert float(three.distance.float().mean()) > float(one.distance.float().mean())


# ----- L0, box, grid, determinism --------------------------------------------------------------
@pytest.mark.parametrize("eps", [1.0, 3.0, 6.0])
def test_every_query_changes_at_most_the_cap(eps, tiny_mlp, images) -> None:
    rec = Recorder(tiny_mlp)
    y = labels(tiny_mlp, images)
    res = LocalSearch(ThreatModel("l0", eps), max_queries=150)(rec, images, y)
    owner_x = images  # every call holds points of several samples: check against all
    for batch in rec.inputs[1:-1]:
        diff = (batch[:, None] != owner_x[None]).flatten(2).sum(dim=2)  # (n, B)
        assert int(diff.min(dim=1).values.max()) <= eps
    assert bool((res.distance <= eps).all())
    assert bool(res.success.any())


def test_l0_counts_elements_so_colour_pixels_cost_c() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 10))
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = labels(model, x)
    res = LocalSearch(ThreatModel("l0", 6.0), max_queries=300)(model, x, y)
    assert bool((changed_pixels(res.x_adv, x).flatten(1).sum(dim=1) <= 2).all())
    assert bool((res.distance <= 6).all())
    with pytest.raises(ValueError, match=r"threat\.eps"):
        LocalSearch(ThreatModel("l0", 2.0))(model, x, y)


@pytest.mark.parametrize("targeted", [False, True])
def test_properties_box_grid_success_and_determinism(targeted, tiny_cnn, images) -> None:
    threat = ThreatModel("l0", 8.0, levels=256, targeted=targeted)
    with torch.no_grad():
        top2 = tiny_cnn.eval()(images).topk(2, dim=1).indices
    y = top2[:, 0]
    target = top2[:, 1] if targeted else None  # the runner-up: reachable with a few pixels
    a = LocalSearch(threat, max_queries=300, seed=1)(tiny_cnn, images, y, target)
    b = LocalSearch(threat, max_queries=300, seed=1)(tiny_cnn, images, y, target)
    c = LocalSearch(threat, max_queries=300, seed=2)(tiny_cnn, images, y, target)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)
    assert float(a.x_adv.min()) >= 0 and float(a.x_adv.max()) <= 1
    k = a.x_adv * 255
    assert float((k - k.round()).abs().max()) < 1e-4
    assert bool(((a.x_adv != images).flatten(1).sum(dim=1) <= 8).all())
    with torch.no_grad():
        pred = tiny_cnn.eval()(a.x_adv).argmax(dim=1)
    assert torch.equal(pred, a.pred)
    assert torch.equal(a.success, pred == target if targeted else pred != y)
    assert bool(a.success.any())


def test_result_fields(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    res = LocalSearch(ThreatModel("l0"), max_queries=100)(tiny_mlp, images, y)
    assert res.x_adv.shape == images.shape and res.x_adv.dtype == images.dtype
    for field in (res.success, res.pred, res.queries, res.distance, res.steps):
        assert field.shape == (len(images),)
    assert res.success.dtype == torch.bool and res.queries.dtype == torch.long
    assert res.attack == "local_search"


# ----- access ------------------------------------------------------------------------------------
def test_runs_on_a_scores_oracle_and_refuses_a_label_oracle(tiny_mlp, images) -> None:
    y = labels(tiny_mlp, images)
    attack = LocalSearch(ThreatModel("l0"), max_queries=100)
    oracle = as_oracle(tiny_mlp, "scores")
    res = attack(oracle, images, y)
    direct = attack(tiny_mlp, images, y)
    assert torch.equal(res.x_adv, direct.x_adv)
    assert oracle.queries == int(res.queries.sum()) + int(res.rechecks.sum())
    with pytest.raises(AccessError):
        attack(as_oracle(tiny_mlp, "label"), images, y)


# ----- a model where one pixel decides --------------------------------------------------------
def test_finds_the_one_pixel_that_decides(flat_images) -> None:
    """Probing every pixel in round 1 (init_fraction=1) finds the pixel at once: its probe
    (0.2 → 1) is the success, one pixel changed, after 1 + 64 queries."""
    model = OnePixelDecides()
    x = flat_images
    assert bool((labels(model, x) == 0).all())
    res = LocalSearch(ThreatModel("l0", 1.0), init_fraction=1.0)(model, x, torch.zeros(4).long())
    assert bool(res.success.all())
    changed = changed_pixels(res.x_adv, x)
    assert bool((changed.flatten(1).sum(dim=1) == 1).all()) and bool(
        changed[:, KEY[0], KEY[1]].all()
    )
    assert bool((res.queries == 65).all())


def test_the_neighbourhood_leads_to_the_pixel_that_decides(flat_images) -> None:
    """From 6 random pixels, the greedy choice walks toward KEY (the small weights grow near
    it), the neighbourhood reaches it, and its probe succeeds."""
    model = OnePixelDecides()
    x = flat_images
    y = torch.zeros(4).long()
    res = LocalSearch(ThreatModel("l0"), t=1, d=2, max_queries=400)(model, x, y)
    assert bool(res.success.all())
    assert bool(changed_pixels(res.x_adv, x)[:, KEY[0], KEY[1]].all())
    assert bool((res.distance <= 5).all())


# ----- strength -------------------------------------------------------------------------------
def test_breaks_most_of_the_mnist_cnn() -> None:
    """20 test images, 2000 queries, no pixel budget: measured 20/20 broken, median 10 changed
    pixels (of 784), median 443 queries; with eps = 10 pixels, 28/50 (on 50 images)."""
    from advex import data, zoo

    model = zoo.load("mnist_cnn")
    x, y = data.load("mnist5k", split="test")
    x, y = x[:20], y[:20]
    res = LocalSearch(ThreatModel("l0"), max_queries=2000)(model, x, y)
    assert bool(res.clean_correct.all())
    assert float(res.success_rate) >= 0.9
    assert float(res.distance.median()) <= 20
    assert float(res.queries.float().median()) <= 1000


# ----- bad arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_queries": 1}, "max_queries"),
        ({"max_queries": 10.0}, "max_queries"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": True}, "rounds"),
        ({"r": -0.1}, "r"),
        ({"r": 2.5}, "r"),
        ({"r": float("nan")}, "r"),
        ({"p": 0.0}, "p"),
        ({"p": 1.5}, "p"),
        ({"d": -1}, "d"),
        ({"d": 1.0}, "d"),
        ({"t": 0}, "t"),
        ({"init_fraction": 0.0}, "init_fraction"),
        ({"init_fraction": 1.2}, "init_fraction"),
        ({"k": 0}, "k"),
        ({"k": 2}, "k"),  # with early_stop=True
        ({"seed": 1.5}, "seed"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, name) -> None:
    with pytest.raises(ValueError, match=rf"^{name}:"):
        LocalSearch(ThreatModel("l0"), **kwargs)


def test_bad_threats_and_inputs_raise(tiny_mlp) -> None:
    with pytest.raises(ValueError, match=r"threat\.norm"):
        LocalSearch(ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match=r"^k:"):
        LocalSearch(ThreatModel("l0", targeted=True), k=2, early_stop=False)
    x = torch.rand(2, 64)
    with pytest.raises(ValueError, match="x: local_search needs images"):
        LocalSearch(ThreatModel("l0"))(tiny_mlp, x, labels(tiny_mlp, x))
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^k:"):
        LocalSearch(ThreatModel("l0"), k=10, early_stop=False)(
            Classifier(tiny_mlp, num_classes=10), x, labels(tiny_mlp, x)
        )


def test_params_and_registry_attributes() -> None:
    attack = LocalSearch(ThreatModel("l0", 10.0), max_queries=500, t=3)
    assert isinstance(attack, Attack) and attack.name == "local_search"
    assert attack.access == "scores" and not attack.needs_eps and attack.norms == ("l0",)
    assert attack.params() == {
        "seed": 0,
        "batch_size": None,
        "early_stop": True,
        "max_queries": 500,
        "rounds": 150,
        "r": 1.5,
        "p": 1.0,
        "d": 5,
        "t": 3,
        "init_fraction": 0.1,
        "k": 1,
    }
