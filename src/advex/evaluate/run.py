"""Run a plan against one or more models on the same samples, and save the numbers as JSON.

``run_evaluation`` checks everything it can before the first attack starts (inputs, the value
grid, every attack's settings, every model on one sample), so a long run does not fail halfway
on a bad setting. Every (model, entry) pair runs the entry's attack on all samples; the results
are kept whole (``EvaluationResult.records``) so reports can show adversarial examples.

A model that contains a randomized or non-differentiable advex defense is evaluated adaptively
(Athalye et al. 2018): every attack runs through ``advex.defenses.adaptive.Adaptive`` (BPDA
through the non-differentiable defenses, EOT over the randomized ones) and every point is
decided on the deployed model; ``EvaluationResult.adaptive`` says which models and how.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from advex.attacks import checks as arg_checks
from advex.attacks.base import Attack
from advex.attacks.ensemble import Ensemble
from advex.defenses.adaptive import BACKWARDS, Adaptive, needs_adapting, splittable
from advex.defenses.base import defenses_in, is_nondifferentiable, is_randomized
from advex.defenses.base import seed as seed_defenses
from advex.evaluate.checks import Flag, run_checks
from advex.evaluate.clever import CleverResult, clever
from advex.evaluate.metrics import accuracy, json_safe, summary_row, worst_case_row
from advex.evaluate.plan import PlanEntry
from advex.evaluate.store import Store, data_hash, model_hash
from advex.evaluate.stored import clever_from_store, entry_key, load_result, save_batch
from advex.evaluate.transfer import TransferMatrix
from advex.evaluate.transfer import matrix as transfer_matrix
from advex.model import Classifier, as_classifier, check_inputs
from advex.norms import on_grid
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EOT_SAMPLES",
    "EvaluationResult",
    "Record",
    "adaptive_settings",
    "run_evaluation",
    "write_results",
]

#: Samples per attack batch. Small CNNs on a CPU run about twice as fast per sample in batches
#: of a few hundred as in one batch of 1000 (the activations stay in cache).
DEFAULT_BATCH_SIZE = 256

#: Draws per forward pass of a randomized model in an adaptive evaluation (EOT).
DEFAULT_EOT_SAMPLES = 10


@dataclass(frozen=True)
class Record:
    """One attack run: the model's name, the plan entry, the attack's result, and the sanity
    checks' flags (ensemble entries only; see ``advex.evaluate.checks``)."""

    model: str
    entry: PlanEntry
    result: AttackResult
    flags: tuple[Flag, ...] = ()


