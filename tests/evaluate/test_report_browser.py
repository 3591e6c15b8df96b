"""The HTML report of a small run: its sections and numbers, escaping, and a real browser.

The browser tests run Debian's headless Chromium in a subprocess (skipped, with the reason,
when no ``chromium``/``chromium-browser`` binary is on PATH; CI installs it):

1. ``--screenshot``: a PNG of the page at 1280×2000 is produced, with content (not blank).
2. ``--dump-dom``: the DOM after load has every section id and every image; each ``<img>``
   is a ``data:`` URI whose bytes decode as a PNG.
3. Page errors: the report has no scripts at all (checked in the DOM), so no script error can
   occur; Chromium runs with ``--enable-logging=stderr --v=0``, which prints every console
   message of the page (errors included) as a ``CONSOLE`` line, and failed loads as ``net::``
   errors: the test asserts there are none. That the page needs no network is checked on the
   HTML: no ``http(s)://`` or protocol-relative resource URL, no ``<script>``, no ``<link>``.

Each Chromium run has a 60 s timeout; on expiry its whole process group is killed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import math
import os
import re
import shutil
import signal
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from advex.attacks import ATTACKS
from advex.evaluate import EvaluationResult, PlanEntry, grid_plan, run_evaluation
from advex.evaluate.clever import CleverResult
from advex.evaluate.report import SECTIONS, CertifiedBounds, render_report, write_report
from advex.evaluate.report import analysis as an
from advex.evaluate.run import Record
from advex.evaluate.transfer import TransferMatrix, transfer
from advex.threat import ThreatModel

EVIL = "<script>alert(1)</script>"
CLASSES = [f'c{i} & "q"' for i in range(10)]
PNG = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 60


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium or chromium-browser binary on PATH (Debian: apt-get install chromium)",
)


@pytest.fixture(scope="module")
def run(digits) -> tuple[EvaluationResult, dict[str, nn.Module]]:
    torch.manual_seed(5)
    models = {"mlp": digits.model, EVIL: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))}
    plan = grid_plan(["fgsm", "pgd"], "linf", [0.1, 0.2], steps=3)
    plan += grid_plan(["deepfool", "fmn"], "l2", steps=5)  # minimum norm, eps None
    plan += [
        PlanEntry("pgd", "l2", 1.0, {"steps": 3}),
        PlanEntry("fast", "linf", 0.2, {"steps": 3}),
    ]
    x, y = digits.x[:16], digits.y[:16].clone()
    y[0] = (y[0] + 1) % 10  # one clean mistake for the trained model
    return run_evaluation(models, x, y, plan, progress=False), models


def _clever(n: int, correct: torch.Tensor) -> CleverResult:
    """A CLEVER result with made-up scores (the report only displays them)."""
    scores = torch.linspace(0.1, 0.6, n, dtype=torch.float64) * correct
    nan = torch.full((n, 10), math.nan, dtype=torch.float64)
    return CleverResult(
        scores=scores,
        lipschitz=torch.ones(n, dtype=torch.float64),
        classes=torch.zeros(n, dtype=torch.long),
        correct=correct,
        class_scores=nan,
        class_lipschitz=nan,
        margins=nan,
        pvalues=nan,
        norm="l2",
        radius=2.0,
        n_batches=10,
        batch_points=32,
        seed=0,
        targeted=False,
        seconds=0.0,
    )


def _half_deepfool(result: EvaluationResult, model: str) -> CertifiedBounds:
    """Half of DeepFool's distance: below every attack's distance, so a consistent bound."""
    entry = next(e for e in result.plan if e.attack == "deepfool")
    res = result.result(model, entry)
    lower = torch.where(res.success, res.distance.double() / 2, torch.zeros(len(res)).double())
    return CertifiedBounds("l2", lower, method="half-deepfool")


@pytest.fixture(scope="module")
def matrix(run, digits) -> TransferMatrix:
    result, models = run
    fgsm = ATTACKS["fgsm"](ThreatModel("linf", 0.2))
    return transfer(models, models, fgsm, result.x, result.y)


@pytest.fixture(scope="module")
def report(run, matrix, tmp_path_factory) -> tuple[Path, str]:
    result, models = run
    correct = result.clean_pred["mlp"] == result.y
    path = write_report(
        result,
        tmp_path_factory.mktemp("report") / "report.html",
        title=f"run of {EVIL}",
        metadata={"command": "advex evaluate --data 'a&b' https://example.org", "data": EVIL},
        examples=3,
        class_names=CLASSES,
        models=models,
        certified={"mlp": _half_deepfool(result, "mlp")},
        clever={"mlp": _clever(len(result.y), correct)},
        transfer=[matrix],
    )
    return path, path.read_text(encoding="utf-8")


class _Page(HTMLParser):
    """Element ids, <img> sources and tag names of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "img":
            self.images.append(str(values.get("src")))


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _check_images(sources: list[str]) -> None:
    assert sources
    for src in sources:
        head, _, payload = src.partition(",")
        assert head == "data:image/png;base64", head[:40]
        data = base64.b64decode(payload, validate=True)
        width, height = _png_size(data)
        assert width > 20 and height > 20
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")  # decodes fully
        assert pixels.shape[:2] == (height, width)


