"""The report's headline: what was measured, the results' totals, one sentence a reader can repeat, and warnings.

The totals (mean Δ and its interval, professions within the band) are the ones the results recorded. What the
report adds is description, never a second opinion on a recorded figure: how precise a typical share is, how
the within-band flags split over targets, and the warnings a reviewer should read before trusting a comparison.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from debias.report import validity as _validity
from debias.report.rows import prompt_column_deltas, prompt_columns
from debias.report.runs import Runs
from debias.results.records import AuditResult
from debias.validity.record import PPI_HEADLINE

UNCLEAR_WARN_SHARE = 0.2  # warn when more than this share of a profession's images is unclear
# audit.json fields that are the measurement's results; every other field is a setting shown under Method
RESULT_FIELDS = {"kind", "professions", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
                 "mean_delta_noise_floor", "within_tolerance", "validity", "classifiers", "attributes",
                 "intersections"}
# fix.json fields shown elsewhere (the rows, side effects, the headline), left out of its settings
FIX_SHOWN_ELSEWHERE = {"kind", "professions", "side_effects", "before", "after"}
# the headline figures fix.json records (it has no noise floor before the edit: the before audit's is shown)
FIX_HEADLINE = ("mean_delta_before", "mean_delta_before_ci_low", "mean_delta_before_ci_high", "mean_delta_after",
                "mean_delta_after_ci_low", "mean_delta_after_ci_high", "mean_delta_noise_floor_after",
                "within_tolerance_before", "within_tolerance_after")
# an attribute fix records the same figures, less the noise floor
ATTRIBUTE_HEADLINE = tuple(key for key in FIX_HEADLINE if key != "mean_delta_noise_floor_after")


def summarize(runs: Runs, rows: list[dict]) -> dict:
    """The summary block of the twin: which model, the headline figures, the verdicts and the conclusion."""
    record = runs.fix or runs.first
    model = runs.first.model
    summary: dict[str, Any] = {
        "model_spec": model.get("spec"), "model_fingerprint": model.get("fingerprint"),
        "has_oracle": runs.has_oracle, "date": (runs.fix or runs.last).finished_at,
        "target": record.target, "tolerance": record.tolerance,
    }
    summary.update(_headline(runs))
    summary.update(_validity.summarize(runs))
    suffixes = ["_before", "_after"] if runs.paired else [""]
    for suffix in suffixes:
        summary[f"typical_ci_half_width{suffix}"] = _median_half_width(rows, f"ci_low{suffix}", f"ci_high{suffix}")
        summary[f"median_n{suffix}"] = _median_int(rows, f"n{suffix}")
    agreements = [p.agreement for p in runs.first.professions if p.agreement is not None]
    summary["classifier_oracle_agreement"] = round(statistics.fmean(agreements), 4) if agreements else None
    summary["n_professions"] = len(rows)
    summary["prompt_columns"] = prompt_columns(rows)
    summary["prompt_column_deltas"] = prompt_column_deltas(rows, runs.paired)
    summary["verdicts"] = verdicts(rows, suffixes, ppi=summary["headline"] == PPI_HEADLINE)
    summary["fixed_attributes"] = fixed_attributes(runs)
    summary["conclusion"] = conclusion(runs.kind, summary, rows)
    if summary["fixed_attributes"]:
        gender = summary["conclusion"]
        summary["conclusion"] = " ".join(attribute_sentence(a) for a in summary["fixed_attributes"]) + \
            " Gender, which this fix did not edit: " + gender[:1].lower() + gender[1:]
    return summary


def fixed_attributes(runs: Runs) -> list[dict]:
    """The attributes a fix edited when gender was not one of them (``--attribute skin``), with the figures the
    fix recorded: such a fix is judged on them first, and gender, measured beside them, second."""
    blocks = [b for b in ((runs.fix.attribute_fixes or []) if runs.fix else []) if b.fixed]
    if not blocks or any(b.attribute == "gender" for b in blocks):
        return []
    return [{"attribute": b.attribute, "n_professions": len(b.professions), "tolerance": b.tolerance,
             **{key: getattr(b, key) for key in ATTRIBUTE_HEADLINE}} for b in blocks]


def attribute_sentence(a: dict) -> str:
    """The conclusion's sentence for one edited attribute (its band is every class within the tolerance)."""
    text = (f"After the edit, {a['within_tolerance_after']} of {a['n_professions']} professions are within "
            f"±{a['tolerance']:g} of their {a['attribute']} targets on held-out prompts (before: "
            f"{a['within_tolerance_before']})")
    before, after = a["mean_delta_before"], a["mean_delta_after"]
    if before is not None and after is not None:
        verb = "fell" if after < before else "rose" if after > before else "stayed"
        text += f", and {a['attribute']} mean Δ {verb} from {before:.2f} to {after:.2f}" + _intervals_sentence(a)
    return text + "."


