"""Writing the report: the HTML page from its Jinja2 template, and its JSON and CSV twins beside it.

Every number on the page is a span with ``data-key`` (its path in the JSON twin) and ``data-value`` (the exact
value), so the page can be checked number by number against the twin. Autoescape is on: every string from a run
file is inserted as text, never as markup.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from debias.core.errors import InputError
from debias.core.io import atomic_write_json, atomic_write_text
from debias.report.attributes import heat
from debias.report.card import bias_section
from debias.report.words import STATUS_TEXT, fmt
from debias.results.files import csv_table

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# settings that differ between any two runs and say nothing about whether the runs are comparable
VOLATILE = ("started_at", "finished_at", "wall_seconds", "images_generated", "images_reused", "edit",
            "model.fingerprint")


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ("generation.steps", 10) pairs, lists kept whole, for the method tables."""
    if isinstance(obj, dict) and obj:
        out = []
        for k, v in obj.items():
            out.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, obj)]


def method_table(method_runs: dict, prefix: str = "method.runs") -> list[dict]:
    """Rows (setting, value per run), in first-seen order, marking settings that differ between runs."""
    cols = list(method_runs)
    flat = {c: dict(flatten({k: v for k, v in method_runs[c].items() if k != "templates"})) for c in cols}
    rows = []
    for key in dict.fromkeys(k for c in cols for k in flat[c]):
        values = [flat[c].get(key) for c in cols]
        differs = len(cols) > 1 and any(v != values[0] for v in values) and not key.startswith(VOLATILE)
        rows.append({"key": key, "cells": [{"col": c, "value": v, "data_key": f"{prefix}.{c}.{key}"}
                                           for c, v in zip(cols, values)], "differs": differs})
    return rows


def fix_table(method: dict) -> list[dict]:
    """The fix's own settings; those it shares with the measurements are shown once, in their table."""
    if "fix" not in method:
        return []
    shared = dict(flatten(method["runs"].get("before", {})))
    return [row for row in method_table({"fix": method["fix"]}, "method")
            if row["key"] not in shared or shared[row["key"]] != row["cells"][0]["value"]]


def render_html(report: dict, assets: dict) -> str:
    """Fill the Jinja2 template (autoescape on: every string from a run file is text, never markup)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["dv"] = json.dumps
    env.globals["isnum"] = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    env.globals["heat"] = heat
    return env.get_template("report.html.j2").render(
        r=report, a=assets, method_table=method_table(report["method"]["runs"]), fix_table=fix_table(report["method"]),
        status_text=STATUS_TEXT)


def default_out(kind: str, run_dirs: Sequence[Path]) -> Path:
    """RUN_DIR/report.html; a comparison lives with its "after" run, keeping each audit's own report.html."""
    folder = run_dirs[-1] if kind == "compare" else run_dirs[0]
    folder = folder.parent if folder.is_file() else folder
    return folder / ("compare_report.html" if kind == "compare" else "report.html")


def twin_paths(out: Path) -> tuple[Path, Path]:
    """The JSON and CSV twins beside the HTML (never over a run's own audit.json / fix.json)."""
    stem = _twin_stem(out)
    return out.with_name(stem + ".json"), out.with_name(stem + ".csv")


def markdown_path(out: Path) -> Path:
    """The Markdown twin beside the HTML: the report's model-card section (``report.md``)."""
    return out.with_name(_twin_stem(out) + ".md")


def _twin_stem(out: Path) -> str:
    stem = out.stem if out.suffix else out.name
    return stem + ".report" if stem in ("audit", "fix") else stem


def csv_text(rows: list[dict]) -> str:
    """One row per profession with the scalar columns of the JSON twin (same names)."""
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    return csv_table(keys, rows)


def write_report(report: dict, assets: dict, out: Path) -> Path:
    """Write the page and its twins atomically; the twin's sources are relative, so a copied folder still works.
    The Markdown twin is the model-card section (:mod:`debias.report.card`), from the JSON twin alone."""
    json_path, csv_path = twin_paths(out)
    md_path = markdown_path(out)
    report["twins"] = {"json": json_path.name, "csv": csv_path.name}
    report["sources"] = {k: os.path.relpath(v, out.resolve().parent) for k, v in report["sources"].items()}
    html = render_html(report, assets)
    try:
        atomic_write_json(json_path, report)
        atomic_write_text(csv_path, csv_text(report["professions"]))
        atomic_write_text(md_path, bias_section(report))
        atomic_write_text(out, html)
    except OSError as err:
        raise InputError(f"{err.filename or out}: cannot write the report ({err.strerror}); "
                         "choose a writable place with --out.") from None
    return out
