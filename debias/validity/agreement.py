"""How far the classifier and people agree, and whether some professions are read worse than others.

Pure functions on label lists (no files). Labels are the audit's strings: "female", "male", "unclear"
(the classifier abstained, or a person could not tell) and "no_person" (a person's label only). In the
3×3 confusion a person's "no_person" counts as "unclear": for the share both mean "no gender read".

* **agreement** is measured on the images a person reads as female or male: the classifier agrees when
  it says the same; abstaining counts as an error there (the image was readable). ``error_rate = 1 −
  agreement``. Both get a 95% Wilson interval.
* **confusion**: counts of (person's label, classifier's label), and per cell the share of its *row*
  (e.g. P(classifier says male | person says female)) with a Wilson interval, so each row reads as the
  classifier's accuracy on one kind of image.
* **Cohen's κ** between two labellers on the images both labelled, with the large-sample interval
  ``κ ± z·√(p_o(1 − p_o) / (n(1 − p_e)²))`` (Cohen 1960); for several labellers every pair and their mean
  (Light's κ), listing every pair of up to 10 labellers and, beyond, the 45 pairs that share the most images.
  Every pair's counts come from one pass over the images (matrix products of the labellers' one-hot labels),
  not a scan of all images per pair, so hundreds of labellers take about a second.
* **Flagged professions**: for each profession, its classifier error count against all other professions'
  pooled, two-sided Fisher exact test (exact at the small counts a labelling sample gives, where
  chi-square's approximation is poor), p-values adjusted for the number of professions with Holm's
  step-down method (controls the family-wise error without assuming independence). A profession is flagged
  when its adjusted p-value is below ``alpha``: its share needs PPI (or more labels) more than the others.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from debias.stats.binary import Z95, wilson_interval

GENDERS = ("female", "male")
CLASSES = ("female", "male", "unclear")
IMAGES_PER_BLOCK = 1024  # images per matrix product when counting pairs of labellers (bounds the memory)
MAX_PAIRS_LISTED = 45    # κ of every pair of up to 10 labellers; beyond, of the 45 pairs that share the most images


def _merge(label: str | None) -> str:
    """A label as one of :data:`CLASSES` (no_person, None and anything else are "unclear")."""
    return label if label in GENDERS else "unclear"


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` with the 95% Wilson interval; ``rate`` is None when ``n`` is 0."""

    k: int
    n: int
    rate: float | None
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, k: int, n: int) -> "Rate":
        low, high = wilson_interval(k, n)
        return cls(k, n, k / n if n else None, low, high)

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(human: Sequence[str | None], predicted: Sequence[str | None]) -> Rate:
    """Share of images a person reads as female or male on which the classifier says the same."""
    pairs = _pairs(human, predicted)
    readable = [(h, p) for h, p in pairs if h in GENDERS]
    return Rate.of(sum(h == p for h, p in readable), len(readable))


def error_rate(human: Sequence[str | None], predicted: Sequence[str | None]) -> Rate:
    """``1 − agreement``: the classifier's errors (wrong gender or abstained) on readable images."""
    a = agreement(human, predicted)
    return Rate.of(a.n - a.k, a.n)


@dataclass(frozen=True)
class Confusion:
    """Rows: the person's label; columns: the classifier's. ``cells[row][col]`` is a :class:`Rate` of the row."""

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    cells: tuple[tuple[Rate, ...], ...]

    def to_dict(self) -> dict:
        return {"rows": list(self.rows), "cols": list(self.cols), "counts": [list(r) for r in self.counts],
                "cells": {r: {c: self.cells[i][j].to_dict() for j, c in enumerate(self.cols)}
                          for i, r in enumerate(self.rows)}}


def confusion(human: Sequence[str | None], predicted: Sequence[str | None], *, size: int = 3) -> Confusion:
    """The 2×2 (``size=2``: images both read as female or male) or 3×3 (female / male / unclear) confusion."""
    if size not in (2, 3):
        raise ValueError(f"size must be 2 (female/male) or 3 (female/male/unclear), got {size}")
    classes = GENDERS if size == 2 else CLASSES
    pairs = [(_merge(h), _merge(p)) for h, p in _pairs(human, predicted)]
    if size == 2:
        pairs = [(h, p) for h, p in pairs if h in GENDERS and p in GENDERS]
    tally = Counter(pairs)
    counts = tuple(tuple(tally[(r, c)] for c in classes) for r in classes)
    cells = tuple(tuple(Rate.of(k, sum(row)) for k in row) for row in counts)
    return Confusion(classes, classes, counts, cells)


@dataclass(frozen=True)
class Kappa:
    """Cohen's κ of two raters on ``n`` shared images; None when undefined (both always gave one label)."""

    kappa: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    observed: float | None
    expected: float | None
    raters: tuple[str, str] = ("a", "b")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["raters"] = list(self.raters)
        return d


