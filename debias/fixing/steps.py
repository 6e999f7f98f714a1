"""The steps of a fix, in order: set up, audit before, plan each profession's edit (tuning the strengths is
:mod:`.engine`, shipping and judging the edit :mod:`.ship`).

Every step reads and writes the shared :class:`FixRun` and the professions' :class:`~debias.fixing.kclass.ClassEdit`;
:func:`debias.verbs.fix.fix` calls them in order. Every decision (destination, left unedited, strengths, joiners)
reads the tuning prompts and seeds only; the before audit on the test prompts is compared with the after audit and
nothing else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from debias.core.attributes import GENDER, Attribute
from debias.auditing.attributes import profession_target
from debias.fixing.kclass import ALREADY, ClassEdit, CrossedAttribute, class_counts, encode_class_rows, within_tolerance
from debias.fixing.options import DEFAULT_ANCHOR_STRENGTH, FixOptions, tuning_templates_for
from debias.fixing.plan import Anchors, anchor_prompts_for, probe_rows
from debias.generation.generate import measure
from debias.results.records import AuditResult
from debias.core.setup import LoadedModel


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
    attribute_classifiers: dict = field(default_factory=dict)  # attribute name -> its classifier (not gender)

    @property
    def pipe(self):
        return self.model.pipe

    @property
    def oracle(self):
        return self.model.profile.oracle

    def audit(self, name: str, n: int, prompt_set: str, seed: int, **extra) -> AuditResult:
        """One of the fix's audits (``before``, ``tuning``, ``after``) in ``out/name``, counted under ``name``."""
        from debias.verbs.audit import audit

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
        """:func:`debias.generation.generate.measure` with this run's pipeline, classifier, sampler, cache and batching."""
        return measure(self.pipe, self.clf, items, settings=self.settings, cache=self.cache, edit=edit,
                       batch_size=self.batch, oracle=self.oracle, progress=self.progress, description=description,
                       stage=stage, adapt_batch=self.model.memory.adapt_batch)


# ------------------------------------------------------------------------------------------------ setup
def anchor_strength_for(given: Optional[float], profile) -> float:
    """The anchors' weight: the user's, else the model family's (MMDiT: less, see debias.core.profiles), else 100."""
    if given is not None:
        return given
    return profile.anchor_strength if profile.anchor_strength is not None else DEFAULT_ANCHOR_STRENGTH


def setup(model: Any, opts: FixOptions, say: Callable[[str], None]) -> tuple[FixRun, FixOptions]:
    """Load the model and classifier, choose sampling and prompts, and encode the rows every edit keeps fixed.

    Returns the run and the options with what a saved fixed model records filled in where they were unset."""
    from debias.generation.cache import ImageCache
    from debias.verbs.audit import load_classifiers, split_classifiers
    from debias.core.setup import professions_for, sampler_settings, start, templates_for

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
def edited_attribute(fixed: Sequence[Attribute]) -> Attribute | CrossedAttribute:
    """What the fix edits: the one fixed attribute, or the two crossed (their cells are the classes)."""
    return CrossedAttribute(*fixed) if len(fixed) == 2 else fixed[0]


def audit_extra(fixed: Sequence[Attribute]) -> dict:
    """What every audit of the fix reads besides gender: the fixed attributes, crossed when there are two."""
    extra: dict = {}
    attributes = [a for a in fixed if a.name != GENDER.name]
    if attributes:
        extra["attributes"] = attributes
    if len(fixed) == 2:
        extra["intersect"] = [tuple(a.name for a in fixed)]
    return extra


def audits_before(run: FixRun, opts: FixOptions, fixed: Sequence[Attribute]) -> tuple[AuditResult, AuditResult]:
    """The test audit (a judge only) and the tuning audit (where every decision comes from), unedited."""
    extra = audit_extra(fixed)
    read = ", ".join(["gender"] + [a.name for a in extra.get("attributes", [])])
    run.say(f"fix: auditing {len(run.entries)} professions before the edit ({opts.test_images} images each, test "
            f"prompts; {read})")
    before = run.audit("before", opts.test_images, "test", opts.seed, **extra)
    tuning = run.audit("tuning", opts.check_images, "tuning", opts.tuning_seed, templates=opts.tuning_templates,
                       **extra)
    return before, tuning


