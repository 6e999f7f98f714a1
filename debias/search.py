"""Find the edit strength λ_p at which a profession's female share crosses a target — pure math, no pipelines.

The share F(λ) runs from the unedited share (λ → ∞, no edit) to the destination's share (λ → 0, full
edit). We look for λ with F(λ) ≈ t, working in x = log λ_rel (λ divided by the mean squared norm of the
source rows, so the numbers mean the same on every model). The search only sees a callback::

    evaluate(lambda_relative, seeds) -> one label per seed: "female" | "male" | "unclear"

(the fix binds it to "generate under the edit, classify"; ``lambda_relative = math.inf`` means the
unedited model). Images are expensive and noisy, so the search is built around three ideas:

1. **Common random numbers.** While bracketing, every λ is evaluated on the *same* base seeds, so two
   λs differ by the edit, not by the draw (a seed's image changes continuously with λ; its label flips at
   its own threshold). Fresh seeds are added only when the answer needs more precision.
2. **Use every image.** All evaluations inside the bracket enter one monotone logistic fit of
   "female" on log λ (maximum likelihood, slope sign fixed by the direction of the edit). The chosen
   λ is where the fitted curve crosses the target; fresh seeds are spent there, where they say most
   about the root.
3. **An honest interval.** One seed's labels at different λs are strongly dependent (same starting
   noise), so the number of *seeds*, not images, limits what is known about F. A likelihood that treats
   every image as independent (profile likelihood, delta method) would be over-confident by up to the
   number of λs a seed was seen at. The interval at the chosen λ is therefore a cluster bootstrap: seeds
   are resampled with all their evaluations together and the fit is redone (percentile interval).

Very strong edits (small λ) degrade images and F can turn back, so the search brackets the *first*
crossing coming from the unedited (large λ) side, restricts the fit to that bracket, and treats an
evaluation whose unclear rate jumps above the unedited one as "too strong". It stops when the
interval at the chosen λ lies inside ``target ± tolerance`` (``converged``), when the curve provably
does not reach the target inside the allowed λ range (``not_reachable``, with the closest share), or
when the image budget is spent (``budget_exhausted``); it never asks for more images than the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from debias.stats import wilson_bounds

Label = str  # "female" | "male" | "unclear"
Evaluate = Callable[[float, Sequence[int]], Sequence[Label]]
Status = Literal["converged", "not_reachable", "budget_exhausted"]

LABELS = ("female", "male", "unclear")

# Weak Gaussian priors of the logistic fit (logit units; slope per unit of log λ). They only matter when the
# data separate perfectly (a handful of seeds, a sharp transition), where the plain MLE runs to infinity.
_PRIOR_SD_INTERCEPT = 10.0
_PRIOR_SD_SLOPE = 20.0


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Evaluation:
    """One call of ``evaluate``: the seeds tried at one λ and the labels they got."""

    round: int
    phase: str  # "reference" (unedited) | "bracket" | "refine"
    log_lambda_relative: float  # math.inf for the unedited reference
    seeds: tuple[int, ...]
    labels: tuple[Label, ...]

    @property
    def lambda_relative(self) -> float:
        return math.exp(self.log_lambda_relative) if math.isfinite(self.log_lambda_relative) else math.inf

    @property
    def n_female(self) -> int:
        return sum(label == "female" for label in self.labels)

    @property
    def n_male(self) -> int:
        return sum(label == "male" for label in self.labels)

    @property
    def n_unclear(self) -> int:
        return len(self.labels) - self.n_female - self.n_male

    @property
    def share(self) -> float:
        """Female share among clear images (nan when every image is unclear)."""
        clear = self.n_female + self.n_male
        return self.n_female / clear if clear else math.nan

    @property
    def unclear_rate(self) -> float:
        return self.n_unclear / len(self.labels) if self.labels else 0.0

    def to_dict(self, lambda_scale: float = 1.0) -> dict:
        """A JSON-ready row of the search trace; ``lambda`` is absolute (λ_rel × ``lambda_scale``)."""
        finite = math.isfinite(self.log_lambda_relative)
        return {
            "round": self.round,
            "phase": self.phase,
            "lambda": self.lambda_relative * lambda_scale if finite else None,
            "lambda_relative": self.lambda_relative if finite else None,
            "n": len(self.labels),
            "n_female": self.n_female,
            "n_male": self.n_male,
            "n_unclear": self.n_unclear,
            "share_female": None if math.isnan(self.share) else self.share,
            "seeds": [int(s) for s in self.seeds],
        }


@dataclass
class SearchResult:
    """Outcome of a search: the chosen λ, the share there with its interval, and the full trace."""

    status: Status
    target: float
    tolerance: float
    budget: int
    images_used: int
    log_lambda_relative: Optional[float]  # chosen λ (None only if nothing could be chosen)
    share: float  # fitted female share at the chosen λ
    ci_low: float
    ci_high: float
    bracket: tuple[float, float]  # log λ_rel window of the fit
    closest_share: float  # best share seen (observed) — what a not_reachable profession gets at most
    message: str
    evaluations: list[Evaluation] = field(default_factory=list)
    direction: int = 0  # +1: the share rises with λ (the edit lowers it); -1: the edit raises it

    @property
    def lambda_relative(self) -> Optional[float]:
        return None if self.log_lambda_relative is None else math.exp(self.log_lambda_relative)

    @property
    def within_tolerance(self) -> bool:
        return self.target - self.tolerance <= self.ci_low and self.ci_high <= self.target + self.tolerance

    def trace(self, lambda_scale: float = 1.0) -> list[dict]:
        return [e.to_dict(lambda_scale) for e in self.evaluations]

    def to_dict(self, lambda_scale: float = 1.0) -> dict:
        lam = self.lambda_relative
        num = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731 — JSON has no NaN
        return {
            "status": self.status,
            "target": self.target,
            "tolerance": self.tolerance,
            "budget": self.budget,
            "images_used": self.images_used,
            "lambda": None if lam is None else lam * lambda_scale,
            "lambda_relative": lam,
            "share": num(self.share),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "bracket_lambda_relative": [math.exp(self.bracket[0]), math.exp(self.bracket[1])],
            "closest_share": num(self.closest_share),
            "message": self.message,
            "direction": self.direction,
            "search": self.trace(lambda_scale),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SearchResult":
        """Rebuild a result saved with ``to_dict`` (so a finished search is never redone)."""
        evaluations = []
        for row in d["search"]:
            lam = row["lambda_relative"]
            labels = ["female"] * row["n_female"] + ["male"] * row["n_male"] + ["unclear"] * row["n_unclear"]
            evaluations.append(
                Evaluation(row["round"], row["phase"], math.log(lam) if lam is not None else math.inf,
                           tuple(row["seeds"]), tuple(labels))  # label order per seed is not kept in the trace
            )
        lam = d["lambda_relative"]
        lo, hi = d["bracket_lambda_relative"]
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        return cls(d["status"], d["target"], d["tolerance"], d["budget"], d["images_used"],
                   None if lam is None else math.log(lam), nan(d["share"]), nan(d["ci_low"]), nan(d["ci_high"]),
                   (math.log(lo), math.log(hi)), nan(d["closest_share"]), d["message"], evaluations,
                   d.get("direction", 0))


# ------------------------------------------------------------------------------------- logistic fit


@dataclass(frozen=True)
class LogisticFit:
    """logit P(female | x) = a + b·(x − center), fitted by penalised maximum likelihood."""

    a: float
    b: float
    center: float

    def share(self, x: float) -> float:
        return float(_sigmoid(self.a + self.b * (x - self.center)))

    def crossing(self, target: float) -> Optional[float]:
        """x where the fitted share equals ``target`` (None for a flat fit)."""
        if abs(self.b) < 1e-9:
            return None
        return self.center + (_logit(target) - self.a) / self.b


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


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
    prior = np.array([1 / _PRIOR_SD_INTERCEPT**2, 1 / _PRIOR_SD_SLOPE**2])
    for _ in range(iterations):
        p = _sigmoid(params[:, :1] + params[:, 1:] * xc)  # (B, P)
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
            p = _sigmoid(a)
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
        p = _sigmoid(a + slope * x)
        grad = float((female - clear * p).sum()) - a / _PRIOR_SD_INTERCEPT**2
        hess = float((clear * p * (1 - p)).sum()) + 1 / _PRIOR_SD_INTERCEPT**2
        step = float(np.clip(grad / hess, -5.0, 5.0))
        a += step
        if abs(step) < 1e-10:
            break
    return a


# ------------------------------------------------------------------------------------------ the data


class _Data:
    """All evaluations so far, as a seeds × points table for fitting and cluster bootstrap."""

    def __init__(self, evaluations: list[Evaluation]):
        self.evaluations = evaluations

    def table(self, window: tuple[float, float]):
        """(xs, seeds, female[s, p], clear[s, p]) for the finite points inside ``window``."""
        lo, hi = window
        points = sorted({e.log_lambda_relative for e in self.evaluations
                         if math.isfinite(e.log_lambda_relative) and lo - 1e-12 <= e.log_lambda_relative <= hi + 1e-12})
        seeds = sorted({s for e in self.evaluations if e.log_lambda_relative in points for s in e.seeds})
        p_index = {x: i for i, x in enumerate(points)}
        s_index = {s: i for i, s in enumerate(seeds)}
        female = np.zeros((len(seeds), len(points)))
        clear = np.zeros((len(seeds), len(points)))
        for e in self.evaluations:
            if e.log_lambda_relative not in p_index:
                continue
            j = p_index[e.log_lambda_relative]
            for s, label in zip(e.seeds, e.labels):
                i = s_index[s]
                female[i, j] += label == "female"
                clear[i, j] += label in ("female", "male")
        return np.array(points), seeds, female, clear


def fit_window(evaluations: list[Evaluation], window: tuple[float, float], direction: int) -> Optional[LogisticFit]:
    xs, _, female, clear = _Data(evaluations).table(window)
    if len(xs) == 0 or clear.sum() == 0:
        return None
    a, b, center = fit_logistic_batch(xs, female.sum(0), clear.sum(0), direction)
    return LogisticFit(float(a[0]), float(b[0]), center)


def bootstrap_interval(
    evaluations: list[Evaluation], window: tuple[float, float], direction: int, x: float,
    *, confidence: float = 0.95, n_bootstrap: int = 400, rng: np.random.Generator,
) -> tuple[float, float]:
    """Percentile interval of the fitted share at ``x``, resampling seeds (clusters) with replacement."""
    xs, seeds, female, clear = _Data(evaluations).table(window)
    n = len(seeds)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(float)  # (B, S)
    a, b, center = fit_logistic_batch(xs, weights @ female, weights @ clear, direction)
    shares = _sigmoid(a + b * (x - center))
    alpha = (1 - confidence) / 2
    lo, hi = float(np.quantile(shares, alpha)), float(np.quantile(shares, 1 - alpha))
    # No design knows F(x) better than seeing every one of its seeds at x itself, so the interval is never
    # narrower than a Wilson interval with that many seeds (this also guards the percentile bootstrap, which
    # is too narrow when there are only a few clusters).
    a0, b0, c0 = fit_logistic_batch(xs, female.sum(0), clear.sum(0), direction)
    n_clear = int((clear.sum(1) > 0).sum())
    w_lo, w_hi = wilson_interval(float(_sigmoid(a0[0] + b0[0] * (x - c0))), n_clear, confidence)
    return min(lo, w_lo), max(hi, w_hi)


def z_score(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def wilson_interval(share: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``share`` observed on ``n`` trials, at any confidence."""
    return wilson_bounds(share, n, z_score(confidence))


