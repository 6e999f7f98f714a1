"""How class shares answer an edit, pooled over every profession and every image a fix has made — pure math.

A fix edits each profession towards destinations, one per class it needs more of ("a male nurse"; "a nurse with
dark skin"). What the images see of the whole edit M is how far it carries the profession's own token rows C
towards each destination's rows C*_c, the **reach** (a number per class, computed from matrices alone, no
images)::

    ρ_c = ⟨(M − I) C, C*_c − C⟩ / ‖C*_c − C‖²        (0: untouched; 1: the rows sit on the destination)

The shares follow a multinomial logit in the reach::

    P(class c | profession p, edit, seed block b) = softmax_c(a_pc + κ_p ρ_pc + δ_bc)

with a free intercept per profession and class (a_p,0 = 0: the unedited shares) and one slope per profession,
κ_p = exp(μ + u_p), drawn towards the slope all professions share (u_p ~ N(0, τ²)). δ_b is what one block of
seeds leans: a fix measures every profession of a round on the same seeds (common random numbers across
professions), and a seed's starting noise decides much of what the image shows whatever the prompt says, so a round
whose seeds lean female moves every profession the same way. With all professions in one fit that common move is
told apart from the edit's, which moves professions its own way each; without it, the next round would chase it
(seen on the built-in model: three rounds read every profession 0.1 high, then 0.1 low). Predictions are for a
new block (δ = 0): the seeds the after audit will draw. Gender is k = 2: its model
is a logistic curve of the share in ρ_female − ρ_male. Because the reach is measured under the joint edit, the
other professions' edits (cross-effects) enter each profession's model where they act, and because every image
of every round enters one fit, a strength moves only as far as the pooled data support: one round of 64 images
cannot pull a slope that seven other professions and earlier rounds pin down.

This module fits the model (:func:`fit_pooled`, penalised maximum likelihood with a Laplace covariance) and says
what reach each profession needs (:meth:`PooledFit.reach_goals`) and what share it expects there, with an interval
(:meth:`PooledFit.predict`). Turning reach into strengths is the solver's job (:mod:`debias.fixing.engine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

# Priors, in logit units. The shared slope, known to a factor e: the fits on the built-in worlds find 2.6-5 (log-odds
# per unit of reach; gender, skin, age and crossed). The prior sits above them on purpose: the first round, which has
# only the prior, then asks for less reach than needed and undershoots, the safe side (an overshoot is an edit
# stronger than it had to be); its images pin the slope for the next round.
PRIOR_SLOPE = 6.0
PRIOR_SD_LOG_SLOPE = 1.0
# How far one profession's slope may differ from the shared one (log scale, sd): a factor 1.6 is one sd.
PRIOR_SD_SLOPE_DEVIATION = 0.5
PRIOR_SD_INTERCEPT = 10.0  # only matters when a class was never seen
# What a block of 64-128 seeds leans, in logit: a seed's own lean is large (on the built-in model the per-seed count of
# "female" images over 8 professions has 4× the variance of independent draws), a block's mean of it about 0.2-0.4.
PRIOR_SD_BLOCK = 0.3


@dataclass(frozen=True)
class Observation:
    """Images of one profession under one edit: the reach per class, the images read per class, and the block of
    seeds they were drawn with (the same block for every profession of a round)."""

    reach: tuple[float, ...]
    counts: tuple[int, ...]
    block: int = 0


@dataclass(frozen=True)
class PooledFit:
    """The fitted model: ``intercepts[p]`` (k values, the first 0), ``slopes[p]`` and the parameters' covariance."""

    intercepts: np.ndarray  # (P, k)
    log_shared_slope: float
    deviations: np.ndarray  # (P,)
    block_effects: np.ndarray  # (B, k): what each block of seeds leans (the first class 0), in the blocks' order
    covariance: np.ndarray  # of the free parameters, in _unpack's order
    k: int

    @property
    def slopes(self) -> np.ndarray:
        return np.exp(self.log_shared_slope + self.deviations)

    @property
    def shared_slope(self) -> float:
        return float(math.exp(self.log_shared_slope))

    def shares(self, p: int, reach: Sequence[float]) -> np.ndarray:
        """The class shares the model expects for profession ``p`` at ``reach``."""
        return _softmax(self.intercepts[p] + self.slopes[p] * np.asarray(reach, dtype=float))

    def predict(self, p: int, reach: Sequence[float], confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(shares, intervals)`` at ``reach``; intervals are (k, 2), simultaneous over the classes (Bonferroni).

        The delta method on each class's log-odds against the rest, from the Laplace covariance: the interval says
        how well the pooled images pin down the share there, which is what a tuning decision can rely on.
        """
        reach = np.asarray(reach, dtype=float)
        shares = self.shares(p, reach)
        z = float(norm.ppf(1 - (1 - confidence) / (2 * (self.k if self.k > 2 else 1))))
        intervals = np.zeros((self.k, 2))
        theta = _pack(self.intercepts, self.log_shared_slope, self.deviations, self.block_effects)
        P, B = len(self.deviations), len(self.block_effects)
        for c in range(self.k):
            grad = _numeric_gradient(lambda th: _log_odds(th, p, c, reach, self.k, P, B), theta)
            sd = math.sqrt(max(float(grad @ self.covariance @ grad), 0.0))
            centre = math.log(max(shares[c], 1e-12) / max(1 - shares[c], 1e-12))
            intervals[c] = _sigmoid(centre - z * sd), _sigmoid(centre + z * sd)
        return shares, intervals

    def most_over(self, p: int, target: Sequence[float]) -> int:
        """The class profession ``p`` has most of against ``target`` when unedited, by every image pooled: the one
        class an edit leaves without a destination (all the others' reach goals are then ≥ 0)."""
        t = np.maximum(np.asarray(target, dtype=float), 1e-3)
        return int(np.argmax(self.intercepts[p] - np.log(t)))

    def reach_goals(self, p: int, target: Sequence[float], reference: int) -> np.ndarray:
        """The reach differences ρ_c − ρ_ref at which profession ``p``'s shares meet ``target`` (0 for the reference).

        From softmax(a + κρ) = t: a_c + κρ_c − (a_r + κρ_r) = log t_c − log t_r for every class c.
        """
        t = np.maximum(np.asarray(target, dtype=float), 1e-3)
        a = self.intercepts[p]
        goals = (np.log(t / t[reference]) - (a - a[reference])) / self.slopes[p]
        goals[reference] = 0.0
        return goals


def fit_pooled(observations: Sequence[Sequence[Observation]], k: int,
               prior_slope: float = PRIOR_SLOPE) -> PooledFit:
    """Fit the pooled model to every profession's observations (``observations[p]``; each has k reaches and counts).

    Penalised maximum likelihood (the priors above), deterministic (BFGS from a fixed start); the covariance is
    the inverse Hessian of the penalised log-likelihood at the optimum (Laplace), by central differences.
    """
    P = len(observations)
    if P == 0:
        raise ValueError("fit_pooled needs at least one profession")
    block_ids = sorted({o.block for obs in observations for o in obs})
    B = len(block_ids)
    reach = [np.array([o.reach for o in obs], dtype=float).reshape(-1, k) for obs in observations]
    counts = [np.array([o.counts for o in obs], dtype=float).reshape(-1, k) for obs in observations]
    blocks = [np.array([block_ids.index(o.block) for o in obs], dtype=int) for obs in observations]
    start = _pack(_start_intercepts(counts, k), math.log(prior_slope), np.zeros(P), np.zeros((B, k)))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        return _penalised(theta, reach, counts, blocks, k, B, prior_slope)

    result = minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-7, "maxiter": 1000})
    theta = result.x
    hessian = _numeric_hessian(lambda th: objective(th)[1], theta)
    covariance = np.linalg.pinv((hessian + hessian.T) / 2)
    intercepts, log_slope, deviations, block_effects = _unpack(theta, P, k, B)
    return PooledFit(intercepts, float(log_slope), deviations, block_effects, covariance, k)


