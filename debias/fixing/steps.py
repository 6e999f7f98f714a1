"""The steps of a fix, in order: set up, audit before, choose destinations, search strengths, joint edit (shipping
and judging the edit is :mod:`.ship`).

Each step reads and writes the professions' :class:`~debias.fixing.plan.ProfessionState` and the shared
:class:`FixRun`; :func:`debias.fixing.verb.fix` calls them in order. Every decision (destination, left unedited,
strengths, joiners) reads the tuning prompts and seeds only; the before audit on the test prompts is compared
with the after audit and nothing else.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from debias import stats
from debias.fixing.options import DEFAULT_ANCHOR_STRENGTH, MIN_CORRECTION, UNEDITED, FixOptions, tuning_templates_for
from debias.fixing.plan import (
    Anchors, ProfessionState, anchor_prompts_for, choose_destination, drift_bounds, encode_preserve_rows, fitted_slope,
    join_edit, joint_matrix, pooled_correction, preserve_prompt_list, probe_rows, search_seeds_per_round,
    single_matrix,
)
from debias.fixing.record import edit_metadata
from debias.summaries import fmt
from debias.generate import items_for_seeds, measure, work_items
from debias.prompts import profession_prompts
from debias.results import AuditResult
from debias.search import SearchResult, search_lambda
from debias.setup import LoadedModel


@dataclass
class FixRun:
    """What every step of a fix shares: the loaded model and classifier, sampling, the cache, the prompts."""

    model: LoadedModel
    clf: Any
    settings: Any
    cache: Any
    batch: int
    say: Callable[[str], None]
    progress: bool
    out: Path
    entries: list
    templates: tuple[str, ...]  # the tuning templates
    test_templates: Optional[tuple[str, ...]]  # the held-out test templates the user gave (None: the profile's)
    augmentations: tuple[str, ...]
    anchor_prompts: list[str]
    anchors: Optional[Anchors]
    probe_prompts: tuple[str, ...]  # unrelated prompts: the drift limit and the side-effect check
    probe: Optional[torch.Tensor]
    audit_options: dict  # what the before, tuning and after audits share
    others: list  # further classifiers: the before and after audits compare them with the primary (clf)
    threads: int
    dist: Any
    used: Counter = field(default_factory=Counter)  # images read per stage (see image_counts)
    attribute_classifiers: dict = field(default_factory=dict)  # attribute name -> its classifier (attribute fix)

    @property
    def pipe(self):
        return self.model.pipe

    @property
    def oracle(self):
        return self.model.profile.oracle

    def audit(self, name: str, n: int, prompt_set: str, seed: int, **extra) -> AuditResult:
        """One of the fix's audits (``before``, ``tuning``, ``after``) in ``out/name``, counted under ``name``."""
        from debias.auditing import audit

        options = dict(self.audit_options)
        if prompt_set == "test" and self.test_templates:
            options["templates"] = self.test_templates
        if prompt_set == "test" and self.others:
            options["classifier"] = [self.clf, *self.others]
        result = audit(self.model, professions=self.entries, images_per_profession=n, out=self.out / name,
                       prompt_set=prompt_set, seed=seed, stage=name, **{**options, **extra})
        self.used[name] = result.images_read
        return result

    def measure(self, items: Sequence[tuple[str, int]], stage: str, description: str) -> list:
        """Generate (or reuse) and classify ``items`` with the pipeline as it is now, counted under ``stage``."""
        if not items:
            return []
        results = self.generate(items, stage=stage, description=description)
        self.used[stage] += len(results)
        return results

    def generate(self, items: Sequence[tuple[str, int]], *, stage: str, description: str,
                 edit: Optional[torch.Tensor] = None) -> list:
        """:func:`debias.generate.measure` with this run's pipeline, classifier, sampler, cache and batching."""
        return measure(self.pipe, self.clf, items, settings=self.settings, cache=self.cache, edit=edit,
                       batch_size=self.batch, oracle=self.oracle, progress=self.progress, description=description,
                       stage=stage, adapt_batch=self.model.memory.adapt_batch)

    def evaluator(self, prompts: Sequence[str], p: ProfessionState, seed_base: int):
        """``evaluate(λ_rel, seeds) -> labels`` for the search: tuning prompts under the single edit of ``p``."""
        def evaluate(lambda_relative: float, seeds: Sequence[int]) -> list[str]:
            M = None if math.isinf(lambda_relative) else single_matrix(p, math.log(lambda_relative), self.anchors)
            results = self.generate(items_for_seeds(prompts, seeds, seed_base), stage="search",
                                    description=f"{p.name}: {len(seeds)} images", edit=M)
            return [r.label for r in results]

        return evaluate

    def report(self, name: str, e, used: int, budget: int) -> None:
        lam = "unedited" if math.isinf(e.log_lambda_relative) else f"λ_rel {e.lambda_relative:.3g}"
        share = "—" if math.isnan(e.share) else f"{e.share:.2f}"
        self.say(f"  {name}: round {e.round} {e.phase:9s} {lam:>16s}: share {share} of {len(e.seeds)} "
                 f"(unclear {e.n_unclear}); {used}/{budget} images")


