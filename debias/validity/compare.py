"""Two classifiers on the same images: their shares side by side, how often they agree, and where they differ.

An audit can read its images with more than one CLIP (``debias audit --classifier A --classifier B``): the first
is the primary, whose shares are the audit's; every other one is compared with it here. Both read the *same*
images, so the comparison is paired:

* **agreement**: on the images both read as female or male, the share where they say the same (Wilson 95%);
  **Cohen's κ** over all three labels (female, male, unclear);
* **does the share differ?** The two shares differ only through the images the classifiers read differently, so
  the test is McNemar's, exact: among images both read, those the primary calls female and the other male
  against the reverse, a two-sided binomial test at ½, Holm-adjusted over professions. A profession ``disagrees``
  when its adjusted p-value is below ``alpha``: there the share depends on which CLIP reads it, and human labels
  (``debias label``) say which one to believe.

Pure: label lists in, plain dicts out (no files, no torch).
"""

from __future__ import annotations

from typing import Sequence

from debias.stats import binary as stats
from debias.validity.agreement import GENDERS, Rate, cohens_kappa, holm

DISAGREEMENT_TEST = ("exact McNemar test (two-sided binomial at ½ on the images the two classifiers read as "
                     "opposite genders), Holm-adjusted over professions")


def mcnemar_exact(primary: Sequence[str], other: Sequence[str]) -> tuple[int, int, float | None]:
    """``(b, c, p)``: images the primary calls female and the other male (b), the reverse (c), and the exact
    two-sided p-value of b against b + c at ½ (None when no image is read as opposite genders)."""
    from scipy.stats import binomtest

    b = sum(p == "female" and o == "male" for p, o in zip(primary, other))
    c = sum(p == "male" and o == "female" for p, o in zip(primary, other))
    return b, c, (float(binomtest(b, b + c, 0.5).pvalue) if b + c else None)


def _row(name: str, target: float, tolerance: float, primary: Sequence[str], other: Sequence[str]) -> dict:
    est = stats.estimate(*stats.count_labels(other), target=target)
    both = [(p, o) for p, o in zip(primary, other) if p in GENDERS and o in GENDERS]
    agree = Rate.of(sum(p == o for p, o in both), len(both))
    b, c, p_value = mcnemar_exact(primary, other)
    return {"profession": name, "target": target, "n": est.n, "n_female": est.n_female, "n_male": est.n_male,
            "n_unclear": est.n_unclear, "share_female": est.share_female, "ci_low": est.ci_low,
            "ci_high": est.ci_high, "delta": est.delta,
            "within_band": stats.within_band(est.share_female, target, tolerance),
            "agreement": agree.to_dict(), "kappa": cohens_kappa(primary, other, raters=("primary", "other")).to_dict(),
            "female_to_male": b, "male_to_female": c, "p_value": p_value, "p_holm": None, "disagrees": False}


def compare_classifiers(described: dict, professions: Sequence[tuple[str, float, Sequence[str], Sequence[str]]],
                        *, tolerance: float, alpha: float = 0.05) -> dict:
    """One other classifier against the primary on every profession.

    ``described``: the other classifier's ``describe()``; ``professions``: ``(name, target, primary labels,
    other labels)`` with the labels of the same images in the same order. Returns the block an audit keeps in
    its ``classifiers`` list: the other classifier's shares, mean Δ and band count, agreement with the primary
    per profession and pooled, and the professions where the two disagree.
    """
    rows = []
    for name, target, primary, other in professions:
        if len(primary) != len(other):
            raise ValueError(f"{name}: {len(primary)} primary labels but {len(other)} of the other classifier")
        rows.append(_row(name, target, tolerance, primary, other))
    tested = [i for i, r in enumerate(rows) if r["p_value"] is not None]
    for i, p_adj in zip(tested, holm([rows[i]["p_value"] for i in tested])):
        rows[i]["p_holm"] = p_adj
        rows[i]["disagrees"] = p_adj < alpha
    mean, low, high = stats.mean_delta_interval([(r["n_female"], r["n_male"]) for r in rows],
                                                [r["target"] for r in rows])
    pooled = Rate.of(sum(r["agreement"]["k"] for r in rows), sum(r["agreement"]["n"] for r in rows))
    return {"model": described.get("model"), "classifier": described, "mean_delta": mean, "mean_delta_ci_low": low,
            "mean_delta_ci_high": high, "within_tolerance": sum(r["within_band"] for r in rows),
            "agreement": pooled.to_dict(), "disagreeing": [r["profession"] for r in rows if r["disagrees"]],
            "test": DISAGREEMENT_TEST, "alpha": alpha, "professions": rows}
