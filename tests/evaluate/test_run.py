"""run_evaluation, write_results and the HTML report on a small trained model (conftest.digits)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from advex.evaluate import (
    EvaluationResult,
    PlanEntry,
    grid_plan,
    render_report,
    run_evaluation,
    write_report,
    write_results,
)
from advex.evaluate.report import example_entry


@pytest.fixture(scope="module")
def evaluation(digits) -> EvaluationResult:
    torch.manual_seed(5)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    plan = grid_plan(["fgsm", "pgd"], "linf", [0.05, 0.2], steps=5)
    plan += grid_plan(["pgd"], "l2", [1.0], steps=5)
    plan += grid_plan(["deepfool"], "l2", steps=5)  # minimum norm: once, eps=None
    x, y = digits.x[:24], digits.y[:24]
    y = y.clone()
    y[0] = (y[0] + 1) % 10  # one clean mistake for the trained model
    return run_evaluation({"mlp": digits.model, "<b>rand</b>": other}, x, y, plan, progress=False)


def test_one_record_per_model_and_entry(evaluation: EvaluationResult) -> None:
    got = [(r.model, r.entry.attack, r.entry.norm, r.entry.eps) for r in evaluation.records]
    want = [(m, e.attack, e.norm, e.eps) for m in ("mlp", "<b>rand</b>") for e in evaluation.plan]
    assert got == want
    for r in evaluation.records:
        assert len(r.result) == 24
        assert r.result.x_adv.device.type == "cpu"
        assert torch.equal(r.result.clean_pred, evaluation.clean_pred[r.model])


def test_rows_are_consistent(evaluation: EvaluationResult) -> None:
    rows = evaluation.rows()
    assert len(rows) == len(evaluation.records)
    for row in rows:
        for key in ("clean_accuracy", "robust_accuracy"):
            assert 0.0 <= row[key] <= 1.0
        assert row["robust_accuracy"] <= row["clean_accuracy"]
        assert row["clean_accuracy"] == evaluation.clean_accuracy(row["model"])
        assert row["n"] == 24 and row["queries"] >= row["n"]
        if row["median_distance"] is not None and row["eps"] is not None:
            assert row["median_distance"] <= row["eps"] * (1 + 1e-5) + 1e-6
    assert evaluation.clean_accuracy("mlp") == pytest.approx(23 / 24)


def test_worst_case_below_every_attack(evaluation: EvaluationResult) -> None:
    worst = evaluation.worst_case()
    assert {(w["model"], w["eps"]) for w in worst} == {
        (m, e) for m in ("mlp", "<b>rand</b>") for e in (0.05, 0.2)
    }
    rows = evaluation.rows()
    for w in worst:
        same = [
            r for r in rows if (r["model"], r["norm"], r["eps"]) == (w["model"], "linf", w["eps"])
        ]
        assert w["robust_accuracy"] <= min(r["robust_accuracy"] for r in same)


def test_same_seed_same_result(digits) -> None:
    plan = [PlanEntry("pgd", "l2", 1.0, {"steps": 3})]
    a = run_evaluation({"m": digits.model}, digits.x[:8], digits.y[:8], plan, seed=4)
    b = run_evaluation({"m": digits.model}, digits.x[:8], digits.y[:8], plan, seed=4)
    assert torch.equal(a.records[0].result.x_adv, b.records[0].result.x_adv)


def test_levels_keep_points_on_the_grid(digits) -> None:
    plan = [PlanEntry("pgd", "linf", 0.1, {"steps": 3})]
    res = run_evaluation({"m": digits.model}, digits.x[:8], digits.y[:8], plan, levels=256)
    k = res.records[0].result.x_adv * 255
    assert torch.allclose(k, k.round(), atol=1e-3)


def test_setup_errors_come_before_any_attack(digits) -> None:
    plan = [PlanEntry("pgd", "linf", 0.1)]
    x, y = digits.x[:4], digits.y[:4]
    with pytest.raises(ValueError, match="levels: 4 of 4 samples are not on the grid"):
        run_evaluation({"m": digits.model}, (x + 0.001).clamp(max=1), y, plan, levels=256)
    with pytest.raises(ValueError, match="model 'big': cannot run on inputs of shape"):
        run_evaluation({"big": nn.Sequential(nn.Flatten(), nn.Linear(784, 10))}, x, y, plan)
    with pytest.raises(ValueError, match="has 3 outputs"):
        run_evaluation({"k3": nn.Sequential(nn.Flatten(), nn.Linear(64, 3))}, x, y + 3, plan)
    with pytest.raises(ValueError, match=r"fake_image linf ε=0\.1: threat\.targeted"):
        run_evaluation({"m": digits.model}, x, y, [PlanEntry("fake_image", "linf", 0.1)])
    with pytest.raises(ValueError, match="at least one model"):
        run_evaluation({}, x, y, plan)
    with pytest.raises(ValueError, match="x: values must lie in bounds"):
        run_evaluation({"m": digits.model}, x * 2, y, plan)


def test_write_results_is_strict_json(evaluation: EvaluationResult, tmp_path) -> None:
    path = write_results(evaluation, tmp_path / "sub" / "results.json", {"data": "digits"})
    doc = json.loads(path.read_text())
    for key in ("advex_version", "torch_version", "date", "total_seconds", "n", "seed", "data"):
        assert key in doc
    assert doc["n"] == 24 and doc["data"] == "digits"
    assert set(doc["models"]) == {"mlp", "<b>rand</b>"}
    assert len(doc["rows"]) == len(evaluation.records)
    assert len(doc["plan"]) == len(evaluation.plan)
    assert "NaN" not in path.read_text()


def test_example_entry_is_strongest_at_middle_eps(evaluation: EvaluationResult) -> None:
    entry = example_entry(evaluation)
    assert entry.norm == "linf" and entry.eps == 0.2
    mean = {
        e.attack: sum(evaluation.result(m, e).robust_accuracy for m in evaluation.model_names)
        for e in evaluation.plan
        if e.norm == "linf" and e.eps == 0.2
    }
    assert mean[entry.attack] == min(mean.values())


def test_report_is_self_contained_and_escaped(evaluation: EvaluationResult, tmp_path) -> None:
    html = render_report(evaluation, title="t <x>", metadata={"data": "a&b"}, examples=3)
    assert html.startswith("<!DOCTYPE html>")
    imgs = re.findall(r'<img src="([^"]*)"', html)
    # linf and l2 accuracy plots, the l2 distance CDF (deepfool), one example grid per model
    assert len(imgs) == 2 + 1 + 2
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "<table" in html and "robust acc." in html
    assert "&lt;b&gt;rand&lt;/b&gt;" in html and "<b>rand</b>" not in html
    assert "t &lt;x&gt;" in html and "a&amp;b" in html
    assert not re.search(r'(src|href)="(http|//)', html)
    assert "<script" not in html
    path = write_report(evaluation, tmp_path / "r.html", examples=0)
    assert "<img" in path.read_text() and "No examples requested" in path.read_text()


def test_minimum_norm_entry_in_rows_and_report(evaluation: EvaluationResult) -> None:
    rows = [r for r in evaluation.rows() if r["attack"] == "deepfool"]
    assert len(rows) == 2 and all(r["eps"] is None for r in rows)
    mlp = next(r for r in rows if r["model"] == "mlp")
    assert 0 < mlp["rho_adv"] < 1 and mlp["median_distance"] > 0
    html = render_report(evaluation, examples=0)
    assert ">min<" in html  # the budget column of a minimum-norm row
