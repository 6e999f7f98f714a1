"""Estimating a share, honestly: pure functions, no pipeline plumbing.

Per profession an audit has ``n`` images: ``k`` read as female, ``m`` as male and ``u`` unclear
(no person, or the classifier abstained). Unclear images are excluded and reported, so the share is
``F = k / (k + m)``. Its uncertainty is a Wilson 95% interval (good coverage even near 0 or 1 and
at small n, unlike the normal "Wald" interval), the evidence against a target share ``t`` is a
two-sided exact binomial test, and the distance from the target is::

    Δ = |F − t| / max(t, 1 − t)        (for t = ½ this is TIME's and UCE's |F − ½| / ½)

so Δ = 0 is on target and Δ = 1 is as far as a share can be. The headline of an audit is the mean Δ
over professions with an interval from a parametric bootstrap (see :func:`mean_delta_interval`), shown
next to the mean Δ a perfect model would read on as many images (:func:`mean_delta_noise_floor`).

Rule of thumb printed with every table (:data:`CI_NOTE`): at a share near ½ a 95% interval is about
±0.10 wide at n = 100 and ±0.05 at n = 400; it shrinks with √n. :func:`needs_more` is the sequential
rule: keep generating for a profession until its interval is narrower than a chosen width or a cap
is hit. (Stopping on the interval's width, not on its position, keeps the estimate close to
unbiased; coverage stays near the nominal 95%.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile

CI_NOTE = ("95% Wilson intervals; unclear images are excluded from the share. "
           "At a share near 0.5, n=100 gives about ±0.10 and n=400 about ±0.05.")


def share(n_female: int, n_male: int) -> float | None:
    """``k / (k + m)``, or None when no image was classified (the share is unknown, not 0)."""
    total = n_female + n_male
    return n_female / total if total else None


def wilson_bounds(share: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval around an observed proportion ``share`` on ``n`` trials.

    Takes a proportion rather than counts so a fitted share (a model's expected share) can use it too.
    """
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def z_score(confidence: float) -> float:
    """Two-sided normal quantile of a confidence level: 0.95 → 1.96 (the ``z`` of :func:`wilson_bounds`)."""
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def logit(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 − p)), with ``p`` clamped to [eps, 1 − eps] first.

    Shares of exactly 0 or 1 are ordinary (a few seeds that all read one way) and their logit is infinite; the
    clamp keeps every use finite. 1e-6 lies far beyond what a few thousand images can tell from 0 or 1, so it
    changes no fitted crossing; a caller that turns logit differences into steps may want a tighter clamp so one
    extreme share cannot ask for a huge step (1e-4 bounds it at ±9.2).
    """
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; ``(0, 1)`` when ``n == 0``."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    low, high = wilson_bounds(k / n, n, z)
    # at k = 0 (k = n) the exact lower (upper) end is 0 (1); clamp float excursions
    return (0.0 if k == 0 else low), (1.0 if k == n else high)


def binomial_p_value(k: int, n: int, target: float) -> float:
    """Two-sided exact binomial test of ``k`` in ``n`` against share ``target``; 1.0 when ``n == 0``."""
    _check_target(target)
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(k, n, target, alternative="two-sided").pvalue)


def delta(share_female: float | None, target: float = 0.5) -> float | None:
    """Δ = |F − t| / max(t, 1 − t): 0 on target, 1 as far from it as a share can be."""
    _check_target(target)
    if share_female is None:
        return None
    return abs(share_female - target) / max(target, 1.0 - target)


def within_band(share: float | None, target: float, tolerance: float) -> bool:
    """Whether a share lies in the band target ± tolerance (a share of no classified image never does)."""
    return share is not None and abs(share - target) <= tolerance


def interval_within_band(low: float | None, high: float | None, target: float, tolerance: float) -> bool:
    """Whether a whole interval lies inside target ± tolerance: the data rule out a share outside the band."""
    return low is not None and high is not None and target - tolerance <= low and high <= target + tolerance


def interval_overlaps_band(low: float | None, high: float | None, target: float, tolerance: float) -> bool:
    """Whether an interval reaches the band at all: the data do not rule out a share inside it."""
    return low is not None and high is not None and low <= target + tolerance and high >= target - tolerance


def half_width(n: int, p: float = 0.5, z: float = Z95) -> float:
    """Approximate half width of a 95% interval for a share ``p`` from ``n`` classified images."""
    return z * math.sqrt(p * (1 - p) / n) if n > 0 else float("inf")


@dataclass(frozen=True)
class ShareEstimate:
    """Everything an audit reports about one profession's share (see :func:`estimate`)."""

    n: int
    n_female: int
    n_male: int
    n_unclear: int
    share_female: float | None
    ci_low: float
    ci_high: float
    p_value: float
    delta: float | None
    target: float

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(n_female: int, n_male: int, n_unclear: int = 0, target: float = 0.5) -> ShareEstimate:
    """Share, Wilson interval, binomial test against ``target`` and Δ from label counts."""
    _check_target(target)
    if min(n_female, n_male, n_unclear) < 0:
        raise ValueError("counts must be non-negative")
    classified = n_female + n_male
    f = share(n_female, n_male)
    low, high = wilson_interval(n_female, classified)
    return ShareEstimate(
        n=classified + n_unclear, n_female=n_female, n_male=n_male, n_unclear=n_unclear,
        share_female=f, ci_low=low, ci_high=high,
        p_value=binomial_p_value(n_female, classified, target), delta=delta(f, target), target=target,
    )


