"""From prompts to edit rows: token alignment (pure) and encoding prompts as the edited layers see them.

An edit pairs each row the edited layers read for a source prompt ("a nurse") with the row they read for the
destination ("a male nurse") at the aligned token. Which tokenizer made which rows follows the pipeline's own
``encode_prompt`` (:func:`token_segments`: SD3's CLIP rows then T5 rows, FLUX's T5 rows, one tokenizer's rows
elsewhere); within each run of rows, tokens are aligned by whole words from the tokenizer's own word markers,
so CLIP's BPE and T5's SentencePiece are handled alike (:func:`align_tokens`), and the end token and padding
rows pair in order after it (:data:`AFTER_END`, measured for T5).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from debias.core.edit_state import edit_state
from debias.core.errors import EditError
from debias.core.models import EDITABLE_FAMILIES, denoiser, find_text_projections, model_family
from debias.core.pipeline import call_arguments, pipeline_options
from debias.core.profiles import DEFAULT_AUGMENTATIONS  # the templates an edit also applies inside (re-exported)
from debias.editing.solver import check_lambda, edit_matrix, lambda_scale


_END_TOKENS = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")
_ARTICLES = {"a", "an"}
_MARKERS = ("</w>", "▁", "Ġ", "##")


def _normalise(token: str) -> str:
    """Compare tokens without BPE/SentencePiece/WordPiece word markers or case; treat "a" and "an" alike."""
    t = token.lower()
    for marker in _MARKERS:
        t = t.replace(marker, "")
    t = t.strip()
    return "a" if t in _ARTICLES else t


def _end_index(tokens: Sequence[str], end_token: str | None) -> int:
    candidates = (end_token,) if end_token else _END_TOKENS
    for i, tok in enumerate(tokens):
        if tok in candidates:
            return i
    return len(tokens)


def _is_special(token: str) -> bool:
    return len(token) > 2 and ((token[0] == "<" and token[-1] == ">") or (token[0] == "[" and token[-1] == "]"))


def _words(tokens: Sequence[str], stop: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each word among ``tokens[:stop]``, from the tokenizer's own word markers.

    CLIP's BPE ends a word's last piece with ``</w>``; SentencePiece (T5) and GPT-2's BPE start a word's first
    piece with ``▁`` / ``Ġ``; WordPiece (BERT) continues a word with ``##``. Special tokens are words of their own.
    """
    pieces = tokens[:stop]
    if any(t.endswith("</w>") for t in pieces):
        def starts(i: int) -> bool:
            return pieces[i - 1].endswith("</w>")
    elif any(t.startswith(("▁", "Ġ")) for t in pieces):
        def starts(i: int) -> bool:
            return pieces[i].startswith(("▁", "Ġ"))
    else:
        def starts(i: int) -> bool:
            return not pieces[i].startswith("##")
    bounds = [i for i in range(len(pieces))
              if i == 0 or starts(i) or _is_special(pieces[i]) or _is_special(pieces[i - 1])]
    return list(zip(bounds, bounds[1:] + [len(pieces)]))


