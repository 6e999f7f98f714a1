"""The results of the verbs as typed objects that own their files: :class:`AuditResult` and :class:`FixResult`.

An audit writes ``audit.json`` and ``audit.csv``; a fix writes ``fix.json``. Each file is one of these objects
written by :meth:`to_json`; :meth:`from_json` reads it back, and a result read from disk and written again is
byte-identical (the field order is the file's key order). The report reads these objects and recomputes
nothing: every figure it shows, the per-profession "within the band" flags included, is a field here.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from debias.core.errors import InputError
from debias.core.io import atomic_write_text
from debias.results.files import JsonFile, csv_table, row_dict, typed_from_dict
from debias.results.summaries import print_audit, print_fix

AUDIT_CSV_COLUMNS = ("profession", "phrase", "target", "n", "n_female", "n_male", "n_unclear", "share_female",
                     "ci_low", "ci_high", "p_value", "delta", "within_band", "planted_share", "oracle_share",
                     "agreement")


ATTRIBUTE_CSV_COLUMNS = ("attribute", "profession", "phrase", "class", "target", "target_source", "count", "n",
                         "n_unclear", "share", "ci_low", "ci_high", "delta", "max_deviation", "p_value",
                         "within_band", "oracle_count", "oracle_share", "agreement")
INTERSECTION_CSV_COLUMNS = ("row_attribute", "col_attribute", "profession", "phrase", "n", "n_unclear", "delta",
                            "row", "col", "count", "expected", "share", "ci_low", "ci_high", "flag")


# -------------------------------------------------------------------------------------------------- audit
@dataclass
class ProfessionAudit:
    """One profession's audit: counts, the female share with its 95% Wilson interval, the test and Δ."""

    profession: str
    phrase: str
    prompts: list[str]
    target: float
    n: int
    n_female: int
    n_male: int
    n_unclear: int
    share_female: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    p_value: float
    delta: Optional[float]
    within_band: bool  # share within target ± tolerance (stats.within_band)
    planted_share: Optional[float] = None  # a synthetic world's planted share (its profile knows it)
    oracle_share: Optional[float] = None  # the share its pixel oracle reads
    agreement: Optional[float] = None  # classifier vs oracle on images both call female or male
    by_prompt: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)


