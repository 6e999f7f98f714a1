"""The report in a real browser: headless Chromium opens it from disk (file://), offline.

Checks what a reviewer would see: the rendered DOM holds every profession and the headline numbers,
the inline script ran, a screenshot is not blank, and printing gives a multi-page PDF. Chromium is
the Debian package ``chromium`` (``make browser`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageStat

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import pagecheck  # noqa: E402
import runs  # noqa: E402

from debias.report import render_report, twin_paths  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is needed for the report browser tests: run 'make browser' "
                "(or 'apt-get install chromium').")


def _run(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="debias-chromium-") as profile:
        return subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    folder = runs.make_fix(tmp_path_factory.mktemp("browser") / "fix", evil=True)
    html = render_report([folder])
    return {"html": html, "data": json.loads(twin_paths(html)[0].read_text(encoding="utf-8"))}


def test_dom_has_every_profession_and_the_headline_numbers(report):
    proc = _run("--dump-dom", report["html"].as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = pagecheck.parse(proc.stdout)
    text = "".join(page.text)
    for row in report["data"]["professions"]:
        assert row["profession"] in text
    shown = {k["key"]: k for k in page.keys}
    s = report["data"]["summary"]
    for key in ("mean_delta_before", "mean_delta_after", "within_tolerance_before", "within_tolerance_after",
                "mean_delta_after_ci_low", "mean_delta_after_ci_high"):
        item = shown[f"summary.{key}"]
        assert json.loads(item["value"]) == s[key]
        assert pagecheck.shown_matches(item["text"], s[key]), item
    assert s["conclusion"] in text
    # the inline script ran: it marks headers sortable and focusable
    headers = [a for t, a in page.attrs_seen if t == "th" and "sortable" in (a.get("class") or "")]
    assert len(headers) >= 10 and all(a.get("tabindex") == "0" for a in headers)
    # the evil name stayed text in the live DOM: no script element besides the report's own
    assert len([t for t, _ in page.attrs_seen if t == "script"]) == 1


def test_screenshot_is_not_blank(report, tmp_path):
    png = tmp_path / "shot.png"
    proc = _run("--window-size=1280,1600", f"--screenshot={png}", report["html"].as_uri())
    assert png.is_file(), proc.stderr[-2000:]
    img = Image.open(png).convert("L")
    assert img.size == (1280, 1600)
    stat = ImageStat.Stat(img)
    assert stat.stddev[0] > 20            # text, charts and thumbnails, not an empty page
    dark = sum(img.histogram()[:128]) / (img.width * img.height)
    assert 0.01 < dark < 0.5              # some ink, but mostly a white page


def test_prints_to_a_multi_page_pdf(report, tmp_path):
    pdf = tmp_path / "report.pdf"
    proc = _run("--no-pdf-header-footer", f"--print-to-pdf={pdf}", report["html"].as_uri())
    assert pdf.is_file(), proc.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 50_000
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", data))
    assert 2 <= pages <= 12
    # every page is A4 (595 × 842 pt), as the print stylesheet asks
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert len(boxes) == pages
    assert all(abs(float(w) - 595.3) < 1 and abs(float(h) - 841.9) < 1 for w, h in boxes)


def test_clicking_a_header_sorts_the_table(report, tmp_path):
    """The inline script sorts by a column's data-sort values (here Δ after, ascending, then descending)."""
    html = report["html"].read_text(encoding="utf-8")
    click = ("<script>var th = document.querySelectorAll('table.results th')[2];"
             "th.click(); th.click();</script></body>")
    page_path = tmp_path / "clicked.html"
    page_path.write_text(html.replace("</body>", click), encoding="utf-8")
    proc = _run("--dump-dom", page_path.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = pagecheck.parse(proc.stdout)
    order = [a["data-profession"] for t, a in page.attrs_seen if t == "tr" and "data-profession" in a]
    rows = {r["profession"]: r for r in report["data"]["professions"]}
    deltas = [rows[name]["delta_after"] for name in order]
    assert deltas == sorted(deltas, reverse=True) and len(set(deltas)) > 1  # second click: descending
    assert order != [r["profession"] for r in report["data"]["professions"]]  # not the printed order (by Δ before)
    headers = [a for t, a in page.attrs_seen if t == "th" and a.get("aria-sort")]
    assert [h["aria-sort"] for h in headers] == ["descending"]