def cohens_kappa(a: Sequence[str | None], b: Sequence[str | None], *, raters: tuple[str, str] = ("a", "b"),
                 z: float = Z95) -> Kappa:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) over the labels as given (four classes for people)."""
    pairs = _pairs(a, b)
    ca, cb = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    return _kappa(len(pairs), sum(x == y for x, y in pairs), sum(ca[c] * cb[c] for c in ca), raters, z)


def _kappa(n: int, same: int, chance: int, raters: tuple[str, str], z: float) -> Kappa:
    """κ from counts: ``n`` images, ``same`` labelled alike, ``chance`` = Σ_c a_c·b_c (products of the two
    raters' label counts). Integers in, so the result does not depend on how they were counted."""
    if n == 0:
        return Kappa(None, None, None, 0, None, None, raters)
    p_o = same / n
    p_e = chance / (n * n)
    if p_e >= 1.0:
        return Kappa(None, None, None, n, p_o, p_e, raters)
    kappa = (p_o - p_e) / (1.0 - p_e)
    half = z * math.sqrt(max(p_o * (1.0 - p_o), 0.0) / n) / (1.0 - p_e)
    return Kappa(kappa, max(-1.0, kappa - half), min(1.0, kappa + half), n, p_o, p_e, raters)


def labeller_kappas(labels: Mapping[str, Mapping[str, str]], *, listed: int | None = MAX_PAIRS_LISTED,
                    z: float = Z95) -> dict:
    """Pairwise Cohen's κ between labellers and their mean (Light's κ).

    ``labels``: image key → {labeller: label}. Each pair is scored on the images both labelled; pairs with
    no shared image are left out. Returns ``{"pairs": [Kappa.to_dict()…], "mean": float | None, "n_pairs": int}``:
    ``mean`` over all ``n_pairs`` pairs, ``pairs`` in the order of the sorted names, all of them up to ``listed``
    (None: no limit), else the ``listed`` pairs that share the most images (the best-measured), so that a report
    on hundreds of labellers stays readable. The counts come from :func:`_pair_counts` (one pass over the images).
    """
    names = sorted({who for per_image in labels.values() for who in per_image})
    classes = sorted({label for per_image in labels.values() for label in per_image.values()})
    shared, same, counts = _pair_counts(labels, names, classes)
    xs, ys = np.nonzero(np.triu(shared, 1))  # row-major: (0, 1), (0, 2), …, (1, 2), …, as combinations give them
    n, agree = shared[xs, ys], same[xs, ys]
    chance = sum((counts[c, xs, ys] * counts[c, ys, xs] for c in range(len(classes))), np.zeros(len(xs)))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_e = chance / (n * n)
        kappa = (agree / n - p_e) / (1.0 - p_e)  # the float operations of _kappa, so the same values
    values = kappa[p_e < 1.0].tolist()
    keep = range(len(xs))
    if listed is not None and len(xs) > listed:
        keep = sorted(np.argsort(-n, kind="stable")[:listed].tolist())
    pairs = [_kappa(int(n[i]), int(agree[i]), int(chance[i]), (names[xs[i]], names[ys[i]]), z).to_dict() for i in keep]
    return {"pairs": pairs, "mean": sum(values) / len(values) if values else None, "n_pairs": len(xs)}


def _pair_counts(labels: Mapping[str, Mapping[str, str]], names: list[str],
                 classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pair of labellers (x, y): images both labelled, images both labelled alike, and per class c
    how often x said c on the images x and y share (``counts[c, x, y]``; y's is ``counts[c, y, x]``).

    One pass over the images with two or more labellers, a block at a time: each block is a one-hot array
    ``hot[c, labeller, image]``, and the counts are its matrix products (exact: integers in float64).
    """
    index = {name: i for i, name in enumerate(names)}
    column = {label: i for i, label in enumerate(classes)}
    size = len(names)
    shared, same = np.zeros((size, size)), np.zeros((size, size))
    counts = np.zeros((len(classes), size, size))
    images = [per_image for per_image in labels.values() if len(per_image) > 1]
    for start in range(0, len(images), IMAGES_PER_BLOCK):
        block = images[start:start + IMAGES_PER_BLOCK]
        hot = np.zeros((len(classes), size, len(block)))
        for j, per_image in enumerate(block):
            for who, label in per_image.items():
                hot[column[label], index[who], j] = 1.0
        present = hot.sum(axis=0)
        shared += present @ present.T
        for c in range(len(classes)):
            same += hot[c] @ hot[c].T
            counts[c] += hot[c] @ present.T
    return shared, same, counts


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), monotone and capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


FLAG_TEST = ("two-sided Fisher exact test of each profession's classifier error count against all other "
             "professions pooled, Holm-adjusted over professions")


def flag_professions(errors: Mapping[str, tuple[int, int]], *, alpha: float = 0.05) -> list[dict]:
    """Professions whose classifier error rate differs from the rest (see the module docstring).

    ``errors``: profession → (errors, readable labelled images). Professions with no labelled image are
    listed with p-values None and never flagged. Returns one dict per profession, in the given order.
    """
    from scipy.stats import fisher_exact

    total_k = sum(k for k, _ in errors.values())
    total_n = sum(n for _, n in errors.values())
    rows, tested = [], []
    for name, (k, n) in errors.items():
        if k < 0 or k > n:
            raise ValueError(f"{name}: need 0 <= errors <= n, got {k} of {n}")
        rest_k, rest_n = total_k - k, total_n - n
        p = None
        if n > 0 and rest_n > 0:
            p = float(fisher_exact([[k, n - k], [rest_k, rest_n - rest_k]], alternative="two-sided")[1])
            tested.append(len(rows))
        rows.append({"profession": name, "errors": k, "n": n, "error_rate": k / n if n else None,
                     "rest_error_rate": rest_k / rest_n if rest_n else None, "p_value": p,
                     "p_holm": None, "flagged": False})
    for i, p_adj in zip(tested, holm([rows[i]["p_value"] for i in tested])):
        rows[i]["p_holm"] = p_adj
        rows[i]["flagged"] = p_adj < alpha
    return rows


def _pairs(a: Sequence[str | None], b: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}: pass the labels of the same images, in the same order")
    return list(zip(a, b))
