"""What the fix knows about each profession while it works, and the per-profession edit math built on the solver.

A profession's edit is its rows (source tokens C and their destination C*), a strength λ_rel, the anchors every
edit keeps fixed, and the bounds the side-effect limit sets on λ. The pure solver lives in
:mod:`debias.editing.solver`; here it is applied to professions (their single edits, reach, joiners, the joint edit).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from debias import stats
from debias.editing.solver import conditioning_drift, first_at_most, joint_from_pins
from debias.fixing.options import JOINT_PIN_LAMBDA_RELATIVE, LOG_LAMBDA_BOUNDS
from debias.results import ProfessionAudit
from debias.search import SearchResult

GENDER_WORDS = {"female": "female", "male": "male"}


@dataclass
class ProfessionState:
    """Everything the fix knows about one profession while it works."""

    entry: Any  # ProfessionEntry
    target: float
    before: ProfessionAudit  # the before audit's row (test prompts): a judge only
    tuning_before: ProfessionAudit  # the tuning audit's row: every decision reads this
    side: Optional[str] = None  # "male" / "female": the destination's gender word; None = unedited
    destination: Optional[str] = None
    rows: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    scale: float = 1.0
    search: Optional[SearchResult] = None
    log_lambda: Optional[float] = None  # log λ_rel used in the joint edit (after corrections)
    slope: Optional[float] = None  # d logit F / d log λ_rel from the search's fit (for corrections)
    bounds: tuple[float, float] = LOG_LAMBDA_BOUNDS  # allowed log λ_rel (the side-effect limit raises the low end)
    joint: list[dict] = field(default_factory=list)  # per joint round: counts on the tuning prompts
    joined_round: Optional[int] = None  # left unedited, then joined the edit after this joint round (cross-effect)
    status: str = ""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def direction(self) -> int:
        """+1 when the edit lowers the share (towards "male"), so the share rises with λ; -1 otherwise."""
        return 1 if self.side == "male" else -1

    @property
    def edited(self) -> bool:
        return self.side is not None and self.log_lambda is not None


def destination_phrase(entry_phrase: str, side: str) -> str:
    """ "a nurse" + "male" → "a male nurse"; "an engineer" + "female" → "a female engineer" (article follows)."""
    name = entry_phrase.split(" ", 1)[1]
    return f"a {GENDER_WORDS[side]} {name}"


def logit(p: float) -> float:
    """The logit the joint rounds correct strengths in; clamped at 1e-4 (not the search's 1e-6) so that a tuning
    share of exactly 0 or 1 asks for a bounded shift."""
    return stats.logit(p, eps=1e-4)


def choose_destination(p: ProfessionState, share: float, pipe, augmentations) -> None:
    set_destination(p, "male" if share > p.target else "female", pipe, augmentations)


def set_destination(p: ProfessionState, side: str, pipe, augmentations) -> None:
    """Point ``p``'s edit at "a {side} X": its destination, edit rows and λ scale."""
    from debias.editing import lambda_scale

    p.side = side
    p.destination = destination_phrase(p.entry.phrase, side)
    p.rows = profession_edit_rows(pipe, p.entry.phrase, p.destination, augmentations)
    p.scale = lambda_scale(p.rows[0])


def edit_reach(p: ProfessionState, log_lambda_relative: float, anchors: Optional["Anchors"]) -> float:
    """How far ``p``'s edit alone carries its own rows towards the destination: ‖(M − I)C‖ / ‖C* − C‖ (0 … ~1)."""
    C, C_star = p.rows
    M = single_matrix(p, log_lambda_relative, anchors)
    return float((C @ M.T - C).norm() / (C_star - C).norm().clamp_min(1e-12))


def join_edit(p: ProfessionState, share: float, rnd: int, edited: list[ProfessionState], pipe, augmentations, probe, max_drift,
          bounds: tuple[float, float], anchors: Optional["Anchors"]) -> None:
    """Give an unedited profession that the joint edit pushed out of the band an edit of its own, without a search.

    Its strength comes from the professions already tuned: each of them needed its edit to reach a fraction
    ``reach_q`` of the way to its destination to shift the logit of its share by ``L_q``. The joiner needs a
    shift of logit(t) − logit(share), so it gets the λ whose reach is that shift at the median logit per reach
    (found on the matrices alone, no images); later rounds correct it with the median fitted slope.
    """
    choose_destination(p, share, pipe, augmentations)
    p.bounds = drift_bounds(p, probe, max_drift, bounds, anchors)
    per_reach = [abs(logit(q.target) - logit(q.tuning_before.share_female))
                 / max(edit_reach(q, q.log_lambda, anchors), 1e-6)
                 for q in edited if q.tuning_before.share_female is not None]
    needed = abs(logit(p.target) - logit(share)) / (float(np.median(per_reach)) if per_reach else 4.0)
    x = first_at_most(lambda y: edit_reach(p, y, anchors), *p.bounds, needed)
    p.log_lambda, p.joined_round, p.status = (p.bounds[1] if x is None else x), rnd, ""
    slopes = [abs(q.slope) for q in edited if q.slope]
    p.slope = p.direction * (float(np.median(slopes)) if slopes else 1.0)


def pooled_correction(p: ProfessionState) -> float:
    """log λ_rel at which the joint edit should put ``p`` on its target, from every joint round it was edited in.

    The joint edit shifts ``p``'s curve (cross-effects) but hardly bends it, so the rounds are fitted as one
    logistic curve with the search's slope and a free intercept; the new λ is where that curve meets the target.
    Each round measures fresh seeds, so the estimate sharpens with every round instead of chasing the noise of
    the last one. The step is bounded to one decade of λ and to the profession's allowed range.
    """
    from debias.search import fit_intercept

    rounds = [j for j in p.joint if j["lambda_relative"] is not None and j["n_female"] + j["n_male"] > 0]
    if not rounds:
        return p.log_lambda
    slope = p.slope if p.slope and abs(p.slope) > 1e-3 else float(p.direction)
    x = [math.log(j["lambda_relative"]) for j in rounds]
    a = fit_intercept(x, [j["n_female"] for j in rounds], [j["n_female"] + j["n_male"] for j in rounds], slope,
                      center=p.log_lambda)
    step = float(np.clip((logit(p.target) - a) / slope, -math.log(10), math.log(10)))
    return float(np.clip(p.log_lambda + step, *p.bounds))


def anchor_prompts_for(augmentations: Sequence[str]) -> list[str]:
    """The bare templates ("a photo of {}" → "a photo of") and the empty prompt: context that every prompt shares."""
    prompts = [t.replace("{}", " ").strip() for t in augmentations] + [""]
    return list(dict.fromkeys(" ".join(p.split()) for p in prompts))


@dataclass(frozen=True)
class Anchors:
    """Conditioning rows kept fixed by every edit of a fix, and their weight relative to one edit row."""

    rows: torch.Tensor
    strength: float


def single_matrix(p: ProfessionState, log_lambda_relative: float, anchors: Optional[Anchors]) -> torch.Tensor:
    """M of ``p``'s edit alone at λ_rel (with the anchors), as the search tries it."""
    from debias.editing import edit_matrix

    lam = math.exp(log_lambda_relative) * p.scale
    if anchors is None:
        return edit_matrix(p.rows[0], p.rows[1], lam)
    return edit_matrix(p.rows[0], p.rows[1], lam, preserve=anchors.rows, preserve_weight=anchors.strength)


def profession_edit_rows(pipe, source: str, destination: str, augmentations) -> tuple[torch.Tensor, torch.Tensor]:
    from debias.editing import edit_rows

    C, C_star = edit_rows(pipe, source, destination, augmentations)
    return C.double(), C_star.double()


def probe_rows(pipe, prompts: Sequence[str]) -> torch.Tensor:
    from debias.editing import encode_conditioning

    emb = encode_conditioning(pipe, list(prompts))
    return emb.reshape(-1, emb.shape[-1]).double()


def drift_bounds(p: ProfessionState, probe, max_drift, bounds: tuple[float, float],
                  anchors: Optional[Anchors] = None) -> tuple[float, float]:
    """(low, high) log λ_rel for ``p``: low raised until the single edit moves the probe rows by ≤ max_drift."""
    lo, hi = bounds
    if probe is None or max_drift is None:
        return bounds

    def drift(x: float) -> float:
        return conditioning_drift(single_matrix(p, x, anchors), probe)

    strongest = first_at_most(drift, lo, hi, max_drift)
    if strongest is None:  # even the weakest edit is too broad: leave one unit of log λ to show it
        return (hi - 1.0, hi)
    return (strongest, hi)


def search_seeds_per_round(tuning_row: ProfessionAudit, budget: int) -> int:
    """Base seeds per λ so that about six images per λ are clear (unclear ones say nothing about the share)."""
    n, unclear = tuning_row.n, tuning_row.n_unclear
    clear_rate = max((n - unclear) / n if n else 1.0, 0.2)
    return int(min(max(8, math.ceil(6 / clear_rate)), 32, budget // 4))


def fitted_slope(result: SearchResult) -> Optional[float]:
    """d logit(F) / d log λ_rel of the search's final fit (used to correct cross-effects)."""
    from debias.search import fit_window

    fit = fit_window(result.evaluations, result.bracket, result.direction or 1)
    if fit is None or abs(fit.b) < 1e-6:
        return None
    return fit.b


def preserve_prompt_list(preserve, unedited: list[ProfessionState]) -> list[str]:
    prompts: list[str] = []
    if isinstance(preserve, (str, os.PathLike)) and Path(preserve).is_file():
        lines = Path(preserve).read_text(encoding="utf-8").splitlines()
        prompts += [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
    elif isinstance(preserve, str):
        prompts.append(preserve)
    elif preserve:
        prompts += [str(p) for p in preserve]
    prompts += [p.entry.phrase for p in unedited]
    seen, unique = set(), []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def encode_preserve_rows(pipe, prompts: Sequence[str], augmentations) -> torch.Tensor:
    return probe_rows(pipe, [p for prompt in prompts for p in [prompt, *(t.format(prompt) for t in augmentations)]])


def joint_matrix(edited: list[ProfessionState], preserve_rows, preserve_strength: float,
                  anchors: Optional[Anchors] = None, pin: float = JOINT_PIN_LAMBDA_RELATIVE) -> torch.Tensor:
    """One M that gives every edited profession's rows what its own tuned edit gives them.

    Each profession's search tuned λ_p for its edit *alone*. Summing the edits with strengths 1/λ_p (TIME's
    joint form) lets strong edits drag the rows of weak ones: on the built-in model the joint edit moved a
    profession's tuning prompt away from where its own edit puts it by 0.1-5.4 times that edit's size (worst
    for the weakest edits). So the joint edit instead pins each profession's rows C_p to their single-edit
    image C_p M_pᵀ, all with one weight (λ_rel = ``pin``), and reconciles the pins by least squares where rows
    overlap. See :func:`joint_from_pins` for how the pin strength was chosen.
    """
    pins = [(p.rows[0], p.rows[0] @ single_matrix(p, p.log_lambda, anchors).T, pin * p.scale) for p in edited]
    return joint_from_pins(pins, kept_rows(preserve_rows, preserve_strength, anchors))


def kept_rows(preserve_rows, preserve_strength: float, anchors: Optional[Anchors]) -> list[tuple]:
    """The (rows, weight) blocks the joint edit keeps in place: preserve rows and anchors."""
    return [(preserve_rows, preserve_strength)] + ([(anchors.rows, anchors.strength)] if anchors else [])
