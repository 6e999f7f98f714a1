"""Edit strengths for an attribute with k classes: w ∈ R^k_{≥0} whose edit brings a profession's class shares
to a target distribution — pure math, no pipelines.

A profession is edited towards up to k − 1 destinations at once ("a nurse with dark skin", "a nurse with
medium skin"), combined in one edit as UCE combines edits. A strength is ``w_c = 1 / λ_rel,c``, the weight α
of that destination's rows in the joint solve in the solver's relative units (``lambda_scale``); ``w_c = 0``
gives class c no destination, and raising ``w_c`` raises class c's share. The search only sees a callback::

    evaluate(strengths, seeds) -> images per class (k counts; the rest of len(seeds) were unclear)

and works like the binary search of :mod:`debias.search`, in k dimensions:

1. **A reference class** r = argmax_c p_c / t_c (the most over-represented) gets no destination: every other
   class needs its log-ratio y_c = log(p_c / p_r) *raised* to log(t_c / t_r), which is what raising w_c does.
   r is chosen on the unedited shares and changes when more seeds show another class to be more over-represented.
2. **Common random numbers.** Every strength vector is evaluated on the same working set of seeds, so points
   differ by the edit, not by the draw. The set grows only at a candidate (fresh seeds to narrow its intervals).
3. **Per-class Newton steps** in v_c = log(1 + w_c / w₀) (w₀ = ``start_strength``): each log-ratio has its own
   slope, y_c ≈ y_c(v) + b_c Δv_c, since a destination moves mostly its own class (what it does to the others
   is corrected by the next step). Slopes start from one probe and follow secant updates; a class whose
   response flattens (saturation) may step twice as far each time, so it reaches its limit in a few steps.
4. **An honest stop.** While a step would move the shares by more than their noise the search steps; then the
   simultaneous 95% intervals (Goodman, :mod:`debias.multiclass`) decide: ``converged`` when every interval lies
   inside t_c ± tolerance · max_c max(t_c, 1 − t_c) (so every distribution inside them has Δ ≤ tolerance);
   ``not_reachable`` when a class's interval lies wholly below its band with its destination at the strongest
   allowed edit; else fresh seeds. ``budget_exhausted`` reports the best-measured point; the budget is never
   exceeded. An evaluation whose unclear rate exceeds the unedited one by more than ``max_unclear_increase``
   is too strong (degraded images): the strengths it raised are capped below it.

``tolerance`` is on Δ (0.1 at k = 2, t = ½ is the binary search's ±0.05 band). Cost on a synthetic softmax
world (30 runs each, k = 2–4): at tolerance 0.1 about 1,100–1,700 images to converge, at 0.15 about 550–800;
an unreachable target is reported after about 450.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

import numpy as np
from scipy.stats import chi2

from debias.multiclass import check_target, delta, simultaneous_intervals

Evaluate = Callable[[tuple[float, ...], Sequence[int]], Sequence[int]]
Status = Literal["converged", "not_reachable", "budget_exhausted"]

_MIN_SLOPE, _MAX_SLOPE = 0.05, 20.0  # own-class response (log-ratio per unit of v) kept in this range
_MOVED = 0.05  # a change of v below this measures no slope; a class with v below it has no destination in use
_TARGET_FLOOR = 1e-3  # targets of 0 enter the log-ratio model as this (Δ uses the real target)
_SWITCH_MARGIN = 0.1  # log-ratio by which another class must out-do the reference to take its place
_SEEDS_BEFORE_GIVING_UP = 4  # rounds of seeds the working set holds before a target is declared not reachable
_MAX_ROUNDS = 200  # a safety bound on calls of ``evaluate`` (the budget normally ends a search first)
_STEPS_PER_SET = 4  # Newton steps on one working set before its current point is checked with fresh seeds


def _lam(w: float) -> Optional[float]:
    return 1.0 / w if w > 0 else None


def _num(x: float) -> Optional[float]:  # JSON has no NaN
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class KEvaluation:
    """One call of ``evaluate``: a strength vector, the seeds tried and the images per class."""

    round: int
    phase: str  # "reference" (unedited) | "probe" | "step" | "refine" (fresh seeds at a candidate)
    strengths: tuple[float, ...]
    seeds: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def n_unclear(self) -> int:
        return len(self.seeds) - sum(self.counts)

    def to_dict(self) -> dict:
        return {"round": self.round, "phase": self.phase, "strengths": list(self.strengths),
                "lambda_relative": [_lam(w) for w in self.strengths], "n": len(self.seeds),
                "counts": list(self.counts), "n_unclear": self.n_unclear, "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, d: dict) -> "KEvaluation":
        return cls(d["round"], d["phase"], tuple(float(w) for w in d["strengths"]), tuple(d["seeds"]),
                   tuple(int(c) for c in d["counts"]))


@dataclass
class KSearchResult:
    """Outcome of a k-class search: the chosen strengths, the shares there with intervals, the full trace."""

    status: Status
    classes: tuple[str, ...]
    target: tuple[float, ...]
    tolerance: float  # on Δ
    budget: int
    images_used: int
    strengths: tuple[float, ...]  # w_c = 1 / λ_rel,c; 0 = no destination for that class
    shares: tuple[float, ...]  # at the chosen strengths, from every image evaluated there (nan: all unclear)
    ci_low: tuple[float, ...]  # simultaneous 95% intervals (Goodman)
    ci_high: tuple[float, ...]
    delta: float
    n: int  # images behind ``shares``, unclear included
    reference_class: str  # the most over-represented class: never given a destination
    message: str
    evaluations: list[KEvaluation] = field(default_factory=list)

    @property
    def lambda_relative(self) -> tuple[Optional[float], ...]:
        return tuple(_lam(w) for w in self.strengths)

    def to_dict(self) -> dict:
        keys = ("status", "tolerance", "budget", "images_used", "n", "reference_class", "message")
        return {**{k: getattr(self, k) for k in keys}, "classes": list(self.classes), "target": list(self.target),
                "strengths": list(self.strengths), "lambda_relative": list(self.lambda_relative),
                "delta": _num(self.delta), "shares": [_num(x) for x in self.shares], "ci_low": list(self.ci_low),
                "ci_high": list(self.ci_high), "search": [e.to_dict() for e in self.evaluations]}

    @classmethod
    def from_dict(cls, d: dict) -> "KSearchResult":
        """Rebuild a result saved with ``to_dict`` (so a finished search is never redone)."""
        tup = lambda key: tuple(math.nan if x is None else float(x) for x in d[key])  # noqa: E731
        return cls(d["status"], tuple(d["classes"]), tup("target"), d["tolerance"], d["budget"], d["images_used"],
                   tup("strengths"), tup("shares"), tup("ci_low"), tup("ci_high"),
                   math.nan if d["delta"] is None else d["delta"], d["n"], d["reference_class"], d["message"],
                   [KEvaluation.from_dict(e) for e in d["search"]])


@dataclass
class _Point:
    """Everything evaluated at one strength vector (a seed is never evaluated twice at a point)."""

    v: np.ndarray
    counts: np.ndarray
    seeds: list[int]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def shares(self) -> np.ndarray:
        return self.counts / max(int(self.counts.sum()), 1)


@dataclass(frozen=True)
class _Settings:
    target: np.ndarray
    tolerance: float
    band: float  # half width of every class's band: tolerance · max_c max(t_c, 1 − t_c)
    confidence: float
    seeds_per_round: int
    max_step: float
    max_unclear: float
    caps: np.ndarray  # the strongest allowed v per class


class _State:
    def __init__(self, evaluate: Evaluate, k: int, budget: int, unit: float, first_seed: int, on_evaluation):
        self.evaluate, self.k, self.budget, self.unit = evaluate, k, budget, unit
        self.next_seed, self.on_evaluation = first_seed, on_evaluation
        self.used, self.round = 0, 0
        self.evaluations: list[KEvaluation] = []
        self.points: dict[tuple, _Point] = {}
        self.working: list[int] = []

    def remaining(self) -> int:
        return self.budget - self.used

    def fresh(self, count: int) -> list[int]:
        self.next_seed += count
        return list(range(self.next_seed - count, self.next_seed))

    def strengths(self, v: np.ndarray) -> tuple[float, ...]:
        return tuple(float(self.unit * np.expm1(x)) for x in v)

    def run(self, v: np.ndarray, seeds: Sequence[int], phase: str) -> _Point:
        assert 0 < len(seeds) <= self.remaining(), "search bug: would exceed the image budget"
        w = self.strengths(v)
        counts = tuple(int(c) for c in self.evaluate(w, list(seeds)))
        if len(counts) != self.k or min(counts) < 0 or sum(counts) > len(seeds):
            raise ValueError(f"evaluate returned {counts} for {len(seeds)} seeds; it must return {self.k} "
                             f"non-negative image counts, one per class, adding up to at most the number of seeds")
        e = KEvaluation(self.round, phase, w, tuple(int(s) for s in seeds), counts)
        self.evaluations.append(e)
        self.used, self.round = self.used + len(seeds), self.round + 1
        if self.on_evaluation is not None:
            self.on_evaluation(e, self.used)
        point = self.points.setdefault(tuple(np.round(v, 12)), _Point(v.copy(), np.zeros(self.k, np.int64), []))
        point.counts += np.array(counts)
        point.seeds.extend(int(s) for s in seeds)
        return point

    def on_working(self, v: np.ndarray, phase: str) -> _Point:
        """The point at ``v`` evaluated on the whole working set (only the seeds it lacks are generated)."""
        point = self.points.get(tuple(np.round(v, 12)))
        have = set(point.seeds) if point is not None else set()
        missing = [s for s in self.working if s not in have]
        return self.run(v, missing, phase) if missing else point


@dataclass
class _Model:
    """Log-ratios of the active classes against the reference class, each with its own slope in its own v_c."""

    ref: int
    active: list[int]
    y_target: np.ndarray
    slopes: np.ndarray
    reach: np.ndarray  # per class: how many times ``max_step`` its next step may go

    def y(self, counts: np.ndarray) -> np.ndarray:
        c = counts.astype(float) + 0.5
        return np.log(c[self.active] / c[self.ref])

    def update(self, dv: np.ndarray, dy: np.ndarray) -> None:
        """Secant update of each class that moved: the geometric mean of old and measured slope damps noise; a flat
        or falling response (noise, saturation) halves the slope and doubles how far the next step may go."""
        moved = np.abs(dv) > _MOVED
        measured = np.where(moved, dy / np.where(moved, dv, 1.0), 0.0)
        rising = moved & (measured > self.slopes / 4)
        flat = moved & ~rising
        self.slopes[rising] = np.sqrt(self.slopes[rising] * measured[rising])
        self.reach[rising] = 1.0
        self.slopes[flat] /= 2
        self.reach[flat] *= 2
        self.slopes = np.clip(self.slopes, _MIN_SLOPE, _MAX_SLOPE)

    def predict(self, v: np.ndarray, y: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """Shares the model expects at ``v_new`` from log-ratios ``y`` measured at ``v`` (full-length vectors)."""
        z = np.zeros(v.size)
        z[self.active] = y + self.slopes * (v_new[self.active] - v[self.active])
        e = np.exp(z - z.max())
        return e / e.sum()

    def step(self, v: np.ndarray, y: np.ndarray, cap: np.ndarray, max_step: float) -> np.ndarray:
        """Newton's step for every class at once (full-length vectors); the reference stays at 0."""
        out = np.zeros_like(v)
        limit = max_step * self.reach
        dv = np.clip((self.y_target - y) / self.slopes, -limit, limit)
        out[self.active] = np.clip(v[self.active] + dv, 0.0, cap[self.active])
        return out

    def switch(self, current: _Point, cap: np.ndarray, s: _Settings) -> None:
        """Make the most over-represented class without a destination the reference, if it clearly is not."""
        ratio = np.log((current.counts + 0.5) / np.maximum(s.target, _TARGET_FLOOR))
        best = max((c for c in range(ratio.size) if current.v[c] < _MOVED), key=lambda c: ratio[c])
        if best != self.ref and ratio[best] - ratio[self.ref] >= _SWITCH_MARGIN:
            cap[self.ref], cap[best] = s.caps[self.ref], 0.0
            self.set_reference(best, s.target)

    def set_reference(self, ref: int, target: np.ndarray) -> None:
        floor = np.maximum(target, _TARGET_FLOOR)
        slopes, fill = dict(zip(self.active, self.slopes)), float(np.median(self.slopes)) if self.active else 1.0
        self.ref, self.active = ref, [c for c in range(floor.size) if c != ref]
        self.y_target = np.log(floor[self.active] / floor[ref])
        self.slopes = np.array([slopes.get(c, fill) for c in self.active])
        self.reach = np.ones(len(self.active))


