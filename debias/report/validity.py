"""What the report says about the classifier: human labels against it, and other classifiers beside it.

Everything comes from the audits' ``validity`` and ``classifiers`` fields (:mod:`debias.validity.record`,
:mod:`debias.validity.compare`), written when the audit ran or when ``debias report`` refreshed them from new
labels; nothing is recomputed here. Per profession the rows get flat columns (so the CSV twin has them) named
below; per side the summary gets the overall figures. When every side's block leads with the prediction-powered
numbers (every measured profession has labels), so do the headline and the verdicts.
"""

from __future__ import annotations

from typing import Any, Optional

from debias.report.runs import Runs
from debias.results.records import AuditResult
from debias.validity.record import PPI_HEADLINE, commands_for

# flat row column -> (field of a validity row, key inside it); None: the field itself
ROW_FIELDS = {
    "n_labelled": ("n_labelled", None), "n_readable": ("n_readable", None),
    "classifier_agreement": ("agreement", "rate"), "classifier_agreement_ci_low": ("agreement", "ci_low"),
    "classifier_agreement_ci_high": ("agreement", "ci_high"),
    "classifier_error_rate": ("error_rate", "rate"), "classifier_error_rate_ci_low": ("error_rate", "ci_low"),
    "classifier_error_rate_ci_high": ("error_rate", "ci_high"),
    "classifier_error_p_holm": ("flag", "p_holm"), "classifier_error_flagged": ("flag", "flagged"),
    "kappa_classifier": ("kappa_classifier", "kappa"), "kappa_classifier_ci_low": ("kappa_classifier", "ci_low"),
    "kappa_classifier_ci_high": ("kappa_classifier", "ci_high"),
    "human_share": ("human_share", "estimate"), "human_ci_low": ("human_share", "ci_low"),
    "human_ci_high": ("human_share", "ci_high"),
    "ppi_share": ("ppi_share", "estimate"), "ppi_ci_low": ("ppi_share", "ci_low"),
    "ppi_ci_high": ("ppi_share", "ci_high"), "ppi_lambda": ("ppi_share", "lam"),
    "ppi_delta": ("ppi_delta", None), "ppi_within_band": ("ppi_within_band", None),
    "more_labels_for_0_05": ("more_labels_for_0.05", None),
}
CONFUSION = "confusion_3x3"  # per profession, in the JSON twin only (a table of cells)
# a comparison row's fields the report shows, under the names it keeps
CLASSIFIER_FIELDS = ("share_female", "ci_low", "ci_high", "delta", "within_band", "p_holm", "disagrees")


def _row_fields(vrow: Optional[dict]) -> dict:
    vrow = vrow or {}
    out = {}
    for column, (name, key) in ROW_FIELDS.items():
        value = vrow.get(name)
        out[column] = (value or {}).get(key) if key is not None else value
    out[CONFUSION] = vrow.get(CONFUSION)
    return out


def _classifier_cells(audit: AuditResult, profession: str) -> list[dict]:
    """The other classifiers' readings of one profession, one entry per classifier, in the audit's order."""
    cells = []
    for block in audit.classifiers or []:
        row = next((r for r in block["professions"] if r["profession"] == profession), None) or {}
        agree, kappa = row.get("agreement") or {}, row.get("kappa") or {}
        cells.append({"model": block.get("model"), **{k: row.get(k) for k in CLASSIFIER_FIELDS},
                      "agreement": agree.get("rate"), "agreement_ci_low": agree.get("ci_low"),
                      "agreement_ci_high": agree.get("ci_high"), "kappa": kappa.get("kappa")})
    return cells


def has_labels(audit: AuditResult) -> bool:
    return bool((audit.validity or {}).get("has_labels"))


def attach(runs: Runs, rows: list[dict]) -> None:
    """Add each side's label columns (when any side has labels) and other classifiers' readings to the rows."""
    labelled = any(has_labels(a) for a in runs.audits.values())
    compared = any(a.classifiers for a in runs.audits.values())
    for row in rows:
        for side, audit in runs.audits.items():
            suffix = f"_{side}" if runs.paired else ""
            if labelled:
                vrows = {v["profession"]: v for v in (audit.validity or {}).get("professions", [])}
                fields = _row_fields(vrows.get(row["profession"]) if has_labels(audit) else None)
                row.update({f"{k}{suffix}": v for k, v in fields.items()})
            if compared:
                row[f"classifiers{suffix}"] = _classifier_cells(audit, row["profession"])


