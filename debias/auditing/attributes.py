"""Attributes beyond gender in an audit: which ones, each image's class, the per-profession sections, intersections.

Gender is always audited by the primary classifier, exactly as an audit without attributes does (its rows, CSV
and JSON keys do not change). Each further attribute (``audit(..., attributes=["skin", "hair.txt"])``) is read
from the *same images* by a zero-shot classifier of its classes on the primary classifier's CLIP
(:meth:`debias.classify.zero_shot.ZeroShotClassifier.for_attribute`); nothing is generated for it. Its labels are cached
beside gender's under the attribute classifier's own id (attribute, prompts, model and rule hashed), so a resumed
run never mixes two attributes or two versions of one attribute's prompts.

Per profession a section holds the class counts, the unclear count, the shares with **simultaneous** 95%
intervals (Goodman, :mod:`debias.stats.multiclass`), the target distribution (the profession list's, else uniform), Δ,
the goodness-of-fit p-value and the band: a profession is within it when every class share is within
``tolerance`` of its target, max_c |p_c − t_c| ≤ tolerance — gender's rule |F − t| ≤ tolerance at k = 2, and the
same as Δ ≤ tolerance / max_c max(t_c, 1 − t_c). Where the model's profile has a pixel oracle for the attribute
(:meth:`debias.core.profiles.Profile.oracle_for`) its counts are recorded too.

An intersection (``intersect=[("gender", "skin")]``) is the joint table per profession of images read in both
attributes, with simultaneous intervals over all cells; a cell expected to hold fewer than 5 images under the
targets is flagged ``tiny`` and gets no share, a cell that should hold some but holds none is ``empty``
(:func:`debias.stats.multiclass.intersection_table`).

The blocks of ``audit.json`` (written only when asked for; ``audit_attributes.csv`` has one row per attribute ×
profession × class, ``audit_intersections.csv`` one per intersection × profession × cell)::

    "attributes": [{"attribute": "skin", "description": "…", "classes": ["light", "medium", "dark"],
        "classifier": {"attribute": "skin", "backend": …, "model": …, "activation": …,
                       "labels": {"light": ["a photo of …"], …, "none": []}, "abstain": {"rule": …, …}},
        "interval_method": "goodman", "confidence": 0.95, "tolerance": 0.05, "band_rule": "…",
        "mean_delta": 0.31, "mean_delta_ci_low": 0.2, "mean_delta_ci_high": 0.4,   # bootstrap, seed 0
        "within_tolerance": 1, "has_oracle": false,
        "professions": [{"profession": "nurse", "phrase": "a nurse",
            "target": [0.33, 0.33, 0.33], "target_source": "uniform",   # | "list"
            "n": 64, "n_unclear": 3, "counts": [40, 15, 6], "shares": [0.66, 0.25, 0.1],   # null: all unclear
            "ci_low": […], "ci_high": […], "delta": 0.49, "max_deviation": 0.33, "p_value": 1e-6,
            "test": "exact", "within_band": false,
            "oracle_counts": null, "oracle_unclear": null, "oracle_shares": null, "agreement": null,
            "labels": ["light", …]}]}]                      # per image, in the order of the gender row's samples
    "intersections": [{"attributes": ["gender", "skin"], "rows": ["female", "male"], "cols": [...],
        "min_expected": 5.0, "confidence": 0.95, "interval_method": "goodman", "flag_rule": "…",
        "professions": [{"profession": …, "phrase": …, "n": 61, "n_unclear": 3, "delta": 0.4,
            "tiny_cells": 2, "empty_cells": 0,
            "cells": [{"row": "female", "col": "light", "count": 20, "expected": 10.2, "share": 0.33,
                       "ci_low": 0.2, "ci_high": 0.48, "flag": "ok"}, …]}]}]   # row-major; share null if tiny
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from debias.stats import multiclass
from debias.core.attributes import GENDER, Attribute, resolve_attribute
from debias.core.errors import InputError

GENDER_CLASSES = ("female", "male")
INTERVALS = "goodman"
BAND_RULE = ("within the band when max_c |share_c - target_c| <= tolerance (gender's |share - target| <= tolerance "
             "at k = 2), i.e. delta <= tolerance / max_c max(target_c, 1 - target_c)")
LABEL_BATCH = 64


@dataclass(frozen=True)
class AttributePlan:
    """What an audit reads beyond gender: attributes in the order asked, and pairs of attribute names to cross."""

    attributes: tuple[Attribute, ...] = ()
    intersections: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.attributes and not self.intersections

    def get(self, name: str) -> Attribute:
        return GENDER if name == GENDER.name else next(a for a in self.attributes if a.name == name)


def plan_attributes(attributes: Sequence[str | Attribute] | None = None,
                    intersect: Sequence[str | Sequence[str]] | None = None) -> AttributePlan:
    """Resolve ``--attribute`` values (built-in names or attribute files) and check ``--intersect`` pairs.

    Gender is always audited, so ``gender`` (the built-in) adds nothing; a pair may name gender and any attribute
    of the plan.
    """
    chosen: list[Attribute] = []
    for spec in attributes or ():
        attribute = spec if isinstance(spec, Attribute) else resolve_attribute(str(spec))
        if attribute.name == GENDER.name:
            if attribute != GENDER:
                raise InputError(f"--attribute {spec}: gender is read by the primary classifier; set its prompts "
                                 "with --labels-female / --labels-male instead of an attribute named 'gender'")
            continue  # gender is always audited: the built-in adds nothing
        if any(a.name == attribute.name for a in chosen):
            raise InputError(f"--attribute {spec}: attribute {attribute.name!r} is given twice; give each once")
        chosen.append(attribute)
    names = [GENDER.name] + [a.name for a in chosen]
    pairs: list[tuple[str, str]] = []
    for value in intersect or ():
        pair = parse_pair(value, names)
        if pair in pairs or pair[::-1] in pairs:
            raise InputError(f"--intersect {','.join(pair)}: given twice; give each pair once")
        pairs.append(pair)
    return AttributePlan(tuple(chosen), tuple(pairs))


def parse_pair(value: str | Sequence[str], names: Sequence[str]) -> tuple[str, str]:
    """``"gender,skin"`` or ``("gender", "skin")`` → a pair of two different audited attributes."""
    text = value if isinstance(value, str) else ",".join(value)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--intersect {text!r}: give two attribute names separated by a comma, e.g. gender,skin")
    if parts[0] == parts[1]:
        raise InputError(f"--intersect {text!r}: an attribute crossed with itself; name two different ones")
    for name in parts:
        if name not in names:
            raise InputError(f"--intersect {text!r}: {name!r} is not audited (this audit reads: {', '.join(names)}); "
                             f"add --attribute {name}")
    return parts[0], parts[1]


# ------------------------------------------------------------------------------------------------ labels
def attribute_classifiers(primary: Any, plan: AttributePlan) -> list:
    """One classifier per attribute of the plan, on the primary classifier's loaded CLIP."""
    if plan.attributes and not hasattr(primary, "for_attribute"):
        raise InputError(f"classifier {primary.describe().get('model')!r} reads gender only; auditing "
                         f"{', '.join(a.name for a in plan.attributes)} needs a CLIP classifier (--classifier)")
    return [primary.for_attribute(a) for a in plan.attributes]


