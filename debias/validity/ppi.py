"""A profession's female share when the classifier errs: prediction-powered inference (PPI / PPI++).

An audit reads every image's gender with CLIP, so its share inherits CLIP's mistakes: a classifier that
calls 20% of women "male" moves the share by 0.2 × share, and the Wilson interval around it (which only
knows about sampling noise) covers the wrong number. A person labelling a random subset of the images
fixes that. Prediction-powered inference (Angelopoulos, Bates, Fannjiang, Jordan, Zrnic, *Science* 2023)
uses the classifier on all N images and the human labels on the n labelled ones to *correct* the
classifier's estimate: the labelled images measure how far the classifier is off (the "rectifier"), so
the interval is valid whatever the classifier's errors, and narrower than a human-only interval when the
classifier is good. PPI++ (Angelopoulos, Duchi, Zrnic 2024) weighs the classifier by λ ∈ [0, 1] chosen
from the data, so a useless classifier cannot make the interval (asymptotically) wider than the human-only
one (λ = 0 is the classical estimate from the human labels alone, λ = 1 is plain PPI).

The share is a ratio, ``θ = P(female) / P(female or male)``, because images a person reads as unclear
(or with no person in them) are excluded, as in the audit. With ``F = 1[female]`` and ``G = 1[female or
male]`` (human labels) and ``F̂, Ĝ`` the same indicators of the classifier's label, θ solves the linear
estimating equation ``E[F − θ G] = 0``, and PPI for it is, in closed form::

    θ̂(λ) = (λ·mean_u(F̂) + mean_l(F − λF̂)) / (λ·mean_u(Ĝ) + mean_l(G − λĜ))

(``mean_u`` over the unlabelled images, ``mean_l`` over the labelled ones). Its variance follows from the
sandwich rule: ``(λ²·var_u(F̂ − θĜ)/N + var_l((F − θG) − λ(F̂ − θĜ))/n) / b²`` with ``b`` the denominator.
The papers' interval is θ̂ ± z·SE (Wald; ``interval="wald"``). Like Wald's interval for a proportion, it
undercovers when few images are female or male (an engineer share of 0.05 with λ near 0: 88% coverage in
``benchmarks/validity.py``), so the default ``interval="score"`` inverts the estimating equation instead,
keeping every θ with ``(num − θ·den)² ≤ z²·s²(θ)`` where the human part of ``s²`` is the variance a share θ
implies, ``mean(G)·θ(1 − θ)``: Wilson's idea, and exactly Wilson's interval at λ = 0 (95% there).
**How "unclear" classifier outputs are treated:** an image the classifier abstains on has ``F̂ = Ĝ = 0``,
the same as a person's unclear or no-person label; nothing is dropped, and the labelled images measure
how often the classifier abstains on images a person can read (so abstentions cannot bias the share).
When nobody is ever unclear (``G = Ĝ = 1``) the Wald form is exactly ``ppi_py.ppi_mean_ci`` (same λ,
same variance conventions), which the tests check.

The labelled images must be a uniformly random subset of the profession's images (``debias label``
serves them in a seeded random order); the unlabelled set is the images *without* a human label, so the
two are independent samples of the model's images, as PPI assumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from debias.stats.binary import wilson_interval

Label = str | int | bool | None  # "female" / "male" / anything else; or 1 (female) / 0 (male) / None


@dataclass(frozen=True)
class ShareInterval:
    """A share with its interval and what it was computed from.

    ``method``: ``"ppi++"`` (power-tuned λ), ``"ppi"`` (λ given), ``"classical"`` (λ = 0, human labels only),
    ``"human-wilson"`` or ``"classifier-wilson"``; ``interval``: ``"score"``, ``"wald"`` or ``"wilson"``.
    ``estimate`` is None (and the interval [0, 1]) when the data say nothing about the share (no image read
    as female or male).
    """

    estimate: float | None
    ci_low: float
    ci_high: float
    n_labelled: int
    n_unlabelled: int
    method: str
    lam: float | None = None
    level: float = 0.95
    interval: str = "wilson"

    @property
    def width(self) -> float:
        return self.ci_high - self.ci_low

    def covers(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high

    def to_dict(self) -> dict:
        return asdict(self)


def z_value(level: float) -> float:
    """Two-sided normal quantile for a ``level`` interval (1.96 at 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def indicators(labels: Sequence[Label]) -> tuple[np.ndarray, np.ndarray]:
    """``(F, G)``: 1.0 where a label is female, and where it is female or male.

    Accepts the audit's strings ("female", "male", "unclear", "no_person") or numbers (1 female, 0 male);
    anything else (None, "unclear", "no_person", NaN) is an image whose gender was not read.
    """
    if isinstance(labels, np.ndarray) and labels.dtype.kind == "U":  # fast path for repeated draws
        female = labels == "female"
        return female.astype(float), (female | (labels == "male")).astype(float)
    f = np.zeros(len(labels))
    g = np.zeros(len(labels))
    for i, x in enumerate(labels):
        if isinstance(x, str):
            f[i], g[i] = x == "female", x in ("female", "male")
        elif x is not None and not (isinstance(x, float) and math.isnan(x)):
            if x not in (0, 1):
                raise ValueError(f"label {i} is {x!r}; numeric labels are 1 (female) or 0 (male), None for unclear")
            f[i], g[i] = float(x == 1), 1.0
    return f, g


def _ratio(lam: float, f, g, fh, gh, fu, gu) -> tuple[float, float]:
    """θ̂(λ) and its denominator b (see the module docstring); θ̂ is NaN when b <= 0."""
    unl = (lam * fu.mean(), lam * gu.mean()) if len(fu) else (0.0, 0.0)
    num = unl[0] + (f - lam * fh).mean()
    den = unl[1] + (g - lam * gh).mean()
    return (num / den if den > 0 else math.nan), den


def _tuned_lambda(theta: float, f, g, fh, gh, fu, gu) -> float:
    """PPI++'s variance-minimising λ, clipped to [0, 1], at the λ = 1 estimate ``theta``.

    ``λ* = cov_l(ψ, ψ̂) / ((1 + n/N)·var(ψ̂))`` with ``ψ = F − θG``, ``ψ̂ = F̂ − θĜ``; the covariance over the
    labelled images (divided by n) and the variance over all images (divided by n + N − 1), as ``ppi_py`` does.
    """
    n, big_n = len(f), len(fu)
    psi, psi_hat, psi_u = f - theta * g, fh - theta * gh, fu - theta * gu
    cov = float(np.mean((psi - psi.mean()) * (psi_hat - psi_hat.mean())))
    var = float(np.var(np.concatenate([psi_hat, psi_u]), ddof=1))
    if var <= 0:
        return 1.0  # a constant classifier: every λ gives the same estimate
    return float(np.clip(cov / ((1.0 + n / big_n) * var), 0.0, 1.0))


def _moments(x, y) -> float:
    """Covariance of two arrays, divided by their length (0 for an empty pair)."""
    return float(np.mean((x - x.mean()) * (y - y.mean()))) if len(x) else 0.0


def _score_bounds(lam: float, z: float, f, g, fh, gh, fu, gu) -> tuple[float, float] | None:
    """The score-type interval: every θ with ``(num − θ·den)² ≤ z²·s²(θ)``, or None when that is not an interval.

    ``s²(θ)`` is the variance of the estimating function at θ; its human part ``var(F − θG)`` is taken *at θ*
    (``mean(G)·θ(1 − θ)``, the variance a share θ implies), the classifier parts from the data. Every term is
    quadratic in θ, so the set is the solution of a quadratic inequality. At λ = 0 with nobody unclear this is
    Wilson's interval exactly; like Wilson it keeps its coverage near 0 and 1 and at small n, where the
    Wald form (``interval="wald"``) undercovers.
    """
    n, big_n = len(f), len(fu)
    num = (lam * fu.mean() if big_n else 0.0) + (f - lam * fh).mean()
    den = (lam * gu.mean() if big_n else 0.0) + (g - lam * gh).mean()
    pg = g.mean()
    s0 = (-2 * lam * _moments(f, fh) + lam ** 2 * np.var(fh)) / n
    s1 = (pg + 2 * lam * (_moments(f, gh) + _moments(g, fh)) - 2 * lam ** 2 * _moments(fh, gh)) / n
    s2 = (-pg - 2 * lam * _moments(g, gh) + lam ** 2 * np.var(gh)) / n
    if big_n:
        s0 += lam ** 2 * np.var(fu) / big_n
        s1 -= 2 * lam ** 2 * _moments(fu, gu) / big_n
        s2 += lam ** 2 * np.var(gu) / big_n
    z2 = z * z
    a, b, c = den * den - z2 * s2, -2 * num * den - z2 * s1, num * num - z2 * s0
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def ppi_share(
    human: Sequence[Label],
    predicted: Sequence[Label],
    predicted_unlabelled: Sequence[Label],
    *,
    level: float = 0.95,
    lam: float | None = None,
    interval: str = "score",
) -> ShareInterval:
    """Prediction-powered female share and its interval.

    ``human`` and ``predicted``: the person's and the classifier's labels of the n labelled images (same
    order); ``predicted_unlabelled``: the classifier's labels of the N images nobody labelled. ``lam=None``
    tunes λ (PPI++), ``lam=1`` is plain PPI, ``lam=0`` ignores the classifier. ``interval="score"`` (default)
    inverts the estimating equation with its variance taken at each candidate share, Wilson-style (see
    :func:`_score_bounds`); ``"wald"`` is the estimate ± z·SE of the PPI papers and ``ppi_py``. Both are
    clipped to [0, 1]; with fewer than two labelled images the interval is [0, 1].
    """
    if len(human) != len(predicted):
        raise ValueError(f"{len(human)} human labels but {len(predicted)} classifier labels of the same images")
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1] (or None to tune it), got {lam}")
    if interval not in ("score", "wald"):
        raise ValueError(f"interval must be 'score' or 'wald', got {interval!r}")
    f, g = indicators(human)
    fh, gh = indicators(predicted)
    fu, gu = indicators(predicted_unlabelled)
    n, big_n = len(f), len(fu)
    method = "ppi++" if lam is None else {0.0: "classical", 1.0: "ppi"}.get(float(lam), "ppi")
    if n == 0:
        return ShareInterval(None, 0.0, 1.0, 0, big_n, method, lam, level, interval)
    if lam is None and big_n == 0:
        lam = 0.0  # every image is labelled: the classifier adds nothing
    elif lam is None:
        theta1, _ = _ratio(1.0, f, g, fh, gh, fu, gu)
        lam = _tuned_lambda(theta1, f, g, fh, gh, fu, gu) if not math.isnan(theta1) else 1.0
    theta, den = _ratio(lam, f, g, fh, gh, fu, gu)
    if math.isnan(theta) or n < 2:
        return ShareInterval(None if math.isnan(theta) else float(theta), 0.0, 1.0, n, big_n, method, float(lam),
                             level, interval)
    z = z_value(level)
    bounds = _score_bounds(lam, z, f, g, fh, gh, fu, gu) if interval == "score" else None
    used = "score" if bounds is not None else "wald"
    if bounds is None:  # Wald: the estimate ± z·SE (also the fallback when the score set is not an interval)
        var_l = np.var((f - theta * g) - lam * (fh - theta * gh)) / n
        var_u = np.var(lam * (fu - theta * gu)) / big_n if big_n else 0.0
        half = z * math.sqrt(var_l + var_u) / den
        bounds = (theta - half, theta + half)
    low, high = min(bounds[0], theta), max(bounds[1], theta)
    return ShareInterval(float(theta), float(max(0.0, low)), float(min(1.0, high)), n, big_n, method, float(lam),
                         level, used)