@dataclass
class AuditResult(JsonFile):
    """``audit.json``: what was audited, how, and the share per profession; the headline is the mean Δ."""

    ROW = ProfessionAudit
    FILE = "audit.json"

    kind: str
    debias_version: str
    model: dict
    edit: Optional[dict]
    classifier: dict
    generation: dict
    target: float
    tolerance: float
    prompt_set: str
    templates: list[str]
    stopping: dict
    ci_note: str
    versions: dict
    hardware: dict
    started_at: str
    finished_at: str
    wall_seconds: float
    images_generated: int
    images_reused: int
    mean_delta: Optional[float]
    mean_delta_ci_low: Optional[float]
    mean_delta_ci_high: Optional[float]
    mean_delta_noise_floor: Optional[float]
    within_tolerance: int  # professions whose share is within the band
    professions: list[ProfessionAudit]
    # human labels against the classifier (debias.validity.record.validity_block); None: written before labels
    validity: Optional[dict] = None
    # the other classifiers of a --classifier A --classifier B audit against the primary (validity.compare)
    classifiers: Optional[list[dict]] = None
    # attributes beyond gender and their intersections (debias.auditing.attributes); absent from the file when None
    attributes: Optional[list[dict]] = None
    intersections: Optional[list[dict]] = None

    OPTIONAL = ("attributes", "intersections")  # written only when present, so gender-only files keep their bytes

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for key in self.OPTIONAL:
            if data[key] is None:
                del data[key]
        return data

    def attribute(self, name: str) -> dict:
        """The section of attribute ``name`` (``attributes``), with an error naming the ones there are."""
        for section in self.attributes or []:
            if section["attribute"] == name:
                return section
        there = ", ".join(s["attribute"] for s in self.attributes or []) or "none"
        raise InputError(f"this audit has no section for attribute {name!r} (it has: {there}); audit with "
                         f"--attribute {name}")

    def row(self, phrase: str) -> ProfessionAudit:
        return next(r for r in self.professions if r.phrase == phrase)

    @property
    def images_read(self) -> int:
        return sum(r.n for r in self.professions)

    @property
    def has_oracle(self) -> bool:
        return any(r.oracle_share is not None or r.planted_share is not None for r in self.professions)

    def to_csv(self) -> str:
        """One row per profession (``audit.csv``)."""
        return csv_table(AUDIT_CSV_COLUMNS, [row_dict(row) for row in self.professions])

    def attributes_csv(self) -> str | None:
        """One row per attribute × profession × class (``audit_attributes.csv``); None without attributes."""
        if not self.attributes:
            return None
        rows = []
        for section in self.attributes:
            for r in section["professions"]:
                for i, cls in enumerate(section["classes"]):
                    oracle = r["oracle_counts"]
                    rows.append({
                        "attribute": section["attribute"], "profession": r["profession"], "phrase": r["phrase"],
                        "class": cls, "target": r["target"][i], "target_source": r["target_source"],
                        "count": r["counts"][i], "n": r["n"], "n_unclear": r["n_unclear"],
                        "share": None if r["shares"] is None else r["shares"][i], "ci_low": r["ci_low"][i],
                        "ci_high": r["ci_high"][i], "delta": r["delta"], "max_deviation": r["max_deviation"],
                        "p_value": r["p_value"], "within_band": r["within_band"],
                        "oracle_count": None if oracle is None else oracle[i],
                        "oracle_share": None if r["oracle_shares"] is None else r["oracle_shares"][i],
                        "agreement": r["agreement"]})
        return csv_table(ATTRIBUTE_CSV_COLUMNS, rows)

    def intersections_csv(self) -> str | None:
        """One row per intersection × profession × cell (``audit_intersections.csv``); None without intersections."""
        if not self.intersections:
            return None
        rows = []
        for section in self.intersections:
            a, b = section["attributes"]
            for r in section["professions"]:
                for cell in r["cells"]:
                    rows.append({"row_attribute": a, "col_attribute": b, "profession": r["profession"],
                                 "phrase": r["phrase"], "n": r["n"], "n_unclear": r["n_unclear"], "delta": r["delta"],
                                 **cell})
        return csv_table(INTERSECTION_CSV_COLUMNS, rows)

    def save(self, out: str | os.PathLike) -> Path:
        """``audit.json`` (everything), ``audit.csv`` (one row per profession) and, with attributes or intersections,
        ``audit_attributes.csv`` / ``audit_intersections.csv``, atomically (a stale one of an earlier run is removed)."""
        atomic_write_text(Path(out) / "audit.csv", self.to_csv())
        for name, text in (("audit_attributes.csv", self.attributes_csv()),
                           ("audit_intersections.csv", self.intersections_csv())):
            if text is not None:
                atomic_write_text(Path(out) / name, text)
            elif (Path(out) / name).is_file():
                (Path(out) / name).unlink()
        return super().save(out)

    def print_summary(self, file=None) -> None:
        print_audit(self, file or sys.stdout)


