"""Attack results to and from the results store (``advex.evaluate.store``).

A batch's ``AttackResult`` is saved as per-sample rows plus its adversarial points; a whole
result is rebuilt from its batches exactly (the points are stored bit for bit, the per-sample
fields as integers and doubles), so a result loaded from the store equals the one computed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from advex.attacks.ensemble import EnsembleResult
from advex.evaluate.checks import Flag
from advex.evaluate.plan import PlanEntry
from advex.evaluate.store import Store, StoreError
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = ["clever_from_store", "entry_key", "load_evaluation", "load_result", "save_batch"]


def entry_key(entry: PlanEntry) -> str:
    """A stable key for a plan entry: 16 hex digits of the SHA-256 of its JSON form."""
    text = json.dumps(entry.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_batch(
    store: Store, model: str, key: str, batch: int, start: int, result: AttackResult
) -> None:
    """Save one batch's result (per-sample rows and points) in one transaction."""
    columns = {
        "success": result.success,
        "distance": result.distance.double(),
        "pred": result.pred,
        "y": result.y,
        "clean_pred": result.clean_pred,
        "queries": result.queries,
        "gradients": result.gradients,
        "steps": result.steps,
        "rechecks": result.rechecks,
        "broken_by": result.broken_by if isinstance(result, EnsembleResult) else None,
    }
    info: dict[str, Any] = {
        "attack": result.attack,
        "params": result.params,
        "metric": result.metric,
        "distance_dtype": str(result.distance.dtype).removeprefix("torch."),
    }
    if isinstance(result, EnsembleResult):
        info["members"] = list(result.members)
    store.put_batch(model, key, batch, start, columns, result.x_adv, result.seconds, info)


def load_result(store: Store, model: str, key: str, threat: ThreatModel) -> AttackResult:
    """The result of (model, entry ``key``) rebuilt from its stored batches."""
    parts = store.batches(model, key)
    if not parts:
        raise StoreError(f"{store.path}: no stored batches for {key} on {model}")
    cols = store.columns(model, key)
    n = parts[-1]["stop"]
    if len(cols["success"]) != n or [p["start"] for p in parts] != _starts(parts):
        raise StoreError(f"{store.path}: the batches of {key} on {model} are incomplete")
    info = parts[0]["info"]
    dtype = getattr(torch, info.get("distance_dtype", "float32"))

    def long(name: str) -> torch.Tensor:
        return torch.tensor(cols[name], dtype=torch.long)

    fields: dict[str, Any] = {
        "x_adv": torch.cat([p["x_adv"] for p in parts]),
        "success": torch.tensor([bool(s) for s in cols["success"]], dtype=torch.bool),
        "distance": torch.tensor(cols["distance"], dtype=torch.float64).to(dtype),
        "pred": long("pred"),
        "y": long("y"),
        "target": None,
        "clean_pred": long("clean_pred"),
        "queries": long("queries"),
        "gradients": long("gradients"),
        "steps": long("steps"),
        "seconds": float(sum(p["seconds"] for p in parts)),
        "attack": info["attack"],
        "threat": threat,
        "params": info.get("params", {}),
        "rechecks": long("rechecks"),
        "metric": info.get("metric"),
    }
    if "members" in info:
        return EnsembleResult(**fields, broken_by=long("broken_by"), members=info["members"])
    return AttackResult(**fields)


def _starts(parts: list[dict[str, Any]]) -> list[int]:
    """The starts contiguous batches would have: 0, stop₀, stop₁, ..."""
    out, at = [], 0
    for p in parts:
        out.append(at)
        at = p["stop"]
    return out


def clever_from_store(meta: dict[str, Any], tensors: dict[str, Any]) -> Any:
    """A ``CleverResult`` from its stored settings and tensors."""
    from advex.evaluate.clever import CleverResult

    return CleverResult(**tensors, **meta)


def load_evaluation(store: Store) -> Any:
    """The ``EvaluationResult`` of the run in ``store``: its complete (model, entry) pairs."""
    from advex.evaluate.run import EvaluationResult, Record

    meta = store.meta()
    config = meta.get("config")
    if config is None:
        raise StoreError(f"{store.path}: holds no run (it stopped before it began)")
    x, y = store.inputs()
    bounds = tuple(config["bounds"])
    levels = config["levels"]
    plan = []
    keyed = []
    for key, _, spec in store.entries():
        entry = PlanEntry(spec["attack"], spec["norm"], spec["eps"], spec.get("params", {}))
        plan.append(entry)
        keyed.append((key, entry))
    clean_pred = {}
    for name, _ in config["models"]:
        pred = store.clean(name)
        if pred is not None:
            clean_pred[name] = pred
    out = EvaluationResult(
        x=x,
        y=y,
        plan=plan,
        clean_pred=clean_pred,
        bounds=(float(bounds[0]), float(bounds[1])),
        levels=levels,
        seed=config["seed"],
        batch_size=config["batch_size"],
        seconds=float(meta.get("seconds", 0.0)),
    )
    out.adaptive = dict(config.get("adaptive", {}))
    for model, _, meta, tensors in store.extras("clever"):
        out.clever.setdefault(model, []).append(clever_from_store(meta, tensors))
    for i, (key, _) in enumerate(keyed):
        for (source, target), pred in store.cross(key).items():
            out.cross_pred[i, source, target] = pred
    for name in clean_pred:
        for key, entry in keyed:
            flags = store.completed(name, key)
            if flags is None:
                continue
            threat = entry.threat(bounds=out.bounds, levels=levels)
            result = load_result(store, name, key, threat)
            out.records.append(Record(name, entry, result, tuple(Flag(**f) for f in flags)))
    return out
