"""`advex certify --onnx --vnnlib`: an ONNX network and a VNN-LIB property in, sat (with a
counterexample file that really violates the property) / unsat out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from advex import data, zoo
from advex.certify.vnncomp import solve_vnnlib
from advex.certify.vnnlib import read_counterexample, robustness_property, write_vnnlib
from advex.cli import app

pytest.importorskip("onnx")
pytest.importorskip("highspy")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    model = zoo.load("digits_mlp").module.eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(model, (torch.rand(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"])
    return path


def _property(tmp_path: Path, eps: float) -> tuple[Path, object]:
    x, y = data.load("digits", split="test")
    prop = robustness_property(x[0], eps, int(y[0]), 10)
    path = tmp_path / f"prop_{eps}.vnnlib"
    write_vnnlib(prop, path)
    return path, prop


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_unsat_and_sat_with_a_checked_counterexample(onnx_file: Path, tmp_path: Path) -> None:
    # The exact minimal L∞ distance of this sample is about 0.055 (tests of minimal_distortion).
    small, _ = _property(tmp_path, 0.02)
    assert solve_vnnlib(onnx_file, small, timeout=60) == "unsat"
    large, prop = _property(tmp_path, 0.2)
    out = tmp_path / "result.txt"
    res = CliRunner().invoke(
        app,
        ["certify", "--onnx", str(onnx_file), "--vnnlib", str(large), "--result", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "sat"
    status, x_cex, y_cex = read_counterexample(out)
    assert status == "sat" and x_cex is not None and y_cex is not None
    z = zoo.load("digits_mlp").module.double()(x_cex.reshape(1, 1, 8, 8).double())
    assert torch.allclose(z[0], y_cex.double(), atol=1e-6)
    assert bool(prop.violated_by(x_cex[None], z, tol=1e-9)[0])  # type: ignore[attr-defined]


def test_missing_files_are_named(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["certify", "--onnx", str(tmp_path / "no.onnx"), "--vnnlib", str(tmp_path / "p")]
    )
    assert res.exit_code == 2
    assert "no.onnx" in res.output
