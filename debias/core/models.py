"""Loading pipelines and identifying the weights a TIME edit changes.

``load_pipeline`` accepts a hub id, a local diffusers folder, or a built-in model's name (``"mini"``).
The layers an edit changes are found by what they are (:mod:`debias.core.layers`, re-exported here):
cross-attention ``to_k`` / ``to_v`` for SD 1.x, SD 2.x, SDXL and PixArt, the text input projection
(``context_embedder``) for SD3 and FLUX. ``fingerprint`` identifies their original weights exactly (dtype
included, for caches; a model no edit applies to is named by all its denoiser's weights, so it can still be
audited); ``weights_summary`` describes them independently of dtype, so an edit file can refuse a model it
was not made for and accept the same model in float16.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from debias.core.layers import (  # noqa: F401 - re-exported: where callers have always found them
    EDITABLE_FAMILIES, KVProjection, TextProjection, conditioning_width, denoiser, find_cross_attention,
    find_text_projections, model_family, text_projections,
)
from debias.core.edit_state import edit_state
from debias.core.errors import InputError, ModelLoadError
from debias.core.profiles import builtin_model

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


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


def _builtin_dir(spec: str) -> Path | None:
    """The folder of the built-in model named ``spec`` (e.g. ``"mini"``), or None when ``spec`` names none."""
    profile = builtin_model(spec)
    if profile is None:
        return None
    path = Path(profile.builtin_folder())
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"the built-in model {spec!r} has no weights at {path}; reinstall debias "
                             "or pass --model with a local diffusers folder.")
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


def hub_unreachable(repo_id: str, filename: str) -> str | None:
    """Why the Hugging Face hub cannot be reached, from one request without retries; ``None`` if it answers.

    On a network error huggingface_hub retries a file it has not cached with backoff (about 23 s a file, and
    open_clip asks for two), so a machine without network and without HF_HUB_OFFLINE=1 would wait over a
    minute for the error. One request tells the same at once; callers then read the cache only.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename))
    except (HfHubHTTPError, ValueError):
        return None  # the hub answered (a missing file, a gated repo) or the id is malformed: the load reports it
    except Exception as err:  # noqa: BLE001 - DNS, connection, proxy, TLS and timeout errors of the HTTP client
        detail = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {detail[:200]}" if detail else type(err).__name__
    return None


def load_pipeline(
    spec: str,
    *,
    device: str | torch.device | None = None,
    torch_dtype: Any = None,
    revision: str | None = None,
    allow_pickle: bool = False,
):
    """Load a diffusers pipeline from a hub id, a local folder, or a built-in model's name (``"mini"``).

    Only safetensors weights are loaded unless ``allow_pickle=True``: pickle files can run
    arbitrary code. The progress bar is disabled (debias shows its own progress). The pipeline is returned
    as diffusers made it; :class:`debias.core.setup.LoadedModel` describes it (spec, revision, profile).

    Raises:
        ModelLoadError: not found, offline without a cache, gated, or pickle-only weights; the message
            says what to do.
    """
    from diffusers import DiffusionPipeline

    dtype = resolve_dtype(torch_dtype)
    builtin = _builtin_dir(spec)
    source = str(builtin) if builtin is not None else spec
    local = Path(os.path.expanduser(source))
    if builtin is not None or local.exists():
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
    return pipe


def check_text_to_image(pipe) -> None:
    """Refuse, with what to do, a pipeline that cannot be audited: one whose ``__call__`` takes no ``prompt``
    (unconditional or class-conditional) or that has no text encoder loaded."""
    name = type(pipe).__name__
    if "prompt" not in inspect.signature(pipe.__call__).parameters:
        raise InputError(f"{name} cannot be audited: it takes no text prompt (an unconditional or class-conditional "
                         "pipeline), so there is no profession to ask for. debias audits text-to-image pipelines "
                         "(Stable Diffusion 1.x/2.x, SDXL, PixArt, SD3, FLUX and others that take a prompt).")
    encoders = {k: v for k, v in getattr(pipe, "components", {}).items() if "text_encoder" in k}
    if not any(v is not None for v in encoders.values()):
        which = f" ({', '.join(sorted(encoders))} {'is' if len(encoders) == 1 else 'are'} None)" if encoders else ""
        raise InputError(f"{name} has no text encoder loaded{which}, so it cannot turn a prompt into an image; load "
                         "the pipeline with its text encoders (do not pass text_encoder=None) to audit it.")


SAVED_RECORD = "debias_edit.json"  # written into a folder by --save-pipeline: how the model was made