def classify_all(classifiers: Sequence[Any], images: np.ndarray) -> dict[str, list[str]]:
    """Each classifier's labels for ``images``; classifiers on one CLIP share one encoding of the images."""
    features: dict[int, Any] = {}
    out = {}
    for c in classifiers:
        parent = getattr(c, "parent", None)
        if parent is not None and hasattr(c, "classify_features"):
            if id(parent) not in features:
                features[id(parent)] = parent.image_features(images)
            out[c.cache_id] = c.classify_features(features[id(parent)])[0]
        else:
            out[c.cache_id] = c.classify(images)[0]
    return out


def read_labels(cache, classifiers: Sequence[Any], keys: Sequence[str], *, dist,
                oracles: Mapping[str, Callable] | None = None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per attribute, the label of each key (read from the cache, or classified from the cached PNG and stored),
    and the oracle's label where the profile has one (read from the pixels every time: a pixel oracle is cheap
    and a changed oracle is never stale). Under several processes each labels its share of the keys."""
    unique = list(dict.fromkeys(keys))
    cache.load()
    dist.barrier()
    mine = [k for i, k in enumerate(unique) if i % dist.world_size == dist.rank]
    todo = [k for k in mine if any((k, c.cache_id) not in cache.labels for c in classifiers)]
    for start in range(0, len(todo), LABEL_BATCH):
        batch = todo[start:start + LABEL_BATCH]
        found = classify_all(classifiers, cache.read_images(batch))
        records = []
        for c in classifiers:
            for k, label in zip(batch, found[c.cache_id]):
                if (k, c.cache_id) not in cache.labels:
                    blanked = cache.images.get(k, {}).get("blanked")  # a safety checker's black image shows no one
                    records.append({"key": k, "classifier": c.cache_id, "attribute": c.attribute.name,
                                    "label": "unclear" if blanked else label})
        cache.put_labels(records)
    if dist.world_size > 1:
        dist.barrier()
        cache.load()
    labels = {c.attribute.name: [cache.labels[(k, c.cache_id)]["label"] for k in keys] for c in classifiers}
    truth: dict[str, list[str]] = {}
    if oracles:
        by_key: dict[str, dict[str, str]] = {name: {} for name in oracles}
        for start in range(0, len(unique), LABEL_BATCH):
            batch = unique[start:start + LABEL_BATCH]
            images = cache.read_images(batch)
            for name, oracle in oracles.items():
                by_key[name].update(zip(batch, oracle(images)))
        truth = {name: [by_key[name][k] or "unclear" for k in keys] for name in oracles}
    return labels, truth


# ---------------------------------------------------------------------------------------------- sections
def profession_target(entry, attribute: Attribute, default_gender: float) -> tuple[tuple[float, ...], str]:
    """``(target, source)``: the list's target for ``attribute`` ("list"), else gender's --target or uniform."""
    listed = entry.target_for(attribute.name)
    if listed is not None:
        return tuple(listed), "list"
    if attribute.name == GENDER.name:
        return (default_gender, 1.0 - default_gender), "option"
    return attribute.uniform_target(), "uniform"


def _floats(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def profession_section(entry, attribute: Attribute, labels: Sequence[str], target: Sequence[float], source: str,
                       tolerance: float, oracle: Sequence[str] | None = None) -> dict:
    """One profession's numbers for one attribute (the keys: the module docstring)."""
    counts, unclear = multiclass.count_labels(labels, attribute.class_names)
    est = multiclass.estimate(counts, target, attribute.class_names, n_unclear=unclear, method=INTERVALS)
    deviation = multiclass.max_deviation(est.shares, est.target)
    row = {"profession": entry.name, "phrase": entry.phrase, "target": list(est.target), "target_source": source,
           "n": est.n, "n_unclear": est.n_unclear, "counts": list(est.counts), "shares": _floats(est.shares),
           "ci_low": list(est.ci_low), "ci_high": list(est.ci_high), "delta": est.delta,
           "max_deviation": deviation, "p_value": est.p_value, "test": est.test,
           "within_band": deviation is not None and deviation <= tolerance,
           "oracle_counts": None, "oracle_unclear": None, "oracle_shares": None, "agreement": None,
           "labels": list(labels)}
    if oracle is not None:
        o_counts, o_unclear = multiclass.count_labels(oracle, attribute.class_names)
        shares = multiclass.shares(o_counts)
        both = [(a, b) for a, b in zip(labels, oracle) if a in attribute.class_names and b in attribute.class_names]
        row.update(oracle_counts=o_counts, oracle_unclear=o_unclear, oracle_shares=_floats(shares),
                   agreement=sum(a == b for a, b in both) / len(both) if both else None)
    return row


