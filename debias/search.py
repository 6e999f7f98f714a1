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

The curve itself (fit, intercept refit, cluster bootstrap) is :mod:`debias.logistic` and the records (an
evaluation, the result, their JSON form) are :mod:`debias.search_records`; their names are importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from debias.logistic import (
    LogisticFit,
    SeedTable,
    bootstrap_interval,
    fit_intercept,
    fit_logistic_batch,
    fit_window,
    seed_table,
    sigmoid,
)
from debias.search_records import LABELS, Evaluate, Evaluation, Label, SearchResult, Status
from debias.stats import interval_within_band, z_score

__all__ = [
    "LABELS", "Evaluate", "Evaluation", "Label", "LogisticFit", "SearchResult", "SeedTable", "Status",
    "bootstrap_interval", "fit_intercept", "fit_logistic_batch", "fit_window", "search_lambda", "seed_table", "sigmoid",
]

# ---------------------------------------------------------------------------------------- the search


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
    search = _Search(evaluate, target=target, tolerance=tolerance, budget=budget, seeds_per_round=seeds_per_round,
                     log_lambda_bounds=log_lambda_bounds, step=step, bracket_width=bracket_width,
                     confidence=confidence, n_bootstrap=n_bootstrap, first_seed=first_seed, rng_seed=rng_seed,
                     max_extensions=max_extensions, on_evaluation=on_evaluation)
    search.reference(unedited_share, direction, max_unclear_increase)
    start = log_lambda_start if log_lambda_start is not None else (lo_bound + hi_bound) / 2
    search.bracket(float(np.clip(start, lo_bound, hi_bound)))
    search.bisect()
    window = search.initial_window()
    if window is None:
        return search.finish("not_reachable", None, search.ref.share, (math.nan, math.nan), (search.floor, search.floor),
                             "every evaluated λ gave degraded images (unclear rate jumped); the edit is too strong in "
                             "the whole allowed range")
    return search.refine(window)


@dataclass(frozen=True)
class _Estimate:
    """What the curve fitted in one window says: the chosen λ, the share there and its interval."""

    fit: Optional[LogisticFit]
    root: Optional[float]  # where the fit crosses the target, unclipped (None: no fit, or a flat one)
    x: float  # the chosen log λ_rel: the root kept inside the window
    share: float  # fitted share at x (nan without a fit)
    ci: tuple[float, float]  # seed-bootstrap interval of the share at x