def saved_record(folder: Path) -> dict:
    """What a folder written by ``--save-pipeline`` records about how it was made (``{}`` for other folders)."""
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
    profile = data.get("profile") or base.get("profile")
    return profile, str(folder / SAVED_RECORD) if profile or data.get("audit_defaults") else None


def cached_revision(spec: str) -> str | None:
    """The commit hash of a hub model's cached snapshot, when it can be found without a network call."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(spec, local_files_only=True))
        return path.name if path.parent.name == "snapshots" else None
    except Exception:  # noqa: BLE001 - the revision is informative only
        return None


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------


def original_weights(pipe) -> dict[str, torch.Tensor]:
    """The unedited weights of the layers an edit changes, by module name (the saved originals if an edit is
    baked in). Raises :class:`~debias.core.errors.EditError` for a model no edit applies to."""
    saved = edit_state(pipe).originals
    if saved is not None:
        return dict(saved)
    return {p.name: p.module.weight.detach() for p in find_text_projections(pipe)}


def fingerprint(pipe) -> str:
    """``"sha256:…"`` of the original weights an edit changes (names, dtypes, shapes and bytes), stable across runs.

    It names the exact weights, so the same model loaded in another dtype (float16 instead of float32)
    has another fingerprint: right for image caches, whose images differ by dtype. Whether an edit file
    fits a model is decided by :func:`weights_summary` instead, which survives a change of dtype. After
    an edit is baked the fingerprint still names the originals. A model no edit applies to (it can still be
    audited) is named by every weight of its denoiser, hashed once per pipeline.
    """
    if edit_state(pipe).originals is None and not _editable(pipe):
        return _whole_model_fingerprint(pipe)
    return _hash_weights(original_weights(pipe).items())


def _editable(pipe) -> bool:
    try:
        return bool(text_projections(pipe))
    except ModelLoadError:  # no UNet or transformer, or no conditioning width to read
        return False


def _hash_weights(named: Any) -> str:
    digest = hashlib.sha256()
    for name, weight in named:
        tensor = weight.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(f"|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _whole_model_fingerprint(pipe) -> str:
    """The fingerprint of a model without editable layers: every parameter and buffer of its denoiser (of all
    its networks when it has no UNet or transformer), hashed once per pipeline."""
    state = edit_state(pipe)
    if state.fingerprint is None:
        try:
            networks = {"": denoiser(pipe)}
        except ModelLoadError:
            networks = {f"{k}.": m for k, m in sorted(pipe.components.items()) if isinstance(m, torch.nn.Module)}
        state.fingerprint = _hash_weights((prefix + name, tensor) for prefix, net in networks.items()
                                          for name, tensor in [*net.named_parameters(), *net.named_buffers()])
    return state.fingerprint


# --------------------------------------------------------------------------------------------------
# Identifying weights across dtypes
# --------------------------------------------------------------------------------------------------

_SKETCH_SIZE = 16

WEIGHTS_SKETCH = f"rademacher-rank1-{_SKETCH_SIZE}"
"""How :func:`weights_summary` describes a weight (recorded, so a future change is recognised)."""

WEIGHTS_TOLERANCE = 0.01
"""Largest relative distance ‖W₁ − W₂‖_F / ‖W₁‖_F at which two edited weights count as the same weights.

Rounding float32 weights to bfloat16 moves them by about 0.2% (float16: 0.02%), and the sketch's estimate of
that stays below 0.4%; two different models (another seed, another checkpoint) differ by tens of percent."""


@functools.lru_cache(maxsize=32)
def _signs(length: int, side: str) -> torch.Tensor:
    """``[length, 16]`` fixed ±1 vectors, derived from SHAKE-256 so that no library version can change them."""
    raw = hashlib.shake_256(f"debias.weights_summary|{side}|{length}".encode()).digest(length * _SKETCH_SIZE)
    bits = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.float64).remainder(2)
    return (2.0 * bits - 1.0).reshape(length, _SKETCH_SIZE)


def weights_summary(pipe) -> dict[str, Any]:
    """A description of the original weights an edit changes that survives a change of dtype, for edit files.

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
        text = f"it edits {len(theirs)} {_kind(theirs)} and this model has {len(ours)}"
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


def _kind(names) -> str:
    """How to call the edited modules: "K/V modules" (cross-attention) or "text input projections" (MMDiT)."""
    return "K/V modules" if all(str(n).endswith(("to_k", "to_v")) for n in names) else "text input projections"


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