# ---------------------------------------------------------------------------------------- the search


@dataclass
class _State:
    evaluate: Evaluate
    budget: int
    on_evaluation: Optional[Callable[[Evaluation, int], None]]
    evaluations: list[Evaluation] = field(default_factory=list)
    used: int = 0
    round: int = 0

    def remaining(self) -> int:
        return self.budget - self.used

    def run(self, x: float, seeds: Sequence[int], phase: str) -> Evaluation:
        assert len(seeds) <= self.remaining(), "search bug: would exceed the image budget"
        lam = math.exp(x) if math.isfinite(x) else math.inf
        labels = tuple(str(label) for label in self.evaluate(lam, list(seeds)))
        if len(labels) != len(seeds):
            raise ValueError(f"evaluate returned {len(labels)} labels for {len(seeds)} seeds")
        bad = set(labels) - set(LABELS)
        if bad:
            raise ValueError(f"evaluate returned unknown labels {sorted(bad)}; expected {LABELS}")
        e = Evaluation(self.round, phase, x, tuple(int(s) for s in seeds), labels)
        self.evaluations.append(e)
        self.used += len(seeds)
        if self.on_evaluation is not None:
            self.on_evaluation(e, self.used)
        return e


def search_lambda(
    evaluate: Evaluate,
    *,
    target: float = 0.5,
    tolerance: float = 0.05,
    budget: int = 400,
    seeds_per_round: int = 8,
    log_lambda_bounds: tuple[float, float] = (math.log(1e-3), math.log(1e3)),
    log_lambda_start: Optional[float] = None,
    step: float = 1.5,
    bracket_width: float = 0.75,
    unedited_share: Optional[float] = None,
    direction: Optional[int] = None,
    max_unclear_increase: float = 0.25,
    confidence: float = 0.95,
    n_bootstrap: int = 400,
    first_seed: int = 0,
    rng_seed: int = 0,
    max_extensions: int = 8,
    on_evaluation: Optional[Callable[[Evaluation, int], None]] = None,
) -> SearchResult:
    """Search log λ_rel for the first crossing (from the unedited side) of ``target`` by the female share.

    Args:
        evaluate: ``evaluate(lambda_relative, seeds) -> labels``; ``math.inf`` asks for the unedited model.
        target, tolerance: stop when the ``confidence`` interval at the chosen λ lies in target ± tolerance.
        budget: most images the search may ask for (never exceeded; the unedited reference counts).
        seeds_per_round: base seeds used at every λ while bracketing, and the smallest fresh batch.
        log_lambda_bounds: allowed (low, high) of log λ_rel; low = strongest edit allowed.
        log_lambda_start: first λ tried (default: the middle of the bounds, or a neighbour's answer).
        step: walking step in log λ while bracketing; bracket_width: bisect the bracket down to this.
        unedited_share: the unedited share if known more precisely (e.g. from an audit); sets the direction.
        direction: +1 when the edit lowers the share (it rises with λ), -1 when it raises it; overrides
            ``unedited_share`` (the caller knows which way its destination pushes).
        max_unclear_increase: an evaluation whose unclear rate exceeds the unedited one by more than this
            is "too strong" (degraded images) and bounds the search from below.
        confidence, n_bootstrap, rng_seed: the seed-level bootstrap interval (deterministic for a seed).
        max_extensions: how often the fit window may be widened (each costs ``seeds_per_round`` images).
        first_seed: seeds used are first_seed, first_seed + 1, … (base seeds first, then fresh ones).
        on_evaluation: called after each evaluation with (evaluation, images used so far) — progress.
    """
    lo_bound, hi_bound = log_lambda_bounds
    if not lo_bound < hi_bound:
        raise ValueError(f"log_lambda_bounds must be (low, high) with low < high, got {log_lambda_bounds}")
    if not 0 < target < 1 or not 0 < tolerance < 0.5:
        raise ValueError(f"need 0 < target < 1 and 0 < tolerance < 0.5, got target={target}, tolerance={tolerance}")
    if seeds_per_round < 1 or budget < 2 * seeds_per_round:
        raise ValueError(f"budget ({budget}) must cover at least two evaluations of seeds_per_round ({seeds_per_round}) seeds")
    state = _State(evaluate, int(budget), on_evaluation)
    rng = np.random.default_rng(rng_seed)
    base = list(range(first_seed, first_seed + seeds_per_round))
    next_seed = first_seed + seeds_per_round

    # ---- reference: the unedited model on the base seeds (direction, unclear baseline)
    ref = state.run(math.inf, base, "reference")
    # direction +1: the share rises with log λ (the edit lowers it); -1: the edit raises it; 0: not known yet
    if direction:
        direction = 1 if direction > 0 else -1
    else:
        ref_share = unedited_share if unedited_share is not None else ref.share
        direction = 0 if math.isnan(ref_share) or ref_share == target else (1 if ref_share > target else -1)
    unclear_limit = ref.unclear_rate + max_unclear_increase

    def crossed(e: Evaluation) -> bool:  # strictly past the target (a tie is not a crossing yet)
        return not math.isnan(e.share) and direction * (e.share - target) < 0

    def degraded(e: Evaluation) -> bool:
        return e.unclear_rate > unclear_limit or math.isnan(e.share)

    # ---- bracket the first crossing from above with the base seeds (common random numbers)
    x = float(np.clip(log_lambda_start if log_lambda_start is not None else (lo_bound + hi_bound) / 2, lo_bound, hi_bound))
    upper: Optional[float] = None  # weakest-known point that has not crossed (and is clean)
    lower: Optional[float] = None  # strongest point that crossed (clean)
    floor = lo_bound  # strongest λ allowed (moves up when images degrade)
    floor_hit = False  # True when floor is a degraded point (not the user's bound)

    def out_of_budget() -> bool:
        return state.remaining() < len(base)

    while not out_of_budget():
        e = state.run(x, base, "bracket")
        if direction == 0 and not degraded(e):  # reference sat exactly on the target: the edit's effect tells
            direction = 1 if e.share <= (ref.share if not math.isnan(ref.share) else target) else -1
        if degraded(e):
            floor, floor_hit = x, True
            if upper is None:  # the first point tried is already too strong: walk up
                if x >= hi_bound:
                    break
                x = min(x + step, hi_bound)
                continue
            if upper - x <= bracket_width:
                break
            x = (x + upper) / 2  # back off towards the last clean point
            continue
        if crossed(e):
            lower = x
            if upper is not None:
                break
            if x >= hi_bound:  # even the weakest allowed edit overshoots
                break
            x = min(x + step, hi_bound)  # walk up to find a point that has not crossed yet
            continue
        else:
            upper = x
            if lower is not None:
                break
            if x <= floor + 1e-12 or (floor_hit and x - floor <= bracket_width):
                break
            x = x - step if x - step > floor else ((x + floor) / 2 if floor_hit else floor)
            continue

    # bisect the bracket with the same seeds
    if upper is not None and lower is not None:
        while upper - lower > bracket_width and not out_of_budget():
            mid = (upper + lower) / 2
            e = state.run(mid, base, "bracket")
            if degraded(e):
                break
            if crossed(e):
                lower = mid
            else:
                upper = mid

    # ---- the fit window
    if lower is not None and upper is not None:
        window = (lower, upper)
    elif upper is not None:  # never crossed: the strongest clean point and the one above it
        clean = sorted(ev.log_lambda_relative for ev in state.evaluations
                       if ev.phase == "bracket" and not degraded(ev))
        window = (clean[0], clean[1] if len(clean) > 1 else clean[0])
    elif lower is not None:  # crossed at the weakest allowed edit
        window = (lower, lower)
    else:  # nothing clean at all
        return _finish(state, "not_reachable", target, tolerance, None, ref.share, math.nan, math.nan, (floor, floor),
                       "every evaluated λ gave degraded images (unclear rate jumped); the edit is too strong in the "
                       "whole allowed range", direction)

    # ---- refine: fit in the window, put fresh seeds at the fitted crossing, stop on the interval
    extensions = 0
    while True:
        state.round += 1
        fit = fit_window(state.evaluations, window, direction)
        x_star, share = _choose(fit, target, window, direction)
        ci = bootstrap_interval(state.evaluations, window, direction, x_star,
                                confidence=confidence, n_bootstrap=n_bootstrap, rng=rng)
        if target - tolerance <= ci[0] and ci[1] <= target + tolerance:
            return _finish(state, "converged", target, tolerance, x_star, share, *ci, window,
                           f"interval [{ci[0]:.3f}, {ci[1]:.3f}] lies within {target} ± {tolerance}", direction)
        # The base seeds' bracket can miss the population's crossing (a few seeds are a coarse sample), so
        # when the fit puts the root beyond an end of the window, or the interval there says so, widen it
        # towards the root. Going stronger stops at the floor (bound or degraded images): first crossing only.
        root = fit.crossing(target) if fit is not None else None
        short = (ci[0] > target) if direction > 0 else (ci[1] < target)  # still on the unedited side
        over = (ci[1] < target) if direction > 0 else (ci[0] > target)  # already past the target
        at_low, at_high = x_star <= window[0] + 1e-9, x_star >= window[1] - 1e-9
        beyond_low = at_low and (short or (root is not None and root < window[0] - 1e-3))
        beyond_high = at_high and (over or (root is not None and root > window[1] + 1e-3))
        stuck_low = window[0] - floor <= 0.1 * bracket_width or extensions >= max_extensions
        if beyond_low and short and stuck_low:
            why = ("images degrade (unclear rate jumps) before the target is reached" if floor_hit
                   else f"the strongest allowed edit (λ_rel = {math.exp(floor):.3g}) does not reach it")
            return _finish(state, "not_reachable", target, tolerance, x_star, share, *ci, window,
                           f"the share does not reach {target}: {why}", direction)
        if beyond_low and not stuck_low and not out_of_budget():
            extensions += 1
            x_new = max(window[0] - step, root if root is not None else -math.inf, floor)
            x_new = min(x_new, window[0] - 0.25 * bracket_width)
            if floor_hit and x_new <= floor + 1e-9:
                x_new = (floor + window[0]) / 2  # approach degraded images halfway only
            x_new = max(x_new, floor)
            e = state.run(x_new, base, "refine")
            if degraded(e):
                floor, floor_hit = x_new, True
            else:
                window = (x_new, window[1])
            continue
        if beyond_high and window[1] < hi_bound - 1e-9 and extensions < max_extensions and not out_of_budget():
            extensions += 1
            x_new = min(window[1] + step, root if root is not None else math.inf, hi_bound)
            x_new = max(x_new, window[1] + 0.25 * bracket_width)
            x_new = min(x_new, hi_bound)
            state.run(x_new, base, "refine")
            window = (window[0], x_new)
            continue
        # more precision: fresh seeds at the fitted crossing, sized by how far the interval is from fitting
        remaining = state.remaining()
        if remaining <= 0:
            break
        n_seeds = len(_Data(state.evaluations).table(window)[1])
        half = max((ci[1] - ci[0]) / 2, 1e-6)
        room = max(tolerance - abs(share - target), 0.5 * tolerance) if not math.isnan(share) else tolerance
        needed = int(math.ceil(n_seeds * (half / room) ** 2)) - n_seeds
        # never far beyond what a perfect design would need (every seed seen at the root: a Wilson interval)
        enough = int(math.ceil(1.25 * z_score(confidence) ** 2 * target * (1 - target) / tolerance**2))
        batch = min(max(needed, seeds_per_round), max(n_seeds, seeds_per_round), remaining,
                    max(enough - n_seeds, seeds_per_round))
        fresh = list(range(next_seed, next_seed + batch))
        next_seed += batch
        state.run(x_star, fresh, "refine")

    # budget spent: report the best current answer
    fit = fit_window(state.evaluations, window, direction)
    x_star, share = _choose(fit, target, window, direction)
    ci = bootstrap_interval(state.evaluations, window, direction, x_star,
                            confidence=confidence, n_bootstrap=n_bootstrap, rng=rng)
    return _finish(state, "budget_exhausted", target, tolerance, x_star, share, *ci, window,
                   f"budget of {budget} images spent; interval [{ci[0]:.3f}, {ci[1]:.3f}] at the chosen λ",
                   direction)


