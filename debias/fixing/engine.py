"""The one fix engine: every profession's strengths tuned together, in the edit that ships, from every image pooled.

One loop serves every attribute: gender (k = 2), skin tone or age (k = 3), two attributes crossed (their cells).
Each round::

    goals      the pooled model (debias.fixing.strengths) says what reach each profession needs: ρ_c − ρ_ref per class
    strengths  the strengths whose *joint* edit gives every profession that reach (matrices only, no images)
    measure    every profession, edited or not, on the tuning prompts under that joint edit
    fit        the model again, with these images added to all earlier ones (the tuning audit is the ρ = 0 point)

The edit measured in each round is the edit that would ship, with every other profession in it, so cross-effects
are measured where they act instead of being corrected afterwards; a profession left unedited that the others'
edits push out of the band (with evidence: its interval excludes the target) joins the edit in the next round.
Common random numbers across professions: within a round every profession is drawn on the same block of seeds, so
what that block leans (a seed's starting noise decides much of what an image shows, whatever the prompt) moves every
profession alike, and the pooled model estimates it from all of them and keeps it out of the strengths. Each round
draws a fresh block, so the level the after audit will judge averages over more seeds every round. After the last
round the strengths are chosen once more from every image and shipped.

The images per profession (tuning audit and rounds) never exceed ``budget``; everything is decided on the tuning
prompts and seeds. Images are cached by edit, prompt and seed, and the strengths are a deterministic function of
the images, so an interrupted fix resumes by regenerating nothing.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from debias.stats import multiclass
from debias.fixing.kclass import ALREADY, ClassEdit, class_matrix, joint_class_matrix, reach
from debias.fixing.options import JOINT_PIN_LAMBDA_RELATIVE, FixOptions
from debias.fixing.plan import encode_preserve_rows, preserve_prompt_list
from debias.generation.generate import work_items
from debias.core.prompts import profession_prompts
from debias.fixing.strengths import Observation, PooledFit, fit_pooled

MIN_STRENGTH = 1e-4
MAX_UNCLEAR_INCREASE = 0.25  # a round whose unclear rate rises this far above the unedited one is too strong
SOLVER_ITERATIONS = 16
NOT_REACHABLE = "not_reachable"


class Engine:
    """The rounds of one fix: its professions' edits, the images they read, and the pooled model."""

    def __init__(self, run, opts: FixOptions, edits: list[ClassEdit], read_classes):
        self.run, self.opts, self.edits = run, opts, edits
        self.read_classes = read_classes  # (attribute, generation results) -> each image's class or "unclear"
        self.k = edits[0].attribute.k
        self.observations: list[list[Observation]] = [
            [Observation((0.0,) * self.k, tuple(e.tuning_counts), block=0)] for e in edits]
        self.fit: Optional[PooledFit] = None
        self.preserve: list[str] = []
        self._preserve_rows: dict[tuple[str, ...], Optional[torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------- the loop
    def run_rounds(self) -> Optional[torch.Tensor]:
        """Tune every strength over the rounds the budget allows; returns the joint edit that ships (None: none)."""
        opts, run = self.opts, self.run
        per_round = round_size(opts)
        self.fit = fit_pooled(self.observations, self.k)
        for rnd in range(opts.joint_rounds):
            if not any(e.active for e in self.edits):
                break
            M = self.choose_strengths()
            run.say(f"round {rnd}: one edit for {sum(e.edited for e in self.edits)} professions; measuring all "
                    f"{len(self.edits)} on the tuning prompts ({per_round} images each)")
            self.measure(M, rnd, per_round)
            self.fit = fit_pooled(self.observations, self.k)
            self.join_or_cap(M, rnd)
            run.say("  " + ", ".join(f"{e.entry.name} {_shares(e.rounds[-1]['counts'])}" for e in self.edits))
        if not any(e.active for e in self.edits):
            return None
        M = self.choose_strengths()
        self.conclude(M)
        return M if any(e.edited for e in self.edits) else None

    def choose_strengths(self) -> Optional[torch.Tensor]:
        """The strengths whose joint edit gives every active profession the reach the pooled model asks for.

        Each profession's reference is the class the pooled model says it has most of unedited: with every image
        pooled that can differ from what the tuning audit alone read, and an edit can only lift the other classes.
        """
        for i, e in enumerate(self.edits):
            if e.active and e.refer_to(self.fit.most_over(i, e.target)):
                self.run.say(f"  {e.entry.name}: the images so far put it furthest over the target in "
                             f"{e.attribute.class_names[e.reference]}; that class now gets no destination")
        goals = {i: self.fit.reach_goals(i, e.target, e.reference) for i, e in enumerate(self.edits) if e.active}
        M = None
        for _ in range(SOLVER_ITERATIONS):
            M = self.joint_matrix()
            moved = False
            for i, goal in goals.items():
                moved |= step_towards(self.edits[i], goal, reach_of(M, self.edits[i]), self.run.anchors)
            if not moved:
                break
        return self.joint_matrix()

    def joint_matrix(self) -> Optional[torch.Tensor]:
        """The joint edit at the current strengths; the professions without an edit are preserved (c* = c)."""
        self.preserve = preserve_prompt_list(self.opts.preserve, [e for e in self.edits if not e.edited])
        return joint_class_matrix(self.edits, self.preserve_rows(tuple(self.preserve)), self.opts.preserve_strength,
                                  self.run.anchors, JOINT_PIN_LAMBDA_RELATIVE)

    def preserve_rows(self, prompts: tuple[str, ...]) -> Optional[torch.Tensor]:
        """The preserve prompts' rows, encoded once per set of prompts (the solver asks for them every step)."""
        if prompts not in self._preserve_rows:
            self._preserve_rows[prompts] = (encode_preserve_rows(self.run.pipe, prompts, self.run.augmentations)
                                            if prompts else None)
        return self._preserve_rows[prompts]

    def measure(self, M: Optional[torch.Tensor], rnd: int, per_round: int) -> None:
        """Every profession under ``M`` on the tuning prompts, all on the round's fresh block of seeds."""
        opts, run = self.opts, self.run
        start = opts.check_images + rnd * per_round
        items, owner = [], []
        for i, e in enumerate(self.edits):
            items += work_items(profession_prompts(e.entry, run.templates), start, per_round, opts.tuning_seed)
            owner += [i] * per_round
        results = run.generate(items, stage="joint", description=f"round {rnd}", edit=M)
        run.used["joint"] += len(results)
        labels = self.read_classes(self.edits[0].attribute, results)
        for i, e in enumerate(self.edits):
            mine = [label for label, o in zip(labels, owner) if o == i]
            counts, unclear = multiclass.count_labels(mine, e.attribute.class_names)
            x = reach_of(M, e)
            self.observations[i].append(Observation(tuple(float(v) for v in x), tuple(int(c) for c in counts),
                                                    block=rnd + 1))
            e.rounds.append({"round": rnd, "strengths": list(e.strengths),
                             "lambda_relative": [None if w <= 0 else 1.0 / w for w in e.strengths],
                             "reach": [float(v) for v in x], "first_seed": opts.tuning_seed + start,
                             "counts": [int(c) for c in counts], "n_unclear": int(unclear)})

    def join_or_cap(self, M, rnd: int) -> None:
        """After a round: professions the others' edits pushed out of the band join; too strong edits are capped."""
        for i, e in enumerate(self.edits):
            last = e.rounds[-1]
            shares, intervals = self.fit.predict(i, last["reach"])
            last.update(model_shares=[float(s) for s in shares], model_ci_low=[float(v) for v in intervals[:, 0]],
                        model_ci_high=[float(v) for v in intervals[:, 1]])
            n = sum(last["counts"]) + last["n_unclear"]
            if e.edited and n and last["n_unclear"] / n > e.tuning_unclear_rate + MAX_UNCLEAR_INCREASE:
                e.caps = tuple(min(c, 0.75 * w) if w > 0 else c for c, w in zip(e.caps, e.strengths))
                e.strengths = [min(w, c) for w, c in zip(e.strengths, e.caps)]
                self.run.say(f"  {e.entry.name}: images degrade at these strengths (unclear {last['n_unclear']} of "
                             f"{n}); its strengths are capped at 3/4 of them")
            if e.status == ALREADY and outside_band(shares, intervals, e.target, self.opts.tolerance):
                e.join(int(np.argmax(shares / np.maximum(e.target, 1e-3))), self.run.probe, self.opts.max_drift,
                       self.run.anchors, rnd)
                self.run.say(f"  {e.entry.name}: pushed to {_shares(shares)} by the other edits; joins the edit")

    def conclude(self, M: Optional[torch.Tensor]) -> None:
        """Each profession's expected tuning shares under the edit that ships, and its engine status."""
        tol = self.opts.tolerance
        for i, e in enumerate(self.edits):
            x = reach_of(M, e)
            shares, intervals = self.fit.predict(i, x)
            e.outcome = {"shares": [float(s) for s in shares], "ci_low": [float(v) for v in intervals[:, 0]],
                         "ci_high": [float(v) for v in intervals[:, 1]], "reach": [float(v) for v in x],
                         "slope": float(self.fit.slopes[i]), "shared_slope": self.fit.shared_slope,
                         "images_used": self.opts.check_images + sum(
                             sum(r["counts"]) + r["n_unclear"] for r in e.rounds)}
            if not e.active:
                continue
            inside = bool(np.all((intervals[:, 0] >= e.target_array - tol) & (intervals[:, 1] <= e.target_array + tol)))
            at_cap = [c for c, (w, cap) in enumerate(zip(e.strengths, e.caps)) if w > 0 and w >= cap * (1 - 1e-6)]
            if at_cap and (outside_band(shares, intervals, e.target, tol) or measured_short_at(e, e.strengths, tol)):
                e.status, e.outcome["status"] = NOT_REACHABLE, NOT_REACHABLE
                e.outcome["message"] = (f"the target is not reachable within the side-effect limit: "
                                        f"{', '.join(e.attribute.class_names[c] for c in at_cap)} at the strongest "
                                        f"allowed edit; expected shares there {_shares(shares)}")
            else:
                e.outcome["status"] = "converged" if inside else "budget_exhausted"
                e.outcome["message"] = (f"expected shares {_shares(shares)} on the tuning prompts under the shipped "
                                        f"edit ({'inside' if inside else 'not yet inside'} target ± {tol})")


def round_size(opts: FixOptions) -> int:
    """Images per profession and round: what the budget leaves after the tuning audit, over the rounds."""
    return max((opts.budget - opts.check_images) // max(opts.joint_rounds, 1), 1)


def reach_of(M: Optional[torch.Tensor], e: ClassEdit) -> np.ndarray:
    return np.zeros(e.attribute.k) if M is None else reach(M, e.rows)


def measured_short_at(e: ClassEdit, strengths: Sequence[float], tolerance: float) -> bool:
    """The last round measured these strengths, and its simultaneous intervals put a class wholly outside the band."""
    if not e.rounds or e.rounds[-1]["strengths"] != list(strengths) or not sum(e.rounds[-1]["counts"]):
        return False
    intervals = multiclass.simultaneous_intervals(e.rounds[-1]["counts"])
    t = e.target_array
    return bool(np.any((intervals[:, 1] < t - tolerance) | (intervals[:, 0] > t + tolerance)))


def outside_band(shares: np.ndarray, intervals: np.ndarray, target: Sequence[float], tolerance: float) -> bool:
    """Outside the band on the evidence: some class's share is outside it and its interval excludes the target."""
    t = np.asarray(target, dtype=float)
    off = np.abs(shares - t) > tolerance
    excludes = (intervals[:, 0] > t) | (intervals[:, 1] < t)
    return bool(np.any(off & excludes))


def _shares(values) -> str:
    values = np.asarray(values, dtype=float)
    total = values.sum() or 1.0
    return "(" + ", ".join(f"{v / total:.2f}" for v in values) + ")"


def initial_strength(e: ClassEdit, c: int, goal: float, anchors) -> float:
    """The strength of class ``c``'s destination alone whose reach difference meets ``goal`` (bisection in log w)."""
    lo, hi = math.log(MIN_STRENGTH), math.log(max(e.caps[c], MIN_STRENGTH))

    def gap(log_w: float) -> float:
        strengths = [0.0] * e.attribute.k
        strengths[c] = math.exp(log_w)
        x = reach(class_matrix(e, strengths, anchors), e.rows)
        return float(x[c] - x[e.reference]) - goal

    if gap(hi) <= 0:
        return math.exp(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return math.exp(hi)


def step_towards(e: ClassEdit, goal: np.ndarray, x: np.ndarray, anchors) -> bool:
    """One solver step of ``e``'s strengths towards reach differences ``goal`` (``x``: its reach under the joint
    edit now); returns whether a strength moved.

    Each class's reach difference rises with its own log strength; the step divides the gap by the slope measured
    between the solver's last two steps (a secant), else by ρ(1 − ρ), the slope of a ridge edit's reach. A class
    that needs no push has strength 0; one that starts needing it starts where its destination alone would do.
    """
    moved = False
    for c in range(e.attribute.k):
        if c == e.reference:
            continue
        diff = float(x[c] - x[e.reference])
        gap = float(goal[c]) - diff
        w = e.strengths[c]
        if w <= 0:
            if gap > 1e-3:
                e.strengths[c] = min(initial_strength(e, c, float(goal[c]), anchors), e.caps[c])
                e.secant.pop(c, None)
                moved = True
            continue
        if abs(gap) < 1e-3:
            continue
        log_w = math.log(w)
        slope = max(min(float(x[c]), 1.0), 0.0)
        slope = max(slope * (1 - slope), 0.05)
        if c in e.secant:
            last_log_w, last_diff = e.secant[c]
            if abs(log_w - last_log_w) > 1e-6:
                measured = (diff - last_diff) / (log_w - last_log_w)
                slope = measured if measured > 1e-3 else slope
        e.secant[c] = (log_w, diff)
        new = log_w + float(np.clip(gap / slope, -1.5, 1.5))
        if new < math.log(MIN_STRENGTH):
            e.strengths[c], moved = 0.0, True
            continue
        new = min(new, math.log(e.caps[c]))
        if abs(new - log_w) > 1e-4:
            e.strengths[c], moved = math.exp(new), True
    return moved
