"""The monotone logistic curve of the λ search: fit, intercept refit, seed table and cluster bootstrap — pure math.

The search (:mod:`debias.search`) models the female share as ``logit P(female | x) = a + b·(x − center)`` in
``x = log λ_rel`` and reads its answer off this curve. Two things shape the code here:

* **Monotone.** The edit pushes the share one way, so the slope's sign is fixed by the direction of the edit;
  where the data argue for the other sign the constrained optimum is the flat fit ``b = 0``.
* **Seeds, not images.** One seed's labels at different λs share their starting noise, so the interval resamples
  seeds with all their evaluations (:func:`bootstrap_interval`), and the fits run on a seeds × points table
  (:func:`seed_table`) so that thousands of bootstrap replicates are one batched Newton solve.

Evaluations are anything with ``log_lambda_relative``, ``seeds`` and ``labels`` (:class:`debias.search_records.Evaluation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import numpy as np

from debias.stats import logit, wilson_bounds, z_score

if TYPE_CHECKING:
    from debias.search_records import Evaluation

# Weak Gaussian priors of the logistic fit (logit units; slope per unit of log λ). They only matter when the
# data separate perfectly (a handful of seeds, a sharp transition), where the plain MLE runs to infinity.
PRIOR_SD_INTERCEPT = 10.0
PRIOR_SD_SLOPE = 20.0


def sigmoid(z):
    """1 / (1 + e^−z), elementwise; ``z`` is clipped to ±40 so separated fits cannot overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


@dataclass(frozen=True)
class LogisticFit:
    """logit P(female | x) = a + b·(x − center), fitted by penalised maximum likelihood."""

    a: float
    b: float
    center: float

    def share(self, x: float) -> float:
        return float(sigmoid(self.a + self.b * (x - self.center)))

    def crossing(self, target: float) -> Optional[float]:
        """x where the fitted share equals ``target`` (None for a flat fit)."""
        if abs(self.b) < 1e-9:
            return None
        return self.center + (logit(target) - self.a) / self.b


