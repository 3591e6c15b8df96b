"""The per-sample results table of a run, as CSV or JSON (``advex export``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from advex.evaluate.store import COLUMNS, Store

__all__ = ["EXPORT_COLUMNS", "write_table"]

#: The exported columns: the store's per-sample columns and the plan entry's label.
EXPORT_COLUMNS: tuple[str, ...] = (*COLUMNS[:2], "label", *COLUMNS[2:])


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_table(store: Store, path: str | Path, fmt: str) -> int:
    """Write every per-sample row of ``store`` to ``path`` as ``fmt`` ('csv' or 'json').

    CSV: a header row, then one row per (model, plan entry, sample); empty cells for missing
    values. JSON: ``{"run": <the run's configuration>, "columns": [...], "rows": [{...}]}``.
    Returns the number of rows written.
    """
    if fmt not in ("csv", "json"):
        raise ValueError(f"fmt: expected 'csv' or 'json', got {fmt!r}")
    rows = store.rows()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(EXPORT_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    else:
        doc = {
            "run": store.meta().get("config"),
            "columns": list(EXPORT_COLUMNS),
            "rows": [{k: _plain(row.get(k)) for k in EXPORT_COLUMNS} for row in rows],
        }
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(rows)
