"""Everything a reviewer needs to trust (or not) a run's shares, from its audit and its human labels.

:func:`validity_for_run` joins the classifier's labels (``audit.json``) with the human labels
(``labels/labels.jsonl``) and returns, per profession and overall: agreement and error rate, the 2×2 and 3×3
confusion with intervals, Cohen's κ (classifier vs people, and between labellers), the human-only share
(Wilson), the prediction-powered share and interval, whether the profession's error rate stands out
(Fisher exact, Holm), and how many labels bound the classifier's error rate to ±0.10 and ±0.05. A run without
labels gets the label counts only, so a report can say what labelling would take.

Several labellers on one image are merged by :func:`~debias.validity.labels.consensus` (majority; a tie is
"unclear") for everything but κ between labellers; ``labeller=`` uses one person's labels only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from debias.validity.agreement import (
    FLAG_TEST, agreement, cohens_kappa, confusion, error_rate, flag_professions, labeller_kappas,
)
from debias.validity.labels import (
    LabelStore, RunImages, check_labeller_count, consensus, latest_labels, load_run,
)
from debias.validity.ppi import (
    LABELS_FOR_05, LABELS_FOR_10, classifier_share, human_share, ppi_share_of_images,
)

NOTE = ("Human labels on a random sample of each profession's images. ppi_share: prediction-powered share "
        "(PPI++), valid whatever the classifier's errors if the labelled images are a random subset; "
        "human_share: the labels alone (Wilson); classifier_share: the classifier alone (Wilson), as audited. "
        "Error rate: classifier wrong or abstaining on images a person reads as female or male.")


@dataclass
class RunValidity:
    """The result of :func:`validity_for_run`; ``to_dict()`` is JSON-ready."""

    run_dir: str
    labels_file: str
    labellers: list[str]
    n_labels: int
    professions: list[dict]
    overall: dict
    labels_needed: dict = field(default_factory=lambda: {"0.1": LABELS_FOR_10, "0.05": LABELS_FOR_05})
    unreadable_lines: int = 0
    labels_not_in_run: int = 0
    note: str = NOTE

    @property
    def has_labels(self) -> bool:
        return self.n_labels > 0

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "labels_file": self.labels_file, "labellers": self.labellers,
                "n_labels": self.n_labels, "has_labels": self.has_labels, "labels_needed": self.labels_needed,
                "unreadable_lines": self.unreadable_lines, "labels_not_in_run": self.labels_not_in_run,
                "note": self.note, "professions": self.professions, "overall": self.overall}


def _profession(run: RunImages, name: str, human: dict[str, str]) -> dict:
    """One profession's row: classifier vs human labels, and its three shares."""
    images = run.of(name)
    predicted = {im.key: im.predicted for im in images}
    mine = {k: v for k, v in human.items() if k in predicted}
    h, p = list(mine.values()), [predicted[k] for k in mine]
    agree = agreement(h, p)
    row = {"profession": name, "n_images": len(images), "n_labelled": len(mine), "n_readable": agree.n,
           "classifier_share": classifier_share(list(predicted.values())).to_dict(),
           "labels_needed": {"0.1": LABELS_FOR_10, "0.05": LABELS_FOR_05},
           "more_labels_for_0.05": max(0, LABELS_FOR_05 - agree.n),
           "images_short_for_0.05": max(0, LABELS_FOR_05 - len(images)),  # generate these before labelling
           "agreement": None, "error_rate": None, "confusion_2x2": None, "confusion_3x3": None,
           "kappa_classifier": None, "human_share": None, "ppi_share": None}
    if mine:
        row.update(agreement=agree.to_dict(), error_rate=error_rate(h, p).to_dict(),
                   confusion_2x2=confusion(h, p, size=2).to_dict(), confusion_3x3=confusion(h, p).to_dict(),
                   kappa_classifier=cohens_kappa(h, p, raters=("human", "classifier")).to_dict(),
                   human_share=human_share(h).to_dict(), ppi_share=ppi_share_of_images(predicted, mine).to_dict())
    return row


def _human_labels(per_image: dict[str, dict[str, str]], labeller: str | None) -> dict[str, str]:
    if labeller is not None:
        return {k: v[labeller] for k, v in per_image.items() if labeller in v}
    return {k: consensus(v) for k, v in per_image.items()}


def validity_for_run(run_dir: str | os.PathLike, audit_record: dict | None = None, *, labeller: str | None = None,
                     alpha: float = 0.05) -> RunValidity:
    """Classifier-vs-human validity of the audit in ``run_dir`` (see the module docstring).

    ``audit_record`` is the audit's record when the caller has it (else ``run_dir/audit.json`` is read);
    ``alpha`` is the family-wise level of the flag test.
    """
    run = load_run(run_dir, audit_record)
    store = LabelStore(run_dir)
    records = store.records()
    labellers = sorted({r.labeller for r in records})
    check_labeller_count(store.path, len(labellers))
    per_image = latest_labels(records)
    in_run = {k: v for k, v in per_image.items() if k in run.images}
    human = _human_labels(in_run, labeller)
    rows = [_profession(run, name, human) for name in run.professions]
    errors = {r["profession"]: ((r["error_rate"] or {}).get("k", 0), r["n_readable"]) for r in rows}
    flags = flag_professions(errors, alpha=alpha)
    for row, flag in zip(rows, flags):
        row["flag"] = {k: flag[k] for k in ("p_value", "p_holm", "flagged", "rest_error_rate")}
    keys = list(human)
    h = [human[k] for k in keys]
    p = [run.images[k].predicted for k in keys]
    overall = {"n_labelled": len(keys), "agreement": agreement(h, p).to_dict(),
               "error_rate": error_rate(h, p).to_dict(), "confusion_2x2": confusion(h, p, size=2).to_dict(),
               "confusion_3x3": confusion(h, p).to_dict(),
               "kappa_classifier": cohens_kappa(h, p, raters=("human", "classifier")).to_dict(),
               "kappa_labellers": labeller_kappas(in_run), "flag_test": FLAG_TEST, "alpha": alpha,
               "flagged": [f["profession"] for f in flags if f["flagged"]]}
    n_labels = sum(len(v) for v in per_image.values())  # images × labellers: a relabel or a repeat is one label
    return RunValidity(str(Path(run_dir)), str(store.path), labellers, n_labels, rows, overall,
                       unreadable_lines=store.skipped_lines,
                       labels_not_in_run=len(per_image) - len(in_run))
