"""The fix's record (``fix.json``) and its printed summary."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from debias import __version__, stats
from debias.fixing.options import JOINT_PIN_LAMBDA_RELATIVE, NOT_TARGETED, TUNING_SEED_OFFSET, UNEDITED
from debias.fixing.plan import ProfessionState
from debias.cache import edit_id
from debias.results import AuditResult, FixResult, ProfessionAudit, ProfessionFix

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


def nothing_edited(profs: Sequence[ProfessionState]) -> str:
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


def edit_metadata(profs, preserve_prompts, preserve_strength, anchor_prompts, anchor_strength, augmentations,
                   target, tolerance) -> dict:
    edits = [{"source": p.entry.phrase, "destination": p.destination, "lambda": math.exp(p.log_lambda) * p.scale,
              "lambda_relative": math.exp(p.log_lambda), "lambda_scale": p.scale}
             for p in profs if p.edited]
    return {"kind": "fix", "edits": edits, "augmentations": list(augmentations), "preserve": list(preserve_prompts),
            "preserve_strength": preserve_strength, "anchors": list(anchor_prompts),
            "anchor_strength": anchor_strength, "joint_pin_lambda_relative": JOINT_PIN_LAMBDA_RELATIVE,
            "target": target, "tolerance": tolerance}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def clean_number(x: Optional[float]) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def profession_record(p: ProfessionState, after_row: ProfessionAudit, tolerance: float) -> ProfessionFix:
    t, before, search = p.target, p.before, p.search
    share_after = after_row.share_female
    within_after = stats.within_band(share_after, t, tolerance)
    if p.status in (UNEDITED, "not_reachable", NOT_TARGETED):
        status = p.status
    elif within_after:
        status = "fixed"
    else:
        status = "budget_exhausted"
    lam_rel = math.exp(p.log_lambda) if p.edited else None
    trace = search.trace(p.scale) if search else []
    return ProfessionFix(
        profession=p.name, phrase=p.entry.phrase, target=t, destination=p.destination, status=status,
        lambda_=None if lam_rel is None else lam_rel * p.scale, lambda_relative=lam_rel,
        lambda_scale=p.scale if p.side else None,
        lambda_relative_min=math.exp(p.bounds[0]) if p.side else None,  # strongest edit allowed (side effects)
        share_before=before.share_female, ci_low_before=before.ci_low, ci_high_before=before.ci_high,
        n_before=before.n, share_after=share_after, ci_low_after=after_row.ci_low, ci_high_after=after_row.ci_high,
        n_after=after_row.n, n_unclear_after=after_row.n_unclear, delta_before=before.delta,
        delta_after=after_row.delta, within_band_before=before.within_band, within_band_after=within_after,
        after_interval_within_band=stats.interval_within_band(after_row.ci_low, after_row.ci_high, t, tolerance),
        after_interval_overlaps_band=stats.interval_overlaps_band(after_row.ci_low, after_row.ci_high, t, tolerance),
        planted_share=before.planted_share, oracle_share_before=before.oracle_share,
        oracle_share_after=after_row.oracle_share, tuning_share_before=p.tuning_before.share_female,
        images_used_in_search=search.images_used if search else 0,
        search_status=search.status if search else None, search_message=search.message if search else None,
        search_lambda_relative=search.lambda_relative if search else None,
        search_share=clean_number(search.share) if search else None,
        search_ci_low=clean_number(search.ci_low) if search else None,
        search_ci_high=clean_number(search.ci_high) if search else None,
        closest_share=clean_number(search.closest_share) if search else None,
        joint=p.joint, joined_round=p.joined_round,
        search=[row for row in trace if row["lambda"] is not None],
        search_unedited=next((row for row in trace if row["lambda"] is None), None) if search else None,
    )


def fix_record(run, opts, profs: Sequence[ProfessionState], before: AuditResult, after: AuditResult, side: dict, M,
               preserve_prompts: Sequence[str], images: dict, started: datetime, wall: float) -> FixResult:
    """``fix.json``: the settings, the edit, before/after per profession with intervals, side effects, images."""
    from debias.auditing import hardware_info, package_versions

    tolerance, settings, out = opts.tolerance, run.settings, run.out
    rows = [profession_record(p, a, tolerance) for p, a in zip(profs, after.professions)]
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
        edit_note=None if M is not None else f"nothing to edit: {nothing_edited(profs)}",
        images=images, side_effects=side, ci_note=stats.CI_NOTE, professions=rows,
    )
