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
import inspect
import json
import math
import os
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


# --------------------------------------------------------------------------------------------------
# Prompts → edit rows (pipeline plumbing)
# --------------------------------------------------------------------------------------------------


class _Captured(Exception):
    """Raised from a hook to stop the pipeline once the denoiser has run once."""


def _capture_size(pipe) -> int:
    """A small image side that every supported denoiser accepts (an 8×8 latent)."""
    return int(getattr(pipe, "vae_scale_factor", 8)) * 8


def encode_conditioning(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """What the cross-attention K/V projections actually receive for each prompt: ``[n, L, d]``.

    The pipeline itself encodes the prompts (no guidance, so no unconditional rows) and runs its
    denoiser once on a tiny latent while forward hooks record the input of every edited ``to_k`` /
    ``to_v``; the pipeline is stopped right after that first denoiser call. This captures the
    conditioning after any transformation the denoiser applies first (PixArt's caption projection,
    SDXL's concatenated encoders), and checks that every edited layer sees the same tensor, which is
    what makes one matrix ``M`` (and the conditioning shortcut) valid.

    Raises:
        EditError: when layers receive different conditioning (e.g. per-layer ``norm_cross``).
    """
    from debias.generate import pipeline_options
    from debias.models import denoiser, find_cross_attention

    prompts = list(prompts)
    if not prompts:
        raise EditError("encode_conditioning needs at least one prompt.")
    if getattr(pipe, "_debias_transform_active", False):
        raise EditError("encode_conditioning was called inside conditioning_transform(); encode the prompts outside it.")
    projections = find_cross_attention(pipe)
    seen: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, args):
            if name not in seen:
                seen[name] = args[0].detach()
        return hook

    def stop(_module, _args, _output):
        raise _Captured

    handles = [p.module.register_forward_pre_hook(record(p.name)) for p in projections]
    handles.append(denoiser(pipe).register_forward_hook(stop))
    # the options generation calls the pipeline with: the same text is encoded, the tiny size is kept
    call: dict[str, Any] = dict(prompt=prompts, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
                                height=_capture_size(pipe), width=_capture_size(pipe), **pipeline_options(pipe))
    try:
        with torch.no_grad():
            pipe(**call)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [p.name for p in projections if p.name not in seen]
    if missing:
        raise EditError(f"{len(missing)} cross-attention layers did not run during a denoiser call "
                        f"(e.g. {missing[0]}); this model is not supported by the TIME edit.")
    first = seen[projections[0].name]
    for p in projections[1:]:
        other = seen[p.name]
        if other.shape != first.shape or not torch.allclose(other, first, rtol=1e-5, atol=1e-6):
            raise EditError(
                f"cross-attention layers receive different conditioning ({projections[0].name} vs {p.name}), e.g. "
                "because of a per-layer norm_cross; one shared edit matrix does not apply to this model.")
    if first.shape[0] != len(prompts):
        raise EditError(f"expected conditioning for {len(prompts)} prompts, the denoiser saw a batch of {first.shape[0]}.")
    return first.to(torch.float32)


def pipeline_text(pipe, prompt: str) -> str:
    """The text the pipeline's tokenizer receives for ``prompt`` when generation calls it.

    PixArt rewrites prompts before tokenizing (with ``clean_caption=False``, the option generation
    passes: lower-cased and stripped); token alignment must read the tokens that were encoded, or an
    upper-case word the vocabulary splits differently would misplace every row after it.
    """
    from debias.generate import pipeline_options

    preprocess = getattr(pipe, "_text_preprocessing", None)
    if not callable(preprocess):
        return prompt
    clean = pipeline_options(pipe).get("clean_caption", False)
    return preprocess(prompt, clean_caption=clean)[0]