def align_tokens(src_tokens: Sequence[str], dst_tokens: Sequence[str], *, end_token: str | None = None) -> list[int]:
    """Map each source token position to its destination position; returns ``mapping`` with
    ``mapping[i]`` = destination index of source token ``i``.

    The destination is the source with attribute words inserted ("a nurse" → "a male nurse"). Tokens are
    grouped into words by the tokenizer's own markers (CLIP's BPE and T5's SentencePiece alike, see
    :func:`_words`) and words are matched in order: inserted words are skipped, an article may change ("an
    attendant" → "a female attendant"), and the pieces of a matched word pair up one by one, so every
    unchanged token after the insertion point is paired with its shifted position. Matching whole words
    keeps a piece of an inserted word (a letter of "female", say) from being taken for a piece of the next
    source word. From the end token on, positions map in order (source end → destination end, padding after
    it likewise); source positions that would fall past the destination's length are dropped, so
    ``len(mapping) <= len(src_tokens)`` and the mapped source positions are always ``0 .. len(mapping) - 1``.

    Raises:
        EditError: when the destination does not contain the source's words in order; the message
            shows both token lists.
    """
    src_end = _end_index(src_tokens, end_token)
    dst_end = _end_index(dst_tokens, end_token)
    if (src_end == len(src_tokens)) != (dst_end == len(dst_tokens)):
        raise EditError(f"only one of the prompts has an end token.\n  source tokens: {list(src_tokens)}\n"
                        f"  destination tokens: {list(dst_tokens)}")
    src_words, dst_words = _words(src_tokens, src_end), _words(dst_tokens, dst_end)

    def text(tokens: Sequence[str], word: tuple[int, int]) -> str:
        joined = "".join(_normalise(t) for t in tokens[word[0]:word[1]])
        return "a" if joined in _ARTICLES else joined

    mapping: list[int] = []
    j = 0
    for word in src_words:
        want = text(src_tokens, word)
        while j < len(dst_words) and text(dst_tokens, dst_words[j]) != want:
            j += 1
        if j == len(dst_words):
            raise EditError(
                f"the destination prompt does not contain the source's words in order (missing "
                f"{''.join(src_tokens[word[0]:word[1]])!r}); write the destination as the source with words added, "
                "e.g. 'a nurse' → 'a male nurse'.\n"
                f"  source tokens: {list(src_tokens[:src_end + 1])}\n"
                f"  destination tokens: {list(dst_tokens[:dst_end + 1])}")
        start, end = dst_words[j]
        mapping.extend(min(start + k, end - 1) for k in range(word[1] - word[0]))
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
    """What the edited layers actually receive for each prompt: ``[n, L, d]``.

    The pipeline itself encodes the prompts (no guidance, so no unconditional rows) and runs its
    denoiser once on a tiny latent while forward hooks record the input of every edited layer (each
    cross-attention ``to_k`` / ``to_v``, or an MMDiT's text input projection); the pipeline is stopped right
    after that first denoiser call. This captures the conditioning after any transformation the denoiser
    applies first (PixArt's caption projection, SDXL's concatenated encoders, SD3's CLIP and T5 rows), and
    checks that every edited layer sees the same tensor, which is what makes one matrix ``M`` valid, and that
    it is the tensor :func:`~debias.editing.conditioning_transform` transforms (the prompt embeddings the
    denoiser is given, or PixArt's caption projection of them), which is what makes the shortcut exact.

    Raises:
        EditError: a model no edit applies to (the message names those that can be edited), or layers that
            receive different conditioning (e.g. per-layer ``norm_cross``) or one built inside the denoiser.
    """

    prompts = list(prompts)
    if not prompts:
        raise EditError("encode_conditioning needs at least one prompt.")
    if edit_state(pipe).transform_active:
        raise EditError("encode_conditioning was called inside conditioning_transform(); encode the prompts outside it.")
    projections = find_text_projections(pipe)
    seen, given = _run_denoiser_once(pipe, prompts, projections)
    missing = [p.name for p in projections if p.name not in seen]
    if missing:
        raise EditError(f"{len(missing)} of the edited layers did not run during a denoiser call "
                        f"(e.g. {missing[0]}); this model is not supported by the TIME edit.")
    first = seen[projections[0].name]
    for p in projections[1:]:
        other = seen[p.name]
        if other.shape != first.shape or not torch.allclose(other, first, rtol=1e-5, atol=1e-6):
            raise EditError(
                f"cross-attention layers receive different conditioning ({projections[0].name} vs {p.name}), e.g. "
                "because of a per-layer norm_cross; one shared edit matrix does not apply to this model.")
    _check_reads_what_is_transformed(pipe, first, given)
    if first.shape[0] != len(prompts):
        raise EditError(f"expected conditioning for {len(prompts)} prompts, the denoiser saw a batch of {first.shape[0]}.")
    return first.to(torch.float32)


def _run_denoiser_once(pipe, prompts: list[str], projections) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Call the pipeline on ``prompts`` until its first denoiser call; return the input of every edited layer
    and the tensor the conditioning transform changes (caption projection output, else the denoiser's
    ``encoder_hidden_states``)."""

    net = denoiser(pipe)
    seen: dict[str, torch.Tensor] = {}
    given: list[torch.Tensor] = []

    def record(name: str):
        def hook(_module, args):
            if name not in seen:
                seen[name] = args[0].detach()
        return hook

    def stop(_module, _args, _output):
        raise _Captured

    handles = [p.module.register_forward_pre_hook(record(p.name)) for p in projections]
    caption = getattr(net, "caption_projection", None)
    if isinstance(caption, torch.nn.Module):
        handles.append(caption.register_forward_hook(lambda _m, _a, out: given.append(out.detach())))
    else:
        handles.append(net.register_forward_pre_hook(
            lambda _m, args, kwargs: given.append(_encoder_hidden_states(net, args, kwargs)), with_kwargs=True))
    handles.append(net.register_forward_hook(stop))
    # the options generation calls the pipeline with: the same text is encoded, the tiny size is kept
    call = call_arguments(pipe, prompt=prompts, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
                          height=_capture_size(pipe), width=_capture_size(pipe))
    try:
        with torch.no_grad():
            pipe(**call)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen, (given[0] if given and given[0] is not None else None)


def _encoder_hidden_states(net, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The ``encoder_hidden_states`` a denoiser call was given (by keyword or by position), detached."""
    value = kwargs.get("encoder_hidden_states")
    if value is None:
        position = list(inspect.signature(net.forward).parameters).index("encoder_hidden_states")
        value = args[position] if len(args) > position else None
    return value.detach() if isinstance(value, torch.Tensor) else None