def _headline(runs: Runs) -> dict:
    """Mean Δ with its interval and the count within the band, as the fix (else each audit) recorded them."""
    if not runs.paired:
        audit = runs.first
        return {"mean_delta": audit.mean_delta, "mean_delta_ci_low": audit.mean_delta_ci_low,
                "mean_delta_ci_high": audit.mean_delta_ci_high, "mean_delta_noise_floor": audit.mean_delta_noise_floor,
                "within_tolerance": audit.within_tolerance}
    out = {}
    for side, audit in runs.audits.items():
        for stat in ("", "_ci_low", "_ci_high"):
            out[f"mean_delta_{side}{stat}"] = getattr(audit, f"mean_delta{stat}")
        out[f"mean_delta_noise_floor_{side}"] = audit.mean_delta_noise_floor
        out[f"within_tolerance_{side}"] = audit.within_tolerance
    if runs.fix is not None:
        out.update({key: getattr(runs.fix, key) for key in FIX_HEADLINE})
    return out


def _median_half_width(rows: Sequence[dict], low: str, high: str) -> float | None:
    """The typical precision of a share: the median half width of the rows' 95% intervals."""
    widths = [(r[high] - r[low]) / 2 for r in rows if r[low] is not None and r[high] is not None]
    return round(statistics.median(widths), 4) if widths else None


def _median_int(rows: Sequence[dict], key: str) -> int | None:
    ns = [r[key] for r in rows if r[key] is not None]
    return int(statistics.median(ns)) if ns else None


def verdicts(rows: list[dict], suffixes: Sequence[str], ppi: bool = False) -> list[dict]:
    """The rows' recorded within-band flags counted per target value, since one list may mix targets; with
    ``ppi`` also the prediction-powered flags (``ppi_within_tolerance``), which then lead."""
    out = []
    for target in sorted({r["target"] for r in rows}):
        group = [r for r in rows if r["target"] == target]
        verdict: dict[str, Any] = {"target": target, "n_professions": len(group)}
        for suffix in suffixes:
            verdict[f"within_tolerance{suffix}"] = sum(1 for r in group if r[f"within_band{suffix}"])
            if ppi:
                verdict[f"ppi_within_tolerance{suffix}"] = sum(1 for r in group if r[f"ppi_within_band{suffix}"])
        out.append(verdict)
    return out


