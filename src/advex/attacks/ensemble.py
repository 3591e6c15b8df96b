"""An AutoAttack-style ensemble: each attack runs only on the samples still robust.

For attacks A₁ … A_m sharing one threat model, the ensemble evaluates

    robust(x, y) = clean-correct(x, y) ∧ ¬broken_{A₁}(x, y) ∧ … ∧ ¬broken_{A_m}(x, y)

by running A_k only on the samples that A₁ … A_{k−1} left robust (``active``: A_k still sees
every sample in its batches, so each attacked sample gets the random numbers it would get in a
run of A_k alone, but spends nothing on the others), and returns, per sample, the
first successful point found (every member already re-checked it) or the clean input where none
succeeded. The combined points pass ``finalize`` once more, so the reported success is decided
by a fresh forward pass like every advex result. ``EnsembleResult.broken_by`` records which
member broke each sample (−1: none). Queries, gradients and steps add up over the members.

The ensemble's robust accuracy is never above that of any member run alone with the same seed
on the same samples: a sample robust for the ensemble was attacked by every member, with the
same random numbers as in the member's own run, and resisted each. (Up to floating point: the
model sees a sample in a smaller batch, and a point within rounding of the decision boundary
can land on either side.)

``standard(threat)`` is the recipe of AutoAttack's standard version (Croce & Hein 2020): APGD-CE,
APGD-T over the 9 top classes, FAB-T over the 9 top classes, Square with 5000 queries (L1: APGD-CE
and APGD-T only, as AutoAttack). ``fast(threat)`` is a cheaper screen: APGD-CE and APGD-T over
the 3 top classes. Both are deterministic for a seed.

Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks. ICML 2020. arXiv:2003.01690
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from advex.attacks.apgd import APGD, APGDT
from advex.attacks.base import Attack, Tracker, check_active
from advex.attacks.blackbox.square import Square
from advex.attacks.fab import FABT
from advex.model import as_classifier
from advex.result import AttackResult, finalize, succeeded
from advex.threat import ThreatModel

__all__ = ["Ensemble", "EnsembleResult", "Fast", "Standard", "fast", "standard"]


@dataclass
class EnsembleResult(AttackResult):
    """An ``AttackResult`` that also says which member broke each sample.

    Attributes:
        broken_by: (B,) long, the index into ``members`` of the attack whose point is returned,
            −1 where no member succeeded (robust samples, and clean mistakes, which need none).
        members: the member attacks' names, in the order they ran.
        member_results: each member's own result on the samples it was given, and those
            samples' indices (``rows``) into the ensemble's inputs.
    """

    PER_SAMPLE: ClassVar[tuple[str, ...]] = (*AttackResult.PER_SAMPLE, "broken_by")

    broken_by: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    members: list[str] = field(default_factory=list)
    member_results: list[tuple[Tensor, AttackResult]] = field(default_factory=list, repr=False)

    def broken_counts(self) -> dict[str, int]:
        """Member name → number of samples that member broke (the ones it was first on)."""
        return {
            f"{i}:{name}": int((self.broken_by == i).sum()) for i, name in enumerate(self.members)
        }

    @staticmethod
    def concat(parts: list[AttackResult], seconds: float | None = None) -> AttackResult:
        """Join consecutive batches; each member's ``rows`` are shifted to the joined indices."""
        joined = AttackResult.concat(parts, seconds)
        assert isinstance(joined, EnsembleResult)
        members: list[tuple[Tensor, AttackResult]] = []
        offset = 0
        for part in parts:
            assert isinstance(part, EnsembleResult)
            members += [(rows + offset, res) for rows, res in part.member_results]
            offset += len(part)
        joined.member_results = members
        return joined

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        out = super().to_dict(per_sample)
        out["members"] = list(self.members)
        out["broken_by"] = [int((self.broken_by == i).sum()) for i in range(len(self.members))]
        if per_sample:
            out["samples"]["broken_by"] = self.broken_by.tolist()
        return out