def ppi_share_of_images(predicted: dict[str, Label], human: dict[str, Label], *, level: float = 0.95,
                        lam: float | None = None, interval: str = "score") -> ShareInterval:
    """:func:`ppi_share` from per-image dicts: the classifier's label of every image of a profession (by image
    key) and the human label of those a person labelled. Human labels of images not in ``predicted`` are an
    error (they belong to another profession or run)."""
    stray = [k for k in human if k not in predicted]
    if stray:
        raise ValueError(f"{len(stray)} labelled image(s) have no classifier label, e.g. {stray[0]!r}; "
                         "pass the classifier's labels of every image of the profession")
    keys = list(human)
    unlabelled = [predicted[k] for k in predicted if k not in human]
    return ppi_share([human[k] for k in keys], [predicted[k] for k in keys], unlabelled, level=level, lam=lam,
                     interval=interval)


def wilson_share(labels: Sequence[Label], *, method: str, labelled: bool) -> ShareInterval:
    """Female share of ``labels`` with the 95% Wilson interval (``debias.stats.binary``), unclear ones excluded."""
    f, g = indicators(labels)
    k, m = int(f.sum()), int(g.sum())
    low, high = wilson_interval(k, m)
    n = len(labels)
    return ShareInterval(k / m if m else None, low, high, n if labelled else 0, 0 if labelled else n, method)


