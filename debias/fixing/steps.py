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

from debias.auditing.attributes import AttributePlan, plan_attributes, profession_target, read_labels
from debias.auditing.stage import Instruments, StagePlan, audit_stage
from debias.classify.zero_shot import load_classifiers
from debias.core.attributes import GENDER, Attribute
from debias.core.setup import LoadedModel
from debias.core.setup import professions_for, start, templates_for
from debias.fixing.kclass import ALREADY, ClassEdit, CrossedAttribute, class_counts, encode_class_rows, within_tolerance
from debias.fixing.options import DEFAULT_ANCHOR_STRENGTH, FixOptions, tuning_templates_for
from debias.fixing.plan import Anchors, anchor_prompts_for, edit_contexts, probe_rows
from debias.generation.cache import ImageCache
from debias.generation.generate import measure, sampler_settings
from debias.results.records import AuditResult


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
    augmentations: tuple[str, ...]  # the edit rows' templates: the profile's augmentations and the tuning templates
    anchor_prompts: list[str]
    anchors: Optional[Anchors]
    probe_prompts: tuple[str, ...]  # unrelated prompts: the drift limit and the side-effect check
    probe: Optional[torch.Tensor]
    others: list  # further classifiers: the before and after audits compare them with the primary (clf)
    threads: int
    dist: Any
    target: float
    tolerance: float
    tuning_templates: Optional[tuple[str, ...]]  # the tuning audit's templates as the user gave them (None: the profile's)
    attribute_plan: AttributePlan = field(default_factory=AttributePlan)  # what every audit reads beyond gender
    used: Counter = field(default_factory=Counter)  # images read per stage (see image_counts)
    attribute_classifiers: dict = field(default_factory=dict)  # attribute name -> its classifier (not gender)

    @property
    def pipe(self):
        return self.model.pipe

    @property
    def oracle(self):
        return self.model.profile.oracle

    def audit(self, name: str, n: int, prompt_set: str, seed: int, edit_info: Optional[dict] = None) -> AuditResult:
        """One of the fix's audits (``before``, ``tuning``, ``after``) in ``out/name``, counted under ``name``: the
        test audits on the held-out templates, compared with the further classifiers; the tuning audit on the
        tuning templates. ``edit_info`` describes the edit in the weights (the after audit)."""
        test = prompt_set == "test"
        templates, prompt_set = templates_for(self.model, self.test_templates if test else self.tuning_templates,
                                              prompt_set)
        plan = StagePlan(entries=self.entries, templates=templates, prompt_set=prompt_set, n=n, seed=seed,
                         target=self.target, tolerance=self.tolerance, attributes=self.attribute_plan)
        result = audit_stage(self.instruments(), plan, self.out / name, others=self.others if test else (),
                             stage=name, edit_info=edit_info)
        self.used[name] = result.images_read
        return result

    def instruments(self) -> Instruments:
        """What an audit stage measures with: this run's model, classifier, sampler, cache and processes."""
        return Instruments(model=self.model, classifier=self.clf, settings=self.settings, batch=self.batch,
                           cache=self.cache, dist=self.dist, threads=self.threads, progress=self.progress)

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


def setup(model: Any, opts: FixOptions, fixed: Sequence[Attribute],
          say: Callable[[str], None]) -> tuple[FixRun, FixOptions]:
    """Load the model and classifier, choose sampling and prompts, and encode the rows every edit keeps fixed.

    Returns the run and the options with what a saved fixed model records filled in where they were unset."""
    begun = start(model, opts.runtime, opts.memory)
    loaded = begun.model
    classification = opts.classification.filled(loaded.audit_defaults)
    clf, others = load_classifiers(loaded, classification)
    opts = replace(opts, generation=opts.generation.filled(loaded.audit_defaults),
                   classification=replace(classification, classifier=classification.primary))
    settings, batch = sampler_settings(loaded, opts.generation)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(out)
    test_templates = templates_for(loaded, opts.prompts.templates, "test")[0]
    tuning = tuning_templates_for(opts.search.tuning_templates, loaded.profile.template_set().tuning, test_templates)
    augmentations = edit_contexts(loaded.profile.augmentations, tuning)
    opts = replace(opts, search=replace(opts.search,
                                        anchor_strength=anchor_strength_for(opts.anchor_strength, loaded.profile)))
    anchor_prompts = anchor_prompts_for(augmentations) if opts.anchor_strength > 0 else []
    anchors = Anchors(probe_rows(loaded.pipe, anchor_prompts), opts.anchor_strength) if anchor_prompts else None
    probe_prompts = tuple(opts.search.side_prompts or loaded.profile.side_prompts)
    probe = probe_rows(loaded.pipe, probe_prompts) if opts.max_drift is not None and probe_prompts else None
    return FixRun(model=loaded, clf=clf, settings=settings, cache=cache, batch=batch, say=say, progress=opts.progress,
                  out=out, entries=professions_for(loaded, opts.prompts.professions), templates=tuning,
                  test_templates=tuple(opts.prompts.templates) if opts.prompts.templates else None,
                  augmentations=augmentations, anchor_prompts=anchor_prompts, anchors=anchors,
                  probe_prompts=probe_prompts, probe=probe, others=others, threads=begun.threads, dist=begun.dist,
                  target=opts.target, tolerance=opts.tolerance, tuning_templates=opts.search.tuning_templates,
                  attribute_plan=plan_attributes(**audit_extra(fixed))), opts


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


def audits_before(run: FixRun, opts: FixOptions) -> tuple[AuditResult, AuditResult]:
    """The test audit (a judge only) and the tuning audit (where every decision comes from), unedited."""
    read = ", ".join(["gender"] + [a.name for a in run.attribute_plan.attributes])
    run.say(f"fix: auditing {len(run.entries)} professions before the edit ({opts.test_images} images each, test "
            f"prompts; {read})")
    before = run.audit("before", opts.test_images, "test", opts.seed)
    tuning = run.audit("tuning", opts.check_images, "tuning", opts.tuning_seed)
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
    return read_labels(run.cache, [classifier], [r.key for r in results], dist=run.dist)[0][attribute.name]
