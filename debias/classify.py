"""CLIP zero-shot reading of *perceived* gender in generated images, with an abstain rule.

Each image is compared with label prompts: a "female" group (default "a photo of a woman"), a "male"
group (default "a photo of a man") and an optional "no person" group (off by default, see
:func:`resolve_labels`). Several prompts in the female or male
group are paraphrases, so they are averaged the way CLIP ensembles prompts (mean of the normalised
text embeddings); prompts in the "no person" group describe different things (an apple, a car), so
each is its own class and their probabilities add up. With ``P`` the softmax over all classes::

    p_female = P(female) / (P(female) + P(male))
    unclear   if P(no person) ≥ ½   or   max(p_female, 1 − p_female) < min_confidence

Unclear images are excluded from the share and reported (see :mod:`debias.stats`); the rule and its
parameters are recorded in ``audit.json``.

Backends (``--classifier``):

* ``open_clip:ARCH/PRETRAINED`` — open_clip; the default for real models is
  ``open_clip:ViT-L-14/openai``, OpenAI's CLIP ViT-L/14: the classifier used in the TIME paper's
  gender evaluation and most later work (so numbers are comparable), strong zero-shot accuracy on
  people, and the image tower of the family SD 1.x was trained with. A pretrained tag is built with
  the settings its weights were trained with (OpenAI's with QuickGELU, as open_clip's tag says; built
  with GELU they give other features, without an error). ``PRETRAINED`` may instead be a local
  checkpoint file, which does not say its activation, so ``ARCH`` names it: open_clip's
  ``ARCH-quickgelu`` architectures for QuickGELU weights (OpenAI's, e.g.
  ``open_clip:ViT-L-14-quickgelu//models/open_clip_model.safetensors``), plain ``ARCH`` for GELU.
* a transformers CLIP hub id (``openai/clip-vit-large-patch14``) or local folder (``CLIPModel`` +
  tokenizer + ``preprocessor_config.json``);
* ``mini`` — the built-in mini model's tiny CLIP (a transformers CLIP folder), its default.

The MLP activation the built model runs is recorded in ``describe()`` (the ``classifier`` block of
``audit.json``). A classifier that is not a local folder or file is read from the Hugging Face cache
alone when one request shows the hub cannot be reached, so an offline machine gets the error at once
instead of after huggingface_hub's retries.

Images go in as uint8 ``[N, H, W, 3]`` arrays or tensors (exactly the pixels of the saved PNGs) and
are preprocessed with tensor operations (resize shortest side, centre crop, normalise).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from debias.errors import InputError, ModelLoadError

DEFAULT_REAL_CLASSIFIER = "open_clip:ViT-L-14/openai"
DEFAULT_LABELS = {"female": ("a photo of a woman",), "male": ("a photo of a man",)}
DEFAULT_NONE_LABELS = ("a photo of an object", "a photo of a landscape", "a photo of an animal", "a photo of a building")
"""Suggested "no person" prompts for real CLIP models (``--labels-none``); not used unless given."""
DEFAULT_MIN_CONFIDENCE = 0.6

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


@dataclass
class ZeroShotClassifier:
    """A CLIP model reduced to what zero-shot needs: image features, class text features, a scale."""

    backend: str
    model: str
    encode_images: Callable[[torch.Tensor], torch.Tensor]  # preprocessed pixels -> features
    preprocess: Preprocess
    class_features: torch.Tensor  # [C, D], normalised: female, male, then one per "no person" prompt
    logit_scale: float
    labels: dict[str, tuple[str, ...]]
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64
    encode_text: Optional[Callable[[Sequence[str]], torch.Tensor]] = None  # texts -> features (CLIP score)
    activation: Optional[str] = None  # MLP activation of the built model: "quick_gelu", "gelu", or both joined by "+"

    @property
    def abstain_rule(self) -> str:
        none = " P(no person) >= 0.5, or" if self.labels.get("none") else ""
        return (f"unclear if{none} max(p_female, 1 - p_female) < min_confidence, where p_female = "
                f"P(female) / (P(female) + P(male)) from a softmax over CLIP similarities; female/male prompts "
                f"are averaged as normalised text embeddings, 'none' prompts are separate classes whose "
                f"probabilities add")

    def describe(self) -> dict[str, Any]:
        """The ``classifier`` block of ``audit.json``."""
        return {"backend": self.backend, "model": self.model, "activation": self.activation,
                "labels": {k: list(v) for k, v in self.labels.items()},
                "abstain": {"rule": self.abstain_rule, "min_confidence": self.min_confidence,
                            "no_person_threshold": 0.5 if self.labels.get("none") else None}}

    @property
    def cache_id(self) -> str:
        """Identifies what labels this classifier gives (model, prompts, rule) for the label cache."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Softmax over classes ``[N, C]`` (float32, CPU) for uint8 images ``[N, H, W, 3]``."""
        out = []
        n = len(images)
        for start in range(0, n, self.batch_size):
            x = self.preprocess(images[start:start + self.batch_size]).to(self.device)
            feats = self.encode_images(x).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            logits = self.logit_scale * feats @ self.class_features.to(self.device).T
            out.append(logits.softmax(dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.class_features.shape[0])

    @torch.inference_mode()
    def clip_score(self, images: torch.Tensor | np.ndarray, prompt: str) -> torch.Tensor:
        """CLIP score per image against ``prompt``: 100 · cosine(image, text) (the torchmetrics convention).

        A fix should leave unrelated prompts' images as well matched to their prompt as before; this is
        the number that says so on models where pixels alone cannot (a changed image may still fit).
        """
        if self.encode_text is None:
            raise ValueError(f"classifier {self.model!r} has no text encoder, so it cannot compute CLIP scores")
        text = self.encode_text([prompt]).float().to(self.device)
        text = text / text.norm(dim=-1, keepdim=True)
        out = []
        for start in range(0, len(images), self.batch_size):
            feats = self.encode_images(self.preprocess(images[start:start + self.batch_size]).to(self.device)).float()
            out.append((100.0 * (feats / feats.norm(dim=-1, keepdim=True)) @ text[0]).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def classify(self, images: torch.Tensor | np.ndarray) -> tuple[list[str], torch.Tensor]:
        """Labels ("female" / "male" / "unclear") and p_female per image."""
        return decide(self.probabilities(images), self.min_confidence)


def decide(probs: torch.Tensor, min_confidence: float) -> tuple[list[str], torch.Tensor]:
    """The abstain rule on class probabilities ``[N, C]`` (columns: female, male, none...). Pure."""
    female, male = probs[:, 0], probs[:, 1]
    none = probs[:, 2:].sum(dim=1) if probs.shape[1] > 2 else torch.zeros_like(female)
    p_female = female / (female + male).clamp_min(1e-12)
    confident = torch.maximum(p_female, 1 - p_female) >= min_confidence
    person = none < 0.5
    labels = ["unclear" if not (c and p) else ("female" if pf >= 0.5 else "male")
              for c, p, pf in zip(confident.tolist(), person.tolist(), p_female.tolist())]
    return labels, p_female


def _class_features(encode_text: Callable[[Sequence[str]], torch.Tensor], labels: dict[str, tuple[str, ...]]) -> torch.Tensor:
    rows = []
    for group in ("female", "male"):
        feats = encode_text(list(labels[group])).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        rows.append(mean / mean.norm())
    if labels.get("none"):
        feats = encode_text(list(labels["none"])).float()
        rows.extend(feats / feats.norm(dim=-1, keepdim=True))
    return torch.stack(rows).cpu()


def resolve_labels(female: Sequence[str] | None = None, male: Sequence[str] | None = None,
                   none: Sequence[str] | None = None, *, is_mini: bool = False) -> dict[str, tuple[str, ...]]:
    """Label prompt groups with their defaults; the "no person" group is off unless prompts are given.

    It is off by default because a no-person group can drop one gender more often than the other: on the
    mini model, its object prompts took 77% of cleanly rendered people and, on generated images, 73% of
    those drawn female against 64% of those drawn male, pulling the measured share down. Turn it on with
    prompts that fit the classifier (``DEFAULT_NONE_LABELS`` is a starting point for real CLIP models)
    and check the agreement it gives.
    """
    none = () if none is None else none
    labels = {"female": tuple(female or DEFAULT_LABELS["female"]), "male": tuple(male or DEFAULT_LABELS["male"]),
              "none": tuple(p for p in none if p.strip())}
    for group, option in (("female", "--labels-female"), ("male", "--labels-male")):
        if not all(p.strip() for p in labels[group]):
            raise InputError(f"{option}: an empty label prompt; give prompts like 'a photo of a woman'")
    overlap = set(labels["female"]) & set(labels["male"]) | (set(labels["female"]) | set(labels["male"])) & set(labels["none"])
    if overlap:
        raise InputError(f"label prompt(s) {sorted(overlap)} appear in more than one group; each prompt names one group")
    return labels


# ------------------------------------------------------------------------------------------- loading
def load_classifier(
    spec: str | None = None,
    *,
    is_mini: bool = False,
    labels_female: Sequence[str] | None = None,
    labels_male: Sequence[str] | None = None,
    labels_none: Sequence[str] | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> ZeroShotClassifier:
    """Load a zero-shot classifier from ``spec`` (see the module docstring); ``None`` picks the default."""
    if not 0.5 <= min_confidence < 1.0:
        raise InputError(f"--min-confidence must be in [0.5, 1), got {min_confidence}")
    if spec is None:
        spec = "mini" if is_mini else DEFAULT_REAL_CLASSIFIER
    labels = resolve_labels(labels_female, labels_male, labels_none, is_mini=is_mini or spec == "mini")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if spec.startswith("open_clip:"):
        parts = _load_open_clip(spec, device)
        backend = "open_clip"
    else:
        if spec == "mini":
            from debias.mini import CLASSIFIER_DIR

            source, backend = str(CLASSIFIER_DIR), "mini-clip"
            if not (Path(source) / "config.json").is_file():
                raise ModelLoadError(f"the mini model's classifier is missing at {source}; reinstall debias or "
                                     f"pass --classifier with a CLIP folder")
        else:
            source, backend = spec, "transformers"
        parts = _load_transformers_clip(source, spec, device)
    encode_images, encode_text, preprocess, logit_scale, activation = parts
    with torch.inference_mode():
        feats = _class_features(encode_text, labels)
    return ZeroShotClassifier(backend=backend, model=spec, encode_images=encode_images, preprocess=preprocess,
                              class_features=feats, logit_scale=logit_scale, labels=labels,
                              min_confidence=min_confidence, device=device, batch_size=batch_size,
                              encode_text=encode_text, activation=activation)


def _load_transformers_clip(source: str, spec: str, device: torch.device):
    from transformers import CLIPModel, CLIPTokenizer, CLIPTokenizerFast

    path = Path(os.path.expanduser(source))
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"--classifier {spec!r}: the folder {path} has no config.json, so it is not a "
                             f"transformers CLIP folder (CLIPModel.save_pretrained writes one). {_KEEP_ON_DISK}")
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise ModelLoadError(f"--classifier {spec!r}: no such folder. Pass a CLIP folder, a hub id like "
                             f"'openai/clip-vit-large-patch14', or open_clip:ARCH/PRETRAINED.")
    src = str(path) if path.exists() else source
    unreachable = None if path.exists() else _hub_unreachable(source, "config.json")
    cache_only = {"local_files_only": True} if unreachable else {}
    from debias.models import quiet_loading

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


def _hub_unreachable(repo_id: str, filename: str) -> str | None:
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


def _load_open_clip(spec: str, device: torch.device):
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
        unreachable = _hub_unreachable(repo_id, names[0])
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
