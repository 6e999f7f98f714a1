"""Shares of an attribute with k ≥ 2 classes (gender, skin tone, age): pure numpy/scipy, no pipelines.

Per profession an audit reads each image into one of k classes or "unclear" (excluded and reported, as for
binary gender). From the counts ``n_1 … n_k`` (``n = Σ n_c``) this module gives:

* **shares** ``p_c = n_c / n``;
* **simultaneous 95% intervals** (:func:`simultaneous_intervals`): all k intervals cover their true shares
  *together* 95% of the time. k separate 95% Wilson intervals do not: on simulated multinomials with k = 3–4
  and n = 50–200 their joint coverage was 0.80–0.92, so a table of them overstates what is known. The
  default is **Goodman** (1965): a score (Wilson-type) interval per class at the χ²₁ quantile 1 − α/k
  (Bonferroni over the classes). At k = 2 the two intervals are one statement (p₂ = 1 − p₁), so α is not split
  and it *is* the 95% Wilson interval of :mod:`debias.stats.binary`. **Sison–Glaz** (1995: equal-width intervals
  from the multinomial's box probability, via Levin's representation and an Edgeworth expansion) is narrower
  and available, but its expansion is in the number of classes: at k = 3–4 and n = 20–400 its joint coverage
  measured 0.84–0.95 (about 0.91 typically), where Goodman's measured 0.93–0.98 (0.926 at worst, k = 4 and
  n = 20; 2,000 draws per case). Both agree with statsmodels' ``multinomial_proportions_confint`` to 1e-10
  (Goodman for k ≥ 3, where it splits α as statsmodels always does).
* a **goodness-of-fit test** against the target distribution (:func:`goodness_of_fit`): the exact
  multinomial test (p = total probability of the outcomes no more likely than the one seen) whenever the
  outcomes can be enumerated (≤ 200,000 of them: n ≤ 630 at k = 3, n ≤ 104 at k = 4), which is valid at
  any n and equals scipy's exact binomial test at k = 2; beyond that Pearson's χ² when every expected count
  is ≥ 5 (its textbook validity rule), else a Monte Carlo p-value of the same statistic (seeded, so the
  same counts always give the same p).
* the **k-class deviation** (:func:`delta`)::

      Δ = max_c |p_c − t_c| / max_c max(t_c, 1 − t_c)

  0 on target, 1 as far as a distribution can be (every image in the class with the smallest target). At
  k = 2 it is the binary Δ = |F − t| / max(t, 1 − t) of :mod:`debias.stats.binary`.
* **intersections** of two attributes (:func:`intersection_table`): the joint table per profession, with
  simultaneous intervals over all cells. A cell whose *expected* count under the target joint distribution
  (n · t_a · t_b) is below 5 is flagged ``"tiny"`` and gets no share: a share of one or two images is noise.
  A cell that should hold ≥ 5 images but holds none is flagged ``"empty"`` and keeps its share 0 with its
  interval, because that absence *is* a finding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Literal, Sequence

import numpy as np
from scipy import stats as sps
from scipy.special import gammaln

IntervalMethod = Literal["sison-glaz", "goodman"]

MIN_EXPECTED = 5.0  # a cell (or class) expected to hold fewer images than this is too thin to read
EXACT_LIMIT = 200_000  # most outcomes the exact multinomial test enumerates
MONTE_CARLO_DRAWS = 20_000
TARGET_SUM_TOLERANCE = 1e-6


# ------------------------------------------------------------------------------------------------- checks


def _counts(counts: Sequence[int]) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"need counts for k >= 2 classes, got {counts!r}")
    if np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"counts must be non-negative integers, got {counts!r}")
    return arr.astype(np.int64)


def check_target(target: Sequence[float], k: int | None = None) -> np.ndarray:
    """A target distribution: k shares in [0, 1] that sum to 1 (±1e-6)."""
    t = np.asarray(target, dtype=float)
    if t.ndim != 1 or (k is not None and t.size != k):
        raise ValueError(f"a target needs {k} shares (one per class), got {target!r}")
    if np.any(~np.isfinite(t)) or np.any(t < 0) or np.any(t > 1):
        raise ValueError(f"target shares must be in [0, 1], got {target!r}")
    if abs(t.sum() - 1.0) > TARGET_SUM_TOLERANCE:
        raise ValueError(f"target shares must sum to 1, got {target!r} (sum {t.sum():.6g})")
    return t


# ----------------------------------------------------------------------------------- shares and deviation


def shares(counts: Sequence[int]) -> np.ndarray | None:
    """``n_c / n`` per class, or None when no image was classified (the shares are unknown, not 0)."""
    c = _counts(counts)
    n = c.sum()
    return c / n if n else None


def delta(shares: Sequence[float] | None, target: Sequence[float]) -> float | None:
    """Δ = max_c |p_c − t_c| / max_c max(t_c, 1 − t_c): 0 on target, 1 as far as a distribution can be.

    The denominator is the largest |p_c − t_c| any distribution can reach, so Δ is on the same 0–1 scale for
    every k and target; at k = 2 both classes give |F − t| and the denominator is max(t, 1 − t).
    """
    t = check_target(target)
    if shares is None:
        return None
    p = np.asarray(shares, dtype=float)
    if p.shape != t.shape:
        raise ValueError(f"{p.size} shares but {t.size} target shares")
    return float(np.max(np.abs(p - t)) / np.max(np.maximum(t, 1.0 - t)))


def max_deviation(shares: Sequence[float] | None, target: Sequence[float]) -> float | None:
    """max_c |p_c − t_c|: the band rule's number (within the band when it is at most the tolerance; gender's
    |F − t| at k = 2). None when nothing was read."""
    if shares is None:
        return None
    return float(max(abs(float(p) - float(t)) for p, t in zip(shares, target)))


def mean_delta(rows: Sequence[tuple[Sequence[int], Sequence[float]]]) -> float | None:
    """Mean Δ over professions from ``(counts, target)`` pairs; professions with no classified image are left out."""
    values = [delta(shares(c), t) for c, t in rows]
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_delta_interval(rows: Sequence[tuple[Sequence[int], Sequence[float]]], *, level: float = 0.95,
                        n_boot: int = 2000, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """Mean Δ and a percentile interval from a parametric bootstrap (each profession redrawn from its shares).

    The same design as :func:`debias.stats.binary.mean_delta_interval`: the professions are fixed, the randomness is
    each profession's multinomial draw, the seed is fixed so the same counts always give the same interval.
    """
    kept = [(_counts(c), check_target(t, len(c))) for c, t in rows if sum(c) > 0]
    if not kept:
        return None, None, None
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for c, t in kept:
        n = int(c.sum())
        draws = rng.multinomial(n, c / n, size=n_boot) / n
        boot += np.max(np.abs(draws - t), axis=1) / np.max(np.maximum(t, 1 - t))
    boot /= len(kept)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return mean_delta([(c, t) for c, t in kept]), float(low), float(high)


# ------------------------------------------------------------------------------- simultaneous intervals


def _sison_glaz_nu(counts: np.ndarray, cs: np.ndarray) -> np.ndarray:
    """ν(c) = P(|X_i − n_i| ≤ c for all i) for X ~ Multinomial(n, n_i/n), for every c in ``cs``.

    Levin (1981): with independent Y_i ~ Poisson(n_i) and Z_i = Y_i truncated to the box,
    P(box) = n!/(nⁿe⁻ⁿ) · Π_i P(Y_i in box) · P(Σ Z_i = n); the last factor is an Edgeworth expansion
    from the truncated Poissons' first four moments (from factorial moments λʳ·P(box − r)/P(box)).
    """
    n, k = int(counts.sum()), counts.size
    lam = counts[None, :].astype(float)
    lo = np.maximum(counts[None, :] - cs[:, None], 0)
    hi = np.minimum(counts[None, :] + cs[:, None], n)
    cdf = sps.poisson.cdf(np.arange(-6, n + 1)[None, :], lam.T)  # (k, n + 7): Poisson cdf at x = -6 … n
    rows = np.arange(k)[None, :]
    box = lambda a, b: cdf[rows, b + 6] - cdf[rows, a + 5]  # noqa: E731 — P(a ≤ Y ≤ b) per class
    p_box = box(lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1, f2, f3, f4 = (lam**r * box(lo - r, hi - r) / p_box for r in range(1, 5))
        mu = f1
        m2 = f2 + mu - mu**2
        m3 = f3 + f2 * (3 - 3 * mu) + mu - 3 * mu**2 + 2 * mu**3
        m4 = f4 + f3 * (6 - 4 * mu) + f2 * (7 - 12 * mu + 6 * mu**2) + mu - 4 * mu**2 + 6 * mu**3 - 3 * mu**4
        var = m2.sum(1)
        g1 = m3.sum(1) / var**1.5
        g2 = (m4.sum(1) - 3 * (m2**2).sum(1)) / var**2
        x = (n - mu.sum(1)) / np.sqrt(var)
        h3, h4, h6 = x**3 - 3 * x, x**4 - 6 * x**2 + 3, x**6 - 15 * x**4 + 45 * x**2 - 15
        edgeworth = sps.norm.pdf(x) * (1 + g1 * h3 / 6 + g2 * h4 / 24 + g1**2 * h6 / 72) / np.sqrt(var)
        log_nu = np.log(p_box).sum(1) + np.log(np.maximum(edgeworth, 0)) - sps.poisson.logpmf(n, n)
    nu = np.nan_to_num(np.exp(log_nu), nan=0.0)
    nu[cs == 0] = 0.0  # the degenerate box, as in Sison & Glaz's and R MultinomialCI's search
    nu[cs >= n] = 1.0  # the box holds every outcome
    return nu


def sison_glaz_intervals(counts: Sequence[int], confidence: float = 0.95) -> np.ndarray:
    """Sison & Glaz (1995) simultaneous intervals, shape (k, 2): ``[p_c − c/n, p_c + (c + 2γ)/n]`` clipped to [0, 1].

    ``c`` is the first integer with ν(c) ≤ confidence < ν(c + 1) and γ interpolates between them.
    """
    arr = _counts(counts)
    n = int(arr.sum())
    if n == 0:
        return np.tile([0.0, 1.0], (arr.size, 1))
    start, chunk = 0, max(16, int(6 * math.sqrt(n)))
    while True:  # ν(c) reaches the confidence near c ≈ 2.5·√(n p(1 − p)): look in chunks
        cs = np.arange(start, min(start + chunk, n + 1) + 1)
        nu = _sison_glaz_nu(arr, cs)
        hit = np.nonzero((nu[:-1] <= confidence) & (confidence < nu[1:]))[0]
        if hit.size:
            c, nu_c, nu_next = int(cs[hit[0]]), nu[hit[0]], nu[hit[0] + 1]
            break
        start = int(cs[-1])
    gamma = (confidence - nu_c) / (nu_next - nu_c)
    p = arr / n
    return np.stack([np.maximum(p - c / n, 0.0), np.minimum(p + (c + 2 * gamma) / n, 1.0)], axis=1)


def goodman_intervals(counts: Sequence[int], confidence: float = 0.95) -> np.ndarray:
    """Goodman (1965) simultaneous intervals, shape (k, 2): k score intervals at χ²₁ quantile 1 − α/k.

    At k = 2 both rows state one event, so α is not split: the rows are 95% Wilson intervals of p and 1 − p.
    """
    arr = _counts(counts).astype(float)
    n, k = arr.sum(), arr.size
    if n == 0:
        return np.tile([0.0, 1.0], (k, 1))
    a = sps.chi2.ppf(1 - (1 - confidence) / (k if k > 2 else 1), 1)
    root = np.sqrt(a * (a + 4 * arr * (n - arr) / n))
    low, high = (a + 2 * arr - root) / (2 * (n + a)), (a + 2 * arr + root) / (2 * (n + a))
    return np.stack([np.clip(low, 0, 1), np.clip(high, 0, 1)], axis=1)


def simultaneous_intervals(counts: Sequence[int], confidence: float = 0.95,
                           method: IntervalMethod = "goodman") -> np.ndarray:
    """Simultaneous intervals for all k shares (shape (k, 2)); ``(0, 1)`` rows when nothing was classified."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if method == "sison-glaz":
        return sison_glaz_intervals(counts, confidence)
    if method == "goodman":
        return goodman_intervals(counts, confidence)
    raise ValueError(f"unknown interval method {method!r}; use 'sison-glaz' or 'goodman'")