def prompt_tokens(pipe, prompt: str, length: int) -> list[str]:
    """The tokens of ``prompt`` as the pipeline's (first) tokenizer pads them to ``length`` positions."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(pipeline_text(pipe, prompt), padding="max_length", max_length=length, truncation=True).input_ids
    return tokenizer.convert_ids_to_tokens(ids)


def edit_rows(
    pipe,
    source: str,
    destination: str,
    augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned token rows ``(C, C_star)`` for one source → destination edit, each ``[n, d]``.

    The bare prompts and each augmentation (``template.format(prompt)``) are encoded; every source
    token (padding included) is paired with its aligned destination token (:func:`align_tokens`).
    """
    for template in augmentations:
        if "{}" not in template:
            raise EditError(f"augmentation template {template!r} has no '{{}}' where the prompt goes.")
    sources = [source] + [t.format(source) for t in augmentations]
    destinations = [destination] + [t.format(destination) for t in augmentations]
    embeddings = encode_conditioning(pipe, sources + destinations)
    length = embeddings.shape[1]
    end = getattr(pipe.tokenizer, "eos_token", None)
    rows, rows_star = [], []
    for k, (src, dst) in enumerate(zip(sources, destinations)):
        mapping = align_tokens(prompt_tokens(pipe, src, length), prompt_tokens(pipe, dst, length), end_token=end)
        rows.append(embeddings[k, : len(mapping)])
        rows_star.append(embeddings[len(sources) + k, mapping])
    return torch.cat(rows), torch.cat(rows_star)