# --------------------------------------------------------------------------------------------- internals
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 40.0), -40.0)))


def _pack(intercepts: np.ndarray, log_slope: float, deviations: np.ndarray, block_effects: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(intercepts)[:, 1:].ravel(), [log_slope], np.asarray(deviations),
                           np.asarray(block_effects)[:, 1:].ravel()])


def _unpack(theta: np.ndarray, P: int, k: int, B: int) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    free = P * (k - 1)
    intercepts = np.concatenate([np.zeros((P, 1)), theta[:free].reshape(P, k - 1)], axis=1)
    rest = theta[free + 1 + P:]
    block_effects = np.concatenate([np.zeros((B, 1)), rest.reshape(B, k - 1)], axis=1)
    return intercepts, float(theta[free]), theta[free + 1:free + 1 + P], block_effects


def _start_intercepts(counts: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Log-ratios of each profession's pooled counts (+½ each), a start close to the optimum."""
    out = np.zeros((len(counts), k))
    for p, c in enumerate(counts):
        total = c.sum(axis=0) + 0.5
        out[p] = np.log(total / total[0])
    return out


def _penalised(theta: np.ndarray, reach: Sequence[np.ndarray], counts: Sequence[np.ndarray],
               blocks: Sequence[np.ndarray], k: int, B: int, prior_slope: float) -> tuple[float, np.ndarray]:
    """The negative penalised log-likelihood and its gradient."""
    P = len(reach)
    intercepts, log_slope, deviations, block_effects = _unpack(theta, P, k, B)
    grad_a = np.zeros((P, k))
    grad_mu, grad_u, grad_d = 0.0, np.zeros(P), np.zeros((B, k))
    value = 0.0
    for p in range(P):
        if counts[p].size == 0:
            continue
        kappa = math.exp(log_slope + deviations[p])
        scores = intercepts[p] + kappa * reach[p] + block_effects[blocks[p]]  # (obs, k)
        log_probs = scores - np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1, keepdims=True)) \
            - scores.max(1, keepdims=True)
        value -= float((counts[p] * log_probs).sum())
        resid = counts[p] - counts[p].sum(1, keepdims=True) * np.exp(log_probs)  # d loglik / d score
        grad_a[p] = -resid.sum(0)
        np.add.at(grad_d, blocks[p], -resid)
        d_kappa = -float((resid * reach[p]).sum()) * kappa
        grad_mu += d_kappa
        grad_u[p] += d_kappa
    # priors
    value += float((intercepts[:, 1:] ** 2).sum()) / (2 * PRIOR_SD_INTERCEPT**2)
    grad_a[:, 1:] += intercepts[:, 1:] / PRIOR_SD_INTERCEPT**2
    value += (log_slope - math.log(prior_slope)) ** 2 / (2 * PRIOR_SD_LOG_SLOPE**2)
    grad_mu += (log_slope - math.log(prior_slope)) / PRIOR_SD_LOG_SLOPE**2
    value += float((deviations**2).sum()) / (2 * PRIOR_SD_SLOPE_DEVIATION**2)
    grad_u += deviations / PRIOR_SD_SLOPE_DEVIATION**2
    value += float((block_effects[:, 1:] ** 2).sum()) / (2 * PRIOR_SD_BLOCK**2)
    grad_d[:, 1:] += block_effects[:, 1:] / PRIOR_SD_BLOCK**2
    return value, np.concatenate([grad_a[:, 1:].ravel(), [grad_mu], grad_u, grad_d[:, 1:].ravel()])


def _log_odds(theta: np.ndarray, p: int, c: int, reach: np.ndarray, k: int, P: int, B: int) -> float:
    intercepts, log_slope, deviations, _ = _unpack(theta, P, k, B)
    shares = _softmax(intercepts[p] + math.exp(log_slope + deviations[p]) * reach)
    return math.log(max(shares[c], 1e-12) / max(1 - shares[c], 1e-12))


def _numeric_gradient(f, theta: np.ndarray, h: float = 1e-5) -> np.ndarray:
    grad = np.zeros_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        grad[i] = (f(theta + step) - f(theta - step)) / (2 * h)
    return grad


def _numeric_hessian(gradient, theta: np.ndarray, h: float = 1e-5) -> np.ndarray:
    hessian = np.zeros((theta.size, theta.size))
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        hessian[i] = (gradient(theta + step) - gradient(theta - step)) / (2 * h)
    return hessian
