"""Fixing attributes of k classes (``debias fix --attribute skin``): k − 1 strengths per profession, one edit.

The binary gender fix edits a profession towards one destination ("a male nurse") with one strength λ. An
attribute of k classes needs a destination per class ("a nurse with light skin", "… medium skin", "… dark skin")
and a strength for each: w_c = 1 / λ_rel,c weighs that destination's rows in one closed-form solve, as UCE
combines its edits::

    M_p = argmin Σ_c w_c Σ_i ‖W′ c_i − W c*_{c,i}‖² + β Σ_anchors ‖W′ a − W a‖² + s ‖W′ − W‖²

(s: the profession's λ scale, so w_c = 1 is λ_rel 1; the anchors' weight β grows with Σ_c w_c, so for one class
it is the binary fix's). Raising w_c raises class c's share; the most over-represented class (the search's
reference) gets none. :func:`debias.search_k.search_strengths` finds the w with common random numbers on the
tuning prompts, each class capped where its edit alone would move unrelated prompts' conditioning by more than
``max_drift`` (the binary fix's side-effect limit, per class).

Two attributes at once (``--attribute gender --attribute skin``) are fixed as **one crossed attribute** whose
classes are their cells (:class:`CrossedAttribute`): a destination per cell ("a female pilot with dark skin"),
the target the product of the two targets, one strength per cell, searched on the joint counts by the same
k-class search. Fixing them as two attributes in one solve does not work: the solve sends the prompt to the
strength-weighted mean of all destinations, so "a female pilot" and "a pilot with dark skin" compete and the
attribute with the larger strengths cancels the other (measured on the mini world v2: the librarian's skin
strengths of 16-18 left its gender edit of 0.04 without effect). A cell's destination names both classes, so
every destination moves both attributes at once and nothing cancels.

The professions' edits are joined into one M by pinning each profession's rows to what its own edit gives them
(:func:`debias.editing.solver.joint_from_pins`, as in the binary fix); there are no joint rounds. The after audit
on the held-out test prompts measures *every* audited attribute under the shipped edit: the fixed ones against
their targets, and the others (gender, when only skin is fixed) against their own before-values, to show that
one fix does not undo another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch

from debias import multiclass
from debias.attributes import GENDER, Attribute, AttributeClass
from debias.editing.solver import conditioning_drift
from debias.fixing.plan import Anchors, kept_rows, profession_edit_rows
from debias.search_k import KSearchResult

ALREADY = "already_within_tolerance"


@dataclass(frozen=True)
class Cell:
    """One cell of a crossed attribute: a class of each attribute, and the destination that names both."""

    name: str
    parts: tuple[AttributeClass, ...]  # applied in this order: gender's first, so "a female pilot with dark skin"

    def destination_phrase(self, profession_phrase: str) -> str:
        phrase = profession_phrase
        for part in self.parts:
            phrase = part.destination_phrase(phrase)
        return phrase


@dataclass(frozen=True)
class CrossedAttribute:
    """Two attributes fixed together, as one attribute whose classes are their cells (first-attribute-major, the
    order of :func:`debias.multiclass.joint_counts`): ``female_light, female_medium, …, male_dark``."""

    first: Attribute
    second: Attribute

    @property
    def name(self) -> str:
        return f"{self.first.name}+{self.second.name}"

    @property
    def pair(self) -> tuple[str, str]:
        return (self.first.name, self.second.name)

    @staticmethod
    def cell_name(first: str, second: str) -> str:
        return f"{first}_{second}"

    @property
    def classes(self) -> tuple[Cell, ...]:
        gender_first = self.second.name == GENDER.name
        return tuple(Cell(self.cell_name(a.name, b.name), (b, a) if gender_first else (a, b))
                     for a in self.first.classes for b in self.second.classes)

    @property
    def k(self) -> int:
        return self.first.k * self.second.k

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def target(self, first: Sequence[float], second: Sequence[float]) -> tuple[float, ...]:
        """The joint target: the product of the two (independence: the target says nothing about how they mix)."""
        return tuple(float(x) for x in np.outer(first, second).ravel())

    def marginals(self, values: Sequence[float]) -> tuple[list, list]:
        """Per-cell counts or shares summed to each attribute's classes: ``(first's, second's)``."""
        table = np.asarray(values).reshape(self.first.k, self.second.k)
        return table.sum(1).tolist(), table.sum(0).tolist()

    def joint_labels(self, first: Sequence[str], second: Sequence[str]) -> list[str]:
        """Each image's cell, or "unclear" where either attribute was not read."""
        names_a, names_b = set(self.first.class_names), set(self.second.class_names)
        return [self.cell_name(a, b) if a in names_a and b in names_b else "unclear" for a, b in zip(first, second)]


