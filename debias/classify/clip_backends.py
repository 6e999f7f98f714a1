"""Loading CLIP for zero-shot classification: open_clip tags and checkpoints, transformers folders and hub ids,
and the CLIPs built-in models ship. Each loader returns ``(encode_images, encode_text, preprocess, logit_scale,
activation)``; :func:`debias.classify.zero_shot.load_classifier` builds the classifier from them. Offline, a classifier
that is not on disk fails at once with what to do (see :data:`_KEEP_ON_DISK`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from debias.core.errors import InputError, ModelLoadError
from debias.core.models import hub_unreachable, quiet_loading
from debias.core.profiles import builtin_model

_KEEP_ON_DISK = (
    "Keep CLIP on disk: on a machine with network access run "
    "`python -c \"import open_clip; open_clip.create_model('ViT-L-14-quickgelu', pretrained='openai')\"` "
    "(or `hf download openai/clip-vit-large-patch14` for a transformers CLIP), copy the Hugging Face cache "
    "(~/.cache/huggingface) to this machine and set HF_HUB_OFFLINE=1; or pass a local folder or checkpoint: "
    "--classifier /path/to/clip-folder or "
    "--classifier open_clip:ViT-L-14-quickgelu//path/to/open_clip_model.safetensors (ARCH-quickgelu for "
    "weights trained with QuickGELU, such as OpenAI's; plain ARCH, e.g. ViT-L-14, for GELU weights)."
)
_ACTIVATIONS = {"QuickGELU": "quick_gelu", "QuickGELUActivation": "quick_gelu", "GELU": "gelu",
                "GELUActivation": "gelu"}
"""Activation module classes of open_clip, torch and transformers, named as their configs name them."""
_TAG_PREPROCESS = ("mean", "std", "interpolation")
"""What :class:`Preprocess` takes from a pretrained tag's settings."""


@dataclass(frozen=True)
class Preprocess:
    """CLIP image preprocessing as tensor operations: resize shortest side, centre crop, normalise."""

    size: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 3:
            x = x[None]
        if x.dtype != torch.uint8 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {x.dtype} {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        if min(h, w) != self.size:
            scale = self.size / min(h, w)
            new = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
            x = F.interpolate(x, size=new, mode=self.interpolation, align_corners=False, antialias=True).clamp(0, 1)
        h, w = x.shape[-2:]
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def builtin_classifier(spec: str) -> tuple[str, str] | None:
    """``(folder, backend)`` of the CLIP a built-in model ships, when ``spec`` names a built-in model."""
    profile = builtin_model(spec)
    if profile is None or profile.classifier_folder is None:
        return None
    source = str(profile.classifier_folder())
    if not (Path(source) / "config.json").is_file():
        raise ModelLoadError(f"the classifier of the built-in model {spec!r} is missing at {source}; reinstall "
                             "debias or pass --classifier with a CLIP folder")
    return source, f"{spec}-clip"


def load_transformers_clip(source: str, spec: str, device: torch.device):
    from transformers import CLIPModel, CLIPTokenizer, CLIPTokenizerFast

    path = Path(os.path.expanduser(source))
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"--classifier {spec!r}: the folder {path} has no config.json, so it is not a "
                             f"transformers CLIP folder (CLIPModel.save_pretrained writes one). {_KEEP_ON_DISK}")
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise ModelLoadError(f"--classifier {spec!r}: no such folder. Pass a CLIP folder, a hub id like "
                             f"'openai/clip-vit-large-patch14', or open_clip:ARCH/PRETRAINED.")
    src = str(path) if path.exists() else source
    unreachable = None if path.exists() else hub_unreachable(source, "config.json")
    cache_only = {"local_files_only": True} if unreachable else {}
    quiet_loading()
    try:
        model = CLIPModel.from_pretrained(src, **cache_only).eval().to(device)
        try:
            tokenizer = CLIPTokenizerFast.from_pretrained(src, **cache_only)
        except Exception:  # noqa: BLE001 - a slow-only tokenizer folder
            tokenizer = CLIPTokenizer.from_pretrained(src, **cache_only)
    except (OSError, ValueError) as err:
        if unreachable:
            raise ModelLoadError(f"could not load classifier {spec!r}: it is not in the Hugging Face cache and the "
                                 f"hub cannot be reached ({unreachable}). {_KEEP_ON_DISK}") from err
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"could not load classifier {spec!r} ({first}). {_KEEP_ON_DISK}") from err
    preprocess = _transformers_preprocess(src, model, cache_only)
    max_len = int(min(getattr(tokenizer, "model_max_length", 77), model.config.text_config.max_position_embeddings))

    def encode_text(texts: Sequence[str]) -> torch.Tensor:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _features(model.get_text_features(input_ids=batch.input_ids.to(device),
                                                 attention_mask=batch.attention_mask.to(device)))

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return _features(model.get_image_features(pixel_values=pixels.to(model.dtype)))

    return encode_images, encode_text, preprocess, float(model.logit_scale.detach().exp()), _activation(model)


