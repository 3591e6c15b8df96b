"""The evaluation attacks models with randomized or non-differentiable defenses adaptively (BPDA,
EOT), says so in its results, and resumes such runs exactly; the CLI's --defense reaches them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from advex import data, zoo
from advex.cli import app
from advex.defenses.base import defend
from advex.defenses.transforms import BitDepth, GaussianNoise
from advex.evaluate import run_evaluation
from advex.evaluate.plan import PlanEntry
from advex.evaluate.store import Store, StoreError
from advex.evaluate.stored import entry_key

runner = CliRunner()


@pytest.fixture(scope="module")
def mnist():
    x, y = data.load("mnist5k", split="test")
    return zoo.load("mnist_cnn"), x[:50], y[:50]


def test_a_bit_depth_defense_is_attacked_adaptively(mnist) -> None:
    """Measured (50 images, L∞ ε = 0.2, PGD-10, 2 bits): naive 96 %, adaptive 0 % robust."""
    clf, x, y = mnist
    models = {"plain": clf, "bits": defend(clf, BitDepth(bits=2))}
    plan = [PlanEntry("pgd", "linf", 0.2, {"steps": 10})]
    adaptive = run_evaluation(models, x, y, plan, progress=False)
    naive = run_evaluation(models, x, y, plan, progress=False, adaptive=False)
    robust = {r.model: r.result.robust_accuracy for r in adaptive.records}
    naive_robust = {r.model: r.result.robust_accuracy for r in naive.records}
    assert naive_robust["bits"] >= 0.9 and robust["bits"] <= 0.1
    assert robust["plain"] == naive_robust["plain"]  # nothing to adapt on the plain model
    info = adaptive.adaptive["bits"]
    assert set(adaptive.adaptive) == {"bits"} and info["adaptive"] is True
    assert info["bpda"] == "surrogate" and info["eot_samples"] is None
    assert info["nondifferentiable"] and not info["randomized"]
    assert naive.adaptive["bits"]["adaptive"] is False and naive.adaptive["bits"]["bpda"] is None
    doc = adaptive.to_dict()
    assert doc["adaptive"]["bits"]["adaptive"] is True
    rows = {r["model"]: r for r in doc["rows"]}
    assert rows["bits"]["params"]["adaptive"] == {"eot_samples": None, "bpda": "surrogate"}
    assert "adaptive" not in rows["plain"]["params"]
    assert "adaptive" not in naive.to_dict()["rows"][1]["params"]


def test_run_evaluation_rejects_bad_adaptive_settings(mnist) -> None:
    clf, x, y = mnist
    plan = [PlanEntry("fgsm", "linf", 0.1)]
    with pytest.raises(ValueError, match="eot_samples"):
        run_evaluation({"m": clf}, x, y, plan, progress=False, eot_samples=0)
    with pytest.raises(ValueError, match="bpda"):
        run_evaluation({"m": clf}, x, y, plan, progress=False, bpda="straight")


def _same(a, b) -> None:
    assert [(r.model, r.entry) for r in a.records] == [(r.model, r.entry) for r in b.records]
    for ra, rb in zip(a.records, b.records, strict=True):
        for name in type(ra.result).PER_SAMPLE:
            va, vb = getattr(ra.result, name), getattr(rb.result, name)
            assert (va is None) == (vb is None), name
            if va is not None:
                assert torch.equal(va, vb), (ra.entry.label, name)
        assert [f.to_dict() for f in ra.flags] == [f.to_dict() for f in rb.flags]
    assert all(torch.equal(a.clean_pred[k], b.clean_pred[k]) for k in a.clean_pred)


def test_a_randomized_model_resumes_to_the_uninterrupted_result(digits, tmp_path: Path) -> None:
    """Every draw is seeded (clean predictions, each batch's attack and re-check), so a run
    interrupted after one batch resumes to exactly the uninterrupted result."""
    models = {"noisy": defend(digits.model, GaussianNoise(0.1))}
    x, y = digits.x[:40], digits.y[:40]
    plan = [
        PlanEntry("pgd", "linf", 0.1, {"steps": 4}),
        PlanEntry("fast", "linf", 0.2, {"steps": 3}),  # an ensemble with sanity checks
    ]
    settings = {"batch_size": 16, "progress": False, "eot_samples": 3}
    full = run_evaluation(models, x, y, plan, **settings)
    _same(full, run_evaluation(models, x, y, plan, **settings))
    assert full.adaptive["noisy"]["eot_samples"] == 3
    flags = {f.name: f for r in full.records for f in r.flags}
    assert not flags["randomized_model"].fired and "EOT" in flags["randomized_model"].message
    assert not flags["nondeterministic"].fired
    with Store(tmp_path) as store:
        run_evaluation(models, x, y, plan, store=store, **settings)
        key = entry_key(plan[1])
        conn = store._conn
        conn.execute("DELETE FROM batches WHERE entry=? AND batch>0", (key,))
        conn.execute("DELETE FROM results WHERE entry=? AND idx>=16", (key,))
        conn.execute("DELETE FROM completed WHERE entry<>?", (entry_key(plan[0]),))
        resumed = run_evaluation(models, x, y, plan, store=store, **settings)
    _same(full, resumed)
    with Store(tmp_path) as store, pytest.raises(StoreError, match="adaptive"):
        run_evaluation(models, x, y, plan, store=store, **{**settings, "eot_samples": 5})
    shutil.rmtree(tmp_path)


def _evaluate(out: Path, *extra: str):
    args = ["evaluate", "--model", "zoo:mnist_cnn", "--attacks", "pgd", "--eps", "0.2"]
    args += ["--n", "40", "--steps", "10", "--out", str(out), "--no-progress", *extra]
    return runner.invoke(app, args)


def test_cli_defense_is_attacked_adaptively_unless_told_not_to(tmp_path: Path) -> None:
    adaptive = _evaluate(tmp_path / "a", "--defense", "bitdepth:bits=2")
    assert adaptive.exit_code == 0, adaptive.output
    assert "adaptive: mnist_cnn" in adaptive.stdout and "BPDA" in adaptive.stdout
    naive = _evaluate(tmp_path / "n", "--defense", "bitdepth:bits=2", "--no-adaptive")
    assert naive.exit_code == 0, naive.output
    assert "NOT adaptive" in naive.stdout
    docs = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "n")]
    robust = [d["rows"][0]["robust_accuracy"] for d in docs]
    assert robust[1] >= 0.9 and robust[0] <= 0.1  # measured: 97.5 % naive, 0 % adaptive
    assert docs[0]["adaptive"]["mnist_cnn"]["adaptive"] is True
    assert docs[1]["adaptive"]["mnist_cnn"]["adaptive"] is False
    assert docs[0]["config"]["defenses"] == ["bitdepth:bits=2"]
    # --resume continues with the stored defenses and refuses others
    again = runner.invoke(app, ["evaluate", "--resume", str(tmp_path / "a"), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "a" / "results.json").read_text())["rows"] == docs[0]["rows"]
    other = runner.invoke(app, ["evaluate", "--resume", str(tmp_path / "a"), "--defense", "flip"])
    assert other.exit_code == 2 and "--defense" in other.output
    naive_resume = runner.invoke(
        app, ["evaluate", "--resume", str(tmp_path / "a"), "--no-adaptive"]
    )
    assert naive_resume.exit_code == 2 and "--adaptive" in naive_resume.output


def test_cli_randomized_defense_records_its_eot_draws(tmp_path: Path) -> None:
    args = ["--defense", "noise:sigma=0.1", "--defense", "bitdepth:bits=4", "--eot-samples", "2"]
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            "zoo:mnist_cnn",
            "--attacks",
            "fgsm",
            "--eps",
            "0.1",
            "--n",
            "20",
            "--out",
            str(tmp_path),
            "--no-progress",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "results.json").read_text())["adaptive"]["mnist_cnn"]
    assert info["eot_samples"] == 2 and info["bpda"] == "surrogate"
    assert [d.split("(")[0] for d in info["defenses"]] == ["GaussianNoise", "BitDepth"]
    assert "EOT over 2 draws" in result.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jpg", "unknown defense 'jpg'"),
        ("jpeg:qualty=75", "jpeg takes quality"),
        ("jpeg:quality=500", "quality"),
        ("noise", "noise needs sigma"),
        ("bitdepth:bits", "KEY=VALUE"),
    ],
)
def test_cli_bad_defense_specs_are_clear_errors(spec: str, message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--defense", spec, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--defense" in result.output and message in result.output