# -------------------------------------------------------------------------------------- goodness of fit


@dataclass(frozen=True)
class GoodnessOfFit:
    """A test of the counts against the target distribution; ``method`` says which one was used."""

    statistic: float  # Pearson's X² (also reported for the exact test)
    p_value: float
    method: str  # "exact" | "chi2" | "monte_carlo"

    def to_dict(self) -> dict:
        return asdict(self)


def _compositions(n: int, k: int) -> np.ndarray:
    """Every way to put n images into k classes (stars and bars), shape (C(n+k−1, k−1), k)."""
    bars = np.array(list(combinations(range(n + k - 1), k - 1)), dtype=np.int64).reshape(-1, k - 1)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n + k - 1)], axis=1)
    return np.diff(edges, axis=1) - 1


def _log_pmf(outcomes: np.ndarray, t: np.ndarray) -> np.ndarray:
    n = outcomes.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(outcomes > 0, outcomes * np.log(t), 0.0) - gammaln(outcomes + 1)
    return gammaln(n + 1) + terms.sum(axis=-1)


def goodness_of_fit(counts: Sequence[int], target: Sequence[float], *, seed: int = 0) -> GoodnessOfFit:
    """Test the counts against the target distribution (which test: see the module docstring)."""
    c = _counts(counts)
    t = check_target(target, c.size)
    n = int(c.sum())
    if n == 0:
        return GoodnessOfFit(0.0, 1.0, "exact")
    if np.any((t == 0) & (c > 0)):  # an image in a class the target rules out: impossible under the target
        return GoodnessOfFit(math.inf, 0.0, "exact")
    keep = t > 0
    c, t = c[keep], t[keep]
    expected = n * t
    x2 = float(np.sum((c - expected) ** 2 / expected))
    if c.size == 1:
        return GoodnessOfFit(0.0, 1.0, "exact")
    if math.comb(n + c.size - 1, c.size - 1) <= EXACT_LIMIT:
        outcomes = _compositions(n, c.size)
        logp = _log_pmf(outcomes, t)
        seen = _log_pmf(c, t)
        p = float(np.exp(logp[logp <= seen + 1e-7]).sum())  # ties within a relative 1e-7, as scipy's binomtest
        return GoodnessOfFit(x2, min(p, 1.0), "exact")
    if expected.min() >= MIN_EXPECTED:
        return GoodnessOfFit(x2, float(sps.chi2.sf(x2, c.size - 1)), "chi2")
    draws = np.random.default_rng(seed).multinomial(n, t, size=MONTE_CARLO_DRAWS)
    sims = np.sum((draws - expected) ** 2 / expected, axis=1)
    return GoodnessOfFit(x2, float((1 + np.sum(sims >= x2 - 1e-9)) / (1 + MONTE_CARLO_DRAWS)), "monte_carlo")


