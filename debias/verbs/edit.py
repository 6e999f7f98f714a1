"""The edit verb: a TIME edit from (source, destination) prompt pairs at one strength, written as an edit file."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from debias import __version__
from debias.core.errors import InputError
from debias.core.models import find_cross_attention
from debias.core.options import RuntimeOptions, gather
from debias.core.profiles import DEFAULT_MODEL
from debias.core.setup import start
from debias.editing.apply import bake_edit
from debias.editing.files import save_edit, save_pipeline as write_pipeline
from debias.editing.tokens import DEFAULT_AUGMENTATIONS, edit_from_prompts
from debias.report.card import write_model_card


@dataclass
class EditResult:
    """What :func:`edit` made: the matrix, where it was written, and how (the edit file's metadata)."""

    path: Path
    matrix: torch.Tensor
    metadata: dict[str, Any]
    layers: int
    model: str | None
    pipeline: Path | None = None
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def print_summary(self, file=None) -> None:
        out = file or sys.stdout
        meta = self.metadata
        print(f"edit: {len(self.pairs)} pair(s), {meta['rows']} token rows, lambda={meta['lambda']:.6g} "
              f"(relative {meta['lambda_relative']:.6g}), {self.layers} text-reading layers of {self.model}", file=out)
        print(f"wrote {self.path}", file=out)
        if self.pipeline is not None:
            print(f"wrote edited pipeline {self.pipeline}", file=out)


def edit(
    model: Any = DEFAULT_MODEL,
    pairs: Sequence[tuple[str, str]] = (),
    *,
    lam: float | None = None,
    lam_relative: float | None = None,
    augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
    out: str | os.PathLike = "edit.safetensors",
    save_pipeline: str | os.PathLike | None = None,
    runtime: RuntimeOptions | None = None,
    progress: bool = False,
    **options: Any,
) -> EditResult:
    """Edit ``model`` so each source prompt reads like its destination, with one λ; write the edit file ``out``.

    Give exactly one of ``lam`` (the solver's units; TIME uses 0.1 on SD 1.4) and ``lam_relative`` (λ over the
    mean squared norm of the source rows, comparable across models). ``save_pipeline`` also writes the edited
    model as a diffusers folder. The matrix is solved in float64; the file's weights are in the model's dtype.
    ``runtime`` (:class:`debias.core.options.RuntimeOptions`: device, dtype, threads, allow_pickle; or each as a
    keyword) says where the model runs.
    """
    runtime = gather({"runtime": runtime}, options, {"runtime": RuntimeOptions}, "edit")["runtime"]
    _check_edit_options(pairs, lam, lam_relative)
    loaded = start(model, runtime).model
    pipe = loaded.pipe
    M, info = edit_from_prompts(pipe, list(pairs), lam=lam, lam_relative=lam_relative, augmentations=augmentations,
                                progress=progress)
    edits = [{"source": s, "destination": d, "lambda": info["lambda"], "lambda_relative": info["lambda_relative"]}
             for s, d in pairs]
    metadata = {"edits": edits, **{k: info[k] for k in ("augmentations", "lambda", "lambda_relative",
                                                          "lambda_scale", "rows")}}
    path = save_edit(out, pipe, M, metadata=metadata, spec=loaded.spec, revision=loaded.revision)
    result = EditResult(path=Path(path), matrix=M, metadata=metadata, layers=len(find_cross_attention(pipe)),
                        model=loaded.spec, pairs=[(s, d) for s, d in pairs])
    if save_pipeline is not None:
        bake_edit(pipe, M)
        result.pipeline = write_pipeline(pipe, save_pipeline, card=write_model_card, metadata={
            "kind": "edited_pipeline", "debias_version": __version__, "base_model": loaded.info(),
            "profile": loaded.profile.name, **metadata})
    return result


def _check_edit_options(pairs, lam, lam_relative) -> None:
    if not pairs:
        raise InputError("no (source, destination) pairs to edit; give e.g. [('a nurse', 'a male nurse')].")
    if (lam is None) == (lam_relative is None):
        raise InputError("give exactly one of --lam (absolute λ) and --lam-relative (λ / mean squared row norm).")
    for option, value in (("--lam", lam), ("--lam-relative", lam_relative)):
        if value is not None and not value > 0:
            raise InputError(f"{option} must be positive (larger keeps the model closer to the original), got {value}.")
