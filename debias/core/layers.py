"""The layers a TIME edit changes: every linear map that reads the text conditioning, found by what it is.

A text-to-image denoiser reads the prompt's token embeddings in one of two ways, and the edit ``W′ = W @ M``
goes on the first linear maps that consume them:

* **cross-attention** (SD 1.x/2.x, SDXL, PixArt-α/Σ): every cross-attention ``to_k`` / ``to_v`` projection
  whose input width is the conditioning width (``kind`` ``"to_k"`` / ``"to_v"``). They all read the same
  tensor, so one matrix edits them all;
* **one text input projection** (MMDiT: SD3/3.5, FLUX.1): the text tokens enter the transformer through one
  ``nn.Linear`` from the text width to the inner width (diffusers calls it ``context_embedder``) and then
  attend jointly with the image tokens; there is no cross-attention. That projection is the edit's only
  layer (``kind`` ``"context"``), the place UCE's FLUX script edits too. It is recognised as a linear child of
  the denoiser whose input width is the conditioning width the pipeline feeds (``joint_attention_dim``);
  :func:`debias.editing.encode_conditioning` checks, whenever an edit is computed, that its input is exactly
  the prompt embeddings the denoiser was given.

The **pooled** text projection of MMDiT models (``time_text_embed.text_embedder``: CLIP's pooled vector, 2048
wide on SD3 and 768 on FLUX, added to the timestep embedding that modulates every block) is left alone. It
reads one summary vector per prompt in another space than the token rows, so the one matrix ``M`` cannot
apply to it, and editing it would need a second edit with its own rows and strength. What it means for the
edit's reach: the pooled summary of "a nurse" still says what CLIP's pooled vector says about nurses, so the
token edit must move the image against it; the fix's rounds measure the share the edit reaches in images, and
a profession the token edit cannot move far enough is reported ``not_reachable`` with its closest share.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from debias.core.errors import EditError, ModelLoadError

EDITABLE_FAMILIES = ("SD 1.x/2.x, SDXL and PixArt-α/Σ (cross-attention keys and values), SD3/3.5 and FLUX.1 "
                     "(the text input projection)")
"""The families the edit is made and tested for, in words (for errors that say what can be edited)."""

_DENOISER_FAMILIES = {"SD3Transformer2DModel": "SD3", "FluxTransformer2DModel": "FLUX.1",
                      "PixArtTransformer2DModel": "PixArt"}


@dataclass
class TextProjection:
    """One linear map that reads the text conditioning: a cross-attention key or value projection, or the
    text input projection of an MMDiT transformer."""

    name: str          # module name inside the denoiser, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    kind: str          # "to_k", "to_v" (cross-attention) or "context" (the text input projection)
    module: nn.Linear
    in_features: int   # width of the conditioning it reads


KVProjection = TextProjection
"""The former name, from when every edited layer was a cross-attention key or value projection."""


def denoiser(pipe) -> nn.Module:
    """The network that reads the text conditioning: ``pipe.unet`` or ``pipe.transformer``."""
    for attr in ("unet", "transformer"):
        module = getattr(pipe, attr, None)
        if isinstance(module, nn.Module):
            return module
    raise ModelLoadError(f"{type(pipe).__name__} has neither a UNet nor a transformer denoiser; "
                         "debias edits text-to-image pipelines such as Stable Diffusion, SDXL, PixArt, SD3 and FLUX.")


def conditioning_width(pipe) -> int:
    """Width of the conditioning the edited layers read: the cross-attention width (after any caption
    projection), else the joint-attention text width of an MMDiT transformer, else the text encoder's width."""
    net = denoiser(pipe)
    width = getattr(net.config, "cross_attention_dim", None)
    if isinstance(width, (list, tuple)):
        width = width[0] if len(set(width)) == 1 else None
    if isinstance(width, int):
        return width
    joint = getattr(net.config, "joint_attention_dim", None)
    if isinstance(joint, int):
        return joint
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None:
        return int(encoder.config.hidden_size)
    raise ModelLoadError(f"cannot tell the conditioning width of {type(net).__name__}.")


def model_family(pipe) -> str:
    """The model family in words ("SD 1.x/2.x", "SDXL", "PixArt", "SD3", "FLUX.1"; else the pipeline's class
    name), recorded in edit files and named when an edit file refuses another model."""
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    name = type(net).__name__
    if name in _DENOISER_FAMILIES:
        return _DENOISER_FAMILIES[name]
    if name == "UNet2DConditionModel":
        return "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "SD 1.x/2.x"
    return type(pipe).__name__


def find_text_projections(pipe) -> list[TextProjection]:
    """Every linear map that reads the text conditioning, in the denoiser's module order (stable names).

    Cross-attention ``to_k`` / ``to_v`` of the conditioning width when the denoiser has them (this excludes,
    e.g., image-prompt adapters); otherwise the one text input projection of an MMDiT transformer.

    Raises:
        EditError: neither is there; the message names the families the edit supports (the model can still
            be audited).
    """
    found = text_projections(pipe)
    if not found:
        net = denoiser(pipe)
        raise EditError(
            f"{type(pipe).__name__} ({model_family(pipe)}) cannot be edited: its {type(net).__name__} has no linear "
            f"map that reads the text conditioning of width {conditioning_width(pipe)}, neither cross-attention "
            "key/value projections nor one text input projection. debias edits "
            f"{EDITABLE_FAMILIES}. The model can still be audited (debias audit).")
    return found


def text_projections(pipe) -> list[TextProjection]:
    """:func:`find_text_projections`, but empty instead of an error when there are none (for fingerprints)."""
    net = denoiser(pipe)
    width = conditioning_width(pipe)
    return _cross_attention(net, width) or _input_projection(net, width)


find_cross_attention = find_text_projections
"""The former name (every caller keeps working): the K/V projections, or the MMDiT text input projection."""


def _cross_attention(net: nn.Module, width: int) -> list[TextProjection]:
    found: list[TextProjection] = []
    for name, module in net.named_modules():
        if not getattr(module, "is_cross_attention", False):
            continue
        for kind in ("to_k", "to_v"):
            proj = getattr(module, kind, None)
            if isinstance(proj, nn.Linear) and proj.in_features == width:
                found.append(TextProjection(name=f"{name}.{kind}", kind=kind, module=proj, in_features=width))
    return found


def _input_projection(net: nn.Module, width: int) -> list[TextProjection]:
    """The denoiser's own linear child that takes the text tokens in (width ``width``), when there is one.

    Only direct children qualify: the pooled projection, which FLUX gives the same input width, sits inside
    ``time_text_embed``. Should a denoiser have several such children, diffusers' name for the text input
    projection (``context_embedder``) decides; without it the choice would be a guess, so there is none.
    """
    candidates = [(name, m) for name, m in net.named_children() if isinstance(m, nn.Linear) and m.in_features == width]
    if len(candidates) > 1:
        candidates = [(name, m) for name, m in candidates if name == "context_embedder"]
    if len(candidates) != 1:
        return []
    name, module = candidates[0]
    return [TextProjection(name=name, kind="context", module=module, in_features=width)]