def _two(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def conclusion(kind: str, s: dict, rows: list[dict]) -> str:
    """One plain sentence a reader can repeat; the intervals decide whether a change is called real. With human
    labels on every profession it states the prediction-powered numbers, and says so."""
    n, tol = s["n_professions"], s["tolerance"]
    target = "/".join(f"{v['target']:g}" for v in s["verdicts"]) or f"{s['target']:g}"
    ppi = s["headline"] == PPI_HEADLINE
    h = _validity.headline(s, list(s["validity"]), kind != "audit")
    mean_delta = "mean Δ (prediction-powered)" if ppi else "mean Δ"
    if kind == "audit":
        whose = "perceived-female share, corrected with human labels (prediction-powered)," if ppi else \
            "perceived-female share"
        text = (f"{h['within_tolerance']} of {n} professions produce images whose {whose} is "
                f"within ±{tol:g} of the target {target}; {mean_delta} is {_two(h['mean_delta'])} "
                f"(95% interval {_two(h['mean_delta_ci_low'])}–{_two(h['mean_delta_ci_high'])})")
        return text + _most_skewed(rows, ppi) + "."
    where = "on held-out prompts " if kind == "fix" else ""
    how = "by their prediction-powered shares " if ppi else ""
    text = (f"After {'the edit' if kind == 'fix' else 'the change'}, {h['within_tolerance_after']} of {n} professions "
            f"are within ±{tol:g} of the target {target} {where}{how}(before: {h['within_tolerance_before']})")
    before, after = h["mean_delta_before"], h["mean_delta_after"]
    if before is not None and after is not None:
        verb = "fell" if after < before else "rose" if after > before else "stayed"
        text += f", and {mean_delta} {verb} from {before:.2f} to {after:.2f}"
        text += _intervals_sentence(h)
    return text + "."


def _most_skewed(rows: list[dict], ppi: bool) -> str:
    """The profession furthest from its target (rows are ordered by the classifier's Δ, largest first)."""
    if ppi:
        measured = sorted((r for r in rows if r["ppi_delta"] is not None), key=lambda r: -r["ppi_delta"])
        return (f", and the most skewed is {measured[0]['profession']} ({measured[0]['ppi_share']:.0%} female, "
                "prediction-powered)") if measured else ""
    measured = [r for r in rows if r["share_female"] is not None]
    return f", and the most skewed is {measured[0]['profession']} ({measured[0]['share_female']:.0%} female)" \
        if measured else ""


def _intervals_sentence(s: dict) -> str:
    b_lo, b_hi = s["mean_delta_before_ci_low"], s["mean_delta_before_ci_high"]
    a_lo, a_hi = s["mean_delta_after_ci_low"], s["mean_delta_after_ci_high"]
    if None in (b_lo, b_hi, a_lo, a_hi):
        return ""
    if a_lo <= b_hi and b_lo <= a_hi:
        return " — the 95% intervals overlap, so this change is not clearly larger than sampling noise"
    return " — the 95% intervals do not overlap"


def warnings(runs: Runs, rows: list[dict], one_side: list[str]) -> list[str]:
    """What a reviewer should know before relying on the numbers (missing images are added when thumbnails load)."""
    found = []
    if one_side:
        found.append("Measured on one side only (no before/after comparison possible): " + ", ".join(one_side) + ".")
    if runs.paired:
        diffs = settings_differences(runs.audits["before"], runs.audits["after"])
        if diffs:
            found.append("The two runs differ in " + ", ".join(diffs) + "; a before/after difference may come from "
                         "these settings and not only from the edit. Compare runs made with the same settings.")
    suffixes = ["_before", "_after"] if runs.paired else [""]
    high = sorted({r["profession"] for r in rows for s in suffixes if _unclear_share(r, s) > UNCLEAR_WARN_SHARE})
    if high:
        found.append(f"More than {UNCLEAR_WARN_SHARE:.0%} of the images were unclear (no person found or low "
                     "classifier confidence) for: " + ", ".join(high) + ". Their shares rest on fewer images and may "
                     "be biased by what the classifier abstains on; look at the sample images.")
    return found + _validity.warnings(runs, _validity.summarize(runs))


def _unclear_share(row: dict, suffix: str) -> float:
    """The share of a profession's images the classifier abstained on (0 where it was not measured)."""
    n, unclear = row[f"n{suffix}"], row[f"n_unclear{suffix}"]
    return unclear / n if n and unclear is not None else 0.0


def settings_differences(before: AuditResult, after: AuditResult) -> list[str]:
    """Settings that must match for a before/after comparison to measure the edit and nothing else."""
    diffs = [key for key in ("generation", "classifier", "prompt_set", "target", "tolerance")
             if getattr(before, key) != getattr(after, key)]
    if before.model.get("spec") != after.model.get("spec"):
        diffs.append("model.spec")
    return diffs


def method(runs: Runs) -> dict:
    """What a reviewer needs to repeat the measurement: every setting of each run (and of the fix), as recorded."""
    out: dict[str, Any] = {"runs": {side: {k: v for k, v in audit.to_dict().items() if k not in RESULT_FIELDS}
                                    for side, audit in runs.audits.items()}}
    if runs.fix is not None:
        out["fix"] = {k: v for k, v in runs.fix.to_dict().items()
                      if k not in FIX_SHOWN_ELSEWHERE and not k.startswith(("mean_delta", "within_tolerance"))}
    return out
