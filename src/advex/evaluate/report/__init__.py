"""A self-contained HTML report of an evaluation.

One file, no external resources and no scripts: the plots and example images are PNGs
embedded as base64 ``data:`` URIs, the styling is inline, so the page opens from disk with no
network. Every piece of text from the run (model names, labels, class names, settings,
metadata) is HTML-escaped before it goes into the template (``report.html``, filled with
``string.Template``), and drawn literally in the plots (no mathtext).

Sections, in order (their element ids in brackets):

* summary [summary]: per model, clean accuracy and robust accuracy under the strongest
  evaluation per norm (all attacks' evidence at the largest common ε, see
  ``analysis``) with Wilson 95 % intervals, certified accuracy when given, fired flags;
* robust accuracy against ε, one plot per norm [accuracy]: budgeted attacks as points with
  Wilson error bars, minimum-norm attacks and their per-sample best as step lines, certified
  accuracy as steps;
* minimal adversarial distances [distances]: CDFs per minimum-norm attack and of certified
  lower bounds;
* certified robustness [certified] (when ``certified`` is given), CLEVER scores labelled as
  an estimate [clever] (when ``clever`` is given; never mixed with certified figures);
* one table per attack [attacks]; the worst case over attacks [worst-case];
* example grid [examples]: clean / amplified perturbation / adversarial images with labels
  (and confidences when ``models`` is given), by default for the strongest attack at the
  middle ε of the plan's first norm;
* transfer matrices as heat maps [transfer] (when ``transfer`` is given);
* sanity checks with explanations and advice [checks]; run metadata [metadata].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import advex
from advex.evaluate.clever import CleverResult
from advex.evaluate.plan import PlanEntry
from advex.evaluate.report import sections
from advex.evaluate.report.analysis import CertifiedBounds, check_certified, check_clever, norms
from advex.evaluate.report.markup import Markup, esc
from advex.evaluate.run import EvaluationResult
from advex.evaluate.transfer import TransferMatrix

__all__ = ["SECTIONS", "CertifiedBounds", "example_entry", "render_report", "write_report"]

#: Section id → heading, in page order (optional sections appear only with their input).
SECTIONS: dict[str, str] = {
    "summary": "Summary",
    "accuracy": "Robust accuracy against ε",
    "distances": "Minimal distances",
    "certified": "Certified",
    "clever": "CLEVER (estimate)",
    "attacks": "Per attack",
    "worst-case": "Worst case",
    "examples": "Examples",
    "transfer": "Transfer",
    "checks": "Sanity checks",
    "metadata": "Metadata",
}


def example_entry(result: EvaluationResult) -> PlanEntry:
    """The strongest attack (lowest mean robust accuracy over models) at the middle ε of the
    first norm in the plan."""
    norm = norms(result.plan)[0]
    budgets = sorted({e.eps for e in result.plan if e.norm == norm and e.eps is not None})
    middle = budgets[len(budgets) // 2] if budgets else None
    candidates = [e for e in result.plan if e.norm == norm and e.eps == middle]

    def strength(entry: PlanEntry) -> float:
        accs = [r.result.robust_accuracy for r in result.records if r.entry == entry]
        return sum(accs) / len(accs) if accs else math.inf

    return min(candidates, key=strength)


def render_report(
    result: EvaluationResult,
    *,
    title: str = "advex evaluation",
    metadata: Mapping[str, Any] | None = None,
    examples: int = 8,
    entry: PlanEntry | None = None,
    class_names: Sequence[str] | None = None,
    models: Mapping[str, Any] | None = None,
    certified: Mapping[str, CertifiedBounds | Sequence[CertifiedBounds]] | None = None,
    clever: Mapping[str, CleverResult | Sequence[CleverResult]] | None = None,
    transfer: Sequence[TransferMatrix] | None = None,
) -> str:
    """The report as an HTML string (see the module docstring).

    Args:
        result: what ``run_evaluation`` (or ``stored.load_evaluation``) returned.
        title: the page title.
        metadata: key/value pairs for the metadata table (versions, command line, data,
            machine, ...); the run's own settings (seed, batch size, bounds, ...) are added.
        examples: number of example samples per model (0: no example grid).
        entry: the (attack, ε) for the example grid; default ``example_entry(result)``.
        class_names: label names for the example grid; default the class indices.
        models: model name → the evaluated model (``nn.Module`` or ``advex.Classifier``);
            when given, the example grid shows the softmax probability of each shown label
            (computed on the shown samples only). Results hold no confidences.
        certified: model name → ``CertifiedBounds`` (or a list, e.g. one per norm or method):
            per-sample certified lower bounds on the minimal adversarial distance.
        clever: model name → ``CleverResult`` (or a list): CLEVER scores on the evaluated
            samples, shown as an estimate.
        transfer: transfer matrices (``advex.evaluate.transfer``) to draw as heat maps.

    Raises:
        ValueError: ``models``/``certified``/``clever`` naming a model the run lacks, bounds or
            scores for another number of samples; ``examples`` < 0.
        TypeError: ``certified``/``clever``/``transfer`` values of the wrong type.
    """
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples: expected an integer >= 0, got {examples!r}")
    for name in models or {}:
        if name not in result.clean_pred:
            raise ValueError(
                f"models: model {name!r} is not in the evaluation (models: "
                f"{', '.join(map(repr, result.model_names))})"
            )
    certs = check_certified(result, certified)
    scores = check_clever(result, clever)
    matrices = list(transfer or [])
    for m in matrices:
        if not isinstance(m, TransferMatrix):
            raise TypeError(f"transfer: expected TransferMatrix items, got {type(m).__name__}")

    parts = {
        "summary": sections.summary(result, certs),
        "accuracy": sections.accuracy(result, certs),
        "distances": sections.distances(result, certs),
        "certified": sections.certified_section(result, certs) if certs else None,
        "clever": sections.clever_section(result, scores) if scores else None,
        "attacks": sections.attacks(result),
        "worst-case": sections.worst_case(result),
        "examples": (
            sections.examples(
                result,
                entry if entry is not None else example_entry(result),
                examples,
                class_names,
                entry is None,
                models,
            )
            if examples > 0
            else sections.no_examples()
        ),
        "transfer": sections.transfer_section(matrices) if matrices else None,
        "checks": sections.checks(result),
        "metadata": sections.metadata(result, metadata or {}),
    }
    present = [k for k in SECTIONS if parts[k] is not None]
    nav = Markup(
        "<nav>"
        + " · ".join(f'<a href="#{esc(k)}">{esc(SECTIONS[k])}</a>' for k in present)
        + "</nav>"
    )
    n_models, n_entries = len(result.model_names), len(result.plan)
    lead = (
        f"{n_models} model{'s' if n_models != 1 else ''} × {n_entries} attack "
        f"setting{'s' if n_entries != 1 else ''} on {int(result.y.shape[0])} samples "
        f"in {result.seconds:.1f} s."
    )
    template = Template(
        resources.files("advex.evaluate.report").joinpath("report.html").read_text("utf-8")
    )
    return template.substitute(
        title=esc(title),
        lead=esc(lead),
        nav=nav,
        sections="\n\n".join(str(parts[k]) for k in present),
        footer=esc(f"Generated by advex {advex.__version__}. Self-contained: no network needed."),
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
    models: Mapping[str, Any] | None = None,
    certified: Mapping[str, CertifiedBounds | Sequence[CertifiedBounds]] | None = None,
    clever: Mapping[str, CleverResult | Sequence[CleverResult]] | None = None,
    transfer: Sequence[TransferMatrix] | None = None,
) -> Path:
    """Write ``render_report(result, ...)`` to ``path`` (UTF-8); returns the path."""
    text = render_report(
        result,
        title=title,
        metadata=metadata,
        examples=examples,
        entry=entry,
        class_names=class_names,
        models=models,
        certified=certified,
        clever=clever,
        transfer=transfer,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
