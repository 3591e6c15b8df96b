"""The results store: one SQLite database per run, every batch saved the moment it exists.

``OUT/store.sqlite`` holds

* ``meta``: the schema version, the run's configuration (models and their weight hashes, the
  data's hash, seed, batch size, bounds, levels, the plan) and its environment (advex, torch,
  Python, machine);
* ``inputs``: the evaluated samples x (compressed) and labels y;
* ``clean``: each model's clean prediction per sample;
* ``results``: one row per (model, plan entry, sample): success, distance, prediction, queries,
  gradients, steps, re-checks, the ensemble member that broke it, and room for certified
  status and bounds;
* ``batches``: per (model, entry, batch) its samples, seconds and adversarial points
  (float32, compressed — exact, so that a loaded result is the result that was computed);
* ``entries`` and ``flags``: the plan entries and the sanity checks' flags, and which entries
  are complete;
* ``extras``: other per-sample results of the run, such as CLEVER scores;
* ``cross``: with several models, each model's predictions on every other model's adversarial
  points (the transfer matrices).

Every batch is written in one transaction (write-ahead log, ``synchronous=FULL``): a process
killed at any moment leaves the store as it was after its last complete batch, and the next
writer recovers it. One writer at a time: ``Store`` takes an exclusive lock on ``OUT/store.lock``
and a second writer gets ``StoreLockedError`` at once, naming the holder. A full disk or a
read-only directory raises ``StoreError`` with what happened and what to do; what was stored
stays readable. A store written by another schema version is refused on open.

Tensors are stored as ``.npy`` bytes (read back with ``allow_pickle=False``: loading a store runs
no code from it), zlib-compressed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:  # POSIX advisory locks; elsewhere a second writer is caught by SQLite's own locking
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "STORE_FILE",
    "Store",
    "StoreError",
    "StoreLockedError",
    "data_hash",
    "decode_tensor",
    "decode_tensors",
    "encode_tensor",
    "encode_tensors",
    "model_hash",
]

SCHEMA_VERSION = 1
STORE_FILE = "store.sqlite"
LOCK_FILE = "store.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (
    start INTEGER PRIMARY KEY, stop INTEGER NOT NULL, x BLOB NOT NULL, y BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS clean (
    model TEXT NOT NULL, idx INTEGER NOT NULL, pred INTEGER NOT NULL, PRIMARY KEY (model, idx));
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, position INTEGER NOT NULL, label TEXT NOT NULL, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    model TEXT NOT NULL, entry TEXT NOT NULL, batch INTEGER NOT NULL,
    start INTEGER NOT NULL, stop INTEGER NOT NULL, seconds REAL NOT NULL,
    x_adv BLOB NOT NULL, info TEXT NOT NULL,
    PRIMARY KEY (model, entry, batch));
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, entry TEXT NOT NULL, idx INTEGER NOT NULL,
    success INTEGER NOT NULL, distance REAL NOT NULL, pred INTEGER NOT NULL,
    y INTEGER NOT NULL, clean_pred INTEGER NOT NULL, queries INTEGER NOT NULL,
    gradients INTEGER NOT NULL, steps INTEGER NOT NULL, rechecks INTEGER NOT NULL,
    broken_by INTEGER, seconds REAL NOT NULL,
    certified TEXT, lower_bound REAL, upper_bound REAL,
    PRIMARY KEY (model, entry, idx));
CREATE TABLE IF NOT EXISTS cross (
    entry TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL, pred BLOB NOT NULL,
    PRIMARY KEY (entry, source, target));
CREATE TABLE IF NOT EXISTS extras (
    kind TEXT NOT NULL, model TEXT NOT NULL, name TEXT NOT NULL, meta TEXT NOT NULL,
    tensors BLOB NOT NULL, PRIMARY KEY (kind, model, name));
CREATE TABLE IF NOT EXISTS completed (
    model TEXT NOT NULL, entry TEXT NOT NULL, flags TEXT NOT NULL, PRIMARY KEY (model, entry));
"""

#: The per-sample columns of ``results`` in export order.
COLUMNS = (
    "model",
    "entry",
    "idx",
    "success",
    "distance",
    "pred",
    "y",
    "clean_pred",
    "queries",
    "gradients",
    "steps",
    "rechecks",
    "broken_by",
    "seconds",
    "certified",
    "lower_bound",
    "upper_bound",
)

