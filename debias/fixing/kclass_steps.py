"""The steps of an attribute fix (``debias fix --attribute NAME``), on the shared fix run (:mod:`.steps`).

audit before (test and tuning prompts, every attribute) → per profession and fixed attribute: the band check,
destination rows, side-effect caps, the k-class strength search (stored, so a resumed run reuses it) → one joint
edit → the shipped edit's after audit and side effects (:func:`.ship.ship_and_judge`) → the ``attribute_fixes``
block of ``fix.json``. Two fixed attributes are edited as their crossed attribute (cells, :class:`.kclass.
CrossedAttribute`); the audits then also cross the two, which is where the cells' counts come from. The math is
in :mod:`.kclass`; :mod:`debias.search_k` searches.
"""

from __future__ import annotations

from typing import Sequence

from debias import multiclass
from debias.attributes import GENDER, Attribute
from debias.audit_attributes import profession_target
from debias.fixing.kclass import (
    ALREADY, ClassEdit, CrossedAttribute, class_caps, class_counts, class_matrix, edit_of, encode_class_rows,
    joint_class_matrix, search_tolerance, within_tolerance,
)
from debias.fixing.options import JOINT_PIN_LAMBDA_RELATIVE, NOT_TARGETED, FixOptions
from debias.fixing.plan import encode_preserve_rows, preserve_prompt_list
from debias.search_k import KSearchResult, search_strengths

MAX_STRENGTH = 1e4  # w = 1 / λ_rel: the binary fix's strongest edit (LOG_LAMBDA_BOUNDS' 1e-4)


def edited_attributes(fixed: Sequence[Attribute]) -> list[Attribute | CrossedAttribute]:
    """What the fix edits: the one fixed attribute, or the two crossed (their cells are the classes)."""
    return [CrossedAttribute(*fixed)] if len(fixed) == 2 else list(fixed)


def audit_extra(fixed: Sequence[Attribute]) -> dict:
    """What every audit of the fix reads besides gender: the fixed attributes, crossed when there are two."""
    extra = {"attributes": [a for a in fixed if a.name != GENDER.name]}
    if len(fixed) == 2:
        extra["intersect"] = [tuple(a.name for a in fixed)]
    return extra


def audits_before(run, opts: FixOptions, attributes: Sequence[Attribute]):
    """The test audit (a judge only) and the tuning audit (every decision), both reading every attribute."""
    extra = audit_extra(attributes)
    run.say(f"fix: auditing {len(run.entries)} professions before the edit ({opts.test_images} images each, test "
            f"prompts; {', '.join(['gender'] + [a.name for a in extra['attributes']])})")
    before = run.audit("before", opts.test_images, "test", opts.seed, **extra)
    tuning = run.audit("tuning", opts.check_images, "tuning", opts.tuning_seed, templates=opts.tuning_templates,
                       **extra)
    return before, tuning


def edit_target(entry, attribute: Attribute | CrossedAttribute, default_gender: float) -> tuple[float, ...]:
    """The profession's target for what is edited (a crossed attribute's: the product of its two targets)."""
    if isinstance(attribute, CrossedAttribute):
        return attribute.target(profession_target(entry, attribute.first, default_gender)[0],
                                profession_target(entry, attribute.second, default_gender)[0])
    return profession_target(entry, attribute, default_gender)[0]


def inside_band(edit: ClassEdit, counts, tolerance: float):
    """The audit's band rule on the counts; for a crossed attribute on both attributes' own shares (what the
    after audit judges), not on the cells."""
    if not isinstance(edit.attribute, CrossedAttribute):
        return within_tolerance(counts, edit.target, tolerance)
    checks = [within_tolerance(c, t, tolerance)
              for c, t in zip(edit.attribute.marginals(counts), edit.attribute.marginals(edit.target))]
    return None if None in checks else all(checks)


def plan_edits(run, opts: FixOptions, attributes: Sequence[Attribute | CrossedAttribute],
               tuning) -> list[list[ClassEdit]]:
    """Per profession, one :class:`ClassEdit` per edited attribute, with its band check and caps."""
    profs = []
    for entry in run.entries:
        edits = []
        for attribute in attributes:
            counts, _ = class_counts(tuning, attribute, entry.phrase)
            edit = ClassEdit(attribute, entry, edit_target(entry, attribute, opts.target), counts)
            inside = inside_band(edit, counts, opts.tolerance)
            if inside is None:
                edit.status = "not_reachable"
                run.say(f"  {entry.name} ({attribute.name}): no image read on the tuning prompts; left unedited")
            elif inside:
                edit.status = ALREADY
                run.say(f"  {entry.name} ({attribute.name}): shares {_shares(counts)} already within "
                        f"{opts.tolerance} of the target {_shares(edit.target)} on the tuning prompts")
            else:
                encode_class_rows(run.pipe, edit, run.augmentations)
                edit.caps = class_caps(edit, run.probe, opts.max_drift, run.anchors, MAX_STRENGTH)
            edits.append(edit)
        profs.append(edits)
    return profs


