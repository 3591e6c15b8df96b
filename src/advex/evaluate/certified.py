"""Certification beside the attacks: a certified lower bound on each sample's minimal
adversarial distance, next to the best attack's distance (an upper bound).

For every model and every Lp norm of the plan (L∞, L2, L1), ``certify_evaluation`` computes per
sample a lower bound l_i: no adversarial example exists at a distance < l_i from x_i.

* ``mip`` — ``advex.certify.mip.minimal_distortion``: exact (l_i = the minimal distance) when
  the MILP finishes within the time limit, else the best proven lower bound (L2: a certified
  interval unless SCIP is installed).
* ``ibp``, ``crown``, ``lp``, ``progressive`` — the largest radius those bounds certify
  (bisection, ``advex.certify.bounds.certified_radius``).

Clean mistakes get l_i = 0. Results are stored in the run's store (kind "certified", one entry
per model, norm and chunk of samples, saved as each chunk is done; a resumed run reads them
back), checked against the attacks (a certificate above an attack's distance raises: one of
the two is wrong) and returned as ``CertifiedBounds`` for the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from advex.evaluate.metrics import best_distances, certified_gap
from advex.evaluate.report.analysis import CertifiedBounds
from advex.evaluate.store import Store
from advex.model import Classifier

__all__ = ["CERTIFY_CHOICES", "certified_rows", "certify_evaluation", "load_certified"]

CERTIFY_CHOICES = ("ibp", "crown", "lp", "progressive", "mip")
_CHUNK = 25


def _lower_bounds(
    clf: Classifier, x: Tensor, y: Tensor, norm: str, method: str, time_limit: float, seed: int
) -> dict[str, Tensor]:
    if method == "mip":
        from advex.certify.mip import minimal_distortion

        d = minimal_distortion(clf, x, y, norm=norm, time_limit=time_limit, seed=seed)
        return {
            "lower": torch.as_tensor(d.lower, dtype=torch.float64),
            "upper": torch.as_tensor(d.upper, dtype=torch.float64),
        }
    from advex.certify.bounds import certified_radius

    radius = torch.as_tensor(certified_radius(clf, x, y, norm=norm, method=method))
    return {"lower": radius.to(torch.float64)}


def certify_evaluation(
    result: Any,
    models: Mapping[str, Classifier],
    method: str,
    *,
    store: Store | None = None,
    time_limit: float = 60.0,
    seed: int = 0,
) -> dict[str, list[CertifiedBounds]]:
    """Certified lower bounds per model and plan norm (see the module docstring).

    Raises:
        ValueError: unknown method, or a certificate contradicted by an attack.
    """
    if method not in CERTIFY_CHOICES:
        raise ValueError(f"certify: expected one of {', '.join(CERTIFY_CHOICES)}, got {method!r}")
    norms = [m for m in ("linf", "l2", "l1") if any(e.norm == m for e in result.plan)]
    stored: dict[tuple[str, str], dict[str, Tensor]] = {}
    if store is not None:
        for model, name, _meta, tensors in store.extras("certified"):
            stored[model, name] = tensors
    out: dict[str, list[CertifiedBounds]] = {}
    n = len(result.y)
    for name, clf in models.items():
        for norm in norms:
            parts: dict[str, list[Tensor]] = {}
            for start in range(0, n, _CHUNK):
                key = f"{method}:{norm}:{start}"
                chunk = stored.get((name, key))
                if chunk is None:
                    xs = result.x[start : start + _CHUNK].to(clf.device)
                    ys = result.y[start : start + _CHUNK].to(clf.device)
                    chunk = _lower_bounds(clf, xs, ys, norm, method, time_limit, seed)
                    if store is not None:
                        meta = {"method": method, "norm": norm, "start": start}
                        store.put_extra("certified", name, key, meta, chunk)
                for k, v in chunk.items():
                    parts.setdefault(k, []).append(v.cpu())
            cert = _bounds(result, name, norm, method, parts)
            certified_gap(cert.lower, _upper(result, name, cert))  # raises on a contradiction
            out.setdefault(name, []).append(cert)
    return out


def _bounds(
    result: Any, model: str, norm: str, method: str, parts: Mapping[str, list[Tensor]]
) -> CertifiedBounds:
    """The chunks joined; clean mistakes have lower = upper = 0."""
    correct = result.clean_pred[model] == result.y
    lower = torch.cat(parts["lower"]).to(torch.float64)
    lower = torch.where(correct, lower, torch.zeros_like(lower))
    upper = None
    if "upper" in parts:
        upper = torch.cat(parts["upper"]).to(torch.float64)
        upper = torch.where(correct, upper, torch.zeros_like(upper))
    return CertifiedBounds(norm, lower, method, upper)


def _upper(result: Any, model: str, cert: CertifiedBounds) -> Tensor:
    """Per sample, the smallest distance of a re-checked adversarial example: the plan's
    untargeted Lp attacks in the certificate's norm, and the certifier's own (∞: none)."""
    attacks = [
        r.result
        for r in result.records
        if r.model == model
        and r.entry.norm == cert.norm
        and r.result.metric is None
        and not r.result.threat.targeted
    ]
    upper = best_distances(attacks) if attacks else torch.full_like(cert.lower, torch.inf)
    if cert.upper is not None:
        upper = torch.minimum(upper, cert.upper)
    return upper


def certified_rows(
    result: Any, certified: Mapping[str, list[CertifiedBounds]]
) -> list[dict[str, Any]]:
    """Per model and norm: the method and, per sample, [certified lower bound, best attack
    distance] (null where no attack succeeded; the certifier's own adversarial examples count)
    — what ``results.json`` records."""
    rows = []
    for name, certs in certified.items():
        for cert in certs:
            upper = _upper(result, name, cert)
            rows.append(
                {
                    "model": name,
                    "norm": cert.norm,
                    "method": cert.method,
                    "samples": [
                        [float(lo), float(up)] for lo, up in zip(cert.lower, upper, strict=True)
                    ],
                }
            )
    return rows


def load_certified(store: Store, result: Any) -> dict[str, list[CertifiedBounds]]:
    """The certified lower bounds a run saved (complete model/norm pairs only), for the
    report; nothing is recomputed."""
    groups: dict[tuple[str, str, str], dict[int, dict[str, Tensor]]] = {}
    for model, _key, meta, tensors in store.extras("certified"):
        groups.setdefault((model, meta["method"], meta["norm"]), {})[int(meta["start"])] = tensors
    out: dict[str, list[CertifiedBounds]] = {}
    for (model, method, norm), chunks in groups.items():
        parts: dict[str, list[Tensor]] = {}
        for start in sorted(chunks):
            for k, v in chunks[start].items():
                parts.setdefault(k, []).append(v)
        if model not in result.clean_pred or sum(map(len, parts["lower"])) != len(result.y):
            continue
        out.setdefault(model, []).append(_bounds(result, model, norm, method, parts))
    return out