class Ensemble(Attack):
    """Run ``attacks`` in order, each only on the samples the earlier ones left robust.

    Args:
        threat: the shared threat model; every member must have the same one.
        attacks: the members (configured attacks), in the order they run.
        seed, batch_size: kept for the record; each member uses its own.
    """

    name: ClassVar[str] = "ensemble"

    def __init__(
        self,
        threat: ThreatModel,
        attacks: Sequence[Attack],
        *,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size)
        members = list(attacks)
        if not members:
            raise ValueError("attacks: expected at least one attack")
        for a in members:
            if not isinstance(a, Attack):
                raise TypeError(f"attacks: expected advex attacks, got {type(a).__name__}")
            if a.threat != threat:
                raise ValueError(
                    f"attacks: {a.name} has threat {a.threat.describe()!r}, the ensemble "
                    f"{threat.describe()!r}; every member must share the threat model"
                )
        self.attacks = members

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["attacks"] = [{"attack": a.name, **a.params()} for a in self.attacks]
        return out

    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        *,
        active: Tensor | None = None,
        batch_offset: int = 0,
    ) -> EnsembleResult:
        clf = as_classifier(model, bounds=self.threat.bounds)
        x, y, target = self._checked(clf, x, y, target)
        active = check_active(active, x)
        start = time.perf_counter()
        b = x.shape[0]
        dev = x.device
        with torch.no_grad(), clf.attacking():
            clean_pred = clf.predict(x)
        queries = torch.ones(b, dtype=torch.long, device=dev)
        gradients = torch.zeros(b, dtype=torch.long, device=dev)
        rechecks = torch.zeros(b, dtype=torch.long, device=dev)
        steps = torch.zeros(b, dtype=torch.long, device=dev)
        x_adv = x.clone()
        broken_by = torch.full((b,), -1, dtype=torch.long, device=dev)
        open_ = ~succeeded(clean_pred, y, target, self.threat.targeted)
        if active is not None:
            open_ &= active
        member_results: list[tuple[Tensor, AttackResult]] = []
        for i, attack in enumerate(self.attacks):
            rows = torch.nonzero(open_).squeeze(1)
            if rows.numel() == 0:
                break
            # every member sees all samples (the same batches and random streams as when run
            # alone) but attacks only the ones still open
            part = attack(clf, x, y, target, active=open_.clone(), batch_offset=batch_offset).take(
                rows
            )
            member_results.append((rows.cpu(), part))
            queries[rows] += part.queries
            gradients[rows] += part.gradients
            if part.rechecks is not None:
                rechecks[rows] += part.rechecks.to(dev)
            steps[rows] += part.steps
            won = part.success.to(dev)
            x_adv[rows[won]] = part.x_adv[won].to(x_adv.dtype)
            broken_by[rows[won]] = i
            open_[rows[won]] = False
        with clf.attacking():
            checked = finalize(
                clf,
                x,
                y,
                x_adv,
                self.threat,
                target=target,
                clean_pred=clean_pred,
                queries=queries,
                gradients=gradients,
                steps=steps,
                seconds=time.perf_counter() - start,
                attack=self.name,
                params=self.params(),
            )
        assert checked.rechecks is not None
        checked.rechecks = checked.rechecks + rechecks  # the members' re-checks too
        return EnsembleResult(
            **{f.name: getattr(checked, f.name) for f in fields(AttackResult)},
            broken_by=broken_by,
            members=[a.name for a in self.attacks],
            member_results=member_results,
        )

    def _run(self, run: Tracker) -> None:  # pragma: no cover - __call__ runs the members
        raise TypeError("an Ensemble runs its member attacks; call it, do not run it in a Tracker")


def _recipe(
    threat: ThreatModel, version: str, steps: int, seed: int, batch_size: int | None
) -> list[Attack]:
    """The member attacks of a recipe (see the module docstring)."""
    common: dict[str, Any] = {"seed": seed, "batch_size": batch_size}
    if version == "fast":
        return [
            APGD(threat, loss="ce", steps=steps, **common),
            APGDT(threat, n_target_classes=3, steps=steps, **common),
        ]
    members: list[Attack] = [
        APGD(threat, loss="ce", steps=steps, **common),
        APGDT(threat, n_target_classes=9, steps=steps, **common),
    ]
    if threat.norm in ("linf", "l2"):
        members.append(FABT(threat, n_target_classes=9, steps=steps, **common))
        members.append(Square(threat, max_queries=5000, **common))
    return members


class Standard(Ensemble):
    """AutoAttack's standard recipe: APGD-CE, APGD-T (9), FAB-T (9), Square (5000 queries)."""

    name: ClassVar[str] = "standard"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")
    supports_targeted: ClassVar[bool] = False
    version: ClassVar[str] = "standard"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        Attack.__init__(self, threat, seed=seed, batch_size=batch_size)
        members = _recipe(threat, self.version, steps, seed, batch_size)
        super().__init__(threat, members, seed=seed, batch_size=batch_size)
        self.steps = steps


class Fast(Standard):
    """A cheaper screen: APGD-CE and APGD-T over the 3 top classes."""

    name: ClassVar[str] = "fast"
    version: ClassVar[str] = "fast"


def standard(
    threat: ThreatModel, *, steps: int = 100, seed: int = 0, batch_size: int | None = None
) -> Standard:
    """AutoAttack's standard recipe for ``threat`` (untargeted; L∞, L2, or L1); ``steps`` are
    the iterations of APGD, APGD-T and FAB-T (100 in AutoAttack)."""
    return Standard(threat, steps=steps, seed=seed, batch_size=batch_size)


def fast(
    threat: ThreatModel, *, steps: int = 100, seed: int = 0, batch_size: int | None = None
) -> Fast:
    """The cheaper recipe: APGD-CE and APGD-T (3 target classes)."""
    return Fast(threat, steps=steps, seed=seed, batch_size=batch_size)