_INPUT_CHUNK = 1024  # samples per row of ``inputs``


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process is writing this store."""


# ----- tensors and hashes ---------------------------------------------------------------------
def encode_tensor(t: Tensor) -> bytes:
    """A tensor as compressed ``.npy`` bytes (exact: the dtype and every bit are kept)."""
    buf = io.BytesIO()
    np.save(buf, t.detach().cpu().contiguous().numpy(), allow_pickle=False)
    return zlib.compress(buf.getvalue(), 1)


def decode_tensor(blob: bytes) -> Tensor:
    """The tensor ``encode_tensor`` saved (no pickle: loading runs no code)."""
    array = np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)
    return torch.from_numpy(np.ascontiguousarray(array))


def encode_tensors(tensors: Mapping[str, Tensor]) -> bytes:
    """Named tensors as compressed ``.npz`` bytes (exact)."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in tensors.items()}
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode_tensors(blob: bytes) -> dict[str, Tensor]:
    """The tensors ``encode_tensors`` saved (no pickle)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}


def model_hash(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values), 16 hex digits."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        if not isinstance(value, Tensor):
            continue
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def data_hash(x: Tensor, y: Tensor) -> str:
    """SHA-256 over the samples and labels, 16 hex digits."""
    h = hashlib.sha256()
    for t in (x, y):
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}:{tuple(c.shape)};".encode())
        h.update(c.numpy().tobytes())
    return h.hexdigest()[:16]


# ----- the store ------------------------------------------------------------------------------
class Store:
    """One run's results database in the folder ``out``.

    Args:
        out: the run's output folder (created for writing if needed).
        readonly: open for reading only (``advex report``, ``advex export``): takes no lock and
            never writes.

    Raises:
        StoreError: the folder or database cannot be created or opened, is not an advex store,
            or was written by another schema version.
        StoreLockedError: another process holds the store for writing.
    """

    def __init__(self, out: str | Path, *, readonly: bool = False) -> None:
        self.out = Path(out)
        self.path = self.out / STORE_FILE
        self.readonly = readonly
        self._lock: Any = None
        if readonly:
            if not self.path.is_file():
                raise StoreError(
                    f"{self.out}: no advex results store ({STORE_FILE}) in this folder"
                )
            self._conn = self._connect_readonly()
        else:
            self._acquire_lock()
            try:
                self._conn = self._connect_writer()
            except BaseException:
                self._release_lock()
                raise
        try:
            self._check_schema()
        except BaseException:
            self.close()
            raise

    # ----- opening ----------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            handle = open(self.out / LOCK_FILE, "a+")  # noqa: SIM115 - held while open
        except PermissionError as err:
            raise StoreError(
                f"{self.out}: cannot write here ({err.strerror}); choose a writable --out folder"
            ) from err
        except OSError as err:
            raise StoreError(f"{self.out}: cannot create the results store: {err}") from err
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise StoreLockedError(
                    f"{self.out}: the results store is being written by {holder}; two runs must "
                    "not write the same store — wait for it, or use another --out folder"
                ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}\n")
            handle.flush()
        except OSError as err:
            handle.close()
            raise StoreError(f"{self.out}: cannot write the store's lock file: {err}") from err
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            if conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is None:
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),)
                )
        except sqlite3.DatabaseError as err:
            raise self._error(err, "open") from err
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                if wal.exists():
                    raise
                # no write-ahead log to apply: the file alone is the whole store
                conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as err:
            if wal.exists() and not os.access(self.out, os.W_OK):
                raise StoreError(
                    f"{self.path}: the run was interrupted and its last writes are still in the "
                    "write-ahead log, which cannot be read from this read-only folder; copy the "
                    "folder somewhere writable or resume the run there"
                ) from err
            raise self._error(err, "read") from err
        return conn

    def _check_schema(self) -> None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: not an advex results store ({err})") from err
        if row is None:
            raise StoreError(f"{self.path}: not an advex results store (no schema version)")
        version = json.loads(row[0])
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version}, but this advex reads version "
                f"{SCHEMA_VERSION}; use the advex that wrote it, or start a new run"
            )

    def _error(self, err: sqlite3.Error, doing: str) -> StoreError:
        """A ``StoreError`` that says what went wrong in words a user can act on."""
        text = str(err).lower()
        if "full" in text:
            return StoreError(
                f"{self.path}: the disk is full, {doing} failed; everything stored before is "
                "intact — free some space and continue with --resume"
            )
        if "readonly" in text or "read-only" in text or "permission" in text:
            return StoreError(
                f"{self.path}: the store or its folder is read-only, {doing} failed; choose a "
                "writable --out folder (what is stored stays readable)"
            )
        if "not a database" in text or "malformed" in text:
            return StoreError(f"{self.path}: not an advex results store or damaged ({err})")
        if "locked" in text or "busy" in text:
            return StoreLockedError(f"{self.path}: another process is writing this store ({err})")
        return StoreError(f"{self.path}: {doing} failed: {err}")

    def close(self) -> None:
        """Finish the write-ahead log into the database and release the lock."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            if not self.readonly:
                # back to a plain journal, so the closed store opens read-only anywhere (a
                # WAL database needs its -shm file, which a read-only folder cannot hold)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    conn.execute("PRAGMA journal_mode=DELETE")
            conn.close()
            self._conn = None  # type: ignore[assignment]
        self._release_lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is stored, or none of it."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only; cannot {doing}")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does that)
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise self._error(err, doing) from err

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as err:
            raise self._error(err, "reading") from err

    # ----- metadata -------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """Every metadata item (JSON values)."""
        return {k: json.loads(v) for k, v in self._read("SELECT key, value FROM meta")}

    def set_meta(self, **items: Any) -> None:
        with self._write("saving the run's metadata") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v, sort_keys=True)) for k, v in items.items()],
            )

    def start(self, config: Mapping[str, Any], environment: Mapping[str, Any]) -> bool:
        """Record the run's ``config``, or check it against the stored one (a resume).

        Returns True for a new run. Raises ``StoreError`` when the store holds another run:
        resuming with other models, data, seed, batch size, bounds, levels or plan would mix
        results that do not belong together.
        """
        stored = self.meta().get("config")
        config = json.loads(json.dumps(dict(config), sort_keys=True))
        if stored is None:
            self.set_meta(config=config, environment=dict(environment))
            return True
        diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if diff:
            details = "; ".join(
                f"{k}: stored {_short(stored.get(k))}, now {_short(config.get(k))}" for k in diff
            )
            raise StoreError(
                f"{self.out}: holds a different run ({details}); resume with the same settings, "
                "or use another --out folder"
            )
        return False

    # ----- samples --------------------------------------------------------------------------
    def put_inputs(self, x: Tensor, y: Tensor) -> None:
        with self._write("saving the samples") as conn:
            conn.execute("DELETE FROM inputs")
            for lo in range(0, x.shape[0], _INPUT_CHUNK):
                hi = min(lo + _INPUT_CHUNK, x.shape[0])
                conn.execute(
                    "INSERT INTO inputs VALUES (?, ?, ?, ?)",
                    (lo, hi, encode_tensor(x[lo:hi]), encode_tensor(y[lo:hi])),
                )

    def has_inputs(self) -> bool:
        return bool(self._read("SELECT count(*) FROM inputs")[0][0])

    def inputs(self) -> tuple[Tensor, Tensor]:
        rows = self._read("SELECT x, y FROM inputs ORDER BY start")
        if not rows:
            raise StoreError(f"{self.path}: holds no samples (the run stopped before it began)")
        return (
            torch.cat([decode_tensor(r[0]) for r in rows]),
            torch.cat([decode_tensor(r[1]) for r in rows]),
        )

    def put_clean(self, model: str, pred: Tensor) -> None:
        with self._write(f"saving {model}'s clean predictions") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO clean VALUES (?, ?, ?)",
                [(model, i, int(p)) for i, p in enumerate(pred.tolist())],
            )

    def clean(self, model: str) -> Tensor | None:
        rows = self._read("SELECT pred FROM clean WHERE model=? ORDER BY idx", (model,))
        return torch.tensor([r[0] for r in rows], dtype=torch.long) if rows else None

    # ----- plan entries and batches ---------------------------------------------------------
    def put_entries(self, entries: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
        """The plan: (key, label, spec) per entry, in order."""
        with self._write("saving the plan") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                [
                    (key, i, label, json.dumps(dict(spec), sort_keys=True))
                    for i, (key, label, spec) in enumerate(entries)
                ],
            )

    def entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._read("SELECT key, label, spec FROM entries ORDER BY position")
        return [(k, label, json.loads(spec)) for k, label, spec in rows]

    def done_batches(self, model: str, entry: str) -> set[int]:
        rows = self._read("SELECT batch FROM batches WHERE model=? AND entry=?", (model, entry))
        return {r[0] for r in rows}

    def put_batch(
        self,
        model: str,
        entry: str,
        batch: int,
        start: int,
        columns: Mapping[str, Tensor | None],
        x_adv: Tensor,
        seconds: float,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """One batch's per-sample results and adversarial points, in one transaction.

        ``columns``: the per-sample fields of ``COLUMNS`` (success … broken_by), each (n,)."""
        n = int(x_adv.shape[0])
        none = [None] * n

        def col(name: str, kind: type = int) -> list[Any]:
            value = columns.get(name)
            if value is None:
                return none
            return [kind(v) for v in value.detach().cpu().tolist()]

        rechecks = [1] * n if columns.get("rechecks") is None else col("rechecks")
        rows = list(
            zip(
                [model] * n,
                [entry] * n,
                range(start, start + n),
                col("success"),
                col("distance", float),
                col("pred"),
                col("y"),
                col("clean_pred"),
                col("queries"),
                col("gradients"),
                col("steps"),
                rechecks,
                col("broken_by"),
                [seconds / max(n, 1)] * n,
                col("certified", str),
                col("lower_bound", float),
                col("upper_bound", float),
                strict=True,
            )
        )
        blob = encode_tensor(x_adv)
        with self._write(f"saving batch {batch} of {entry} on {model}") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    entry,
                    batch,
                    start,
                    start + n,
                    seconds,
                    blob,
                    json.dumps(dict(info or {})),
                ),
            )
            conn.executemany(
                f"INSERT OR REPLACE INTO results VALUES ({', '.join('?' * len(COLUMNS))})", rows
            )

    def batches(self, model: str, entry: str) -> list[dict[str, Any]]:
        """The stored batches of (model, entry), in order: start, stop, seconds, x_adv, info."""
        rows = self._read(
            "SELECT batch, start, stop, seconds, x_adv, info FROM batches "
            "WHERE model=? AND entry=? ORDER BY start",
            (model, entry),
        )
        return [
            {
                "batch": b,
                "start": lo,
                "stop": hi,
                "seconds": s,
                "x_adv": decode_tensor(blob),
                "info": json.loads(info),
            }
            for b, lo, hi, s, blob, info in rows
        ]

    def columns(self, model: str, entry: str) -> dict[str, list[Any]]:
        """The per-sample columns of (model, entry), ordered by sample index."""
        names = COLUMNS[2:]
        rows = self._read(
            f"SELECT {', '.join(names)} FROM results WHERE model=? AND entry=? ORDER BY idx",
            (model, entry),
        )
        return {name: [r[i] for r in rows] for i, name in enumerate(names)}

    def complete(self, model: str, entry: str, flags: Sequence[Mapping[str, Any]]) -> None:
        """Mark (model, entry) complete, with its sanity checks' flags."""
        with self._write(f"finishing {entry} on {model}") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO completed VALUES (?, ?, ?)",
                (model, entry, json.dumps([dict(f) for f in flags])),
            )

    def completed(self, model: str, entry: str) -> list[dict[str, Any]] | None:
        """The flags of a complete (model, entry); None while it is not complete."""
        rows = self._read("SELECT flags FROM completed WHERE model=? AND entry=?", (model, entry))
        return json.loads(rows[0][0]) if rows else None

    def put_extra(
        self,
        kind: str,
        model: str,
        name: str,
        meta: Mapping[str, Any],
        tensors: Mapping[str, Tensor],
    ) -> None:
        """An extra result (e.g. kind "clever", name the norm) of ``model``."""
        with self._write(f"saving {kind} {name} of {model}") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO extras VALUES (?, ?, ?, ?, ?)",
                (kind, model, name, json.dumps(dict(meta)), encode_tensors(tensors)),
            )

    def extras(self, kind: str) -> list[tuple[str, str, dict[str, Any], dict[str, Tensor]]]:
        """Every extra result of ``kind``: (model, name, meta, tensors), in insertion order."""
        rows = self._read(
            "SELECT model, name, meta, tensors FROM extras WHERE kind=? ORDER BY rowid", (kind,)
        )
        return [(m, n, json.loads(meta), decode_tensors(blob)) for m, n, meta, blob in rows]

    def put_cross(self, entry: str, source: str, target: str, pred: Tensor) -> None:
        """``target``'s labels on the adversarial points ``source`` gave for ``entry``."""
        with self._write(f"saving {target}'s labels on {source}'s points") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cross VALUES (?, ?, ?, ?)",
                (entry, source, target, encode_tensor(pred)),
            )

    def cross(self, entry: str) -> dict[tuple[str, str], Tensor]:
        """(source, target) → target's labels on source's points, for ``entry``."""
        rows = self._read("SELECT source, target, pred FROM cross WHERE entry=?", (entry,))
        return {(s, t): decode_tensor(blob) for s, t, blob in rows}

    def rows(self) -> list[dict[str, Any]]:
        """Every per-sample row (the export table), ordered by model, plan entry and sample."""
        labels = {k: label for k, label, _ in self.entries()}
        order = {k: i for i, (k, _, _) in enumerate(self.entries())}
        out = []
        for row in self._read(f"SELECT {', '.join(COLUMNS)} FROM results"):
            item = dict(zip(COLUMNS, row, strict=True))
            item["success"] = bool(item["success"])
            item["label"] = labels.get(item["entry"], item["entry"])
            out.append(item)
        out.sort(key=lambda r: (r["model"], order.get(r["entry"], 1 << 30), r["idx"]))
        return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
