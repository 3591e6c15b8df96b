"""The report's sections, each a function of the evaluation (and the optional inputs) returning
escaped HTML (``markup.Markup``). ``advex.evaluate.report.render_report`` puts them together."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from advex.evaluate.clever import CleverResult
from advex.evaluate.metrics import cdf, wilson_interval
from advex.evaluate.plan import PlanEntry
from advex.evaluate.report import analysis as an
from advex.evaluate.report.markup import (
    Markup,
    esc,
    figure,
    fmt,
    interval,
    note,
    pct,
    section,
    table,
)
from advex.evaluate.report.plots import (
    Example,
    Line,
    examples_figure,
    heatmap,
    line_plot,
    norm_symbol,
)
from advex.evaluate.run import EvaluationResult, Record
from advex.evaluate.transfer import TransferMatrix
from advex.model import as_classifier

#: What each sanity check looks for (``advex.evaluate.checks``), shown beside its flag.
CHECK_EXPLANATIONS: dict[str, str] = {
    "probability_outputs": "Softmax outputs saturate and hide the gradients that CE and "
    "margin losses need: attacks then fail for the wrong reason.",
    "randomized_model": "A model that answers the same input differently defeats attacks "
    "that trust one forward pass (use expectation over transformation).",
    "vanishing_gradients": "Zero input gradients on many samples: gradient attacks have "
    "nothing to follow (shattered or masked gradients).",
    "blackbox_stronger": "A gradient-free attack broke samples every gradient attack "
    "failed on: the gradients are misleading.",
    "large_eps": "With a budget covering the whole input box every sample can be changed "
    "into any input; samples that stay robust reveal a broken gradient signal.",
    "not_converged": "A stronger attack (more steps and restarts) broke more samples: "
    "the evaluation had not converged.",
    "nondeterministic": "The same attack with the same seed gave different results: the "
    "evaluation cannot be reproduced.",
}


# ----- helpers -------------------------------------------------------------------------------
def _norms(
    result: EvaluationResult, certified: Mapping[str, list[an.CertifiedBounds]]
) -> list[str]:
    """The plan's norms, then those only certified bounds use."""
    extra = [c.norm for certs in certified.values() for c in certs]
    return list(dict.fromkeys([*an.norms(result.plan), *extra]))


def _budgets(result: EvaluationResult, norm: str) -> list[float]:
    return sorted({e.eps for e in result.plan if e.norm == norm and e.eps is not None})


def _band(values: Tensor, n: int) -> tuple[list[float], list[float]]:
    """Wilson 95 % bounds of the proportions ``values`` of ``n`` samples."""
    lo, hi = [], []
    for v in values.tolist():
        a, b = wilson_interval(round(v * n), n) if n else (math.nan, math.nan)
        lo.append(a)
        hi.append(b)
    return lo, hi


def _finite_max(*tensors: Tensor) -> float:
    top = 0.0
    for t in tensors:
        f = t[torch.isfinite(t)]
        if f.numel():
            top = max(top, float(f.max()))
    return top


def _robust_steps(
    label: str,
    model: str,
    style: str,
    distances: Tensor,
    correct: Tensor,
    xmax: float,
    *,
    band: bool,
    width: float = 1.3,
) -> Line:
    """Robust accuracy implied by per-sample minimal distances, as a step line on [0, xmax]."""
    d = distances.detach().double().cpu()
    t = torch.unique(d[torch.isfinite(d) & (d > 0) & (d < xmax)])
    x = torch.cat(
        [torch.zeros(1, dtype=torch.float64), t, torch.tensor([xmax], dtype=torch.float64)]
    )
    # robust_accuracy_curve's acc(ε) = #{correct, d > ε}/n in O(n log n) for many ε
    kept = d[correct.cpu()].sort().values
    robust = kept.numel() - torch.searchsorted(kept, x, right=True)
    y = robust.double() / max(d.numel(), 1)
    lower, upper = _band(y, d.numel()) if band else (None, None)
    return Line(label, x.tolist(), y.tolist(), model, style, True, lower, upper, width)


