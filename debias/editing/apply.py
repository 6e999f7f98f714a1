"""Applying an edit to a pipeline: baking W·M into the weights that read the text (cross-attention K/V, or an
MMDiT's text input projection), reverting, or transforming the conditioning."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Iterator, Sequence

import torch

from debias.core.edit_state import edit_state
from debias.core.errors import EditError
from debias.core.models import denoiser, find_cross_attention, original_weights
from debias.editing.tokens import encode_conditioning


def check_matrix(pipe, M: torch.Tensor) -> list:
    projections = find_cross_attention(pipe)
    d = projections[0].in_features
    if not isinstance(M, torch.Tensor) or M.shape != (d, d):
        shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
        raise EditError(f"the edit matrix has shape {shape} but this model's text conditioning has width {d}; "
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
    """``W @ M`` for every edited weight, from the original weights, in the weights' dtype (:func:`baked_weight`)."""
    check_matrix(pipe, M)
    return {name: baked_weight(W, M) for name, W in original_weights(pipe).items()}


def bake_edit(pipe, M: torch.Tensor) -> None:
    """Write ``W @ M`` into every weight that reads the text: each cross-attention ``to_k`` / ``to_v``, or the
    text input projection (``context_embedder``) of SD3 and FLUX; its bias is left as it is (``W′c + b``).

    ``W`` is always the original weight (baking twice does not compound); the originals are kept on
    pipeline's :class:`~debias.core.edit_state.EditState` so :func:`revert_edit` restores them bit for bit.
    """
    projections = check_matrix(pipe, M)
    new = edited_weights(pipe, M)
    set_kv_weights(pipe, projections, new, M)


def set_kv_weights(pipe, projections, new: dict[str, torch.Tensor], M: torch.Tensor | None = None) -> None:
    """Write the edited weights ``new`` (of the edit ``M``; None for edits that are not one matrix, such as
    per-layer ones), keeping the originals the first time so :func:`revert_edit` can restore them."""
    state = edit_state(pipe)
    if state.originals is None:
        state.originals = {p.name: p.module.weight.detach().clone() for p in projections}
    state.matrix = None if M is None else M.detach().clone()
    with torch.no_grad():
        for p in projections:
            p.module.weight.copy_(new[p.name])


def revert_edit(pipe) -> None:
    """Restore the original weights saved by :func:`bake_edit` / :func:`load_edit` (bit-exact)."""
    state = edit_state(pipe)
    if state.originals is None:
        return
    with torch.no_grad():
        for p in find_cross_attention(pipe):
            p.module.weight.copy_(state.originals[p.name])
    state.originals = state.matrix = None


def is_edited(pipe) -> bool:
    """Whether an edit is baked into the pipe's weights."""
    return edit_state(pipe).originals is not None


@contextlib.contextmanager
def conditioning_transform(pipe, M: torch.Tensor) -> Iterator[None]:
    """Generate as if the edit ``M`` were baked, without touching any weight.

    Inside the ``with`` block the conditioning the edited layers read is replaced by ``c @ Mᵀ``
    (exactly what ``W @ M`` computes from ``c``). For UNets this is a forward pre-hook on the
    denoiser's ``encoder_hidden_states``; for PixArt it is applied after the caption projection; for SD3
    and FLUX it is a pre-hook on the text input projection itself, so what it transforms is exactly what
    the baked weight multiplies. Every row the layers read is transformed, as the baked model would: under
    classifier-free guidance (SD 1.x/2.x, SDXL, PixArt, SD3; FLUX's ``true_cfg_scale``) the unconditional
    rows too, whether they share the call with the prompt's rows or have a call of their own; FLUX.1-dev's
    embedded guidance and the pooled text vectors do not pass through these layers and are left alone.
    This is how a fix's rounds try many edits cheaply::

        with conditioning_transform(pipe, M):
            images = pipe(prompts, generator=generators).images
    """
    projections = check_matrix(pipe, M)
    state = edit_state(pipe)
    if state.transform_active:
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
    if projections[0].kind == "context":
        handle = projections[0].module.register_forward_pre_hook(lambda _m, args: (transform(args[0]), *args[1:]))
    elif isinstance(projection, torch.nn.Module):
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
    state.transform_active = True
    try:
        yield
    finally:
        handle.remove()
        state.transform_active = False


def _transform_operand(M: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``Mᵀ`` for multiplying rows like ``like``, in at least float32.

    ``M`` is the identity plus a small edit, so rounding ``M`` itself to float16 or bfloat16 (and every
    partial sum) adds error on top of the one rounding the transformed rows need anyway. Multiplying in
    float32 and rounding the product once cut the transform's error by 10-25% (``benchmarks/precision.py``:
    bfloat16, built-in model, 0.60% → 0.42% of the edit's effect; float16, SD 1.x shapes, 0.99% → 0.77%).
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
    edit's effect: ``baked_vs_transform`` is how far the shipped edit is from what the rounds and the
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

    A fix's rounds choose an edit through :func:`conditioning_transform`; the edit
    file and ``--save-pipeline`` ship it baked into the weights (:func:`bake_edit`). In float32 they agree
    to about 1e-6 of the edit, but in half precision each rounds: the baked weight ``W M`` (which differs
    from ``W`` by a little) and the transformed conditioning. This returns
    ``‖baked − transform‖ / ‖exact − unedited‖`` of the K/V outputs for the prompts' conditioning rows
    (:func:`edit_precision`): e.g. 0.01 means the shipped model differs from the one the edit was tuned
    on by 1% of what the edit does.
    """
    check_matrix(pipe, M)
    conditioning = encode_conditioning(pipe, prompts)
    rows = conditioning.reshape(-1, conditioning.shape[-1])
    return edit_precision(original_weights(pipe), rows, M)["baked_vs_transform"]


