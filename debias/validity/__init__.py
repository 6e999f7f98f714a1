"""Shares a reviewer can trust when the classifier errs: human labels, agreement, and prediction-powered shares.

* :mod:`~debias.validity.ppi` (pure): the prediction-powered share (PPI++), human-only and classifier-only
  shares, and how many labels bound the classifier's error rate.
* :mod:`~debias.validity.agreement` (pure): agreement, confusion with intervals, Cohen's κ, and the test that
  flags professions whose classifier error rate stands out.
* :mod:`~debias.validity.labels`: the run folder's append-only label file, CSV import, the random sample.
* :mod:`~debias.validity.server`: ``debias label``, the local labelling page.
* :mod:`~debias.validity.summary`: :func:`validity_for_run`, all of the above for one run folder.
* :mod:`~debias.validity.record`: :func:`validity_block`, the ``validity`` field an audit's result keeps, and
  :func:`debias.results.validity.refresh_validity`, which recomputes it after labelling (``debias report`` calls it).
* :mod:`~debias.validity.compare` (pure): a second classifier against the audit's primary one.

Importing this package loads neither torch nor a browser.
"""

from debias.validity.agreement import (
    FLAG_TEST, Confusion, Kappa, Rate, agreement, cohens_kappa, confusion, error_rate, flag_professions, holm,
    labeller_kappas,
)
from debias.validity.label_import import LabelImport, import_labels_csv, read_labels_csv
from debias.validity.labels import (
    LABELS, LabelRecord, LabelSample, LabelStore, RunImages, consensus, draw_sample, load_run, sample_for_run,
)
from debias.validity.ppi import (
    LABELS_FOR_05, LABELS_FOR_10, ShareInterval, classifier_share, human_share, labels_needed, ppi_share,
    ppi_share_of_images,
)
from debias.validity.compare import compare_classifiers
from debias.validity.record import validity_block
from debias.validity.summary import RunValidity, validity_for_run

__all__ = [
    "FLAG_TEST", "LABELS", "LABELS_FOR_05", "LABELS_FOR_10", "Confusion", "Kappa", "LabelImport", "LabelRecord",
    "LabelSample", "LabelStore", "Rate", "RunImages", "RunValidity", "ShareInterval", "agreement", "classifier_share",
    "cohens_kappa", "compare_classifiers", "confusion", "consensus", "draw_sample", "error_rate",
    "flag_professions", "holm", "human_share", "import_labels_csv", "labeller_kappas", "labels_needed", "load_run",
    "ppi_share", "ppi_share_of_images", "read_labels_csv", "sample_for_run", "validity_block",
    "validity_for_run",
]