@dataclass
class ClassEdit:
    """One profession × one attribute: the target, each class's destination rows, the search's strengths."""

    attribute: Attribute | CrossedAttribute
    entry: object  # prompts.ProfessionEntry
    target: tuple[float, ...]
    tuning_counts: tuple[int, ...]
    rows: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per class (C, C*)
    scale: float = 1.0  # λ scale of the source rows (debias.editing.lambda_scale)
    caps: tuple[float, ...] = ()  # strongest w per class the side-effect limit allows
    search: Optional[KSearchResult] = None
    status: str = ""
    edited_as: Optional[CrossedAttribute] = None  # a crossed fix's view of one of its attributes (fix.json)

    @property
    def strengths(self) -> tuple[float, ...]:
        """One per class of the attribute edited (for a view, per cell of the crossed attribute)."""
        return self.search.strengths if self.search is not None else (0.0,) * (self.edited_as or self.attribute).k

    @property
    def edited(self) -> bool:
        return any(w > 0 for w in self.strengths)

    def destinations(self) -> list[str]:
        return [c.destination_phrase(self.entry.phrase) for c in (self.edited_as or self.attribute).classes]


def edit_of(edits: Sequence[ClassEdit], attribute: Attribute) -> Optional[ClassEdit]:
    """One profession's edit of ``attribute``; where it was edited crossed with another, a view of the crossed
    edit with this attribute's target and tuning counts (strengths and destinations stay the cells')."""
    for e in edits:
        if e.attribute.name == attribute.name:
            return e
        if isinstance(e.attribute, CrossedAttribute) and attribute.name in e.attribute.pair:
            side = e.attribute.pair.index(attribute.name)
            return replace(e, attribute=attribute, target=tuple(e.attribute.marginals(e.target)[side]),
                           tuning_counts=tuple(int(x) for x in e.attribute.marginals(e.tuning_counts)[side]),
                           edited_as=e.attribute)
    return None


# ---------------------------------------------------------------------------------------------------- math
def weighted_rows(parts: Sequence[tuple[torch.Tensor, torch.Tensor, float]]):
    """Stack ``(C, C*, w)`` blocks with w > 0 into sources, destinations and per-row weights (None: no block)."""
    used = [(C, S, w) for C, S, w in parts if w > 0]
    if not used:
        return None
    sources = torch.cat([C for C, _, _ in used])
    destinations = torch.cat([S for _, S, _ in used])
    weights = torch.cat([torch.full((C.shape[0],), float(w), dtype=torch.float64) for C, _, w in used])
    return sources, destinations, weights


def combined_matrix(parts: Sequence[tuple[torch.Tensor, torch.Tensor, float]], scale: float,
                    anchors: Optional[Anchors]) -> Optional[torch.Tensor]:
    """One profession's edit from weighted destination blocks (all classes, all attributes); None: no edit.

    The anchors weigh β · Σ w (β: their strength against one edit row at weight 1), so with one block of
    weight w this is exactly the binary fix's edit at λ_rel = 1 / w.
    """
    from debias.editing import edit_matrix

    stacked = weighted_rows(parts)
    if stacked is None:
        return None
    sources, destinations, weights = stacked
    if anchors is None:
        return edit_matrix(sources, destinations, scale, weights=weights)
    total = float(sum(w for _, _, w in parts if w > 0))
    return edit_matrix(sources, destinations, scale, weights=weights, preserve=anchors.rows,
                       preserve_weight=anchors.strength * total)


def class_matrix(edit: ClassEdit, strengths: Sequence[float], anchors: Optional[Anchors]) -> Optional[torch.Tensor]:
    """The edit of one attribute of one profession at ``strengths`` (what the search tries)."""
    return combined_matrix([(C, S, w) for (C, S), w in zip(edit.rows, strengths)], edit.scale, anchors)