# ------------------------------------------------------------------------------------------------ setup
def anchor_strength_for(given: Optional[float], profile) -> float:
    """The anchors' weight: the user's, else the model family's (MMDiT: less, see debias.profiles), else 100."""
    if given is not None:
        return given
    return profile.anchor_strength if profile.anchor_strength is not None else DEFAULT_ANCHOR_STRENGTH


def setup(model: Any, opts: FixOptions, say: Callable[[str], None]) -> tuple[FixRun, FixOptions]:
    """Load the model and classifier, choose sampling and prompts, and encode the rows every edit keeps fixed.

    Returns the run and the options with what a saved fixed model records filled in where they were unset."""
    from debias.cache import ImageCache
    from debias.auditing import load_classifiers, split_classifiers
    from debias.setup import professions_for, sampler_settings, start, templates_for

    begun = start(model, threads=opts.threads, allow_pickle=opts.allow_pickle, device=opts.device, dtype=opts.dtype,
                  memory=opts.memory)
    loaded, run_opts = begun.model, opts.run_options().filled(begun.model)
    clf, others = load_classifiers(loaded, run_opts, split_classifiers(opts.classifier)[1])
    opts = replace(opts, steps=run_opts.steps, guidance=run_opts.guidance, height=run_opts.height,
                   width=run_opts.width, classifier=run_opts.classifier, min_confidence=run_opts.min_confidence)
    settings, batch = sampler_settings(loaded, run_opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(out)
    test_templates = templates_for(loaded, opts.templates, "test")[0]
    tuning = tuning_templates_for(opts.tuning_templates, loaded.profile.template_set().tuning, test_templates)
    augmentations = loaded.profile.augmentations
    opts = replace(opts, anchor_strength=anchor_strength_for(opts.anchor_strength, loaded.profile))
    anchor_prompts = anchor_prompts_for(augmentations) if opts.anchor_strength > 0 else []
    anchors = Anchors(probe_rows(loaded.pipe, anchor_prompts), opts.anchor_strength) if anchor_prompts else None
    probe_prompts = tuple(opts.side_prompts or loaded.profile.side_prompts)
    probe = probe_rows(loaded.pipe, probe_prompts) if opts.max_drift is not None and probe_prompts else None
    audit_options = dict(classifier=clf, target=opts.target, tolerance=opts.tolerance, batch_size=batch,
                         steps=opts.steps, guidance=opts.guidance, height=opts.height, width=opts.width,
                         threads=begun.threads, cache=cache, progress=opts.progress)
    return FixRun(model=loaded, clf=clf, settings=settings, cache=cache, batch=batch, say=say, progress=opts.progress,
                  out=out, entries=professions_for(loaded, opts.professions), templates=tuning,
                  test_templates=tuple(opts.templates) if opts.templates else None, augmentations=augmentations,
                  anchor_prompts=anchor_prompts, anchors=anchors, probe_prompts=probe_prompts, probe=probe,
                  audit_options=audit_options, others=others, threads=begun.threads, dist=begun.dist), opts


# ----------------------------------------------------------------------------------------------- before
def audit_before(run: FixRun, opts: FixOptions) -> tuple[AuditResult, AuditResult, list[ProfessionState]]:
    """The test audit (a judge only) and the tuning audit (where every decision comes from), unedited."""
    run.say(f"fix: auditing {len(run.entries)} professions before the edit ({opts.test_images} images each, "
            "test prompts)")
    before = run.audit("before", opts.test_images, "test", opts.seed)
    tuning = run.audit("tuning", opts.check_images, "tuning", opts.tuning_seed, templates=opts.tuning_templates)
    profs = [ProfessionState(entry=e, target=e.target if e.target is not None else opts.target, before=b,
                             tuning_before=tb)
             for e, b, tb in zip(run.entries, before.professions, tuning.professions)]
    return before, tuning, profs


# ------------------------------------------------------------------------------------------ destinations
def choose_destinations(run: FixRun, opts: FixOptions, profs: Sequence[ProfessionState]) -> None:
    """Edit towards the side under-represented on the tuning prompts, within the side-effect limit."""
    for p in profs:
        share = p.tuning_before.share_female
        if share is None:
            p.status = "not_reachable"
            run.say(f"  {p.name}: no classified image on the tuning prompts; cannot choose a destination")
        elif stats.within_band(share, p.target, opts.tolerance):
            p.status = UNEDITED
            run.say(f"  {p.name}: share {share:.2f} on the tuning prompts already within {p.target} ± "
                    f"{opts.tolerance}; left unedited")
        else:
            choose_destination(p, share, run.pipe, run.augmentations)
            p.bounds = drift_bounds(p, run.probe, opts.max_drift, opts.log_lambda_bounds, run.anchors)
            if p.bounds[0] > opts.log_lambda_bounds[0]:
                run.say(f"  {p.name}: λ_rel ≥ {math.exp(p.bounds[0]):.3g} keeps unrelated prompts' conditioning "
                        f"within {opts.max_drift:.0%} (stronger edits would change them)")


# ------------------------------------------------------------------------------------------------ search
def search_strengths(run: FixRun, opts: FixOptions, profs: Sequence[ProfessionState]) -> None:
    """λ_p per profession on the tuning prompts; a finished search is reused from ``out/search``."""
    start_hint: Optional[float] = None
    for p in profs:
        if p.side is None:
            continue
        result = search_one(run, opts, p, start_hint)
        p.search = result
        run.used["search"] += result.images_used
        run.say(f"search {p.name}: {result.status} — λ_rel {fmt(result.lambda_relative, 3)}, share "
                f"{fmt(result.share, 3)} [{fmt(result.ci_low, 3)}, {fmt(result.ci_high, 3)}], {result.images_used} images")
        if result.status == "not_reachable":
            # still edited, at the strongest allowed λ: it moves the share as far towards the target as the
            # limits allow (the status says it does not get there; closest_share says how close)
            p.status = "not_reachable"
            if result.log_lambda_relative is None or not result.evaluations:
                continue
        p.log_lambda = result.log_lambda_relative
        p.slope = fitted_slope(result)
        if result.status != "not_reachable" and start_hint is None:
            start_hint = p.log_lambda


def search_one(run: FixRun, opts: FixOptions, p: ProfessionState, start_hint: Optional[float]) -> SearchResult:
    """One profession's search, or the stored one made with exactly the same inputs."""
    from debias.models import fingerprint

    prompts = profession_prompts(p.entry, run.templates)
    per_round = search_seeds_per_round(p.tuning_before, opts.budget)
    inputs = {"model": fingerprint(run.pipe), "classifier": run.clf.cache_id,
              "settings": run.settings.to_dict(), "source": p.entry.phrase, "destination": p.destination,
              "augmentations": list(run.augmentations), "anchors": run.anchor_prompts,
              "anchor_strength": opts.anchor_strength, "prompts": prompts, "target": p.target,
              "tolerance": opts.tolerance, "budget": opts.budget, "seed": opts.tuning_seed, "bounds": list(p.bounds),
              "start": start_hint, "seeds_per_round": per_round, "version": 3}
    path = run.out / "search" / f"{slug(p.name)}.json"
    stored = load_stored(path, inputs)
    if stored is not None:
        run.say(f"search {p.name}: reusing the finished search in {path}")
        return SearchResult.from_dict(stored)
    run.say(f"search {p.name}: '{p.entry.phrase}' → '{p.destination}' on {quoted(prompts)}, share before "
            f"{p.tuning_before.share_female:.2f}, budget {opts.budget} images")
    result = search_lambda(
        run.evaluator(prompts, p, opts.tuning_seed), target=p.target, tolerance=opts.tolerance, budget=opts.budget,
        log_lambda_bounds=p.bounds, log_lambda_start=start_hint, first_seed=opts.tuning_seed,
        seeds_per_round=per_round, direction=p.direction, rng_seed=opts.seed,
        on_evaluation=lambda e, used, name=p.name: run.report(name, e, used, opts.budget),
    )
    store(path, inputs, result.to_dict(p.scale))
    return result


# ------------------------------------------------------------------------------------------------- joint
def joint_edit(run: FixRun, opts: FixOptions, profs: Sequence[ProfessionState]):
    """One M for every edited profession, re-measured on fresh tuning seeds each round and re-tuned against
    cross-effects from all rounds pooled; returns ``(M or None, preserve prompts)``."""
    edited = [p for p in profs if p.edited]
    preserve = preserve_prompt_list(opts.preserve, [p for p in profs if not p.edited])
    rows = encode_preserve_rows(run.pipe, preserve, run.augmentations) if preserve else None
    M = None
    for rnd in range(opts.joint_rounds + 1):
        if not edited:
            break
        M = joint_matrix(edited, rows, opts.preserve_strength, run.anchors)
        run.say(f"joint round {rnd}: one edit for {len(edited)} professions; re-measuring all {len(profs)} on the "
                f"tuning prompts ({opts.check_images} fresh seeds each)")
        pushed_out = measure_joint_round(run, opts, profs, M, rnd)
        if rnd == opts.joint_rounds:
            break
        moved = retune(run, opts, edited, pushed_out, rnd)
        if pushed_out:
            preserve = preserve_prompt_list(opts.preserve, [p for p in profs if not p.edited])
            rows = encode_preserve_rows(run.pipe, preserve, run.augmentations) if preserve else None
        if not moved:
            run.say("  every edited profession sits where its measurements put the target; no further rounds")
            break
        run.say("  re-tuned: " + ", ".join(f"{p.name} λ_rel {math.exp(p.log_lambda):.3g}" for p in moved))
    return M, preserve


def measure_joint_round(run: FixRun, opts: FixOptions, profs: Sequence[ProfessionState], M: torch.Tensor,
                        rnd: int) -> list[tuple[ProfessionState, float]]:
    """Every profession under ``M`` on fresh tuning seeds; the unedited ones the edit pushed out of the band."""
    first = opts.tuning_seed + rnd * opts.check_images  # fresh seeds every round: pooled, the noise averages out
    items, owner = [], []
    for p in profs:  # the tuning audit's pairing of seeds and templates, continued
        items += work_items(profession_prompts(p.entry, run.templates), rnd * opts.check_images, opts.check_images,
                            opts.tuning_seed)
        owner += [p.name] * opts.check_images
    results = run.generate(items, stage="joint", description=f"joint round {rnd}", edit=M)
    run.used["joint"] += len(results)
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
                and not stats.within_band(est.share_female, p.target, opts.tolerance)
                and not est.ci_low <= p.target <= est.ci_high):
            pushed_out.append((p, est.share_female))
    run.say("  " + ", ".join(f"{p.name} {fmt(p.joint[-1]['share_female'], 3)}" for p in profs))
    return pushed_out


