"""Checks of attack settings: values pass through converted, bad ones raise naming the setting."""

from __future__ import annotations

import math

import pytest

from advex.attacks import checks


def test_good_values_pass_through() -> None:
    assert checks.positive_int("steps", 3) == 3
    assert checks.positive("step_size", 2) == 2.0 and isinstance(checks.positive("c", 2), float)
    assert checks.non_negative("kappa", 0) == 0.0
    assert checks.fraction("gamma", 0.5) == 0.5
    assert checks.fraction("gamma", 1, closed=True) == 1.0
    assert checks.above("factor", 2, 1.0) == 2.0


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (checks.positive_int, 0),
        (checks.positive_int, 2.0),
        (checks.positive_int, True),
        (checks.positive, 0.0),
        (checks.positive, -1),
        (checks.positive, math.inf),
        (checks.positive, math.nan),
        (checks.positive, False),
        (checks.positive, "1"),
        (checks.non_negative, -1e-9),
        (checks.non_negative, math.nan),
        (checks.fraction, 0.0),
        (checks.fraction, 1.0),
        (lambda name, v: checks.above(name, v, 1.0), 1.0),
        (lambda name, v: checks.above(name, v, 1e-3, "initial_const"), 1e-4),
    ],
)
def test_bad_values_raise_naming_the_setting(check, value) -> None:
    with pytest.raises(ValueError, match=r"^setting: expected"):
        check("setting", value)
