"""The fix's record (``fix.json``) and its printed summary."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from debias import __version__
from debias.core.attributes import GENDER, Attribute
from debias.core.environment import hardware_info, package_versions
from debias.fixing.kclass import ALREADY, ClassEdit, edit_of, template_counts
from debias.fixing.kclass_record import attribute_fixes, edit_status, template_deltas
from debias.fixing.options import JOINT_PIN_LAMBDA_RELATIVE, NOT_TARGETED, TUNING_SEED_OFFSET
from debias.generation.cache import edit_id
from debias.results.records import AuditResult, FixResult, ProfessionAudit, ProfessionFix
from debias.stats import binary as stats

FIX_STAGES = ("before", "tuning", "joint", "after", "side_effects")


def image_counts(cache, used: dict[str, int]) -> dict[str, Any]:
    """Every image of the run folder by the stage that made it, and what each stage read.

    ``generated`` counts the images in the cache stamped with the stage that made them (in this run or an
    interrupted earlier one), so the stages' ``generated`` add up to the images in the cache; ``used`` is
    what the stage read, ``reused`` the part of it that another stage had made (an image a resumed run finds in the
    cache, for example).
    """
    made = Counter(rec.get("stage") for rec in cache.images.values())
    by_stage = {s: {"generated": made.get(s, 0), "used": int(used.get(s, 0)),
                    "reused": max(int(used.get(s, 0)) - made.get(s, 0), 0)} for s in FIX_STAGES}
    other = sum(n for s, n in made.items() if s not in FIX_STAGES)
    return {"by_stage": by_stage, "generated": sum(v["generated"] for v in by_stage.values()),
            "used": sum(v["used"] for v in by_stage.values()), "other_in_cache": other,
            "in_cache": len(cache.images)}


def nothing_edited(edits: Sequence[ClassEdit]) -> str:
    """Why a fix made no edit, in words (from each profession's status)."""
    unedited = [e.entry.name for e in edits if e.status == ALREADY]
    unread = [e.entry.name for e in edits if e.status == "not_reachable"]
    parts = []
    if unedited:
        parts.append(f"{len(unedited)} of {len(edits)} professions already lie within the band on the tuning prompts "
                     f"({', '.join(unedited)})")
    if unread:
        parts.append(f"{len(unread)} had no image the classifier could read on the tuning prompts "
                     f"({', '.join(unread)}; check the classifier, its labels and --min-confidence)")
    return "; ".join(parts) or "no profession was given"


def edit_metadata(edits: Sequence[ClassEdit], preserve: Sequence[str], opts, run) -> dict:
    """What the edit file records: per edited profession its destinations and strengths (as λ_rel)."""
    return {"kind": "fix", "attribute": edits[0].attribute.name,
            "edits": [{"source": e.entry.phrase, "destinations": e.destinations(), "strengths": list(e.strengths),
                       "lambda_relative": [None if w <= 0 else 1.0 / w for w in e.strengths],
                       "lambda_scale": e.scale} for e in edits if e.edited],
            "augmentations": list(run.augmentations), "preserve": list(preserve),
            "preserve_strength": opts.preserve_strength, "anchors": list(run.anchor_prompts),
            "anchor_strength": opts.anchor_strength, "joint_pin_lambda_relative": JOINT_PIN_LAMBDA_RELATIVE,
            "target": opts.target, "tolerance": opts.tolerance}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def gender_rounds(e: ClassEdit) -> list[dict]:
    """Each round of a gender edit as the report reads it: the strength, the female share with its interval."""
    out = []
    for r in e.rounds:
        f, m = r["counts"]
        est = stats.estimate(f, m, r["n_unclear"], target=e.target[0])
        lam = next((x for x in r["lambda_relative"] if x is not None), None)
        out.append({**r, "lambda_relative": lam, "lambda": None if lam is None else lam * e.scale, "n_female": f,
                    "n_male": m, "share_female": est.share_female, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return out


def profession_record(entry, target: float, e: Optional[ClassEdit], before: ProfessionAudit,
                      tuning: ProfessionAudit, after_row: ProfessionAudit, tolerance: float) -> ProfessionFix:
    """One profession's gender row; ``e`` is its gender edit, a crossed edit's view of gender, or None (not fixed)."""
    share_after = after_row.share_female
    within_after = stats.within_band(share_after, target, tolerance)
    own = e is not None and e.edited_as is None  # gender itself was edited (k = 2), not through cells
    status = edit_status(NOT_TARGETED if e is None else e.status, within_after)
    edited_class = None if not own or e.reference is None else 1 - e.reference
    w = e.strengths[edited_class] if edited_class is not None else 0.0
    lam_rel = 1.0 / w if w > 0 else None
    outcome = (e.outcome or {}) if own and e.active else {}
    rounds = gender_rounds(e) if own else []
    spread_after, noise_after = stats.prompt_spread(after_row.by_prompt)
    unedited = {"lambda": None, "lambda_relative": None, "n_female": tuning.n_female, "n_male": tuning.n_male,
                "n_unclear": tuning.n_unclear, "share": tuning.share_female}
    return ProfessionFix(
        profession=entry.name, phrase=entry.phrase, target=target,
        destination=e.destinations()[edited_class] if lam_rel is not None else None, status=status,
        lambda_=None if lam_rel is None else lam_rel * e.scale, lambda_relative=lam_rel,
        lambda_scale=e.scale if lam_rel is not None else None,
        lambda_relative_min=1.0 / e.caps[edited_class] if lam_rel is not None else None,
        share_before=before.share_female, ci_low_before=before.ci_low, ci_high_before=before.ci_high,
        n_before=before.n, share_after=share_after, ci_low_after=after_row.ci_low, ci_high_after=after_row.ci_high,
        n_after=after_row.n, n_unclear_after=after_row.n_unclear, delta_before=before.delta,
        delta_after=after_row.delta, within_band_before=before.within_band, within_band_after=within_after,
        after_interval_within_band=stats.interval_within_band(after_row.ci_low, after_row.ci_high, target, tolerance),
        after_interval_overlaps_band=stats.interval_overlaps_band(after_row.ci_low, after_row.ci_high, target,
                                                                  tolerance),
        planted_share=before.planted_share, oracle_share_before=before.oracle_share,
        oracle_share_after=after_row.oracle_share, tuning_share_before=tuning.share_female,
        images_used_in_search=sum(sum(r["counts"]) + r["n_unclear"] for r in rounds),
        search_status=outcome.get("status"), search_message=outcome.get("message"),
        search_lambda_relative=lam_rel if outcome else None,
        search_share=outcome["shares"][0] if outcome else None,
        search_ci_low=outcome["ci_low"][0] if outcome else None,
        search_ci_high=outcome["ci_high"][0] if outcome else None,
        closest_share=outcome["shares"][0] if outcome else None,
        joint=rounds, joined_round=e.joined_round if own else None,
        search=[{k: r[k] for k in ("round", "lambda", "lambda_relative", "n_female", "n_male", "n_unclear")}
                for r in rounds if r["lambda_relative"] is not None],
        search_unedited=unedited if own and e.active else None,
        spread_before=stats.prompt_spread(before.by_prompt)[0],
        spread_after=spread_after, spread_noise_after=noise_after,
    )


def fix_record(run, opts, fixed: Sequence[Attribute], edits: Sequence[ClassEdit], before: AuditResult,
               tuning: AuditResult, after: AuditResult, side: dict, M, preserve_prompts: Sequence[str], images: dict,
               started: datetime, wall: float) -> FixResult:
    """``fix.json``: the settings, the edit, before/after per profession with intervals, side effects, images;
    gender's rows always (fixed or measured), and an ``attribute_fixes`` block when another attribute is fixed."""
    tolerance, settings, out = opts.tolerance, run.settings, run.out
    rows = []
    for e in edits:
        target = opts.target if e.entry.target is None else e.entry.target
        rows.append(profession_record(e.entry, target, edit_of(e, GENDER), before.row(e.entry.phrase),
                                      tuning.row(e.entry.phrase), after.row(e.entry.phrase), tolerance))
    blocks = None
    if any(a.name != GENDER.name for a in fixed):
        held = [] if any(a.name == GENDER.name for a in fixed) else [GENDER]
        blocks = attribute_fixes(fixed, held, edits, run.entries, before, after, tolerance)
    generation = settings.to_dict()
    generation.pop("device")
    return FixResult(
        kind="fix", debias_version=__version__, model=run.model.info(), target=opts.target, tolerance=tolerance,
        budget=opts.budget, test_images=opts.test_images, check_images=opts.check_images,
        joint_rounds=opts.joint_rounds, seed=opts.seed, tuning_seed=opts.seed + TUNING_SEED_OFFSET,
        classifier=run.clf.describe(), generation=generation, augmentations=list(run.augmentations),
        tuning_templates=list(run.templates),
        preserve={"prompts": list(preserve_prompts), "strength": opts.preserve_strength},
        anchors={"prompts": list(run.anchor_prompts), "strength": opts.anchor_strength},
        joint_pin_lambda_relative=JOINT_PIN_LAMBDA_RELATIVE,
        versions=package_versions(), hardware=hardware_info(settings, run.threads, run.dist),
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), wall_seconds=round(wall, 3),
        edit_file={"path": "edit.safetensors", "sha256": file_sha256(out / "edit.safetensors"),
                   "matrix_sha256": edit_id(M)} if M is not None else None,
        before="before/audit.json", after="after/audit.json", tuning_before="tuning/audit.json",
        mean_delta_before=before.mean_delta, mean_delta_before_ci_low=before.mean_delta_ci_low,
        mean_delta_before_ci_high=before.mean_delta_ci_high,
        mean_delta_after=after.mean_delta, mean_delta_after_ci_low=after.mean_delta_ci_low,
        mean_delta_after_ci_high=after.mean_delta_ci_high, mean_delta_noise_floor_after=after.mean_delta_noise_floor,
        within_tolerance_before=sum(r.within_band_before for r in rows),
        within_tolerance_after=sum(r.within_band_after for r in rows),
        after_intervals_overlapping_band=sum(r.after_interval_overlaps_band for r in rows),
        edit_note=None if M is not None else f"nothing to edit: {nothing_edited(edits)}",
        images=images, side_effects=side, ci_note=stats.CI_NOTE, professions=rows,
        mean_spread_before=_mean([r.spread_before for r in rows]), mean_spread_after=_mean([r.spread_after for r in rows]),
        mean_spread_noise_after=_mean([r.spread_noise_after for r in rows]),
        mean_delta_by_template=gender_template_deltas(rows, before, after), attribute_fixes=blocks,
    )


def gender_template_deltas(rows: Sequence[ProfessionFix], before: AuditResult,
                           after: AuditResult) -> dict[str, dict[str, Optional[float]]]:
    """Gender's mean Δ per held-out template, before and after (:func:`~debias.fixing.kclass_record.template_deltas`
    with gender as the k = 2 attribute), and what a perfect model would read on the after audit's images of each."""
    out = template_deltas(GENDER, [(r.phrase, (r.target, 1.0 - r.target)) for r in rows], before, after)
    counts = [template_counts(after, GENDER, r.phrase) for r in rows]
    for k, template in enumerate(after.templates):
        classified = [(sum(c[k]), r.target) for c, r in zip(counts, rows) if len(c) > k]
        out[template]["noise_floor_after"] = stats.mean_delta_noise_floor([n for n, _ in classified],
                                                                          [t for _, t in classified])
    return out
