"""The threat model: what the attacker may change, and what counts as success.

A threat model fixes the feasible set for the adversarial point x' = x + δ:

    D(x) = { x' :  ‖x' − x‖_p ≤ ε,  lo ≤ x' ≤ hi,  (Q·(x' − lo)/(hi − lo)) ∈ {0, …, Q} }

where the last (integer) constraint holds only when ``levels = Q + 1`` is given
(``levels=256`` makes every returned image a valid 8-bit image: a multiple of 1/255 when
``bounds=(0, 1)``). ``eps=None`` means "no budget": minimum-norm attacks search for the
smallest ‖δ‖_p themselves. For ``norm="l0"`` the budget counts changed input elements.

``targeted=False`` asks for any label other than the true one; ``targeted=True`` asks for a
given target label.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, replace
from typing import Literal

Norm = Literal["linf", "l2", "l1", "l0"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")

_ALIASES = {
    "inf": "linf",
    "linf": "linf",
    "l_inf": "linf",
    "li": "linf",
    "2": "l2",
    "l2": "l2",
    "1": "l1",
    "l1": "l1",
    "0": "l0",
    "l0": "l0",
}


def parse_norm(norm: str) -> Norm:
    """Canonical norm name for ``norm`` ('linf', 'l2', 'l1', 'l0'; 'inf', '2', ... accepted)."""
    key = str(norm).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    return _ALIASES[key]  # type: ignore[return-value]


@dataclass(frozen=True)
class ThreatModel:
    """Immutable description of the perturbations an attacker may make.

    Args:
        norm: 'linf', 'l2', 'l1' or 'l0' (the norm of δ = x' − x).
        eps: the budget ‖δ‖ ≤ eps; None for minimum-norm attacks. For 'l0', the number of
            input elements that may change (a positive integer).
        bounds: (lo, hi), the valid input range; every returned x' lies inside.
        levels: None, or the number of representable values per element (256 = 8-bit).
        targeted: whether success means "predicted as the target" (True) or "not the true
            label" (False).
    """

    norm: Norm = "linf"
    eps: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    levels: int | None = None
    targeted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm))
        if self.eps is not None:
            if isinstance(self.eps, bool) or not isinstance(self.eps, numbers.Real):
                raise ValueError(f"eps: expected a number or None, got {self.eps!r}")
            if not math.isfinite(self.eps) or self.eps <= 0:
                raise ValueError(f"eps: expected a finite number > 0, got {self.eps!r}")
            if self.norm == "l0" and float(self.eps) != math.floor(self.eps):
                raise ValueError(
                    f"eps: for norm 'l0' eps counts changed elements and must be an integer, "
                    f"got {self.eps!r}"
                )
            object.__setattr__(self, "eps", float(self.eps))
        try:
            lo, hi = (float(b) for b in self.bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds: expected a pair (lo, hi), got {self.bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ValueError(f"bounds: expected finite lo < hi, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))
        if self.levels is not None:
            if (
                isinstance(self.levels, bool)
                or not isinstance(self.levels, numbers.Integral)
                or self.levels < 2
            ):
                raise ValueError(f"levels: expected None or an integer >= 2, got {self.levels!r}")
            object.__setattr__(self, "levels", operator.index(self.levels))
        if not isinstance(self.targeted, bool):
            raise ValueError(f"targeted: expected a bool, got {self.targeted!r}")

    def budget(self) -> float:
        """``eps`` as a float; ``ValueError`` when the threat model has none."""
        if self.eps is None:
            raise ValueError("eps: this attack is fixed-budget and needs eps; got None")
        return self.eps

    @property
    def step(self) -> float | None:
        """Spacing of the value grid, (hi − lo)/(levels − 1), or None without levels."""
        if self.levels is None:
            return None
        return (self.bounds[1] - self.bounds[0]) / (self.levels - 1)

    def with_eps(self, eps: float | None) -> ThreatModel:
        """The same threat model with another budget."""
        return replace(self, eps=eps)

    def replace(self, **changes: object) -> ThreatModel:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        """Short human-readable form, e.g. 'linf eps=0.3 [0,1] 8-bit untargeted'."""
        eps = "min-norm" if self.eps is None else f"eps={self.eps:g}"
        lv = "" if self.levels is None else f" levels={self.levels}"
        kind = "targeted" if self.targeted else "untargeted"
        return f"{self.norm} {eps} [{self.bounds[0]:g},{self.bounds[1]:g}]{lv} {kind}"
