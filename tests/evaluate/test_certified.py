"""`advex evaluate --certify`: [certified lower bound, best attack distance] per sample in
results.json and the report, stored as computed and read back on resume."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advex.cli import app

ARGS = ["evaluate", "--model", "zoo:digits_mlp", "--n", "8", "--attacks", "pgd,fmn"]
ARGS += ["--norm", "linf", "--eps", "0.05", "--examples", "0", "--no-progress"]


def _run(out: Path, *extra: str) -> dict:
    res = CliRunner().invoke(app, [*ARGS, "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("method", ["crown", "mip"])
def test_certified_pairs_in_results(tmp_path: Path, method: str) -> None:
    doc = _run(tmp_path, "--certify", method, "--certify-timeout", "10")
    (row,) = doc["certified"]
    assert row["model"] == "digits_mlp" and row["norm"] == "linf" and row["method"] == method
    pairs = row["samples"]
    assert len(pairs) == 8
    for lower, upper in pairs:
        assert lower >= 0
        assert upper is None or lower <= upper + 1e-6
    if method == "mip":
        # The exact MILP finds the minimal distance: lower = upper up to its tolerance.
        for lower, upper in pairs:
            assert upper is not None and math.isclose(lower, upper, rel_tol=1e-3, abs_tol=1e-6)
    assert "Certified" in (tmp_path / "report.html").read_text()


def test_resume_reads_certificates_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(tmp_path, "--certify", "crown")

    def fail(*args, **kwargs):
        raise AssertionError("certificates must be read from the store, not recomputed")

    # (advex.certify.bounds the attribute is the function; the module is in sys.modules)
    monkeypatch.setattr(sys.modules["advex.certify.bounds"], "certified_radius", fail)
    res = CliRunner().invoke(app, ["evaluate", "--resume", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["certified"] == first["certified"]
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Certified" in (tmp_path / "report.html").read_text()


def test_unknown_certify_method(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path), "--certify", "magic"])
    assert res.exit_code == 2
    assert "--certify" in res.output