def edit_from_prompts(
    pipe,
    pairs: Sequence[tuple[str, str]],
    *,
    lam: float | None = None,
    lam_relative: float | None = None,
    augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One edit matrix for all ``(source, destination)`` pairs with a common λ; returns ``(M, info)``.

    Give either ``lam`` (absolute) or ``lam_relative`` (in units of :func:`lambda_scale` of all
    source rows). ``info`` holds both λs, the scale, the row count and the pairs, for edit files.
    """
    if (lam is None) == (lam_relative is None):
        raise EditError("give exactly one of lam (absolute) and lam_relative.")
    if not pairs:
        raise EditError("no source/destination pairs to edit.")
    C_parts, S_parts = [], []
    iterator: Iterable[tuple[str, str]] = pairs
    if progress and len(pairs) > 1:
        from rich.progress import track

        iterator = track(pairs, description="encoding edit prompts", transient=True)
    for source, destination in iterator:
        C, S = edit_rows(pipe, source, destination, augmentations)
        C_parts.append(C)
        S_parts.append(S)
    C, C_star = torch.cat(C_parts), torch.cat(S_parts)
    scale = lambda_scale(C)
    if lam is None:
        lam = _check_lambda(lam_relative, "lam_relative") * scale
    M = edit_matrix(C.double(), C_star.double(), lam)
    info = {"lambda": float(lam), "lambda_relative": float(lam) / scale, "lambda_scale": scale, "rows": int(C.shape[0]),
            "pairs": [[s, d] for s, d in pairs], "augmentations": list(augmentations)}
    return M, info


# --------------------------------------------------------------------------------------------------
# Applying an edit: bake / revert / conditioning transform
# --------------------------------------------------------------------------------------------------


def _check_matrix(pipe, M: torch.Tensor) -> list:
    from debias.models import find_cross_attention

    projections = find_cross_attention(pipe)
    d = projections[0].in_features
    if not isinstance(M, torch.Tensor) or M.shape != (d, d):
        shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
        raise EditError(f"the edit matrix has shape {shape} but this model's cross-attention reads width {d}; "
                        "the edit was made for a different model.")
    if not torch.isfinite(M).all():
        raise EditError("the edit matrix contains NaN or Inf values.")
    return projections


def baked_weight(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``W @ M`` rounded once to ``W``'s dtype: the closest a weight stored in that dtype can be to the edit.

    The product is computed in float64 (on the CPU for devices without float64, such as Apple's MPS), so
    the only error left is the final rounding: float32 weights are then exact to the last bit, and half
    precision ones are as close as their dtype allows (for them a float32 product rounded almost always
    the same). ``benchmarks/precision.py`` measures what the rounding costs per dtype, and the time: 2.5 s
    instead of 1.3 s for SD 1.x's 32 K/V weights on one CPU thread, once per saved edit.
    """
    device = _float64_device(W.device)
    exact = W.detach().to(device, torch.float64) @ M.detach().to(device, torch.float64)
    return exact.to(W.device, W.dtype)


def edited_weights(pipe, M: torch.Tensor) -> dict[str, torch.Tensor]:
    """``W @ M`` for every K/V projection, from the original weights, in the weights' dtype (:func:`baked_weight`)."""
    from debias.models import original_weights

    _check_matrix(pipe, M)
    return {name: baked_weight(W, M) for name, W in original_weights(pipe).items()}


def bake_edit(pipe, M: torch.Tensor) -> None:
    """Write ``W @ M`` into every cross-attention ``to_k`` / ``to_v`` weight.

    ``W`` is always the original weight (baking twice does not compound); the originals are kept on
    the pipe so :func:`revert_edit` restores them bit for bit.
    """
    projections = _check_matrix(pipe, M)
    new = edited_weights(pipe, M)
    _set_weights(pipe, projections, new)
    pipe._debias_edit_matrix = M.detach().clone()


def _set_weights(pipe, projections, new: dict[str, torch.Tensor]) -> None:
    if getattr(pipe, _ORIGINALS_ATTR, None) is None:
        setattr(pipe, _ORIGINALS_ATTR, {p.name: p.module.weight.detach().clone() for p in projections})
    with torch.no_grad():
        for p in projections:
            p.module.weight.copy_(new[p.name])


def revert_edit(pipe) -> None:
    """Restore the original K/V weights saved by :func:`bake_edit` / :func:`load_edit` (bit-exact)."""
    from debias.models import find_cross_attention

    originals = getattr(pipe, _ORIGINALS_ATTR, None)
    if originals is None:
        return
    with torch.no_grad():
        for p in find_cross_attention(pipe):
            p.module.weight.copy_(originals[p.name])
    setattr(pipe, _ORIGINALS_ATTR, None)
    pipe._debias_edit_matrix = None


def is_edited(pipe) -> bool:
    """Whether an edit is baked into the pipe's weights."""
    return getattr(pipe, _ORIGINALS_ATTR, None) is not None


@contextlib.contextmanager
def conditioning_transform(pipe, M: torch.Tensor) -> Iterator[None]:
    """Generate as if the edit ``M`` were baked, without touching any weight.

    Inside the ``with`` block the conditioning the K/V projections read is replaced by ``c @ Mᵀ``
    (exactly what ``W @ M`` computes from ``c``). For UNets this is a forward pre-hook on the
    denoiser's ``encoder_hidden_states`` (which under guidance holds the unconditional rows too, so
    they are transformed as the baked model would); for PixArt it is applied after the caption
    projection. This is how a λ search tries many edits cheaply::

        with conditioning_transform(pipe, M):
            images = pipe(prompts, generator=generators).images
    """
    from debias.models import denoiser

    _check_matrix(pipe, M)
    if getattr(pipe, "_debias_transform_active", False):
        raise EditError("conditioning_transform() is already active on this pipeline; combine edits into one matrix.")
    net = denoiser(pipe)
    for name, module in net.named_modules():
        if getattr(module, "is_cross_attention", False) and getattr(module, "norm_cross", None) is not None:
            raise EditError(f"{name} normalises the conditioning before its K/V projections (norm_cross), so the "
                            "conditioning shortcut is not exact here; bake the edit with bake_edit() instead.")
    cache: dict[tuple, torch.Tensor] = {}

    def transform(c: torch.Tensor) -> torch.Tensor:
        key = (c.device, c.dtype)
        if key not in cache:
            cache[key] = _transform_operand(M, c)
        return _transform_rows(c, cache[key])

    projection = getattr(net, "caption_projection", None)
    if isinstance(projection, torch.nn.Module):
        handle = projection.register_forward_hook(lambda _m, _a, out: transform(out))
    else:
        position = list(inspect.signature(net.forward).parameters).index("encoder_hidden_states")

        def pre_hook(_module, args, kwargs):
            if kwargs.get("encoder_hidden_states") is not None:
                kwargs = {**kwargs, "encoder_hidden_states": transform(kwargs["encoder_hidden_states"])}
            elif len(args) > position and args[position] is not None:
                args = (*args[:position], transform(args[position]), *args[position + 1:])
            return args, kwargs

        handle = net.register_forward_pre_hook(pre_hook, with_kwargs=True)
    pipe._debias_transform_active = True
    try:
        yield
    finally:
        handle.remove()
        pipe._debias_transform_active = False


def _transform_operand(M: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``Mᵀ`` for multiplying rows like ``like``, in at least float32.

    ``M`` is the identity plus a small edit, so rounding ``M`` itself to float16 or bfloat16 (and every
    partial sum) adds error on top of the one rounding the transformed rows need anyway. Multiplying in
    float32 and rounding the product once cut the transform's error by 10-25% (``benchmarks/precision.py``:
    bfloat16, mini model, 0.60% → 0.42% of the edit's effect; float16, SD 1.x shapes, 0.99% → 0.77%).
    """
    return M.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32)).T.contiguous()


def _transform_rows(c: torch.Tensor, operand: torch.Tensor) -> torch.Tensor:
    """``c @ Mᵀ`` as :func:`conditioning_transform` feeds it to the K/V projections, in ``c``'s dtype."""
    return (c.to(operand.dtype) @ operand).to(c.dtype)


def _float64_device(device: torch.device) -> torch.device:
    """Where float64 arithmetic on a tensor of ``device`` can run: the device itself, or the CPU (MPS has none)."""
    return device if device.type != "mps" else torch.device("cpu")


def edit_precision(weights: dict[str, torch.Tensor], rows: torch.Tensor, M: torch.Tensor) -> dict[str, float]:
    """How exactly the baked edit and the conditioning transform reach the edit ``M`` in the weights' dtype.

    For every K/V weight ``W`` (in its own dtype) and conditioning rows ``c`` (``[n, d]``, rounded to that
    dtype as the layer receives them), the layer outputs are computed in float64 from what each path
    actually holds:

    * exact: ``c (W M)ᵀ``, and unedited ``c Wᵀ``; the edit's effect is their difference;
    * baked: ``c Bᵀ`` with ``B`` what :func:`bake_edit` and :func:`save_edit` write (:func:`baked_weight`);
    * transform: ``c′ Wᵀ`` with ``c′`` what :func:`conditioning_transform` feeds the layer.

    Each error is the Frobenius norm of an output difference over all layers, divided by that of the
    edit's effect: ``baked_vs_transform`` is how far the shipped edit is from what the λ search and the
    joint rounds measured; ``baked_vs_exact`` and ``transform_vs_exact`` split it into the two roundings.
    ``edit_size`` is the effect relative to the unedited outputs: each error is roughly the dtype's
    rounding (float16 ≈ 0.02%, bfloat16 ≈ 0.15% of the outputs) divided by it, so weak edits lose most.
    Outputs are compared in float64 so that the layer's own output rounding, which every model in that
    dtype has with or without an edit, is not counted.
    """
    sums = dict.fromkeys(("effect", "unedited", "baked_vs_transform", "baked_vs_exact", "transform_vs_exact"), 0.0)
    for W in weights.values():
        device = _float64_device(W.device)
        c = rows.detach().to(W.device, W.dtype)
        shifted = _transform_rows(c, _transform_operand(M, c))
        W64, M64 = W.detach().to(device, torch.float64), M.detach().to(device, torch.float64)
        c64, shifted64 = c.to(device, torch.float64), shifted.to(device, torch.float64)
        unedited, exact = c64 @ W64.T, c64 @ (W64 @ M64).T
        baked = c64 @ baked_weight(W, M).to(device, torch.float64).T
        transformed = shifted64 @ W64.T
        pairs = {"effect": (exact, unedited), "unedited": (unedited, 0.0), "baked_vs_transform": (baked, transformed),
                 "baked_vs_exact": (baked, exact), "transform_vs_exact": (transformed, exact)}
        for key, (a, b) in pairs.items():
            sums[key] += float((a - b).pow(2).sum())
    effect = math.sqrt(sums.pop("effect"))
    if effect == 0:
        raise EditError("the edit does not change these rows' K/V outputs, so its precision cannot be measured; "
                        "use prompts the edit acts on (e.g. its source prompts).")
    out = {key: math.sqrt(value) / effect for key, value in sums.items() if key != "unedited"}
    out["edit_size"] = effect / math.sqrt(sums["unedited"]) if sums["unedited"] > 0 else math.inf
    return out


def shipped_edit_error(pipe, M: torch.Tensor, prompts: Sequence[str]) -> float:
    """How far the shipped (baked) edit is from the edit that was measured, on ``prompts``, in ``pipe``'s dtype.

    A λ search and a fix's joint rounds choose an edit through :func:`conditioning_transform`; the edit
    file and ``--save-pipeline`` ship it baked into the weights (:func:`bake_edit`). In float32 they agree
    to about 1e-6 of the edit, but in half precision each rounds: the baked weight ``W M`` (which differs
    from ``W`` by a little) and the transformed conditioning. This returns
    ``‖baked − transform‖ / ‖exact − unedited‖`` of the K/V outputs for the prompts' conditioning rows
    (:func:`edit_precision`): e.g. 0.01 means the shipped model differs from the one the edit was tuned
    on by 1% of what the edit does.
    """
    from debias.models import original_weights

    _check_matrix(pipe, M)
    conditioning = encode_conditioning(pipe, prompts)
    rows = conditioning.reshape(-1, conditioning.shape[-1])
    return edit_precision(original_weights(pipe), rows, M)["baked_vs_transform"]


# --------------------------------------------------------------------------------------------------
# Edit files
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedEdit:
    """An edit file read back: the compact matrix, its metadata (JSON fields decoded) and its path."""

    matrix: torch.Tensor
    metadata: dict[str, Any]
    path: Path
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def _decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def save_edit(path: str | Path, pipe, M: torch.Tensor, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write an edit file (safetensors), atomically.

    Keys are the full module names of the edited weights relative to the denoiser
    (``…attn2.to_k.weight``), so ``pipe.unet.load_state_dict(sd, strict=False)`` applies it as
    UCE's files do; the compact ``M`` is stored under ``"debias.edit_matrix"``. The safetensors
    metadata (strings; structures JSON-encoded) records the method, the base model spec, revision
    and fingerprint of the original weights, their dtype-independent description (``base_weights``,
    :func:`debias.models.weights_summary`, which :func:`load_edit` checks), the debias version, and
    whatever the caller passes (λ per edit, prompts, ...). The weights are ``W @ M`` rounded once to
    the model's dtype (:func:`baked_weight`).
    """

    from debias import __version__
    from debias.io import atomic_write_bytes
    from debias.models import denoiser, fingerprint, weights_summary

    tensors = {f"{name}.weight": w.detach().to("cpu").contiguous() for name, w in edited_weights(pipe, M).items()}
    tensors[MATRIX_KEY] = M.detach().to("cpu").contiguous()
    net = denoiser(pipe)
    meta: dict[str, Any] = {
        "format": "debias-edit",
        "format_version": 1,
        "method": "TIME",
        "base_model": getattr(pipe, "_debias_spec", None),
        "revision": getattr(pipe, "_debias_revision", None),
        "fingerprint": fingerprint(pipe),
        "base_weights": weights_summary(pipe),
        "denoiser": "unet" if getattr(pipe, "unet", None) is net else "transformer",
        "conditioning_width": int(M.shape[0]),
        "debias_version": __version__,
    }
    meta.update(metadata or {})
    encoded = _encode_metadata(meta)
    return atomic_write_bytes(path, _stable_safetensors(tensors, encoded))


def _stable_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose header lists the metadata in sorted order.

    safetensors writes ``__metadata__`` from a hash map, so the same edit saved twice gets different bytes
    and a different file hash; a report cites that hash, so it must depend on the edit alone. Reordering
    keys of the compact JSON header keeps its length, so the tensor offsets stay valid.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    ordered = {"__metadata__": header.pop("__metadata__"), **dict(sorted(header.items()))}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for a reordering of the same compact JSON; keep the library's bytes
        return raw
    return raw[:8] + text.ljust(n, b" ") + raw[8 + n :]


def read_edit(path: str | Path) -> LoadedEdit:
    """Read an edit file without a pipeline (matrix, metadata and the edited weights)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise EditError(f"edit file {path} does not exist; write one with `debias edit --out {path.name}`.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise EditError(f"{path} is not a readable safetensors edit file ({err}).") from err
    if MATRIX_KEY not in tensors or raw.get("format") != "debias-edit":
        raise EditError(f"{path} is not a debias edit file (no {MATRIX_KEY!r} tensor or format metadata).")
    matrix = tensors.pop(MATRIX_KEY)
    return LoadedEdit(matrix=matrix, metadata=_decode_metadata(raw), path=path, weights=tensors)


def load_edit(pipe, path: str | Path, *, bake: bool = True, check_fingerprint: bool = True) -> LoadedEdit:
    """Read an edit file, check it was made for this model, and (by default) bake it into ``pipe``.

    An edit of one model is meaningless on another, but the same model in float16 or bfloat16 is the
    same model: the file's ``base_weights`` (:func:`debias.models.weights_summary`) must match this
    pipe's original K/V weights in names, shapes and values up to
    :data:`debias.models.WEIGHTS_TOLERANCE`, whatever either dtype. Files without that description must
    match the exact fingerprint. A refusal says what differs.

    On the very weights the file was made from (same fingerprint) the stored edited weights are copied
    in bit for bit; otherwise (another dtype, or the check skipped with ``check_fingerprint=False``)
    ``W @ M`` is baked from this pipe's own weights (:func:`baked_weight`), exactly as :func:`bake_edit`
    would. :func:`revert_edit` undoes either.

    Raises:
        EditError: missing or foreign file, or a different base model.
    """
    from debias.models import fingerprint

    edit = read_edit(path)
    exact = edit.metadata.get("fingerprint") == fingerprint(pipe)
    if check_fingerprint and not exact:
        _check_base_weights(pipe, edit)
    projections = _check_matrix(pipe, edit.matrix)
    names = {f"{p.name}.weight" for p in projections}
    if set(edit.weights) != names:
        missing = sorted(names - set(edit.weights))[:3]
        raise EditError(f"{edit.path} does not hold the same K/V layers as this model (e.g. missing {missing}).")
    if bake:
        if exact:
            new = {p.name: edit.weights[f"{p.name}.weight"].to(p.module.weight.device) for p in projections}
        else:
            new = edited_weights(pipe, edit.matrix)
        _set_weights(pipe, projections, new)
        pipe._debias_edit_matrix = edit.matrix.clone()
    return edit


def _check_base_weights(pipe, edit: LoadedEdit) -> None:
    """Refuse an edit whose base weights are not this pipe's (in any dtype), naming what differs."""
    from debias.models import compare_weights, weights_summary

    meta = edit.metadata
    summary = meta.get("base_weights")
    if isinstance(summary, dict):
        differences = compare_weights(summary, weights_summary(pipe))
        if not differences:
            return
        more = len(differences) - 1
        what = differences[0] + (f", and {more} other K/V modules differ too" if more else "")
        advice = "load the model it was made for (any dtype), or re-run `debias edit` on this one"
    else:
        what = ("its fingerprint (a hash of the exact K/V weights, dtype included) is not this model's, and it has no "
                "dtype-independent description of its base weights to compare instead")
        advice = ("load the model it was made for in the dtype it was made in, or re-run `debias edit` on this one "
                  "(new edit files load in any dtype)")
    raise EditError(f"{edit.path} was made for a different base model{_spec_difference(meta, pipe)}: {what}; {advice}.")


def _spec_difference(meta: dict[str, Any], pipe) -> str:
    """`` (base model 'a', this one 'b')`` when the file's spec or revision differs from ``pipe``'s, else ``""``."""
    parts = []
    for key, attr in (("base_model", "_debias_spec"), ("revision", "_debias_revision")):
        theirs, ours = meta.get(key), getattr(pipe, attr, None)
        if theirs != ours:
            parts.append(f"{key.replace('_', ' ')} {theirs!r}, this one {ours!r}")
    return f" ({'; '.join(parts)})" if parts else ""


def save_pipeline(pipe, folder: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write the (edited) pipeline as a diffusers folder (safetensors) that ``from_pretrained`` loads.

    The folder is written next to its destination and moved into place, so a crash leaves either the
    old folder or the new one. ``debias_edit.json`` in it records how it was made.
    """
    import shutil
    import tempfile

    from debias.io import atomic_write_json

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / "model_index.json").is_file():
        raise EditError(f"--save-pipeline {folder}: the folder exists and is not a diffusers pipeline; "
                        "choose a new or empty folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if metadata is not None:
            atomic_write_json(tmp / "debias_edit.json", metadata)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

