"""The ``advex`` command line (typer's CliRunner; real zoo models and the bundled data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advex.attacks import ATTACKS
from advex.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments: str) -> None:
    """Non-zero exit, no traceback, and a message containing every fragment."""
    assert result.exit_code != 0, result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluate")
    args = ["evaluate", "--n", "16", "--attacks", "fgsm,pgd", "--eps", "0.1,0.3", "--steps", "5"]
    result = invoke(*args, "--out", out, "--examples", "3")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    return out


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("evaluate", "attack", "zoo", "attacks"):
        assert command in result.output
    assert invoke("evaluate", "--help").exit_code == 0
    assert invoke("--version").output.startswith("advex ")


def test_evaluate_writes_results_matching_the_plan(evaluated: Path) -> None:
    doc = json.loads((evaluated / "results.json").read_text())
    for key in (
        "advex_version",
        "torch_version",
        "device",
        "date",
        "total_seconds",
        "config",
        "command",
        "data",
        "n",
        "seed",
    ):
        assert key in doc, key
    assert doc["data"] == "mnist5k" and doc["n"] == 16 and doc["seed"] == 0
    assert set(doc["models"]) == {"mnist_cnn", "mnist_cnn_pgd"}
    keys = [(r["model"], r["attack"], r["norm"], r["eps"]) for r in doc["rows"]]
    assert keys == [
        (m, a, "linf", e)
        for m in ("mnist_cnn", "mnist_cnn_pgd")
        for a in ("fgsm", "pgd")
        for e in (0.1, 0.3)
    ]
    for row in doc["rows"]:
        for key in ("clean_accuracy", "robust_accuracy", "success_rate", "median_distance"):
            assert key in row
        assert row["n"] == 16
        assert 0 <= row["robust_accuracy"] <= row["clean_accuracy"] <= 1
        assert row["clean_accuracy"] == doc["models"][row["model"]]["clean_accuracy"]
        assert row["success_rate"] is None or 0 <= row["success_rate"] <= 1
        if row["median_distance"] is not None:
            assert 0 < row["median_distance"] <= row["eps"] + 1e-5
        assert row["seconds"] >= 0 and row["queries"] >= 16 and row["mean_queries"] >= 1
        if row["attack"] == "pgd":
            assert row["params"]["steps"] == 5 and row["params"]["restarts"] == 1
        # robust + broken-by-attack + clean mistakes = n
        assert row["n_robust"] <= row["n_clean_correct"]
    for w in doc["worst_case"]:
        same = [r for r in doc["rows"] if (r["model"], r["eps"]) == (w["model"], w["eps"])]
        assert w["robust_accuracy"] <= min(r["robust_accuracy"] for r in same)


def test_evaluate_writes_a_self_contained_report(evaluated: Path) -> None:
    html = (evaluated / "report.html").read_text()
    assert "<img" in html and "<table" in html
    # one linf plot, 2 example grids, one transfer heat map (two models)
    assert html.count('src="data:image/png;base64,') == 1 + 2 + 1
    assert 'id="transfer"' in html
    assert not re.search(r'(src|href)="(http|//)', html)
    assert "mnist_cnn_pgd" in html and "scaled for visibility" in html


def test_evaluate_default_plan_rows(tmp_path: Path) -> None:
    result = invoke("evaluate", "--n", "4", "--steps", "2", "--examples", "0", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    per_model = [
        (r["attack"], r["norm"], r["eps"]) for r in doc["rows"] if r["model"] == "mnist_cnn"
    ]
    assert per_model == [("fgsm", "linf", e) for e in (0.05, 0.1, 0.2, 0.3)] + [
        ("pgd", "linf", e) for e in (0.05, 0.1, 0.2, 0.3)
    ] + [("pgd", "l2", e) for e in (1.0, 2.0, 3.0)] + [("deepfool", "l2", None)]
    assert len(doc["rows"]) == 24


def test_evaluate_weights_file_with_arch(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from advex.zoo.architectures import build

    weights = tmp_path / "my_mlp.safetensors"
    save_file(build("digits_mlp").state_dict(), str(weights))
    result = invoke(
        "evaluate",
        "--model", weights,
        "--arch", "digits_mlp",
        "--data", "digits",
        "--n", "8",
        "--attacks", "pgd",
        "--norm", "l2",
        "--eps", "0.5",
        "--steps", "2",
        "--levels", "17",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(doc["models"]) == ["my_mlp"] and doc["levels"] == 17
    assert [(r["attack"], r["norm"], r["eps"]) for r in doc["rows"]] == [("pgd", "l2", 0.5)]
    no_arch = invoke("evaluate", "--model", weights, "--data", "digits", "--out", tmp_path / "x")
    assert_clean_error(no_arch, "--arch")
    bad_arch = invoke(
        "evaluate", "--model", weights, "--arch", "mnist_cnn", "--data", "digits",
        "--out", tmp_path / "x",
    )  # fmt: skip
    assert_clean_error(bad_arch, "do not fit architecture")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--attacks", "fgsm,nope"], ["--attacks", "unknown attack 'nope'"]),
        (["--eps", "abc"], ["--eps", "'abc'"]),
        (["--eps", "0.1,-0.2"], ["--eps", "'-0.2'"]),
        (["--attacks", "pgd", "--norm", "l0"], ["--norm", "'pgd' does not support l0"]),
        (["--norm", "l9"], ["--norm"]),
        (["--model", "zoo:nope"], ["--model zoo:nope", "unknown zoo model"]),
        (["--model", "missing.safetensors", "--arch", "mnist_cnn"], ["no such weights file"]),
        (["--model", "missing.safetensors"], ["no such weights file"]),
        (["--model", "zoo:mnist_cnn,mnist_mlp.pt"], ["no such weights file", "zoo models"]),
        (["--data", "nope"], ["--data nope", "unknown dataset"]),
        (["--data", "digits", "--model", "zoo:mnist_cnn"], ["mnist_cnn", "cannot run on inputs"]),
        (["--data", "digits", "--model", "zoo:digits_mlp", "--levels", "256"], ["--levels"]),
        (["--attacks", "fake_image"], ["fake_image", "targeted"]),
        (["--split", "nope"], ["split"]),
    ],
)
def test_evaluate_bad_flags(args: list[str], fragments: list[str], tmp_path: Path) -> None:
    result = invoke("evaluate", "--n", "4", "--out", tmp_path, *args)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("args", [["--n", "0"], ["--steps", "0"], ["--bogus"]])
def test_evaluate_usage_errors(args: list[str]) -> None:
    result = invoke("evaluate", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_attack_pgd_saves_npz(tmp_path: Path) -> None:
    out = tmp_path / "adv.npz"
    result = invoke(
        "attack", "pgd", "--model", "zoo:mnist_cnn", "--n", "12", "--eps", "0.3",
        "--steps", "5", "--levels", "256", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "robust acc" in result.stdout and "success rate" in result.stdout
    with np.load(out) as f:
        for key in ("x", "y", "x_adv", "success", "distance", "pred"):
            assert key in f.files, key
        assert "target" not in f.files
        x, x_adv = f["x"], f["x_adv"]
        assert x.shape == x_adv.shape == (12, 1, 28, 28)
        assert np.abs(x_adv - x).max() <= 0.3 + 1e-5
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert np.allclose(x_adv * 255, np.round(x_adv * 255), atol=1e-3)
        assert f["success"].dtype == bool and f["y"].shape == (12,)
        np.testing.assert_allclose(
            f["distance"], np.abs(x_adv - x).reshape(12, -1).max(axis=1), atol=1e-6
        )
        assert json.loads(str(f["meta"]))["attack"] == "pgd"


def test_attack_targeted_least_likely(tmp_path: Path) -> None:
    out = tmp_path / "adv.npz"
    result = invoke(
        "attack", "pgd", "--model", "mnist_cnn", "--n", "8", "--norm", "l2", "--eps", "3",
        "--steps", "5", "--target", "least-likely", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert "target" in f.files
        assert (f["target"] != f["y"]).all()
        assert (np.sqrt(((f["x_adv"] - f["x"]) ** 2).reshape(8, -1).sum(1)) <= 3 + 1e-4).all()
        assert (f["success"] == (f["pred"] == f["target"])).all()


def test_attack_fake_image_needs_no_eps(tmp_path: Path) -> None:
    result = invoke("attack", "fake_image", "--n", "4", "--steps", "3", "--target", "3")
    assert result.exit_code == 0, result.output
    assert "fake_image" in result.stdout


def test_attack_black_box_with_a_query_budget(tmp_path: Path) -> None:
    out = tmp_path / "adv.npz"
    result = invoke(
        "attack", "hsja", "--n", "4", "--norm", "l2", "--max-queries", "60", "--out", out
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "hsja l2 min-norm" in result.stdout
    with np.load(out) as f:
        assert json.loads(str(f["meta"]))["params"]["max_queries"] == 60


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nope"], ["unknown attack 'nope'"]),
        (["pgd"], ["--eps", "needs a budget"]),
        (["pgd", "--eps", "x"], ["--eps"]),
        (["pgd", "--eps", "0.1,0.2"], ["--eps", "one value"]),
        (["pgd", "--eps", "1", "--norm", "l0"], ["--norm", "does not support l0"]),
        (["fgsm", "--eps", "0.1", "--steps", "3"], ["--steps"]),
        (["pgd", "--eps", "0.1", "--max-queries", "30"], ["--max-queries", "no query budget"]),
        (["illc", "--eps", "0.1", "--targeted"], ["untargeted only"]),
        (["fake_image"], ["targeted"]),
        (["pgd", "--eps", "0.1", "--target", "cat"], ["--target"]),
        (["pgd", "--eps", "0.1", "--target", "12"], ["--target", "[0, 9]"]),
        (["pgd", "--eps", "0.1", "--model", "zoo:nope"], ["unknown zoo model"]),
        (["pgd", "--eps", "0.1", "--data", "digits"], ["cannot run on inputs"]),
    ],
)
def test_attack_bad_flags(args: list[str], fragments: list[str]) -> None:
    assert_clean_error(invoke("attack", *args, "--n", "4"), *fragments)


def test_zoo_list() -> None:
    from advex import zoo

    result = invoke("zoo", "list")
    assert result.exit_code == 0, result.output
    for card in zoo.list_models():
        assert f"zoo:{card.name}" in result.stdout
    assert "mnist5k" in result.stdout and "%" in result.stdout


def test_attacks_list() -> None:
    result = invoke("attacks", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name, cls in ATTACKS.items():
        line = next(ln for ln in lines if ln.startswith(name + " "))
        assert ",".join(cls.norms) in line
    assert re.search(r"^fake_image .*optional\s+only", result.stdout, re.M)
    assert re.search(r"^pgd .*required\s+yes", result.stdout, re.M)


@pytest.mark.slow
def test_demo_run_shows_adversarial_training_helps(tmp_path: Path) -> None:
    """The `make demo` run: full default plan on 1000 samples (about a minute on 2 cores)."""
    result = invoke("evaluate", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["n"] == 1000 and len(doc["rows"]) == 24
    robust = {
        (r["model"], r["attack"], r["norm"], r["eps"]): r["robust_accuracy"] for r in doc["rows"]
    }
    # PGD training at L∞ ε = 0.3 is what the second model has and the first lacks.
    for eps in (0.1, 0.2, 0.3):
        assert (
            robust[("mnist_cnn_pgd", "pgd", "linf", eps)]
            > robust[("mnist_cnn", "pgd", "linf", eps)]
        )
    # the minimal L2 perturbations DeepFool finds are larger on the adversarially trained model
    rho = {r["model"]: r["rho_adv"] for r in doc["rows"] if r["attack"] == "deepfool"}
    assert rho["mnist_cnn_pgd"] > rho["mnist_cnn"] > 0


def test_evaluate_ensemble_runs_the_sanity_checks(tmp_path: Path) -> None:
    """`--attacks fast` runs the ensemble; its sanity checks land in results.json, the report
    and (when one fires) on stderr."""
    args = ["--model", "zoo:mnist_mlp", "--n", "12", "--attacks", "fast", "--eps", "0.1"]
    result = invoke("evaluate", *args, "--examples", "0", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    (row,) = doc["rows"]
    assert row["attack"] == "fast" and row["members"] == ["apgd", "apgd-t"]
    assert sum(row["broken_by"]) == row["n_clean_correct"] - row["n_robust"]
    names = [c["name"] for c in doc["checks"]]
    assert "vanishing_gradients" in names and "not_converged" in names
    assert row["flags"] == [c["name"] for c in doc["checks"] if c["fired"]]
    html = (tmp_path / "report.html").read_text()
    assert "Sanity checks" in html and "vanishing_gradients" in html