# ---------------------------------------------------------------------------------------------------- fix
@dataclass
class ProfessionFix:
    """One profession's fix: destination, strength, status, and its share before and after on the test prompts.

    ``lambda_`` is written as ``"lambda"`` (a Python keyword cannot name a field)."""

    profession: str
    phrase: str
    target: float
    destination: Optional[str]
    status: str  # fixed | already_within_tolerance | not_reachable | budget_exhausted
    lambda_: Optional[float]  # absolute λ (solver units); None: unedited
    lambda_relative: Optional[float]
    lambda_scale: Optional[float]
    lambda_relative_min: Optional[float]  # the strongest edit the side-effect limit allowed
    share_before: Optional[float]
    ci_low_before: Optional[float]
    ci_high_before: Optional[float]
    n_before: int
    share_after: Optional[float]
    ci_low_after: Optional[float]
    ci_high_after: Optional[float]
    n_after: int
    n_unclear_after: int
    delta_before: Optional[float]
    delta_after: Optional[float]
    within_band_before: bool
    within_band_after: bool
    after_interval_within_band: bool
    after_interval_overlaps_band: bool
    planted_share: Optional[float]
    oracle_share_before: Optional[float]
    oracle_share_after: Optional[float]
    tuning_share_before: Optional[float]
    images_used_in_search: int
    search_status: Optional[str]
    search_message: Optional[str]
    search_lambda_relative: Optional[float]
    search_share: Optional[float]
    search_ci_low: Optional[float]
    search_ci_high: Optional[float]
    closest_share: Optional[float]
    joint: list[dict]  # the joint rounds' measurements of this profession
    joined_round: Optional[int]  # left unedited, then edited after this joint round (cross-effect); or None
    search: list[dict]  # the rounds at a finite λ (the strengths-per-round chart)
    search_unedited: Optional[dict]  # the tuning audit: its unedited point (no λ)
    # how evenly the edit carries: the standard deviation of the share across the held-out prompts, and what
    # sampling alone would give on as many images per prompt (stats.prompt_spread)
    spread_before: Optional[float] = None
    spread_after: Optional[float] = None
    spread_noise_after: Optional[float] = None


@dataclass
class ClassShares:
    """One profession's class shares in one audit: simultaneous 95% intervals (Goodman), Δ and the band."""

    counts: list[int]
    n_unclear: int
    shares: Optional[list[float]]  # None: no image was read into a class
    ci_low: Optional[list[float]]
    ci_high: Optional[list[float]]
    delta: Optional[float]
    within_band: Optional[bool]  # every class share within tolerance of its target


@dataclass
class AttributeFixRow:
    """One profession of a fixed attribute: its edit (destinations, strengths per round and shipped, the engine's
    view on the tuning prompts) and its class shares before and after on the held-out test prompts."""

    profession: str
    phrase: str
    target: list[float]
    cells: Optional[list[str]]  # a crossed fix's cells, which destinations and strengths follow; else None
    destinations: list[str]
    status: str  # fixed | already_within_tolerance | not_reachable | budget_exhausted
    tuning_counts: list[int]
    caps: Optional[list[float]]  # the strongest strength per class the side-effect limit allows
    strengths: list[float]  # w = 1 / λ_rel per class (or cell); 0: no destination
    lambda_relative: list[Optional[float]]
    reference_class: Optional[str]  # the class it had most of against its target: never given a destination
    joined_round: Optional[int]
    engine: Optional[dict]  # the pooled model's expected shares under the shipped edit, its slope and status
    rounds: list[dict]  # per round: strengths, reach, counts, the model's shares after it
    before: ClassShares
    after: ClassShares


@dataclass
class AttributeFix:
    """A fixed attribute's before → after (``fix.json``'s ``attribute_fixes``, ``"fixed": true``)."""

    attribute: str
    fixed: bool
    classes: list[str]
    crossed: Optional[list[str]]  # the two attributes fixed together (strengths per cell); else None
    tolerance: float
    band_rule: str
    interval_method: str
    mean_delta_before: Optional[float]
    mean_delta_before_ci_low: Optional[float]
    mean_delta_before_ci_high: Optional[float]
    mean_delta_after: Optional[float]
    mean_delta_after_ci_low: Optional[float]
    mean_delta_after_ci_high: Optional[float]
    within_tolerance_before: int
    within_tolerance_after: int
    professions: list[AttributeFixRow]
    # the mean Δ over professions on each held-out template: {template: {"before": Δ, "after": Δ}}
    mean_delta_by_template: Optional[dict] = None


@dataclass
class HeldAttributeRow:
    """One profession of an attribute measured but not fixed: did the edit move it beyond its noise?"""

    profession: str
    phrase: str
    counts_before: list[int]
    counts_after: list[int]
    n_unclear_before: int
    n_unclear_after: int
    shares_before: Optional[list[float]]
    shares_after: Optional[list[float]]
    largest_change: Optional[float]
    noise: Optional[float]
    moved: Optional[bool]


@dataclass
class HeldAttribute:
    """An attribute the fix's audits read but the fix did not edit (``"fixed": false``)."""

    attribute: str
    fixed: bool
    classes: list[str]
    noise_rule: str
    mean_largest_change: Optional[float]
    moved: int
    professions: list[HeldAttributeRow]


