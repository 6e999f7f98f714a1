"""The ``attribute_fixes`` block of an attribute fix's ``fix.json``: per attribute, before → after per profession.

Fixed attributes: each profession's target, destinations, status, the strengths per round and shipped, and its class shares
with simultaneous 95% intervals (Goodman) before and after on the held-out test prompts, Δ and the band; mean Δ
before and after with bootstrap intervals (:func:`debias.stats.multiclass.mean_delta_interval`). Attributes the audits
read but the fix does not edit (gender, when only skin is fixed): per profession the largest change of a class
share, against the noise of two independent samples of those sizes (95%, Bonferroni over the classes). The
before and after images share their seeds, so the differences are paired and this noise bound is conservative:
a change beyond it is a real move of that attribute.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.stats import norm

from debias.stats import multiclass
from debias.core.attributes import Attribute
from debias.fixing.kclass import ALREADY, ClassEdit, class_counts, edit_of, template_counts, within_tolerance
from debias.fixing.options import NOT_TARGETED
from debias.results.records import AttributeFix, AttributeFixRow, ClassShares, HeldAttribute, HeldAttributeRow

BAND_RULE = "within the band when every class share is within tolerance of its target: max_c |p_c - t_c| <= tolerance"
NOISE_RULE = ("moved when some class share changed by more than z * sqrt(p_b (1 - p_b) / n_b + p_a (1 - p_a) / n_a), "
              "z for 95% with Bonferroni over the classes; before and after share seeds, so this is conservative")


def _num(x) -> Optional[float]:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _shares(counts: Sequence[int]) -> Optional[list[float]]:
    shares = multiclass.shares(counts)
    return None if shares is None else [float(x) for x in shares]


def distribution(counts: Sequence[int], n_unclear: int, target: Sequence[float], tolerance: float) -> ClassShares:
    """Counts, shares with simultaneous 95% intervals, Δ and the band for one profession in one audit."""
    shares = multiclass.shares(counts)
    if shares is None:
        return ClassShares([int(c) for c in counts], int(n_unclear), None, None, None, None, None)
    intervals = multiclass.simultaneous_intervals(counts)
    return ClassShares([int(c) for c in counts], int(n_unclear), [float(x) for x in shares],
                       [float(x) for x in intervals[:, 0]], [float(x) for x in intervals[:, 1]],
                       _num(multiclass.delta(shares, target)), within_tolerance(counts, target, tolerance))


def edit_status(status: str, after_within: Optional[bool]) -> str:
    """The after audit decides for an edited profession: ``fixed`` inside the band, else what kept it out (the
    side-effect limit, ``not_reachable``, or the images, ``budget_exhausted``); one left unedited keeps its status."""
    if status in (ALREADY, NOT_TARGETED):
        return status
    if after_within:
        return "fixed"
    return status if status == "not_reachable" else "budget_exhausted"


def fixed_block(attribute: Attribute, edits: Sequence[ClassEdit], before, after, tolerance: float) -> AttributeFix:
    """One fixed attribute's block."""
    rows, pairs_before, pairs_after = [], [], []
    for e in edits:
        b_counts, b_unclear = class_counts(before, attribute, e.entry.phrase)
        a_counts, a_unclear = class_counts(after, attribute, e.entry.phrase)
        b, a = (distribution(b_counts, b_unclear, e.target, tolerance),
                distribution(a_counts, a_unclear, e.target, tolerance))
        pairs_before.append((b_counts, e.target))
        pairs_after.append((a_counts, e.target))
        rows.append(AttributeFixRow(
            profession=e.entry.name, phrase=e.entry.phrase, target=[float(t) for t in e.target],
            cells=list(e.edited_as.class_names) if e.edited_as else None,
            destinations=e.destinations(), status=edit_status(e.status, a.within_band),
            tuning_counts=[int(c) for c in e.tuning_counts], caps=list(e.caps) or None,
            strengths=list(e.strengths), lambda_relative=[None if w <= 0 else 1.0 / w for w in e.strengths],
            reference_class=None if e.reference is None else (e.edited_as or e.attribute).class_names[e.reference],
            joined_round=e.joined_round, engine=e.outcome, rounds=list(e.rounds), before=b, after=a))
    mean_b, low_b, high_b = multiclass.mean_delta_interval(pairs_before)
    mean_a, low_a, high_a = multiclass.mean_delta_interval(pairs_after)
    crossed = next((e.edited_as for e in edits if e.edited_as), None)
    return AttributeFix(
        attribute=attribute.name, fixed=True, classes=list(attribute.class_names),
        crossed=list(crossed.pair) if crossed else None, tolerance=tolerance, band_rule=BAND_RULE,
        interval_method="goodman", mean_delta_before=mean_b, mean_delta_before_ci_low=low_b,
        mean_delta_before_ci_high=high_b, mean_delta_after=mean_a, mean_delta_after_ci_low=low_a,
        mean_delta_after_ci_high=high_a, within_tolerance_before=sum(bool(r.before.within_band) for r in rows),
        within_tolerance_after=sum(bool(r.after.within_band) for r in rows), professions=rows,
        mean_delta_by_template=template_deltas(attribute, [(e.entry.phrase, e.target) for e in edits], before, after))