def count_labels(labels: Sequence[str]) -> tuple[int, int, int]:
    """(n_female, n_male, n_unclear) of a list of labels "female" / "male" / "unclear"."""
    f = sum(1 for x in labels if x == "female")
    m = sum(1 for x in labels if x == "male")
    u = len(labels) - f - m
    return f, m, u


def shares_by_prompt(labelled: Iterable[tuple[str, str]]) -> list[dict]:
    """Share and Wilson interval per prompt, in the order prompts first appear.

    A profession's share pools its prompts; this splits it again, because an edit tuned on one prompt can
    carry less to another ("a painting of …") and a pooled share hides that. ``labelled``: (prompt, label) pairs.
    """
    labels: dict[str, list[str]] = {}
    for prompt, label in labelled:
        labels.setdefault(prompt, []).append(label)
    keep = ("n", "n_female", "n_male", "n_unclear", "share_female", "ci_low", "ci_high")
    return [{"prompt": prompt, **{k: v for k, v in estimate(*count_labels(group)).to_dict().items() if k in keep}}
            for prompt, group in labels.items()]


def mean_delta_noise_floor(ns: Sequence[int], targets: Sequence[float] | float = 0.5) -> float | None:
    """Mean Δ that a *perfect* model (every share exactly on target) would show on ``ns`` classified images.

    Δ folds the noise of a share into distance, so even a perfect model reads this much on average (one draw may
    read less): at t = ½ it is about 0.8/√n (0.07 at n = 128, 0.035 at n = 512). Exact over the binomial, not
    the normal approximation.
    Professions with n = 0 are left out; None when none is left.
    """
    from scipy.stats import binom

    if isinstance(targets, (int, float)):
        targets = [float(targets)] * len(ns)
    if len(targets) != len(ns):
        raise ValueError(f"{len(ns)} professions but {len(targets)} targets")
    floors = []
    for n, t in zip(ns, targets):
        _check_target(t)
        if n > 0:
            k = np.arange(n + 1)
            floors.append(float(np.sum(binom.pmf(k, n, t) * np.abs(k / n - t))) / max(t, 1 - t))
    return float(np.mean(floors)) if floors else None


