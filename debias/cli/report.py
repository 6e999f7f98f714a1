"""``debias report``: the HTML report (and its JSON, CSV and Markdown twins) from run folders; no model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from debias.cli.app import OUTPUT, app
from debias.report import markdown_path, render_report, twin_paths


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(
        ..., show_default=False,
        help="An audit folder, a fix folder, or two audit folders (before, then after)."),
    out: Optional[Path] = typer.Option(
        None, "--out", rich_help_panel=OUTPUT,
        help="HTML file to write (default: RUN_DIR/report.html; for two audits AFTER_DIR/compare_report.html). "
             "report.json, report.csv and report.md (a model card's bias section) go beside it."),
) -> None:
    """Render the self-contained HTML report (offline, one file) from the JSON in run folders; no model is loaded.

    Human labels added since the audit ran (debias label) are read first: each audit's validity block in its
    audit.json is recomputed from them, so the report shows the prediction-powered shares."""
    path = render_report(run_dirs, out)
    json_path, csv_path = twin_paths(path)
    typer.echo(f"wrote {path} (numbers in {json_path.name}, {csv_path.name}; a model card's bias section in "
               f"{markdown_path(path).name})")
