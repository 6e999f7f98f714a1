"""A profession's edit of an attribute of k classes, and its matrices: destinations, strengths, reach, joint edit.

Gender is the built-in attribute of k = 2 (female, male); skin tone and age have three classes; two attributes
fixed together are one attribute whose classes are their cells. A profession is edited towards one destination
per class it needs more of ("a male nurse"; "a nurse with dark skin"), each with a strength w_c = 1 / λ_rel,c that
weighs that destination's rows in one closed-form solve, as UCE combines its edits::

    M_p = argmin Σ_c w_c Σ_i ‖W′ c_i − W c*_{c,i}‖² + β Σ_anchors ‖W′ a − W a‖² + s ‖W′ − W‖²

(s: the profession's λ scale, so w_c = 1 is λ_rel 1; the anchors' weight β grows with Σ_c w_c, so one class at
w is TIME's edit at λ_rel = 1 / w). The most over-represented class (the reference) gets no destination. Each
class is capped where its edit alone would move unrelated prompts' conditioning by more than ``max_drift``.

Two attributes at once (``--attribute gender --attribute skin``) are one **crossed attribute** whose classes are
their cells (:class:`CrossedAttribute`): a destination per cell ("a female pilot with dark skin"), the target the
product of the two targets, one strength per cell. Fixing them as two attributes in one solve does not work: the
solve sends the prompt to the strength-weighted mean of all destinations, so "a female pilot" and "a pilot with
dark skin" compete and the attribute with the larger strengths cancels the other (measured on the mini world v2:
the librarian's skin strengths of 16-18 left its gender edit of 0.04 without effect). A cell's destination names
both classes, so every destination moves both attributes at once and nothing cancels.

The professions' edits are joined into one M by pinning each profession's rows to what its own edit gives them
(:func:`debias.editing.solver.joint_from_pins`); :mod:`debias.fixing.engine` tunes the strengths inside that
joint edit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch

from debias.core.attributes import GENDER, Attribute, AttributeClass
from debias.editing.solver import conditioning_drift, edit_matrix, joint_from_pins, lambda_scale
from debias.fixing.options import UNEDITED
from debias.fixing.plan import Anchors, kept_rows, profession_edit_rows
from debias.stats import multiclass

MAX_STRENGTH = 1e4  # w = 1 / λ_rel: the strongest edit is λ_rel 1e-4

ALREADY = UNEDITED  # the tuning shares already lie within the band: left unedited


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
    order of :func:`debias.stats.multiclass.joint_counts`): ``female_light, female_medium, …, male_dark``."""

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
    """One profession × the attribute a fix edits: its target, each class's destination rows, the strengths the
    engine (:mod:`debias.fixing.engine`) tunes, and what each round measured."""

    attribute: Attribute | CrossedAttribute
    entry: object  # prompts.ProfessionEntry
    target: tuple[float, ...]
    tuning_counts: tuple[int, ...]
    tuning_unclear: int = 0
    rows: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per class (C, C*)
    scale: float = 1.0  # λ scale of the source rows (debias.editing.lambda_scale)
    caps: tuple[float, ...] = ()  # strongest w per class the side-effect limit allows
    strengths: list[float] = field(default_factory=list)  # w_c = 1 / λ_rel,c; 0: no destination for class c
    reference: Optional[int] = None  # the over-represented class, never given a destination; None: not edited
    status: str = ""  # "" while edited; ALREADY or "not_reachable" otherwise
    joined_round: Optional[int] = None  # left unedited, then pushed out of the band by the others: joined after it
    rounds: list[dict] = field(default_factory=list)  # per round: strengths, reach, counts, the model's shares
    outcome: Optional[dict] = None  # the engine's expected tuning shares under the shipped edit, and its status
    secant: dict = field(default_factory=dict)  # class -> (log w, reach difference) of the solver's last step
    edited_as: Optional[CrossedAttribute] = None  # a crossed fix's view of one of its attributes (fix.json)

    def __post_init__(self) -> None:
        if not self.strengths:
            self.strengths = [0.0] * (self.edited_as or self.attribute).k

    @property
    def active(self) -> bool:
        """Tuned by the engine: it has a reference class (its strengths may still all be 0)."""
        return self.reference is not None

    @property
    def edited(self) -> bool:
        return any(w > 0 for w in self.strengths)

    @property
    def target_array(self) -> np.ndarray:
        return np.asarray(self.target, dtype=float)

    @property
    def tuning_unclear_rate(self) -> float:
        n = sum(self.tuning_counts) + self.tuning_unclear
        return self.tuning_unclear / n if n else 0.0

    def destinations(self) -> list[str]:
        return [c.destination_phrase(self.entry.phrase) for c in (self.edited_as or self.attribute).classes]

    def join(self, reference: int, probe: Optional[torch.Tensor], max_drift: Optional[float],
             anchors: Optional[Anchors], rnd: Optional[int] = None) -> None:
        """Start editing: ``reference`` is the class it has too much of; each class capped by the side-effect limit."""
        self.reference, self.status, self.joined_round = reference, "", rnd
        self.caps = class_caps(self, probe, max_drift, anchors, MAX_STRENGTH)


    def refer_to(self, reference: int) -> bool:
        """Make ``reference`` the class left without a destination (the pooled images may show another class in
        excess than the tuning audit alone did); returns whether it changed. Its strength drops to 0."""
        if reference == self.reference:
            return False
        self.reference, self.secant = reference, {}
        self.strengths[reference] = 0.0
        return True