def _choose(fit: Optional[LogisticFit], target: float, window: tuple[float, float], direction: int) -> tuple[float, float]:
    """The fitted crossing, kept inside the window; a flat fit points to the end its share argues for."""
    if fit is None:
        return (window[0] + window[1]) / 2, math.nan
    root = fit.crossing(target)
    if root is None:  # flat: still short of the target -> strongest end, already past -> weakest end
        root = window[0] if direction * (fit.share(window[0]) - target) > 0 else window[1]
    x = float(np.clip(root, window[0], window[1]))
    return x, fit.share(x)


def _finish(state: _State, status: Status, target: float, tolerance: float, x: Optional[float], share: float,
            ci_low: float, ci_high: float, window: tuple[float, float], message: str, direction: int) -> SearchResult:
    # the share the model reaches at the chosen λ (fitted on every image in the window); for a profession that is
    # not reachable this is the closest the allowed edits get. Raw per-λ shares of a few seeds are too noisy for it.
    closest = share
    if math.isnan(closest):
        observed = [e.share for e in state.evaluations if not math.isnan(e.share)]
        closest = min(observed, key=lambda s: abs(s - target)) if observed else math.nan
    return SearchResult(status, target, tolerance, state.budget, state.used, x, share, ci_low, ci_high, window,
                        closest, message, list(state.evaluations), direction)