def _cdf_steps(label: str, model: str, style: str, values: Tensor, xmax: float) -> Line:
    """Empirical CDF of ``values`` (∞ counts in n) as a step line on [0, xmax]."""
    v = values.detach().double().cpu()
    t, f = cdf(v)
    keep = t < xmax
    t, f = t[keep], f[keep]
    n = max(v.numel(), 1)
    start = float((v <= 0).sum()) / n
    last = float(f[-1]) if f.numel() else start
    x = [0.0, *t.tolist(), xmax]
    y = [start, *f.tolist(), last]
    return Line(label, x, y, model, style, True)


def _upper_bounds(result: EvaluationResult, model: str, norm: str) -> Tensor:
    """Per sample, the smallest Lp distance at which any attack of ``norm`` misclassified it
    (∞ where none did; 0 for clean mistakes)."""
    correct = (result.clean_pred[model] == result.y).cpu()
    best = torch.full(correct.shape, math.inf, dtype=torch.float64)
    for rec in result.records:
        res = rec.result
        if rec.model != model or rec.entry.norm != norm or res.metric is not None:
            continue
        d = res.distance.detach().double().cpu()
        wrong = (res.pred != res.y).cpu()
        best = torch.minimum(best, torch.where(wrong, d, torch.full_like(d, math.inf)))
    return torch.where(correct, best, torch.zeros_like(best))


