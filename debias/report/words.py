"""How the report writes a number and a status, in the HTML page and in its Markdown twin alike."""

from __future__ import annotations

from typing import Any

STATUS_TEXT = {"fixed": "fixed", "already_within_tolerance": "already within tolerance",
               "not_reachable": "not reachable", "budget_exhausted": "budget exhausted"}


def fmt(value: Any, kind: str = "f2") -> str:
    """How a number is shown; the exact value sits in data-value beside it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    v = float(value)
    if kind == "int":
        return f"{int(round(v))}"
    if kind == "p":
        return f"{v:.1e}" if v < 1e-3 and v != 0 else f"{v:.3f}"
    if kind == "raw":
        return str(value) if isinstance(value, int) else f"{v:.6g}"
    formats = {"g3": "{:.3g}", "f1": "{:.1f}", "f3": "{:.3f}", "pct": "{:.0%}"}
    return formats.get(kind, "{:.2f}").format(v)
