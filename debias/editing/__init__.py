"""The TIME edit: one d×d matrix ``M`` that moves every linear map reading the text conditioning at once.

TIME (Orgad et al., 2023) edits each cross-attention projection ``W`` (``to_k`` and ``to_v``, the
layers that read the text conditioning; for MMDiT models such as SD3 and FLUX, the one text input
projection ``context_embedder``: :mod:`~debias.core.layers`) so that the source prompt's tokens ``c_i`` are mapped where
the destination prompt's aligned tokens ``c*_i`` used to go, while staying close to ``W``::

    minimise  Σ_i w_i ‖W′ c_i − W c*_i‖²  +  λ ‖W′ − W‖²_F

Its closed form is ``W′ = W · M`` with::

    M = (λI + Σ_i w_i c*_i c_iᵀ)(λI + Σ_i w_i c_i c_iᵀ)⁻¹

``M`` does not depend on the layer, so one float64 solve of a d×d system serves all layers (the
per-layer float32 inverse of the reference code is both slower and less accurate; see
``benchmarks/solver.py``). Because every edited layer reads the same conditioning ``c``, editing all
of them by ``M`` is the same as feeding ``c @ Mᵀ`` instead of ``c``: a fix's rounds can try an edit by
transforming embeddings (:func:`conditioning_transform`) and the final model bakes ``W @ M`` once
(:func:`bake_edit`).

The package keeps the math pure and apart from the pipeline plumbing:

* :mod:`~debias.editing.solver` — the edit matrix for one or many edits, the joint edit, λ's scale (pure);
* :mod:`~debias.core.layers` — finding the layers an edit changes, by what they are, and the model family;
* :mod:`~debias.editing.tokens` — token alignment (pure) and encoding prompts into edit rows;
* :mod:`~debias.editing.apply` — baking, reverting, transforming the conditioning, the shipped edit's precision;
* :mod:`~debias.editing.files` — edit files and saved pipelines;
* the verb :func:`debias.edit` (``debias edit``) is :mod:`debias.verbs.edit`; this package never imports a verb.
"""

from debias.editing.apply import (
    bake_edit, baked_weight, check_matrix, conditioning_transform, edit_precision, edited_weights,
    is_edited, revert_edit, set_kv_weights, shipped_edit_error,
)
from debias.editing.files import MATRIX_KEY, LoadedEdit, load_edit, read_edit, save_edit, save_pipeline
from debias.editing.solver import check_lambda, edit_matrix, joint_edit_matrix, lambda_scale
from debias.editing.tokens import (
    DEFAULT_AUGMENTATIONS, align_tokens, edit_from_prompts, edit_rows, encode_conditioning, pipeline_text,
    prompt_tokens, token_segments,
)

__all__ = [
    "DEFAULT_AUGMENTATIONS", "MATRIX_KEY", "LoadedEdit", "align_tokens", "bake_edit",
    "baked_weight", "check_lambda", "check_matrix", "conditioning_transform", "edit_from_prompts",
    "edit_matrix", "edit_precision", "edit_rows", "edited_weights", "encode_conditioning", "is_edited",
    "joint_edit_matrix", "lambda_scale", "load_edit", "pipeline_text", "prompt_tokens", "read_edit", "revert_edit",
    "save_edit", "save_pipeline", "set_kv_weights", "shipped_edit_error", "token_segments",
]