def _browse(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with ``args``; kill its process group after ``TIMEOUT`` s."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {TIMEOUT} s: {' '.join(args)}")
    with contextlib.suppress(ProcessLookupError):  # helpers left behind, in its own group
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _page_problems(stderr: str) -> list[str]:
    """Console messages of the page and failed loads in Chromium's log."""
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line or "net::ERR" in line or "Not allowed to load" in line
    ]


# ----- the HTML itself -----------------------------------------------------------------------
def test_every_section_and_image_is_in_the_html(report) -> None:
    _, html = report
    page = _parse(html)
    assert set(SECTIONS) <= page.ids
    # linf and l2 accuracy; l2 distances; CLEVER; 2 example grids; 1 transfer heat map
    assert len(page.images) == 2 + 1 + 1 + 2 + 1
    _check_images(page.images)
    assert "CLEVER (estimate)" in html and "half-deepfool" in html
    assert "Confidences are not stored" not in html  # models= given


def test_the_page_needs_no_network_and_has_no_scripts(report) -> None:
    _, html = report
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""(src|href|action|poster)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert not re.search(r"url\(|@import", html)
    assert "https://example.org" in html  # as escaped text in the metadata, not a resource


def test_user_text_is_escaped(report) -> None:
    _, html = report
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "c3 &amp; &quot;q&quot;" in html and 'c3 & "q"' not in html
    assert "a&amp;b" in html and "run of &lt;script&gt;" in html
    # in attributes too: every alt text is quoted and escaped
    for alt in re.findall(r'alt="([^"]*)"', html):
        assert "<" not in alt and ">" not in alt


def test_summary_is_the_worst_case_over_all_attacks(run) -> None:
    result, _ = run
    best = an.strongest(result, "mlp", "linf")
    assert best is not None and best.eps == 0.2
    correct = result.clean_pred["mlp"] == result.y
    # every linf record: budgets 0.1 and 0.2 (all points admissible at 0.2)
    robust = correct.clone()
    for rec in result.records:
        if rec.model == "mlp" and rec.entry.norm == "linf":
            robust &= rec.result.pred == rec.result.y
    assert torch.equal(best.robust_mask, robust)
    assert best.robust.k == int(robust.sum()) and best.robust.n == 16
    lo, hi = best.robust.interval
    assert lo <= best.robust.value <= hi
    for rec in result.records:
        if rec.model == "mlp" and rec.entry.norm == "linf" and rec.entry.eps == 0.2:
            assert best.robust.value <= rec.result.robust_accuracy


