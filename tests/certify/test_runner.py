"""Dataset certification: per-sample records saved as they are decided, resume, the summary,
and the `advex certify` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from advex.certify.runner import certify_dataset
from advex.cli import app


@pytest.fixture
def digits_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from advex import data, zoo

    x, y = data.load("digits", split="test")
    return zoo.load("digits_mlp"), x[:12], y[:12]


def test_bound_method_records_and_summary(tmp_path: Path, digits_batch) -> None:
    model, x, y = digits_batch
    run = certify_dataset(model, x, y, [0.01, 0.1], method="crown", out=tmp_path, batch_size=5)
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 24 == len(run.records)
    rows = {r["eps"]: r for r in run.summary()}
    assert rows[0.01]["n"] == rows[0.1]["n"] == 12
    # Certified accuracy falls with the radius, never exceeds the attack's accuracy, and no
    # certified sample is broken.
    assert rows[0.1]["certified_accuracy"] <= rows[0.01]["certified_accuracy"]
    for row in rows.values():
        assert row["certified_accuracy"] <= row["attack_accuracy"] <= row["clean_accuracy"]
        assert row["disagreements"] == 0
    assert rows[0.01]["certified_accuracy"] > 0


def test_resume_recomputes_only_missing_samples(tmp_path: Path, digits_batch) -> None:
    model, x, y = digits_batch
    full = certify_dataset(model, x, y, [0.05], method="ibp", out=tmp_path / "a", batch_size=4)
    part = tmp_path / "b"
    certify_dataset(model, x[:8], y[:8], [0.05], method="ibp", out=part, batch_size=4)
    path = part / "samples.jsonl"
    path.write_text(path.read_text() + '{"eps": 0.05, "ind')  # a line cut off by a crash
    with pytest.raises(ValueError, match="already holds a run"):
        certify_dataset(model, x, y, [0.05], method="ibp", out=part)
    resumed = certify_dataset(model, x, y, [0.05], method="ibp", out=part, resume=True)
    assert len(path.read_text().splitlines()) == 12
    key = lambda r: r["index"]  # noqa: E731
    got = sorted(resumed.records, key=key)
    want = sorted(full.records, key=key)
    assert [r["status"] for r in got] == [r["status"] for r in want]


def test_smoothing_records_radii(tmp_path: Path, digits_batch) -> None:
    model, x, y = digits_batch
    run = certify_dataset(
        model, x, y, [0.1, 0.5], norm="l2", method="smoothing", n=200, out=tmp_path
    )
    for r in run.records:
        assert (r["status"] == "robust") == (r["clean_correct"] and r["radius"] >= r["eps"])
    assert run.summary()[0]["attack_accuracy"] is None
    with pytest.raises(ValueError, match="L2"):
        certify_dataset(model, x, y, [0.1], norm="linf", method="smoothing")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"method": "magic"}, "method"), ({"norm": "l0"}, "norm"), ({"eps": [-1.0]}, "eps")],
)
def test_runner_errors(kwargs: dict, match: str, digits_batch) -> None:
    model, x, y = digits_batch
    args = {"eps": [0.1], "method": "ibp"} | kwargs
    with pytest.raises(ValueError, match=match):
        certify_dataset(model, x, y, **args)


def test_certify_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "certify",
            "--model",
            "zoo:digits_mlp",
            "--n",
            "10",
            "--eps",
            "0.01,0.05",
            "--method",
            "crown",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "certify.json").read_text())
    assert [row["eps"] for row in doc["summary"]] == [0.01, 0.05]
    assert doc["method"] == "crown" and doc["model"] == "digits_mlp"
    assert "certified" in res.output
    again = CliRunner().invoke(
        app, ["certify", "--model", "zoo:digits_mlp", "--n", "10", "--eps", "0.01",
              "--method", "crown", "--out", str(out)]
    )  # fmt: skip
    assert again.exit_code == 2 and "already holds a run" in again.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "magic", "--eps", "0.1"], "--method"),
        (["--method", "crown"], "--eps"),
        (["--onnx", "net.onnx"], "--onnx and --vnnlib"),
    ],
)
def test_certify_command_errors(args: list[str], match: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["certify", "--model", "zoo:digits_mlp", "--out", str(tmp_path), *args]
    )
    assert res.exit_code == 2
    assert match in res.output
