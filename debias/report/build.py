"""Building a report from run folders: the JSON twin (what the page says) and the assets (what only the page needs).

The steps are in the order a reader meets them on the page: rows per profession, the summary above them, the
sample images and side effects, then the method. Each step reads the results and copies their figures; the only
figures added are descriptions of them (typical precision, per-target counts), named in the summary.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from debias import __version__
from debias.report import attributes as _attributes, figures, rows as _rows, samples as _samples
from debias.report import summary as _summary, validity as _validity
from debias.report.card import refresh_saved_pipeline_card
from debias.report.render import default_out, write_report
from debias.report.runs import read_runs
from debias.results.records import AuditResult
from debias.results.validity import refresh_validity

# the twin's layout; 2: the results' within_band flags and has_oracle (was a model flag); 3: human labels
# (summary.validity, summary.headline, the rows' label columns) and other classifiers (summary.classifiers)
REPORT_VERSION = 3


def build_report(run_dirs: Sequence[str | Path]) -> tuple[dict, dict]:
    """Read the runs and return ``(report, assets)``.

    ``report`` is what the JSON twin holds (plain JSON: every number and text the page shows); ``assets`` holds
    what is only for the page (inline thumbnails and charts), which would bloat the twin and carries no number.
    """
    runs = read_runs(run_dirs)
    if runs.paired:
        rows, one_side = _rows.paired_rows(runs.audits["before"], runs.audits["after"], runs.fix)
    else:
        rows, one_side = _rows.audit_rows(runs.first), []
    _validity.attach(runs, rows)
    warnings = _summary.warnings(runs, rows, one_side)
    thumbs = _samples.Thumbnails()
    assets: dict[str, Any] = {"thumbs": _samples.attach_samples(runs, rows, thumbs)}
    side_effects, assets["side"] = _samples.side_effects(runs, thumbs)
    if thumbs.warning():
        warnings.append(thumbs.warning())
    report = {
        "kind": runs.kind,
        "report_version": REPORT_VERSION,
        "debias_version": __version__,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "sources": {k: str(path.resolve()) for k, path in runs.files.items()},
        "summary": _summary.summarize(runs, rows),
        "professions": rows,
        "side_effects": side_effects,
        "method": _summary.method(runs),
        "warnings": warnings,
    }
    _attributes.attach(report, runs)
    assets["share_chart"] = figures.share_chart(report)
    assets["attribute_charts"] = figures.attribute_charts(report)
    assets["search_charts"] = figures.search_charts(report)
    return report, assets


def render_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, *,
                  refresh_validity: bool = True) -> Path:
    """Render the HTML report for an audit, a fix, or two audits (before, after); return the HTML path.

    Writes, atomically, ``out`` (default ``RUN_DIR/report.html``; for two audits ``AFTER_DIR/compare_report.html``)
    and its twins ``report.json`` / ``report.csv`` / ``report.md`` (the model card's bias section) beside it; for a
    fix that saved a pipeline (``--save-pipeline``), that folder's model card too. First, with ``refresh_validity``, each audit's
    ``validity`` block is recomputed from the human labels now in its folder (``debias label``) and written into
    its ``audit.json`` when it changed, so labels added after a run show up without generating anything; the
    page then shows the results as recorded.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if refresh_validity:
        refresh_labels(run_dirs)
    report, assets = build_report(run_dirs)
    out = Path(out) if out is not None else default_out(report["kind"], run_dirs)
    if out.is_dir():
        out = out / "report.html"
    written = write_report(report, assets, out)
    refresh_saved_pipeline_card(run_dirs[0], report)  # a fix's --save-pipeline folder: its card's numbers
    return written


def refresh_labels(run_dirs: Sequence[str | Path]) -> None:
    """Recompute the ``validity`` block of every audit a report of ``run_dirs`` shows from the labels in its folder
    (:func:`debias.results.validity.refresh_validity`); nothing is generated and no model is loaded."""
    runs = read_runs(run_dirs)  # a broken file fails here, with the report's errors
    for side, audit in runs.audits.items():
        if runs.files[side].name == AuditResult.FILE:
            refresh_validity(runs.folder(side), audit)
