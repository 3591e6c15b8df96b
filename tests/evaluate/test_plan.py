"""Plan construction and parsing (advex.evaluate.plan)."""

from __future__ import annotations

import dataclasses

import pytest

from advex.attacks import ATTACKS, PGD
from advex.evaluate.plan import (
    DEFAULT_EPS,
    PlanEntry,
    accepts,
    default_plan,
    grid_plan,
    parse_attacks,
    parse_eps,
)


def test_default_plan_is_the_documented_grid() -> None:
    plan = default_plan()
    got = [(e.attack, e.norm, e.eps) for e in plan]
    linf = [0.05, 0.1, 0.2, 0.3]
    want = [("fgsm", "linf", e) for e in linf] + [("pgd", "linf", e) for e in linf]
    want += [("pgd", "l2", e) for e in (1.0, 2.0, 3.0)] + [("deepfool", "l2", None)]
    assert got == want
    for e in plan:
        if e.attack == "pgd":
            assert dict(e.params) == {"steps": 40, "restarts": 1}
        else:
            assert dict(e.params) == {}


def test_default_plan_steps_only_change_iterative_attacks() -> None:
    plan = default_plan(steps=5)
    assert {e.params.get("steps") for e in plan if e.attack == "pgd"} == {5}
    assert all("steps" not in e.params for e in plan if e.attack == "fgsm")


def test_grid_plan_is_attacks_times_eps() -> None:
    plan = grid_plan(["fgsm", "pgd", "bim"], "l2", [0.5, 1.5], steps=7)
    assert [(e.attack, e.eps) for e in plan] == [
        ("fgsm", 0.5),
        ("fgsm", 1.5),
        ("pgd", 0.5),
        ("pgd", 1.5),
        ("bim", 0.5),
        ("bim", 1.5),
    ]
    assert {e.norm for e in plan} == {"l2"}
    assert plan[2].params["steps"] == 7 and plan[4].params["steps"] == 7
    assert "steps" not in plan[0].params


def test_grid_plan_defaults() -> None:
    plan = grid_plan(norm="inf")
    assert {e.attack for e in plan} == {"fgsm", "pgd"}
    assert sorted({e.eps for e in plan}) == list(DEFAULT_EPS["linf"])
    assert grid_plan(["pgd"], "l2")[0].eps == DEFAULT_EPS["l2"][0]


def test_grid_plan_drops_duplicates() -> None:
    plan = grid_plan(["pgd", "pgd"], "linf", [0.1, 0.1])
    assert len(plan) == 1


@pytest.mark.parametrize(
    ("attacks", "norm", "eps", "match"),
    [
        (["nope"], "linf", [0.1], "unknown attack 'nope'"),
        (["pgd"], "l0", [1.0], "supports linf, l2, l1"),
        (["pgd"], "l7", [1.0], "norm"),
        (["pgd"], "linf", [-0.1], "eps"),
        (["pgd"], "linf", [float("nan")], "eps"),
        ([], "linf", [0.1], "at least one"),
        (["pgd"], "linf", [], "at least one"),
    ],
)
def test_grid_plan_rejects_bad_settings(attacks, norm, eps, match) -> None:
    with pytest.raises(ValueError, match=match):
        grid_plan(attacks, norm, eps)


def test_plan_entry_is_frozen_hashable_and_builds_the_attack() -> None:
    entry = PlanEntry("pgd", "2", 1.0, {"steps": 3})
    assert entry.norm == "l2"
    assert entry == PlanEntry("pgd", "l2", 1.0, {"steps": 3})
    assert len({entry, PlanEntry("pgd", "l2", 1.0, {"steps": 3})}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.eps = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.params["steps"] = 4  # type: ignore[index]
    attack = entry.build(levels=256, seed=3, batch_size=8)
    assert isinstance(attack, PGD)
    assert attack.steps == 3 and attack.seed == 3 and attack.batch_size == 8
    assert attack.threat.levels == 256 and attack.threat.eps == 1.0
    assert not attack.threat.targeted
    assert entry.label == "pgd l2 ε=1"
    assert entry.to_dict() == {"attack": "pgd", "norm": "l2", "eps": 1.0, "params": {"steps": 3}}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attack": "pgd", "norm": "linf", "eps": None}, "needs an eps"),
        ({"attack": "pgd", "norm": "linf", "eps": 0.0}, "eps"),
        ({"attack": "pgd", "norm": "linf", "eps": True}, "eps"),
        ({"attack": "pgd", "norm": "linf", "eps": 0.1, "params": {"seed": 1}}, "seed"),
        ({"attack": "fgsm", "norm": "linf", "eps": 0.1, "params": {"steps": 3}}, "steps"),
        ({"attack": "fgsm", "norm": "lx", "eps": 0.1}, "norm"),
    ],
)
def test_plan_entry_rejects_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PlanEntry(**kwargs)


def test_parse_attacks() -> None:
    assert parse_attacks("fgsm, PGD,,pgd") == ["fgsm", "pgd"]
    assert parse_attacks(["fgsm", "bim,illc"]) == ["fgsm", "bim", "illc"]
    with pytest.raises(ValueError, match="unknown attack 'foo'"):
        parse_attacks("fgsm,foo")
    with pytest.raises(ValueError, match="attacks"):
        parse_attacks(" , ")


def test_parse_eps() -> None:
    assert parse_eps("0.1,0.3") == [0.1, 0.3]
    assert parse_eps("8/255") == [8 / 255]
    assert parse_eps(["1", "2,2"]) == [1.0, 2.0]
    for bad in ("abc", "-0.1", "0", "inf", "nan", "1/0", ""):
        with pytest.raises(ValueError, match="eps"):
            parse_eps(bad)


def test_accepts() -> None:
    assert accepts("pgd", "steps")
    assert not accepts("fgsm", "steps")
    assert set(ATTACKS) >= {"fgsm", "pgd"}
    with pytest.raises(ValueError, match="unknown attack"):
        accepts("nope", "steps")


def test_grid_plan_runs_minimum_norm_attacks_once_without_eps() -> None:
    plan = grid_plan(["pgd", "deepfool"], "l2", steps=5)
    assert [(e.attack, e.eps) for e in plan if e.attack == "deepfool"] == [("deepfool", None)]
    assert [e.eps for e in plan if e.attack == "pgd"] == list(DEFAULT_EPS["l2"])
    # with explicit budgets, a minimum-norm attack answers "is there one inside ε?" per budget
    plan = grid_plan(["deepfool"], "l2", [0.5, 1.0])
    assert [e.eps for e in plan] == [0.5, 1.0]
