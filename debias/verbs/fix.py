"""The fix verb: :func:`fix` runs the steps of :mod:`debias.fixing.steps` in order and writes the run folder."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from debias.core.attributes import GENDER, Attribute, resolve_attribute
from debias.core.errors import InputError
from debias.core.options import (
    ClassifierOptions, GenerationOptions, MemoryOptions, PromptOptions, RuntimeOptions, SearchOptions, gather,
)
from debias.core.profiles import DEFAULT_MODEL
from debias.core.prompts import read_professions, templates_from_option
from debias.fixing.engine import Engine
from debias.fixing.options import FixOptions, check_options
from debias.fixing.record import edit_metadata, fix_record, image_counts, nothing_edited
from debias.fixing.ship import ship_and_judge
from debias.fixing.steps import audits_before, edited_attribute, plan_edits, read_classes, setup
from debias.report import render_report
from debias.results.records import FixResult

FIX_GROUPS = {"prompts": PromptOptions, "generation": GenerationOptions, "classification": ClassifierOptions,
              "search": SearchOptions, "memory": MemoryOptions, "runtime": RuntimeOptions}


def fix_run(run, opts: FixOptions, fixed: Sequence[Attribute], started: datetime, t0: float) -> FixResult:
    """The whole fix on a set-up run: audits before, the engine's rounds, the shipped edit judged; ``fix.json``."""
    attribute = edited_attribute(fixed)
    before, tuning = audits_before(run, opts)
    edits = plan_edits(run, opts, attribute, tuning)
    engine = Engine(run, opts, edits, lambda a, results: read_classes(run, a, results))
    M = engine.run_rounds()
    metadata = edit_metadata(edits, engine.preserve, opts, run) if M is not None else None
    after, side = ship_and_judge(run, opts, M, metadata, nothing_edited(edits))
    return fix_record(run, opts, fixed, edits, before, tuning, after, side, M, engine.preserve,
                      image_counts(run.cache, run.used), started, time.perf_counter() - t0)


def fixed_attributes(specs: Sequence[str | Attribute] | None) -> list[Attribute]:
    """``--attribute`` values of a fix: built-in names (gender included) or attribute files, each once; none given
    is gender (the k = 2 attribute), so ``debias fix`` and ``debias fix --attribute gender`` are one fix."""
    chosen: list[Attribute] = []
    for spec in specs or ():
        attribute = spec if isinstance(spec, Attribute) else resolve_attribute(str(spec))
        if any(a.name == attribute.name for a in chosen):
            raise InputError(f"--attribute {spec}: attribute {attribute.name!r} is given twice; give each once")
        chosen.append(attribute)
    if len(chosen) > 2:
        raise InputError(f"--attribute: {len(chosen)} attributes given ({', '.join(a.name for a in chosen)}); a fix "
                         f"edits one attribute, or two crossed (one destination per pair of classes, e.g. 'a female "
                         f"pilot with dark skin'). Fix two, then fix the next on the saved pipeline "
                         f"(--save-pipeline), which the second fix's before audit then measures")
    return chosen or [GENDER]


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fix(
    model: Any = DEFAULT_MODEL,
    *,
    out: str | os.PathLike = "runs/fix",
    attributes: Sequence[str | Attribute] | None = None,
    save_pipeline: str | os.PathLike | None = None,
    prompts: PromptOptions | None = None,
    generation: GenerationOptions | None = None,
    classification: ClassifierOptions | None = None,
    search: SearchOptions | None = None,
    memory: MemoryOptions | None = None,
    runtime: RuntimeOptions | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = _echo,
    **options: Any,
) -> FixResult:
    """Fix a model's gender shares per profession; writes the run folder ``out`` and returns the result (``fix.json``).

    The option groups are those of :func:`debias.audit` (``prompts``, ``generation``, ``classification``,
    ``memory``, ``runtime``) and ``search`` (:class:`debias.fixing.options.SearchOptions`); each field may also be
    given as a keyword of its own (``budget=480``, ``steps=20``). In ``search``: ``budget`` bounds the images per
    profession on the tuning side, the tuning audit (``check_images``) and the ``joint_rounds`` rounds of
    :mod:`debias.fixing.engine` (never exceeded; None: 320 per class beyond the first).
    ``tuning_templates`` are the prompts the strengths are tuned on (default: the model family's validation
    templates); image i of a profession uses template i mod their number, so every round pools them. ``prompts.templates``
    are the held-out test prompts the before and after audits judge on (default: the profile's test templates). ``preserve`` is a
    list of prompts (or a file, one per line) to keep where they are (UCE-style, c* = c); the professions
    left unedited are always preserved. ``anchor_strength`` weighs the anchors (the bare augmentation templates and
    the empty prompt, kept fixed by every edit, in the rounds and in the one that ships; 0 turns them off; None: the model
    family's, :attr:`debias.core.profiles.Profile.anchor_strength`). ``side_prompts``
    are the unrelated prompts of the side-effect check (default: the model profile's). ``memory`` trades speed for
    memory (:class:`debias.core.memory.MemoryOptions`: CPU offload, VAE tiling and slicing, attention slicing, a batch that
    follows free GPU memory).

    ``attributes`` (``--attribute``, repeatable: a built-in name such as ``"skin"`` or an attribute file) fixes
    those attributes instead: k − 1 strengths per profession towards the under-represented classes, one joint
    edit, every audited attribute measured before and after (:mod:`debias.fixing.kclass`); gender is always
    measured, and fixed only when named. Targets: the profession list's (``a CEO | skin=0.5,0.3,0.2``), else
    uniform (gender: ``target``). ``fix.json`` then holds ``attribute_fixes``.
    """
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    groups = gather({"prompts": prompts, "generation": generation, "classification": classification,
                     "search": search, "memory": memory, "runtime": runtime}, options, FIX_GROUPS, "fix")
    check_options(groups["prompts"], groups["search"])
    # read before loading anything, so a typo fails in a second, not after a download
    fixed = fixed_attributes(attributes)
    opts = FixOptions(prompts=_read_prompts(groups["prompts"], fixed),
                      search=_read_search(groups["search"]), generation=groups["generation"],
                      classification=groups["classification"], memory=groups["memory"], runtime=groups["runtime"],
                      out=out, save_pipeline=save_pipeline, progress=progress)
    opts = opts.with_budget_for(edited_attribute(fixed).k)  # checked before anything loads
    run, opts = setup(model, opts, fixed, log or (lambda _m: None))
    result = fix_run(run, opts, fixed, started, t0)
    result.save(run.out)
    render_report([run.out])
    return result


def _read_prompts(prompts: PromptOptions, fixed: Sequence[Attribute]) -> PromptOptions:
    """The profession list file read now (its targets may name an attribute file's attribute) and the test
    templates checked."""
    professions = prompts.professions
    if isinstance(professions, (str, os.PathLike)):
        professions = read_professions(professions, [a for a in fixed if a.name != "gender"])
    templates = templates_from_option(list(prompts.templates)) if prompts.templates else prompts.templates
    return replace(prompts, professions=professions, templates=templates)


def _read_search(search: SearchOptions) -> SearchOptions:
    """The tuning templates checked (or read from their file)."""
    if not search.tuning_templates:
        return search
    return replace(search, tuning_templates=templates_from_option(list(search.tuning_templates), "--tuning-templates"))