def retune(run: FixRun, opts: FixOptions, edited: list[ProfessionState],
           pushed_out: list[tuple[ProfessionState, float]], rnd: int) -> list[ProfessionState]:
    """Joiners get an edit; every other edited profession moves to where its pooled rounds put the target."""
    for p, share in pushed_out:
        join_edit(p, share, rnd, edited, run.pipe, run.augmentations, run.probe, opts.max_drift,
                  opts.log_lambda_bounds, run.anchors)
        edited.append(p)
        run.say(f"  {p.name}: pushed to {share:.2f} by the other edits; joins the edit towards '{p.destination}' "
                f"at λ_rel {math.exp(p.log_lambda):.3g}")
    moved = [p for p, _ in pushed_out]
    for p in edited:
        if p.joined_round == rnd:
            continue
        new = pooled_correction(p)
        if abs(new - p.log_lambda) > MIN_CORRECTION:
            p.log_lambda = new
            moved.append(p)
    return moved


# ------------------------------------------------------------------------------------------------- after
def gender_metadata(run: FixRun, opts: FixOptions, profs: Sequence[ProfessionState], preserve: list[str]) -> dict:
    """What the edit file of a gender fix records."""
    return edit_metadata(profs, preserve, opts.preserve_strength, run.anchor_prompts, opts.anchor_strength,
                         run.augmentations, opts.target, opts.tolerance)


def load_stored(path: Path, inputs: dict) -> Optional[dict]:
    """A finished search's result stored in the run folder, if it was made with exactly these inputs."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("inputs") != json.loads(json.dumps(inputs)):
        return None
    return saved["result"]


def store(path: Path, inputs: dict, result: dict) -> None:
    """Keep a finished search (atomically), so an interrupted fix resumes without redoing it."""
    from debias.io import atomic_write_json

    atomic_write_json(path, {"inputs": inputs, "result": result})


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_") or "profession"


def quoted(prompts: Sequence[str]) -> str:
    return ", ".join(f"'{p}'" for p in prompts)
