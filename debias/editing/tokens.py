"""From prompts to edit rows: token alignment (pure) and encoding prompts as the K/V projections see them."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from debias.editing.solver import check_lambda, edit_matrix, lambda_scale
from debias.errors import EditError

DEFAULT_AUGMENTATIONS: tuple[str, ...] = ("A photo of {}", "An image of {}", "A picture of {}")
"""Templates the bare source/destination prompts are also encoded in (TIME's augmentation)."""


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
        lam = check_lambda(lam_relative, "lam_relative") * scale
    M = edit_matrix(C.double(), C_star.double(), lam)
    info = {"lambda": float(lam), "lambda_relative": float(lam) / scale, "lambda_scale": scale, "rows": int(C.shape[0]),
            "pairs": [[s, d] for s, d in pairs], "augmentations": list(augmentations)}
    return M, info