def class_caps(edit: ClassEdit, probe: Optional[torch.Tensor], max_drift: Optional[float],
               anchors: Optional[Anchors], max_strength: float) -> tuple[float, ...]:
    """Per class, the strongest w whose edit alone keeps unrelated prompts' conditioning within ``max_drift``
    (the binary fix's limit on λ, :func:`debias.fixing.plan.drift_bounds`, class by class)."""
    if probe is None or max_drift is None:
        return (max_strength,) * edit.attribute.k
    caps = []
    for c in range(edit.attribute.k):
        def drift(log_w: float, c: int = c) -> float:
            strengths = [0.0] * edit.attribute.k
            strengths[c] = math.exp(log_w)
            return conditioning_drift(class_matrix(edit, strengths, anchors), probe)

        caps.append(strongest_within(drift, math.log(max_strength) - 20.0, math.log(max_strength), max_drift))
    return tuple(caps)


def strongest_within(drift, lo: float, hi: float, level: float) -> float:
    """The largest w = exp(x), x in [lo, hi], with drift(x) ≤ level (drift rises with x); exp(lo) if none."""
    if drift(hi) <= level:
        return math.exp(hi)
    if drift(lo) > level:
        return math.exp(lo)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if drift(mid) <= level else (lo, mid)
    return math.exp(lo)


def joint_class_matrix(profs: Sequence[Sequence[ClassEdit]], preserve_rows: Optional[torch.Tensor],
                       preserve_strength: float, anchors: Optional[Anchors], pin: float) -> Optional[torch.Tensor]:
    """One M for every profession with an edit: each profession's rows pinned where its combined edit (every
    attribute's weighted destinations) takes them; preserve rows and anchors kept in place."""
    from debias.editing.solver import joint_from_pins

    pins = []
    for edits in profs:
        parts = [(C, S, w) for e in edits for (C, S), w in zip(e.rows, e.strengths)]
        scale = next((e.scale for e in edits), 1.0)
        M_p = combined_matrix(parts, scale, anchors)
        if M_p is None:
            continue
        sources = torch.cat([C for C, _, w in parts if w > 0])
        pins.append((sources, sources @ M_p.T, pin * scale))
    if not pins:
        return None
    return joint_from_pins(pins, kept_rows(preserve_rows, preserve_strength, anchors))


# -------------------------------------------------------------------------------------------------- rows
def encode_class_rows(pipe, edit: ClassEdit, augmentations) -> None:
    """Each class's (C, C*) rows for "profession → profession with that class", and the profession's λ scale."""
    from debias.editing import lambda_scale

    edit.rows = [profession_edit_rows(pipe, edit.entry.phrase, d, augmentations) for d in edit.destinations()]
    edit.scale = lambda_scale(edit.rows[0][0])


def class_counts(audit, attribute: Attribute | CrossedAttribute, phrase: str) -> tuple[tuple[int, ...], int]:
    """``(counts per class, unclear)`` of one profession in an audit: gender from its rows, others from their
    sections, a crossed attribute from the audit's intersection of its two."""
    if isinstance(attribute, CrossedAttribute):
        section = next(s for s in audit.intersections or [] if tuple(s["attributes"]) == attribute.pair)
        row = next(r for r in section["professions"] if r["phrase"] == phrase)
        return tuple(int(c["count"]) for c in row["cells"]), int(row["n_unclear"])
    if attribute.name == GENDER.name:
        row = audit.row(phrase)
        return (row.n_female, row.n_male), row.n_unclear
    row = next(r for r in audit.attribute(attribute.name)["professions"] if r["phrase"] == phrase)
    return tuple(row["counts"]), row["n_unclear"]


def within_tolerance(counts: Sequence[int], target: Sequence[float], tolerance: float) -> Optional[bool]:
    """The audit's band rule: every class share within ``tolerance`` of its target (None: nothing read)."""
    deviation = multiclass.max_deviation(multiclass.shares(counts), target)
    return None if deviation is None else deviation <= tolerance


def search_tolerance(target: Sequence[float], tolerance: float) -> float:
    """The search's tolerance on Δ that means "every share within ``tolerance`` of its target"."""
    t = np.asarray(target, dtype=float)
    return float(min(tolerance / np.max(np.maximum(t, 1.0 - t)), 0.99))
