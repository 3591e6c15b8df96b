"""A self-contained HTML report of an evaluation.

One file, no external resources: the plots and example images are PNGs embedded as base64
``data:`` URIs, the styling is inline. Every piece of text from the run (model names, settings,
metadata) is HTML-escaped before it goes into the template (``report.html``, filled with
``string.Template``).

Contents: the setup, clean accuracy per model, robust accuracy against ε (one plot per norm,
one line per model × attack), the results table, the per-sample worst case over attacks at
each (norm, ε), and a grid of examples — clean input, perturbation, adversarial input with the
predicted and true labels — for a few samples per model at one (attack, ε): by default the
strongest attack at the middle ε of the first norm in the plan.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import torch

from advex.evaluate.metrics import robust_accuracy_at
from advex.evaluate.plan import PlanEntry
from advex.evaluate.report.plots import Curve, Example, accuracy_plot, examples_figure
from advex.evaluate.run import EvaluationResult

__all__ = ["example_entry", "render_report", "write_report"]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{100 * value:.1f}%"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], text_cols: Sequence[int] = (0,)
) -> str:
    """An HTML table; cells are escaped here; columns in ``text_cols`` align left."""

    def cls(i: int) -> str:
        return ' class="text"' if i in text_cols else ""

    head = "".join(f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table></div>"
    )


def _norms(plan: Sequence[PlanEntry]) -> list[str]:
    return list(dict.fromkeys(e.norm for e in plan))


def example_entry(result: EvaluationResult) -> PlanEntry:
    """The strongest attack (lowest mean robust accuracy over models) at the middle ε of the
    first norm in the plan."""
    norm = _norms(result.plan)[0]
    budgets = sorted({e.eps for e in result.plan if e.norm == norm and e.eps is not None})
    middle = budgets[len(budgets) // 2] if budgets else None
    candidates = [e for e in result.plan if e.norm == norm and e.eps == middle]

    def strength(entry: PlanEntry) -> float:
        accs = [r.result.robust_accuracy for r in result.records if r.entry == entry]
        return sum(accs) / len(accs) if accs else math.inf

    return min(candidates, key=strength)


def _pick_samples(result: EvaluationResult, model: str, entry: PlanEntry, k: int) -> list[int]:
    """Up to k sample indices: those the attack broke, then those it did not, then clean
    mistakes (left unchanged, so least informative)."""
    r = result.result(model, entry)
    correct = r.clean_correct
    broken = correct & (r.pred != r.y)
    groups = (broken, correct & ~broken, ~correct)
    order = torch.cat([torch.nonzero(g).squeeze(1) for g in groups])
    return [int(i) for i in order[:k]]


def _examples_html(
    result: EvaluationResult,
    entry: PlanEntry,
    k: int,
    class_names: Sequence[str] | None,
    default: bool,
) -> str:
    why = "the strongest attack at the middle ε of the plan's first norm" if default else "chosen"
    parts = [
        f'<p class="note">Attack <code>{_esc(entry.label)}</code> ({_esc(why)}). Columns are '
        "samples: broken ones first, then unbroken ones, then clean mistakes. Rows: the clean "
        "input with the model's prediction and the true label; the perturbation "
        "δ = x<sub>adv</sub> − x, <b>scaled for visibility</b> per image (mid-gray = no change, "
        "black/white = −/+ max|δ| of that image); the adversarial input with the model's "
        "prediction. Red labels are wrong.</p>"
    ]
    for model in result.model_names:
        r = result.result(model, entry)
        idx = _pick_samples(result, model, entry, k)
        examples = [
            Example(
                x=result.x[i],
                x_adv=r.x_adv[i],
                y=int(r.y[i]),
                clean_pred=int(r.clean_pred[i]),
                pred=int(r.pred[i]),
            )
            for i in idx
        ]
        png = examples_figure(examples, bounds=result.bounds, class_names=class_names)
        caption = (
            f"{model}: {entry.label}, robust accuracy {_pct(r.robust_accuracy)}, "
            f"success rate {_pct(r.success_rate)}"
        )
        parts.append(
            f"<h3>{_esc(model)}</h3>\n<figure>{_img(png, caption)}"
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _plots_html(result: EvaluationResult) -> str:
    parts = []
    for norm in _norms(result.plan):
        curves = []
        for model in result.model_names:
            by_attack: dict[str, list[tuple[float, float]]] = {}
            for rec in result.records:
                if rec.model == model and rec.entry.norm == norm and rec.entry.eps is not None:
                    by_attack.setdefault(rec.entry.attack, []).append(
                        (rec.entry.eps, rec.result.robust_accuracy)
                    )
            for attack, points in by_attack.items():
                curves.append(
                    Curve(
                        model=model,
                        attack=attack,
                        eps=[p[0] for p in points],
                        robust_accuracy=[p[1] for p in points],
                        clean_accuracy=result.clean_accuracy(model),
                    )
                )
            # minimum-norm runs (eps None) give the whole curve from their distances
            for rec in result.records:
                if rec.model != model or rec.entry.norm != norm or rec.entry.eps is not None:
                    continue
                res = rec.result
                found = res.distance[res.success & res.clean_correct]
                top = float(found.max()) if found.numel() else 1.0
                grid = torch.linspace(0.0, 1.05 * top, 61)[1:]
                curves.append(
                    Curve(
                        model=model,
                        attack=f"{rec.entry.attack} (minimum norm)",
                        eps=grid.tolist(),
                        robust_accuracy=robust_accuracy_at(res, grid).tolist(),
                        clean_accuracy=result.clean_accuracy(model),
                        markers=False,
                    )
                )
        if curves:
            png = accuracy_plot(curves, norm)
            parts.append(f"<figure>{_img(png, f'robust accuracy against {norm} eps')}</figure>")
    return "\n".join(parts)


def _checks_html(result: EvaluationResult) -> str:
    """The sanity checks of every ensemble entry: fired flags first, with what to do."""
    flags = result.flags()
    if not flags:
        return ""
    fired = [f for f in flags if f["fired"]]
    lead = (
        f"<p><strong>{len(fired)} warning{'s' if len(fired) != 1 else ''}</strong>: the "
        "robust accuracy above may overestimate the true one. Read the advice below.</p>"
        if fired
        else "<p>No sanity check fired.</p>"
    )
    rows = [
        [
            f["model"],
            f["label"],
            f["name"],
            "WARNING" if f["fired"] else "ok",
            f["message"],
            f["advice"] if f["fired"] else "",
        ]
        for f in sorted(flags, key=lambda f: not f["fired"])
    ]
    return (
        '<h2>Sanity checks</h2>\n<p class="note">Signs of gradient masking and of a broken or '
        "unconverged evaluation, checked after every ensemble run "
        "(<code>advex.evaluate.checks</code>).</p>\n"
        + lead
        + _table(
            ["model", "evaluation", "check", "status", "what was seen", "what to do"],
            rows,
            text_cols=(0, 1, 2, 3, 4, 5),
        )
    )


def render_report(
    result: EvaluationResult,
    *,
    title: str = "advex evaluation",
    metadata: Mapping[str, Any] | None = None,
    examples: int = 8,
    entry: PlanEntry | None = None,
    class_names: Sequence[str] | None = None,
) -> str:
    """The report as an HTML string (see the module docstring).

    Args:
        result: what ``run_evaluation`` returned.
        title: the page title.
        metadata: extra key/value pairs for the setup table (data spec, command line, ...).
        examples: number of example samples per model (0: no example grid).
        entry: the (attack, ε) for the example grid; default ``example_entry(result)``.
        class_names: label names for the example grid; default the class indices.
    """
    meta = dict(metadata or {})
    meta.setdefault("samples", int(result.y.shape[0]))
    meta.setdefault("seed", result.seed)
    meta.setdefault("levels", result.levels if result.levels is not None else "none")
    meta.setdefault("bounds", f"[{result.bounds[0]:g}, {result.bounds[1]:g}]")
    meta.setdefault("total time", f"{result.seconds:.1f} s")
    meta_html = _table(["setting", "value"], [[str(k), _fmt(v)] for k, v in meta.items()])
    meta_html = meta_html.replace("<table>", '<table class="meta">', 1)

    models_html = _table(
        ["model", "clean accuracy"],
        [[m, _pct(result.clean_accuracy(m))] for m in result.model_names],
    )

    header = [
        "model",
        "attack",
        "norm",
        "ε",
        "clean acc.",
        "robust acc.",
        "success rate",
        "median ‖δ‖",
        "queries/sample",
        "seconds",
        "settings",
    ]
    rows = [
        [
            row["model"],
            row["attack"],
            row["norm"],
            "min" if row["eps"] is None else _fmt(row["eps"]),
            _pct(row["clean_accuracy"]),
            _pct(row["robust_accuracy"]),
            _pct(row["success_rate"]),
            _fmt(row["median_distance"]),
            _fmt(row["mean_queries"]),
            f"{row['seconds']:.2f}",
            ", ".join(f"{k}={_fmt(v)}" for k, v in row["plan_params"].items()) or "—",
        ]
        for row in result.rows()
    ]
    table_html = _table(header, rows, text_cols=(0, 1, 2, 10))

    worst = result.worst_case()
    worst_html = ""
    if worst:
        worst_html = (
            '<h2>Worst case over attacks</h2>\n<p class="note">A sample counts as robust only '
            "if every attack at that (norm, ε) failed on it.</p>\n"
            + _table(
                ["model", "norm", "ε", "attacks", "robust acc."],
                [
                    [
                        w["model"],
                        w["norm"],
                        _fmt(w["eps"]),
                        ", ".join(w["attacks"]),
                        _pct(w["robust_accuracy"]),
                    ]
                    for w in worst
                ],
                text_cols=(0, 1, 3),
            )
        )

    checks_html = _checks_html(result)

    if examples > 0:
        chosen = entry if entry is not None else example_entry(result)
        examples_html = _examples_html(result, chosen, examples, class_names, entry is None)
    else:
        examples_html = '<p class="note">No examples requested.</p>'

    n_models, n_entries = len(result.model_names), len(result.plan)
    summary = (
        f"{n_models} model{'s' if n_models != 1 else ''} × {n_entries} attack "
        f"setting{'s' if n_entries != 1 else ''} on {int(result.y.shape[0])} samples "
        f"in {result.seconds:.1f} s."
    )
    template = Template(
        resources.files("advex.evaluate.report").joinpath("report.html").read_text("utf-8")
    )
    return template.substitute(
        title=_esc(title),
        summary=_esc(summary),
        meta=meta_html,
        models=models_html,
        plots=_plots_html(result),
        table=table_html,
        worst=worst_html,
        checks=checks_html,
        examples=examples_html,
    )


def write_report(
    result: EvaluationResult,
    path: str | Path,
    *,
    title: str = "advex evaluation",
    metadata: Mapping[str, Any] | None = None,
    examples: int = 8,
    entry: PlanEntry | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``render_report(result, ...)`` to ``path`` (UTF-8); returns the path."""
    text = render_report(
        result,
        title=title,
        metadata=metadata,
        examples=examples,
        entry=entry,
        class_names=class_names,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