def _shares(values) -> str:
    total = sum(values) or 1
    return "(" + ", ".join(f"{v / total:.2f}" for v in values) + ")"


def search_all(run, opts: FixOptions, profs: Sequence[Sequence[ClassEdit]]) -> None:
    """Every edit's strengths (a stored search made with the same inputs is reused)."""
    for edits in profs:
        for edit in edits:
            if edit.status:
                continue
            edit.search = search_one(run, opts, edit)
            run.used["search"] += edit.search.images_used
            edit.status = "not_reachable" if edit.search.status == "not_reachable" else ""
            run.say(f"search {edit.entry.name} ({edit.attribute.name}): {edit.search.status} — strengths "
                    f"{', '.join(f'{c} {w:.3g}' for c, w in zip(edit.attribute.class_names, edit.strengths))}; "
                    f"shares {', '.join(f'{x:.2f}' for x in edit.search.shares)}; {edit.search.images_used} images")


def search_one(run, opts: FixOptions, edit: ClassEdit) -> KSearchResult:
    from debias.fixing.steps import load_stored, slug, store
    from debias.generate import items_for_seeds
    from debias.models import fingerprint
    from debias.prompts import profession_prompts

    prompts = profession_prompts(edit.entry, run.templates)
    inputs = {"model": fingerprint(run.pipe), "classifier": classifier_id(run, edit.attribute),
              "settings": run.settings.to_dict(), "source": edit.entry.phrase, "destinations": edit.destinations(),
              "augmentations": list(run.augmentations), "anchors": run.anchor_prompts,
              "anchor_strength": opts.anchor_strength, "prompts": prompts, "target": list(edit.target),
              "tolerance": opts.tolerance, "budget": opts.budget, "seed": opts.tuning_seed, "caps": list(edit.caps),
              "version": 1}
    path = run.out / "search" / f"{edit.attribute.name}-{slug(edit.entry.name)}.json"
    stored = load_stored(path, inputs)
    if stored is not None:
        run.say(f"search {edit.entry.name} ({edit.attribute.name}): reusing the finished search in {path}")
        return KSearchResult.from_dict(stored)

    def evaluate(strengths, seeds) -> list[int]:
        M = class_matrix(edit, strengths, run.anchors)
        results = run.generate(items_for_seeds(prompts, seeds, opts.tuning_seed), stage="search", edit=M,
                               description=f"{edit.entry.name} ({edit.attribute.name}): {len(seeds)} images")
        return multiclass.count_labels(read_classes(run, edit.attribute, results), edit.attribute.class_names)[0]

    run.say(f"search {edit.entry.name} ({edit.attribute.name}): '{edit.entry.phrase}' → "
            f"{', '.join(repr(d) for d in edit.destinations())}, budget {opts.budget} images")
    result = search_strengths(evaluate, edit.target, classes=edit.attribute.class_names,
                              tolerance=search_tolerance(edit.target, opts.tolerance), budget=opts.budget,
                              max_strength=edit.caps, first_seed=opts.tuning_seed,
                              seeds_per_round=min(32, opts.budget // 4))
    store(path, inputs, result.to_dict())
    return result


def attribute_classifier(run, attribute: Attribute):
    """The attribute's zero-shot classifier on the fix's CLIP (None for gender: the primary classifier reads it)."""
    if attribute.name == GENDER.name:
        return None
    if attribute.name not in run.attribute_classifiers:
        run.attribute_classifiers[attribute.name] = run.clf.for_attribute(attribute)
    return run.attribute_classifiers[attribute.name]


def classifier_id(run, attribute: Attribute | CrossedAttribute) -> str:
    """What reads ``attribute`` (a stored search is reused only under the same classifier)."""
    if isinstance(attribute, CrossedAttribute):
        return " + ".join(classifier_id(run, a) for a in (attribute.first, attribute.second))
    classifier = attribute_classifier(run, attribute)
    return classifier.cache_id if classifier else run.clf.cache_id


def read_classes(run, attribute: Attribute | CrossedAttribute, results) -> list[str]:
    """Each result's class of ``attribute`` (a crossed attribute's cell: both read, then joined)."""
    if isinstance(attribute, CrossedAttribute):
        return attribute.joint_labels(read_classes(run, attribute.first, results),
                                      read_classes(run, attribute.second, results))
    return labels_of(run, attribute, attribute_classifier(run, attribute), results)


def labels_of(run, attribute: Attribute, classifier, results) -> list[str]:
    """Each result's class of ``attribute``: gender's label, or the attribute classifier's (cached)."""
    if classifier is None:
        return [r.label for r in results]
    from debias.audit_attributes import read_labels

    return read_labels(run.cache, [classifier], [r.key for r in results], dist=run.dist)[0][attribute.name]


def joint_edit(run, opts: FixOptions, profs: Sequence[Sequence[ClassEdit]]):
    """One M for all professions (None: nothing to edit) and the preserve prompts (the unedited professions)."""
    unedited = [edits[0] for edits in profs if not any(e.edited for e in edits)]
    preserve = preserve_prompt_list(opts.preserve, [])
    preserve += [e.entry.phrase for e in unedited if e.entry.phrase not in preserve]
    rows = encode_preserve_rows(run.pipe, preserve, run.augmentations) if preserve else None
    M = joint_class_matrix(profs, rows, opts.preserve_strength, run.anchors, JOINT_PIN_LAMBDA_RELATIVE)
    if M is not None:
        edited = sum(any(e.edited for e in edits) for edits in profs)
        run.say(f"joint edit: one matrix for {edited} professions' {sum(e.edited for es in profs for e in es)} edits")
    return M, preserve


def edit_metadata(profs: Sequence[Sequence[ClassEdit]], preserve: Sequence[str], opts: FixOptions, run) -> dict:
    """What the edit file records about an attribute fix (strengths per class, as λ_rel)."""
    return {"kind": "attribute_fix", "attributes": sorted({e.attribute.name for es in profs for e in es}),
            "edits": [{"source": e.entry.phrase, "attribute": e.attribute.name, "destinations": e.destinations(),
                       "strengths": list(e.strengths), "lambda_scale": e.scale}
                      for es in profs for e in es if e.edited],
            "preserve": list(preserve), "preserve_strength": opts.preserve_strength,
            "anchors": list(run.anchor_prompts), "anchor_strength": opts.anchor_strength,
            "augmentations": list(run.augmentations), "joint_pin_lambda_relative": JOINT_PIN_LAMBDA_RELATIVE,
            "tolerance": opts.tolerance}


def gender_states(run, opts: FixOptions, before, tuning, profs: Sequence[Sequence[ClassEdit]],
                  fixed: Sequence[Attribute]) -> list:
    """Gender's rows of ``fix.json``: its own edit's status where gender is fixed, else measured only."""
    from debias.fixing.plan import ProfessionState

    states = []
    for entry, edits in zip(run.entries, profs):
        own = edit_of(edits, GENDER)
        status = NOT_TARGETED if own is None else own.status
        states.append(ProfessionState(entry=entry, target=opts.target if entry.target is None else entry.target,
                                      before=before.row(entry.phrase), tuning_before=tuning.row(entry.phrase),
                                      status=status))
    return states


def fix_attributes(run, opts: FixOptions, fixed: Sequence[Attribute], started, t0: float):
    """The whole attribute fix on a set-up run; returns its :class:`~debias.results.FixResult`."""
    import time
    from dataclasses import replace

    from debias.fixing.kclass_record import attribute_fixes
    from debias.fixing.record import fix_record, image_counts
    from debias.fixing.ship import ship_and_judge

    before, tuning = audits_before(run, opts, fixed)
    profs = plan_edits(run, opts, edited_attributes(fixed), tuning)
    search_all(run, opts, profs)
    M, preserve = joint_edit(run, opts, profs)
    metadata = edit_metadata(profs, preserve, opts, run) if M is not None else None
    after, side = ship_and_judge(run, opts, M, metadata, nothing_edited(profs), **audit_extra(fixed))
    held = [] if any(a.name == GENDER.name for a in fixed) else [GENDER]
    block = attribute_fixes(fixed, held, profs, run.entries, before, after, opts.tolerance)
    result = fix_record(run, opts, gender_states(run, opts, before, tuning, profs, fixed), before, after, side, M,
                        preserve, image_counts(run.cache, run.used), started, time.perf_counter() - t0)
    note = None if M is not None else f"nothing to edit: {nothing_edited(profs)}"
    return replace(result, attribute_fixes=block, edit_note=note)


def nothing_edited(profs: Sequence[Sequence[ClassEdit]]) -> str:
    statuses = [e.status or "unedited" for es in profs for e in es]
    return (f"{statuses.count(ALREADY)} of {len(statuses)} profession × attribute pairs already lie within the "
            f"tolerance on the tuning prompts; {statuses.count('not_reachable')} could not be edited")