# ------------------------------------------------------------------------------- one profession's estimate


@dataclass(frozen=True)
class ClassEstimate:
    """Everything an audit reports about one attribute for one profession (see :func:`estimate`)."""

    classes: tuple[str, ...]
    counts: tuple[int, ...]
    n: int  # every image, unclear included
    n_unclear: int
    shares: tuple[float, ...] | None  # None when every image was unclear
    ci_low: tuple[float, ...]  # simultaneous intervals (``interval_method``)
    ci_high: tuple[float, ...]
    target: tuple[float, ...]
    delta: float | None
    p_value: float
    test: str  # "exact" | "chi2" | "monte_carlo"
    interval_method: str
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(counts: Sequence[int], target: Sequence[float], classes: Sequence[str] | None = None, *,
             n_unclear: int = 0, confidence: float = 0.95,
             method: IntervalMethod = "goodman") -> ClassEstimate:
    """Shares, simultaneous intervals, the goodness-of-fit test and Δ from one profession's class counts."""
    c = _counts(counts)
    t = check_target(target, c.size)
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(c.size))
    if len(names) != c.size:
        raise ValueError(f"{c.size} counts but {len(names)} class names")
    if n_unclear < 0:
        raise ValueError("n_unclear must be non-negative")
    p = shares(c)
    ci = simultaneous_intervals(c, confidence, method)
    test = goodness_of_fit(c, t)
    return ClassEstimate(
        classes=names, counts=tuple(int(x) for x in c), n=int(c.sum()) + n_unclear, n_unclear=n_unclear,
        shares=None if p is None else tuple(float(x) for x in p),
        ci_low=tuple(float(x) for x in ci[:, 0]), ci_high=tuple(float(x) for x in ci[:, 1]),
        target=tuple(float(x) for x in t), delta=delta(p, t), p_value=test.p_value, test=test.method,
        interval_method=method, confidence=confidence,
    )


