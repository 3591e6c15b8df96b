"""Attacks that fit one perturbation to a whole dataset, then apply it to inputs never seen.

A universal perturbation v (Moosavi-Dezfooli et al. 2017) or an adversarial patch (Brown et al.
2017) is not found per sample: ``DatasetAttack.fit(model, x, y)`` returns a ``Fitted`` object,
and ``Fitted.apply(model, x, y)`` places it on other inputs and returns the standard
``AttackResult`` — each point made valid and re-checked by ``advex.result.finalize`` like every
advex result. ``Fitted.fooling_rate`` is the papers' measure: the fraction of inputs whose
predicted label changes, k(x') ≠ k(x), whatever the true label.

Calling a ``DatasetAttack`` like any other attack, ``attack(model, x, y)``, fits on ``x`` and
applies to the same ``x`` (an in-sample figure; report held-out figures with ``fit`` +
``apply``).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from advex.attacks.base import Attack, Tracker, check_active
from advex.model import Classifier, as_classifier, check_inputs
from advex.norms import on_grid
from advex.result import AttackResult, finalize
from advex.threat import ThreatModel

__all__ = ["DatasetAttack", "Fitted"]


@dataclass
class Fitted(abc.ABC):
    """A perturbation fitted on a dataset (subclasses hold the perturbation itself).

    Attributes:
        attack: name of the attack that fitted it; ``threat``: its threat model.
        params: the attack's settings.
        seconds: wall time of the fit; ``queries`` / ``gradients``: forward and backward
            passes (per image) the fit spent in all.
        history: the fooling rate on the fitting data after each pass over it.
    """

    attack: str
    threat: ThreatModel
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    queries: int = 0
    gradients: int = 0
    history: list[float] = field(default_factory=list)

    #: What ``distance`` measures when it is not the threat's norm (e.g. "patch_area").
    metric: str | None = None

    @abc.abstractmethod
    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The perturbed inputs x' (before the box/grid are enforced by ``finalize``)."""

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor | None:
        """Per-sample measure reported when ``metric`` is set (default: the Lp norm)."""
        return None

    def perturb(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """x' and, when ``metric`` is set, its per-sample measure (None: the Lp norm).

        Override when the measure is known while placing (a patch's covered area) and cannot
        be read back from x and x' alone."""
        x_adv = self.transform(x, generator)
        return x_adv, (self.distance(x, x_adv) if self.metric else None)

    def apply(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        *,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> AttackResult:
        """Place the perturbation on ``x`` and return the re-checked result.

        ``seed`` drives any random placement (patches), one generator per batch as in
        ``Attack``. ``queries`` counts one pass per sample (the clean prediction). Untargeted,
        a sample the model already gets wrong is returned unchanged (x' = x, distance 0), as by
        every advex attack.
        """
        clf = as_classifier(model, bounds=self.threat.bounds)
        x, y, target = _checked(clf, x, y, target, self.threat)
        return self._apply(clf, x, y, target, self.threat, seed, batch_size)

    def _apply(
        self,
        clf: Classifier,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: ThreatModel,
        seed: int,
        batch_size: int | None,
    ) -> AttackResult:
        start = time.perf_counter()
        size = batch_size or x.shape[0]
        parts = []
        with clf.attacking(), torch.no_grad():
            for i, lo in enumerate(range(0, x.shape[0], size)):
                xb, yb = x[lo : lo + size], y[lo : lo + size]
                tb = None if target is None else target[lo : lo + size]
                t0 = time.perf_counter()
                gen = torch.Generator(device=xb.device)
                gen.manual_seed(seed * 1_000_003 + i)
                clean_pred = clf(xb).argmax(dim=1)
                x_adv, distance = self.perturb(xb, gen)
                x_adv = x_adv.detach()
                if not threat.targeted:  # clean mistakes need no perturbation (x' = x)
                    wrong = clean_pred != yb
                    x_adv = torch.where(wrong.reshape(-1, *[1] * (xb.ndim - 1)), xb, x_adv)
                    if distance is not None:
                        distance = torch.where(wrong, torch.zeros_like(distance), distance)
                ones = torch.ones_like(yb)
                parts.append(
                    finalize(
                        clf,
                        xb,
                        yb,
                        x_adv,
                        threat,
                        target=tb,
                        clean_pred=clean_pred,
                        queries=ones,
                        gradients=torch.zeros_like(yb),
                        steps=torch.zeros_like(yb),
                        seconds=time.perf_counter() - t0,
                        attack=self.attack,
                        params=self.params,
                        distance=distance,
                        metric=self.metric if distance is not None else None,
                    )
                )
        return AttackResult.concat(parts, seconds=time.perf_counter() - start)

    def fooling_rate(self, model: Any, x: Tensor, *, seed: int = 0, batch_size: int = 500) -> float:
        """Fraction of ``x`` whose predicted label the perturbation changes: k(x') ≠ k(x).

        Measured on the re-checked points (box, grid), so it is what ``apply`` returns."""
        clf = as_classifier(model, bounds=self.threat.bounds)
        y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x, y, _ = check_inputs(x, y, bounds=self.threat.bounds)
        with clf.attacking(), torch.no_grad():
            y = torch.cat(
                [clf(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)]
            )
        # success against the clean labels k(x), untargeted: exactly k(x') ≠ k(x)
        untargeted = self.threat.replace(targeted=False)
        result = self._apply(clf, x, y, None, untargeted, seed, batch_size)
        return float(result.success.float().mean())


def _checked(
    clf: Classifier, x: Any, y: Any, target: Any, threat: ThreatModel
) -> tuple[Tensor, Tensor, Tensor | None]:
    if isinstance(x, Tensor):
        x = x.to(clf.device)
    if isinstance(y, Tensor):
        y = y.to(clf.device)
    if isinstance(target, Tensor):
        target = target.to(clf.device)
    x, y, target = check_inputs(
        x, y, bounds=threat.bounds, num_classes=clf.num_classes, target=target
    )
    if threat.levels is not None and not bool(on_grid(x, threat).all()):
        raise ValueError(
            f"x: levels={threat.levels} needs clean inputs on the value grid; "
            "round them first with advex.norms.round_to_grid(x, threat)"
        )
    if threat.targeted and target is None:
        raise ValueError("target: the threat model is targeted; pass target labels")
    if not threat.targeted and target is not None:
        raise ValueError("target: given, but the threat model is untargeted (targeted=False)")
    return x.detach(), y, target


class DatasetAttack(Attack):
    """Base of the attacks that fit one perturbation on a dataset (``fit``) and apply it.

    Subclasses implement ``fit``; ``__call__`` fits on ``x`` and applies to the same ``x``
    (so a call on a slice is not a slice of a call on all: ``per_batch`` is False).
    For a targeted threat, ``target`` is one class for the whole dataset (an int), or per-sample
    labels that all name the same class.
    """

    per_batch: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(self, model: Any, x: Tensor, y: Tensor, target: int | Tensor | None = None) -> Fitted:
        """Fit the perturbation on (x, y); returns the ``Fitted`` perturbation."""

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
        """Fit on ``x`` (only the ``active`` samples, if given) and apply to all of ``x``.

        ``batch_offset`` is accepted for the common signature; placements are drawn as in
        ``Fitted.apply`` with the attack's seed."""
        clf = as_classifier(model, bounds=self.threat.bounds)
        x, y, target = _checked(clf, x, y, target, self.threat)
        mask = check_active(active, x)
        rows = slice(None) if mask is None else mask
        fitted = self.fit(clf, x[rows], y[rows], None if target is None else target[rows])
        result = fitted.apply(clf, x, y, target, seed=self.seed, batch_size=self.batch_size)
        # the fit's cost belongs to this call: in the time, and in the params (it is not per
        # sample: the fit learns from all of them together)
        result.seconds += fitted.seconds
        result.params = {
            **result.params,
            "fit_queries": fitted.queries,
            "fit_gradients": fitted.gradients,
            "fit_seconds": fitted.seconds,
        }
        return result

    def _run(self, run: Tracker) -> None:  # pragma: no cover - fit/apply replace the loop
        raise TypeError(f"{self.name} fits one perturbation on a dataset; call fit() or the attack")
