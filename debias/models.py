"""Loading pipelines and finding the layers a TIME edit changes.

``load_pipeline`` accepts a hub id, a local diffusers folder, or ``"mini"`` (the built-in model).
``find_cross_attention`` finds the cross-attention ``to_k`` / ``to_v`` projections by what they are
(attention modules that read the text conditioning), not by the module names of one model, so the
same code serves SD 1.x, SD 2.x, SDXL and PixArt. ``fingerprint`` identifies the original K/V
weights exactly (dtype included, for caches); ``weights_summary`` describes them independently of
dtype, so an edit file can refuse a model it was not made for and accept the same model in float16.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from debias.errors import ModelLoadError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass
class KVProjection:
    """One cross-attention key or value projection that reads the text conditioning."""

    name: str          # full module name inside the denoiser, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    kind: str          # "to_k" or "to_v"
    module: nn.Linear
    in_features: int   # width of the conditioning it reads


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def resolve_dtype(torch_dtype: Any) -> torch.dtype | None:
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    dtype = _DTYPES.get(str(torch_dtype).lower().replace("torch.", ""))
    if dtype is None:
        raise ModelLoadError(f"unknown dtype {torch_dtype!r}; use one of float32, float16, bfloat16.")
    return dtype


def _mini_dir() -> Path:
    try:
        from debias.mini import PIPELINE_DIR  # lazy: the mini package is only needed for "mini"
    except ImportError as err:
        raise ModelLoadError(f"the built-in mini model is not available in this install ({err}); "
                             "reinstall debias or pass --model with a local diffusers folder.") from err
    path = Path(PIPELINE_DIR)
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"the built-in mini model's weights are missing at {path}; reinstall debias "
                             "(or train them: see debias/mini) or pass --model with a local diffusers folder.")
    return path


def _check_local_folder(path: Path, spec: str, allow_pickle: bool) -> None:
    if path.is_file():
        raise ModelLoadError(f"--model {spec!r} is a single file; debias loads diffusers folders (with model_index.json) "
                             "or hub ids. Convert single-file checkpoints with diffusers' conversion scripts first.")
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"--model {spec!r}: the folder {path} has no model_index.json, so it is not a diffusers "
                             "pipeline folder; pass the folder that contains model_index.json (e.g. written by "
                             "save_pretrained or `debias edit --save-pipeline`).")
    if allow_pickle:
        return
    weight_files = [p for p in path.rglob("*") if p.is_file() and (p.suffix in _PICKLE_SUFFIXES or p.suffix == ".safetensors")]
    pickles = [p for p in weight_files if p.suffix in _PICKLE_SUFFIXES]
    components_with_safe = {p.parent for p in weight_files if p.suffix == ".safetensors"}
    unsafe_only = sorted({str(p.parent.relative_to(path)) for p in pickles if p.parent not in components_with_safe})
    if unsafe_only:
        raise ModelLoadError(
            f"--model {spec!r}: the folder holds only pickle weights (.bin/.ckpt) for {', '.join(unsafe_only)}, and "
            "debias loads only safetensors by default because pickle files can run code when loaded. If you trust "
            "this model, pass --allow-pickle (allow_pickle=True), or convert the weights to safetensors.")


def _explain_load_failure(spec: str, err: BaseException, allow_pickle: bool) -> str:
    """Say why a hub/cache load failed and what to do, from the exception chain (not the spec's own text)."""
    chain, seen = [], err
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = " ".join(type(e).__name__ for e in chain)
    text = " ".join(str(e) for e in chain).replace(spec, "<model>")
    if "GatedRepo" in names or "gated" in text.lower() or " 401 " in f" {text} " or " 403 " in f" {text} ":
        what = ("it is gated or private: accept its licence on the hub and log in with `huggingface-cli login` "
                "(or set HF_TOKEN), then retry.")
    elif "RepositoryNotFound" in names or "HFValidation" in names or "not a valid model identifier" in text:
        what = "no such model was found: check the id (owner/name) or pass a local diffusers folder."
    elif not allow_pickle and "safetensors" in text.lower() and "not fully cached" not in text:
        what = ("it has no safetensors weights, and pickle weights are refused by default because they can run "
                "code when loaded; if you trust it, pass --allow-pickle (allow_pickle=True).")
    else:
        what = ("it could not be read from the hub or the local cache. Offline? Pass a local diffusers folder, or "
                "fill the cache on a connected machine and set HF_HUB_OFFLINE=1; gated models need "
                "`huggingface-cli login`; otherwise check the id.")
    detail = str(err).splitlines()[0] if str(err) else ""
    if len(detail) > 200:
        detail = detail[:200] + "…"
    return f"could not load model {spec!r}: {what} ({type(err).__name__}: {detail})"


def quiet_loading() -> None:
    """Turn off the per-component loading bars of diffusers and transformers.

    Loading a local folder takes a second; a wall of bars hides the progress that matters (generation).
    Hub downloads keep huggingface_hub's own download bars.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(
    spec: str,
    *,
    device: str | torch.device | None = None,
    torch_dtype: Any = None,
    revision: str | None = None,
    allow_pickle: bool = False,
):
    """Load a diffusers pipeline from a hub id, a local folder, or ``"mini"`` (the built-in model).

    Only safetensors weights are loaded unless ``allow_pickle=True``: pickle files can run
    arbitrary code. The progress bar is disabled (debias shows its own progress).

    Raises:
        ModelLoadError: not found, offline without a cache, gated, or pickle-only weights; the message
            says what to do.
    """
    from diffusers import DiffusionPipeline

    dtype = resolve_dtype(torch_dtype)
    is_mini = spec == "mini"
    source = str(_mini_dir()) if is_mini else spec
    local = Path(os.path.expanduser(source))
    if is_mini or local.exists():
        _check_local_folder(local, spec, allow_pickle)
        source = str(local)
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an "owner/name" hub id
        raise ModelLoadError(f"--model {spec!r}: no such folder. Pass an existing diffusers folder or a hub id "
                             "like 'CompVis/stable-diffusion-v1-4'.")

    # None: safetensors where present, pickle otherwise (only when the user allowed it)
    kwargs: dict[str, Any] = {"use_safetensors": None if allow_pickle else True}
    if dtype is not None:
        # diffusers renamed torch_dtype to dtype; pass whichever this version reads
        from diffusers.pipelines import pipeline_utils

        kwargs["dtype" if "_resolve_dtype" in vars(pipeline_utils) else "torch_dtype"] = dtype
    if revision is not None:
        kwargs["revision"] = revision
    quiet_loading()
    try:
        pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, EnvironmentError) as err:
        raise ModelLoadError(_explain_load_failure(spec, err, allow_pickle)) from err
    except Exception as err:  # huggingface_hub errors are not all OSErrors across versions
        if type(err).__module__.startswith(("huggingface_hub", "requests", "httpx", "urllib3")):
            raise ModelLoadError(_explain_load_failure(spec, err, allow_pickle)) from err
        raise
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe._debias_spec = spec
    from_hub = not (is_mini or local.exists())
    pipe._debias_revision = revision if revision is not None or not from_hub else _cached_revision(spec)
    record = {} if is_mini else saved_record(local)
    profile, profile_source = ("mini", None) if is_mini else saved_profile(local, record)
    pipe._debias_is_mini = profile == "mini"
    pipe._debias_profile = profile
    pipe._debias_profile_source = profile_source
    # the settings the fix judged this model with (sampler, size, test prompts, classifier): an audit's defaults
    pipe._debias_audit_defaults = dict(record.get("audit_defaults") or {})
    return pipe


SAVED_RECORD = "debias_edit.json"  # written into a folder by --save-pipeline: how the model was made


def saved_record(folder: Path) -> dict:
    """What a folder written by ``--save-pipeline`` records about how it was made (``{}`` for other folders)."""
    import json

    record = folder / SAVED_RECORD
    if not record.is_file():
        return {}
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{record} is not readable JSON ({err}); it records how this folder was made. "
                             "Restore it, or delete it to load the folder as a plain diffusers model.") from err


def saved_profile(folder: Path, record: dict | None = None) -> tuple[str | None, str | None]:
    """The model profile a folder written by ``--save-pipeline`` records (e.g. ``"mini"``), and where it says so.

    A fixed model keeps the sampler, prompts and classifier of the model it was made from: auditing it with
    another family's defaults would measure a different thing than the fix's own after audit did.
    """
    data = saved_record(folder) if record is None else record
    base = data.get("base_model") or {}
    profile = data.get("profile") or base.get("profile") or ("mini" if base.get("is_mini") else None)
    return profile, str(folder / SAVED_RECORD) if profile or data.get("audit_defaults") else None


def _cached_revision(spec: str) -> str | None:
    """The commit hash of a hub model's cached snapshot, when it can be found without a network call."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(spec, local_files_only=True))
        return path.name if path.parent.name == "snapshots" else None
    except Exception:  # noqa: BLE001 - the revision is informative only
        return None


def model_info(pipe, spec: str | None = None) -> dict[str, Any]:
    """What a run record says about the model: spec, fingerprint, revision, profile (and where it came from)."""
    spec = spec if spec is not None else getattr(pipe, "_debias_spec", None)
    is_mini = bool(getattr(pipe, "_debias_is_mini", spec == "mini"))
    return {
        "spec": spec,
        "fingerprint": fingerprint(pipe),
        "revision": getattr(pipe, "_debias_revision", None),
        "is_mini": is_mini,
        "profile": getattr(pipe, "_debias_profile", "mini" if is_mini else None),
        "profile_source": getattr(pipe, "_debias_profile_source", None),
        "class": type(pipe).__name__,
    }


# --------------------------------------------------------------------------------------------------
# Finding the layers
# --------------------------------------------------------------------------------------------------


def denoiser(pipe) -> nn.Module:
    """The network that reads the text conditioning: ``pipe.unet`` or ``pipe.transformer``."""
    for attr in ("unet", "transformer"):
        module = getattr(pipe, attr, None)
        if isinstance(module, nn.Module):
            return module
    raise ModelLoadError(f"{type(pipe).__name__} has neither a UNet nor a transformer denoiser; "
                         "debias edits text-to-image pipelines such as Stable Diffusion, SDXL and PixArt.")


def conditioning_width(pipe) -> int:
    """Width of the conditioning the denoiser's cross-attention reads (after any caption projection)."""
    net = denoiser(pipe)
    width = getattr(net.config, "cross_attention_dim", None)
    if isinstance(width, (list, tuple)):
        width = width[0] if len(set(width)) == 1 else None
    if isinstance(width, int):
        return width
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None:
        return int(encoder.config.hidden_size)
    raise ModelLoadError(f"cannot tell the conditioning width of {type(net).__name__}.")


def find_cross_attention(pipe) -> list[KVProjection]:
    """All cross-attention ``to_k`` / ``to_v`` projections that read the text conditioning.

    Found by what they are: attention modules flagged ``is_cross_attention`` whose K/V input width
    equals the conditioning width (this excludes, e.g., image-prompt adapters). Order is the
    denoiser's module order, so names and fingerprints are stable.
    """
    net = denoiser(pipe)
    width = conditioning_width(pipe)
    found: list[KVProjection] = []
    for name, module in net.named_modules():
        if not getattr(module, "is_cross_attention", False):
            continue
        for kind in ("to_k", "to_v"):
            proj = getattr(module, kind, None)
            if isinstance(proj, nn.Linear) and proj.in_features == width:
                found.append(KVProjection(name=f"{name}.{kind}", kind=kind, module=proj, in_features=proj.in_features))
    if not found:
        raise ModelLoadError(f"no cross-attention K/V projections of width {width} found in {type(net).__name__}; "
                             "TIME needs a denoiser whose cross-attention reads the text encoder output.")
    return found


def original_weights(pipe) -> dict[str, torch.Tensor]:
    """The unedited K/V weights by module name (the saved originals if an edit is baked in)."""
    saved = getattr(pipe, "_debias_original_kv", None)
    if saved is not None:
        return dict(saved)
    return {p.name: p.module.weight.detach() for p in find_cross_attention(pipe)}


def fingerprint(pipe) -> str:
    """``"sha256:…"`` of the original K/V weights (names, dtypes, shapes and bytes), stable across runs.

    It names the exact weights, so the same model loaded in another dtype (float16 instead of float32)
    has another fingerprint: right for image caches, whose images differ by dtype. Whether an edit file
    fits a model is decided by :func:`weights_summary` instead, which survives a change of dtype. After
    an edit is baked the fingerprint still names the originals.
    """
    digest = hashlib.sha256()
    for name, weight in original_weights(pipe).items():
        tensor = weight.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(f"|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Identifying weights across dtypes
# --------------------------------------------------------------------------------------------------

_SKETCH_SIZE = 16

WEIGHTS_SKETCH = f"rademacher-rank1-{_SKETCH_SIZE}"
"""How :func:`weights_summary` describes a weight (recorded, so a future change is recognised)."""

WEIGHTS_TOLERANCE = 0.01
"""Largest relative distance ‖W₁ − W₂‖_F / ‖W₁‖_F at which two K/V weights count as the same weights.

Rounding float32 weights to bfloat16 moves them by about 0.2% (float16: 0.02%), and the sketch's estimate of
that stays below 0.4%; two different models (another seed, another checkpoint) differ by tens of percent."""


@functools.lru_cache(maxsize=32)
def _signs(length: int, side: str) -> torch.Tensor:
    """``[length, 16]`` fixed ±1 vectors, derived from SHAKE-256 so that no library version can change them."""
    raw = hashlib.shake_256(f"debias.weights_summary|{side}|{length}".encode()).digest(length * _SKETCH_SIZE)
    bits = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.float64).remainder(2)
    return (2.0 * bits - 1.0).reshape(length, _SKETCH_SIZE)


def weights_summary(pipe) -> dict[str, Any]:
    """A description of the original K/V weights that survives a change of dtype, for edit files.

    :func:`fingerprint` hashes the exact bytes, which is right for caches (a float16 model draws other
    images) but cannot decide whether an edit fits: the same model in float16 or bfloat16 has other bytes,
    and no hash of rounded values is dtype-invariant (rounding twice flips some elements). This records, per
    module and in float64, the shape, the Frobenius norm and 16 projections ``uᵀ W v`` on fixed ±1 vectors.
    Differences of projections have mean square ‖W₁ − W₂‖²_F, so :func:`compare_weights` tells rounding
    (≈ 0.2% in bfloat16) from other weights (tens of %) with 18 numbers per module.
    """
    modules: dict[str, Any] = {}
    dtype = None
    for name, weight in original_weights(pipe).items():
        dtype = dtype or weight.dtype
        W = weight.detach().to("cpu", torch.float64)
        out_features, in_features = W.shape
        projections = ((W @ _signs(in_features, "in")) * _signs(out_features, "out")).sum(dim=0)
        modules[name] = {"shape": [out_features, in_features], "norm": float(W.norm()),
                         "projections": [float(p) for p in projections]}
    return {"method": WEIGHTS_SKETCH, "dtype": str(dtype).removeprefix("torch."), "modules": modules}


def weights_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Estimated ‖W_a − W_b‖_F / max(‖W_a‖_F, ‖W_b‖_F) of one module from two :func:`weights_summary` entries.

    The larger of the norms' difference (a lower bound of the distance) and the root mean square of the
    projections' differences (an unbiased estimate of its square); NaN or Inf weights give ``inf``.
    """
    pa = torch.tensor(a["projections"], dtype=torch.float64)
    pb = torch.tensor(b["projections"], dtype=torch.float64)
    spread = float((pa - pb).pow(2).mean().sqrt())
    scale = max(abs(a["norm"]), abs(b["norm"]))
    distance = max(abs(a["norm"] - b["norm"]), spread)
    if not math.isfinite(distance) or not math.isfinite(scale):
        return math.inf
    return distance / scale if scale > 0 else 0.0


def compare_weights(expected: dict[str, Any], actual: dict[str, Any], *,
                    tolerance: float = WEIGHTS_TOLERANCE) -> list[str]:
    """What differs between two :func:`weights_summary` descriptions, in words; empty when they match.

    Module names first (which are missing, which are extra), then shapes, then every module whose weights
    are farther apart than ``tolerance`` (largest first): the first difference found is the one to fix.
    """
    if expected.get("method") != actual.get("method"):
        return [f"its base weights are described with {expected.get('method')!r}, which this version of debias "
                f"does not read (it writes {actual.get('method')!r})"]
    theirs, ours = expected["modules"], actual["modules"]
    missing, extra = [n for n in theirs if n not in ours], [n for n in ours if n not in theirs]
    if missing or extra:
        text = f"it edits {len(theirs)} K/V modules and this model has {len(ours)}"
        text += f"; not in this model: {_some(missing)}" if missing else ""
        return [text + (f"; not in the edit: {_some(extra)}" if extra else "")]
    size = "×".join
    shapes = [f"{n} is {size(map(str, theirs[n]['shape']))} in the edit and {size(map(str, ours[n]['shape']))} here"
              for n in theirs if theirs[n]["shape"] != ours[n]["shape"]]
    if shapes:
        return shapes
    distances = {n: weights_distance(theirs[n], ours[n]) for n in theirs}
    far = sorted((n for n, d in distances.items() if not d <= tolerance), key=lambda n: -distances[n])
    return [f"the weights of {n} differ by {distances[n]:.1%} (the same weights in another dtype: under "
            f"{tolerance:.0%})" for n in far]


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