def count_labels(labels: Sequence[str], classes: Sequence[str]) -> tuple[list[int], int]:
    """Counts per class (in ``classes`` order) and the number of other labels ("unclear")."""
    index = {name: i for i, name in enumerate(classes)}
    counts = [0] * len(classes)
    for label in labels:
        if label in index:
            counts[index[label]] += 1
    return counts, len(labels) - sum(counts)


# ---------------------------------------------------------------------------------------- intersections


@dataclass(frozen=True)
class IntersectionCell:
    """One cell of a joint table: ``flag`` is "ok", "empty" (0 images where ≥ 5 were expected) or "tiny"."""

    row: str
    col: str
    count: int
    expected: float  # n · t_row · t_col: what the target joint distribution puts here
    share: float | None  # None for "tiny" cells: too few images expected to read a share
    ci_low: float | None
    ci_high: float | None
    flag: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IntersectionTable:
    """Joint table of two attributes for one profession, simultaneous intervals over all cells."""

    row_attribute: str
    col_attribute: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    n: int  # images read in both attributes
    n_unclear: int  # images unclear in either attribute
    cells: tuple[IntersectionCell, ...]  # row-major
    delta: float | None  # Δ of the joint distribution against t_row ⊗ t_col
    min_expected: float
    confidence: float

    def cell(self, row: str, col: str) -> IntersectionCell:
        return self.cells[self.rows.index(row) * len(self.cols) + self.cols.index(col)]

    def to_dict(self) -> dict:
        return asdict(self)


