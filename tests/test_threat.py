"""ThreatModel: construction, aliases, immutability, and one ValueError per invalid field."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from advex import ThreatModel
from advex.threat import parse_norm


def test_defaults_and_valid_construction() -> None:
    t = ThreatModel("l2", 0.5, bounds=(-1, 1), levels=256, targeted=True)
    assert t.norm == "l2"
    assert t.eps == 0.5 and isinstance(t.eps, float)
    assert t.bounds == (-1.0, 1.0) and all(isinstance(b, float) for b in t.bounds)
    assert t.levels == 256 and t.targeted is True
    d = ThreatModel()
    assert (d.norm, d.eps, d.bounds, d.levels, d.targeted) == (
        "linf",
        None,
        (0.0, 1.0),
        None,
        False,
    )


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("inf", "linf"),
        ("Linf", "linf"),
        (" l_inf ", "linf"),
        ("li", "linf"),
        ("2", "l2"),
        ("L2", "l2"),
        ("1", "l1"),
        ("0", "l0"),
    ],
)
def test_norm_aliases(alias: str, canonical: str) -> None:
    assert ThreatModel(alias, 1).norm == canonical
    assert parse_norm(alias) == canonical


def test_integer_eps_is_stored_as_float() -> None:
    t = ThreatModel("l0", 3)
    assert t.eps == 3.0 and isinstance(t.eps, float)
    assert ThreatModel("l0", 3.0).eps == 3.0


def test_numpy_scalars_are_numbers() -> None:
    """Budgets often come from numpy (np.arange, np.linspace, arrays of results): np.float32
    and np.int64 are numbers and integers like Python's and must be accepted."""
    assert ThreatModel("linf", np.float32(0.25)).eps == 0.25
    assert ThreatModel("linf", np.float64(0.1)).eps == 0.1
    assert ThreatModel("l0", np.int64(3)).eps == 3.0
    assert ThreatModel("linf", 0.1, levels=np.int64(256)).levels == 256


def test_frozen() -> None:
    t = ThreatModel("linf", 0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.eps = 0.2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.norm = "l2"  # type: ignore[misc]


def test_replace_and_with_eps_validate_again() -> None:
    t = ThreatModel("linf", 0.1)
    assert t.with_eps(0.2).eps == 0.2 and t.eps == 0.1
    assert t.replace(norm="2").norm == "l2"
    with pytest.raises(ValueError, match="eps"):
        t.with_eps(-1.0)
    with pytest.raises(ValueError, match="levels"):
        t.replace(levels=1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"norm": "l3"}, "norm"),
        ({"norm": "euclid"}, "norm"),
        ({"norm": None}, "norm"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"eps": math.inf}, "eps"),
        ({"eps": -math.inf}, "eps"),
        ({"eps": "0.1"}, "eps"),
        ({"eps": [0.1]}, "eps"),
        ({"eps": True}, "eps"),
        ({"norm": "l0", "eps": 2.5}, "eps"),
        ({"norm": "l0", "eps": 0.5}, "eps"),
        ({"bounds": (1.0, 1.0)}, "bounds"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
        ({"bounds": (0.0, math.inf)}, "bounds"),
        ({"bounds": (-math.inf, 1.0)}, "bounds"),
        ({"bounds": (0.0, math.nan)}, "bounds"),
        ({"bounds": (0.0, 1.0, 2.0)}, "bounds"),
        ({"bounds": (0.0,)}, "bounds"),
        ({"bounds": 1.0}, "bounds"),
        ({"bounds": ("a", "b")}, "bounds"),
        ({"bounds": None}, "bounds"),
        ({"levels": 1}, "levels"),
        ({"levels": 0}, "levels"),
        ({"levels": -256}, "levels"),
        ({"levels": 256.0}, "levels"),
        ({"levels": "256"}, "levels"),
        ({"levels": True}, "levels"),
        ({"targeted": 1}, "targeted"),
        ({"targeted": "yes"}, "targeted"),
        ({"targeted": None}, "targeted"),
    ],
)
def test_invalid_field_raises_value_error_naming_it(kwargs: dict, field: str) -> None:
    args = {"norm": "linf", "eps": 0.1} | kwargs
    with pytest.raises(ValueError, match=rf"^{field}:"):
        ThreatModel(**args)


def test_step_of_the_grid() -> None:
    assert ThreatModel(levels=256).step == 1 / 255
    assert ThreatModel(levels=2).step == 1.0
    assert ThreatModel(bounds=(-1, 1), levels=5).step == 0.5
    assert ThreatModel().step is None


def test_describe_mentions_every_field() -> None:
    s = ThreatModel("l2", 0.5, levels=256, targeted=True).describe()
    for part in ("l2", "eps=0.5", "[0,1]", "levels=256", "targeted"):
        assert part in s
    assert "min-norm" in ThreatModel("l2").describe()
    assert "untargeted" in ThreatModel("l2").describe()


def test_budget_returns_eps_or_names_the_field() -> None:
    assert ThreatModel("l2", 0.5).budget() == 0.5
    with pytest.raises(ValueError, match=r"^eps:"):
        ThreatModel("l2").budget()