def human_share(human: Sequence[Label]) -> ShareInterval:
    """The share from the human labels alone (Wilson): valid, but as wide as n labels make it."""
    return wilson_share(human, method="human-wilson", labelled=True)


def classifier_share(predicted: Sequence[Label]) -> ShareInterval:
    """The share from the classifier alone (Wilson), as the audit reports it: narrow, but blind to the
    classifier's errors."""
    return wilson_share(predicted, method="classifier-wilson", labelled=False)


def wilson_half_width(rate: float, n: int, z: float) -> float:
    """Half the width of a Wilson interval at an observed ``rate`` on ``n`` trials (largest at rate ½)."""
    z2 = z * z
    return z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)


def labels_needed(half_width: float = 0.1, *, error_rate: float = 0.5, level: float = 0.95) -> int:
    """Labels (of images a person reads as female or male) that pin the classifier's error rate to ±half_width.

    The error rate's interval is Wilson's; its half width is largest at a rate of ½, so the default
    ``error_rate=0.5`` is the worst case and holds whatever the classifier does: 93 labels for ±0.10 and
    381 for ±0.05 at 95%. A smaller anticipated rate needs fewer (``error_rate=0.1``: 37 for ±0.10).
    """
    if not 0.0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width}")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    z = z_value(level)
    rate = min(max(error_rate, 0.0), 1.0)
    n = 1
    while wilson_half_width(rate, n, z) > half_width:  # the half width falls monotonically with n
        n = n * 2
    low, high = n // 2, n
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (mid, high) if wilson_half_width(rate, mid, z) > half_width else (low, mid)
    return high


LABELS_FOR_10 = 93   # labels_needed(0.10): the default sample per profession
LABELS_FOR_05 = 381  # labels_needed(0.05)
