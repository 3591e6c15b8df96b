"""The results store: exact round trips, resume after SIGKILL, one writer, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from advex.cli import app
from advex.evaluate import grid_plan, run_evaluation
from advex.evaluate.plan import PlanEntry
from advex.evaluate.store import (
    SCHEMA_VERSION,
    STORE_FILE,
    Store,
    StoreError,
    StoreLockedError,
    decode_tensor,
    encode_tensor,
)
from advex.evaluate.stored import entry_key, load_evaluation

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _plan() -> list[PlanEntry]:
    plan = grid_plan(["fgsm", "pgd"], "linf", [0.1], steps=4)
    plan += grid_plan(["deepfool"], "l2", steps=5)
    plan += [PlanEntry("fast", "linf", 0.2, {"steps": 3})]  # an ensemble with sanity checks
    return plan


def _same_records(a, b) -> None:
    """Every record equal field by field (wall times aside)."""
    assert [(r.model, r.entry) for r in a.records] == [(r.model, r.entry) for r in b.records]
    for ra, rb in zip(a.records, b.records, strict=True):
        for name in type(ra.result).PER_SAMPLE:
            va, vb = getattr(ra.result, name), getattr(rb.result, name)
            assert (va is None) == (vb is None), name
            if va is not None:
                assert torch.equal(va, vb), (ra.entry.label, name)
        assert ra.result.attack == rb.result.attack and ra.result.metric == rb.result.metric
        assert [f.to_dict() for f in ra.flags] == [f.to_dict() for f in rb.flags]


@pytest.fixture(scope="module")
def small(digits):
    torch.manual_seed(3)
    x, y = digits.x[:40], digits.y[:40]
    return {"mlp": digits.model}, x, y


def test_tensors_round_trip_exactly() -> None:
    for t in (torch.randn(3, 1, 4, 4), torch.arange(7), torch.rand(2, 3).double(), torch.ones(0)):
        back = decode_tensor(encode_tensor(t))
        assert back.dtype == t.dtype and torch.equal(back, t)


def test_store_on_gives_the_same_results_as_store_off(small, tmp_path: Path) -> None:
    models, x, y = small
    plan = _plan()
    off = run_evaluation(models, x, y, plan, batch_size=16, progress=False)
    with Store(tmp_path) as store:
        on = run_evaluation(models, x, y, plan, batch_size=16, progress=False, store=store)
    _same_records(off, on)
    with Store(tmp_path, readonly=True) as store:
        loaded = load_evaluation(store)
        rows = store.rows()
    _same_records(off, loaded)
    assert torch.equal(loaded.x, x) and torch.equal(loaded.y, y)
    assert len(rows) == len(plan) * len(y)
    first = rows[0]
    assert first["model"] == "mlp" and first["idx"] == 0 and first["label"] == plan[0].label


def test_resume_skips_stored_batches_and_matches(small, tmp_path: Path) -> None:
    models, x, y = small
    plan = _plan()
    full = run_evaluation(models, x, y, plan, batch_size=16, progress=False)
    with Store(tmp_path) as store:
        run_evaluation(models, x, y, plan[:1], batch_size=16, progress=False, store=store)
    # an interrupted run: the first entry complete, one batch of the second stored, no flags
    with Store(tmp_path) as store, pytest.raises(StoreError, match="different run"):
        run_evaluation(models, x, y, plan, batch_size=16, progress=False, store=store)
    shutil.rmtree(tmp_path)
    with Store(tmp_path) as store:
        run_evaluation(models, x, y, plan, batch_size=16, progress=False, store=store)
        key = entry_key(plan[1])
        conn = store._conn
        conn.execute("DELETE FROM batches WHERE entry=? AND batch>0", (key,))
        conn.execute("DELETE FROM results WHERE entry=? AND idx>=16", (key,))
        conn.execute("DELETE FROM completed WHERE entry<>?", (entry_key(plan[0]),))
        calls: list[int] = []
        from advex.attacks.pgd import PGD

        original = PGD.__call__

        def counting(self, *args, **kw):
            if self.threat == plan[1].threat():  # not the sanity checks' own PGD runs
                calls.append(kw.get("batch_offset", 0))
            return original(self, *args, **kw)

        PGD.__call__ = counting  # type: ignore[method-assign]
        try:
            resumed = run_evaluation(models, x, y, plan, batch_size=16, progress=False, store=store)
        finally:
            PGD.__call__ = original  # type: ignore[method-assign]
    assert calls == [1, 2]  # batch 0 of PGD was stored: only batches 1 and 2 ran again
    _same_records(full, resumed)


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path):
        with pytest.raises(StoreLockedError, match="being written by process"):
            Store(tmp_path)
        with Store(tmp_path, readonly=True) as reader:  # readers need no lock
            assert reader.meta()["schema_version"] == SCHEMA_VERSION
    Store(tmp_path).close()  # released on close


def test_a_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[2]);"
        "from advex.evaluate.store import Store; s = Store(sys.argv[1]);"
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), SRC], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=f"process {proc.pid}"):
            Store(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    Store(tmp_path).close()  # the lock dies with its process


def test_schema_version_is_checked_on_open(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.set_meta(schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="schema version"):
        Store(tmp_path, readonly=True)


def test_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an advex results store"):
        Store(tmp_path, readonly=True)
    with pytest.raises(StoreError, match="not an advex results store"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="no advex results store"):
        Store(tmp_path / "missing", readonly=True)


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_stored(small, tmp_path: Path) -> None:
    models, x, y = small
    plan = grid_plan(["fgsm", "pgd"], "linf", [0.1], steps=2)
    with Store(tmp_path) as store:
        run_evaluation(models, x, y, plan[:1], batch_size=16, progress=False, store=store)
    with Store(tmp_path) as store:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is now "full"
        store.set_meta(config=None)  # an interrupted run: nothing of the plan recorded yet
        with pytest.raises(StoreError, match="disk is full"):
            n = 3000
            ints = torch.zeros(n, dtype=torch.long)
            columns = dict.fromkeys(("pred", "y", "clean_pred", "queries", "gradients"), ints)
            columns.update(steps=ints, success=ints.bool(), distance=torch.rand(n), rechecks=None)
            store.put_batch("mlp", "k", 0, 0, columns, torch.rand(n, 64), 0.0)
    with Store(tmp_path, readonly=True) as store:
        assert store.done_batches("mlp", entry_key(plan[0])) == {0, 1, 2}
        assert store.done_batches("mlp", "k") == set()
        x_back, _ = store.inputs()
        assert torch.equal(x_back, x)


def _without_root_powers() -> list[str] | None:
    """A command prefix that runs a child without the power to ignore file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    return None


