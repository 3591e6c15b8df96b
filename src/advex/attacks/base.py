"""The Attack base class and the per-sample ``Tracker`` every attack runs inside.

An attack only writes its loop body (``_run``). Everything shared lives here:

* input checks and coercion of the model into a ``Classifier`` (``Attack.__call__``);
* batching of large inputs (``batch_size``), eval mode restored afterwards;
* an explicit ``torch.Generator`` per batch, seeded from ``seed`` (same seed → same result);
* the ``Tracker``: every point an attack evaluates passes through ``Tracker.forward``, which
  counts queries per sample and keeps the best valid point per sample — never the last iterate.
  "Best" is success first; among successes the smaller distance (minimum-norm attacks,
  ``select="distance"``) or the larger margin (fixed-budget attacks, ``select="margin"``); among
  failures the larger margin. Points outside the ε-ball are never recorded.
* early stop per sample (``early_stop=True``): ``Tracker.shrink`` drops samples that already
  succeeded from the attack's working tensors, so later steps cost less. A minimum-norm attack
  (``select="distance"``) with ``eps=None`` never stops at its first success — it goes on
  shrinking the perturbation — and retires samples by its own rule (``Tracker.retire``); with an
  ``eps`` it stops once a success inside the ε-ball is found;
* restarts (``Tracker.restarts``) that run only on samples still unbroken;
* with ``levels`` set, the model is always evaluated on the quantized point (a straight-through
  estimator passes gradients to the continuous iterate), so what is recorded is what is returned.
  With an ``eps`` the rounding goes toward x (it never grows ‖δ‖); with ``eps=None`` it goes to
  the nearest grid value;
* the final re-check (``advex.result.finalize``), which no attack can skip.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.losses import Loss, margin
from advex.model import Classifier, as_classifier, check_inputs
from advex.norms import lp_norm, on_grid, quantize, random_start, round_to_grid
from advex.result import AttackResult, ball_tolerance, finalize, succeeded
from advex.threat import ThreatModel

__all__ = ["Attack", "MinNormAttack", "Tracker"]

Select = Literal["margin", "distance"]


class Tracker:
    """Per-sample state of one attack run on one batch.

    The attack works on the *active rows*: the samples it is still attacking. ``x``, ``y``,
    ``target`` and ``clean_logits`` are the active rows' slices; tensors the attack owns (δ,
    momentum, ...) are kept aligned with them through ``shrink``.
    """

    def __init__(
        self,
        model: Classifier | None,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: ThreatModel,
        *,
        generator: torch.Generator,
        early_stop: bool = True,
        select: Select = "margin",
        active: Tensor | None = None,
    ) -> None:
        self.model = model
        self.threat = threat
        self.generator = generator
        self.early_stop = early_stop
        self.select = select
        self._x, self._y, self._target = x, y, target
        b = x.shape[0]
        dev = x.device
        self.queries = torch.zeros(b, dtype=torch.long, device=dev)
        self.gradients = torch.zeros(b, dtype=torch.long, device=dev)
        self.step_count = torch.zeros(b, dtype=torch.long, device=dev)
        with torch.no_grad():
            logits = self._evaluate(x)
        self.queries += 1
        self._clean_logits = logits.detach()
        self.clean_pred = self._clean_logits.argmax(dim=1)
        done = succeeded(self.clean_pred, y, target, threat.targeted)
        self.best = x.detach().clone()
        self.best_success = done.clone()
        self.best_distance = torch.where(
            done, torch.zeros(b, device=dev), torch.full((b,), float("inf"), device=dev)
        )
        self.best_score = margin(self._clean_logits, y, target if threat.targeted else None)
        self.best_score = self.best_score.to(x.dtype)
        # the attack's own measure of each best point (``distance=`` of ``forward``/``record``;
        # 0 for the clean point); Lp attacks leave it unused
        self.best_measure = torch.zeros(b, device=dev, dtype=x.dtype)
        self.last_improved = torch.zeros(0, dtype=torch.bool, device=dev)
        #: Per-sample parameters of each best point (B, ...), for attacks that return them
        #: (a flow field, a colour function): set from ``Attack._extras``, kept by ``record``.
        self.extras: dict[str, Tensor] = {}
        self._size = b
        self._inactive = torch.zeros_like(done) if active is None else ~active
        self.done = done | self._inactive
        self.rows = torch.nonzero(~self.done).squeeze(1)
        self._slice()

    def _evaluate(self, point: Tensor) -> Tensor:
        """Logits of the model at ``point`` (every evaluation of the attack goes through here)."""
        assert self.model is not None
        return self.model(point)

    @property
    def clf(self) -> Classifier:
        """The white-box model (gradients allowed)."""
        assert self.model is not None
        return self.model

    # ----- the active rows -------------------------------------------------------------
    def _slice(self) -> None:
        self.x = self._x[self.rows]
        self.y = self._y[self.rows]
        self.target = None if self._target is None else self._target[self.rows]
        self.clean_logits = self._clean_logits[self.rows]

    @property
    def n_active(self) -> int:
        return int(self.rows.numel())

    @property
    def labels_target(self) -> Tensor | None:
        """The target labels a loss should use: the targets if targeted, else None."""
        return self.target if self.threat.targeted else None

    # ----- randomness, aligned with the batch -------------------------------------------
    # Draws are made for every sample of the batch and then cut to the active rows, so a
    # sample's random numbers depend only on the seed, its batch and its place in it — not on
    # which other samples are still active. An ensemble member run on the samples still robust
    # (``active``) thus sees the same streams as when run alone on all of them.
    def rand(self, *shape: int) -> Tensor:
        """U[0, 1) draws of shape (n_active, *shape), in the dtype of x."""
        x = self._x
        full = torch.rand(
            (self._size, *shape), generator=self.generator, device=x.device, dtype=x.dtype
        )
        return full[self.rows]

    def randn(self, *shape: int) -> Tensor:
        """Standard normal draws of shape (n_active, *shape), in the dtype of x."""
        x = self._x
        full = torch.randn(
            (self._size, *shape), generator=self.generator, device=x.device, dtype=x.dtype
        )
        return full[self.rows]

    def randint(self, high: int, *shape: int) -> Tensor:
        """Integers uniform in [0, high), shape (n_active, *shape)."""
        full = torch.randint(
            0, high, (self._size, *shape), generator=self.generator, device=self._x.device
        )
        return full[self.rows]

    def random_start(self, threat: ThreatModel | None = None) -> Tensor:
        """δ uniform in the ball of ``threat`` (default the run's), in the box, active rows."""
        return random_start(self._x, threat or self.threat, self.generator)[self.rows]

    def restarts(self, n: int) -> Iterator[int]:
        """Yield restart indices; restart r > 0 runs only on samples not yet successful."""
        for r in range(n):
            if r > 0:
                self.done = self._finished()
                self.rows = torch.nonzero(~self.done).squeeze(1)
                self._slice()
            if self.n_active == 0:
                return
            yield r

    def _finished(self) -> Tensor:
        """(B,) samples no restart may attack again."""
        return self.best_success | self._inactive

    def steps(self, n: int) -> Iterator[int]:
        """Yield step indices until ``n`` or until no sample is active; counts steps per sample."""
        for i in range(n):
            if self.n_active == 0:
                return
            self.step_count[self.rows] += 1
            yield i

    def retire(self, finished: Tensor) -> None:
        """Mark active rows as finished by the attack's own rule (a bool mask over the active
        rows); the next ``shrink`` drops them. Their best point so far is what is returned."""
        if finished.shape != self.rows.shape:
            raise ValueError(
                f"finished: expected a mask of shape {tuple(self.rows.shape)}, "
                f"got {tuple(finished.shape)}"
            )
        self.done[self.rows[finished]] = True

    def shrink(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Drop finished samples (early stop, ``retire``) from the active rows and ``tensors``."""
        keep = ~self.done[self.rows]
        if bool(keep.all()):
            return tensors
        self.rows = self.rows[keep]
        self._slice()
        return tuple(t[keep] for t in tensors)

    # ----- evaluating points ------------------------------------------------------------
    def _valid_view(self, x_adv: Tensor, x: Tensor | None = None) -> Tensor:
        """x_adv clipped to the box and rounded onto the grid; gradients pass straight through.

        ``x``: the clean points x_adv belongs to (default: the active rows' x)."""
        lo, hi = self.threat.bounds
        if self.threat.levels is None and x_adv.numel():
            low, high = torch.aminmax(x_adv.detach())
            inside = float(low) >= lo and float(high) <= hi
            if inside:  # the common case: the attack kept its iterate in the box already
                return x_adv
        clipped = x_adv.detach().clamp(lo, hi)
        if self.threat.eps is None:
            valid = round_to_grid(clipped, self.threat)
        else:
            valid = quantize(clipped, self.x if x is None else x, self.threat)
        if not x_adv.requires_grad:
            return valid
        return x_adv + (valid - x_adv).detach()

    def forward(
        self,
        x_adv: Tensor,
        distance: Tensor | None = None,
        extras: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Logits of the active rows at ``x_adv``; records the best point per sample.

        ``distance`` (n_active,), optional: the attack's own measure of each point (attacks
        whose ``metric`` is not the threat's norm: a flow loss, a colour-function deviation),
        used instead of ‖x_adv − x‖ to rank successes. ``extras``: the parameters behind each
        point (name → (n_active, ...)), kept in ``self.extras`` for the points that become
        their sample's best."""
        point = self._valid_view(x_adv)
        logits = self._evaluate(point)
        self.queries[self.rows] += 1
        self.record(point.detach(), logits.detach(), distance=distance, extras=extras)
        return logits

    def value_and_grad(
        self, delta: Tensor, loss: Loss, penalty: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Objective per sample and its gradient with respect to δ (one forward + backward).

        The objective is loss(f(x + δ), y, target) − penalty(δ) (penalty optional, per
        sample). Returns (logits, objective values, ∇_δ Σ objective); the point is recorded
        like ``forward``.
        """
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.forward(self.x + delta)
            values = loss(logits, self.y, self.labels_target)
            if penalty is not None:
                values = values - penalty(delta)
            (grad,) = torch.autograd.grad(values.sum(), delta)
        self.gradients[self.rows] += 1
        self.clf.backward_count += self.n_active
        return logits.detach(), values.detach(), grad

    def line_search(self, steps: int) -> None:
        """Move each successful best point toward x along the segment, by bisection.

        For the samples whose best point succeeded at a distance > 0, bisect t ∈ [0, 1] on
        x + t·(best − x): ``steps`` forward passes, each recorded, so the best point becomes the
        closest successful point found on the segment (‖t·δ‖ = t‖δ‖ for every Lp norm but L0,
        where scaling changes nothing and the search is skipped). Needs no gradients.
        """
        if steps < 1 or self.threat.norm == "l0":
            return
        rows = torch.nonzero(self.best_success & (self.best_distance > 0)).squeeze(1)
        if rows.numel() == 0:
            return
        self.rows = rows
        self._slice()
        delta = self.best[rows] - self.x
        lo = torch.zeros(rows.numel(), 1, device=delta.device, dtype=delta.dtype)
        hi = torch.ones_like(lo)
        view = (-1,) + (1,) * (delta.ndim - 1)
        with torch.no_grad():
            for _ in range(steps):
                mid = (lo + hi) / 2
                logits = self.forward(self.x + mid.view(view) * delta)
                won = succeeded(logits.argmax(dim=1), self.y, self.target, self.threat.targeted)
                won = won.unsqueeze(1)
                hi = torch.where(won, mid, hi)
                lo = torch.where(won, lo, mid)

    def jacobian(self, x_adv: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """Logits at ``x_adv`` and the gradients ∇ₓ z_c of the logits of ``classes``.

        ``classes`` (B, k) long names k classes per active sample. Returns (logits (B, K),
        jac (B, k, *x.shape[1:])) with jac[i, j] = ∂z_{classes[i, j]}(x_adv_i)/∂x. One forward
        (recorded like ``forward``) and k backward passes through the same graph; counts k
        gradients per sample.
        """
        if classes.ndim != 2 or classes.shape[0] != x_adv.shape[0]:
            raise ValueError(
                f"classes: expected shape ({x_adv.shape[0]}, k), got {tuple(classes.shape)}"
            )
        k = classes.shape[1]
        point = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.forward(point)
            picked = logits.gather(1, classes)
            grads = []
            for j in range(k):
                (g,) = torch.autograd.grad(picked[:, j].sum(), point, retain_graph=j < k - 1)
                grads.append(g)
        self.gradients[self.rows] += k
        self.clf.backward_count += self.n_active * k
        return logits.detach(), torch.stack(grads, dim=1)

    def record(
        self,
        point: Tensor,
        logits: Tensor,
        at: Tensor | None = None,
        distance: Tensor | None = None,
        extras: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Keep ``point`` for each active sample where it beats the best so far.

        ``at``: distinct positions among the active rows the points belong to (default: one
        point per active row, in order). ``distance``: the attack's own measure of each point
        and ``extras`` the parameters behind it (see ``forward``); default distance
        ‖point − x‖ in the threat's norm. Returns the (n,) bool mask
        of the points that became their sample's best (also kept as ``last_improved``, so an
        attack can keep its own parameters of each best point after ``forward``)."""
        rows, x, y, target = self.rows, self.x, self.y, self.target
        if at is not None:
            rows, x, y = rows[at], x[at], y[at]
            target = None if target is None else target[at]
        success = succeeded(logits.argmax(dim=1), y, target, self.threat.targeted)
        score = margin(logits, y, target if self.threat.targeted else None)
        score = score.to(self.best_score.dtype)
        norm = lp_norm(point - x, self.threat.norm).to(self.best_distance.dtype)
        ok = torch.ones_like(success)
        if self.threat.eps is not None:
            ok = norm <= self.threat.eps + ball_tolerance(self.threat.eps)
        if distance is None:
            distance = norm
        else:
            distance = distance.detach().to(self.best_distance.dtype)
            if distance.shape != success.shape:
                raise ValueError(
                    f"distance: expected shape {tuple(success.shape)}, got {tuple(distance.shape)}"
                )
        if self.threat.levels is not None:
            ok = ok & on_grid(point, self.threat)
        had = self.best_success[rows]
        if self.select == "distance":
            better_success = distance < self.best_distance[rows]
        else:
            better_success = score > self.best_score[rows]
        better = ok & (
            (success & ~had)
            | (success & had & better_success)
            | (~success & ~had & (score > self.best_score[rows]))
        )
        if bool(better.any()):
            idx = rows[better]
            self.best[idx] = point[better].to(self.best.dtype)
            self.best_success[idx] = success[better]
            self.best_distance[idx] = torch.where(
                success[better], distance[better], torch.full_like(distance[better], float("inf"))
            )
            self.best_score[idx] = score[better]
            self.best_measure[idx] = distance[better].to(self.best_measure.dtype)
            for name, value in (extras or {}).items():
                store = self.extras[name]
                store[idx] = value.detach()[better].to(store.dtype)
        if self.early_stop and not (self.select == "distance" and self.threat.eps is None):
            self.done[rows] |= ok & success
        self.last_improved = better
        return better


def check_active(active: Any, x: Tensor) -> Tensor | None:
    """``active`` as a (B,) bool tensor on x's device, or None; raises ``ValueError`` if bad."""
    if active is None:
        return None
    if not isinstance(active, Tensor) or active.dtype != torch.bool:
        raise ValueError(f"active: expected a bool tensor, got {type(active).__name__}")
    if active.shape != (x.shape[0],):
        raise ValueError(
            f"active: expected shape ({x.shape[0]},) to match x, got {tuple(active.shape)}"
        )
    return active.to(x.device)


class Attack(abc.ABC):
    """Base of every attack: configure in ``__init__``, run with ``attack(model, x, y, target)``.

    Subclasses set ``name``, the ``norms`` they support, whether they need ``eps``
    (``needs_eps``) and how the tracker chooses among successes (``select``), and implement
    ``_run(run)``: the loop body and nothing else.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1", "l0")
    needs_eps: ClassVar[bool] = True
    select: ClassVar[Select] = "margin"
    supports_targeted: ClassVar[bool] = True
    requires_targeted: ClassVar[bool] = False
    #: Minimum-norm results are moved outward by this fraction of δ before the re-check (see
    #: ``advex.result.finalize``); set by attacks whose points end on the decision boundary.
    boundary_margin: ClassVar[float] = 0.0
    #: What ``AttackResult.distance`` measures when it is not the threat's Lp norm (a flow loss,
    #: a colour-function distance, ...): such an attack passes ``distance=`` to ``run.forward``,
    #: and the result reports the measure of each returned point's transformation.
    metric: ClassVar[str | None] = None
    #: Whether a call on a slice of the data (with its ``batch_offset``) gives exactly that
    #: slice of a call on all of it. False for attacks that first learn from the whole input
    #: (a universal perturbation, a substitute model): a results store runs them in one piece.
    per_batch: ClassVar[bool] = True
    #: The result class: an ``AttackResult`` subclass whose extra per-sample fields are the
    #: ``_extras`` the attack keeps for its best points (a flow field per sample, ...).
    result_type: ClassVar[type[AttackResult]] = AttackResult

    def __init__(
        self,
        threat: ThreatModel,
        *,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat: expected an advex.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise ValueError(
                f"threat.norm: {self.name} supports {', '.join(self.norms)}, got {threat.norm!r}"
            )
        if self.needs_eps and threat.eps is None:
            raise ValueError(f"threat.eps: {self.name} is a fixed-budget attack and needs eps")
        if threat.targeted and not self.supports_targeted:
            raise ValueError(f"threat.targeted: {self.name} is untargeted only")
        if not threat.targeted and self.requires_targeted:
            raise ValueError(f"threat.targeted: {self.name} is targeted only; use targeted=True")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size: expected a positive integer or None, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an integer, got {seed!r}")
        self.threat = threat
        self.seed = seed
        self.batch_size = batch_size
        self.early_stop = early_stop

    # ----- the public call --------------------------------------------------------------
    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        *,
        active: Tensor | None = None,
        batch_offset: int = 0,
    ) -> AttackResult:
        """Attack ``model`` on inputs ``x`` (B, ...) with labels ``y`` (B,) (and ``target``).

        ``active`` (B,) bool, optional: attack only these samples; the others are returned
        unchanged (x' = x) and cost one query (the clean pass). They keep their place in the
        batches, so the attacked samples get the same random numbers as in a run on all.

        ``batch_offset``: the index of this call's first batch within a larger run. Batch i of
        a call draws its random numbers from a generator seeded with seed·1000003 + i; a caller
        that runs the batches of a dataset one call at a time (a results store that resumes)
        passes ``batch_offset=i`` for batch i and gets exactly the results of one call on all.
        """
        batch_offset = checks.non_negative_int("batch_offset", batch_offset)
        clf = self._wrap(model)
        x, y, target = self._checked(clf, x, y, target)
        active = check_active(active, x)
        start = time.perf_counter()
        size = self.batch_size or x.shape[0]
        parts = []
        with clf.attacking():
            for i, lo in enumerate(range(0, x.shape[0], size)):
                parts.append(
                    self._run_batch(
                        clf,
                        x[lo : lo + size],
                        y[lo : lo + size],
                        None if target is None else target[lo : lo + size],
                        batch_offset + i,
                        None if active is None else active[lo : lo + size],
                    )
                )
        return AttackResult.concat(parts, seconds=time.perf_counter() - start)

    def _wrap(self, model: Any) -> Any:
        """What the attack works on: a white-box ``Classifier`` (black-box attacks: an Oracle)."""
        return as_classifier(model, bounds=self.threat.bounds)

    def _tracker(
        self,
        clf: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator,
        active: Tensor | None,
    ) -> Tracker:
        """The per-batch tracker the attack's ``_run`` works in."""
        return Tracker(
            clf,
            x,
            y,
            target,
            self.threat,
            generator=generator,
            early_stop=self.early_stop,
            select=self.select,
            active=active,
        )

    def _run_batch(
        self,
        clf: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        index: int,
        active: Tensor | None = None,
    ) -> AttackResult:
        start = time.perf_counter()
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed * 1_000_003 + index)
        run = self._tracker(clf, x, y, target, generator, active)
        run.extras = self._extras(x)
        if run.n_active:
            self._run(run)
            self._refine(run)
        result = finalize(
            clf,
            x,
            y,
            run.best,
            self.threat,
            target=target,
            clean_pred=run.clean_pred,
            queries=run.queries,
            gradients=run.gradients,
            steps=run.step_count,
            seconds=time.perf_counter() - start,
            attack=self.name,
            params=self.params(),
            # a transformation's output is not repaired along δ (that leaves its family)
            claimed=None if self.metric else run.best_success,
            outward=self.boundary_margin,
            distance=run.best_measure if self.metric else None,
            metric=self.metric,
        )
        if self.result_type is AttackResult:
            return result
        fields: dict[str, Any] = {
            f.name: getattr(result, f.name) for f in dataclasses.fields(AttackResult)
        }
        fields.update(run.extras)
        return self.result_type(**fields)

    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        if isinstance(x, Tensor):
            x = x.to(clf.device)
        if isinstance(y, Tensor):
            y = y.to(clf.device)
        if isinstance(target, Tensor):
            target = target.to(clf.device)
        infer = isinstance(clf, Classifier) and clf.num_classes is None
        if infer and isinstance(x, Tensor) and x.ndim >= 2 and len(x):
            with torch.no_grad(), clf.attacking():
                clf(x[:1] if x.is_floating_point() else x[:1].float())
        x, y, target = check_inputs(
            x, y, bounds=self.threat.bounds, num_classes=clf.num_classes, target=target
        )
        if self.threat.targeted:
            target = self._targets(clf, x, y, target)
            if bool((target == y).any()):
                raise ValueError("target: some targets equal the true label y")
        elif target is not None:
            raise ValueError("target: given, but the threat model is untargeted (targeted=False)")
        if self.threat.levels is not None and not bool(on_grid(x, self.threat).all()):
            raise ValueError(
                f"x: levels={self.threat.levels} needs clean inputs on the value grid; "
                "round them first with advex.norms.round_to_grid(x, threat)"
            )
        return x.detach(), y, target

    def _targets(self, clf: Any, x: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Targets for a targeted threat; subclasses may choose them when none are given."""
        if target is None:
            raise ValueError("target: the threat model is targeted; pass target labels")
        return target

    def params(self) -> dict[str, Any]:
        """The attack's settings, for results and reports."""
        skip = {"threat"}
        return {
            k: v
            for k, v in vars(self).items()
            if k not in skip
            and not k.startswith("_")
            and isinstance(v, int | float | str | bool | None)
        }

    def _extras(self, x: Tensor) -> dict[str, Tensor]:
        """Per-sample parameters the result carries (``result_type``'s extra fields), at their
        "no change" value for the batch ``x``; the attack passes each point's parameters to
        ``run.forward(..., extras=)`` and the tracker keeps those of the best points."""
        return {}

    def _refine(self, run: Tracker) -> None:
        """After the attack's loop: nothing for fixed-budget attacks (see MinNormAttack)."""
        return

    @abc.abstractmethod
    def _run(self, run: Tracker) -> None:
        """The attack's loop: evaluate points through ``run`` (forward / value_and_grad)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({self.threat.describe()!r}, {args})"


class MinNormAttack(Attack):
    """Base of the minimum-norm attacks: find the smallest adversarial ‖δ‖ per sample.

    ``eps=None`` asks for the smallest perturbation the attack can find; an ``eps`` asks whether
    one inside the ε-ball exists, and a sample stops as soon as one is found (then only points
    inside the ball are kept, so the result is a valid ε-bounded attack). Among successes the
    tracker keeps the point of smallest distance. Without an eps, each successful best point is
    finally moved toward x by a bisection along the segment x → best (``line_search_steps``
    forward passes, ``Tracker.line_search``): the optimizers stop past the decision boundary
    (DeepFool's overshoot, a finite step size), and the segment search trims that slack.

    The bisection leaves a point within 2⁻¹⁶‖δ‖ of the boundary, where logits can tie to the
    last bit: a re-check with another batch size or memory layout (the user's own) may then
    see the clean class. So without an eps every successful point is returned at
    x + (1 + 10⁻⁴)·δ (``boundary_margin``, applied by ``advex.result.finalize``; not for L0,
    where scaling changes no distance, nor for attacks with their own ``metric``), which moves
    the logit margin well past float noise; the reported distance is that point's. With
    ``levels`` the moved point is rounded to the grid again and re-checked there.
    """

    needs_eps: ClassVar[bool] = False
    select: ClassVar[Select] = "distance"
    boundary_margin: ClassVar[float] = 1e-4
    #: Bisection steps toward x along the segment to each best point after the attack (without
    #: eps; forward passes only). 0 turns it off.
    line_search_steps: ClassVar[int] = 16

    def _refine(self, run: Tracker) -> None:
        # a transformation attack (``metric``) is not searched along δ: that leaves its family
        if self.threat.eps is None and self.metric is None:
            run.line_search(self.line_search_steps)
