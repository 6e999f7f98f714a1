"""The TIME edit: one d×d matrix ``M`` that moves every cross-attention K/V projection at once.

TIME (Orgad et al., 2023) edits each cross-attention projection ``W`` (``to_k`` and ``to_v``, the
layers that read the text conditioning) so that the source prompt's tokens ``c_i`` are mapped where
the destination prompt's aligned tokens ``c*_i`` used to go, while staying close to ``W``::

    minimise  Σ_i w_i ‖W′ c_i − W c*_i‖²  +  λ ‖W′ − W‖²_F

Its closed form is ``W′ = W · M`` with::

    M = (λI + Σ_i w_i c*_i c_iᵀ)(λI + Σ_i w_i c_i c_iᵀ)⁻¹

``M`` does not depend on the layer, so one float64 solve of a d×d system serves all layers (the
per-layer float32 inverse of the reference code is both slower and less accurate; see
``benchmarks/solver.py``). Because every edited layer reads the same conditioning ``c``, editing all
of them by ``M`` is the same as feeding ``c @ Mᵀ`` instead of ``c``: a λ search can try an edit by
transforming embeddings (:func:`conditioning_transform`) and the final model bakes ``W @ M`` once
(:func:`bake_edit`).

This module keeps the math pure (:func:`edit_matrix`, :func:`joint_edit_matrix`,
:func:`align_tokens`, :func:`lambda_scale`) and separate from the pipeline plumbing below it
(encoding prompts, baking, reverting, transforming, saving and loading edit files).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from debias.errors import EditError

DEFAULT_AUGMENTATIONS: tuple[str, ...] = ("A photo of {}", "An image of {}", "A picture of {}")
"""Templates the bare source/destination prompts are also encoded in (TIME's augmentation)."""

MATRIX_KEY = "debias.edit_matrix"
"""Key of the compact d×d matrix inside an edit file (ignored by ``load_state_dict(strict=False)``)."""

_ORIGINALS_ATTR = "_debias_original_kv"


# --------------------------------------------------------------------------------------------------
# The solver (pure math)
# --------------------------------------------------------------------------------------------------


def _check_rows(name: str, rows: torch.Tensor, d: int | None = None) -> torch.Tensor:
    if not isinstance(rows, torch.Tensor):
        raise EditError(f"{name} must be a torch.Tensor of shape [n, d], got {type(rows).__name__}.")
    if rows.ndim != 2:
        raise EditError(f"{name} must have shape [n, d] (one token embedding per row), got shape {tuple(rows.shape)}.")
    if d is not None and rows.shape[1] != d:
        raise EditError(f"{name} has width {rows.shape[1]} but the source rows have width {d}; "
                        "all rows must come from the same conditioning space.")
    if not torch.isfinite(rows).all():
        raise EditError(f"{name} contains NaN or Inf values; check the text encoder output (e.g. float16 overflow).")
    return rows.detach().to(dtype=torch.float64)


def _check_lambda(lam: float, what: str = "lam") -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise EditError(f"{what} must be a positive number, got {lam!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise EditError(f"{what} must be a positive finite number (it weighs how close W′ stays to W), got {lam!r}.")
    return value


def edit_matrix(
    sources: torch.Tensor,
    destinations: torch.Tensor,
    lam: float,
    *,
    preserve: torch.Tensor | None = None,
    weights: torch.Tensor | Sequence[float] | None = None,
    preserve_weight: float = 1.0,
) -> torch.Tensor:
    """Solve the TIME edit for all cross-attention K/V layers at once; returns ``M`` with ``W′ = W @ M``.

    Args:
        sources: ``[n, d]`` token embeddings of the source prompts (``c_i``, what the K/V projections
            receive for e.g. "a photo of a nurse"), one row per aligned token.
        destinations: ``[n, d]`` embeddings of the aligned destination tokens (``c*_i``, e.g. from
            "a photo of a male nurse"); row ``i`` is the target of source row ``i``.
        lam: λ > 0, how strongly the edited weights are held to the originals. Large λ → small edit
            (``M → I``); small λ → the source is mapped fully onto the destination. Its scale grows with the
            squared norm of the rows; :func:`lambda_scale` gives a model-independent unit.
        preserve: optional ``[m, d]`` rows to keep where they are (UCE-style preservation, ``c* = c``).
        weights: optional ``[n]`` non-negative per-row weights ``w_i`` (per-edit strengths). A weight
            ``w`` with λ gives the same ``M`` as weight 1 with ``λ / w`` when there are no preserve rows.
        preserve_weight: β ≥ 0, the weight of every preserve row.

    Returns:
        ``M`` of shape ``[d, d]`` in the dtype (and device) of ``sources``::

            M = (λI + Σ w_i c*_i c_iᵀ + β Σ_j p_j p_jᵀ)(λI + Σ w_i c_i c_iᵀ + β Σ_j p_j p_jᵀ)⁻¹

        Apply it as ``W_edited = W @ M`` to every ``to_k`` / ``to_v`` weight, or equivalently feed
        ``c @ M.T`` as the conditioning.

    Why this form: it is the exact minimiser of TIME's ridge objective, shared by every layer, so
    it is computed once in float64 with ``torch.linalg.solve`` (never an explicit inverse) and the
    result is both faster and more accurate than per-layer float32 inverses.

    Raises:
        EditError: shapes that do not match, NaN/Inf rows, λ ≤ 0, negative weights.
    """
    out_dtype = sources.dtype if isinstance(sources, torch.Tensor) and sources.is_floating_point() else torch.float32
    C = _check_rows("sources", sources)
    d = C.shape[1]
    C_star = _check_rows("destinations", destinations, d)
    if C_star.shape[0] != C.shape[0]:
        raise EditError(f"sources has {C.shape[0]} rows but destinations has {C_star.shape[0]}; "
                        "each source token needs exactly one aligned destination token.")
    lam = _check_lambda(lam)
    C_star = C_star.to(C.device)

    if weights is None:
        w = torch.ones(C.shape[0], dtype=torch.float64, device=C.device)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).to(C.device).reshape(-1)
        if w.shape[0] != C.shape[0]:
            raise EditError(f"weights has {w.shape[0]} entries but there are {C.shape[0]} source rows.")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise EditError("weights must be finite and non-negative (they are per-edit strengths).")

    beta = float(preserve_weight)
    if not math.isfinite(beta) or beta < 0:
        raise EditError(f"preserve_weight must be finite and non-negative, got {preserve_weight!r}.")

    eye = torch.eye(d, dtype=torch.float64, device=C.device)
    Cw = C * w[:, None]
    # Σ w_i c*_i c_iᵀ = C*ᵀ diag(w) C  and  Σ w_i c_i c_iᵀ = Cᵀ diag(w) C   (rows are token embeddings)
    numerator = lam * eye + C_star.T @ Cw
    denominator = lam * eye + C.T @ Cw
    if preserve is not None:
        P = _check_rows("preserve", preserve, d).to(C.device)
        if P.shape[0] and beta > 0:
            gram = beta * (P.T @ P)
            numerator = numerator + gram
            denominator = denominator + gram
    # M = N D⁻¹  ⇔  D Mᵀ = Nᵀ  (D is symmetric positive definite for λ > 0).
    M = torch.linalg.solve(denominator, numerator.T).T
    return M.to(out_dtype)


def joint_edit_matrix(
    edits: Iterable[tuple[torch.Tensor, torch.Tensor, float]],
    *,
    preserve: torch.Tensor | None = None,
    preserve_weight: float = 1.0,
) -> torch.Tensor:
    """Many edits at once, each with its own λ_p (e.g. one per profession); returns ``M``.

    ``edits`` is an iterable of ``(sources, destinations, lam)`` triples (rows as in
    :func:`edit_matrix`). With strengths ``α_p = 1/λ_p`` and preserve rows ``p_j``::

        M = (I + Σ_p α_p C*_pᵀC_p + β Σ_j p_j p_jᵀ)(I + Σ_p α_p C_pᵀC_p + β Σ_j p_j p_jᵀ)⁻¹

    For a single edit without preserve rows this equals ``edit_matrix(C, C*, λ)``. Note that β here
    is measured against the identity, not against λ.
    """
    sources, destinations, weights = [], [], []
    for index, edit in enumerate(edits):
        try:
            C, C_star, lam = edit
        except (TypeError, ValueError):
            raise EditError(f"edit #{index} must be a (sources, destinations, lam) triple.") from None
        alpha = 1.0 / _check_lambda(lam, what=f"lam of edit #{index}")
        C = _check_rows(f"sources of edit #{index}", C)
        C_star = _check_rows(f"destinations of edit #{index}", C_star, C.shape[1])
        if sources and C.shape[1] != sources[0].shape[1]:
            raise EditError(f"edit #{index} has width {C.shape[1]}, edit #0 has width {sources[0].shape[1]}.")
        if C.shape[0] != C_star.shape[0]:
            raise EditError(f"edit #{index}: {C.shape[0]} source rows but {C_star.shape[0]} destination rows.")
        sources.append(C)
        destinations.append(C_star)
        weights.append(torch.full((C.shape[0],), alpha, dtype=torch.float64))
    if not sources:
        raise EditError("joint_edit_matrix needs at least one edit.")
    return edit_matrix(
        torch.cat(sources),
        torch.cat(destinations),
        1.0,
        preserve=preserve,
        weights=torch.cat(weights),
        preserve_weight=preserve_weight,
    )


def lambda_scale(sources: torch.Tensor) -> float:
    """Mean squared norm of the source rows: the natural unit of λ (``lambda_relative = lam / scale``).

    λ competes with Σ c cᵀ, whose size grows with the squared norm of the embeddings (which differs
    by orders of magnitude between text encoders), so λ divided by this is comparable across models.
    """
    C = _check_rows("sources", sources)
    if C.shape[0] == 0:
        raise EditError("lambda_scale needs at least one source row.")
    return float((C * C).sum(dim=1).mean())


# --------------------------------------------------------------------------------------------------
# Token alignment (pure)
# --------------------------------------------------------------------------------------------------

_END_TOKENS = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")
_ARTICLES = {"a", "an"}


def _normalise(token: str) -> str:
    """Compare tokens without BPE/SentencePiece word markers or case; treat "a" and "an" alike."""
    t = token.lower().replace("</w>", "").replace("▁", "").replace("Ġ", "").strip()
    return "a" if t in _ARTICLES else t


def _end_index(tokens: Sequence[str], end_token: str | None) -> int:
    candidates = (end_token,) if end_token else _END_TOKENS
    for i, tok in enumerate(tokens):
        if tok in candidates:
            return i
    return len(tokens)


def align_tokens(src_tokens: Sequence[str], dst_tokens: Sequence[str], *, end_token: str | None = None) -> list[int]:
    """Map each source token position to its destination position; returns ``mapping`` with
    ``mapping[i]`` = destination index of source token ``i``.

    The destination is the source with attribute words inserted ("a nurse" → "a male nurse"); the
    inserted tokens are skipped, an article may change ("an attendant" → "a female attendant"), and
    words split into several tokens match piece by piece. From the end token on, positions map in
    order (source end → destination end, padding after it likewise); source positions that would
    fall past the destination's length are dropped, so ``len(mapping) <= len(src_tokens)`` and the
    mapped source positions are always ``0 .. len(mapping) - 1``.

    Raises:
        EditError: when the destination does not contain the source's words in order; the message
            shows both token lists.
    """
    src_end = _end_index(src_tokens, end_token)
    dst_end = _end_index(dst_tokens, end_token)
    if (src_end == len(src_tokens)) != (dst_end == len(dst_tokens)):
        raise EditError(f"only one of the prompts has an end token.\n  source tokens: {list(src_tokens)}\n"
                        f"  destination tokens: {list(dst_tokens)}")
    mapping: list[int] = []
    j = 0
    for i in range(src_end):
        want = _normalise(src_tokens[i])
        while j < dst_end and _normalise(dst_tokens[j]) != want:
            j += 1
        if j == dst_end:
            raise EditError(
                f"the destination prompt does not contain the source's words in order (missing {src_tokens[i]!r}); "
                "write the destination as the source with words added, e.g. 'a nurse' → 'a male nurse'.\n"
                f"  source tokens: {list(src_tokens[:src_end + 1])}\n"
                f"  destination tokens: {list(dst_tokens[:dst_end + 1])}")
        mapping.append(j)
        j += 1
    for k in range(len(src_tokens) - src_end):
        if dst_end + k >= len(dst_tokens):
            break
        mapping.append(dst_end + k)
    return mapping
