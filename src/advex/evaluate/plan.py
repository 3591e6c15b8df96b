"""What an evaluation runs: a list of ``PlanEntry`` (attack × norm × ε, with the attack's settings).

A plan is data, not code: each entry names an attack from the catalogue (``advex.attacks.ATTACKS``),
the norm and budget of its threat model, and the keyword arguments the attack is built with. The
runner (``advex.evaluate.run``) turns an entry into an attack with ``PlanEntry.build``; nothing
here touches a model or data.

The default plan is the one ``advex evaluate`` runs: FGSM and PGD at L∞ ε ∈ {0.05, 0.1, 0.2,
0.3}, PGD at L2 ε ∈ {1, 2, 3} (PGD: 40 steps, 1 restart), and DeepFool L2 without a budget
(the minimal perturbation per sample). ``grid_plan`` builds the cross
product attacks × one norm × several ε that the command line's ``--attacks/--norm/--eps`` ask for.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from advex.attacks import ATTACKS, Attack
from advex.threat import Norm, ThreatModel, parse_norm

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS",
    "PlanEntry",
    "accepts",
    "default_plan",
    "grid_plan",
    "parse_attacks",
    "parse_eps",
]

#: Attacks run when only ``--norm``/``--eps`` are given.
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd")

#: The ε grid per norm used when ``--eps`` is not given (inputs in [0, 1], MNIST-sized).
DEFAULT_EPS: dict[str, tuple[float, ...]] = {
    "linf": (0.05, 0.1, 0.2, 0.3),
    "l2": (1.0, 2.0, 3.0),
    "l1": (5.0, 10.0, 15.0),
    "l0": (5.0, 10.0, 20.0),
}

#: PGD's settings in the default plan.
DEFAULT_PGD: dict[str, Any] = {"steps": 40, "restarts": 1}


def accepts(attack: str, param: str) -> bool:
    """Whether the catalogue attack ``attack`` takes the keyword argument ``param``."""
    cls = _attack_class(attack)
    return param in inspect.signature(cls.__init__).parameters


def _attack_class(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise ValueError(f"attack: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    return ATTACKS[name]


@dataclass(frozen=True)
class PlanEntry:
    """One attack at one budget: ``ATTACKS[attack](ThreatModel(norm, eps, ...), **params)``.

    Args:
        attack: a catalogue name (``advex.attacks.ATTACKS``).
        norm: the threat model's norm ('linf', 'l2', 'l1', 'l0'; aliases accepted).
        eps: the budget; None only for attacks that do not need one.
        params: keyword arguments for the attack (not ``seed``/``batch_size``: those come from
            the run).

    Raises:
        ValueError: unknown attack, a norm the attack does not support, a missing or
            non-positive eps, or params the attack does not take.
    """

    attack: str
    norm: Norm
    eps: float | None
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        cls = _attack_class(self.attack)
        norm = parse_norm(self.norm)
        object.__setattr__(self, "norm", norm)
        if norm not in cls.norms:
            raise ValueError(
                f"norm: attack {self.attack!r} supports {', '.join(cls.norms)}, got {norm!r}"
            )
        if self.eps is None:
            if cls.needs_eps:
                raise ValueError(f"eps: attack {self.attack!r} needs an eps")
        else:
            if isinstance(self.eps, bool) or not isinstance(self.eps, int | float):
                raise ValueError(f"eps: expected a number, got {self.eps!r}")
            if not (math.isfinite(self.eps) and self.eps > 0):
                raise ValueError(f"eps: expected a finite number > 0, got {self.eps!r}")
            object.__setattr__(self, "eps", float(self.eps))
        params = dict(self.params)
        names = inspect.signature(cls.__init__).parameters
        for key in params:
            if key in ("seed", "batch_size", "threat", "self") or key not in names:
                raise ValueError(f"params: attack {self.attack!r} does not take {key!r}")
        object.__setattr__(self, "params", MappingProxyType(params))

    @property
    def label(self) -> str:
        """Short name, e.g. 'pgd linf ε=0.1'."""
        eps = "" if self.eps is None else f" ε={self.eps:g}"
        return f"{self.attack} {self.norm}{eps}"

    def threat(
        self, *, bounds: tuple[float, float] = (0.0, 1.0), levels: int | None = None
    ) -> ThreatModel:
        """The untargeted threat model of this entry."""
        return ThreatModel(norm=self.norm, eps=self.eps, bounds=bounds, levels=levels)

    def build(
        self,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        levels: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> Attack:
        """The configured attack (raises ``ValueError`` if the attack rejects the setting)."""
        cls = _attack_class(self.attack)
        threat = self.threat(bounds=bounds, levels=levels)
        return cls(threat, seed=seed, batch_size=batch_size, **dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "norm": self.norm,
            "eps": self.eps,
            "params": dict(self.params),
        }


def default_plan(*, steps: int | None = None) -> list[PlanEntry]:
    """FGSM and PGD at L∞ ε ∈ {0.05, 0.1, 0.2, 0.3}; PGD at L2 ε ∈ {1, 2, 3}; DeepFool L2
    (minimum norm: its distances give robust accuracy at every L2 ε, and ρ_adv).

    Args:
        steps: PGD's number of steps (default 40).
    """
    pgd = dict(DEFAULT_PGD)
    if steps is not None:
        pgd["steps"] = steps
    linf = DEFAULT_EPS["linf"]
    plan = [PlanEntry("fgsm", "linf", eps) for eps in linf]
    plan += [PlanEntry("pgd", "linf", eps, pgd) for eps in linf]
    plan += [PlanEntry("pgd", "l2", eps, pgd) for eps in DEFAULT_EPS["l2"]]
    plan.append(PlanEntry("deepfool", "l2", None))
    return plan


def grid_plan(
    attacks: Sequence[str] | None = None,
    norm: str | None = None,
    eps: Sequence[float] | None = None,
    *,
    steps: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PlanEntry]:
    """The cross product attacks × norm × eps, in that order (attack-major).

    Args:
        attacks: catalogue names; default ``DEFAULT_ATTACKS``.
        norm: one norm; default 'linf'.
        eps: budgets; default ``DEFAULT_EPS[norm]`` — except for minimum-norm attacks
            (those that do not need an eps), which then run once with ``eps=None`` and report
            the smallest perturbation they find per sample.
        steps: number of steps for every attack that takes ``steps`` (ignored by the others).
        params: extra keyword arguments per attack name.

    Raises:
        ValueError: an unknown attack, a norm an attack does not support, a bad eps, or an
            empty list.
    """
    names = list(DEFAULT_ATTACKS if attacks is None else attacks)
    if not names:
        raise ValueError("attacks: expected at least one attack")
    for name in names:
        _attack_class(name)
    canonical = parse_norm(norm if norm is not None else "linf")
    budgets: list[float | None] = list(DEFAULT_EPS[canonical] if eps is None else eps)
    if not budgets:
        raise ValueError("eps: expected at least one value")
    extra = params or {}
    plan = []
    for name in _unique(names):
        kwargs: dict[str, Any] = {}
        if name == "pgd":
            kwargs.update(DEFAULT_PGD)
        if steps is not None and accepts(name, "steps"):
            kwargs["steps"] = steps
        kwargs.update(extra.get(name, {}))
        minimum_norm = eps is None and not ATTACKS[name].needs_eps
        for e in [None] if minimum_norm else _unique(budgets):
            plan.append(PlanEntry(name, canonical, e, kwargs))
    return plan


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_attacks(text: str | Sequence[str]) -> list[str]:
    """Attack names from 'fgsm,pgd' (or a list of such strings); unknown names raise ValueError."""
    items = [text] if isinstance(text, str) else list(text)
    names = [name.lower() for item in items for name in _split(item)]
    if not names:
        raise ValueError("attacks: expected a comma-separated list of attack names")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(
            f"attacks: unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}"
        )
    return _unique(names)


def parse_eps(text: str | Sequence[str]) -> list[float]:
    """Budgets from '0.1,0.3' or '8/255' (or a list of such strings); each must be finite > 0."""
    items = [text] if isinstance(text, str) else list(text)
    parts = [p for item in items for p in _split(item)]
    if not parts:
        raise ValueError("eps: expected a comma-separated list of positive numbers")
    values = []
    for part in parts:
        value = _number(part)
        if value is None or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"eps: expected positive numbers (e.g. 0.1,0.3 or 8/255), got {part!r}"
            )
        values.append(value)
    return _unique(values)


def _number(text: str) -> float | None:
    """A float from '0.1' or a fraction 'a/b'; None if it does not parse."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None