def template_deltas(attribute: Attribute, professions: Sequence[tuple[str, Sequence[float]]], before,
                    after) -> dict[str, dict]:
    """The attribute's mean Δ over ``professions`` (``(phrase, target)`` each) on each held-out template, before and
    after: where the edit carries and where it lags, which the pooled mean Δ averages away."""
    out: dict[str, dict] = {t: {} for t in after.templates}
    for side, audit in (("before", before), ("after", after)):
        counts = [(template_counts(audit, attribute, phrase), target) for phrase, target in professions]
        for j, template in enumerate(after.templates):
            deltas = [multiclass.delta(multiclass.shares(c[j]), target) for c, target in counts if len(c) > j]
            deltas = [d for d in deltas if d is not None]
            out[template][side] = float(np.mean(deltas)) if deltas else None
    return out


def moved_beyond_noise(before: Sequence[int], after: Sequence[int]) -> tuple[Optional[float], Optional[float]]:
    """``(largest class-share change, its noise bound)`` between two audits of one profession."""
    nb, na = sum(before), sum(after)
    if nb == 0 or na == 0:
        return None, None
    pb, pa = np.asarray(before) / nb, np.asarray(after) / na
    z = norm.ppf(1 - 0.05 / (2 * len(before)))
    se = np.sqrt(pb * (1 - pb) / nb + pa * (1 - pa) / na)
    change = np.abs(pa - pb)
    worst = int(np.argmax(change - z * se))
    return float(change.max()), float(z * se[worst])


def held_block(attribute: Attribute, entries: Sequence, before, after) -> HeldAttribute:
    """An attribute the audits read but the fix does not edit: did the edit move it beyond its noise?"""
    rows = []
    for e in entries:
        b_counts, b_unclear = class_counts(before, attribute, e.phrase)
        a_counts, a_unclear = class_counts(after, attribute, e.phrase)
        change, noise = moved_beyond_noise(b_counts, a_counts)
        rows.append(HeldAttributeRow(
            profession=e.name, phrase=e.phrase, counts_before=[int(c) for c in b_counts],
            counts_after=[int(c) for c in a_counts], n_unclear_before=int(b_unclear), n_unclear_after=int(a_unclear),
            shares_before=_shares(b_counts), shares_after=_shares(a_counts), largest_change=change, noise=noise,
            moved=None if change is None else bool(change > noise)))
    changes = [r.largest_change for r in rows if r.largest_change is not None]
    return HeldAttribute(attribute=attribute.name, fixed=False, classes=list(attribute.class_names),
                         noise_rule=NOISE_RULE, mean_largest_change=float(np.mean(changes)) if changes else None,
                         moved=sum(bool(r.moved) for r in rows), professions=rows)


def attribute_fixes(fixed: Sequence[Attribute], held: Sequence[Attribute], edits: Sequence[ClassEdit],
                    entries: Sequence, before, after, tolerance: float) -> list[AttributeFix | HeldAttribute]:
    """The block: every fixed attribute (in the order given), then every attribute measured but not fixed. Two
    attributes fixed together are each reported on their own shares; their rows carry the cells' strengths."""
    blocks = [fixed_block(a, [edit_of(e, a) for e in edits], before, after, tolerance) for a in fixed]
    return blocks + [held_block(a, entries, before, after) for a in held]
