"""The audit verb: prompts → seeded generation → CLIP zero-shot → statistics → ``audit.json``.

For each profession the audit generates images from its prompts (profession × templates, image i
uses template ``i mod k`` and seed ``seed + i``), reads perceived gender with a CLIP zero-shot
classifier, and reports the female share with a Wilson 95% interval, an exact binomial test against
the target and Δ; the headline is the mean Δ over professions with a bootstrap interval. Every image
and label is cached in the output folder, so rerunning the same command after an interruption
finishes only what is missing; under ``accelerate launch`` the work is split over the processes
and the numbers are identical to a single-process run.

With several classifiers (``classifier=[A, B]``) the first is the primary, whose shares are the audit's; each
other one reads the same images (cached, nothing generated again) and is compared with it in ``classifiers``.
The result's ``validity`` block says what human labels in ``out/labels/`` (``debias label``) make of the shares;
without labels it says how many would be needed (:mod:`debias.validity.record`).

With ``attributes`` (built-in names such as ``"skin"``, attribute files, or :class:`~debias.core.attributes.Attribute`
objects) the same images are also read for those attributes, and with ``intersect`` (pairs such as
``("gender", "skin")``) crossed; gender is audited as always. The result's ``attributes`` and ``intersections``
blocks hold them (:mod:`debias.auditing.attributes`); without them the result and its files are those of a
gender-only audit, byte for byte.

With ``ci_width`` the audit is sequential: it generates ``images_per_profession`` images per
profession per round and keeps going for a profession until its interval is narrower than
``ci_width`` (full width) or ``max_images`` is reached.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from debias.core.profiles import DEFAULT_MODEL
from debias import __version__
from debias.stats import binary as stats
from debias.core.attributes import Attribute
from debias.auditing.attributes import AttributePlan, attribute_classifiers, audit_attributes, plan_attributes
from debias.generation.cache import ImageCache, edit_id
from debias.core.errors import InputError
from debias.core.distributed import Distributed
from debias.generation.generate import SampleResult, measure, work_items
from debias.core.memory import MemoryOptions
from debias.core.profiles import Profile
from debias.core.prompts import (
    ProfessionEntry, check_prompt_lengths, parse_professions, profession_prompts, read_professions,
    templates_from_option,
)
from debias.results.records import AuditResult, ProfessionAudit
from debias.core.setup import RunOptions, classifier_for, professions_for, sampler_settings, start, templates_for
from debias.validity import compare_classifiers, validity_block

DEFAULT_MAX_IMAGES = 1024


def audit(
    model: Any = DEFAULT_MODEL,
    *,
    professions: str | os.PathLike | Sequence[ProfessionEntry] | None = None,
    images_per_profession: int = 64,
    out: str | os.PathLike = "runs/audit",
    prompt_set: str = "test",
    templates: Sequence[str] | None = None,
    classifier: Any = None,
    labels_female: Sequence[str] | None = None,
    labels_male: Sequence[str] | None = None,
    labels_none: Sequence[str] | None = None,
    min_confidence: float | None = None,
    target: float = 0.5,
    tolerance: float = 0.05,
    seed: int = 0,
    batch_size: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    ci_width: float | None = None,
    max_images: int | None = None,
    threads: int | None = None,
    allow_pickle: bool = False,
    edit: torch.Tensor | None = None,
    edit_info: dict | None = None,
    cache: ImageCache | None = None,
    progress: bool = True,
    print_table: bool = False,
    write_report: bool = True,
    stage: str = "audit",
    attributes: Sequence[str | Attribute] | None = None,
    intersect: Sequence[str | Sequence[str]] | None = None,
    memory: MemoryOptions | None = None,
) -> AuditResult:
    """Audit a model; writes ``out/audit.json``, ``out/audit.csv`` and the images, and returns the result.

    ``model`` is a spec (hub id, folder, built-in name), a pipeline or a :class:`~debias.core.setup.LoadedModel`;
    ``classifier`` a spec (see :mod:`debias.classify.zero_shot`) or a loaded :class:`~debias.classify.zero_shot.ZeroShotClassifier`,
    or a list of them: the first is the primary, the others are compared with it (the result's ``classifiers``).
    ``edit`` is an optional d×d matrix the model is audited under (no weight written); ``edit_info`` describes it,
    also for an edit already baked into the weights (then ``edit_info["matrix_sha256"]`` names it). ``stage`` is
    stamped on the images generated (a fix counts its images by stage). ``cache`` shares an image cache between
    audits (a fix's); by default it is the output folder. ``write_report`` also renders ``out/report.html``.
    ``attributes`` and ``intersect`` add attribute sections (see the module docstring; CLI ``--attribute``,
    ``--intersect``); a profession list's targets may then name those attributes. ``memory`` trades speed for
    memory (:class:`debias.core.memory.MemoryOptions`; a loaded model keeps what it was started with).
    """
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    _check_options(images_per_profession, target, tolerance, ci_width, max_images, batch_size, prompt_set)
    # read the user's files before loading anything, so a typo fails in a second, not after a download
    plan = plan_attributes(attributes, intersect)
    listed = _listed(professions, plan)
    templates = templates_from_option(list(templates)) if templates else None
    primary, extra = split_classifiers(classifier)
    run = start(model, threads=threads, allow_pickle=allow_pickle, device=device, dtype=dtype, memory=memory)
    loaded, out = run.model, Path(out)
    opts = RunOptions(primary, labels_female, labels_male, labels_none, min_confidence, steps, guidance, height,
                      width, batch_size).filled(loaded)
    entries = professions_for(loaded, listed)
    chosen_templates, prompt_set_name = templates_for(loaded, templates, prompt_set)
    if getattr(loaded.pipe, "tokenizer", None) is not None:
        check_prompt_lengths(entries, chosen_templates, loaded.pipe.tokenizer)
    clf, others = load_classifiers(loaded, opts, extra)
    readers = attribute_classifiers(clf, plan)  # before generating: a classifier that cannot read them fails now
    settings, batch = sampler_settings(loaded, opts)
    cache = cache or ImageCache(out, rank=run.dist.rank)
    cache.rank = run.dist.rank
    cap = max_images or (DEFAULT_MAX_IMAGES if ci_width else images_per_profession)
    sampling = Sampling(measure=lambda items, description, classifier=clf: measure(
        loaded.pipe, classifier, items, settings=settings, cache=cache, edit=edit, batch_size=batch,
        oracle=loaded.profile.oracle, dist=run.dist, progress=progress, description=description, stage=stage,
        adapt_batch=loaded.memory.adapt_batch),
        per_round=images_per_profession, cap=cap, ci_width=ci_width, seed=seed)
    results, rounds = sample_until_done(entries, chosen_templates, sampling)
    result = _result(
        entries=entries, results=results, target=target, tolerance=tolerance, profile=loaded.profile,
        model=loaded.info(), classifier=clf, settings=settings, batch=batch, seed=seed, prompt_set=prompt_set_name,
        templates=chosen_templates, edit=edit, edit_info=edit_info, dist=run.dist, threads=run.threads,
        stopping={"images_per_round": images_per_profession, "ci_width": ci_width, "max_images": cap, "rounds": rounds},
        cache=cache, out=out, started=started, wall=time.perf_counter() - t0)
    result.classifiers = [_compare(other, entries, results, sampling, result) for other in others] or None
    result.attributes, result.intersections = audit_attributes(
        plan, readers, entries, results, cache=cache, dist=run.dist, profile=loaded.profile, target=target,
        tolerance=tolerance)
    if run.dist.is_main:
        _publish(result, out, write_report, print_table)
    return result


def _publish(result: AuditResult, out: Path, write_report: bool, print_table: bool) -> None:
    """Record what the human labels in ``out/labels/`` say (if any), then write the result and its report."""
    result.validity = validity_block(out, result.to_dict())
    result.save(out)
    if write_report:
        from debias.report import render_report

        render_report([out], refresh_validity=False)  # the block was just computed from the same labels
    if print_table:
        from debias.results.summaries import print_audit

        print_audit(result, sys.stdout, run_dir=str(out))


@dataclass
class Sampling:
    """How an audit draws images: ``measure(items, description)`` generates and classifies them (with the primary
    classifier, or the one passed third: images already made are only read); rounds of ``per_round`` images per
    profession go on while a profession's interval is wider than ``ci_width`` (full width), up to ``cap`` images."""

    measure: Callable[..., list[SampleResult]]
    per_round: int
    cap: int
    ci_width: Optional[float]
    seed: int


def sample_until_done(entries: Sequence[ProfessionEntry], templates: Sequence[str],
                      sampling: Sampling) -> tuple[dict[str, list[SampleResult]], int]:
    """Each profession's results, in rounds; image i of a profession uses template ``i mod k`` and seed
    ``seed + i``, so a run that stops and resumes draws the same images."""
    prompts_of = {e.phrase: profession_prompts(e, templates) for e in entries}
    results: dict[str, list[SampleResult]] = {e.phrase: [] for e in entries}
    active, rounds = list(entries), 0
    while active:
        rounds += 1
        items, owner = [], []
        for e in active:
            done = len(results[e.phrase])
            count = min(sampling.per_round, sampling.cap - done)
            items += work_items(prompts_of[e.phrase], done, count, sampling.seed)
            owner += [e.phrase] * count
        for phrase, r in zip(owner, sampling.measure(items, f"round {rounds}: {len(items)} images")):
            results[phrase].append(r)
        active = [e for e in active if _needs_more(results[e.phrase], sampling.ci_width, sampling.cap)]
    return results, rounds


# ------------------------------------------------------------------------------------------- pieces
def _listed(professions, plan: AttributePlan):
    """A list file or phrases read now (their targets may name the plan's attributes); entries pass through."""
    if isinstance(professions, (str, os.PathLike)):
        return read_professions(professions, plan.attributes)
    if professions and all(isinstance(p, str) for p in professions):
        return parse_professions("\n".join(professions), "professions=[…]", plan.attributes)
    return professions


def split_classifiers(classifier: Any) -> tuple[Any, list]:
    """``(primary, others)`` from one classifier (spec or loaded) or a list of them; None is the default."""
    if not isinstance(classifier, (list, tuple)):
        return classifier, []
    if not classifier:
        return None, []
    return classifier[0], list(classifier[1:])


def load_classifiers(loaded, opts: RunOptions, extra: list) -> tuple[Any, list]:
    """The primary classifier and the others (same labels and abstain rule), refusing one listed twice."""
    primary = classifier_for(loaded, opts)
    others = [classifier_for(loaded, replace(opts, classifier=c)) for c in extra]
    seen = {primary.cache_id}
    for other in others:
        if other.cache_id in seen:
            raise InputError(f"--classifier {other.describe().get('model')!r} is given twice; list each classifier "
                             "once (the first is the primary, the others are compared with it).")
        seen.add(other.cache_id)
    return primary, others


def _compare(other, entries: Sequence[ProfessionEntry], results: dict[str, list[SampleResult]], sampling: Sampling,
             result: AuditResult) -> dict:
    """Read the audit's images with another classifier (all cached: nothing is generated) and compare."""
    items = [(r.prompt, r.seed) for e in entries for r in results[e.phrase]]
    theirs = iter(sampling.measure(items, f"classifier {other.describe().get('model')}", other))
    rows = []
    for e, row in zip(entries, result.professions):
        mine = [r.label for r in results[e.phrase]]
        rows.append((row.profession, row.target, mine, [next(theirs).label for _ in mine]))
    return compare_classifiers(other.describe(), rows, tolerance=result.tolerance)


def _check_options(n: int, target: float, tolerance: float, ci_width: float | None, max_images: int | None,
                   batch_size: int | None, prompt_set: str) -> None:
    if prompt_set not in ("tuning", "test"):
        raise InputError(f"--prompt-set must be 'tuning' or 'test', got {prompt_set!r}")
    if n < 1:
        raise InputError(f"--images-per-profession must be at least 1, got {n}")
    if not 0.0 <= target <= 1.0:
        raise InputError(f"--target must be a share in [0, 1], got {target}")
    if not 0.0 <= tolerance < 1.0:
        raise InputError(f"--tolerance must be in [0, 1), got {tolerance}")
    if ci_width is not None and not 0.0 < ci_width < 1.0:
        raise InputError(f"--ci-width is the full width of a 95% interval, in (0, 1) (0.2 ≈ ±0.10); got {ci_width}")
    if max_images is not None and max_images < n:
        raise InputError(f"--max-images ({max_images}) must be at least --images-per-profession ({n})")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")


def _needs_more(results: list[SampleResult], ci_width: float | None, cap: int) -> bool:
    f, m, _ = stats.count_labels([r.label for r in results])
    return stats.needs_more(f, m, len(results), ci_width=ci_width, cap=cap)


# ------------------------------------------------------------------------------------------- record
def _profession_row(entry: ProfessionEntry, results: list[SampleResult], target: float, tolerance: float,
                    profile: Profile, cache_root: Path, out: Path) -> ProfessionAudit:
    t = entry.target if entry.target is not None else target
    est = stats.estimate(*stats.count_labels([r.label for r in results]), target=t)
    oracle_share = agreement = None
    if profile.oracle is not None:
        of, om, _ = stats.count_labels([r.oracle or "unclear" for r in results])
        oracle_share = stats.share(of, om)
        both = [r for r in results if r.oracle in ("female", "male") and r.label in ("female", "male")]
        agreement = sum(r.oracle == r.label for r in both) / len(both) if both else None
    prefix = os.path.relpath(cache_root, out) if cache_root.resolve() != out.resolve() else ""
    samples = []
    for r in results:
        sample = {"prompt": r.prompt, "seed": r.seed, "image": os.path.join(prefix, r.image) if prefix else r.image,
                  "label": r.label, "p_female": r.p_female}
        if profile.oracle is not None:
            sample["oracle"] = r.oracle
        samples.append(sample)
    return ProfessionAudit(
        profession=entry.name, phrase=entry.phrase, prompts=list(dict.fromkeys(r.prompt for r in results)), target=t,
        n=est.n, n_female=est.n_female, n_male=est.n_male, n_unclear=est.n_unclear, share_female=est.share_female,
        ci_low=est.ci_low, ci_high=est.ci_high, p_value=est.p_value, delta=est.delta,
        within_band=stats.within_band(est.share_female, t, tolerance),
        planted_share=profile.planted_share(entry.phrase) if profile.planted_share else None,
        oracle_share=oracle_share, agreement=agreement,
        by_prompt=stats.shares_by_prompt((r.prompt, r.label) for r in results), samples=samples)


def package_versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"debias": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def hardware_info(settings, threads: int, dist: Distributed) -> dict[str, Any]:
    if settings.device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
    return {"device": settings.device, "name": name, "threads": threads, "processes": dist.world_size}


def _result(*, entries, results, target, tolerance, profile, model, classifier, settings, batch, seed, prompt_set,
            templates, edit, edit_info, dist, threads, stopping, cache, out, started, wall) -> AuditResult:
    rows = [_profession_row(e, results[e.phrase], target, tolerance, profile, cache.root, out) for e in entries]
    counts = [(r.n_female, r.n_male) for r in rows]
    point, low, high = stats.mean_delta_interval(counts, [r.target for r in rows])
    all_results = [r for e in entries for r in results[e.phrase]]
    edit_block = None
    if edit is not None:
        edit_block = {"sha256": edit_id(edit), **(edit_info or {})}
    elif edit_info:  # baked into the weights (the after audit of a fix loads its edit file)
        edit_block = {"sha256": edit_info.get("matrix_sha256"), **edit_info}
    generation = settings.to_dict()
    generation.update({"batch_size": batch, "seed_base": seed})
    generation.pop("device")
    return AuditResult(
        kind="audit", debias_version=__version__, model=model, edit=edit_block, classifier=classifier.describe(),
        generation=generation, target=target, tolerance=tolerance, prompt_set=prompt_set, templates=list(templates),
        stopping=stopping, ci_note=stats.CI_NOTE, versions=package_versions(),
        hardware=hardware_info(settings, threads, dist), started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), wall_seconds=round(wall, 3),
        images_generated=sum(not r.reused for r in all_results), images_reused=sum(r.reused for r in all_results),
        mean_delta=point, mean_delta_ci_low=low, mean_delta_ci_high=high,
        mean_delta_noise_floor=stats.mean_delta_noise_floor([f + m for f, m in counts], [r.target for r in rows]),
        within_tolerance=sum(r.within_band for r in rows), professions=rows,
    )