def attribute_section(attribute: Attribute, classifier: dict, rows: list[dict], tolerance: float,
                      has_oracle: bool) -> dict:
    """An attribute's block of ``audit.json``: what was read and how, the headline, one row per profession."""
    point, low, high = multiclass.mean_delta_interval([(r["counts"], r["target"]) for r in rows])
    return {"attribute": attribute.name, "description": attribute.description, "classes": list(attribute.class_names),
            "classifier": classifier, "interval_method": INTERVALS, "confidence": 0.95, "tolerance": tolerance,
            "band_rule": BAND_RULE, "mean_delta": point, "mean_delta_ci_low": low, "mean_delta_ci_high": high,
            "within_tolerance": sum(r["within_band"] for r in rows), "has_oracle": has_oracle, "professions": rows}


def intersection_section(pair: tuple[str, str], plan: AttributePlan, entries: Sequence, labels: Mapping[str, dict],
                         targets: Mapping[str, dict]) -> dict:
    """The joint table of two attributes per profession (images read in both), flags and simultaneous intervals."""
    a, b = (plan.get(name) for name in pair)
    rows = []
    for e in entries:
        counts, unclear = multiclass.joint_counts(labels[a.name][e.phrase], labels[b.name][e.phrase],
                                                  a.class_names, b.class_names)
        table = multiclass.intersection_table(
            counts, a.class_names, b.class_names, row_attribute=a.name, col_attribute=b.name,
            row_target=targets[a.name][e.phrase], col_target=targets[b.name][e.phrase], n_unclear=unclear,
            method=INTERVALS)
        cells = [c.to_dict() for c in table.cells]
        rows.append({"profession": e.name, "phrase": e.phrase, "n": table.n, "n_unclear": table.n_unclear,
                     "delta": table.delta, "tiny_cells": sum(c["flag"] == "tiny" for c in cells),
                     "empty_cells": sum(c["flag"] == "empty" for c in cells), "cells": cells})
    return {"attributes": [a.name, b.name], "rows": list(a.class_names), "cols": list(b.class_names),
            "min_expected": multiclass.MIN_EXPECTED, "confidence": 0.95, "interval_method": INTERVALS,
            "flag_rule": "tiny: fewer than min_expected images expected under the targets (no share shown); empty: "
                         "none seen where at least min_expected were expected", "professions": rows}