def attribute_block(data: dict, where: str) -> AttributeFix | HeldAttribute:
    """One ``attribute_fixes`` block of a file, typed (fixed or held, by its ``fixed`` flag)."""
    if not isinstance(data, dict) or not isinstance(data.get("professions"), list):
        raise InputError(f"{where}: not an attribute block (it needs a \"professions\" list); re-run the fix.")
    if data.get("fixed"):
        def fixed_row(i: int, r: dict) -> AttributeFixRow:
            at = f"{where}: professions[{i}]"
            shares = {side: typed_from_dict(ClassShares, r.get(side), f"{at}.{side}") for side in ("before", "after")}
            return typed_from_dict(AttributeFixRow, {**r, **shares}, at)

        rows = [fixed_row(i, r) for i, r in enumerate(data["professions"])]
        return typed_from_dict(AttributeFix, {**data, "professions": rows}, where)
    rows = [typed_from_dict(HeldAttributeRow, r, f"{where}: professions[{i}]")
            for i, r in enumerate(data["professions"])]
    return typed_from_dict(HeldAttribute, {**data, "professions": rows}, where)


@dataclass
class FixResult(JsonFile):
    """``fix.json``: the settings, the edit, before/after per profession with intervals, side effects, images."""

    ROW = ProfessionFix
    FILE = "fix.json"

    kind: str
    debias_version: str
    model: dict
    target: float
    tolerance: float
    budget: int
    test_images: int
    check_images: int
    joint_rounds: int
    seed: int
    tuning_seed: int
    classifier: dict
    generation: dict
    augmentations: list[str]
    tuning_templates: list[str]
    preserve: dict
    anchors: dict
    joint_pin_lambda_relative: float
    versions: dict
    hardware: dict
    started_at: str
    finished_at: str
    wall_seconds: float
    edit_file: Optional[dict]
    before: str  # the before audit's file, relative to the run folder
    after: str
    tuning_before: str
    mean_delta_before: Optional[float]
    mean_delta_before_ci_low: Optional[float]
    mean_delta_before_ci_high: Optional[float]
    mean_delta_after: Optional[float]
    mean_delta_after_ci_low: Optional[float]
    mean_delta_after_ci_high: Optional[float]
    mean_delta_noise_floor_after: Optional[float]
    within_tolerance_before: int
    within_tolerance_after: int
    after_intervals_overlapping_band: int
    edit_note: Optional[str]
    images: dict
    side_effects: dict
    ci_note: str
    professions: list[ProfessionFix]
    # the mean over professions of the spread across held-out prompts (ProfessionFix.spread_*)
    mean_spread_before: Optional[float] = None
    mean_spread_after: Optional[float] = None
    mean_spread_noise_after: Optional[float] = None
    # gender's mean Δ over professions on each held-out template, and a perfect model's on the after audit's images:
    # {template: {"before": Δ, "after": Δ, "noise_floor_after": Δ}}
    mean_delta_by_template: Optional[dict] = None
    # the attributes of a fix other than gender alone: each fixed one, then each measured only
    # (debias.fixing.kclass_record); absent from the file when None
    attribute_fixes: Optional[list[AttributeFix | HeldAttribute]] = None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data["attribute_fixes"] is None:
            del data["attribute_fixes"]  # a gender fix's file keeps its bytes
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "<dict>"):
        blocks = data.get("attribute_fixes") if isinstance(data, dict) else None
        if blocks is not None:
            data = {**data, "attribute_fixes": [attribute_block(b, f"{where}: attribute_fixes[{i}]")
                                                for i, b in enumerate(blocks)]}
        return super().from_dict(data, where)

    def audits(self, run_dir: str | os.PathLike) -> tuple[AuditResult, AuditResult]:
        """The before and after audits this fix judged itself by."""
        run_dir = Path(run_dir)
        return AuditResult.from_json(run_dir / self.before), AuditResult.from_json(run_dir / self.after)

    def print_summary(self, file=None) -> None:
        print_fix(self, file or sys.stdout)