@dataclass
class EvaluationResult:
    """Everything one evaluation produced.

    Attributes:
        x, y: the evaluated samples (B, ...) and labels (B,), on the CPU.
        plan: the plan entries, in the order they ran.
        clean_pred: model name → clean predictions (B,).
        records: one ``Record`` per (model, entry), models outer, entries inner.
        bounds, levels, seed, batch_size: the settings every attack ran with.
        seconds: wall time of the whole run.
    """

    x: Tensor
    y: Tensor
    plan: list[PlanEntry]
    clean_pred: dict[str, Tensor]
    records: list[Record] = field(default_factory=list)
    bounds: tuple[float, float] = (0.0, 1.0)
    levels: int | None = None
    seed: int = 0
    batch_size: int | None = None
    seconds: float = 0.0
    #: (entry index, source model, target model) → the target's labels on the source's
    #: adversarial points (several models only; see ``transfer_matrices``).
    cross_pred: dict[tuple[int, str, str], Tensor] = field(default_factory=dict)
    #: model name → CLEVER estimates (one per Lp norm of the plan) on the first samples.
    clever: dict[str, list[CleverResult]] = field(default_factory=dict)
    #: model name → how it was evaluated, for each model that contains a randomized or
    #: non-differentiable advex defense (see ``adaptive_settings``).
    adaptive: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        return list(self.clean_pred)

    def clean_accuracy(self, model: str) -> float:
        """Clean accuracy of ``model`` on the evaluated samples."""
        return accuracy(self.clean_pred[model], self.y)

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per (model, attack, norm, eps) (see ``metrics.summary_row``)."""
        return [summary_row(r.model, r.entry, r.result, self.x, r.flags) for r in self.records]

    def flags(self) -> list[dict[str, Any]]:
        """Every sanity check that ran: model, entry label and the flag's fields."""
        return [
            {"model": r.model, "label": r.entry.label, **f.to_dict()}
            for r in self.records
            for f in r.flags
        ]

    def worst_case(self) -> list[dict[str, Any]]:
        """Per (model, norm, eps) run by two or more attacks: the per-sample worst case."""
        groups: dict[tuple[str, str, float | None], list[Record]] = {}
        for r in self.records:
            groups.setdefault((r.model, r.entry.norm, r.entry.eps), []).append(r)
        return [
            worst_case_row(model, [r.entry for r in recs], [r.result for r in recs])
            for (model, _, _), recs in groups.items()
            if len(recs) > 1
        ]

    def transfer_matrices(self) -> list[TransferMatrix]:
        """One transfer matrix per plan entry run on two or more models: each model's
        adversarial points evaluated on every model (``advex.evaluate.transfer``)."""
        out = []
        for i, entry in enumerate(self.plan):
            results = {r.model: r.result for r in self.records if r.entry == entry}
            if len(results) < 2:
                continue
            preds: dict[tuple[str, str], Tensor] = {}
            for s in results:
                for t in results:
                    pred = results[s].pred if s == t else self.cross_pred.get((i, s, t))
                    if pred is not None:
                        preds[s, t] = pred
            clean = {name: self.clean_pred[name] for name in results}
            out.append(transfer_matrix(results, preds, clean, self.y))
        return out

    def result(self, model: str, entry: PlanEntry) -> AttackResult:
        """The result of ``entry`` on ``model``."""
        for r in self.records:
            if r.model == model and r.entry == entry:
                return r.result
        raise KeyError(f"no result for model {model!r} and {entry.label!r}")

    def to_dict(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON document ``write_results`` saves: metadata, models, plan, rows."""
        out: dict[str, Any] = dict(metadata or {})
        out.update(
            n=int(self.y.shape[0]),
            seed=self.seed,
            batch_size=self.batch_size,
            bounds=list(self.bounds),
            levels=self.levels,
            total_seconds=self.seconds,
            models={
                name: {"clean_accuracy": self.clean_accuracy(name), "n": int(self.y.shape[0])}
                for name in self.clean_pred
            },
            plan=[e.to_dict() for e in self.plan],
            rows=self.rows(),
            worst_case=self.worst_case(),
            checks=self.flags(),
            adaptive=self.adaptive,
        )
        return json_safe(out)


def environment() -> dict[str, Any]:
    """Versions, device and time: the metadata every results file carries."""
    import numpy
    import scipy

    import advex

    return {
        "advex_version": advex.__version__,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "scipy_version": scipy.__version__,  # HiGHS (the MIP solver) ships inside SciPy
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def check_grid(x: Tensor, levels: int | None, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Raise ``ValueError`` unless every sample lies on the value grid of ``levels``."""
    if levels is None:
        return
    grid = ThreatModel(bounds=bounds, levels=levels)
    off = int((~on_grid(x, grid)).sum())
    if off:
        raise ValueError(
            f"levels: {off} of {len(x)} samples are not on the grid of levels={levels} "
            f"(multiples of 1/{levels - 1} in [{bounds[0]:g}, {bounds[1]:g}]); quantize the "
            "data first or drop levels"
        )


def check_model(name: str, clf: Classifier, x: Tensor, y: Tensor) -> None:
    """Raise ``ValueError`` unless ``clf`` maps one sample of ``x`` to logits covering ``y``."""
    try:
        with torch.no_grad(), clf.attacking():
            logits = clf(x[:1].to(clf.device))
    except Exception as err:  # any failure here means this model cannot take these inputs
        raise ValueError(
            f"model {name!r}: cannot run on inputs of shape {tuple(x.shape[1:])}: "
            f"{type(err).__name__}: {err}"
        ) from err
    k = int(logits.shape[1])
    if int(y.max()) >= k:
        raise ValueError(f"model {name!r}: has {k} outputs but the labels go up to {int(y.max())}")


def check_setup(
    models: Mapping[str, Classifier],
    x: Tensor,
    y: Tensor,
    plan: Sequence[PlanEntry],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    levels: int | None = None,
) -> None:
    """Raise ``ValueError`` for anything that would make the run fail after it started."""
    if not models:
        raise ValueError("models: expected at least one model")
    if not plan:
        raise ValueError("plan: expected at least one entry")
    check_inputs(x, y, bounds=bounds)
    check_grid(x, levels, bounds)
    for entry in plan:
        try:
            entry.build(bounds=bounds, levels=levels)
        except ValueError as err:
            raise ValueError(f"{entry.label}: {err}") from err
    for name, clf in models.items():
        check_model(name, clf, x, y)


def run_evaluation(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    plan: Sequence[PlanEntry],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    levels: int | None = None,
    seed: int = 0,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    store: Store | None = None,
    clever_samples: int = 0,
    adaptive: bool = True,
    eot_samples: int = DEFAULT_EOT_SAMPLES,
    bpda: str = "surrogate",
) -> EvaluationResult:
    """Run every plan entry against every model on the samples ``x``, ``y``.

    Every attack runs batch by batch (batch i with ``batch_offset=i``, so the result is that
    of one call on all samples). With a ``store``, each batch's result is saved the moment it
    exists, and a run over a store that already holds some of them (``--resume``) skips
    those: the result is identical to an uninterrupted run with the same settings.

    Args:
        models: name → classifier (an ``advex.Classifier`` or an ``nn.Module`` giving logits).
        x: inputs (B, C, H, W) within ``bounds``; y: labels (B,).
        plan: the entries to run (``advex.evaluate.default_plan()``, ``grid_plan(...)``).
        bounds: valid input range of every threat model.
        levels: None, or the value grid of every threat model (256: 8-bit images); ``x`` must
            lie on it.
        seed: seed of every attack (each attack seeds its own generator; no global state).
        batch_size: samples per attack batch (None: all at once). Each batch gets its own
            generator seeded from ``seed`` and the batch index, so results depend on it.
        progress: show a progress bar on stderr over (model, entry) pairs; None shows it only
            when stderr is a terminal.
        store: an open ``advex.evaluate.store.Store`` to save into and resume from.
        clever_samples: also estimate CLEVER scores (``advex.evaluate.clever``; an estimate,
            never a certificate) on the first this many samples, for every model and every Lp
            norm of the plan, with light settings (``CLEVER_SETTINGS``).
        adaptive: attack every model that contains a randomized or non-differentiable advex
            defense adaptively (``advex.defenses.adaptive.Adaptive``: BPDA and EOT, each point
            decided on the deployed model, a randomized one on a draw seeded from ``seed``).
            False gives the naive numbers (attacks run on the deployed model as it is).
        eot_samples: draws averaged per forward pass for a randomized model (EOT).
        bpda: the backward pass of the non-differentiable defenses: "surrogate" (each
            defense's ``backward_surrogate``) or "identity" (straight-through).

    Returns:
        An ``EvaluationResult`` with one record per (model, entry).

    Raises:
        ValueError: bad inputs, data off the grid, a setting an attack rejects, or a model that
            cannot take the inputs — all before the first attack runs.
        StoreError: the store holds another run, or cannot be written (disk full, read-only).
    """
    start = time.perf_counter()
    clfs = {str(name): as_classifier(m, bounds=bounds) for name, m in models.items()}
    entries = list(plan)
    x = x.detach().cpu()
    y = y.detach().cpu()
    check_setup(clfs, x, y, entries, bounds=bounds, levels=levels)
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive: expected True or False, got {adaptive!r}")
    eot_samples = arg_checks.positive_int("eot_samples", eot_samples)
    if bpda not in BACKWARDS:
        raise ValueError(f"bpda: expected one of {', '.join(BACKWARDS)}, got {bpda!r}")
    adapted = {
        name: adaptive_settings(clf, adaptive=adaptive, eot_samples=eot_samples, bpda=bpda)
        for name, clf in clfs.items()
        if needs_adapting(clf)
    }
    keys = [entry_key(e) for e in entries]
    if store is not None:
        config = run_config(clfs, x, y, entries, bounds, levels, seed, batch_size)
        if adapted:  # only then: the stores of runs without such defenses keep their config
            config["adaptive"] = adapted
        store.start(config, environment())
        # each step below is idempotent: a run killed between them is completed on resume
        if not store.has_inputs():
            store.put_inputs(x, y)
        store.put_entries([(k, e.label, e.to_dict()) for k, e in zip(keys, entries, strict=True)])
    clean_pred = {}
    for name, clf in clfs.items():
        stored = None if store is None else store.clean(name)
        if stored is None:
            seed_defenses(clf, seed)  # a randomized model: a reproducible draw
            stored = clf.predict(x.to(clf.device)).cpu()
            if store is not None:
                store.put_clean(name, stored)
        clean_pred[name] = stored
    out = EvaluationResult(
        x=x,
        y=y,
        plan=entries,
        clean_pred=clean_pred,
        bounds=bounds,
        levels=levels,
        seed=seed,
        batch_size=batch_size,
        adaptive=adapted,
    )
    bar = tqdm(
        total=len(clfs) * len(entries),
        desc="evaluate",
        unit="attack",
        file=sys.stderr,
        disable=(not progress) if progress is not None else None,
        **_bar_width(),
    )
    with bar:
        for name, clf in clfs.items():
            adapt_model = adaptive and name in adapted
            for entry, key in zip(entries, keys, strict=True):
                tag = " (adaptive)" if adapt_model else ""
                bar.set_postfix_str(f"{name}: {entry.label}{tag}", refresh=True)
                threat = entry.threat(bounds=bounds, levels=levels)
                stored_flags = None if store is None else store.completed(name, key)
                if store is not None and stored_flags is not None:
                    result = load_result(store, name, key, threat)
                    flags = tuple(Flag(**f) for f in stored_flags)
                else:
                    attack = entry.build(
                        bounds=bounds, levels=levels, seed=seed, batch_size=batch_size
                    )
                    if adapt_model:
                        attack = Adaptive(attack, eot_samples=eot_samples, bpda=bpda)
                    result = _run_batches(attack, clf, x, y, batch_size, store, name, key)
                    flags = ()
                    inner = attack.attack if isinstance(attack, Adaptive) else attack
                    if isinstance(inner, Ensemble):
                        bar.set_postfix_str(f"{name}: {entry.label} (sanity checks)", refresh=True)
                        flags = _sanity_checks(clf, x, y, attack, result, seed)
                    if store is not None:
                        store.complete(name, key, [f.to_dict() for f in flags])
                out.records.append(Record(name, entry, result, flags))
                bar.update(1)
    _cross_predictions(out, clfs, keys, store)
    if clever_samples:
        _clever_scores(out, clfs, store, clever_samples, seed)
    out.seconds = time.perf_counter() - start
    if store is not None:
        store.set_meta(seconds=out.seconds + float(store.meta().get("seconds", 0.0)))
    return out


def adaptive_settings(
    clf: Classifier, *, adaptive: bool, eot_samples: int, bpda: str
) -> dict[str, Any]:
    """How a model with randomized or non-differentiable advex defenses is evaluated: its
    defenses, whether the attacks are adaptive, the EOT draws (randomized models) and the BPDA
    backward pass (non-differentiable defenses); None where it does not apply."""
    randomized, nondiff = is_randomized(clf), is_nondifferentiable(clf)
    return {
        "adaptive": adaptive,
        "defenses": [repr(d) for d in defenses_in(clf)],
        "randomized": randomized,
        "nondifferentiable": nondiff,
        "eot_samples": eot_samples if adaptive and randomized else None,
        "bpda": bpda if adaptive and nondiff else None,
    }


def _sanity_checks(
    clf: Classifier, x: Tensor, y: Tensor, attack: Attack, result: AttackResult, seed: int
) -> tuple[Flag, ...]:
    """The sanity checks of an ensemble entry (``advex.evaluate.checks``).

    An adaptive entry is checked on the view its attacks ran on (BPDA, EOT: the gradients the
    checks look at are the ones the attacks used), with each member wrapped in ``Adaptive`` so
    the reproducibility check reseeds the defenses as the evaluation did. The randomized-model
    check does not fire there: its advice (EOT) is what the evaluation did."""
    if not isinstance(attack, Adaptive):
        return tuple(run_checks(clf, x, y, attack, result, seed=seed))
    inner = attack.attack
    assert isinstance(inner, Ensemble)
    members = [Adaptive(a, eot_samples=attack.eot_samples, bpda=attack.bpda) for a in inner.attacks]
    checked = Ensemble(inner.threat, members, seed=inner.seed, batch_size=inner.batch_size)
    flags = run_checks(attack.view(clf), x, y, checked, result, seed=seed)
    out = []
    for f in flags:
        if f.name == "randomized_model" and f.fired:
            f = dataclasses.replace(
                f,
                fired=False,
                message=f"{f.message}; the evaluation attacked the mean over "
                f"{attack.eot_samples} draws (EOT) and decided each point on a seeded draw",
            )
        out.append(f)
    return tuple(out)


def _cross_predictions(
    out: EvaluationResult, clfs: Mapping[str, Classifier], keys: Sequence[str], store: Store | None
) -> None:
    """Every model's labels on every other model's adversarial points, per plan entry (stored,
    and loaded from the store on a resume)."""
    if len(clfs) < 2:
        return
    for i, (entry, key) in enumerate(zip(out.plan, keys, strict=True)):
        stored = {} if store is None else store.cross(key)
        for source in clfs:
            x_adv = out.result(source, entry).x_adv
            for target, clf in clfs.items():
                if target == source:
                    continue
                pred = stored.get((source, target))
                if pred is None:
                    seed_defenses(clf, out.seed)  # a randomized model: a reproducible draw
                    pred = clf.predict(x_adv.to(clf.device)).cpu()
                    if store is not None:
                        store.put_cross(key, source, target, pred)
                out.cross_pred[i, source, target] = pred


#: The tensor fields of a ``CleverResult`` (the rest are settings).
CLEVER_TENSORS: tuple[str, ...] = ("scores", "lipschitz", "classes", "correct")
CLEVER_TENSORS += ("class_scores", "class_lipschitz", "margins", "pvalues")

#: CLEVER settings of an evaluation: 50 batches of 128 points (the paper: 500 of 1024), 3
#: initial Weibull shapes — about a second per sample and class on a small CNN.
CLEVER_SETTINGS: dict[str, Any] = {"n_batches": 50, "batch_points": 128, "shapes": (1.0, 5.0, 20.0)}


def _clever_scores(
    out: EvaluationResult,
    clfs: Mapping[str, Classifier],
    store: Store | None,
    n: int,
    seed: int,
) -> None:
    """CLEVER estimates per model and Lp norm of the plan (stored; loaded on a resume)."""
    norms = [m for m in ("linf", "l2", "l1") if any(e.norm == m for e in out.plan)]
    stored = (
        {} if store is None else {(m, k): (meta, t) for m, k, meta, t in store.extras("clever")}
    )
    x, y = out.x[:n], out.y[:n]
    for name, clf in clfs.items():
        for norm in norms:
            if (name, norm) in stored:
                res = clever_from_store(*stored[name, norm])
            else:
                res = clever(
                    clf, x.to(clf.device), y.to(clf.device), norm=norm, seed=seed, **CLEVER_SETTINGS
                )
                if store is not None:
                    tensors = {k: getattr(res, k) for k in CLEVER_TENSORS}
                    meta = {
                        f.name: getattr(res, f.name)
                        for f in dataclasses.fields(res)
                        if f.name not in CLEVER_TENSORS
                    }
                    store.put_extra("clever", name, norm, meta, tensors)
            out.clever.setdefault(name, []).append(res)


def _run_batches(
    attack: Attack,
    clf: Classifier,
    x: Tensor,
    y: Tensor,
    batch_size: int | None,
    store: Store | None,
    model: str,
    key: str,
) -> AttackResult:
    """Run ``attack`` batch by batch, saving each batch (and skipping those already saved)."""
    n = x.shape[0]
    size = (batch_size or n) if splittable(attack) else n
    done = set() if store is None else store.done_batches(model, key)
    parts = []
    for i, lo in enumerate(range(0, n, size)):
        if i in done:
            continue
        xb, yb = x[lo : lo + size].to(clf.device), y[lo : lo + size].to(clf.device)
        part = _to_cpu(attack(clf, xb, yb, batch_offset=i))
        if store is not None:
            save_batch(store, model, key, i, lo, part)
        parts.append(part)
    if done:  # a resumed entry: the stored batches and the new ones, as stored
        assert store is not None
        return load_result(store, model, key, attack.threat)
    return type(parts[0]).concat(parts)


def run_config(
    clfs: Mapping[str, Classifier],
    x: Tensor,
    y: Tensor,
    plan: Sequence[PlanEntry],
    bounds: tuple[float, float],
    levels: int | None,
    seed: int,
    batch_size: int | None,
) -> dict[str, Any]:
    """What makes two runs the same run: a resume must match it exactly."""
    return {
        # a list, in the run's order (JSON objects are stored with sorted keys)
        "models": [[name, model_hash(clf.module)] for name, clf in clfs.items()],
        "data": data_hash(x, y),
        "n": int(x.shape[0]),
        "bounds": list(bounds),
        "levels": levels,
        "seed": seed,
        "batch_size": batch_size,
        "plan": [e.to_dict() for e in plan],
    }


def _bar_width() -> dict[str, Any]:
    """Follow the terminal's size, or assume 100×40 where it reports 0×0 (some pseudo-terminals;
    tqdm would draw an empty bar there)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return {"dynamic_ncols": True}
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": 100, "nrows": 40}


def _to_cpu(result: AttackResult) -> AttackResult:
    return result.map_samples(lambda t: t.cpu())


def write_results(
    result: EvaluationResult, path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``result.to_dict()`` with the environment and ``metadata`` as JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = environment()
    meta.update(metadata or {})
    doc = result.to_dict(meta)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
