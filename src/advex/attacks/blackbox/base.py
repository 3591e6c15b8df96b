"""What every black-box attack shares: an oracle instead of a model, and a query budget.

``BlackBoxAttack`` wraps the model it is given into an ``advex.oracle.Oracle`` at the attack's
``access`` level ("scores" or "label") and runs the attack inside a ``QueryTracker``:

* ``run.forward(points, owner)`` is the attack's only window on the model. It returns what the
  level gives — scores (n, K) or labels (n,) — and nothing else; gradient methods raise
  ``AccessError``. ``owner`` (n,) names, for each point, the active sample it is a query of,
  so one call may hold many points per sample (finite differences, gradient estimates,
  population members) or points of only some samples (per-sample binary searches).
* every point is counted against its sample (``AttackResult.queries``, the clean pass
  included), and the per-sample budget ``max_queries`` is honoured exactly: a call that would
  exceed it raises ``QueryBudgetError`` (an attack bug, never silent), and a sample whose
  budget is spent is retired (the next ``shrink`` drops it; restarts do not revive it).
  ``run.budget_left`` says what each active sample has left.
* each point is recorded like a white-box evaluation (box, grid, ball, best-so-far per
  sample: success first, then the distance or margin) — for a label oracle the margin is that
  of the one-hot label vector, so among failures the first point is kept;
* the final re-check asks the oracle for labels once more; that pass is not an attack query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Attack, Select, Tracker
from advex.attacks.losses import Loss, margin
from advex.norms import lp_norm
from advex.oracle import Access, AccessError, Oracle, QueryBudgetError, as_oracle
from advex.result import succeeded
from advex.threat import ThreatModel

__all__ = ["BlackBoxAttack", "QueryTracker", "first_per_owner"]

#: Largest number of input elements one oracle evaluation inside ``forward`` holds.
_CHUNK_ELEMENTS = 1 << 24


def first_per_owner(order: Tensor, owner: Tensor) -> tuple[Tensor, Tensor]:
    """Given point indices ``order`` sorted by preference (best first) and each point's
    ``owner``, the best point of each owner and the owners, owners ascending."""
    order = order[torch.argsort(owner[order], stable=True)]
    sorted_owner = owner[order]
    first = torch.ones_like(sorted_owner, dtype=torch.bool)
    first[1:] = sorted_owner[1:] != sorted_owner[:-1]
    return order[first], sorted_owner[first]


class QueryTracker(Tracker):
    """A ``Tracker`` that sees the model only through an oracle, with a per-sample budget."""

    def __init__(
        self,
        oracle: Oracle,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: ThreatModel,
        *,
        max_queries: int,
        generator: torch.Generator,
        early_stop: bool = True,
        select: Select = "margin",
        active: Tensor | None = None,
    ) -> None:
        self.oracle = oracle
        self.max_queries = max_queries
        self._num_classes = oracle.num_classes
        super().__init__(
            None,
            x,
            y,
            target,
            threat,
            generator=generator,
            early_stop=early_stop,
            select=select,
            active=active,
        )
        self._retire_spent()

    # ----- what the oracle gives ---------------------------------------------------------
    def _evaluate(self, point: Tensor) -> Tensor:
        """Scores, or for a label oracle the one-hot label vectors (for the tracker only)."""
        if self.oracle.access == "scores":
            return self.oracle.scores(point)
        labels = self.oracle.labels(point)
        k = max(int(labels.max()) + 1, int(self._y.max()) + 1, self._num_classes or 0)
        if self._target is not None:
            k = max(k, int(self._target.max()) + 1)
        return torch.nn.functional.one_hot(labels, k).to(point.dtype)

    @property
    def clf(self) -> Any:
        raise AccessError("a black-box attack has no access to the model's gradients")

    @property
    def access(self) -> Access:
        return self.oracle.access

    @property
    def alive(self) -> Tensor:
        """(n_active,) rows not finished yet (early stop, budget spent, retired)."""
        return ~self.done[self.rows]

    @property
    def budget_left(self) -> Tensor:
        """(n_active,) queries each active sample may still spend."""
        return self.max_queries - self.queries[self.rows]

    def _finished(self) -> Tensor:
        return super()._finished() | (self.queries >= self.max_queries)

    def _retire_spent(self) -> None:
        spent = self.queries[self.rows] >= self.max_queries
        if bool(spent.any()):
            self.done[self.rows[spent]] = True

    # ----- queries ---------------------------------------------------------------------------
    # the oracle's points carry an owner each (many points per sample), not a distance
    def forward(self, x_adv: Tensor, owner: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Query the oracle at ``x_adv`` (n, ...); returns scores (n, K) or labels (n,).

        ``owner`` (n,) long: the position among the active rows each point belongs to (default:
        one point per active row, in order). Points are clipped to the box and put on the grid
        first (the point queried is the point recorded). Raises ``QueryBudgetError`` if a sample
        would go over ``max_queries``. Huge calls are evaluated in chunks (bounded memory).
        """
        n = self.n_active
        if owner is None:
            if x_adv.shape[0] != n:
                raise ValueError(
                    f"x_adv: expected one point per active sample ({n}), got {x_adv.shape[0]}"
                )
            owner = torch.arange(n, device=x_adv.device)
        elif owner.shape != (x_adv.shape[0],):
            raise ValueError(f"owner: expected shape ({x_adv.shape[0]},), got {tuple(owner.shape)}")
        if x_adv.shape[0] == 0:
            k = self._clean_logits.shape[1]
            if self.access == "scores":
                return x_adv.new_zeros(0, k)
            return torch.zeros(0, dtype=torch.long, device=x_adv.device)
        counts = torch.bincount(owner, minlength=n)
        over = self.queries[self.rows] + counts > self.max_queries
        if bool(over.any()):
            i = int(torch.nonzero(over)[0])
            raise QueryBudgetError(
                f"internal error: a query would take sample {int(self.rows[i])} past "
                f"max_queries={self.max_queries} ({int(self.queries[self.rows[i]])} used, "
                f"{int(counts[i])} more asked)"
            )
        size = max(_CHUNK_ELEMENTS // max(x_adv[0].numel(), 1), 1)
        outs = []
        for lo in range(0, x_adv.shape[0], size):  # bounded memory for huge query sets
            part = owner[lo : lo + size]
            point = self._valid_view(x_adv[lo : lo + size].detach(), self.x[part])
            out = self._evaluate(point)
            pick, at = self._best_per_owner(point, out, part)
            self.record(point[pick], out[pick], at)
            outs.append(out)
        self.queries[self.rows] += counts
        self._retire_spent()
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out if self.access == "scores" else out.argmax(dim=1)

    def success_of(self, out: Tensor, owner: Tensor | None = None) -> Tensor:
        """Whether each answer of ``forward`` is adversarial for its sample (bool (n,))."""
        owner = torch.arange(self.n_active, device=out.device) if owner is None else owner
        labels = out.argmax(dim=1) if out.ndim == 2 else out
        target = None if self.target is None else self.target[owner]
        return succeeded(labels, self.y[owner], target, self.threat.targeted)

    def _best_per_owner(self, point: Tensor, out: Tensor, owner: Tensor) -> tuple[Tensor, Tensor]:
        """Index of the best point of each owner, and the owners (success first, then the
        smaller distance or the larger margin, as ``record`` ranks them)."""
        if bool((torch.bincount(owner) <= 1).all()):
            return torch.arange(len(owner), device=owner.device), owner
        y = self.y[owner]
        target = None if self.target is None else self.target[owner]
        win = succeeded(out.argmax(dim=1), y, target, self.threat.targeted)
        score = margin(out, y, target if self.threat.targeted else None).float()
        if self.select == "distance":
            dist = lp_norm(point - self.x[owner], self.threat.norm).float()
            score = torch.where(win, -dist, score)
        order = torch.argsort(score, descending=True, stable=True)
        order = order[torch.argsort(win[order].int(), descending=True, stable=True)]
        return first_per_owner(order, owner)

    def value_and_grad(
        self, delta: Tensor, loss: Loss, penalty: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise AccessError("a black-box attack has no access to the model's gradients")

    def jacobian(self, x_adv: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        raise AccessError("a black-box attack has no access to the model's gradients")

    def line_search(self, steps: int) -> None:
        raise AccessError("the white-box segment search spends unbudgeted queries")


class BlackBoxAttack(Attack):
    """Base of the black-box attacks: the model is seen through an oracle of level ``access``.

    Args:
        threat: the threat model.
        max_queries: oracle queries per sample, the clean pass included (≥ 2).
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack``.
    """

    access: ClassVar[Access] = "scores"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_queries: int,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        checks.positive_int("max_queries", max_queries)
        if max_queries < 2:
            raise ValueError(
                f"max_queries: expected an integer >= 2 (the clean pass and one more), "
                f"got {max_queries!r}"
            )
        self.max_queries = max_queries

    def _wrap(self, model: Any) -> Oracle:
        return as_oracle(model, self.access, bounds=self.threat.bounds)

    def _budget(self) -> int:
        """Per-sample budget the tracker enforces (restarts may multiply ``max_queries``)."""
        return self.max_queries

    def _tracker(
        self,
        clf: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator,
        active: Tensor | None,
    ) -> QueryTracker:
        return QueryTracker(
            clf,
            x,
            y,
            target,
            self.threat,
            max_queries=self._budget(),
            generator=generator,
            early_stop=self.early_stop,
            select=self.select,
            active=active,
        )

    def _refine(self, run: Tracker) -> None:
        """No unbudgeted work after the attack's loop."""
        return