def joint_counts(labels_a: Sequence[str], labels_b: Sequence[str], classes_a: Sequence[str],
                 classes_b: Sequence[str]) -> tuple[np.ndarray, int]:
    """Counts (len(classes_a) × len(classes_b)) of images read in both attributes, and how many were not."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"{len(labels_a)} labels for one attribute but {len(labels_b)} for the other; "
                         f"give one label per image for each")
    ia, ib = {c: i for i, c in enumerate(classes_a)}, {c: i for i, c in enumerate(classes_b)}
    table = np.zeros((len(classes_a), len(classes_b)), dtype=np.int64)
    unclear = 0
    for a, b in zip(labels_a, labels_b):
        if a in ia and b in ib:
            table[ia[a], ib[b]] += 1
        else:
            unclear += 1
    return table, unclear


def intersection_table(counts: np.ndarray, rows: Sequence[str], cols: Sequence[str], *,
                       row_attribute: str = "a", col_attribute: str = "b",
                       row_target: Sequence[float] | None = None, col_target: Sequence[float] | None = None,
                       n_unclear: int = 0, min_expected: float = MIN_EXPECTED,
                       confidence: float = 0.95, method: IntervalMethod = "goodman") -> IntersectionTable:
    """The joint table with flags (rule in the module docstring); targets default to uniform."""
    table = np.asarray(counts)
    if table.shape != (len(rows), len(cols)):
        raise ValueError(f"counts have shape {table.shape} but there are {len(rows)} rows and {len(cols)} columns")
    ta = check_target(row_target if row_target is not None else np.full(len(rows), 1 / len(rows)), len(rows))
    tb = check_target(col_target if col_target is not None else np.full(len(cols), 1 / len(cols)), len(cols))
    flat = _counts(table.reshape(-1))
    n = int(flat.sum())
    joint_target = np.outer(ta, tb).reshape(-1)
    ci = simultaneous_intervals(flat, confidence, method)
    cells = []
    for i, (count, t) in enumerate(zip(flat, joint_target)):
        expected = n * float(t)
        flag = "tiny" if expected < min_expected else ("empty" if count == 0 else "ok")
        readable = flag != "tiny"
        cells.append(IntersectionCell(
            row=rows[i // len(cols)], col=cols[i % len(cols)], count=int(count), expected=expected,
            share=float(count / n) if readable else None,
            ci_low=float(ci[i, 0]) if readable else None, ci_high=float(ci[i, 1]) if readable else None, flag=flag))
    return IntersectionTable(row_attribute, col_attribute, tuple(rows), tuple(cols), n, n_unclear, tuple(cells),
                             delta(shares(flat), joint_target), min_expected, confidence)
