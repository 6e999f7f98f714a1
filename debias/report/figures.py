"""The report's charts, drawn from the rows of its JSON twin (so a chart can only show what the twin holds).

:mod:`debias.report.charts` draws from plain numbers; this module picks those numbers out of the rows. It imports
matplotlib only when a report is rendered, which keeps ``import debias.report`` light.
"""

from __future__ import annotations

from typing import Any


def share_chart(report: dict) -> str | None:
    """Share female with its interval per profession (before and after for a paired report), or None without rows."""
    from debias.report import charts  # heavy: matplotlib loads only when a report has figures to draw

    s, rows = report["summary"], report["professions"]
    if not rows:
        return None
    planted = [r["planted_share"] for r in rows] if s["has_oracle"] else None
    if report["kind"] == "audit":
        before = [(r["share_female"], r["ci_low"], r["ci_high"]) for r in rows]
        return charts.share_chart([r["profession"] for r in rows], before, None, s["target"], s["tolerance"],
                                  planted, before_label="share female", after_label="")
    before = [(r["share_before"], r["ci_low_before"], r["ci_high_before"]) for r in rows]
    after = [(r["share_after"], r["ci_low_after"], r["ci_high_after"]) for r in rows]
    return charts.share_chart([r["profession"] for r in rows], before, after, s["target"], s["tolerance"], planted)


def search_charts(report: dict) -> dict[int, str]:
    """One share-vs-λ chart per tuned profession of a fix, by row index (professions left unedited have none)."""
    if report["kind"] != "fix":
        return {}
    out = {}
    for i, row in enumerate(report["professions"]):
        uri = search_chart(row, report["summary"]["tolerance"])
        if uri:
            out[i] = uri
    return out


def search_chart(row: dict, tolerance: float) -> str | None:
    """A profession's rounds: each round's share at its λ, the λ that ships and the pooled model's share there.

    The x axis is relative λ where the rounds and the choice record it (it is comparable across models), else
    absolute λ. The dotted line is the unedited share on the tuning prompts the rounds ran on.
    """
    from debias.report import charts  # heavy: matplotlib loads only when a report has figures to draw

    points: list[dict[str, Any]] = row["search"]
    relative = row.get("lambda_relative") is not None or any(p.get("lambda_relative") for p in points)
    relative = relative and all(p.get("lambda_relative") for p in points if p.get("lambda"))
    x = "lambda_relative" if relative else "lambda"
    unedited = row.get("tuning_share_before")
    unedited = row.get("share_before") if unedited is None else unedited
    return charts.search_chart(
        row["profession"], [{"x": p.get(x), "n_female": p.get("n_female"), "n_male": p.get("n_male")} for p in points],
        row.get(x), row["target"], tolerance, unedited, x_label="λ (relative)" if relative else "λ (absolute)",
        fitted=(row.get("search_share"), row.get("search_ci_low"), row.get("search_ci_high")))


def attribute_charts(report: dict) -> list[str]:
    """One stacked-bar chart of class shares per attribute block (each side's bar, the target ticked)."""
    from debias.report import charts  # heavy: matplotlib loads only when a report has figures to draw

    out = []
    for block in report.get("attributes", []):
        rows = block["professions"]
        sides = [(side, [(r[side] or {}).get("shares") for r in rows]) for side in block["sides"]]
        targets = [next(r[side]["target"] for side in block["sides"] if r[side]) for r in rows]
        out.append(charts.class_share_chart([r["profession"] for r in rows], block["classes"], sides, targets))
    return out
