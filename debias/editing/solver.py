"""The TIME solver, pure math: the edit matrix M for one or many edits, and the scale of λ.

No pipeline here: rows in, a d×d float64 matrix out (see :mod:`debias.editing` for why one M serves every layer).
"""

from __future__ import annotations

import math
from typing import Callable, Optional
from typing import Iterable, Sequence

import numpy as np
import torch

from debias.core.errors import EditError


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


def check_lambda(lam: float, what: str = "lam") -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise EditError(f"{what} must be a positive number, got {lam!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise EditError(f"{what} must be a positive finite number (it weighs how close W′ stays to W), got {lam!r}.")
    return value


def _row_weights(weights: torch.Tensor | Sequence[float] | None, C: torch.Tensor) -> torch.Tensor:
    """Per-row weights as float64 on the rows' device (all ones when none are given), checked."""
    if weights is None:
        return torch.ones(C.shape[0], dtype=torch.float64, device=C.device)
    w = torch.as_tensor(weights, dtype=torch.float64).to(C.device).reshape(-1)
    if w.shape[0] != C.shape[0]:
        raise EditError(f"weights has {w.shape[0]} entries but there are {C.shape[0]} source rows.")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise EditError("weights must be finite and non-negative (they are per-edit strengths).")
    return w


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
    lam = check_lambda(lam)
    C_star = C_star.to(C.device)

    w = _row_weights(weights, C)
    beta = float(preserve_weight)
    if not math.isfinite(beta) or beta < 0:
        raise EditError(f"preserve_weight must be finite and non-negative, got {preserve_weight!r}.")

    eye = torch.eye(d, dtype=torch.float64, device=C.device)
    Cw = C * w[:, None]
    # Rows are token embeddings: Σ w_i c_i c_iᵀ = Cᵀ diag(w) C and Σ w_i c*_i c_iᵀ = C*ᵀ diag(w) C.
    denominator = lam * eye + C.T @ Cw
    gram = None
    if preserve is not None:
        P = _check_rows("preserve", preserve, d).to(C.device)
        if P.shape[0] and beta > 0:
            gram = beta * (P.T @ P)
            denominator = denominator + gram
    if C.shape[0] < d:
        # N − D = Σ w_i (c*_i − c_i) c_iᵀ (λI and the preserve terms cancel), so
        # M = N D⁻¹ = I + (C* − C)ᵀ diag(w) C D⁻¹: a solve with n right-hand sides instead of d, and
        # the edit M − I is computed directly rather than as a difference of two near-equal terms.
        V = torch.linalg.solve(denominator, C.T)  # D⁻¹ Cᵀ (D is symmetric positive definite for λ > 0)
        M = eye + ((C_star - C) * w[:, None]).T @ V.T
    else:
        numerator = lam * eye + C_star.T @ Cw + (gram if gram is not None else 0.0)
        M = torch.linalg.solve(denominator, numerator.T).T  # M = N D⁻¹  ⇔  D Mᵀ = Nᵀ
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
        alpha = 1.0 / check_lambda(lam, what=f"lam of edit #{index}")
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


def conditioning_drift(M: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean relative change ‖(M − I)c‖ / ‖c‖ of the token rows ``c`` of unrelated prompts under the edit ``M``."""
    M = M.to(rows.dtype)
    return float(((rows @ M.T - rows).norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12)).mean())


def first_at_most(f: Callable[[float], float], lo: float, hi: float, level: float) -> Optional[float]:
    """The smallest x in [lo, hi] with f(x) <= level, for f falling as x grows (None: not even at hi).

    Both uses are functions of log λ that fall as the edit weakens (drift of unrelated prompts, an edit's reach),
    so this finds the strongest edit that stays within a limit.
    """
    if f(lo) <= level:
        return lo
    if f(hi) > level:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if f(mid) <= level else (mid, hi)
    return hi


def joint_from_pins(pins: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
                    kept: Sequence[tuple[Optional[torch.Tensor], float]] = ()) -> torch.Tensor:
    """M holding each pin's rows C at their targets T (``(C, T, λ)`` triples) and the ``kept`` rows in place.

    A weight β on kept rows P counts against the median pin weight 1/λ (weight 1 on √β·P), so anchors and
    preserve rows mean the same in the joint edit as in a single one. The pin strength trades two errors. A
    strong pin reproduces each single edit exactly on the rows it pins but extrapolates to other contexts
    through a near-interpolation over every profession's rows; a weak pin under-delivers and leaves more to
    the joint rounds. ``benchmarks/joint_pin.py`` measures the extrapolation without the test prompts: pin
    three of the four edit contexts (bare prompt and augmentations), calibrate each profession on the pinned
    rows as a joint round would, and compare the joint edit with the single edits on the fourth. On the built-in
    model the error is smallest at λ_rel 0.3 in each of four runs' edits (0.044-0.056 of the single edits' move,
    against 0.057-0.077 at 0.03 and 0.052-0.092 at 1). In images (1,024 held-out test images per profession) the
    gap between each profession's share on the tuning prompts and on the test prompts fell from 0.052 to 0.034.
    """
    unit = float(np.median([1.0 / lam for _, _, lam in pins]))
    blocks = [rows * math.sqrt(strength * unit) for rows, strength in kept if rows is not None and strength > 0]
    if not blocks:
        return joint_edit_matrix(pins)
    return joint_edit_matrix(pins, preserve=torch.cat(blocks), preserve_weight=1.0)