def test_a_read_only_folder_is_a_clear_error_and_stays_readable(small) -> None:
    prefix = _without_root_powers()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only")
    models, x, y = small
    base = Path(tempfile.mkdtemp())
    try:
        out = base / "run"
        with Store(out) as store:
            run_evaluation(models, x, y, grid_plan(["fgsm"], "linf", [0.1]), store=store)
        os.chmod(out, 0o555)
        code = (
            "import sys; sys.path.insert(0, sys.argv[2]);"
            "from advex.evaluate.store import Store, StoreError\n"
            "out = sys.argv[1]\n"
            "with Store(out, readonly=True) as s: print('rows', len(s.rows()))\n"
            "for path in (out, out + '/new'):\n"
            "    try: Store(path)\n"
            "    except StoreError as e: print('error', e)\n"
        )
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(out), SRC],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == f"rows {len(y)}"
        assert len(lines) == 3, lines
        assert "is read-only" in lines[1] and "writable --out" in lines[1]
        assert "cannot write here (Permission denied)" in lines[2]
    finally:
        os.chmod(base / "run", 0o755)
        shutil.rmtree(base)


def _kill_when_stored(proc: subprocess.Popen, out: Path, batches: int) -> None:
    """SIGKILL ``proc`` once the store in ``out`` holds ``batches`` batches."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {proc.stderr}")
        try:
            conn = sqlite3.connect(f"file:{out / STORE_FILE}?mode=ro", uri=True)
            try:
                count = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            count = 0
        if count >= batches:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run stored nothing in time")


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    args = [
        "evaluate",
        "--model",
        "zoo:mnist_mlp",
        "--n",
        "96",
        "--attacks",
        "fgsm,pgd",
        "--eps",
        "0.1",
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--examples",
        "2",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "advex", *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _kill_when_stored(proc, killed, batches=16)  # inside the second entry (12 batches each)
    with Store(killed, readonly=True) as store:
        stored = len(store.rows())
    assert 0 < stored < 2 * 96 and stored % 8 == 0  # whole batches only, not all of them

    resumed = runner.invoke(app, ["evaluate", "--resume", str(killed)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    whole = tmp_path / "whole"
    uninterrupted = runner.invoke(app, [*args, "--out", str(whole)])
    assert uninterrupted.exit_code == 0, uninterrupted.output

    with Store(killed, readonly=True) as a, Store(whole, readonly=True) as b:
        rows_a, rows_b = a.rows(), b.rows()
        _same_records(load_evaluation(a), load_evaluation(b))
    assert len(rows_a) == len(rows_b) == 2 * 96
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb


def test_cli_refuses_to_mix_runs_and_exports(small, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["evaluate", "--model", "zoo:mnist_mlp", "--n", "12", "--attacks", "fgsm"]
    first = runner.invoke(app, [*args, "--eps", "0.1", "--out", str(out), "--examples", "1"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output
    other = runner.invoke(app, ["evaluate", "--resume", str(out), "--seed", "4"])
    assert other.exit_code == 2 and "--seed" in other.output
    fresh = runner.invoke(app, [*args, "--eps", "0.2", "--out", str(out), "--overwrite"])
    assert fresh.exit_code == 0, fresh.output
    for fmt in ("csv", "json"):
        done = runner.invoke(app, ["export", str(out), "--format", fmt])
        assert done.exit_code == 0, done.output
    doc = json.loads((out / "samples.json").read_text())
    assert len(doc["rows"]) == 12 and doc["rows"][0]["label"] == "fgsm linf ε=0.2"
    header = (out / "samples.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["model", "entry", "label", "idx"]
    bad = runner.invoke(app, ["export", str(out), "--format", "xml"])
    assert bad.exit_code == 2 and "--format" in bad.output
    (out / "report.html").unlink()
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0 and (out / "report.html").is_file()
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no advex results store" in missing.output


def test_model_names_with_markup_survive_the_store(digits, tmp_path: Path) -> None:
    name = "<script>alert(1)</script>"
    torch.manual_seed(0)
    models = {name: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))}
    with Store(tmp_path) as store:
        run_evaluation(
            models, digits.x[:8], digits.y[:8], grid_plan(["fgsm"], "linf", [0.1]), store=store
        )
    with Store(tmp_path, readonly=True) as store:
        assert load_evaluation(store).model_names == [name]


def test_transfer_matrices_come_back_from_the_store(digits, tmp_path: Path) -> None:
    torch.manual_seed(1)
    models = {"mlp": digits.model, "linear": nn.Sequential(nn.Flatten(), nn.Linear(64, 10))}
    x, y = digits.x[:24], digits.y[:24]
    plan = grid_plan(["fgsm", "pgd"], "linf", [0.2], steps=3)
    with Store(tmp_path) as store:
        live = run_evaluation(models, x, y, plan, batch_size=8, progress=False, store=store)
    with Store(tmp_path, readonly=True) as store:
        loaded = load_evaluation(store)
    got, want = loaded.transfer_matrices(), live.transfer_matrices()
    assert len(want) == len(plan)
    for a, b in zip(got, want, strict=True):
        assert a.sources == b.sources == ("mlp", "linear")
        assert torch.equal(a.counts, b.counts)
        assert torch.allclose(a.rates, b.rates, equal_nan=True)
        assert torch.all(a.rates.diagonal()[a.counts.diagonal() > 0] == 1)
    # the off-diagonal cell recomputed by hand: the linear model on the MLP's points
    res = live.result("mlp", plan[1])
    with torch.no_grad():
        pred = models["linear"](res.x_adv).argmax(1)
        clean = models["linear"](x).argmax(1)
    mask = res.success & res.clean_correct & (clean == y)
    assert int(want[1].counts[0, 1]) == int(mask.sum())
    if bool(mask.any()):
        assert float(want[1].rates[0, 1]) == pytest.approx(
            float((pred[mask] != y[mask]).double().mean())
        )


def test_clever_estimates_are_stored_and_reported(small, tmp_path: Path) -> None:
    from advex.evaluate import render_report

    models, x, y = small
    plan = grid_plan(["fgsm"], "l2", [1.0])
    with Store(tmp_path) as store:
        live = run_evaluation(models, x, y, plan, progress=False, store=store, clever_samples=3)
    with Store(tmp_path, readonly=True) as store:
        loaded = load_evaluation(store)
    (a,), (b,) = live.clever["mlp"], loaded.clever["mlp"]
    assert len(a) == 3 and a.norm == "l2" and a.estimate
    assert torch.equal(a.scores, b.scores) and torch.equal(a.correct, b.correct)
    assert a.n_batches == b.n_batches and a.radius == b.radius
    html = render_report(loaded, clever=loaded.clever)
    assert 'id="clever"' in html and "CLEVER scores (estimate)" in html


def test_a_run_killed_before_its_samples_were_saved_resumes(small, tmp_path: Path) -> None:
    models, x, y = small
    plan = grid_plan(["fgsm"], "linf", [0.1])
    full = run_evaluation(models, x, y, plan, progress=False)
    from advex.evaluate.run import environment, run_config
    from advex.model import as_classifier

    clfs = {k: as_classifier(m) for k, m in models.items()}
    with Store(tmp_path) as store:  # the first transaction of a run, then the kill
        store.start(run_config(clfs, x, y, plan, (0.0, 1.0), None, 0, 256), environment())
    with Store(tmp_path) as store:
        resumed = run_evaluation(models, x, y, plan, progress=False, store=store)
    _same_records(full, resumed)
    with Store(tmp_path, readonly=True) as store:
        _same_records(full, load_evaluation(store))