def side_summary(audit: AuditResult, folder: str, report_dirs: str) -> Optional[dict]:
    """One audit's overall validity figures, or None for a result written before audits recorded them; the commands
    name the audit's ``folder`` and the folders the report was rendered from, as given."""
    v = audit.validity
    if v is None:
        return None
    overall = v["overall"]
    keep = ("has_labels", "n_labels", "labellers", "headline", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
            "mean_delta_professions", "mean_delta_method", "within_tolerance", "unlabelled_professions",
            "unreadable_lines", "labels_not_in_run", "note")
    commands = commands_for(v, folder)
    return {**{k: v.get(k) for k in keep}, "label_command": commands["label"],
            "import_command": commands["import"], "report_command": commands_for(v, report_dirs)["report"],
            "labels_for_0_10": v["labels_needed"]["0.1"], "labels_for_0_05": v["labels_needed"]["0.05"],
            "n_labelled": overall["n_labelled"], "agreement": overall["agreement"],
            "error_rate": overall["error_rate"], "kappa_classifier": overall["kappa_classifier"],
            "kappa_labellers": overall["kappa_labellers"], "flagged": overall["flagged"],
            "flag_test": overall["flag_test"], "confusion_3x3": overall["confusion_3x3"]}


def classifier_summary(audit: AuditResult) -> list[dict]:
    """Each other classifier's headline: its mean Δ, band count, pooled agreement, where it disagrees."""
    keep = ("model", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "within_tolerance", "agreement",
            "disagreeing", "test")
    return [{k: block.get(k) for k in keep} for block in audit.classifiers or []]


def summarize(runs: Runs) -> dict:
    """The summary's validity part: per side, and which numbers lead the headline."""
    report_dirs = [runs.files["fix"].parent] if runs.fix is not None else [runs.folder(s) for s in runs.sides]
    sides = {side: side_summary(audit, str(runs.folder(side)), " ".join(map(str, report_dirs)))
             for side, audit in runs.audits.items()}
    ppi = all(s is not None and s["headline"] == PPI_HEADLINE for s in sides.values())
    return {"headline": PPI_HEADLINE if ppi else "classifier", "has_labels": any(map(has_labels, runs.audits.values())),
            "validity": sides, "classifiers": {side: classifier_summary(a) for side, a in runs.audits.items()}}


def headline(s: dict, sides: list[str], paired: bool) -> dict[str, Any]:
    """The numbers the conclusion states, under the summary's names: the prediction-powered ones when they lead."""
    if s["headline"] != PPI_HEADLINE:
        return s
    out = dict(s)
    for side in sides:
        suffix = f"_{side}" if paired else ""
        block = s["validity"][side]
        for stat in ("", "_ci_low", "_ci_high"):
            out[f"mean_delta{suffix}{stat}"] = block[f"mean_delta{stat}"]
        out[f"within_tolerance{suffix}"] = block["within_tolerance"]
    return out


def warnings(runs: Runs, s: dict) -> list[str]:
    """What the labels and the other classifiers say a reviewer should check."""
    found = []
    for side, block in s["validity"].items():
        where = f" ({side})" if runs.paired else ""
        if not block or not block["has_labels"]:
            continue
        if block["flagged"]:
            found.append(f"The classifier's error rate against human labels stands out{where} for: "
                         + ", ".join(block["flagged"]) + f" ({block['flag_test']}). Their classifier shares are the "
                         "least trustworthy; read their prediction-powered shares.")
        if block["unlabelled_professions"]:
            found.append(f"Professions without human labels{where}: " + ", ".join(block["unlabelled_professions"])
                         + ". The headline stays the classifier's until every profession has labels "
                         f"({block['label_command']}).")
        if block["labels_not_in_run"] or block["unreadable_lines"]:
            found.append(f"The label file{where} has {block['labels_not_in_run']} label(s) of images not in this "
                         f"audit and {block['unreadable_lines']} unreadable line(s); they were left out.")
    for side, blocks in s["classifiers"].items():
        where = f" ({side})" if runs.paired else ""
        for block in blocks:
            if block["disagreeing"]:
                found.append(f"The classifiers disagree{where}: {block['model']} reads a different share than the "
                             "primary classifier for " + ", ".join(block["disagreeing"]) + f" ({block['test']}). "
                             "Human labels (debias label) say which reading to believe.")
    return found
