"""Evaluate models against a grid of attacks: plan, run, summarize, report.

From Python::

    from advex import data, zoo
    from advex.evaluate import default_plan, run_evaluation, write_report, write_results

    x, y = data.load("mnist5k", split="test")
    models = {"cnn": zoo.load("mnist_cnn"), "cnn_pgd": zoo.load("mnist_cnn_pgd")}
    result = run_evaluation(models, x[:1000], y[:1000], default_plan(), seed=0)
    write_results(result, "runs/demo/results.json")
    write_report(result, "runs/demo/report.html")

The command line ``advex evaluate`` is a thin layer over these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from advex.evaluate.metrics import accuracy, summary_row, worst_case_row
from advex.evaluate.plan import (
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    PlanEntry,
    default_plan,
    grid_plan,
    parse_attacks,
    parse_eps,
)
from advex.evaluate.run import EvaluationResult, Record, run_evaluation, write_results
from advex.evaluate.transfer import TransferMatrix, transfer

if TYPE_CHECKING:
    from advex.evaluate.report import render_report

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS",
    "EvaluationResult",
    "PlanEntry",
    "Record",
    "TransferMatrix",
    "accuracy",
    "default_plan",
    "grid_plan",
    "parse_attacks",
    "parse_eps",
    "render_report",
    "run_evaluation",
    "summary_row",
    "transfer",
    "worst_case_row",
    "write_report",
    "write_results",
]


def write_report(result: EvaluationResult, path: str | Path, **options: Any) -> Path:
    """Write the HTML report (see ``advex.evaluate.report.write_report`` for the options).

    Imports matplotlib only when called.
    """
    from advex.evaluate.report import write_report as _write

    return _write(result, path, **options)


def __getattr__(name: str) -> Any:
    if name == "render_report":
        from advex.evaluate.report import render_report

        return render_report
    raise AttributeError(f"module 'advex.evaluate' has no attribute {name!r}")