# ------------------------------------------------------------------------------------------------- plan
def edit_target(entry, attribute: Attribute | CrossedAttribute, default_gender: float) -> tuple[float, ...]:
    """The profession's target for what is edited (a crossed attribute's: the product of its two targets)."""
    if isinstance(attribute, CrossedAttribute):
        return attribute.target(profession_target(entry, attribute.first, default_gender)[0],
                                profession_target(entry, attribute.second, default_gender)[0])
    return profession_target(entry, attribute, default_gender)[0]


def inside_band(edit: ClassEdit, counts, tolerance: float) -> Optional[bool]:
    """The audit's band rule on the counts; for a crossed attribute on both attributes' own shares (what the
    after audit judges), not on the cells."""
    if not isinstance(edit.attribute, CrossedAttribute):
        return within_tolerance(counts, edit.target, tolerance)
    checks = [within_tolerance(c, t, tolerance)
              for c, t in zip(edit.attribute.marginals(counts), edit.attribute.marginals(edit.target))]
    return None if None in checks else all(checks)


def plan_edits(run: FixRun, opts: FixOptions, attribute: Attribute | CrossedAttribute,
               tuning: AuditResult) -> list[ClassEdit]:
    """One :class:`ClassEdit` per profession: destination rows for every class (the reach of any edit is read on
    them, cross-effects on unedited professions included), and, where the tuning shares lie outside the band, the
    reference class (the one it has most of against its target) and the side-effect caps."""
    edits = []
    for entry in run.entries:
        counts, unclear = class_counts(tuning, attribute, entry.phrase)
        edit = ClassEdit(attribute, entry, edit_target(entry, attribute, opts.target), counts, unclear)
        encode_class_rows(run.pipe, edit, run.augmentations)
        inside = inside_band(edit, counts, opts.tolerance)
        if inside is None:
            edit.status = "not_reachable"
            run.say(f"  {entry.name}: no image read on the tuning prompts; left unedited (check the classifier, its "
                    "labels and --min-confidence)")
        elif inside:
            edit.status = ALREADY
            run.say(f"  {entry.name}: shares {_shares(counts)} already within {opts.tolerance} of the target "
                    f"{_shares(edit.target)} on the tuning prompts; left unedited")
        else:
            over = [c / max(t, 1e-3) for c, t in zip(counts, edit.target)]
            edit.join(over.index(max(over)), run.probe, opts.max_drift, run.anchors)
        edits.append(edit)
    return edits


def _shares(values) -> str:
    total = sum(values) or 1
    return "(" + ", ".join(f"{v / total:.2f}" for v in values) + ")"


# ---------------------------------------------------------------------------------------------- classes
def attribute_classifier(run: FixRun, attribute: Attribute):
    """The attribute's zero-shot classifier on the fix's CLIP (None for gender: the primary classifier reads it)."""
    if attribute.name == GENDER.name:
        return None
    if attribute.name not in run.attribute_classifiers:
        run.attribute_classifiers[attribute.name] = run.clf.for_attribute(attribute)
    return run.attribute_classifiers[attribute.name]


def read_classes(run: FixRun, attribute: Attribute | CrossedAttribute, results) -> list[str]:
    """Each result's class of ``attribute`` (a crossed attribute's cell: both read, then joined)."""
    if isinstance(attribute, CrossedAttribute):
        return attribute.joint_labels(read_classes(run, attribute.first, results),
                                      read_classes(run, attribute.second, results))
    classifier = attribute_classifier(run, attribute)
    if classifier is None:
        return [r.label for r in results]
    from debias.auditing.attributes import read_labels

    return read_labels(run.cache, [classifier], [r.key for r in results], dist=run.dist)[0][attribute.name]