def edit_of(e: ClassEdit, attribute: Attribute) -> Optional[ClassEdit]:
    """A profession's edit as ``attribute`` sees it: the edit itself, or, where ``attribute`` was edited crossed with
    another, a view with this attribute's target and tuning counts (strengths and destinations stay the cells');
    None when the edit does not touch ``attribute``."""
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
    """The edit of one profession alone at ``strengths`` (its pin in the joint edit)."""
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


def joint_class_matrix(edits: Sequence[ClassEdit], preserve_rows: Optional[torch.Tensor],
                       preserve_strength: float, anchors: Optional[Anchors], pin: float) -> Optional[torch.Tensor]:
    """One M for every edited profession: each profession's rows pinned where its own edit (every class's weighted
    destination) takes them; preserve rows and anchors kept in place (None: nothing is edited)."""
    pins = []
    for e in edits:
        parts = [(C, S, w) for (C, S), w in zip(e.rows, e.strengths) if w > 0]
        M_p = combined_matrix(parts, e.scale, anchors)
        if M_p is None:
            continue
        sources = torch.cat([C for C, _, _ in parts])
        pins.append((sources, sources @ M_p.T, pin * e.scale))
    if not pins:
        return None
    return joint_from_pins(pins, kept_rows(preserve_rows, preserve_strength, anchors))


def reach(M: torch.Tensor, rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """How far ``M`` carries a profession's rows towards each class's destination: ⟨(M − I)C, C* − C⟩ / ‖C* − C‖²
    per class (0: not at all, 1: onto it; a projection, so an edit towards another class can move it either way)."""
    out = np.zeros(len(rows))
    for c, (C, S) in enumerate(rows):
        direction = S - C
        moved = C @ M.T.to(C.dtype) - C
        out[c] = float((moved * direction).sum() / (direction * direction).sum().clamp_min(1e-12))
    return out


# -------------------------------------------------------------------------------------------------- rows
def encode_class_rows(pipe, edit: ClassEdit, augmentations) -> None:
    """Each class's (C, C*) rows for "profession → profession with that class", and the profession's λ scale."""
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


def template_counts(audit, attribute: Attribute, phrase: str) -> list[tuple[int, ...]]:
    """Counts per class of one profession on each held-out template, in the audit's template order (image i of a
    profession uses template i mod their number): gender from its per-prompt rows, others from their labels."""
    if attribute.name == GENDER.name:
        return [(int(c["n_female"]), int(c["n_male"])) for c in audit.row(phrase).by_prompt]
    row = next(r for r in audit.attribute(attribute.name)["professions"] if r["phrase"] == phrase)
    step = len(audit.templates)
    return [tuple(multiclass.count_labels(row["labels"][j::step], attribute.class_names)[0]) for j in range(step)]


def within_tolerance(counts: Sequence[int], target: Sequence[float], tolerance: float) -> Optional[bool]:
    """The audit's band rule: every class share within ``tolerance`` of its target (None: nothing read)."""
    deviation = multiclass.max_deviation(multiclass.shares(counts), target)
    return None if deviation is None else deviation <= tolerance
