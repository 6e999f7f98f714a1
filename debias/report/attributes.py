"""The report's attribute sections: each attribute beyond gender, and each intersection, as the audits recorded them.

An audit run with ``--attribute`` / ``--intersect`` holds an ``attributes`` and an ``intersections`` block
(:mod:`debias.auditing.attributes`). Here they become the twin's ``attributes`` and ``intersections``: per attribute,
one row per profession with each side's numbers (``audit``, or ``before`` / ``after`` for a fix or a comparison),
copied, never recomputed. A report of audits without attributes has neither key, so it is the report it was.
"""

from __future__ import annotations

from typing import Any, Sequence

from debias.report.runs import Runs

# an attribute row's per-image labels are in audit.json; the page shows counts, so the twin leaves them out
ROW_DROP = ("labels",)
HEADLINE = ("mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "within_tolerance")


def _names(runs: Runs, block: str, key) -> list:
    """The attributes (or intersections) any side holds, in the order the first side that has each holds them."""
    seen: dict = {}
    for audit in runs.audits.values():
        for section in getattr(audit, block) or []:
            seen.setdefault(key(section), None)
    return list(seen)


def _section(audit, block: str, key, name) -> dict | None:
    return next((s for s in getattr(audit, block) or [] if key(s) == name), None)


def _rows(sides: dict[str, dict | None], strip: Sequence[str] = ()) -> list[dict]:
    """One row per profession (the first side's order, then any the other side adds), each side's row beside."""
    phrases: dict[str, str] = {}
    for section in sides.values():
        for row in (section or {}).get("professions", []):
            phrases.setdefault(row["phrase"], row["profession"])
    rows = []
    for phrase, profession in phrases.items():
        row: dict[str, Any] = {"profession": profession, "phrase": phrase}
        for side, section in sides.items():
            found = next((r for r in (section or {}).get("professions", []) if r["phrase"] == phrase), None)
            row[side] = None if found is None else {k: v for k, v in found.items()
                                                    if k not in strip and k not in ("profession", "phrase")}
        rows.append(row)
    return rows


def attribute_blocks(runs: Runs) -> list[dict]:
    """The twin's ``attributes``: per attribute its classes, prompts, headline per side and rows per profession."""
    key = lambda s: s["attribute"]  # noqa: E731
    blocks = []
    for name in _names(runs, "attributes", key):
        sides = {side: _section(audit, "attributes", key, name) for side, audit in runs.audits.items()}
        first = next(s for s in sides.values() if s is not None)
        blocks.append({
            "attribute": name, "description": first["description"], "classes": first["classes"],
            "labels": first["classifier"].get("labels", {}), "tolerance": first["tolerance"],
            "interval_method": first["interval_method"], "confidence": first["confidence"],
            "band_rule": first["band_rule"], "has_oracle": any(s and s["has_oracle"] for s in sides.values()),
            "sides": list(sides),
            "headline": {side: None if s is None else {**{k: s[k] for k in HEADLINE},
                                                       "n_professions": len(s["professions"])}
                         for side, s in sides.items()},
            "professions": _rows(sides, ROW_DROP)})
        _add_fix(blocks[-1], runs.fix)
    return blocks


def _add_fix(block: dict, fix) -> None:
    """An attribute fix's status and strengths per profession (``fix.json``'s ``attribute_fixes``), where it has them."""
    fixed = next((b for b in (fix.attribute_fixes or []) if b.attribute == block["attribute"] and b.fixed),
                 None) if fix is not None else None
    block["fixed"] = fixed is not None
    if fixed is None:
        return
    by_phrase = {r.phrase: r for r in fixed.professions}
    block["by_template"] = [{"template": t, **d} for t, d in (fixed.mean_delta_by_template or {}).items()]
    block["crossed"] = fixed.crossed  # fixed together with another attribute: strengths are per cell
    block["cells"] = next((r.cells for r in fixed.professions if r.cells), None)
    for row in block["professions"]:
        found = by_phrase.get(row["phrase"])
        row["fix"] = None if found is None else {"status": found.status, "lambda_relative": found.lambda_relative}


def intersection_blocks(runs: Runs) -> list[dict]:
    """The twin's ``intersections``: per pair of attributes, the cells per profession and side."""
    key = lambda s: tuple(s["attributes"])  # noqa: E731
    blocks = []
    for pair in _names(runs, "intersections", key):
        sides = {side: _section(audit, "intersections", key, pair) for side, audit in runs.audits.items()}
        first = next(s for s in sides.values() if s is not None)
        blocks.append({"attributes": list(pair), "rows": first["rows"], "cols": first["cols"],
                       "min_expected": first["min_expected"], "confidence": first["confidence"],
                       "interval_method": first["interval_method"], "flag_rule": first["flag_rule"],
                       "sides": list(sides), "professions": _rows(sides)})
    return blocks


def attach(report: dict, runs: Runs) -> None:
    """Add ``attributes`` / ``intersections`` to the twin where an audit holds them (else leave the twin as it was)."""
    attributes, intersections = attribute_blocks(runs), intersection_blocks(runs)
    if attributes:
        report["attributes"] = attributes
    if intersections:
        report["intersections"] = intersections


def heat(share: float | None) -> str:
    """The background of a heatmap cell: blue with the share as its opacity (white at 0, full blue at 1)."""
    return "" if share is None else f"background: rgba(31, 95, 191, {0.08 + 0.72 * float(share):.3f})"