def _check_reads_what_is_transformed(pipe, read: torch.Tensor, given: torch.Tensor | None) -> None:
    """Refuse a model whose edited layers read a conditioning the denoiser builds inside its forward (e.g. one
    that concatenates a second text encoder's projected rows): transforming what it is given would not be the
    edit, and the rows could not be told apart by tokenizer."""

    if given is not None and given.shape == read.shape and torch.allclose(given.to(read.dtype), read, rtol=1e-5,
                                                                          atol=1e-6):
        return
    shape = "none" if given is None else "×".join(map(str, given.shape))
    raise EditError(
        f"{type(pipe).__name__} ({model_family(pipe)}) cannot be edited: the layers that read its text conditioning "
        f"receive a tensor of shape {'×'.join(map(str, read.shape))} that {type(denoiser(pipe)).__name__} builds "
        f"inside its forward, not the prompt embeddings it is given (shape {shape}), so the edit could neither be "
        f"tried by transforming them nor aligned with the prompt's tokens. debias edits {EDITABLE_FAMILIES}. "
        "The model can still be audited (debias audit).")


def pipeline_text(pipe, prompt: str) -> str:
    """The text the pipeline's tokenizer receives for ``prompt`` when generation calls it.

    PixArt rewrites prompts before tokenizing (with ``clean_caption=False``, the option generation
    passes: lower-cased and stripped); token alignment must read the tokens that were encoded, or an
    upper-case word the vocabulary splits differently would misplace every row after it.
    """

    preprocess = getattr(pipe, "_text_preprocessing", None)
    if not callable(preprocess):
        return prompt
    clean = pipeline_options(pipe).get("clean_caption", False)
    return preprocess(prompt, clean_caption=clean)[0]


@dataclass(frozen=True)
class TokenSegment:
    """Consecutive conditioning rows (``start`` … ``start + length - 1``) that one tokenizer's tokens made.

    ``tokenizer`` None: rows no tokenizer made (SD3 without T5 feeds zeros there); they carry nothing and are
    left out of the edit. ``after_end``: which rows from the end token on are edit rows (see :data:`AFTER_END`).
    """

    tokenizer: Any
    start: int
    length: int
    after_end: str = "all"


AFTER_END = {"clip": "all", "t5": "all"}
"""Which rows from the end token on pair up, by the kind of text encoder that made them ("all": the end token
and every padding row, paired in order after the end token; "end": the end token only; "none": words only).

CLIP is causal: its end and padding rows summarise the whole prompt, and TIME edits them all. T5 is
bidirectional, and SD3 and FLUX feed every T5 row to the transformer without a mask, so its padding rows carry
the prompt too (inserting a word changes every row). Measured on the tiny SD3 and FLUX pipelines of the tests
(4 professions, 4 held-out templates, 6 unrelated prompts; the image tokens after the first joint-attention
block, with the pooled vector held at the source's; λ_rel 1e-3 … 100, no anchors): with "all", held-out
prompts moved up to 27% (SD3) and 20% (FLUX) of the way to their destination while unrelated prompts moved
0.2–0.8 of that distance; with "end" or "none" they moved away from it (−1.3 to −34 times the distance) and
unrelated prompts moved 1.5–33 times it, because an edit fitted on a few word rows acts freely on the hundreds
of unedited padding rows, which lie close to them. "all" was never worse. The fix's anchors (all rows of the bare
templates) pin these padding rows too, which is why MMDiT profiles weigh them 10 rather than 100
(:data:`debias.core.profiles.MMDIT_ANCHOR_STRENGTH`, ``benchmarks/mmdit_anchors.py``)."""


