"""One audit stage: images of every profession's prompts, read by the classifiers, counted into an ``AuditResult``.

Both verbs run it. :func:`debias.audit` sets up a model and classifier and runs one stage; :func:`debias.fix` runs
three on the model it has set up (before, tuning, and after with the edit file loaded) into its run folder's
``before/``, ``tuning/`` and ``after/``, sharing one image cache and stamping each image with the stage that made
it. Image i of a profession uses template ``i mod k`` and seed ``seed + i``; with ``ci_width`` the stage goes on in
rounds until each profession's interval is that narrow or ``max_images`` is reached.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from debias import __version__
from debias.auditing.attributes import AttributePlan, attribute_classifiers, audit_attributes
from debias.core.distributed import Distributed
from debias.core.environment import hardware_info, package_versions
from debias.core.profiles import Profile
from debias.core.prompts import ProfessionEntry, check_prompt_lengths, profession_prompts
from debias.core.setup import LoadedModel
from debias.generation.cache import ImageCache
from debias.generation.generate import SampleResult, SamplerSettings, measure, work_items
from debias.report import render_report
from debias.results.records import AuditResult, ProfessionAudit
from debias.stats import binary as stats
from debias.validity import compare_classifiers, validity_block

DEFAULT_MAX_IMAGES = 1024


@dataclass
class Instruments:
    """What an audit stage measures with: the loaded model, its primary classifier, the sampler and batch, the image
    cache, this process's share of the work, and whether to show progress bars."""

    model: LoadedModel
    classifier: Any
    settings: SamplerSettings
    batch: int
    cache: ImageCache
    dist: Distributed
    threads: int
    progress: bool = True


@dataclass(frozen=True)
class StagePlan:
    """What one audit stage measures: the professions on ``templates`` (named ``prompt_set``), ``n`` images each
    (per round with ``ci_width``, up to ``max_images``) from ``seed``, judged against ``target`` ± ``tolerance``,
    and the attributes beyond gender the same images are read for."""

    entries: Sequence[ProfessionEntry]
    templates: tuple[str, ...]
    prompt_set: str
    n: int
    seed: int
    target: float
    tolerance: float
    ci_width: Optional[float] = None
    max_images: Optional[int] = None
    attributes: AttributePlan = field(default_factory=AttributePlan)


def audit_stage(tools: Instruments, plan: StagePlan, out: Path, *, others: Sequence[Any] = (), stage: str = "audit",
                edit_info: Optional[dict] = None, write_report: bool = True,
                clock: Optional[tuple[datetime, float]] = None) -> AuditResult:
    """Run one audit stage into ``out`` (``audit.json``, ``audit.csv``, with ``write_report`` its report) and
    return its result. ``others`` are further classifiers read on the same images and compared with the primary;
    ``stage`` is stamped on the images generated; ``edit_info`` describes an edit already in the weights;
    ``clock`` is when the run began (``datetime``, ``perf_counter``), by default now."""
    started, t0 = clock or (datetime.now(timezone.utc), time.perf_counter())
    loaded = tools.model
    if getattr(loaded.pipe, "tokenizer", None) is not None:
        check_prompt_lengths(plan.entries, plan.templates, loaded.pipe.tokenizer)
    readers = attribute_classifiers(tools.classifier, plan.attributes)  # fails before any image is generated
    tools.cache.rank = tools.dist.rank
    cap = plan.max_images or (DEFAULT_MAX_IMAGES if plan.ci_width else plan.n)
    sampling = Sampling(measure=lambda items, description, classifier=tools.classifier: measure(
        loaded.pipe, classifier, items, settings=tools.settings, cache=tools.cache, batch_size=tools.batch,
        oracle=loaded.profile.oracle, dist=tools.dist, progress=tools.progress, description=description, stage=stage,
        adapt_batch=loaded.memory.adapt_batch),
        per_round=plan.n, cap=cap, ci_width=plan.ci_width, seed=plan.seed)
    results, rounds = sample_until_done(plan.entries, plan.templates, sampling)
    result = _result(
        entries=plan.entries, results=results, target=plan.target, tolerance=plan.tolerance, profile=loaded.profile,
        model=loaded.info(), classifier=tools.classifier, settings=tools.settings, batch=tools.batch, seed=plan.seed,
        prompt_set=plan.prompt_set, templates=plan.templates, edit_info=edit_info, dist=tools.dist,
        threads=tools.threads,
        stopping={"images_per_round": plan.n, "ci_width": plan.ci_width, "max_images": cap, "rounds": rounds},
        cache=tools.cache, out=out, started=started, wall=time.perf_counter() - t0)
    result.classifiers = [_compare(other, plan.entries, results, sampling, result) for other in others] or None
    result.attributes, result.intersections = audit_attributes(
        plan.attributes, readers, plan.entries, results, cache=tools.cache, dist=tools.dist, profile=loaded.profile,
        target=plan.target, tolerance=plan.tolerance)
    if tools.dist.is_main:
        _publish(result, out, write_report)
    return result


def _publish(result: AuditResult, out: Path, write_report: bool) -> None:
    """Record what the human labels in ``out/labels/`` say (if any), then write the result and its report."""
    result.validity = validity_block(out, result.to_dict())
    result.save(out)
    if write_report:
        render_report([out], refresh_validity=False)  # the block was just computed from the same labels


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


def _result(*, entries, results, target, tolerance, profile, model, classifier, settings, batch, seed, prompt_set,
            templates, edit_info, dist, threads, stopping, cache, out, started, wall) -> AuditResult:
    rows = [_profession_row(e, results[e.phrase], target, tolerance, profile, cache.root, out) for e in entries]
    counts = [(r.n_female, r.n_male) for r in rows]
    point, low, high = stats.mean_delta_interval(counts, [r.target for r in rows])
    all_results = [r for e in entries for r in results[e.phrase]]
    edit_block = None
    if edit_info:  # baked into the weights (the after audit of a fix loads its edit file)
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
