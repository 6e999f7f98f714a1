"""One row per profession, as the report's JSON twin holds it: the results' fields under the results' names.

An audit row is a profession's ``audit.json`` row. A before/after row puts a profession's two audit rows side by
side (``share_female`` becomes ``share_before`` / ``share_after``, as ``fix.json`` names them) and, for a fix,
overlays the profession's ``fix.json`` row, the record of the fix. Nothing is recomputed: every share, interval,
Δ and "within the band" flag is copied from a result, so the page can only show what the run wrote.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Sequence

from debias.results.records import AuditResult, FixResult, ProfessionAudit, ProfessionFix
from debias.stats import binary as stats

# audit.json fields an audit row shows, in the order of its columns
AUDIT_FIELDS = ("target", "n", "n_female", "n_male", "n_unclear", "share_female", "ci_low", "ci_high", "p_value",
                "delta", "within_band", "planted_share", "oracle_share")
# audit.json name -> its name in a before/after row (fix.json's name where fix.json has one)
SIDE_FIELDS = {"share_female": "share", "ci_low": "ci_low", "ci_high": "ci_high", "delta": "delta",
               "p_value": "p_value", "n": "n", "n_female": "n_female", "n_male": "n_male", "n_unclear": "n_unclear",
               "oracle_share": "oracle_share", "within_band": "within_band"}
PROMPT_FIELDS = ("share_female", "ci_low", "ci_high", "n", "n_unclear")
# fix.json row fields that are not one number each: the rounds are shown as a chart, the rest stays in fix.json
FIX_LISTS = ("joint", "search", "search_unedited")


def audit_rows(audit: AuditResult) -> list[dict]:
    """The audit's rows, ordered by Δ (largest first), with their per-prompt split."""
    rows = []
    for p in audit.professions:
        row = {"profession": p.profession, **{key: getattr(p, key) for key in AUDIT_FIELDS}}
        row["prompts"] = list(p.prompts)
        row["by_prompt"] = [{"prompt": c["prompt"], **{k: c.get(k) for k in PROMPT_FIELDS}} for c in p.by_prompt]
        rows.append(row)
    return sort_by_delta(rows, "delta")


def paired_rows(before: AuditResult, after: AuditResult, fix: FixResult | None) -> tuple[list[dict], list[str]]:
    """Before/after rows ordered by Δ before, and the professions measured on one side only (named in a warning)."""
    b = {p.profession: p for p in before.professions}
    a = {p.profession: p for p in after.professions}
    f = {p.profession: p for p in fix.professions} if fix is not None else {}
    names = list(dict.fromkeys([*f, *b, *a]))
    rows = [_paired_row(name, b.get(name), a.get(name), f.get(name), fix is not None) for name in names]
    one_side = [name for name in names if (name in b) != (name in a)]
    return sort_by_delta(rows, "delta_before"), one_side


def _paired_row(name: str, before: ProfessionAudit | None, after: ProfessionAudit | None,
                fix_row: ProfessionFix | None, is_fix: bool) -> dict:
    """A profession's two audit rows side by side and, for a fix, its fix.json row over them."""
    measured = before or after
    row: dict[str, Any] = {"profession": name, "target": measured.target if measured else fix_row.target}
    row.update(_side(before, "before"))
    row.update(_side(after, "after"))
    row["planted_share"] = measured.planted_share if measured else None
    if is_fix:
        row.update(_fix_fields(fix_row))
    row["prompts_before"] = list(before.prompts) if before else []
    row["prompts_after"] = list(after.prompts) if after else []
    row["by_prompt"] = _paired_prompts(before, after)
    if is_fix:
        row.update(last_joint_round(fix_row))
    return row


def _side(p: ProfessionAudit | None, side: str) -> dict:
    """One audit row's numbers under their before/after names; all None for a side that did not measure it."""
    return {f"{name}_{side}": (getattr(p, key) if p else None) for key, name in SIDE_FIELDS.items()}