def fit_logistic_batch(
    x: np.ndarray, female: np.ndarray, clear: np.ndarray, direction: int, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit many logistic curves at once on shared design points (used by the bootstrap).

    ``x`` has shape (P,) (distinct log λ points); ``female`` and ``clear`` have shape (B, P): counts of
    female and of clear (female + male) images per point for B data sets. The slope's sign is fixed by
    ``direction`` (+1: share rises with log λ); where the unconstrained optimum has the wrong sign the
    constrained optimum is the flat fit b = 0. Returns (a, b, center).
    """
    x = np.asarray(x, dtype=float)
    female = np.atleast_2d(np.asarray(female, dtype=float))
    clear = np.atleast_2d(np.asarray(clear, dtype=float))
    weights = clear.sum(axis=0)
    center = float((weights @ x) / weights.sum()) if weights.sum() > 0 else float(x.mean())
    xc = x - center
    n_sets = female.shape[0]
    params = np.zeros((n_sets, 2))
    prior = np.array([1 / PRIOR_SD_INTERCEPT**2, 1 / PRIOR_SD_SLOPE**2])
    for _ in range(iterations):
        p = sigmoid(params[:, :1] + params[:, 1:] * xc)  # (B, P)
        resid = female - clear * p
        grad = np.stack([resid.sum(1), (resid * xc).sum(1)], axis=1) - params * prior
        w = clear * p * (1 - p)
        h00 = w.sum(1) + prior[0]
        h01 = (w * xc).sum(1)
        h11 = (w * xc * xc).sum(1) + prior[1]
        det = h00 * h11 - h01 * h01
        step = np.stack([(h11 * grad[:, 0] - h01 * grad[:, 1]) / det, (h00 * grad[:, 1] - h01 * grad[:, 0]) / det], axis=1)
        step = np.clip(step, -5.0, 5.0)  # damped Newton: separated data would otherwise jump far
        params += step
        if np.max(np.abs(step)) < 1e-8:
            break
    wrong = params[:, 1] * direction < 0
    if np.any(wrong):  # monotone constraint binds: flat fit, intercept from the pooled share (same prior)
        params[wrong, 1] = 0.0
        for _ in range(iterations):
            a = params[wrong, 0]
            p = sigmoid(a)
            n_f = female[wrong].sum(1)
            n_c = clear[wrong].sum(1)
            g = n_f - n_c * p - a * prior[0]
            h = n_c * p * (1 - p) + prior[0]
            params[wrong, 0] = a + np.clip(g / h, -5.0, 5.0)
    return params[:, 0], params[:, 1], center


def fit_intercept(x: Sequence[float], female: Sequence[float], clear: Sequence[float], slope: float,
                  center: float, iterations: int = 50) -> float:
    """Intercept ``a`` of logit P(female | x) = a + slope·(x − center), the slope held fixed (maximum likelihood).

    For re-measurements of one curve at a few points after its slope is known (the joint edit's rounds):
    one parameter from every image at every point, instead of trusting the last point alone.
    """
    x = np.asarray(x, dtype=float) - center
    female, clear = np.asarray(female, dtype=float), np.asarray(clear, dtype=float)
    a = 0.0
    for _ in range(iterations):
        p = sigmoid(a + slope * x)
        grad = float((female - clear * p).sum()) - a / PRIOR_SD_INTERCEPT**2
        hess = float((clear * p * (1 - p)).sum()) + 1 / PRIOR_SD_INTERCEPT**2
        step = float(np.clip(grad / hess, -5.0, 5.0))
        a += step
        if abs(step) < 1e-10:
            break
    return a


class SeedTable(NamedTuple):
    """Evaluations as counts per (seed, point): the unit the bootstrap resamples is a row."""

    points: np.ndarray  # (P,) distinct finite log λ_rel, ascending
    seeds: list[int]  # (S,) every seed seen at one of the points, ascending
    female: np.ndarray  # (S, P) images read female
    clear: np.ndarray  # (S, P) images read female or male


def seed_table(evaluations: Sequence["Evaluation"], window: tuple[float, float]) -> SeedTable:
    """The finite points inside ``window`` (the unedited reference is left out) as a seeds × points table."""
    lo, hi = window
    points = sorted({e.log_lambda_relative for e in evaluations
                     if math.isfinite(e.log_lambda_relative) and lo - 1e-12 <= e.log_lambda_relative <= hi + 1e-12})
    seeds = sorted({s for e in evaluations if e.log_lambda_relative in points for s in e.seeds})
    p_index = {x: i for i, x in enumerate(points)}
    s_index = {s: i for i, s in enumerate(seeds)}
    female = np.zeros((len(seeds), len(points)))
    clear = np.zeros((len(seeds), len(points)))
    for e in evaluations:
        if e.log_lambda_relative not in p_index:
            continue
        j = p_index[e.log_lambda_relative]
        for s, label in zip(e.seeds, e.labels):
            i = s_index[s]
            female[i, j] += label == "female"
            clear[i, j] += label in ("female", "male")
    return SeedTable(np.array(points), seeds, female, clear)


def fit_window(evaluations: Sequence["Evaluation"], window: tuple[float, float], direction: int) -> Optional[LogisticFit]:
    """One monotone fit on every image inside ``window`` (None when there is no clear image to fit)."""
    xs, _, female, clear = seed_table(evaluations, window)
    if len(xs) == 0 or clear.sum() == 0:
        return None
    a, b, center = fit_logistic_batch(xs, female.sum(0), clear.sum(0), direction)
    return LogisticFit(float(a[0]), float(b[0]), center)


def bootstrap_interval(
    evaluations: Sequence["Evaluation"], window: tuple[float, float], direction: int, x: float,
    *, confidence: float = 0.95, n_bootstrap: int = 400, rng: np.random.Generator,
) -> tuple[float, float]:
    """Percentile interval of the fitted share at ``x``, resampling seeds (clusters) with replacement."""
    xs, seeds, female, clear = seed_table(evaluations, window)
    n = len(seeds)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(float)  # (B, S)
    a, b, center = fit_logistic_batch(xs, weights @ female, weights @ clear, direction)
    shares = sigmoid(a + b * (x - center))
    alpha = (1 - confidence) / 2
    lo, hi = float(np.quantile(shares, alpha)), float(np.quantile(shares, 1 - alpha))
    # No design knows F(x) better than seeing every one of its seeds at x itself, so the interval is never
    # narrower than a Wilson interval with that many seeds (this also guards the percentile bootstrap, which
    # is too narrow when there are only a few clusters).
    a0, b0, c0 = fit_logistic_batch(xs, female.sum(0), clear.sum(0), direction)
    n_clear = int((clear.sum(1) > 0).sum())
    w_lo, w_hi = wilson_bounds(float(sigmoid(a0[0] + b0[0] * (x - c0))), n_clear, z_score(confidence))
    return min(lo, w_lo), max(hi, w_hi)