def _probe(state: _State, model: _Model, current: _Point, cap: np.ndarray) -> bool:
    """One evaluation with every short class at w₀ (or its cap): the first slope of each (False: no budget)."""
    y0 = model.y(current.counts)
    short = y0 < model.y_target
    if not short.any():
        return True
    if state.remaining() < len(state.working):
        return False
    v = np.zeros(state.k)
    v[model.active] = np.where(short, np.minimum(math.log(2.0), cap[model.active]), 0.0)
    point = state.on_working(v, "probe")
    measured = (model.y(point.counts) - y0) / np.where(short, v[model.active], 1.0)
    slopes = np.where(short & (measured > 0), measured, np.nan)
    fallback = float(np.nanmedian(slopes)) if np.isfinite(slopes).any() else _MIN_SLOPE
    model.slopes = np.clip(np.where(np.isfinite(slopes), slopes, fallback), _MIN_SLOPE, _MAX_SLOPE)
    return True


def search_strengths(
    evaluate: Evaluate, target: Sequence[float], *, classes: Optional[Sequence[str]] = None,
    tolerance: float = 0.1, budget: int = 3000, seeds_per_round: int = 32,
    max_strength: float | Sequence[float] = 1e3, start_strength: float = 1.0, max_step: float = 1.5,
    max_unclear_increase: float = 0.25, confidence: float = 0.95, first_seed: int = 0,
    on_evaluation: Optional[Callable[[KEvaluation, int], None]] = None,
) -> KSearchResult:
    """Search strengths w ∈ R^k_{≥0} whose edit brings the class shares within ``tolerance`` (on Δ) of ``target``.

    Args:
        evaluate: ``evaluate(strengths, seeds) -> k counts``; all-zero strengths ask for the unedited model.
        target: k shares summing to 1, in class order; ``classes`` names them (default "0", "1", …).
        tolerance: the largest acceptable Δ. budget: most images the search may ask for (the reference counts).
        seeds_per_round: the first working set of seeds, and the smallest batch of fresh seeds.
        max_strength: strongest allowed w per class (one number or k), e.g. 1 / the side-effect limit on λ_rel.
        start_strength: w₀, the strength of the first probe and the unit of v. max_step: one step's reach in v.
        max_unclear_increase: an evaluation whose unclear rate exceeds the unedited one by more is "too strong".
        confidence: of the simultaneous intervals. first_seed: seeds are first_seed, first_seed + 1, …
        on_evaluation: called with each evaluation and the images used so far (progress, saving).
    """
    t = check_target(target)
    k = t.size
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    caps = np.broadcast_to(np.asarray(max_strength, dtype=float), (k,)).copy()
    if len(names) != k or not 0.0 < tolerance < 1.0:
        raise ValueError(f"need one class name per target share and a tolerance (Δ) in (0, 1); got {len(names)} "
                         f"names for {k} shares and tolerance {tolerance}")
    if np.any(caps <= 0) or min(start_strength, max_step, seeds_per_round) <= 0:
        raise ValueError("max_strength, start_strength, max_step and seeds_per_round must be positive")
    if budget < 2 * seeds_per_round:
        raise ValueError(f"a budget of {budget} images cannot pay for the unedited reference and one probe "
                         f"({seeds_per_round} seeds each); raise the budget or lower seeds_per_round")
    state = _State(evaluate, k, budget, start_strength, first_seed, on_evaluation)
    state.working = state.fresh(seeds_per_round)
    zero = state.run(np.zeros(k), state.working, "reference")
    s = _Settings(t, tolerance, tolerance * float(np.max(np.maximum(t, 1 - t))), confidence, seeds_per_round,
                  max_step, 1.0 - zero.counts.sum() / zero.n + max_unclear_increase, np.log1p(caps / start_strength))
    model = _Model(0, [], np.zeros(0), np.zeros(0), np.zeros(0))
    model.set_reference(int(np.argmax((zero.counts + 0.5) / np.maximum(t, _TARGET_FLOOR))), t)
    cap = s.caps.copy()
    cap[model.ref] = 0.0
    return _run(state, model, zero, cap, s, names)