def _entry_groups(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Budgeted records grouped per attack setting; the key is the legend name (the attack,
    with its settings where one attack ran with several)."""
    by_key: dict[tuple[str, str], list[Record]] = {}
    for rec in records:
        key = (rec.entry.attack, json.dumps(dict(rec.entry.params), sort_keys=True, default=str))
        by_key.setdefault(key, []).append(rec)
    names = [attack for attack, _ in by_key]
    out: dict[str, list[Record]] = {}
    for (attack, _), recs in by_key.items():
        label = attack
        if names.count(attack) > 1:
            params = ", ".join(f"{k}={fmt(v)}" for k, v in recs[0].entry.params.items())
            label = f"{attack} ({params or 'defaults'})"
        out[label] = recs
    return out


def _cdf_lines(
    curves: Sequence[tuple[str, str, str, Tensor]], title: str, xlabel: str, ylabel: str
) -> bytes:
    """One CDF plot of (label, model, style, values) on a common range."""
    xmax = 1.05 * max(_finite_max(*(c[3] for c in curves)), 1e-12)
    lines = [_cdf_steps(label, model, style, v, xmax) for label, model, style, v in curves]
    return line_plot(lines, title=title, xlabel=xlabel, ylabel=ylabel, xmax=xmax)


# ----- summary -------------------------------------------------------------------------------
def summary(result: EvaluationResult, certified: Mapping[str, list[an.CertifiedBounds]]) -> Markup:
    """Clean accuracy, robust accuracy under the strongest evaluation (per model and norm),
    certified accuracy when given, and the number of fired sanity flags."""
    fired = [f for f in result.flags() if f["fired"]]
    cards = []
    rows = []
    for model in result.model_names:
        correct = result.clean_pred[model] == result.y
        clean = an.Proportion.of(correct)
        lines = [
            f'<div class="card-title">{esc(model)}</div>',
            f'<div class="big">{pct(clean.value)}</div>'
            f'<div class="small">clean accuracy {interval(clean.interval)}</div>',
        ]
        for norm in an.norms(result.plan):
            best = an.strongest(result, model, norm)
            certs = [c for c in certified.get(model, []) if c.norm == norm]
            if best is None:
                d = an.best_min_norm(result, model, norm)
                med = "—"
                if d is not None:
                    hit = d[correct.cpu()]
                    med = fmt(float(hit.median())) if hit.numel() else "—"
                lines.append(
                    f'<div class="small">{esc(norm_symbol(norm))}: minimum-norm attacks only, '
                    f"median best distance {esc(med)}</div>"
                )
                rows.append([model, pct(clean.value), norm, "min", "—", "—", "—", "—"])
                continue
            cert_text = "—"
            if certs:
                parts = []
                for c in certs:
                    p = an.Proportion.of(an.certified_at(c, correct, best.eps))
                    parts.append(f"{pct(p.value)} {interval(p.interval)} ({c.method})")
                cert_text = "; ".join(parts)
            lines.append(
                f'<div class="big">{pct(best.robust.value)}</div>'
                f'<div class="small">robust accuracy, {esc(norm_symbol(norm))} '
                f"ε={esc(fmt(best.eps))} {interval(best.robust.interval)}</div>"
            )
            if certs:
                lines.append(f'<div class="small">certified: {esc(cert_text)}</div>')
            rows.append(
                [
                    model,
                    pct(clean.value),
                    norm,
                    fmt(best.eps),
                    ", ".join(best.attacks),
                    pct(best.robust.value),
                    interval(best.robust.interval),
                    cert_text,
                ]
            )
        cards.append(Markup('<div class="card">' + "\n".join(lines) + "</div>"))
    flag_class = "card warn" if fired else "card"
    flag_card = Markup(
        f'<div class="{flag_class}"><div class="card-title">sanity checks</div>'
        f'<div class="big">{len(fired)}</div><div class="small">flag'
        f"{'s' if len(fired) != 1 else ''} fired"
        f"{' — see below' if fired else ''}</div></div>"
    )
    lead = note(
        "Robust accuracy under the strongest evaluation: per model and norm, at the largest ε "
        "every budgeted attack of that norm ran, a sample counts as robust only if no attack "
        "of that norm found a misclassified point admissible at ε — run at that budget or a "
        "smaller one, or at a measured Lp distance ≤ ε (minimum-norm attacks, larger budgets). "
        "An attack gives an upper bound on the true robust accuracy; a certificate a lower "
        "bound. Intervals: Wilson 95 % over the samples."
    )
    detail = table(
        [
            "model",
            "clean acc.",
            "norm",
            "ε",
            "attacks",
            "robust acc.",
            "95% CI",
            "certified acc. [95% CI]",
        ],
        rows,
        text_cols=(0, 2, 4, 7),
    )
    grid = Markup('<div class="cards">' + "\n".join([*cards, flag_card]) + "</div>")
    return section("summary", "Summary", grid, lead, detail)


# ----- robust accuracy against ε -------------------------------------------------------------
def _xmax(result: EvaluationResult, norm: str, distances: Sequence[Tensor]) -> float:
    budgets = _budgets(result, norm)
    finite = [d[torch.isfinite(d)] for d in distances]
    finite = [f for f in finite if f.numel()]
    spread = max((float(f.double().quantile(0.95)) for f in finite), default=0.0)
    top = max(budgets, default=0.0) * 1.1
    xmax = max(top, spread * 1.1)
    return xmax if xmax > 0 else 1.0


def accuracy(result: EvaluationResult, certified: Mapping[str, list[an.CertifiedBounds]]) -> Markup:
    """One plot per norm: budgeted attacks as points with Wilson error bars, minimum-norm
    attacks (and their per-sample best) as step lines, certified accuracy as steps."""
    parts: list[str] = [
        note(
            "Robust accuracy: the fraction of all samples still classified correctly (clean "
            "mistakes count as broken). Budgeted attacks are points with Wilson 95 % error "
            "bars, starting at ε = 0 with the clean accuracy. Minimum-norm attacks give a "
            "whole curve from their per-sample distances, drawn as steps; 'best of min-norm' "
            "takes, per sample, the smallest distance any minimum-norm attack found (shaded: "
            "Wilson 95 % band). Certified curves (when given) are lower bounds; attack curves "
            "upper bounds. Attacks reporting a non-Lp distance (e.g. a flow loss) are not "
            "drawn as curves."
        )
    ]
    for norm in _norms(result, certified):
        lines: list[Line] = []
        mins = {m: an.min_norm_records(result, m, norm) for m in result.model_names}
        all_d = [an.attack_distances(r.result) for recs in mins.values() for r in recs]
        certs = {m: [c for c in certified.get(m, []) if c.norm == norm] for m in mins}
        xmax = _xmax(result, norm, all_d + [c.bounds() for cs in certs.values() for c in cs])
        for model in result.model_names:
            correct = (result.clean_pred[model] == result.y).cpu()
            n = int(correct.numel())
            clean = an.Proportion.of(correct)
            budgeted = [
                r
                for r in result.records
                if r.model == model and r.entry.norm == norm and r.entry.eps is not None
            ]
            for name, recs in _entry_groups(budgeted).items():
                recs = sorted(recs, key=lambda r: float(r.entry.eps or 0.0))
                props = [an.Proportion(int((r.result.pred == r.result.y).sum()), n) for r in recs]
                lines.append(
                    Line(
                        f"{model} · {name}",
                        [0.0, *(float(r.entry.eps or 0.0) for r in recs)],
                        [clean.value, *(p.value for p in props)],
                        model,
                        name,
                        lower=[clean.interval[0], *(p.interval[0] for p in props)],
                        upper=[clean.interval[1], *(p.interval[1] for p in props)],
                    )
                )
            recs = mins[model]
            for rec in recs:
                lines.append(
                    _robust_steps(
                        f"{model} · {rec.entry.attack} (min-norm)",
                        model,
                        f"{rec.entry.attack} (min-norm)",
                        an.attack_distances(rec.result),
                        correct,
                        xmax,
                        band=len(recs) == 1,
                    )
                )
            if len(recs) > 1:
                best = an.best_min_norm(result, model, norm)
                assert best is not None  # recs is not empty
                lines.append(
                    _robust_steps(
                        f"{model} · best of min-norm",
                        model,
                        "best of min-norm",
                        best,
                        correct,
                        xmax,
                        band=True,
                        width=2.2,
                    )
                )
            for cert in certs[model]:
                lines.append(
                    _robust_steps(
                        f"{model} · certified ({cert.method})",
                        model,
                        f"certified ({cert.method})",
                        cert.bounds(),
                        correct,
                        xmax,
                        band=False,
                    )
                )
        if lines:
            sym = norm_symbol(norm)
            png = line_plot(
                lines,
                title=f"Robust accuracy against {sym} budget",
                xlabel=f"ε ({sym})",
                ylabel="robust accuracy",
                xmax=xmax,
            )
            parts.append(figure(png, f"robust accuracy against {norm} eps"))
    return section("accuracy", "Robust accuracy against ε", *parts)


# ----- minimal distances ---------------------------------------------------------------------
def distances(
    result: EvaluationResult, certified: Mapping[str, list[an.CertifiedBounds]]
) -> Markup:
    """CDFs of the minimal distances of each minimum-norm attack and of certified bounds."""
    parts: list[str] = [
        note(
            "Empirical CDF over the samples each model classifies correctly: the fraction whose "
            "adversarial distance is at most t. Attacks give upper bounds on each sample's true "
            "minimal distance, certificates lower bounds, so the true CDF lies between the "
            "certified curve (above) and the best attack curve (below). Samples an attack did "
            "not break never enter its curve, which therefore may stay below 1."
        )
    ]
    drawn = False
    for norm in _norms(result, certified):
        curves: list[tuple[str, str, str, Tensor]] = []
        for model in result.model_names:
            correct = (result.clean_pred[model] == result.y).cpu()
            if not bool(correct.any()):
                continue
            recs = an.min_norm_records(result, model, norm)
            for rec in recs:
                d = an.attack_distances(rec.result)[correct]
                curves.append((f"{model} · {rec.entry.attack}", model, rec.entry.attack, d))
            if len(recs) > 1:
                best = an.best_min_norm(result, model, norm)
                assert best is not None  # recs is not empty
                curves.append((f"{model} · best of min-norm", model, "best", best[correct]))
            for c in certified.get(model, []):
                if c.norm == norm:
                    label = f"{model} · certified lower bound ({c.method})"
                    curves.append((label, model, f"certified ({c.method})", c.bounds()[correct]))
        if curves:
            drawn = True
            sym = norm_symbol(norm)
            png = _cdf_lines(
                curves,
                f"Minimal adversarial distances ({sym})",
                f"distance ({sym})",
                "fraction of clean-correct samples",
            )
            parts.append(figure(png, f"CDF of minimal {norm} distances"))
    if not drawn:
        parts.append(
            note(
                "No minimum-norm attack (an entry without ε, e.g. deepfool) and no certified "
                "bounds: no distance distribution to show."
            )
        )
    return section("distances", "Minimal adversarial distances", *parts)


# ----- certified -----------------------------------------------------------------------------
def certified_section(
    result: EvaluationResult, certified: Mapping[str, list[an.CertifiedBounds]]
) -> Markup:
    """Certified accuracy at every budget of the plan, and the per-sample gap between the
    certified lower bound and the smallest distance at which an attack succeeded."""
    rows = []
    errors = []
    for model, certs in certified.items():
        correct = (result.clean_pred[model] == result.y).cpu()
        for c in certs:
            budgets = _budgets(result, c.norm)
            at = "; ".join(
                f"ε={fmt(e)}: {pct(p.value)} {interval(p.interval)}"
                for e in budgets
                for p in [an.Proportion.of(an.certified_at(c, correct, e))]
            )
            upper = _upper_bounds(result, model, c.norm)
            gaps, error = an.certified_gaps(c, upper, correct)
            if error is not None:
                errors.append(f"{model} ({c.method}, {c.norm}): {error}")
            bound = c.bounds()[correct]
            decided = "—"
            median_gap = "—"
            if gaps is not None and gaps.numel():
                finite = gaps[torch.isfinite(gaps)]
                median_gap = fmt(float(finite.median())) if finite.numel() else "∞"
                decided = f"{int((gaps <= 1e-6).sum())} of {gaps.numel()}"
            rows.append(
                [
                    model,
                    c.norm,
                    c.method,
                    at or "— (no budget of this norm in the plan)",
                    fmt(float(bound.median())) if bound.numel() else "—",
                    median_gap,
                    decided,
                ]
            )
    parts: list[str] = [
        note(
            "Certified accuracy: the fraction of all samples classified correctly whose "
            "certified lower bound exceeds ε. Gap: per clean-correct sample, the smallest "
            "distance at which any attack of that norm found a misclassified point (an upper "
            "bound on the minimal distance) minus the certified lower bound; 'closed' counts "
            "the samples where the two meet. CLEVER scores are estimates and never enter "
            "this section."
        ),
        table(
            [
                "model",
                "norm",
                "method",
                "certified accuracy [95% CI]",
                "median lower bound",
                "median gap",
                "closed",
            ],
            rows,
            text_cols=(0, 1, 2, 3),
        ),
    ]
    for e in errors:
        parts.append(Markup(f'<p class="error">Contradiction: {esc(e)}</p>'))
    return section("certified", "Certified robustness", *parts)


# ----- CLEVER --------------------------------------------------------------------------------
def clever_section(result: EvaluationResult, clever: Mapping[str, list[CleverResult]]) -> Markup:
    """CLEVER scores beside the attacks' distances; always labelled as an estimate."""
    rows = []
    by_norm: dict[str, list[tuple[str, str, str, Tensor]]] = {}
    for model, items in clever.items():
        for c in items:
            scored = c.correct.cpu()
            scores = c.scores.detach().double().cpu()[scored]
            # the scores cover the first len(c) samples
            upper = _upper_bounds(result, model, c.norm)[: len(c)][scored]
            found = torch.isfinite(upper)
            above = int((scores[found] > upper[found]).sum())
            rows.append(
                [
                    model,
                    c.norm,
                    int(scored.sum()),
                    fmt(float(scores.median())) if scores.numel() else "—",
                    fmt(float(scores.mean())) if scores.numel() else "—",
                    fmt(c.radius),
                    f"{c.n_batches} × {c.batch_points}",
                    fmt(float(upper[found].median())) if bool(found.any()) else "—",
                    f"{above} of {int(found.sum())}",
                ]
            )
            if scores.numel():
                by_norm.setdefault(c.norm, []).extend(
                    [
                        (f"{model} · CLEVER (estimate)", model, "CLEVER (estimate)", scores),
                        (f"{model} · best attack distance", model, "attack", upper),
                    ]
                )
    parts: list[str] = [
        note(
            "CLEVER (Weng et al., ICLR 2018) estimates a lower bound on the minimal adversarial "
            "distance from sampled gradient norms and an extreme-value fit. It is an ESTIMATE, "
            "not a certificate, and is never used for certified figures. Where an attack found "
            "an adversarial example closer than the score, the estimate is wrong for that sample "
            "(last column)."
        ),
        table(
            [
                "model",
                "norm",
                "scored samples",
                "median CLEVER (estimate)",
                "mean CLEVER (estimate)",
                "radius R",
                "batches × points",
                "median attack distance",
                "estimate above attack distance",
            ],
            rows,
            text_cols=(0, 1),
        ),
    ]
    for norm, curves in by_norm.items():
        sym = norm_symbol(norm)
        png = _cdf_lines(
            curves,
            f"CLEVER (estimate) and attack distances ({sym})",
            f"distance ({sym})",
            "fraction of scored samples",
        )
        parts.append(figure(png, f"CLEVER estimate CDF {norm}"))
    return section("clever", "CLEVER scores (estimate)", *parts)


# ----- per-attack tables ---------------------------------------------------------------------
def attacks(result: EvaluationResult) -> Markup:
    """One table per attack: every (model, norm, ε) it ran at."""
    header = [
        "model",
        "norm",
        "ε",
        "clean acc.",
        "robust acc. [95% CI]",
        "success rate [95% CI]",
        "metric",
        "dist. median / mean",
        "ρ_adv",
        "queries/sample",
        "time (s)",
        "settings",
    ]
    by_attack: dict[str, list[list[Any]]] = {}
    for rec, row in zip(result.records, result.rows(), strict=True):
        res = rec.result
        correct = res.clean_correct.cpu()
        robust = an.Proportion(int((res.pred == res.y).sum()), len(res))
        success = an.Proportion(int((res.success.cpu() & correct).sum()), int(correct.sum()))
        median, mean = an.distance_stats(res)
        settings = ", ".join(f"{k}={fmt(v)}" for k, v in row["plan_params"].items())
        if row.get("members"):
            counts = ", ".join(
                f"{m} {c}" for m, c in zip(row["members"], row["broken_by"], strict=False)
            )
            settings = f"{settings}; broken by: {counts}" if settings else f"broken by: {counts}"
        by_attack.setdefault(rec.entry.attack, []).append(
            [
                rec.model,
                rec.entry.norm,
                "min" if rec.entry.eps is None else fmt(rec.entry.eps),
                pct(res.clean_accuracy),
                f"{pct(robust.value)} {interval(robust.interval)}",
                f"{pct(success.value)} {interval(success.interval)}",
                res.distance_metric,
                f"{fmt(median)} / {fmt(mean)}",
                fmt(row.get("rho_adv")),
                fmt(row["mean_queries"]),
                f"{res.seconds:.2f}",
                settings or "—",
            ]
        )
    parts: list[str] = [
        note(
            "Robust accuracy over all samples; success rate over the samples the model "
            "classifies correctly; both with Wilson 95 % intervals. Distances over the "
            "successful, clean-correct samples, in the attack's metric (its norm, or e.g. "
            "'flow' for attacks that measure another distance). ρ_adv (DeepFool's empirical "
            "robustness, mean ‖δ‖₂/‖x‖₂) for minimum-norm L2 attacks. ε 'min': minimum-norm "
            "attack without a budget."
        )
    ]
    for attack, rows in by_attack.items():
        parts.append(f"<h3>{esc(attack)}</h3>")
        parts.append(table(header, rows, text_cols=(0, 1, 6, 11)))
    return section("attacks", "Results per attack", *parts)


def worst_case(result: EvaluationResult) -> Markup:
    """Per (model, norm, ε): the worst case over the attacks run at ε, and over all evidence."""
    rows = []
    for model in result.model_names:
        n = int(result.y.shape[0])
        for norm in an.norms(result.plan):
            for eps in _budgets(result, norm):
                recs = [
                    r
                    for r in result.records
                    if r.model == model and r.entry.norm == norm and r.entry.eps == eps
                ]
                if not recs:
                    continue
                robust = torch.stack([(r.result.pred == r.result.y).cpu() for r in recs])
                at = an.Proportion(int(robust.all(dim=0).sum()), n)
                everything = an.Proportion.of(~an.broken_at(result, model, norm, eps))
                rows.append(
                    [
                        model,
                        norm,
                        fmt(eps),
                        ", ".join(r.entry.attack for r in recs),
                        pct(at.value),
                        interval(at.interval),
                        pct(everything.value),
                        interval(everything.interval),
                    ]
                )
    if not rows:
        return section("worst-case", "Worst case over attacks", note("No budgeted attack ran."))
    return section(
        "worst-case",
        "Worst case over attacks",
        note(
            "A sample counts as robust only if every attack at that (norm, ε) failed on it. "
            "'All evidence' also counts points of other attacks of the norm that are "
            "admissible at ε (smaller budgets, or measured Lp distance ≤ ε)."
        ),
        table(
            [
                "model",
                "norm",
                "ε",
                "attacks at ε",
                "robust acc.",
                "95% CI",
                "all evidence",
                "95% CI",
            ],
            rows,
            text_cols=(0, 1, 3),
        ),
    )


# ----- examples ------------------------------------------------------------------------------
def _pick_samples(result: EvaluationResult, model: str, entry: PlanEntry, k: int) -> list[int]:
    """Up to k sample indices: those the attack broke, then those it did not, then clean
    mistakes (left unchanged, so least informative)."""
    r = result.result(model, entry)
    correct = r.clean_correct
    broken = correct & (r.pred != r.y)
    groups = (broken, correct & ~broken, ~correct)
    order = torch.cat([torch.nonzero(g).squeeze(1) for g in groups])
    return [int(i) for i in order[:k]]


def _confidences(model: Any, x: Tensor, labels: Tensor, bounds: tuple[float, float]) -> list[float]:
    """Softmax probability the model gives each ``labels[i]`` at ``x[i]``."""
    clf = as_classifier(model, bounds=bounds)
    probs = clf.logits(x).float().softmax(dim=1).cpu()
    return probs.gather(1, labels.reshape(-1, 1).cpu()).squeeze(1).tolist()


def examples(
    result: EvaluationResult,
    entry: PlanEntry,
    k: int,
    class_names: Sequence[str] | None,
    default: bool,
    models: Mapping[str, Any] | None,
) -> Markup:
    why = "the strongest attack at the middle ε of the plan's first norm" if default else "chosen"
    conf_note = (
        "Numbers in brackets: the model's softmax probability of the shown label."
        if models
        else "Confidences are not stored in the results, so only the predicted labels are "
        "shown (pass models= to render_report to show softmax probabilities)."
    )
    parts: list[str] = [
        Markup(
            f'<p class="note">Attack <code>{esc(entry.label)}</code> ({esc(why)}). Columns are '
            "samples: broken ones first, then unbroken ones, then clean mistakes. Rows: the "
            "clean input with the model's prediction and the true label; the perturbation "
            "δ = x<sub>adv</sub> − x, <b>scaled for visibility</b>: amplified by the factor "
            "×a shown above it (mid-gray = no change, black/white = −/+ max|δ| of that "
            "image); the adversarial input with the model's prediction. Red labels are wrong. "
            f"{esc(conf_note)}</p>"
        )
    ]
    for model in result.model_names:
        if not any(rec.model == model and rec.entry == entry for rec in result.records):
            parts.append(f"<h3>{esc(model)}</h3>")
            parts.append(note(f"No result of {entry.label} for this model (an unfinished run)."))
            continue
        r = result.result(model, entry)
        idx = _pick_samples(result, model, entry, k)
        if not idx:
            continue
        rows = torch.tensor(idx)
        clean_conf: list[float | None] = [None] * len(idx)
        adv_conf: list[float | None] = [None] * len(idx)
        if models and model in models:
            clean_conf = list(
                _confidences(models[model], result.x[rows], r.clean_pred[rows], result.bounds)
            )
            adv_conf = list(_confidences(models[model], r.x_adv[rows], r.pred[rows], result.bounds))
        shown = [
            Example(
                x=result.x[i],
                x_adv=r.x_adv[i],
                y=int(r.y[i]),
                clean_pred=int(r.clean_pred[i]),
                pred=int(r.pred[i]),
                clean_conf=clean_conf[j],
                conf=adv_conf[j],
            )
            for j, i in enumerate(idx)
        ]
        png = examples_figure(shown, bounds=result.bounds, class_names=class_names)
        caption = (
            f"{model}: {entry.label}, robust accuracy {pct(r.robust_accuracy)}, "
            f"success rate {pct(r.success_rate)}"
        )
        parts.append(f"<h3>{esc(model)}</h3>")
        parts.append(figure(png, caption, caption))
    if class_names is not None:
        names = ", ".join(f"{i} = {name}" for i, name in enumerate(class_names))
        parts.append(note(f"Classes: {names}."))
    return section("examples", "Examples", *parts)


def no_examples() -> Markup:
    return section("examples", "Examples", note("No examples requested."))


# ----- transfer ------------------------------------------------------------------------------
def transfer_section(matrices: Sequence[TransferMatrix]) -> Markup:
    parts: list[str] = [
        note(
            "Rows: source model the attack ran on (white-box); columns: target model the points "
            "were shown to. Cell: the transfer success rate over the samples the attack broke "
            "on the source and the target classifies correctly when clean (n of them); gray: "
            "no such sample. The diagonal is 1 by construction."
        )
    ]
    for m in matrices:
        title = f"{m.attack} ({m.threat.describe()}), n={m.n}"
        png = heatmap(
            m.rates.detach().double().cpu().numpy(),
            m.counts.detach().cpu().numpy(),
            rows=m.sources,
            cols=m.targets,
            title=f"Transfer success: {title}",
            xlabel="target",
            ylabel="source",
        )
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(figure(png, f"transfer matrix {title}"))
        rows = [[s, pct(float(m.source_success[i]))] for i, s in enumerate(m.sources)]
        acc = ", ".join(f"{t} {pct(float(m.target_accuracy[j]))}" for j, t in enumerate(m.targets))
        parts.append(table(["source", "white-box success rate"], rows))
        parts.append(note(f"Clean accuracy of the targets: {acc}."))
    return section("transfer", "Transferability", *parts)


# ----- sanity checks -------------------------------------------------------------------------
def checks(result: EvaluationResult) -> Markup:
    """The sanity checks of every ensemble entry: fired flags first, with what to do."""
    flags = result.flags()
    intro = note(
        "Signs of gradient masking and of a broken or unconverged evaluation, checked after "
        "every ensemble run (advex.evaluate.checks)."
    )
    if not flags:
        return section(
            "checks",
            "Sanity checks",
            intro,
            Markup(
                '<p class="note">No sanity check ran: they run after ensemble entries (the '
                "'fast' or 'standard' attack, e.g. <code>advex evaluate --attacks fast</code>)."
                "</p>"
            ),
        )
    fired = [f for f in flags if f["fired"]]
    lead = Markup(
        f'<p class="warn"><strong>{len(fired)} warning{"s" if len(fired) != 1 else ""}'
        "</strong>: the robust accuracy above may overestimate the true one. Read the advice "
        "below.</p>"
        if fired
        else "<p>No sanity check fired.</p>"
    )
    names = list(dict.fromkeys(f["name"] for f in flags))
    explained = [
        f"<dt><code>{esc(name)}</code></dt><dd>{esc(CHECK_EXPLANATIONS.get(name, '—'))}</dd>"
        for name in names
    ]
    rows = [
        [
            f["model"],
            f["label"],
            f["name"],
            Markup('<span class="bad">WARNING</span>') if f["fired"] else "ok",
            fmt(f.get("value")),
            f["message"],
            f["advice"] if f["fired"] else "",
        ]
        for f in sorted(flags, key=lambda f: not f["fired"])
    ]
    return section(
        "checks",
        "Sanity checks",
        intro,
        lead,
        table(
            [
                "model",
                "evaluation",
                "check",
                "status",
                "value",
                "what was seen",
                "what to do",
            ],
            rows,
            text_cols=(0, 1, 2, 3, 5, 6),
        ),
        Markup("<h3>What the checks look for</h3>"),
        Markup("<dl>" + "".join(explained) + "</dl>"),
    )


# ----- metadata ------------------------------------------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)
    return fmt(v)


def metadata(result: EvaluationResult, meta: Mapping[str, Any]) -> Markup:
    items = dict(meta)
    items.setdefault("samples", int(result.y.shape[0]))
    items.setdefault("models", ", ".join(result.model_names))
    items.setdefault("seed", result.seed)
    items.setdefault("batch size", result.batch_size if result.batch_size else "all at once")
    items.setdefault("levels", result.levels if result.levels is not None else "none")
    items.setdefault("bounds", f"[{result.bounds[0]:g}, {result.bounds[1]:g}]")
    items.setdefault("total time", f"{result.seconds:.1f} s")
    items.setdefault("plan", "; ".join(e.label for e in result.plan))
    rows = [[str(k), _value(v)] for k, v in items.items()]
    return section(
        "metadata", "Run metadata", table(["setting", "value"], rows, (0, 1), css="meta")
    )
