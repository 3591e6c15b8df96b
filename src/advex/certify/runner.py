"""Certify a dataset at several radii, saving every decided sample as it is decided.

For each radius ε and sample i the runner records a status:

* ``robust`` — certified: no input in the ε-ball ∩ box changes the prediction (by bounds, the
  MILP, or, for randomized smoothing, the smoothed classifier's certificate at level 1 − α);
* ``not robust`` — a re-checked adversarial example exists (clean mistakes included);
* ``unknown`` — neither (an incomplete method, or the MILP's time limit).

Bound methods (``ibp``, ``crown``, ``lp``, ``progressive``) run PGD beside the bounds so that
"not robust" is filled in; a sample both certified and broken is counted in ``disagreements``
(a bug; it must be 0). ``mip`` runs ``advex.certify.mip.verify`` one sample at a time.
``smoothing`` certifies an L2 radius per sample once and compares it with each ε.

Records are appended to ``OUT/samples.jsonl`` (flushed and fsynced per batch); with
``resume=True`` the samples already there are not recomputed, so an interrupted run loses at
most one batch.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advex.model import Classifier, as_classifier

__all__ = ["BOUND_METHODS", "CERTIFY_METHODS", "CertifyRun", "certify_dataset"]

BOUND_METHODS = ("ibp", "crown", "lp", "progressive")
CERTIFY_METHODS = (*BOUND_METHODS, "mip", "smoothing")
SAMPLES_FILE = "samples.jsonl"


@dataclass
class CertifyRun:
    """Per-sample records and a summary row per radius."""

    method: str
    norm: str
    records: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def statuses(self, eps: float) -> list[str]:
        rows = sorted((r for r in self.records if r["eps"] == eps), key=lambda r: r["index"])
        return [r["status"] for r in rows]

    def summary(self) -> list[dict[str, Any]]:
        """One row per radius: counts, accuracies, disagreements and seconds per sample."""
        out = []
        for eps in sorted({r["eps"] for r in self.records}):
            rows = [r for r in self.records if r["eps"] == eps]
            n = len(rows)
            certified = sum(r["status"] == "robust" for r in rows)
            broken = sum(r["status"] == "not robust" for r in rows)
            attacked = [r["attack_robust"] for r in rows if "attack_robust" in r]
            seconds = [float(r["seconds"]) for r in rows]
            out.append(
                {
                    "eps": eps,
                    "n": n,
                    "clean_accuracy": sum(bool(r["clean_correct"]) for r in rows) / n,
                    "certified_accuracy": certified / n,
                    "attack_accuracy": sum(map(bool, attacked)) / n if attacked else None,
                    "decided": (certified + broken) / n,
                    "unknown": n - certified - broken,
                    "disagreements": sum(bool(r.get("disagreement", False)) for r in rows),
                    "median_seconds": statistics.median(seconds) if seconds else 0.0,
                    "max_seconds": max(seconds) if seconds else 0.0,
                }
            )
        return out


def _load(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut off by a crash: everything after it is redone
    return rows


def _append(path: Path | None, rows: Sequence[dict[str, Any]]) -> None:
    if path is None or not rows:
        return
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def certify_dataset(
    model: Any,
    x: Tensor,
    y: Tensor,
    eps: Sequence[float],
    *,
    norm: str = "linf",
    method: str = "mip",
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    time_limit: float = 60.0,
    mip_bounds: str | None = None,
    batch_size: int = 100,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CertifyRun:
    """Certify every (ε, sample) pair; see the module docstring.

    Args:
        model: an ``nn.Module`` or advex ``Classifier`` (pixel space, logits out).
        x, y: samples (B, ...) in the model's bounds and labels (B,).
        eps: radii in ``norm``.
        method: one of ``CERTIFY_METHODS``.
        out: a folder for ``samples.jsonl`` (None: keep records in memory only).
        resume: keep the records already in ``out`` and compute only the rest; without it an
            existing ``samples.jsonl`` is an error (never overwritten silently).
        time_limit: seconds per sample for ``mip``.
        mip_bounds: the bounds the MILP's big-M constants come from (None: the verifier's
            default, progressive tightening; "ibp" for plain interval arithmetic).
        batch_size: samples per batch for the bound methods.
        sigma, n0, n, alpha: randomized smoothing's noise level, selection and estimation
            draws, and failure probability.
        progress: called with (done, total) after every batch.

    Raises:
        ValueError: unknown method or norm, smoothing with a norm other than L2, bad eps, an
            existing run without ``resume``.
    """
    if method not in CERTIFY_METHODS:
        raise ValueError(f"method: expected one of {', '.join(CERTIFY_METHODS)}, got {method!r}")
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"norm: expected linf, l2 or l1, got {norm!r}")
    if method == "smoothing" and norm != "l2":
        raise ValueError("norm: randomized smoothing certifies L2 radii; use --norm l2")
    radii = [float(e) for e in eps]
    if not radii or any(not e >= 0 or e == float("inf") for e in radii):
        raise ValueError(f"eps: expected finite radii >= 0, got {list(eps)}")
    clf = as_classifier(model)
    path = None
    done: dict[tuple[float, int], dict[str, Any]] = {}
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SAMPLES_FILE
        if path.exists() and not resume:
            raise ValueError(f"out: {path} already holds a run; resume it or choose another folder")
        for r in _load(path):
            done[float(r["eps"]), int(r["index"])] = r
        # Rewrite without a possibly truncated last line.
        path.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    run = CertifyRun(method, norm, list(done.values()))
    total = len(radii) * len(y)
    count = len(done)
    with torch.no_grad():
        clean = clf.predict(x.to(clf.device)).cpu()
    if method == "smoothing":
        todo = [i for i in range(len(y)) if any((e, i) not in done for e in radii)]
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            rows = _smoothing_rows(clf, x, y, idx, radii, sigma, n0, n, alpha, seed)
            rows = [r for r in rows if (r["eps"], r["index"]) not in done]
            _append(path, rows)
            run.records.extend(rows)
            count += len(rows)
            if progress:
                progress(count, total)
        return run
    for e in radii:
        todo = [i for i in range(len(y)) if (e, i) not in done]
        step = 1 if method == "mip" else batch_size
        for start in range(0, len(todo), step):
            idx = todo[start : start + step]
            if method == "mip":
                rows = _mip_rows(clf, x, y, clean, idx, e, norm, time_limit, mip_bounds, seed)
            else:
                rows = _bound_rows(clf, x, y, clean, idx, e, norm, method, seed)
            _append(path, rows)
            run.records.extend(rows)
            count += len(rows)
            if progress:
                progress(count, total)
    return run


def _pgd_robust(clf: Classifier, x: Tensor, y: Tensor, eps: float, norm: str, seed: int) -> Tensor:
    """Whether PGD (40 steps, 2 restarts) fails on each sample (clean mistakes: False)."""
    from advex.attacks import PGD
    from advex.threat import ThreatModel

    if eps == 0:
        return clf.predict(x) == y
    threat = ThreatModel(norm, eps=eps, bounds=clf.bounds)  # type: ignore[arg-type]
    result = PGD(threat, steps=40, restarts=2, seed=seed)(clf, x, y)
    return ~result.success.cpu()


def _bound_rows(
    clf: Classifier,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    idx: list[int],
    eps: float,
    norm: str,
    method: str,
    seed: int,
) -> list[dict[str, Any]]:
    from advex.certify.bounds import bounds

    xb, yb = x[idx], y[idx]
    start = time.perf_counter()
    certified = bounds(clf, xb, yb, eps, norm=norm, method=method).certified.cpu()
    mid = time.perf_counter()
    robust = _pgd_robust(clf, xb.to(clf.device), yb.to(clf.device), eps, norm, seed)
    per = (mid - start) / len(idx)
    rows = []
    for j, i in enumerate(idx):
        ok = bool(clean[i] == y[i])
        cert = bool(certified[j]) and ok
        broken = not bool(robust[j])
        status = "robust" if cert else ("not robust" if broken else "unknown")
        rows.append(
            {
                "eps": eps,
                "index": i,
                "status": status,
                "clean_correct": ok,
                "attack_robust": not broken,
                "disagreement": cert and broken,
                "seconds": per,
                "decided_by": method if cert else ("attack" if broken else None),
            }
        )
    return rows


def _mip_rows(
    clf: Classifier,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    idx: list[int],
    eps: float,
    norm: str,
    time_limit: float,
    mip_bounds: str | None,
    seed: int,
) -> list[dict[str, Any]]:
    from advex.certify.mip import verify

    res = verify(
        clf,
        x[idx],
        y[idx],
        eps,
        norm=norm,
        time_limit=time_limit,
        bounds_method=mip_bounds,
        seed=seed,
    )
    robust_pgd = _pgd_robust(clf, x[idx].to(clf.device), y[idx].to(clf.device), eps, norm, seed)
    rows = []
    for j, i in enumerate(idx):
        status = res.status[j]
        cert = status == "robust"
        rows.append(
            {
                "eps": eps,
                "index": i,
                "status": status,
                "clean_correct": bool(clean[i] == y[i]),
                "attack_robust": bool(robust_pgd[j]),
                "disagreement": cert and not bool(robust_pgd[j]),
                "seconds": float(res.seconds[j]),
                "decided_by": res.decided_by[j],
                "margin_lower": _float(res.margin_lower[j]),
            }
        )
    return rows


def _smoothing_rows(
    clf: Classifier,
    x: Tensor,
    y: Tensor,
    idx: list[int],
    radii: list[float],
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    seed: int,
) -> list[dict[str, Any]]:
    from advex.certify.smoothing import Smoothed

    start = time.perf_counter()
    cert = Smoothed(clf, sigma).certify(x[idx], y[idx], n0=n0, n=n, alpha=alpha, seed=seed)
    per = (time.perf_counter() - start) / len(idx)
    rows = []
    for j, i in enumerate(idx):
        pred, radius = int(cert.prediction[j]), float(cert.radius[j])
        correct = pred == int(y[i])
        for e in radii:
            rows.append(
                {
                    "eps": e,
                    "index": i,
                    "status": "robust" if correct and radius >= e else "unknown",
                    "clean_correct": correct,
                    "radius": radius,
                    "prediction": pred,
                    "seconds": per,
                    "decided_by": "smoothing",
                }
            )
    return rows


def _float(v: Any) -> float | None:
    f = float(v)
    return None if f != f else f