def _run(state: _State, model: _Model, current: _Point, cap: np.ndarray, s: _Settings,
         names: tuple[str, ...]) -> KSearchResult:
    probed, steps = False, 0
    for _ in range(4 * _MAX_ROUNDS):  # a pass evaluates, grows or ends, but for a few bookkeeping passes
        if state.round >= _MAX_ROUNDS:
            break
        if current.v.any() and _degraded(current, s):  # more seeds showed this point to be too strong
            on = current.v > 0
            cap[on] = np.minimum(cap[on], 0.75 * current.v[on])
        model.switch(current, cap, s)
        if not probed and delta(current.shares, s.target) > s.tolerance:
            if not _probe(state, model, current, cap):
                break
            probed = True
        y = model.y(current.counts)
        proposal = model.step(current.v, y, cap, s.max_step) if probed else current.v.copy()
        # step while the model asks for a larger change of the shares than their noise; else ask the intervals
        noise = float(np.max(np.sqrt(np.maximum(current.shares * (1 - current.shares), 0.02)
                                     / max(int(current.counts.sum()), 1))))
        move = float(np.max(np.abs(model.predict(current.v, y, proposal) - current.shares)))
        if move <= noise or steps >= _STEPS_PER_SET or not probed:
            action = _decide(state, current, cap, s, probed, move <= noise or steps >= 2 * _STEPS_PER_SET,
                             bool(np.any(np.abs(proposal - current.v) > 1e-9)))
            if action in ("converged", "not_reachable"):
                return _finish(state, model, current, action, s, names, cap)
            if action == "stop":
                break
            if action == "grew":
                steps = 0
            if action != "step":
                continue
        if state.remaining() < len(state.working):
            break
        new = state.on_working(proposal, "step")
        steps += 1
        if _degraded(new, s):  # too strong: cap the raised strengths halfway back (at the last good point if close)
            raised = proposal > current.v + 1e-12
            half = (current.v + proposal) / 2
            cap[raised] = np.minimum(cap[raised], np.where(half - current.v < _MOVED, current.v, half)[raised])
            continue
        model.update(proposal[model.active] - current.v[model.active], model.y(new.counts) - y)
        current = new
    # the best-measured point: the farthest distribution inside its intervals is the closest to the target
    farthest = lambda p: np.max(np.abs(simultaneous_intervals(p.counts, s.confidence) - s.target[:, None]))  # noqa
    best = min(state.points.values(), key=lambda p: (float(farthest(p)), -p.n))
    return _finish(state, model, best, "budget_exhausted", s, names, cap)


