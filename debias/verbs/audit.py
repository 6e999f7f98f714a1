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
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from debias.auditing.attributes import AttributePlan, plan_attributes
from debias.auditing.stage import Instruments, StagePlan, audit_stage
from debias.classify.zero_shot import load_classifiers
from debias.core.attributes import Attribute
from debias.core.errors import InputError
from debias.core.options import (
    ClassifierOptions, GenerationOptions, MemoryOptions, PromptOptions, RuntimeOptions, gather,
)
from debias.core.profiles import DEFAULT_MODEL
from debias.core.prompts import parse_professions, read_professions, templates_from_option
from debias.core.setup import professions_for, start, templates_for
from debias.generation.cache import ImageCache
from debias.generation.generate import sampler_settings
from debias.results.records import AuditResult

AUDIT_GROUPS = {"prompts": PromptOptions, "generation": GenerationOptions, "classification": ClassifierOptions,
                "memory": MemoryOptions, "runtime": RuntimeOptions}


def audit(
    model: Any = DEFAULT_MODEL,
    *,
    out: str | os.PathLike = "runs/audit",
    images_per_profession: int = 64,
    prompt_set: str = "test",
    ci_width: float | None = None,
    max_images: int | None = None,
    attributes: Sequence[str | Attribute] | None = None,
    intersect: Sequence[str | Sequence[str]] | None = None,
    prompts: PromptOptions | None = None,
    generation: GenerationOptions | None = None,
    classification: ClassifierOptions | None = None,
    memory: MemoryOptions | None = None,
    runtime: RuntimeOptions | None = None,
    progress: bool = True,
    write_report: bool = True,
    **options: Any,
) -> AuditResult:
    """Audit a model; writes ``out/audit.json``, ``out/audit.csv``, the images and ``out/report.html`` (unless
    ``write_report`` is False), and returns the result.

    ``model`` is a spec (hub id, folder, built-in name), a pipeline or a :class:`~debias.core.setup.LoadedModel`.
    The option groups (:mod:`debias.core.options`) say which professions and prompts (``prompts``), how images are
    made (``generation``) and read (``classification``: a spec, a loaded classifier, or a list whose first is the
    primary and whose others are compared with it), what is traded for memory and where the model runs. Each
    field may also be given as a keyword of its own (``steps=20``, ``min_confidence=0.5``). ``attributes`` and
    ``intersect`` add attribute sections (see the module docstring; CLI ``--attribute``, ``--intersect``); a
    profession list's targets may then name those attributes.
    """
    clock = datetime.now(timezone.utc), time.perf_counter()
    groups = gather({"prompts": prompts, "generation": generation, "classification": classification,
                     "memory": memory, "runtime": runtime}, options, AUDIT_GROUPS, "audit")
    chosen: PromptOptions = groups["prompts"]
    _check_options(images_per_profession, chosen.target, chosen.tolerance, ci_width, max_images,
                   groups["generation"].batch_size, prompt_set)
    # read the user's files before loading anything, so a typo fails in a second, not after a download
    plan = plan_attributes(attributes, intersect)
    listed = _listed(chosen.professions, plan)
    templates = templates_from_option(list(chosen.templates)) if chosen.templates else None
    run = start(model, groups["runtime"], groups["memory"])
    loaded = run.model
    entries = professions_for(loaded, listed)
    stage_templates, prompt_set_name = templates_for(loaded, templates, prompt_set)
    clf, others = load_classifiers(loaded, groups["classification"].filled(loaded.audit_defaults))
    settings, batch = sampler_settings(loaded, groups["generation"])
    tools = Instruments(model=loaded, classifier=clf, settings=settings, batch=batch,
                        cache=ImageCache(out, rank=run.dist.rank), dist=run.dist, threads=run.threads,
                        progress=progress)
    stage = StagePlan(entries=entries, templates=stage_templates, prompt_set=prompt_set_name, n=images_per_profession,
                      seed=groups["generation"].seed, target=chosen.target, tolerance=chosen.tolerance,
                      ci_width=ci_width, max_images=max_images, attributes=plan)
    return audit_stage(tools, stage, Path(out), others=others, write_report=write_report, clock=clock)


def _listed(professions, plan: AttributePlan):
    """A list file or phrases read now (their targets may name the plan's attributes); entries pass through."""
    if isinstance(professions, (str, os.PathLike)):
        return read_professions(professions, plan.attributes)
    if professions and all(isinstance(p, str) for p in professions):
        return parse_professions("\n".join(professions), "professions=[…]", plan.attributes)
    return professions


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