def _fix_fields(p: ProfessionFix | None) -> dict:
    """A profession's fix.json row (its one-number fields under fix.json's names, and its rounds).

    fix.json is the record of the fix, so where it repeats an audit's number (the shares, their intervals, Δ and
    the within-band flags on the test prompts) its value is the one kept.
    """
    if p is None:  # in an audit but not in the fix: nothing was decided for it
        return {"destination": None, "status": None, "lambda": None, "lambda_relative": None,
                "images_used_in_search": None, "search": []}
    fields = {("lambda" if k == "lambda_" else k): v for k, v in asdict(p).items() if k not in FIX_LISTS}
    fields.pop("profession")
    return {**fields, "search": list(p.search)}


def _paired_prompts(before: ProfessionAudit | None, after: ProfessionAudit | None) -> list[dict]:
    """One profession's shares per prompt, before and after side by side (matched by the prompt's text)."""
    b = {c["prompt"]: c for c in (before.by_prompt if before else [])}
    a = {c["prompt"]: c for c in (after.by_prompt if after else [])}
    rows = []
    for prompt in dict.fromkeys([*b, *a]):
        row: dict[str, Any] = {"prompt": prompt}
        for side, cell in (("before", b.get(prompt, {})), ("after", a.get(prompt, {}))):
            row.update({f"{SIDE_FIELDS.get(k, k)}_{side}": cell.get(k) for k in PROMPT_FIELDS})
        rows.append(row)
    return rows


def last_joint_round(p: ProfessionFix | None) -> dict:
    """The share on the tuning prompts in the fix's last round (fresh seeds, the strengths it measured), or nothing.

    The test prompts are held out, so this is the one place the page shows how the edit did where it was tuned.
    """
    joint = [j for j in (p.joint if p else None) or [] if isinstance(j, dict)]
    if not joint:
        return {}
    last = joint[-1]
    n = sum(last.get(k) or 0 for k in ("n_female", "n_male", "n_unclear"))
    return {"tuning_share_after": last.get("share_female"), "tuning_ci_low_after": last.get("ci_low"),
            "tuning_ci_high_after": last.get("ci_high"), "tuning_n_after": n}


def sort_by_delta(rows: list[dict], delta_key: str) -> list[dict]:
    """Largest Δ first (the professions that need attention lead), unmeasured ones last, then by name."""
    return sorted(rows, key=lambda r: (r[delta_key] is None, -(r[delta_key] or 0.0), r["profession"]))


def prompt_columns(rows: Sequence[dict]) -> list[str]:
    """Headers of the per-prompt table: the k-th prompt's template where every profession agrees, else "prompt k"."""
    width = max((len(r["by_prompt"]) for r in rows), default=0)
    headers = []
    for k in range(width):
        found = {template_of(r["profession"], r["by_prompt"][k]["prompt"]) for r in rows if len(r["by_prompt"]) > k}
        headers.append(found.pop() if len(found) == 1 else f"prompt {k + 1}")
    return headers


def template_of(profession: str, prompt: str) -> str:
    """The template a prompt came from ("a photo of a nurse" -> "a photo of a(n) {profession}").

    The article goes with the profession, so "a nurse" and "an engineer" give one column header.
    """
    pattern = re.compile(r"(?<!\w)(a|an)\s+" + re.escape(profession) + r"(?!\w)", re.IGNORECASE)
    if pattern.search(prompt):
        return pattern.sub(lambda m: "a(n) {profession}", prompt, count=1)
    return prompt.replace(profession, "{profession}", 1)


def prompt_column_deltas(rows: Sequence[dict], paired: bool) -> list[dict]:
    """Per column of the per-prompt table, the mean Δ over professions (``delta_before`` and ``delta_after``, or
    ``delta`` for one audit) and what a perfect model would read on as many images (``noise_floor…``)."""
    columns: list[dict] = [{} for _ in range(max((len(r["by_prompt"]) for r in rows), default=0))]
    for suffix in (("_before", "_after") if paired else ("",)):
        share = f"share{suffix}" if suffix else "share_female"
        classified = [[(c.get(f"n{suffix}") or 0) - (c.get(f"n_unclear{suffix}") or 0) for c in r["by_prompt"]]
                      for r in rows]
        cells = [[(c.get(share), n) for c, n in zip(r["by_prompt"], ns)] for r, ns in zip(rows, classified)]
        for column, (value, floor) in zip(columns, stats.mean_delta_by_prompt([r["target"] for r in rows], cells)):
            column.update({f"delta{suffix}": value, f"noise_floor{suffix}": floor})
    return columns