def _degraded(point: _Point, s: _Settings) -> bool:
    return 1.0 - point.counts.sum() / point.n > s.max_unclear


def _decide(state: _State, current: _Point, cap: np.ndarray, s: _Settings, probed: bool, settled: bool,
            moves: bool) -> str:
    """What to do at a candidate: "converged", "not_reachable", "grew" (fresh seeds), "step", "probe", "stop"."""
    verdict, short_at_cap = _judge(current, cap, s)
    if verdict == "inside":
        return "converged"
    if verdict == "outside" and not probed:
        return "probe"  # the unedited shares are provably off: probe on the next pass
    if verdict == "outside" and short_at_cap.any() and settled:
        # the strengths of the classes that can still move are worth having: tune them on a few rounds of seeds
        enough = len(state.working) >= _SEEDS_BEFORE_GIVING_UP * s.seeds_per_round
        return "not_reachable" if enough or not _grow(state, current, s) else "grew"
    if verdict == "outside" and moves:
        return "step"
    return "grew" if _grow(state, current, s) else "stop"


def _judge(point: _Point, cap: np.ndarray, s: _Settings) -> tuple[str, np.ndarray]:
    """"inside" (every interval inside its band), "outside" (some wholly outside) or "undecided"; and per
    class whether it is provably below its band with its destination at the strongest allowed edit."""
    ci = simultaneous_intervals(point.counts, s.confidence)
    lo, hi = s.target - s.band, s.target + s.band
    short_at_cap = (ci[:, 1] < lo) & (cap > 0) & (point.v >= cap - 1e-9)
    if np.all((ci[:, 0] >= lo - 1e-12) & (ci[:, 1] <= hi + 1e-12)):
        return "inside", short_at_cap
    return ("outside" if np.any((ci[:, 1] < lo) | (ci[:, 0] > hi)) else "undecided"), short_at_cap