def _activation(model: torch.nn.Module) -> str | None:
    """The MLP activation(s) ``model`` runs, read off its modules rather than the flags it was built from.

    Weights give other features under another activation without any error, so the audit records which
    one ran; a model with both (e.g. a timm image tower, which ignores open_clip's flag) reads "gelu+quick_gelu".
    """
    found = {_ACTIVATIONS[type(m).__name__] for m in model.modules() if type(m).__name__ in _ACTIVATIONS}
    return "+".join(sorted(found)) or None


def _features(out) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from ``get_*_features``."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


def _transformers_preprocess(src: str, model, hub_kwargs: dict[str, Any]) -> Preprocess:
    cfg: dict[str, Any] = {}
    path = Path(src)
    if (path / "preprocessor_config.json").is_file():
        cfg = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
    else:
        try:
            from transformers import CLIPImageProcessor

            cfg = CLIPImageProcessor.from_pretrained(src, **hub_kwargs).to_dict()
        except Exception:  # noqa: BLE001 - fall back to the model's own image size and CLIP's statistics
            cfg = {}
    image_size = int(model.config.vision_config.image_size)
    size = cfg.get("size", image_size)
    if isinstance(size, dict):
        size = size.get("shortest_edge") or size.get("height") or image_size
    crop = cfg.get("crop_size", size)
    if isinstance(crop, dict):
        crop = crop.get("height") or size
    if not cfg.get("do_resize", True):
        size = image_size
    if not cfg.get("do_center_crop", True):
        crop = size
    mean = tuple(cfg.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(cfg.get("image_std", (0.26862954, 0.26130258, 0.27577711)))
    if not cfg.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Preprocess(size=int(size), crop=int(crop), mean=mean, std=std)


def load_open_clip(spec: str, device: torch.device):
    import open_clip

    arch, _, pretrained = spec[len("open_clip:"):].partition("/")
    if not arch or not pretrained:
        raise InputError(f"--classifier {spec!r}: write open_clip:ARCH/PRETRAINED, e.g. open_clip:ViT-L-14/openai")
    if arch not in open_clip.list_models():
        raise ModelLoadError(f"--classifier {spec!r}: open_clip has no architecture {arch!r} "
                             f"(see open_clip.list_models(), e.g. ViT-L-14, ViT-L-14-quickgelu, ViT-H-14)")
    checkpoint, tag = Path(os.path.expanduser(pretrained)), {}
    if not checkpoint.is_file():
        tag = open_clip.get_pretrained_cfg(arch, pretrained)
        if not tag:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ModelLoadError(f"--classifier {spec!r}: unknown pretrained tag {pretrained!r} for {arch} "
                                 f"(known: {tags}) and no such checkpoint file")
        checkpoint = _open_clip_weights(spec, tag)
    try:
        # with a file path open_clip ignores the tag, so its activation and preprocessing are passed here
        model = open_clip.create_model(arch, pretrained=str(checkpoint), device=device,
                                       force_quick_gelu=bool(tag.get("quick_gelu")),
                                       force_preprocess_cfg={k: tag[k] for k in _TAG_PREPROCESS if k in tag})
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"could not load classifier {spec!r} from {checkpoint} ({type(err).__name__}: "
                             f"{err}). {_KEEP_ON_DISK}") from err
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    preprocess = Preprocess(size=int(size), crop=int(size), mean=tuple(cfg.get("mean")), std=tuple(cfg.get("std")),
                            interpolation="bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear")

    def encode_text(texts: Sequence[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(list(texts)).to(device))

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels)

    return encode_images, encode_text, preprocess, float(model.logit_scale.detach().exp()), _activation(model)


def _open_clip_weights(spec: str, tag: dict[str, Any]) -> str:
    """The local path of a pretrained tag's weights: downloaded, or from the cache when the hub is unreachable."""
    import open_clip

    hub = tag.get("hf_hub", "")
    if hub and "file" not in tag:
        repo_id, filename = os.path.split(hub)
        names = _open_clip_hub_files(filename)
        unreachable = hub_unreachable(repo_id, names[0])
        if unreachable:
            from huggingface_hub import try_to_load_from_cache

            for name in names:
                cached = try_to_load_from_cache(repo_id, name)
                if isinstance(cached, str):
                    return cached
            raise ModelLoadError(f"could not load classifier {spec!r}: its weights ({repo_id}) are not in the "
                                 f"Hugging Face cache and the hub cannot be reached ({unreachable}). {_KEEP_ON_DISK}")
    try:
        checkpoint = open_clip.download_pretrained(tag)
    except Exception as err:  # noqa: BLE001 - hub / network errors of many kinds
        raise ModelLoadError(f"could not load classifier {spec!r}: its weights are not on disk and they "
                             f"cannot be downloaded ({type(err).__name__}). {_KEEP_ON_DISK}") from err
    if not checkpoint:
        raise ModelLoadError(f"could not load classifier {spec!r}: no weights found. {_KEEP_ON_DISK}")
    return str(checkpoint)


def _open_clip_hub_files(filename: str) -> list[str]:
    """The files open_clip looks for in a tag's hub repo, safetensors first, as ``download_pretrained`` does."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]