def token_segments(pipe, length: int) -> list[TokenSegment]:
    """Which tokenizer made which of the ``length`` conditioning rows, in the order the pipeline concatenates them.

    * SD3 (a third tokenizer): CLIP-L's and CLIP-G's embeddings of the same CLIP tokens side by side (and
      zero-padded to T5's width) in the first ``tokenizer_max_length`` (77) rows, then T5's tokens;
    * FLUX (T5 as the second text encoder): T5's tokens only (CLIP's pooled vector goes elsewhere);
    * the rest (SD 1.x/2.x, SDXL, PixArt): the first tokenizer's tokens (SDXL's two CLIP encoders read the
      same tokens and are concatenated on the feature axis).
    """
    components = getattr(pipe, "components", {})
    if "tokenizer_3" in components:
        clip = int(getattr(pipe, "tokenizer_max_length", 77))
        t5 = pipe.tokenizer_3 if getattr(pipe, "text_encoder_3", None) is not None else None
        return [TokenSegment(pipe.tokenizer, 0, clip, AFTER_END["clip"]),
                TokenSegment(t5, clip, length - clip, AFTER_END["t5"])]
    if _is_t5(getattr(pipe, "text_encoder_2", None)):
        return [TokenSegment(pipe.tokenizer_2, 0, length, AFTER_END["t5"])]
    return [TokenSegment(pipe.tokenizer, 0, length, "all")]


def _is_t5(encoder) -> bool:
    return getattr(getattr(encoder, "config", None), "model_type", None) in ("t5", "umt5", "mt5")


def _tokens(tokenizer, text: str, length: int) -> list[str]:
    ids = tokenizer(text, padding="max_length", max_length=length, truncation=True).input_ids
    return tokenizer.convert_ids_to_tokens(ids)


def prompt_tokens(pipe, prompt: str, length: int) -> list[str]:
    """The tokens behind each of the ``length`` conditioning rows of ``prompt``, as the pipeline's tokenizers pad
    them (segment by segment, :func:`token_segments`; rows no tokenizer made are ``""``)."""
    text = pipeline_text(pipe, prompt)
    out: list[str] = []
    for segment in token_segments(pipe, length):
        out += _tokens(segment.tokenizer, text, segment.length) if segment.tokenizer else [""] * segment.length
    return out


def _paired_rows(pipe, source: str, destination: str, length: int) -> tuple[list[int], list[int]]:
    """Source and destination row indices that pair up, segment by segment (:func:`align_tokens`)."""
    src_text, dst_text = pipeline_text(pipe, source), pipeline_text(pipe, destination)
    src_rows: list[int] = []
    dst_rows: list[int] = []
    for segment in token_segments(pipe, length):
        if segment.tokenizer is None:
            continue
        src = _tokens(segment.tokenizer, src_text, segment.length)
        dst = _tokens(segment.tokenizer, dst_text, segment.length)
        end_token = getattr(segment.tokenizer, "eos_token", None)
        mapping = align_tokens(src, dst, end_token=end_token)
        keep = {"all": len(mapping), "end": _end_index(src, end_token) + 1, "none": _end_index(src, end_token)}
        mapping = mapping[: keep[segment.after_end]]
        src_rows += [segment.start + i for i in range(len(mapping))]
        dst_rows += [segment.start + j for j in mapping]
    return src_rows, dst_rows


def edit_rows(
    pipe,
    source: str,
    destination: str,
    augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned token rows ``(C, C_star)`` for one source → destination edit, each ``[n, d]``.

    The bare prompts and each augmentation (``template.format(prompt)``) are encoded; every source
    token row is paired with its aligned destination row (:func:`align_tokens`, per tokenizer segment:
    :func:`token_segments`).
    """
    for template in augmentations:
        if "{}" not in template:
            raise EditError(f"augmentation template {template!r} has no '{{}}' where the prompt goes.")
    sources = [source] + [t.format(source) for t in augmentations]
    destinations = [destination] + [t.format(destination) for t in augmentations]
    embeddings = encode_conditioning(pipe, sources + destinations)
    length = embeddings.shape[1]
    rows, rows_star = [], []
    for k, (src, dst) in enumerate(zip(sources, destinations)):
        src_rows, dst_rows = _paired_rows(pipe, src, dst, length)
        rows.append(embeddings[k, src_rows])
        rows_star.append(embeddings[len(sources) + k, dst_rows])
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


