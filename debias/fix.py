"""The fix verb: edit a model so that each listed profession reaches its target share on held-out prompts.

Steps (each cached in the run folder, so an interrupted run redoes nothing finished)::

    before   audit every profession on the held-out test prompts (before/) and on the tuning prompts (tuning/:
             validation templates that neither the edit nor the test set contains); the tuning side (this audit,
             the search, the joint rounds) uses seeds disjoint from the test seeds (TUNING_SEED_OFFSET)
    choose   destination towards the under-represented side: "a male X" when F > t, "a female X" when F < t;
             a profession already within tolerance on the test prompts is left unedited
    search   λ_p per profession on the tuning prompts pooled (debias.search), each candidate tried through
             conditioning_transform (no weight written), the same seeds (and prompts) at every λ
    joint    one M for all professions, each pinned to what its own edit gives it (+ anchors and preserve rows,
             c* = c); re-measure every profession under it on the tuning prompts with fresh seeds each round and
             re-tune the strengths against cross-effects from all rounds pooled
    after    audit the test prompts with the same seeds under the final edit (after/); side effects on
             unrelated prompts (mean absolute pixel change at fixed seeds)
    outputs  edit.safetensors (UCE-compatible keys), fix.json, and optionally a full diffusers folder

Images and labels live in one cache (``out/images``, ``out/index``) keyed by model, edit matrix,
sampler, prompt and seed; finished searches are stored in ``out/search/``. Running the same command
twice gives the same λs and numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from debias import __version__, stats
from debias.errors import InputError
from debias.generate import edit_id, items_for_seeds, measure, work_items
from debias.prompts import profession_prompts, templates_from_option
from debias.search import SearchResult, search_lambda

# Defaults sized for the built-in mini model: the whole fix of its 8 professions is 5,500-8,500 images (before and
# after audits 2 × 8 × 128, tuning audit 8 × 128, searches ≤ 320 per edited profession, one to three joint
# measurements of 8 × 128, side effects 4 × 16 × 2), 5-8 minutes at the mini model's ~18 images/s on 2 cores. What they buy: each
# profession's held-out share to about ±0.09 (95%) before and after, λ_p to about ±0.08 on the tuning prompts, and
# joint rounds that see a cross-effect of ±0.09 (±0.06 once two rounds are pooled).
DEFAULT_BUDGET = 320  # images per profession for the λ search (≈ ±0.08 at 95% on the tuning prompts)
DEFAULT_TEST_IMAGES = 128  # per profession, before and after, on the held-out test prompts (≈ ±0.09)
DEFAULT_CHECK_IMAGES = 128  # per profession and joint round, tuning prompts (≈ ±0.09)
DEFAULT_JOINT_ROUNDS = 2
DEFAULT_SIDE_SEEDS = 16  # seeds per unrelated prompt for the side-effect check
LOG_LAMBDA_BOUNDS = (math.log(1e-4), math.log(1e4))
# An edit may move the conditioning of unrelated prompts by at most this (mean relative norm of ‖(M − I)c‖ over
# their token rows). On the mini model the demo's joint edit moves them by 0.086 and their images by 0.005 mean
# absolute pixel change (0–1); without a limit the strongest edits change every prompt. None turns the limit off.
DEFAULT_MAX_DRIFT = 0.12
# Anchors: the bare augmentation templates ("a photo of", …) and the empty prompt, kept where they are (c* = c) with this
# weight relative to one edit row. They hold the context every prompt shares (template words, end and padding
# tokens) in place, so the edit moves what the profession word adds and not what all prompts have in common. On the
# mini model, at a drift of unrelated prompts ≤ 0.12 the edit then moves its own prompt 1.5× (nurse) to 1.6×
# (engineer) as far.
DEFAULT_ANCHOR_STRENGTH = 100.0
# How strongly the joint edit holds each profession's rows at what its own tuned edit gives them, as λ_rel of a ridge
# (chosen by a check without test prompts, see joint_from_pins and benchmarks/joint_pin.py).
JOINT_PIN_LAMBDA_RELATIVE = 0.3
# A joint round re-tunes a profession only when its λ would move by more than this (in log λ, i.e. 1%).
MIN_CORRECTION = 0.01
# The tuning side (tuning audit, λ search, joint rounds) draws its seeds from seed + this, the test audits from seed:
# the strengths are judged on seeds as well as prompts they were not tuned on. A seed's starting noise decides much
# of the perceived gender whatever the prompt says: on the mini model the per-seed count of "female" images over its
# 8 professions has a variance of about 6 where independent draws would give 1.5, and it correlates 0.92 between
# "a photo of …" and the held-out prompts. Tuning on the test seeds would fit their leaning and flatter the result.
TUNING_SEED_OFFSET = 1_000_000

UNEDITED = "already_within_tolerance"
GENDER_WORDS = {"female": "female", "male": "male"}
DEFAULT_SIDE_PROMPTS = (
    "a photo of an apple", "a photo of a car", "a photo of a tree", "a photo of a house", "a bowl of fruit on a table",
    "a city street at night", "a mountain landscape", "a cup of coffee", "a red bicycle", "a sailing boat on the sea",
)


# ------------------------------------------------------------------------------------------ helpers
def destination_phrase(entry_phrase: str, side: str) -> str:
    """ "a nurse" + "male" → "a male nurse"; "an engineer" + "female" → "a female engineer" (article follows)."""
    name = entry_phrase.split(" ", 1)[1]
    return f"a {GENDER_WORDS[side]} {name}"


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Profession:
    """Everything the fix knows about one profession while it works."""

    entry: Any  # ProfessionEntry
    target: float
    before: dict  # the before/audit.json row (test prompts)
    tuning_before: dict  # the tuning/audit.json row
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


# ---------------------------------------------------------------------------------------------- fix
def fix(
    model: Any = "mini",
    *,
    professions: str | os.PathLike | Sequence[Any] | None = None,
    out: str | os.PathLike = "runs/fix",
    target: float = 0.5,
    tolerance: float = 0.05,
    budget: int = DEFAULT_BUDGET,
    test_images: int = DEFAULT_TEST_IMAGES,
    check_images: int = DEFAULT_CHECK_IMAGES,
    joint_rounds: int = DEFAULT_JOINT_ROUNDS,
    tuning_templates: Sequence[str] | None = None,
    preserve: Sequence[str] | str | os.PathLike | None = None,
    preserve_strength: float = 1.0,
    anchor_strength: float = DEFAULT_ANCHOR_STRENGTH,
    side_prompts: Sequence[str] | None = None,
    side_seeds: int = DEFAULT_SIDE_SEEDS,
    seed: int = 0,
    classifier: Any = None,
    min_confidence: float = 0.6,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    save_pipeline: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    log_lambda_bounds: tuple[float, float] = LOG_LAMBDA_BOUNDS,
    max_drift: float | None = DEFAULT_MAX_DRIFT,
    progress: bool = True,
    log: Callable[[str], None] | None = _echo,
) -> dict[str, Any]:
    """Fix a model's gender shares per profession; writes the run folder ``out`` and returns ``fix.json``'s record.

    ``budget`` bounds the images the λ search may use per profession (never exceeded). ``tuning_templates``
    are the prompts the strengths are tuned on (default: the model family's validation templates); image i of
    a profession uses template i mod their number, so the search and the joint rounds pool them. ``preserve`` is a
    list of prompts (or a file, one per line) to keep where they are (UCE-style, c* = c); the professions
    left unedited are always preserved. ``anchor_strength`` weighs the anchors (the bare augmentation templates and
    the empty prompt, kept fixed in the search and the joint edit alike; 0 turns them off). ``side_prompts``
    are the unrelated prompts of the side-effect check (default: the mini world's objects, or a list of
    everyday objects and scenes for real models).
    """
    from debias import audit as audit_mod
    from debias.generate import ImageCache, default_batch_size, default_settings
    from debias.models import model_info
    from debias.threads import set_threads

    say = log or (lambda _m: None)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    _check_options(target, tolerance, budget, test_images, check_images, joint_rounds, side_seeds, anchor_strength)
    if tuning_templates:  # read before loading anything, so a typo fails in a second, not after a download
        tuning_templates = templates_from_option(list(tuning_templates), "--tuning-templates")
    n_threads = set_threads(threads)
    dist = audit_mod.distributed_from_env()
    pipe, spec, is_mini = audit_mod.resolve_pipeline(model, allow_pickle, dist, device, dtype)
    audit_mod.say_profile(pipe)
    entries = audit_mod.resolve_professions(professions, is_mini)
    clf = audit_mod.resolve_classifier(classifier, is_mini, None, None, None, min_confidence, pipe)
    settings = default_settings(pipe, is_mini=is_mini, steps=steps, guidance=guidance, height=height, width=width)
    batch = batch_size or default_batch_size(pipe, is_mini, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(out)
    oracle = audit_mod.mini_oracle() if is_mini else None
    templates = _tuning_templates(tuning_templates, is_mini, audit_mod)
    augmentations = _augmentations(is_mini)
    anchor_prompts = anchor_prompts_for(augmentations) if anchor_strength > 0 else []
    anchors = _Anchors(_probe_rows(pipe, anchor_prompts), anchor_strength) if anchor_prompts else None
    ctx = _Context(pipe=pipe, clf=clf, settings=settings, cache=cache, batch=batch, oracle=oracle, say=say,
                   progress=progress, anchors=anchors)

    common = dict(classifier=clf, target=target, tolerance=tolerance, batch_size=batch, steps=steps,
                  guidance=guidance, height=height, width=width, threads=n_threads, cache=cache, progress=progress)
    tuning_seed = seed + TUNING_SEED_OFFSET

    # 1. before: held-out test prompts and the tuning prompts (cached images make a rerun free)
    say(f"fix: auditing {len(entries)} professions before the edit ({test_images} images each, test prompts)")
    before = audit_mod.audit(pipe, professions=entries, images_per_profession=test_images, out=out / "before",
                             prompt_set="test", seed=seed, stage="before", **common)
    tuning = audit_mod.audit(pipe, professions=entries, images_per_profession=check_images, out=out / "tuning",
                             prompt_set="tuning", templates=tuning_templates, seed=tuning_seed, stage="tuning",
                             **common)
    ctx.used["before"], ctx.used["tuning"] = _images_read(before), _images_read(tuning)
    profs = [
        _Profession(entry=e, target=e.target if e.target is not None else target, before=b, tuning_before=tb)
        for e, b, tb in zip(entries, before["professions"], tuning["professions"])
    ]

    # 2. destinations, from the tuning audit only: the test audit is a judge, never an input
    for p in profs:
        share = p.tuning_before["share_female"]
        if share is None:
            p.status = "not_reachable"
            say(f"  {p.name}: no classified image on the tuning prompts; cannot choose a destination")
            continue
        if stats.within_band(share, p.target, tolerance):
            p.status = UNEDITED
            say(f"  {p.name}: share {share:.2f} on the tuning prompts already within {p.target} ± {tolerance}; "
                "left unedited")
            continue
        _choose_destination(p, share, pipe, augmentations)

    # the strongest edit allowed per profession: unrelated prompts' conditioning may move by at most max_drift
    probe_prompts = tuple(side_prompts or _default_side_prompts(is_mini))
    probe = _probe_rows(pipe, probe_prompts) if max_drift is not None and probe_prompts else None
    for p in profs:
        if p.side is not None:
            p.bounds = _drift_bounds(p, probe, max_drift, log_lambda_bounds, anchors)
            if p.bounds[0] > log_lambda_bounds[0]:
                say(f"  {p.name}: λ_rel ≥ {math.exp(p.bounds[0]):.3g} keeps unrelated prompts' conditioning within "
                    f"{max_drift:.0%} (stronger edits would change them)")

    # 3. search λ_p per profession on the tuning prompts
    search_dir = out / "search"
    start_hint: Optional[float] = None
    for p in profs:
        if p.side is None:
            continue
        tuning_prompts = profession_prompts(p.entry, templates)
        inputs = {"model": model_info(pipe, spec)["fingerprint"], "classifier": clf.cache_id,
                  "settings": settings.to_dict(), "source": p.entry.phrase, "destination": p.destination,
                  "augmentations": list(augmentations), "anchors": anchor_prompts,
                  "anchor_strength": anchor_strength, "prompts": tuning_prompts, "target": p.target,
                  "tolerance": tolerance, "budget": budget, "seed": tuning_seed, "bounds": list(p.bounds),
                  "start": start_hint, "seeds_per_round": _seeds_per_round(p.tuning_before, budget), "version": 3}
        path = search_dir / f"{_slug(p.name)}.json"
        result = _load_search(path, inputs)
        if result is not None:
            say(f"search {p.name}: reusing the finished search in {path}")
        else:
            say(f"search {p.name}: '{p.entry.phrase}' → '{p.destination}' on {_quoted(tuning_prompts)}, "
                f"share before {p.tuning_before['share_female']:.2f}, budget {budget} images")
            result = search_lambda(
                ctx.evaluator(tuning_prompts, p, tuning_seed), target=p.target, tolerance=tolerance, budget=budget,
                log_lambda_bounds=p.bounds, log_lambda_start=start_hint, first_seed=tuning_seed,
                seeds_per_round=_seeds_per_round(p.tuning_before, budget),
                direction=p.direction, rng_seed=seed,
                on_evaluation=lambda e, used, name=p.name: ctx.report(name, e, used, budget),
            )
            from debias.io import atomic_write_json

            atomic_write_json(path, {"inputs": inputs, "result": result.to_dict(p.scale)})
        p.search = result
        ctx.used["search"] += result.images_used
        say(f"search {p.name}: {result.status} — λ_rel {_fmt(result.lambda_relative)}, share "
            f"{_fmt(result.share)} [{_fmt(result.ci_low)}, {_fmt(result.ci_high)}], {result.images_used} images")
        if result.status == "not_reachable":
            # still edited, at the strongest allowed λ: it moves the share as far towards the target as the
            # limits allow (the status says it does not get there; closest_share says how close)
            p.status = "not_reachable"
            if result.log_lambda_relative is None or not p.search.evaluations:
                continue
        p.log_lambda = result.log_lambda_relative
        p.slope = _fitted_slope(result)
        if result.status != "not_reachable":
            start_hint = p.log_lambda if start_hint is None else start_hint

    # 4. joint edit with cross-effect corrections
    edited = [p for p in profs if p.edited]
    preserve_prompts = _preserve_prompts(preserve, [p for p in profs if not p.edited])
    preserve_rows = _preserve_rows(pipe, preserve_prompts, augmentations) if preserve_prompts else None
    M = None
    for rnd in range(joint_rounds + 1):
        if not edited:
            break
        M = _joint_matrix(edited, preserve_rows, preserve_strength, anchors)
        say(f"joint round {rnd}: one edit for {len(edited)} professions; re-measuring all {len(profs)} "
            f"on the tuning prompts ({check_images} fresh seeds each)")
        first = tuning_seed + rnd * check_images  # fresh seeds every round: pooled over rounds, the noise averages out
        items, owner = [], []
        for p in profs:  # the tuning audit's pairing of seeds and templates, continued
            items += work_items(profession_prompts(p.entry, templates), rnd * check_images, check_images,
                                tuning_seed)
            owner += [p.name] * check_images

        results = measure(pipe, clf, items, settings=settings, cache=cache, edit=M, batch_size=batch, oracle=oracle,
                          progress=progress, description=f"joint round {rnd}", stage="joint")
        ctx.used["joint"] += len(results)
        by_name: dict[str, list[str]] = {}
        for name, r in zip(owner, results):
            by_name.setdefault(name, []).append(r.label)
        pushed_out = []
        for p in profs:
            f, m, u = stats.count_labels(by_name[p.name])
            est = stats.estimate(f, m, u, target=p.target)
            p.joint.append({"round": rnd, "lambda_relative": math.exp(p.log_lambda) if p.edited else None,
                            "first_seed": first, "n_female": f, "n_male": m, "n_unclear": u,
                            "share_female": est.share_female, "ci_low": est.ci_low, "ci_high": est.ci_high})
            # an unedited profession joins only on evidence: outside the band and an interval that excludes the
            # target (a share of a hundred images is ±0.1; chasing its noise would edit a profession for nothing)
            if (not p.edited and p.status == UNEDITED and est.share_female is not None
                    and abs(est.share_female - p.target) > tolerance and not est.ci_low <= p.target <= est.ci_high):
                pushed_out.append((p, est.share_female))
        say("  " + ", ".join(f"{p.name} {_fmt(p.joint[-1]['share_female'])}" for p in profs))
        if rnd == joint_rounds:
            break
        # a profession left unedited that the others' edits pushed out of the band joins the edit
        for p, share in pushed_out:
            _join(p, share, rnd, edited, pipe, augmentations, probe, max_drift, log_lambda_bounds, anchors)
            edited.append(p)
            say(f"  {p.name}: pushed to {share:.2f} by the other edits; joins the edit towards '{p.destination}' "
                f"at λ_rel {math.exp(p.log_lambda):.3g}")
        if pushed_out:
            preserve_prompts = _preserve_prompts(preserve, [p for p in profs if not p.edited])
            preserve_rows = _preserve_rows(pipe, preserve_prompts, augmentations) if preserve_prompts else None
        moved = [p for p, _ in pushed_out]
        for p in edited:
            if p.joined_round == rnd:
                continue
            new = pooled_correction(p)
            if abs(new - p.log_lambda) > MIN_CORRECTION:
                p.log_lambda = new
                moved.append(p)
        if not moved:
            say("  every edited profession sits where its measurements put the target; no further rounds")
            break
        say("  re-tuned: " + ", ".join(f"{p.name} λ_rel {math.exp(p.log_lambda):.3g}" for p in moved))

    # 5. after: the held-out test prompts with the same seeds, under the edit exactly as it ships (the edit file's
    #    weights loaded into the model, in its dtype), and the side effects on unrelated prompts
    edit_file, edit_info, metadata = out / "edit.safetensors", None, None
    if M is not None:
        from debias.editing import save_edit

        metadata = _edit_metadata(profs, preserve_prompts, preserve_strength, anchor_prompts, anchor_strength,
                                  augmentations, target, tolerance)
        save_edit(edit_file, pipe, M, metadata=metadata)  # same edit, same bytes: reruns keep the hash
        edit_info = {"path": "../edit.safetensors", "sha256": _file_sha256(edit_file), "matrix_sha256": edit_id(M),
                     "applied_as": "weights loaded from the edit file"}
    else:
        say(f"fix: nothing to edit: {_nothing_edited(profs)}. No edit file is written and the model is unchanged.")
        edit_file.unlink(missing_ok=True)  # an earlier run's edit would no longer describe this run
    side_items = _side_items(probe_prompts, side_seeds, seed) if M is not None else []
    side_plain = ctx.measure(side_items, "side_effects", "side effects: unedited")
    say(f"fix: auditing after the edit ({test_images} images each, same seeds)")
    with _shipped(pipe, edit_file if M is not None else None):
        after = audit_mod.audit(pipe, professions=entries, images_per_profession=test_images, out=out / "after",
                                prompt_set="test", edit_info=edit_info, seed=seed, stage="after", **common)
        ctx.used["after"] = _images_read(after)
        side_edited = ctx.measure(side_items, "side_effects", "side effects: edited")
        if save_pipeline is not None and M is not None:
            _save_fixed_pipeline(pipe, save_pipeline, model_info(pipe, spec), metadata)
            say(f"wrote edited pipeline {save_pipeline}")
    if save_pipeline is not None and M is None:
        say(f"fix: no pipeline written to {save_pipeline}: nothing was edited, so the base model is the fixed one")
    side = _side_effects(ctx, probe_prompts, side_seeds, side_plain, side_edited)
    if M is not None and probe is not None:
        side["conditioning_drift"] = conditioning_drift(M, probe)
    side["max_drift"] = max_drift

    record = _record(profs, before, after, tuning, side, model_info(pipe, spec), clf, settings, target, tolerance,
                     budget, test_images, check_images, joint_rounds, preserve_prompts, preserve_strength,
                     anchor_prompts, anchor_strength, seed, augmentations, templates, out, M, n_threads, dist,
                     image_counts(cache, ctx.used), started, time.perf_counter() - t0, audit_mod)
    from debias.io import atomic_write_json

    atomic_write_json(out / "fix.json", record)
    from debias.report import render_report

    render_report([out])
    return record


def _choose_destination(p: _Profession, share: float, pipe, augmentations) -> None:
    set_destination(p, "male" if share > p.target else "female", pipe, augmentations)


def set_destination(p: _Profession, side: str, pipe, augmentations) -> None:
    """Point ``p``'s edit at "a {side} X": its destination, edit rows and λ scale."""
    from debias.editing import lambda_scale

    p.side = side
    p.destination = destination_phrase(p.entry.phrase, side)
    p.rows = _edit_rows(pipe, p.entry.phrase, p.destination, augmentations)
    p.scale = lambda_scale(p.rows[0])


def edit_reach(p: _Profession, log_lambda_relative: float, anchors: Optional["_Anchors"]) -> float:
    """How far ``p``'s edit alone carries its own rows towards the destination: ‖(M − I)C‖ / ‖C* − C‖ (0 … ~1)."""
    C, C_star = p.rows
    M = single_matrix(p, log_lambda_relative, anchors)
    return float((C @ M.T - C).norm() / (C_star - C).norm().clamp_min(1e-12))


def _join(p: _Profession, share: float, rnd: int, edited: list[_Profession], pipe, augmentations, probe, max_drift,
          bounds: tuple[float, float], anchors: Optional["_Anchors"]) -> None:
    """Give an unedited profession that the joint edit pushed out of the band an edit of its own, without a search.

    Its strength comes from the professions already tuned: each of them needed its edit to reach a fraction
    ``reach_q`` of the way to its destination to shift the logit of its share by ``L_q``. The joiner needs a
    shift of logit(t) − logit(share), so it gets the λ whose reach is that shift at the median logit per reach
    (found on the matrices alone, no images); later rounds correct it with the median fitted slope.
    """
    _choose_destination(p, share, pipe, augmentations)
    p.bounds = _drift_bounds(p, probe, max_drift, bounds, anchors)
    per_reach = [abs(_logit(q.target) - _logit(q.tuning_before["share_female"]))
                 / max(edit_reach(q, q.log_lambda, anchors), 1e-6)
                 for q in edited if q.tuning_before.get("share_female") is not None]
    needed = abs(_logit(p.target) - _logit(share)) / (float(np.median(per_reach)) if per_reach else 4.0)
    x = _first_at_most(lambda y: edit_reach(p, y, anchors), *p.bounds, needed)
    p.log_lambda, p.joined_round, p.status = (p.bounds[1] if x is None else x), rnd, ""
    slopes = [abs(q.slope) for q in edited if q.slope]
    p.slope = p.direction * (float(np.median(slopes)) if slopes else 1.0)


def pooled_correction(p: _Profession) -> float:
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
    step = float(np.clip((_logit(p.target) - a) / slope, -math.log(10), math.log(10)))
    return float(np.clip(p.log_lambda + step, *p.bounds))


# ------------------------------------------------------------------------------------------- context
@dataclass
class _Context:
    pipe: Any
    clf: Any
    settings: Any
    cache: Any
    batch: int
    oracle: Any
    say: Callable[[str], None]
    progress: bool
    anchors: Optional["_Anchors"] = None
    used: Counter = field(default_factory=Counter)  # images read per stage (see image_counts)

    def measure(self, items: Sequence[tuple[str, int]], stage: str, description: str) -> list:
        """Generate (or reuse) and classify ``items`` with the pipeline as it is now, counted under ``stage``."""
        if not items:
            return []
        results = measure(self.pipe, self.clf, items, settings=self.settings, cache=self.cache, edit=None,
                          batch_size=self.batch, oracle=self.oracle, progress=self.progress, description=description,
                          stage=stage)
        self.used[stage] += len(results)
        return results

    def evaluator(self, prompts: Sequence[str], p: _Profession, seed_base: int):
        """``evaluate(λ_rel, seeds) -> labels`` for the search: tuning prompts under the single edit of ``p``."""
        def evaluate(lambda_relative: float, seeds: Sequence[int]) -> list[str]:
            M = None if math.isinf(lambda_relative) else single_matrix(p, math.log(lambda_relative), self.anchors)
            results = measure(self.pipe, self.clf, items_for_seeds(prompts, seeds, seed_base), settings=self.settings,
                              cache=self.cache, edit=M, batch_size=self.batch, oracle=self.oracle,
                              progress=self.progress, description=f"{p.name}: {len(seeds)} images", stage="search")
            return [r.label for r in results]

        return evaluate

    def report(self, name: str, e, used: int, budget: int) -> None:
        lam = "unedited" if math.isinf(e.log_lambda_relative) else f"λ_rel {e.lambda_relative:.3g}"
        share = "—" if math.isnan(e.share) else f"{e.share:.2f}"
        self.say(f"  {name}: round {e.round} {e.phase:9s} {lam:>16s}: share {share} of {len(e.seeds)} "
                 f"(unclear {e.n_unclear}); {used}/{budget} images")


# -------------------------------------------------------------------------------------------- pieces
def _check_options(target, tolerance, budget, test_images, check_images, joint_rounds, side_seeds,
                   anchor_strength) -> None:
    if not 0.0 < target < 1.0:
        raise InputError(f"--target must be a share strictly between 0 and 1 (an edit can move a share towards it), "
                         f"got {target}")
    if not 0.0 < tolerance < 0.5:
        raise InputError(f"--tolerance must be in (0, 0.5), got {tolerance}")
    if budget < 32:
        raise InputError(f"--budget is the number of images the λ search may use per profession; at least 32, "
                         f"got {budget}")
    for name, value in (("--test-images", test_images), ("--check-images", check_images)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if joint_rounds < 0:
        raise InputError(f"--joint-rounds must be >= 0, got {joint_rounds}")
    if side_seeds < 0:
        raise InputError(f"--side-seeds must be >= 0, got {side_seeds}")
    if not (math.isfinite(anchor_strength) and anchor_strength >= 0):
        raise InputError(f"--anchor-strength must be a finite number >= 0 (0 turns the anchors off), "
                         f"got {anchor_strength}")


def _tuning_templates(given: tuple[str, ...] | None, is_mini: bool, audit_mod) -> tuple[str, ...]:
    """The templates λ_p is tuned on; a test template among them would let the search see the final judge."""
    templates = given or audit_mod.resolve_templates(None, "tuning", is_mini)[0]
    test = audit_mod.resolve_templates(None, "test", is_mini)[0]
    test_lower = {t.lower() for t in test}
    shared = [t for t in templates if t.lower() in test_lower]
    if shared:
        raise InputError(f"--tuning-templates: {shared[0]!r} is one of the held-out test templates "
                         f"({', '.join(repr(t) for t in test)}); tuning on it would grade the fix on prompts it "
                         "was tuned on. Choose validation templates that the test set does not contain.")
    return templates


def _quoted(prompts: Sequence[str]) -> str:
    return ", ".join(f"'{p}'" for p in prompts)


def _augmentations(is_mini: bool) -> tuple[str, ...]:
    if is_mini:
        from debias.mini import world

        return tuple(world.AUGMENTATIONS)
    from debias.editing import DEFAULT_AUGMENTATIONS

    return tuple(DEFAULT_AUGMENTATIONS)


def _default_side_prompts(is_mini: bool) -> tuple[str, ...]:
    if is_mini:
        from debias.mini import world

        return tuple(world.OBJECT_PROMPTS)
    return DEFAULT_SIDE_PROMPTS


def anchor_prompts_for(augmentations: Sequence[str]) -> list[str]:
    """The bare templates ("a photo of {}" → "a photo of") and the empty prompt: context that every prompt shares."""
    prompts = [t.replace("{}", " ").strip() for t in augmentations] + [""]
    return list(dict.fromkeys(" ".join(p.split()) for p in prompts))


@dataclass(frozen=True)
class _Anchors:
    """Conditioning rows kept fixed by every edit of a fix, and their weight relative to one edit row."""

    rows: torch.Tensor
    strength: float


def single_matrix(p: _Profession, log_lambda_relative: float, anchors: Optional[_Anchors]) -> torch.Tensor:
    """M of ``p``'s edit alone at λ_rel (with the anchors), as the search tries it."""
    from debias.editing import edit_matrix

    lam = math.exp(log_lambda_relative) * p.scale
    if anchors is None:
        return edit_matrix(p.rows[0], p.rows[1], lam)
    return edit_matrix(p.rows[0], p.rows[1], lam, preserve=anchors.rows, preserve_weight=anchors.strength)


def _edit_rows(pipe, source: str, destination: str, augmentations) -> tuple[torch.Tensor, torch.Tensor]:
    from debias.editing import edit_rows

    C, C_star = edit_rows(pipe, source, destination, augmentations)
    return C.double(), C_star.double()


def _probe_rows(pipe, prompts: Sequence[str]) -> torch.Tensor:
    from debias.editing import encode_conditioning

    emb = encode_conditioning(pipe, list(prompts))
    return emb.reshape(-1, emb.shape[-1]).double()


def conditioning_drift(M: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean relative change ‖(M − I)c‖ / ‖c‖ of the token rows ``c`` of unrelated prompts under the edit ``M``."""
    M = M.to(rows.dtype)
    return float(((rows @ M.T - rows).norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12)).mean())


def _drift_bounds(p: _Profession, probe, max_drift, bounds: tuple[float, float],
                  anchors: Optional[_Anchors] = None) -> tuple[float, float]:
    """(low, high) log λ_rel for ``p``: low raised until the single edit moves the probe rows by ≤ max_drift."""
    lo, hi = bounds
    if probe is None or max_drift is None:
        return bounds

    def drift(x: float) -> float:
        return conditioning_drift(single_matrix(p, x, anchors), probe)

    strongest = _first_at_most(drift, lo, hi, max_drift)
    if strongest is None:  # even the weakest edit is too broad: leave one unit of log λ to show it
        return (hi - 1.0, hi)
    return (strongest, hi)


def _first_at_most(f: Callable[[float], float], lo: float, hi: float, level: float) -> Optional[float]:
    """The smallest x in [lo, hi] with f(x) <= level, for f falling as x grows (None: not even at hi).

    Both uses are functions of log λ that fall as the edit weakens (drift of unrelated prompts, an edit's reach),
    so this finds the strongest edit that stays within a limit.
    """
    if f(lo) <= level:
        return lo
    if f(hi) > level:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if f(mid) <= level else (mid, hi)
    return hi


def _seeds_per_round(tuning_row: dict, budget: int) -> int:
    """Base seeds per λ so that about six images per λ are clear (unclear ones say nothing about the share)."""
    n, unclear = tuning_row["n"], tuning_row["n_unclear"]
    clear_rate = max((n - unclear) / n if n else 1.0, 0.2)
    return int(min(max(8, math.ceil(6 / clear_rate)), 32, budget // 4))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_") or "profession"


def _load_search(path: Path, inputs: dict) -> Optional[SearchResult]:
    """A finished search stored in the run folder, if it was made with exactly these inputs."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("inputs") != json.loads(json.dumps(inputs)):
        return None
    return SearchResult.from_dict(saved["result"])


def _fitted_slope(result: SearchResult) -> Optional[float]:
    """d logit(F) / d log λ_rel of the search's final fit (used to correct cross-effects)."""
    from debias.search import fit_window

    fit = fit_window(result.evaluations, result.bracket, result.direction or 1)
    if fit is None or abs(fit.b) < 1e-6:
        return None
    return fit.b


def _preserve_prompts(preserve, unedited: list[_Profession]) -> list[str]:
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


def _preserve_rows(pipe, prompts: Sequence[str], augmentations) -> torch.Tensor:
    return _probe_rows(pipe, [p for prompt in prompts for p in [prompt, *(t.format(prompt) for t in augmentations)]])


def _joint_matrix(edited: list[_Profession], preserve_rows, preserve_strength: float,
                  anchors: Optional[_Anchors] = None, pin: float = JOINT_PIN_LAMBDA_RELATIVE) -> torch.Tensor:
    """One M that gives every edited profession's rows what its own tuned edit gives them.

    Each profession's search tuned λ_p for its edit *alone*. Summing the edits with strengths 1/λ_p (TIME's
    joint form) lets strong edits drag the rows of weak ones: on the mini model the joint edit moved a
    profession's tuning prompt away from where its own edit puts it by 0.1-5.4 times that edit's size (worst
    for the weakest edits). So the joint edit instead pins each profession's rows C_p to their single-edit
    image C_p M_pᵀ, all with one weight (λ_rel = ``pin``), and reconciles the pins by least squares where rows
    overlap. See :func:`joint_from_pins` for how the pin strength was chosen.
    """
    pins = [(p.rows[0], p.rows[0] @ single_matrix(p, p.log_lambda, anchors).T, pin * p.scale) for p in edited]
    return joint_from_pins(pins, kept_rows(preserve_rows, preserve_strength, anchors))


def kept_rows(preserve_rows, preserve_strength: float, anchors: Optional[_Anchors]) -> list[tuple]:
    """The (rows, weight) blocks the joint edit keeps in place: preserve rows and anchors."""
    return [(preserve_rows, preserve_strength)] + ([(anchors.rows, anchors.strength)] if anchors else [])


def joint_from_pins(pins: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
                    kept: Sequence[tuple[Optional[torch.Tensor], float]] = ()) -> torch.Tensor:
    """M holding each pin's rows C at their targets T (``(C, T, λ)`` triples) and the ``kept`` rows in place.

    A weight β on kept rows P counts against the median pin weight 1/λ (weight 1 on √β·P), so anchors and
    preserve rows mean the same in the joint edit as in a single one. The pin strength trades two errors. A
    strong pin reproduces each single edit exactly on the rows it pins but extrapolates to other contexts
    through a near-interpolation over every profession's rows; a weak pin under-delivers and leaves more to
    the joint rounds. ``benchmarks/joint_pin.py`` measures the extrapolation without the test prompts: pin
    three of the four edit contexts (bare prompt and augmentations), calibrate each profession on the pinned
    rows as a joint round would, and compare the joint edit with the single edits on the fourth. On the mini
    model the error is smallest at λ_rel 0.3 in each of four runs' edits (0.044-0.056 of the single edits' move,
    against 0.057-0.077 at 0.03 and 0.052-0.092 at 1). In images (1,024 held-out test images per profession) the
    gap between each profession's share on the tuning prompts and on the test prompts fell from 0.052 to 0.034.
    """
    from debias.editing import joint_edit_matrix

    unit = float(np.median([1.0 / lam for _, _, lam in pins]))
    blocks = [rows * math.sqrt(strength * unit) for rows, strength in kept if rows is not None and strength > 0]
    if not blocks:
        return joint_edit_matrix(pins)
    return joint_edit_matrix(pins, preserve=torch.cat(blocks), preserve_weight=1.0)


def _side_items(prompts: Sequence[str], n_seeds: int, seed: int) -> list[tuple[str, int]]:
    return [(p, seed + i) for p in prompts for i in range(n_seeds)]


def _side_effects(ctx: _Context, prompts: Sequence[str], n_seeds: int, plain: list, edited: list) -> dict:
    """Mean absolute pixel change (0–1) of unrelated prompts at fixed seeds, edit vs no edit."""
    block: dict[str, Any] = {"metric": "mean_abs_pixel_change", "mean_abs_pixel_change": None, "seeds": n_seeds,
                             "prompts": []}
    if not plain:
        return block
    a_u8 = ctx.cache.read_images([r.key for r in plain])
    b_u8 = ctx.cache.read_images([r.key for r in edited])
    diff = np.abs(a_u8.astype(np.float64) - b_u8.astype(np.float64)).mean(axis=(1, 2, 3)) / 255.0
    scoring = getattr(ctx.clf, "encode_text", None) is not None
    rows = []
    for j, prompt in enumerate(prompts):
        part = slice(j * n_seeds, (j + 1) * n_seeds)
        samples = [{"seed": plain[k].seed, "before": plain[k].image, "after": edited[k].image}
                   for k in range(part.start, min(part.start + 4, part.stop))]
        score_before = float(ctx.clf.clip_score(a_u8[part], prompt).mean()) if scoring else None
        score_after = float(ctx.clf.clip_score(b_u8[part], prompt).mean()) if scoring else None
        rows.append({"prompt": prompt, "mean_abs_pixel_change": float(diff[part].mean()),
                     "clip_score_before": score_before, "clip_score_after": score_after, "samples": samples})
    block["mean_abs_pixel_change"] = float(diff.mean())
    if scoring:
        block["clip_score_before"] = float(np.mean([r["clip_score_before"] for r in rows]))
        block["clip_score_after"] = float(np.mean([r["clip_score_after"] for r in rows]))
        block["clip_score_note"] = (f"100 · cosine(image, prompt) under {ctx.clf.model}, averaged over seeds; the "
                                    f"same seeds with and without the edit")
    block["prompts"] = rows
    block["note"] = ("pixel values on a 0–1 scale, averaged over pixels, channels, seeds and prompts; the same seeds "
                     "with and without the edit (as shipped: the edit file's weights)")
    return block


@contextlib.contextmanager
def _shipped(pipe, edit_file: Optional[Path]):
    """The pipeline with ``edit_file`` loaded into its weights, as a user of the file gets it; restored on exit.

    The search tries edits by transforming the conditioning, which is exact in float32; in float16 or bfloat16
    weights the small change W·M − W is partly rounded away, so what is judged and saved must be the baked edit.
    """
    if edit_file is None:
        yield pipe
        return
    from debias.editing import load_edit, revert_edit

    load_edit(pipe, edit_file)
    try:
        yield pipe
    finally:
        revert_edit(pipe)


def _save_fixed_pipeline(pipe, folder, base_model: dict, metadata: dict) -> None:
    """The edited model (its weights as loaded now) as a diffusers folder that records how it was made."""
    from debias.editing import save_pipeline as save_pipe

    save_pipe(pipe, folder, metadata={"kind": "edited_pipeline", "debias_version": __version__,
                                      "base_model": base_model, "profile": base_model.get("profile"), **metadata})


def _nothing_edited(profs: Sequence[_Profession]) -> str:
    """Why a fix made no edit, in words (from each profession's status)."""
    unedited = [p.name for p in profs if p.status == UNEDITED]
    unclassified = [p.name for p in profs if p.status == "not_reachable"]
    parts = []
    if unedited:
        parts.append(f"{len(unedited)} of {len(profs)} professions already lie within the band on the tuning prompts "
                     f"({', '.join(unedited)})")
    if unclassified:
        parts.append(f"{len(unclassified)} had no image the classifier could read on the tuning prompts "
                     f"({', '.join(unclassified)}; check the classifier, its labels and --min-confidence)")
    return "; ".join(parts) or "no profession was given"


def _images_read(audit_record: dict) -> int:
    return sum(row["n"] for row in audit_record["professions"])


FIX_STAGES = ("before", "tuning", "search", "joint", "after", "side_effects")


def image_counts(cache, used: dict[str, int]) -> dict[str, Any]:
    """Every image of the run folder by the stage that made it, and what each stage read.

    ``generated`` counts the images in the cache stamped with the stage that made them (in this run or an
    interrupted earlier one), so the stages' ``generated`` add up to the images in the cache; ``used`` is
    what the stage read (for the search, the images its evaluations count), ``reused`` the part of it that
    another stage had made (the unedited search point is the tuning audit's images, for example).
    """
    made = Counter(rec.get("stage") for rec in cache.images.values())
    by_stage = {s: {"generated": made.get(s, 0), "used": int(used.get(s, 0)),
                    "reused": max(int(used.get(s, 0)) - made.get(s, 0), 0)} for s in FIX_STAGES}
    other = sum(n for s, n in made.items() if s not in FIX_STAGES)
    return {"by_stage": by_stage, "generated": sum(v["generated"] for v in by_stage.values()),
            "used": sum(v["used"] for v in by_stage.values()), "other_in_cache": other,
            "in_cache": len(cache.images)}


def _edit_metadata(profs, preserve_prompts, preserve_strength, anchor_prompts, anchor_strength, augmentations,
                   target, tolerance) -> dict:
    edits = [{"source": p.entry.phrase, "destination": p.destination, "lambda": math.exp(p.log_lambda) * p.scale,
              "lambda_relative": math.exp(p.log_lambda), "lambda_scale": p.scale}
             for p in profs if p.edited]
    return {"kind": "fix", "edits": edits, "augmentations": list(augmentations), "preserve": list(preserve_prompts),
            "preserve_strength": preserve_strength, "anchors": list(anchor_prompts),
            "anchor_strength": anchor_strength, "joint_pin_lambda_relative": JOINT_PIN_LAMBDA_RELATIVE,
            "target": target, "tolerance": tolerance}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _clean(x: Optional[float]) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


# ------------------------------------------------------------------------------------------- record
def _profession_record(p: _Profession, after_row: dict, tolerance: float) -> dict:
    t = p.target
    share_after = after_row["share_female"]
    band = (t - tolerance, t + tolerance)
    within_after = stats.within_band(share_after, t, tolerance)
    if p.status in (UNEDITED, "not_reachable"):
        status = p.status
    elif within_after:
        status = "fixed"
    else:
        status = "budget_exhausted"
    lam_rel = math.exp(p.log_lambda) if p.edited else None
    search = p.search
    return {
        "profession": p.name, "phrase": p.entry.phrase, "target": t,
        "destination": p.destination, "status": status,
        "lambda": None if lam_rel is None else lam_rel * p.scale, "lambda_relative": lam_rel,
        "lambda_scale": p.scale if p.side else None,
        "lambda_relative_min": math.exp(p.bounds[0]) if p.side else None,  # strongest edit allowed (side effects)
        "share_before": p.before["share_female"], "ci_low_before": p.before["ci_low"],
        "ci_high_before": p.before["ci_high"], "n_before": p.before["n"],
        "share_after": share_after, "ci_low_after": after_row["ci_low"], "ci_high_after": after_row["ci_high"],
        "n_after": after_row["n"], "n_unclear_after": after_row["n_unclear"],
        "delta_before": p.before["delta"], "delta_after": after_row["delta"],
        "after_interval_within_band": bool(after_row["ci_low"] >= band[0] and after_row["ci_high"] <= band[1])
        if share_after is not None else False,
        "after_interval_overlaps_band": bool(after_row["ci_low"] <= band[1] and after_row["ci_high"] >= band[0])
        if share_after is not None else False,
        "planted_share": p.before.get("planted_share"), "oracle_share_before": p.before.get("oracle_share"),
        "oracle_share_after": after_row.get("oracle_share"),
        "tuning_share_before": p.tuning_before["share_female"],
        "images_used_in_search": search.images_used if search else 0,
        "search_status": search.status if search else None,
        "search_message": search.message if search else None,
        "search_lambda_relative": search.lambda_relative if search else None,
        "search_share": _clean(search.share) if search else None,
        "search_ci_low": _clean(search.ci_low) if search else None,
        "search_ci_high": _clean(search.ci_high) if search else None,
        "closest_share": _clean(search.closest_share) if search else None,
        "joint": p.joint,
        "joined_round": p.joined_round,  # left unedited, then edited after this joint round (cross-effect); or None
        # the search's evaluations at finite λ (the unedited reference is kept apart: it has no λ)
        "search": [row for row in search.trace(p.scale) if row["lambda"] is not None] if search else [],
        "search_unedited": next((row for row in search.trace(p.scale) if row["lambda"] is None), None)
        if search else None,
    }


def _record(profs, before, after, tuning, side, model, clf, settings, target, tolerance, budget, test_images,
            check_images, joint_rounds, preserve_prompts, preserve_strength, anchor_prompts, anchor_strength, seed,
            augmentations, templates, out, M, threads,
            dist, images, started, wall, audit_mod) -> dict:
    rows = [_profession_record(p, a, tolerance) for p, a in zip(profs, after["professions"])]
    within_before = sum(stats.within_band(r["share_before"], r["target"], tolerance) for r in rows)
    within_after = sum(stats.within_band(r["share_after"], r["target"], tolerance) for r in rows)
    generation = settings.to_dict()
    generation.pop("device")
    return {
        "kind": "fix", "debias_version": __version__, "model": model, "target": target, "tolerance": tolerance,
        "budget": budget, "test_images": test_images, "check_images": check_images, "joint_rounds": joint_rounds,
        "seed": seed, "tuning_seed": seed + TUNING_SEED_OFFSET, "classifier": clf.describe(), "generation": generation,
        "augmentations": list(augmentations),
        "tuning_templates": list(templates),
        "preserve": {"prompts": list(preserve_prompts), "strength": preserve_strength},
        "anchors": {"prompts": list(anchor_prompts), "strength": anchor_strength},
        "joint_pin_lambda_relative": JOINT_PIN_LAMBDA_RELATIVE,
        "versions": audit_mod.package_versions(), "hardware": audit_mod.hardware_info(settings, threads, dist),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_seconds": round(wall, 3),
        "edit_file": {"path": "edit.safetensors", "sha256": _file_sha256(out / "edit.safetensors"),
                      "matrix_sha256": edit_id(M)} if M is not None else None,
        "before": "before/audit.json", "after": "after/audit.json", "tuning_before": "tuning/audit.json",
        "mean_delta_before": before["mean_delta"], "mean_delta_before_ci_low": before["mean_delta_ci_low"],
        "mean_delta_before_ci_high": before["mean_delta_ci_high"],
        "mean_delta_after": after["mean_delta"], "mean_delta_after_ci_low": after["mean_delta_ci_low"],
        "mean_delta_after_ci_high": after["mean_delta_ci_high"],
        "mean_delta_noise_floor_after": after.get("mean_delta_noise_floor"),
        "within_tolerance_before": within_before, "within_tolerance_after": within_after,
        "after_intervals_overlapping_band": sum(r["after_interval_overlaps_band"] for r in rows),
        "edit_note": None if M is not None else f"nothing to edit: {_nothing_edited(profs)}",
        "images": images,
        "side_effects": side,
        "ci_note": stats.CI_NOTE,
        "professions": rows,
    }


def print_summary(record: dict[str, Any], file=None) -> None:
    """A readable table of the fix: per profession before → after with intervals, λ, status; headline Δ."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout)
    t, tol = record["target"], record["tolerance"]
    table = Table(title=f"Fix of {record['model'].get('spec')} (held-out test prompts, target {t} ± {tol})")
    for col in ("profession", "destination", "before", "after", "λ_rel", "search images", "status"):
        table.add_column(col, justify="left" if col in ("profession", "destination", "status") else "right")
    for r in record["professions"]:
        table.add_row(r["profession"], r["destination"] or "—",
                      f"{_fmt(r['share_before'], 2)} [{_fmt(r['ci_low_before'], 2)}, {_fmt(r['ci_high_before'], 2)}]",
                      f"{_fmt(r['share_after'], 2)} [{_fmt(r['ci_low_after'], 2)}, {_fmt(r['ci_high_after'], 2)}]",
                      _fmt(r["lambda_relative"]), str(r["images_used_in_search"]), r["status"])
    console.print(table)
    console.print(f"mean Δ before {_fmt(record['mean_delta_before'], 2)} [{_fmt(record['mean_delta_before_ci_low'], 2)}, "
                  f"{_fmt(record['mean_delta_before_ci_high'], 2)}] → after {_fmt(record['mean_delta_after'], 2)} "
                  f"[{_fmt(record['mean_delta_after_ci_low'], 2)}, {_fmt(record['mean_delta_after_ci_high'], 2)}] "
                  f"(a perfect edit would read {_fmt(record.get('mean_delta_noise_floor_after'), 2)} on as many "
                  f"images); within tolerance {record['within_tolerance_before']} → {record['within_tolerance_after']} "
                  f"of {len(record['professions'])}; after intervals reaching the band "
                  f"{record.get('after_intervals_overlapping_band', '—')} of {len(record['professions'])}")
    side = record.get("side_effects") or {}
    if side.get("mean_abs_pixel_change") is not None:
        console.print(f"side effect on unrelated prompts: mean absolute pixel change "
                      f"{side['mean_abs_pixel_change']:.4f} (0–1 scale, same seeds)")
    console.print(record["ci_note"])
    if record.get("edit_note"):
        console.print(f"{record['edit_note']}; no edit file was written and the model is unchanged")
    images = record["images"]
    made = ", ".join(f"{stage} {v['generated']}" for stage, v in images["by_stage"].items() if v["generated"])
    console.print(f"{record['wall_seconds']:.0f} s; {images['generated']} images generated ({made or 'none'}), "
                  f"{images['in_cache']} in the run folder's cache")
