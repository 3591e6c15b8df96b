"""QueryTracker: per-sample counts through owners, exact budgets, best point per owner."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from counting import Recorder
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks import Square
from advex.attacks.base import Select
from advex.attacks.blackbox.base import BlackBoxAttack, QueryTracker
from advex.attacks.losses import margin
from advex.oracle import AccessError, QueryBudgetError, as_oracle


class Linear1D(nn.Module):
    """Two classes on [0, 1]^1: class 1 iff x > 0.5 (logits (0, x − 0.5))."""

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1)[:, :1] - 0.5
        return torch.cat([torch.zeros_like(z), z], dim=1)


def tracker(
    model: nn.Module,
    x: Tensor,
    access: str = "scores",
    max_queries: int = 10,
    select: Select = "margin",
    eps: float | None = 0.5,
) -> QueryTracker:
    oracle = as_oracle(model, access)  # type: ignore[arg-type]
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return QueryTracker(
        oracle,
        x,
        y,
        None,
        ThreatModel("linf", eps),
        max_queries=max_queries,
        generator=torch.Generator().manual_seed(0),
        select=select,
    )


def test_owner_counts_and_label_answers() -> None:
    x = torch.tensor([[0.1], [0.2], [0.3]])
    run = tracker(Linear1D(), x, access="label", max_queries=6)
    points = torch.tensor([[0.6], [0.4], [0.45], [0.7], [0.2]])
    owner = torch.tensor([0, 0, 1, 1, 1])
    out = run.forward(points, owner)
    assert out.dtype == torch.long and out.tolist() == [1, 0, 0, 1, 0]
    assert run.queries.tolist() == [3, 4, 1]  # clean pass + its points
    assert run.budget_left.tolist() == [3, 2, 5]
    assert run.success_of(out, owner).tolist() == [True, False, False, True, False]


def test_best_point_per_owner_is_the_closest_success() -> None:
    x = torch.tensor([[0.1], [0.2]])
    run = tracker(Linear1D(), x, access="label", select="distance", eps=None, max_queries=20)
    points = torch.tensor([[0.9], [0.55], [0.05], [0.7], [0.3], [0.8]])
    run.forward(points, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert run.best_success.tolist() == [True, True]
    assert torch.allclose(run.best.flatten(), torch.tensor([0.55, 0.7]))
    assert torch.allclose(run.best_distance, torch.tensor([0.45, 0.5]))


def test_best_failure_per_owner_has_the_largest_margin() -> None:
    x = torch.tensor([[0.1]])
    run = tracker(Linear1D(), x, access="scores", eps=0.4, max_queries=20)
    run.forward(torch.tensor([[0.2], [0.45], [0.3]]), torch.tensor([0, 0, 0]))
    assert not bool(run.best_success[0])
    assert torch.allclose(run.best.flatten(), torch.tensor([0.45]))
    logits = Linear1D()(torch.tensor([[0.45]]))
    assert torch.allclose(run.best_score, margin(logits, torch.tensor([0]), None))


def test_points_outside_the_ball_are_not_recorded() -> None:
    run = tracker(Linear1D(), torch.tensor([[0.3]]), eps=0.1, max_queries=5)
    run.forward(torch.tensor([[0.9]]))  # adversarial, but ‖δ‖ = 0.6 > eps
    assert not bool(run.best_success[0])
    assert torch.equal(run.best, torch.tensor([[0.3]]))


def test_budget_is_exact_and_a_breach_is_refused() -> None:
    x = torch.tensor([[0.1], [0.2]])
    run = tracker(Linear1D(), x, max_queries=4)
    run.forward(torch.tensor([[0.1], [0.1], [0.2]]), torch.tensor([0, 0, 1]))
    with pytest.raises(QueryBudgetError, match="past max_queries=4"):
        run.forward(torch.tensor([[0.1], [0.1]]), torch.tensor([0, 0]))
    assert run.queries.tolist() == [3, 2]  # the refused call changed nothing
    run.forward(torch.tensor([[0.1]]), torch.tensor([0]))  # sample 0 spends its last query
    (kept,) = run.shrink(torch.tensor([10, 20]))
    assert run.rows.tolist() == [1] and kept.tolist() == [20]
    assert [r for r in run.restarts(2)] == [0, 1] and run.rows.tolist() == [1]


def test_gradients_are_refused(tiny_mlp: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8)
    run = tracker(tiny_mlp, x)
    with pytest.raises(AccessError):
        run.value_and_grad(torch.zeros_like(x), margin)
    with pytest.raises(AccessError):
        run.jacobian(x, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(AccessError):
        _ = run.clf


def test_shape_errors(tiny_mlp: nn.Module) -> None:
    run = tracker(tiny_mlp, torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="one point per active sample"):
        run.forward(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="owner: expected shape"):
        run.forward(torch.rand(2, 1, 8, 8), torch.tensor([0]))


# ----- through a whole attack ---------------------------------------------------------------
def test_square_queries_match_what_the_model_saw(tiny_mlp: nn.Module) -> None:
    model = Recorder(tiny_mlp)
    x = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = tiny_mlp(x).argmax(dim=1)
    result = Square(ThreatModel("linf", 0.05), max_queries=40, restarts=2)(model, x, y)
    assert int(result.queries.max()) <= 80
    assert model.points == int(result.queries.sum()) + int(
        result.rechecks.sum()
    )  # + the final re-check


def test_square_refuses_a_label_oracle(tiny_mlp: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(AccessError):
        Square(ThreatModel("linf", 0.1))(as_oracle(tiny_mlp, "label"), x, torch.zeros(2).long())


class OverSpender(BlackBoxAttack):
    """A buggy attack that asks for more than its budget."""

    name: ClassVar[str] = "over_spender"

    def _run(self, run: QueryTracker) -> None:  # type: ignore[override]
        for _ in range(self.max_queries):
            run.forward(run.x)


def test_an_attack_cannot_exceed_its_budget(tiny_mlp: nn.Module) -> None:
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        y = tiny_mlp(x).argmax(dim=1)
    with pytest.raises(QueryBudgetError):
        OverSpender(ThreatModel("linf", 1e-3), max_queries=5, early_stop=False)(tiny_mlp, x, y)


def test_label_attack_on_a_callable_labels_only(tiny_mlp: nn.Module) -> None:
    """A label-level attack runs on a model that only returns labels (numpy in, numpy out)."""

    class RandomLabelSearch(BlackBoxAttack):
        name: ClassVar[str] = "random_label_search"
        access = "label"

        def _run(self, run: QueryTracker) -> None:  # type: ignore[override]
            for _ in run.steps(self.max_queries - 1):
                delta = (run.rand(*run.x.shape[1:]) * 2 - 1) * self.threat.budget()
                run.forward(run.x + delta)
                run.shrink()

    def predict(batch):  # numpy in, numpy labels out
        with torch.no_grad():
            return tiny_mlp(torch.from_numpy(batch)).argmax(dim=1).numpy()

    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.from_numpy(predict(x.numpy()))
    result = RandomLabelSearch(ThreatModel("linf", 0.3), max_queries=30)(predict, x, y)
    assert bool(result.success.any()) and int(result.queries.max()) <= 30
    assert float((result.x_adv - x).abs().amax()) <= 0.3 + 1e-6