def _grow(state: _State, point: _Point, s: _Settings) -> bool:
    """Fresh seeds at a candidate, about as many as its intervals need (at least a round, at most doubling)."""
    p, n = point.shares, max(int(point.counts.sum()), 1)
    room = max(s.band - float(np.max(np.abs(p - s.target))), 0.25 * s.band)
    a = float(chi2.ppf(1 - (1 - s.confidence) / (state.k if state.k > 2 else 1), 1))  # Goodman's quantile
    needed = int(math.ceil(float(np.max(a * np.maximum(p * (1 - p), 0.02) / room**2)))) - n
    batch = min(max(needed, s.seeds_per_round), max(point.n, s.seeds_per_round), state.remaining())
    if batch <= 0 or batch < min(s.seeds_per_round, state.remaining()):
        return False
    fresh = state.fresh(batch)
    state.working.extend(fresh)
    state.run(point.v, fresh, "refine")
    return True


def _finish(state: _State, model: _Model, point: _Point, status: Status, s: _Settings, names: tuple[str, ...],
            cap: np.ndarray) -> KSearchResult:
    n_clear = int(point.counts.sum())
    shares = point.counts / n_clear if n_clear else np.full(state.k, math.nan)
    ci = simultaneous_intervals(point.counts, s.confidence)
    d = delta(shares, s.target) if n_clear else math.nan
    w = state.strengths(point.v)
    fmt = lambda xs: "(" + ", ".join(f"{x:.3g}" for x in xs) + ")"  # noqa: E731
    where = f"strengths {fmt(w)} (λ_rel {fmt([1 / x if x > 0 else math.inf for x in w])})"
    if status == "converged":
        message = (f"within tolerance {'without an edit' if not any(w) else 'at ' + where}: Δ = {d:.3f}, every "
                   f"{s.confidence:.0%} simultaneous interval inside target ± {s.band:.3f}")
    elif status == "not_reachable":
        short = _judge(point, cap, s)[1]
        parts = [f"{names[c]} {shares[c]:.3f} [{ci[c, 0]:.3f}, {ci[c, 1]:.3f}] against {s.target[c]:.3f}"
                 for c in np.nonzero(short)[0]]
        degraded = [names[c] for c in np.nonzero(short & (cap < s.caps - 1e-9))[0]]
        why = (f"images degrade (unclear rate jumps) before {', '.join(degraded)} gets there" if degraded
               else "its destination at the strongest allowed edit does not get there")
        message = f"the target is not reachable: {'; '.join(parts)}; {why} ({where})"
    else:
        message = (f"stopped with {state.used} of {state.budget} images used; Δ = {d:.3f} on {point.n} images at "
                   f"{where}, intervals not yet inside target ± {s.band:.3f}")
    floats = lambda xs: tuple(float(x) for x in xs)  # noqa: E731
    return KSearchResult(status, names, floats(s.target), s.tolerance, state.budget, state.used, w, floats(shares),
                         floats(ci[:, 0]), floats(ci[:, 1]), float(d), point.n, names[model.ref], message,
                         list(state.evaluations))
