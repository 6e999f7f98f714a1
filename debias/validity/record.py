"""The validity block an audit keeps in ``audit.json``: what human labels say about its classifier's shares.

An audit's shares are the classifier's readings. :func:`validity_block` runs :func:`~debias.validity.summary.
validity_for_run` on the audit folder and adds what a report needs to lead with the corrected numbers rather
than the classifier's: each profession's prediction-powered Δ and "within the band" flag, and the mean Δ over
professions with its interval. Without labels the block says so, with the label counts that would bound the
classifier's error rate and the commands that add labels, so the report can tell the reader how to check.

Labels are added after an audit ran, so the block can be refreshed without generating anything:
:func:`debias.results.validity.refresh_validity` recomputes it from the folder's ``audit.json`` and ``labels/`` and rewrites
``audit.json`` when it changed. ``debias report RUN_DIR`` does this before it renders (the one way to pick up
new labels; a rerun of the audit, all cached, computes the same block).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from debias.stats import binary as stats
from debias.validity.summary import validity_for_run

MEAN_DELTA_METHOD = (
    "mean over professions of Δ from the prediction-powered shares; 95% interval from a parametric bootstrap "
    "treating each share as normal with the standard error its interval implies ((high − low) / (2·1.96)), "
    "clipped to [0, 1], seed 0")
PPI_HEADLINE = "prediction-powered"
CLASSIFIER_HEADLINE = "classifier"


# what adds labels to an audit and shows them; "{run_dir}" is the audit folder, filled in by whoever knows where it
# is now (the report, the printed summary), so the result stays the same wherever the folder is copied
COMMANDS = {"label": "debias label {run_dir}", "import": "debias label {run_dir} --import labels.csv",
            "report": "debias report {run_dir}"}


def commands_for(block: dict, run_dir: str | os.PathLike) -> dict[str, str]:
    """The block's commands with the audit folder filled in: ``{"label": "debias label runs/audit", …}``."""
    return {name: text.replace("{run_dir}", str(run_dir)) for name, text in block.get("commands", COMMANDS).items()}


def mean_delta_of_shares(shares: Sequence[tuple[float, float, float, float]], *, level: float = 0.95,
                         n_boot: int = 4000, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """Mean Δ over professions from ``(estimate, ci_low, ci_high, target)`` each, with a bootstrap interval.

    The prediction-powered shares come with intervals, not counts, so the bootstrap of
    :func:`debias.stats.binary.mean_delta_interval` (binomial redraws) cannot be used; each share is redrawn from a
    normal with the standard error its interval implies, clipped to [0, 1]. The seed is fixed so the same shares
    always give the same interval. Returns ``(None, None, None)`` without shares.
    """
    if not shares:
        return None, None, None
    est = np.array([s[0] for s in shares], dtype=np.float64)
    se = np.array([(s[2] - s[1]) / (2 * stats.Z95) for s in shares], dtype=np.float64)
    t = np.array([s[3] for s in shares], dtype=np.float64)
    scale = np.maximum(t, 1.0 - t)
    point = float(np.mean(np.abs(est - t) / scale))
    draws = np.clip(np.random.default_rng(seed).normal(est, se, size=(n_boot, len(est))), 0.0, 1.0)
    boot = np.mean(np.abs(draws - t) / scale, axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def _with_band(row: dict, target: float, tolerance: float) -> dict:
    """A validity row with the profession's target and its prediction-powered Δ and band flag."""
    ppi = (row.get("ppi_share") or {}).get("estimate")
    return {**row, "target": target, "ppi_delta": stats.delta(ppi, target),
            "ppi_within_band": stats.within_band(ppi, target, tolerance) if ppi is not None else None}


def validity_block(run_dir: str | os.PathLike, audit_record: dict) -> dict:
    """The ``validity`` field of an audit's result; ``audit_record`` is the audit's ``to_dict()``.

    Keys: ``has_labels``, ``labels_file``, ``labellers``, ``n_labels``, ``unreadable_lines``, ``labels_not_in_run``,
    ``labels_needed`` (``{"0.1": 93, "0.05": 381}``), ``commands`` (:data:`COMMANDS`), ``headline``
    ("prediction-powered" when every profession the classifier measured has a prediction-powered share, else
    "classifier"), ``mean_delta`` / ``_ci_low`` / ``_ci_high`` over ``mean_delta_professions`` professions (method in
    ``mean_delta_method``), ``within_tolerance`` (prediction-powered), ``unlabelled_professions``, ``note``,
    ``overall`` and ``professions`` as :func:`~debias.validity.summary.validity_for_run` gives them, each row with
    its ``target``, ``ppi_delta`` and ``ppi_within_band``. The block holds no path, so a copied run folder keeps it.
    """
    v = validity_for_run(run_dir, audit_record).to_dict()
    targets = {row.get("profession") or row.get("phrase"): row.get("target", audit_record.get("target", 0.5))
               for row in audit_record["professions"]}
    tolerance = audit_record.get("tolerance", 0.05)
    rows = [_with_band(row, targets[row["profession"]], tolerance) for row in v["professions"]]
    with_ppi = [r for r in rows if (r["ppi_share"] or {}).get("estimate") is not None]
    labelled = {r["profession"] for r in with_ppi}
    measured = [r["profession"] for r in rows if r["classifier_share"]["estimate"] is not None]
    mean, low, high = mean_delta_of_shares([(r["ppi_share"]["estimate"], r["ppi_share"]["ci_low"],
                                             r["ppi_share"]["ci_high"], r["target"]) for r in with_ppi])
    # the corrected numbers lead only when every measured profession has them: a mean over some is not comparable
    complete = bool(with_ppi) and all(name in labelled for name in measured)
    return {
        "has_labels": v["has_labels"], "labels_file": "labels/labels.jsonl", "labellers": v["labellers"],
        "n_labels": v["n_labels"], "unreadable_lines": v["unreadable_lines"],
        "labels_not_in_run": v["labels_not_in_run"], "labels_needed": v["labels_needed"],
        "commands": dict(COMMANDS),
        "headline": PPI_HEADLINE if complete else CLASSIFIER_HEADLINE,
        "mean_delta": mean, "mean_delta_ci_low": low, "mean_delta_ci_high": high,
        "mean_delta_professions": len(with_ppi), "mean_delta_method": MEAN_DELTA_METHOD,
        "within_tolerance": sum(bool(r["ppi_within_band"]) for r in with_ppi) if with_ppi else None,
        "unlabelled_professions": [name for name in measured if name not in labelled] if with_ppi else [],
        "note": v["note"], "overall": v["overall"], "professions": rows,
    }