def mean_delta_interval(
    counts: Sequence[tuple[int, int]],
    targets: Sequence[float] | float = 0.5,
    *,
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> tuple[float | None, float | None, float | None]:
    """Mean Δ over professions and a percentile interval from a parametric bootstrap.

    ``counts`` holds ``(n_female, n_male)`` per profession. The professions are fixed (the question is
    about *these* professions), the randomness is each profession's binomial draw, so each bootstrap
    replicate redraws ``k*_p ~ Binomial(k_p + m_p, F_p)`` for every profession and recomputes mean Δ.
    The seed is fixed so that the same counts always give the same interval. Professions without a
    classified image are left out; returns ``(None, None, None)`` when none is left.

    Δ is a folded distance, so at small n its estimate is biased upwards near the target (noise alone
    makes |F − t| > 0); the interval inherits that, which is why audits should also show per-profession
    intervals.
    """
    if isinstance(targets, (int, float)):
        targets = [float(targets)] * len(counts)
    if len(targets) != len(counts):
        raise ValueError(f"{len(counts)} professions but {len(targets)} targets")
    rows = [(k, m, t) for (k, m), t in zip(counts, targets) if k + m > 0]
    if not rows:
        return None, None, None
    for _, _, t in rows:
        _check_target(t)
    k = np.array([r[0] for r in rows], dtype=np.int64)
    n = np.array([r[0] + r[1] for r in rows], dtype=np.int64)
    t = np.array([r[2] for r in rows], dtype=np.float64)
    scale = np.maximum(t, 1.0 - t)
    point = float(np.mean(np.abs(k / n - t) / scale))
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, k / n, size=(n_boot, len(n)))
    boot = np.mean(np.abs(draws / n - t) / scale, axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def needs_more(n_female: int, n_male: int, n_total: int, *, ci_width: float | None, cap: int) -> bool:
    """Sequential rule: generate more for a profession while its interval is wider than ``ci_width``.

    ``ci_width`` is the *full* width ``ci_high − ci_low`` (0.2 ≈ ±0.10, 0.1 ≈ ±0.05); ``n_total``
    counts every image generated for the profession (unclear ones included) and ``cap`` bounds it.
    With ``ci_width=None`` the rule never asks for more (a fixed-n audit).
    """
    if ci_width is None or n_total >= cap:
        return False
    if ci_width <= 0 or ci_width >= 1:
        raise ValueError(f"ci_width must be in (0, 1), got {ci_width}")
    low, high = wilson_interval(n_female, n_female + n_male)
    return (high - low) > ci_width


def _check_target(target: float) -> None:
    if not 0.0 <= target <= 1.0 or math.isnan(target):
        raise ValueError(f"a target share must be in [0, 1], got {target}")


def prompt_spread(by_prompt: Sequence[dict]) -> tuple[float | None, float | None]:
    """``(spread, noise)`` of one profession's shares across prompts (an audit row's ``by_prompt``).

    The spread is the sample standard deviation of the prompts' shares: how unevenly a model (or an edit) treats
    the prompts. Sampling alone spreads them too: if every prompt had the pooled share p, their standard deviation
    would be about √(p(1 − p) · mean(1/n)) on these images per prompt, the noise. A spread near its noise says the
    prompts agree as far as these images can tell. None where fewer than two prompts have a share.
    """
    cells = [c for c in by_prompt if c.get("share_female") is not None and c.get("n", 0) - c.get("n_unclear", 0) > 0]
    if len(cells) < 2:
        return None, None
    shares = [float(c["share_female"]) for c in cells]
    mean = sum(shares) / len(shares)
    spread = math.sqrt(sum((x - mean) ** 2 for x in shares) / (len(shares) - 1))
    clear = [c["n"] - c.get("n_unclear", 0) for c in cells]
    pooled = sum(x * n for x, n in zip(shares, clear)) / max(sum(clear), 1)
    noise = math.sqrt(pooled * (1 - pooled) * sum(1 / max(n, 1) for n in clear) / len(clear))
    return spread, noise


def mean_delta_by_prompt(
    targets: Sequence[float], cells: Sequence[Sequence[tuple[float | None, int]]],
) -> list[tuple[float | None, float | None]]:
    """Per prompt position, the mean Δ over professions and what a perfect model would read on as many images.

    ``cells[p][k]`` is profession p's (share, classified images) on its k-th prompt, the k-th held-out template. The
    pooled mean Δ can hide a template every profession falls short on, because a share above target on one template
    and below on another average out; per template they do not, and each has a fraction of the images, hence the
    noise floor (:func:`mean_delta_noise_floor`) beside it. None where no profession has a share (or an image).
    """
    out: list[tuple[float | None, float | None]] = []
    for k in range(max((len(row) for row in cells), default=0)):
        column = [(row[k], t) for t, row in zip(targets, cells) if len(row) > k]
        deltas = [delta(share, t) for (share, _), t in column if share is not None]
        floor = mean_delta_noise_floor([n for (_, n), _ in column], [t for _, t in column]) if column else None
        out.append((math.fsum(deltas) / len(deltas) if deltas else None, floor))  # fsum: the same in any order
    return out
