"""Checks of attack settings: each returns the value (converted) or raises ValueError naming it.

A bool is never accepted as a number (``True`` is an ``int`` in Python), and numbers must be
finite.
"""

from __future__ import annotations

import math

__all__ = ["above", "fraction", "non_negative", "non_negative_int", "positive", "positive_int"]


def _number(name: str, value: object, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    """An integer ≥ 1 (steps, restarts, search steps, ...)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: object) -> int:
    """An integer ≥ 0 (offsets, counts that may be zero)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return value


def positive(name: str, value: object) -> float:
    """A finite number > 0 (step sizes, constants)."""
    v = _number(name, value, "a finite number > 0")
    if v <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return v


def non_negative(name: str, value: object) -> float:
    """A finite number ≥ 0 (confidence κ, overshoot, tolerances)."""
    v = _number(name, value, "a finite number >= 0")
    if v < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return v


def above(name: str, value: object, bound: float, bound_name: str | None = None) -> float:
    """A finite number > ``bound`` (named ``bound_name`` in the message when it is a setting)."""
    what = f"{bound_name}={bound!r}" if bound_name else f"{bound!r}"
    v = _number(name, value, f"a finite number > {what}")
    if v <= bound:
        raise ValueError(f"{name}: expected a finite number > {what}, got {value!r}")
    return v


def fraction(name: str, value: object, *, closed: bool = False) -> float:
    """A number in (0, 1), or in (0, 1] with ``closed``."""
    interval = "(0, 1]" if closed else "(0, 1)"
    v = _number(name, value, f"a number in {interval}")
    if not (0 < v < 1 or (closed and v == 1)):
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return v


def flag(name: str, value: object) -> bool:
    """A bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return value


def no_eps(eps: object, reason: str) -> None:
    """Attacks whose change is measured by their own metric take no Lp budget: ``eps`` must be
    None. ``reason`` says what bounds the change instead."""
    if eps is not None:
        raise ValueError(f"threat.eps: {reason}, not an Lp budget; use eps=None (got eps={eps!r})")
