"""Shipping an edit and judging it: write the edit file, audit the held-out test prompts with the file loaded into
the weights (as a user gets it), measure the side effects on unrelated prompts the same way, save the edited
pipeline on request. Both fixes (gender and attributes) end here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from debias import __version__
from debias.core.setup import LoadedModel
from debias.editing.apply import revert_edit
from debias.editing.files import load_edit, save_edit, save_pipeline
from debias.editing.solver import conditioning_drift
from debias.fixing.options import FixOptions
from debias.fixing.record import file_sha256
from debias.generation.cache import edit_id
from debias.report.card import note_saved_pipeline, write_model_card
from debias.results.records import AuditResult


def ship_and_judge(run, opts: FixOptions, M: Optional[torch.Tensor], metadata: Optional[dict],
                   why_nothing: str) -> tuple[AuditResult, dict]:
    """Write the edit file, then audit the test prompts at the same seeds with that file loaded into the weights
    (as a user gets it) and measure the side effects the same way; returns ``(after audit, side effects)``."""
    edit_file, edit_info = run.out / "edit.safetensors", None
    if M is not None:
        # same edit, same bytes: reruns keep the hash
        save_edit(edit_file, run.pipe, M, metadata=metadata, spec=run.model.spec, revision=run.model.revision)
        edit_info = {"path": "../edit.safetensors", "sha256": file_sha256(edit_file), "matrix_sha256": edit_id(M),
                     "applied_as": "weights loaded from the edit file"}
    else:
        run.say(f"fix: nothing to edit: {why_nothing}. No edit file is written and the model is unchanged.")
        edit_file.unlink(missing_ok=True)  # an earlier run's edit would no longer describe this run
    items = side_items(run.probe_prompts, opts.search.side_seeds, opts.seed) if M is not None else []
    plain = run.measure(items, "side_effects", "side effects: unedited")
    run.say(f"fix: auditing after the edit ({opts.test_images} images each, same seeds)")
    with shipped(run.model, edit_file if M is not None else None):
        after = run.audit("after", opts.test_images, "test", opts.seed, edit_info=edit_info)
        edited = run.measure(items, "side_effects", "side effects: edited")
        if opts.save_pipeline is not None and M is not None:
            save_fixed_pipeline(run.pipe, opts.save_pipeline, run.model.info(), metadata,
                                audit_defaults(run, opts, after))
            run.say(f"wrote edited pipeline {opts.save_pipeline}")
    if opts.save_pipeline is not None and M is None:
        run.say(f"fix: no pipeline written to {opts.save_pipeline}: nothing was edited, so the base model is the "
                "fixed one")
    note_saved_pipeline(run.out, opts.save_pipeline if M is not None else None)  # its card comes with the report
    side = side_effects(run, run.probe_prompts, opts.search.side_seeds, plain, edited)
    if M is not None and run.probe is not None:
        side["conditioning_drift"] = conditioning_drift(M, run.probe)
    side["max_drift"] = opts.max_drift
    return after, side


def side_items(prompts: Sequence[str], n_seeds: int, seed: int) -> list[tuple[str, int]]:
    return [(p, seed + i) for p in prompts for i in range(n_seeds)]


def side_effects(ctx, prompts: Sequence[str], n_seeds: int, plain: list, edited: list) -> dict:
    """Mean absolute pixel change (0–1) of unrelated prompts at fixed seeds, edit vs no edit."""
    block: dict[str, Any] = {"metric": "mean_abs_pixel_change", "mean_abs_pixel_change": None, "seeds": n_seeds,
                             "prompts": []}
    if not plain:
        return block
    a_u8 = ctx.cache.read_images([r.key for r in plain])
    b_u8 = ctx.cache.read_images([r.key for r in edited])
    diff = np.abs(a_u8.astype(np.float64) - b_u8.astype(np.float64)).mean(axis=(1, 2, 3)) / 255.0
    scoring = getattr(ctx.clf, "encode_text", None) is not None
    rows = []
    for j, prompt in enumerate(prompts):
        part = slice(j * n_seeds, (j + 1) * n_seeds)
        samples = [{"seed": plain[k].seed, "before": plain[k].image, "after": edited[k].image}
                   for k in range(part.start, min(part.start + 4, part.stop))]
        score_before = float(ctx.clf.clip_score(a_u8[part], prompt).mean()) if scoring else None
        score_after = float(ctx.clf.clip_score(b_u8[part], prompt).mean()) if scoring else None
        rows.append({"prompt": prompt, "mean_abs_pixel_change": float(diff[part].mean()),
                     "clip_score_before": score_before, "clip_score_after": score_after, "samples": samples})
    block["mean_abs_pixel_change"] = float(diff.mean())
    if scoring:
        block["clip_score_before"] = float(np.mean([r["clip_score_before"] for r in rows]))
        block["clip_score_after"] = float(np.mean([r["clip_score_after"] for r in rows]))
        block["clip_score_note"] = (f"100 · cosine(image, prompt) under {ctx.clf.model}, averaged over seeds; the "
                                    f"same seeds with and without the edit")
    block["prompts"] = rows
    block["note"] = ("pixel values on a 0–1 scale, averaged over pixels, channels, seeds and prompts; the same seeds "
                     "with and without the edit (as shipped: the edit file's weights)")
    return block


@contextlib.contextmanager
def shipped(model: LoadedModel, edit_file: Optional[Path]):
    """The pipeline with ``edit_file`` loaded into its weights, as a user of the file gets it; restored on exit.

    The rounds try edits by transforming the conditioning, which is exact in float32; in float16 or bfloat16
    weights the small change W·M − W is partly rounded away, so what is judged and saved must be the baked edit.
    """
    if edit_file is None:
        yield model.pipe
        return
    load_edit(model.pipe, edit_file, spec=model.spec, revision=model.revision)
    try:
        yield model.pipe
    finally:
        revert_edit(model.pipe)


def save_fixed_pipeline(pipe, folder, base_model: dict, metadata: dict, defaults: dict) -> None:
    """The edited model (its weights as loaded now) as a diffusers folder that records how it was made, and the
    settings its after audit used (``audit_defaults``), which an audit of the folder takes as its defaults."""
    save_pipeline(pipe, folder, card=write_model_card,
                  metadata={"kind": "edited_pipeline", "debias_version": __version__, "base_model": base_model,
                            "profile": base_model.get("profile"), "audit_defaults": defaults, **metadata})


def audit_defaults(run, opts: FixOptions, after: AuditResult) -> dict:
    """What an audit of the saved model needs to judge it as the after audit did: sampler, size, test prompts,
    classifier (a spec; a classifier passed as an object cannot be recorded and must be passed again)."""
    settings = run.settings
    return {"scheduler": settings.scheduler, "steps": settings.steps, "guidance": settings.guidance,
            "height": settings.height, "width": settings.width, "templates": list(after.templates),
            "classifier": opts.classification.primary if isinstance(opts.classification.primary, str) else None,
            "min_confidence": opts.classification.min_confidence}