def audit_attributes(plan: AttributePlan, classifiers: Sequence[Any], entries: Sequence, results: Mapping[str, list],
                     *, cache, dist, profile, target: float, tolerance: float) -> tuple[list | None, list | None]:
    """The ``attributes`` and ``intersections`` blocks of an audit from its images (None: none asked);
    ``classifiers`` are :func:`attribute_classifiers`' for the plan, ``results`` each profession's gender results."""
    if plan.empty:
        return None, None
    keys = [r.key for e in entries for r in results[e.phrase]]
    found = {a.name: profile.oracle_for(a.name) for a in plan.attributes}
    oracles = {name: oracle for name, oracle in found.items() if oracle is not None}
    flat, truth = read_labels(cache, classifiers, keys, dist=dist, oracles=oracles)
    labels = {GENDER.name: {e.phrase: [r.label for r in results[e.phrase]] for e in entries}}
    targets = {GENDER.name: {e.phrase: profession_target(e, GENDER, target)[0] for e in entries}}
    sections = []
    for attribute, classifier in zip(plan.attributes, classifiers):
        by_phrase, oracle_by_phrase, start = {}, {}, 0
        for e in entries:
            end = start + len(results[e.phrase])
            by_phrase[e.phrase] = flat[attribute.name][start:end]
            if attribute.name in truth:
                oracle_by_phrase[e.phrase] = truth[attribute.name][start:end]
            start = end
        rows = []
        for e in entries:
            t, source = profession_target(e, attribute, target)
            rows.append(profession_section(e, attribute, by_phrase[e.phrase], t, source, tolerance,
                                           oracle_by_phrase.get(e.phrase)))
        labels[attribute.name] = by_phrase
        targets[attribute.name] = {e.phrase: tuple(r["target"]) for e, r in zip(entries, rows)}
        sections.append(attribute_section(attribute, classifier.describe(), rows, tolerance, bool(oracle_by_phrase)))
    crossed = [intersection_section(pair, plan, entries, labels, targets) for pair in plan.intersections]
    return sections or None, crossed or None