def test_non_lp_distances_never_make_curves(run) -> None:
    """A minimum-norm result whose distance is another metric ("flow") is not an Lp curve and
    does not count as broken at any budget by its distance."""
    result, _ = run
    entry = next(e for e in result.plan if e.attack == "deepfool")
    rec = next(r for r in result.records if r.model == "mlp" and r.entry == entry)
    flow = dataclasses.replace(rec.result, metric="flow", distance=torch.zeros(len(rec.result)))
    mixed = dataclasses.replace(result, records=[*result.records, Record("mlp", entry, flow)])
    assert len(an.min_norm_records(mixed, "mlp", "l2")) == len(
        an.min_norm_records(result, "mlp", "l2")
    )
    assert torch.equal(
        an.broken_at(mixed, "mlp", "l2", 0.5), an.broken_at(result, "mlp", "l2", 0.5)
    )


def test_contradicting_certificate_is_shown_not_hidden(run) -> None:
    result, _ = run
    huge = CertifiedBounds("l2", torch.full((16,), 100.0), method="wrong")
    html = render_report(result, examples=0, certified={"mlp": huge})
    assert 'class="error"' in html and "Contradiction" in html and "wrong" in html
    assert "Confidences are not stored" not in html  # no example grid at all
    assert "No examples requested" in html


def test_bad_optional_inputs_are_rejected(run) -> None:
    result, _ = run
    short = CertifiedBounds("l2", torch.zeros(3))
    with pytest.raises(ValueError, match="certified: model 'mlp' has 3 bounds"):
        render_report(result, certified={"mlp": short})
    with pytest.raises(ValueError, match="certified: model 'nope' is not in the evaluation"):
        render_report(result, certified={"nope": short})
    with pytest.raises(TypeError, match="clever: expected CleverResult"):
        render_report(result, clever={"mlp": "scores"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="transfer: expected TransferMatrix"):
        render_report(result, transfer=["m"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="models: model 'nope' is not in the evaluation"):
        render_report(result, models={"nope": nn.Linear(64, 10)})
    with pytest.raises(ValueError, match="examples: expected an integer >= 0"):
        render_report(result, examples=-1)
    with pytest.raises(ValueError, match="lower: certified lower bounds must be >= 0"):
        CertifiedBounds("l2", torch.tensor([-1.0]))


# ----- in the browser ------------------------------------------------------------------------
@needs_chromium
def test_chromium_renders_a_screenshot(report, tmp_path) -> None:
    path, _ = report
    shot = tmp_path / "shot.png"
    done = _browse(
        [f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", path.as_uri()],
        tmp_path / "profile",
    )
    assert not _page_problems(done.stderr)
    data = shot.read_bytes()
    assert _png_size(data) == (1280, 2000) and len(data) > 20_000
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert float(np.std(pixels)) > 0.05  # text and plots, not a blank page


@needs_chromium
def test_chromium_loads_every_section_and_image_without_errors(report, tmp_path) -> None:
    path, html = report
    done = _browse(["--dump-dom", path.as_uri()], tmp_path / "profile")
    assert not _page_problems(done.stderr)
    dom = _parse(done.stdout)
    assert set(SECTIONS) <= dom.ids
    assert "script" not in dom.tags
    assert dom.images == _parse(html).images
    _check_images(dom.images)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in done.stdout


def test_step_curve_is_robust_accuracy_curve() -> None:
    """The report's fast step curve equals metrics.robust_accuracy_curve at its corners."""
    from advex.evaluate.metrics import robust_accuracy_curve
    from advex.evaluate.report.sections import _robust_steps

    g = torch.Generator().manual_seed(0)
    d = torch.rand(200, generator=g).double()
    d[::7], d[::11] = math.inf, 0.0
    correct = torch.rand(200, generator=g) > 0.2
    line = _robust_steps("a", "m", "s", d, correct, 0.8, band=True)
    want = robust_accuracy_curve(d, correct, torch.tensor(line.x))
    assert torch.allclose(torch.tensor(line.y, dtype=torch.float64), want)
    assert line.x[0] == 0.0 and line.x[-1] == 0.8 and len(line.x) > 100
    assert line.lower is not None and line.upper is not None
    assert all(lo <= y <= hi for lo, y, hi in zip(line.lower, line.y, line.upper, strict=True))