class _Search:
    """One search in progress: its settings, every evaluation so far, and what they have shown.

    The steps of :func:`search_lambda` are its methods, in the order they run: :meth:`reference`,
    :meth:`bracket`, :meth:`bisect`, :meth:`initial_window`, :meth:`refine`; every outcome ends in :meth:`finish`.
    """

    def __init__(self, evaluate: Evaluate, *, target: float, tolerance: float, budget: int, seeds_per_round: int,
                 log_lambda_bounds: tuple[float, float], step: float, bracket_width: float, confidence: float,
                 n_bootstrap: int, first_seed: int, rng_seed: int, max_extensions: int,
                 on_evaluation: Optional[Callable[[Evaluation, int], None]]):
        self.evaluate, self.on_evaluation = evaluate, on_evaluation
        self.target, self.tolerance, self.budget = target, tolerance, int(budget)
        self.lo_bound, self.hi_bound = log_lambda_bounds
        self.step, self.bracket_width, self.max_extensions = step, bracket_width, max_extensions
        self.confidence, self.n_bootstrap = confidence, n_bootstrap
        self.rng = np.random.default_rng(rng_seed)
        self.seeds_per_round = seeds_per_round
        self.base = list(range(first_seed, first_seed + seeds_per_round))  # tried at every bracketing λ
        self.next_seed = first_seed + seeds_per_round  # the next fresh seed
        self.evaluations: list[Evaluation] = []
        self.used = 0
        self.round = 0
        self.ref: Optional[Evaluation] = None  # the unedited model on the base seeds
        self.direction = 0  # +1: the share rises with log λ (the edit lowers it); -1: the edit raises it; 0: not known yet
        self.unclear_limit = math.inf  # an unclear rate above this is a degraded (too strong) evaluation
        self.upper: Optional[float] = None  # weakest-known point that has not crossed (and is clean)
        self.lower: Optional[float] = None  # strongest point that crossed (clean)
        self.floor = self.lo_bound  # strongest λ allowed (moves up when images degrade)
        self.floor_hit = False  # True when floor is a degraded point (not the user's bound)

    # ------------------------------------------------------------------------------------ evaluations
    def remaining(self) -> int:
        return self.budget - self.used

    def out_of_budget(self) -> bool:
        """Too few images left for one more evaluation on the base seeds."""
        return self.remaining() < len(self.base)

    def run(self, x: float, seeds: Sequence[int], phase: str) -> Evaluation:
        """Evaluate ``seeds`` at log λ_rel ``x`` (``math.inf``: unedited), check the labels and record them."""
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

    def crossed(self, e: Evaluation) -> bool:
        """Strictly past the target (a tie is not a crossing yet)."""
        return not math.isnan(e.share) and self.direction * (e.share - self.target) < 0

    def degraded(self, e: Evaluation) -> bool:
        """Too strong an edit: the unclear rate jumped above the unedited one, or no image was clear at all."""
        return e.unclear_rate > self.unclear_limit or math.isnan(e.share)

    # ------------------------------------------------------------------------------------------ steps
    def reference(self, unedited_share: Optional[float], direction: Optional[int], max_unclear_increase: float) -> None:
        """Evaluate the unedited model on the base seeds.

        It tells which way the edit must move the share (unless the caller knows better) and sets the unclear
        rate against which an edit counts as degrading the images.
        """
        self.ref = self.run(math.inf, self.base, "reference")
        if direction:
            self.direction = 1 if direction > 0 else -1
        else:
            share = unedited_share if unedited_share is not None else self.ref.share
            self.direction = 0 if math.isnan(share) or share == self.target else (1 if share > self.target else -1)
        self.unclear_limit = self.ref.unclear_rate + max_unclear_increase

    def bracket(self, x: float) -> None:
        """Walk log λ from ``x`` on the base seeds until one clean point has crossed the target and one has not.

        The same seeds at every point (common random numbers) make two points differ by the edit, not by the draw,
        so a few seeds locate the crossing. The walk is after the *first* crossing coming from the unedited (large λ)
        side, so a degraded point becomes a floor the search stays above.
        """
        while not self.out_of_budget():
            e = self.run(x, self.base, "bracket")
            if self.direction == 0 and not self.degraded(e):  # reference sat exactly on the target: the edit's effect tells
                self.direction = 1 if e.share <= (self.ref.share if not math.isnan(self.ref.share) else self.target) else -1
            if self.degraded(e):
                x = self._after_degraded(x)
            elif self.crossed(e):
                x = self._after_crossed(x)
            else:
                x = self._after_not_crossed(x)
            if x is None:
                break

    def _after_degraded(self, x: float) -> Optional[float]:
        """The next point after a degraded one at ``x`` (None: stop walking)."""
        self.floor, self.floor_hit = x, True
        if self.upper is None:  # the first point tried is already too strong: walk up
            return None if x >= self.hi_bound else min(x + self.step, self.hi_bound)
        if self.upper - x <= self.bracket_width:
            return None
        return (x + self.upper) / 2  # back off towards the last clean point

    def _after_crossed(self, x: float) -> Optional[float]:
        """The next point after one at ``x`` that crossed the target (None: stop walking)."""
        self.lower = x
        if self.upper is not None or x >= self.hi_bound:  # bracketed, or even the weakest allowed edit overshoots
            return None
        return min(x + self.step, self.hi_bound)  # walk up to find a point that has not crossed yet

    def _after_not_crossed(self, x: float) -> Optional[float]:
        """The next point after a clean one at ``x`` that has not crossed yet (None: stop walking)."""
        self.upper = x
        if self.lower is not None:
            return None
        if x <= self.floor + 1e-12 or (self.floor_hit and x - self.floor <= self.bracket_width):
            return None
        if x - self.step > self.floor:
            return x - self.step
        return (x + self.floor) / 2 if self.floor_hit else self.floor

    def bisect(self) -> None:
        """Halve a found bracket on the base seeds down to ``bracket_width``.

        Cheap (a few seeds per point), and a narrow window is where a logistic curve in log λ describes the share
        well; a degraded midpoint ends it, since the fit then stays on the clean side.
        """
        if self.upper is None or self.lower is None:
            return
        while self.upper - self.lower > self.bracket_width and not self.out_of_budget():
            mid = (self.upper + self.lower) / 2
            e = self.run(mid, self.base, "bracket")
            if self.degraded(e):
                break
            if self.crossed(e):
                self.lower = mid
            else:
                self.upper = mid

    def initial_window(self) -> Optional[tuple[float, float]]:
        """The log λ window the fit starts from; None when every evaluated λ gave degraded images."""
        if self.lower is not None and self.upper is not None:
            return self.lower, self.upper
        if self.upper is not None:  # never crossed: the strongest clean point and the one above it
            clean = sorted(e.log_lambda_relative for e in self.evaluations if e.phase == "bracket" and not self.degraded(e))
            return clean[0], clean[1] if len(clean) > 1 else clean[0]
        if self.lower is not None:  # crossed at the weakest allowed edit
            return self.lower, self.lower
        return None

    def estimate(self, window: tuple[float, float]) -> _Estimate:
        """Fit every image in ``window``, choose λ where the curve crosses the target, bootstrap the share there."""
        fit = fit_window(self.evaluations, window, self.direction)
        x, share = _choose(fit, self.target, window, self.direction)
        ci = bootstrap_interval(self.evaluations, window, self.direction, x,
                                confidence=self.confidence, n_bootstrap=self.n_bootstrap, rng=self.rng)
        return _Estimate(fit, fit.crossing(self.target) if fit is not None else None, x, share, ci)

    def refine(self, window: tuple[float, float]) -> SearchResult:
        """Refit and spend images where they say most until the interval at the chosen λ decides, or the budget ends.

        Each round pools every image in the window into one fit (no evaluation is thrown away). When the root lies
        beyond an end of the window the window is widened towards it; otherwise fresh seeds go to the fitted
        crossing, where they narrow the interval fastest.
        """
        extensions = 0
        while True:
            self.round += 1
            est = self.estimate(window)
            low, high = est.ci
            if interval_within_band(low, high, self.target, self.tolerance):
                return self.finish("converged", est.x, est.share, est.ci, window,
                                   f"interval [{low:.3f}, {high:.3f}] lies within {self.target} ± {self.tolerance}")
            beyond_low, beyond_high, short = self._root_outside(window, est)
            stuck_low = window[0] - self.floor <= 0.1 * self.bracket_width or extensions >= self.max_extensions
            if beyond_low and short and stuck_low:
                why = ("images degrade (unclear rate jumps) before the target is reached" if self.floor_hit
                       else f"the strongest allowed edit (λ_rel = {math.exp(self.floor):.3g}) does not reach it")
                return self.finish("not_reachable", est.x, est.share, est.ci, window,
                                   f"the share does not reach {self.target}: {why}")
            if beyond_low and not stuck_low and not self.out_of_budget():
                extensions += 1
                window = self._widen_low(window, est.root)
                continue
            if (beyond_high and window[1] < self.hi_bound - 1e-9 and extensions < self.max_extensions
                    and not self.out_of_budget()):
                extensions += 1
                window = self._widen_high(window, est.root)
                continue
            if self.remaining() <= 0:
                break
            self._add_fresh_seeds(window, est)
        est = self.estimate(window)  # budget spent: report the best current answer
        return self.finish("budget_exhausted", est.x, est.share, est.ci, window,
                           f"budget of {self.budget} images spent; interval [{est.ci[0]:.3f}, {est.ci[1]:.3f}] at the "
                           "chosen λ")

    def _root_outside(self, window: tuple[float, float], est: _Estimate) -> tuple[bool, bool, bool]:
        """(beyond_low, beyond_high, short): whether the crossing lies past the strong (low) or the weak (high) end
        of the window, and whether the interval is still on the unedited side of the target.

        The base seeds' bracket can miss the population's crossing (a few seeds are a coarse sample); the fit's
        root, or an interval at an end of the window that excludes the target, says so.
        """
        low, high = est.ci
        short = (low > self.target) if self.direction > 0 else (high < self.target)  # still on the unedited side
        over = (high < self.target) if self.direction > 0 else (low > self.target)  # already past the target
        at_low, at_high = est.x <= window[0] + 1e-9, est.x >= window[1] - 1e-9
        beyond_low = at_low and (short or (est.root is not None and est.root < window[0] - 1e-3))
        beyond_high = at_high and (over or (est.root is not None and est.root > window[1] + 1e-3))
        return beyond_low, beyond_high, short

    def _widen_low(self, window: tuple[float, float], root: Optional[float]) -> tuple[float, float]:
        """One step towards a root below the window, never past the floor (first crossing only).

        The floor is the strongest allowed edit or a degraded point; degraded images are approached halfway only.
        A new degraded point raises the floor and leaves the window as it was.
        """
        x_new = max(window[0] - self.step, root if root is not None else -math.inf, self.floor)
        x_new = min(x_new, window[0] - 0.25 * self.bracket_width)
        if self.floor_hit and x_new <= self.floor + 1e-9:
            x_new = (self.floor + window[0]) / 2
        x_new = max(x_new, self.floor)
        e = self.run(x_new, self.base, "refine")
        if self.degraded(e):
            self.floor, self.floor_hit = x_new, True
            return window
        return x_new, window[1]

    def _widen_high(self, window: tuple[float, float], root: Optional[float]) -> tuple[float, float]:
        """One step towards a root above the window (weaker edits), up to the weakest allowed λ."""
        x_new = min(window[1] + self.step, root if root is not None else math.inf, self.hi_bound)
        x_new = max(x_new, window[1] + 0.25 * self.bracket_width)
        x_new = min(x_new, self.hi_bound)
        self.run(x_new, self.base, "refine")
        return window[0], x_new

    def _add_fresh_seeds(self, window: tuple[float, float], est: _Estimate) -> None:
        """Evaluate new seeds at the chosen λ, as many as the interval's distance from fitting the band asks for.

        The interval narrows like 1/√seeds, so the batch is what would shrink it into the room left in the band,
        never more than doubles the seeds at once, and never far beyond a perfect design's need (every seed seen at
        the root: a Wilson interval).
        """
        n_seeds = len(seed_table(self.evaluations, window).seeds)
        half = max((est.ci[1] - est.ci[0]) / 2, 1e-6)
        room = (max(self.tolerance - abs(est.share - self.target), 0.5 * self.tolerance)
                if not math.isnan(est.share) else self.tolerance)
        needed = int(math.ceil(n_seeds * (half / room) ** 2)) - n_seeds
        enough = int(math.ceil(1.25 * z_score(self.confidence) ** 2 * self.target * (1 - self.target) / self.tolerance**2))
        batch = min(max(needed, self.seeds_per_round), max(n_seeds, self.seeds_per_round), self.remaining(),
                    max(enough - n_seeds, self.seeds_per_round))
        fresh = list(range(self.next_seed, self.next_seed + batch))
        self.next_seed += batch
        self.run(est.x, fresh, "refine")

    def finish(self, status: Status, x: Optional[float], share: float, ci: tuple[float, float],
               window: tuple[float, float], message: str) -> SearchResult:
        """The result, with the closest share the allowed edits reach.

        That is the fitted share at the chosen λ (every image in the window); raw per-λ shares of a few seeds are
        too noisy for it, so they serve only when there is no fit.
        """
        closest = share
        if math.isnan(closest):
            observed = [e.share for e in self.evaluations if not math.isnan(e.share)]
            closest = min(observed, key=lambda s: abs(s - self.target)) if observed else math.nan
        return SearchResult(status, self.target, self.tolerance, self.budget, self.used, x, share, ci[0], ci[1], window,
                            closest, message, list(self.evaluations), self.direction)


def _choose(fit: Optional[LogisticFit], target: float, window: tuple[float, float], direction: int) -> tuple[float, float]:
    """The fitted crossing, kept inside the window; a flat fit points to the end its share argues for."""
    if fit is None:
        return (window[0] + window[1]) / 2, math.nan
    root = fit.crossing(target)
    if root is None:  # flat: still short of the target -> strongest end, already past -> weakest end
        root = window[0] if direction * (fit.share(window[0]) - target) > 0 else window[1]
    x = float(np.clip(root, window[0], window[1]))
    return x, fit.share(x)
