"""CLIP zero-shot reading of *perceived* gender in generated images, with an abstain rule.

Each image is compared with label prompts: a "female" group (default "a photo of a woman"), a "male"
group (default "a photo of a man") and an optional "no person" group (off by default, see
:func:`resolve_labels`). Several prompts in the female or male
group are paraphrases, so they are averaged the way CLIP ensembles prompts (mean of the normalised
text embeddings); prompts in the "no person" group describe different things (an apple, a car), so
each is its own class and their probabilities add up. With ``P`` the softmax over all classes::

    p_female = P(female) / (P(female) + P(male))
    unclear   if P(no person) ≥ ½   or   max(p_female, 1 − p_female) < min_confidence

Unclear images are excluded from the share and reported (see :mod:`debias.stats.binary`); the rule and its
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
* a built-in model's name — the CLIP its profile ships (a transformers CLIP folder; see :mod:`debias.core.profiles`).

The MLP activation the built model runs is recorded in ``describe()`` (the ``classifier`` block of
``audit.json``). A classifier that is not a local folder or file is read from the Hugging Face cache
alone when one request shows the hub cannot be reached, so an offline machine gets the error at once
instead of after huggingface_hub's retries.

Other attributes (:mod:`debias.core.attributes`: skin, age, attribute files) are read by
:meth:`ZeroShotClassifier.for_attribute`, an :class:`AttributeClassifier` on the same loaded CLIP: each
class's prompts averaged the same way, the same "no person" prompts and ``min_confidence``, and the
k-class rule :func:`decide_classes` (unclear if P(no person) ≥ ½ or the top class's share of the
classes' probability is below min_confidence; at k = 2 it is gender's rule).

Images go in as uint8 ``[N, H, W, 3]`` arrays or tensors (exactly the pixels of the saved PNGs) and
are preprocessed with tensor operations (resize shortest side, centre crop, normalise).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from debias.classify.clip_backends import Preprocess, builtin_classifier, load_open_clip, load_transformers_clip
from debias.core.attributes import Attribute
from debias.core.errors import InputError
from debias.core.options import DEFAULT_MIN_CONFIDENCE, ClassifierOptions

DEFAULT_REAL_CLASSIFIER = "open_clip:ViT-L-14/openai"
DEFAULT_LABELS = {"female": ("a photo of a woman",), "male": ("a photo of a man",)}
DEFAULT_NONE_LABELS = ("a photo of an object", "a photo of a landscape", "a photo of an animal", "a photo of a building")
"""Suggested "no person" prompts for real CLIP models (``--labels-none``); not used unless given."""

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

    @torch.inference_mode()
    def image_features(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Normalised image features ``[N, D]`` (float32, CPU): what every attribute's classes are compared with,
        so an audit of several attributes encodes each image once."""
        out = []
        for start in range(0, len(images), self.batch_size):
            feats = self.encode_images(self.preprocess(images[start:start + self.batch_size]).to(self.device)).float()
            out.append((feats / feats.norm(dim=-1, keepdim=True)).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.class_features.shape[1])

    def for_attribute(self, attribute: Attribute) -> "AttributeClassifier":
        """A zero-shot classifier of ``attribute``'s classes on this classifier's CLIP (nothing is loaded again).

        Its classes' prompts come from the attribute; its "no person" prompts and ``min_confidence`` are this
        classifier's, so an image one abstains on as "no person" the other does too.
        """
        if self.encode_text is None:
            raise InputError(f"classifier {self.model!r} has no text encoder, so it cannot read the attribute "
                             f"{attribute.name!r}; use a CLIP classifier (--classifier)")
        groups = {c.name: c.labels for c in attribute.classes}
        with torch.inference_mode():
            feats = _group_features(self.encode_text, groups, attribute.class_names, self.labels.get("none", ()))
        return AttributeClassifier(attribute=attribute, parent=self, class_features=feats)


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
    return _group_features(encode_text, labels, ("female", "male"), labels.get("none", ()))


def _group_features(encode_text: Callable[[Sequence[str]], torch.Tensor], labels: dict[str, tuple[str, ...]],
                    groups: Sequence[str], none: Sequence[str]) -> torch.Tensor:
    """One row per group (its prompts' normalised embeddings averaged, renormalised), then one per "none" prompt."""
    rows = []
    for group in groups:
        feats = encode_text(list(labels[group])).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        rows.append(mean / mean.norm())
    if none:
        feats = encode_text(list(none)).float()
        rows.extend(feats / feats.norm(dim=-1, keepdim=True))
    return torch.stack(rows).cpu()


# ------------------------------------------------------------------------------------ k-class attributes
def decide_classes(probs: torch.Tensor, classes: Sequence[str], min_confidence: float) -> tuple[list[str], torch.Tensor]:
    """The k-class abstain rule on probabilities ``[N, k + m]`` (the k classes, then m "none" prompts). Pure.

    With ``p_c = P(c) / Σ_classes P`` an image is its top class, or "unclear" when ``max_c p_c < min_confidence``
    or ``P(no person) ≥ ½``. At k = 2 it is :func:`decide`'s rule (max(p_female, 1 − p_female) is the top class's
    p). Returns the labels and ``p`` ``[N, k]``.
    """
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] < k:
        raise ValueError(f"need probabilities [N, >= {k}] for {k} classes, got {tuple(probs.shape)}")
    within = probs[:, :k]
    none = probs[:, k:].sum(dim=1) if probs.shape[1] > k else torch.zeros(len(probs), dtype=probs.dtype)
    p = within / within.sum(dim=1, keepdim=True).clamp_min(1e-12)
    top, index = p.max(dim=1)
    labels = ["unclear" if t < min_confidence or n >= 0.5 else classes[i]
              for t, n, i in zip(top.tolist(), none.tolist(), index.tolist())]
    return labels, p


@dataclass
class AttributeClassifier:
    """Zero-shot reading of one attribute's k classes on a loaded :class:`ZeroShotClassifier`'s CLIP.

    Each class's prompts are averaged as normalised text embeddings (as gender's are); the parent's "no person"
    prompts are separate classes; :func:`decide_classes` is the abstain rule.
    """

    attribute: Attribute
    parent: ZeroShotClassifier
    class_features: torch.Tensor  # [k + m, D]: the classes in the attribute's order, then the "none" prompts

    @property
    def classes(self) -> tuple[str, ...]:
        return self.attribute.class_names

    @property
    def min_confidence(self) -> float:
        return self.parent.min_confidence

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        return {**self.attribute.labels(), "none": tuple(self.parent.labels.get("none", ()))}

    @property
    def abstain_rule(self) -> str:
        none = " P(no person) >= 0.5, or" if self.labels["none"] else ""
        return (f"unclear if{none} max_c p_c < min_confidence, where p_c = P(c) / sum of P over the "
                f"{self.attribute.k} classes from a softmax over CLIP similarities; each class's prompts are averaged "
                f"as normalised text embeddings, 'none' prompts are separate classes whose probabilities add")

    def describe(self) -> dict[str, Any]:
        """The ``classifier`` block of an attribute's section of ``audit.json``."""
        return {"attribute": self.attribute.name, "backend": self.parent.backend, "model": self.parent.model,
                "activation": self.parent.activation, "labels": {k: list(v) for k, v in self.labels.items()},
                "abstain": {"rule": self.abstain_rule, "min_confidence": self.min_confidence,
                            "no_person_threshold": 0.5 if self.labels["none"] else None}}

    @property
    def cache_id(self) -> str:
        """Identifies what labels this classifier gives (attribute, prompts, model, rule) in the label cache."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    def classify_features(self, features: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Labels (a class or "unclear") and ``p`` ``[N, k]`` from the parent's normalised image features."""
        logits = self.parent.logit_scale * features.float() @ self.class_features.T
        return decide_classes(logits.softmax(dim=-1), self.classes, self.min_confidence)

    def classify(self, images: torch.Tensor | np.ndarray) -> tuple[list[str], torch.Tensor]:
        return self.classify_features(self.parent.image_features(images))


def resolve_labels(female: Sequence[str] | None = None, male: Sequence[str] | None = None,
                   none: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
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
    options: ClassifierOptions = ClassifierOptions(),
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> ZeroShotClassifier:
    """Load a zero-shot classifier from ``spec`` (see the module docstring; ``None`` picks the default) with the
    label prompts and abstain rule of ``options`` (its ``classifier`` is not read: ``spec`` names the one to load)."""
    min_confidence = DEFAULT_MIN_CONFIDENCE if options.min_confidence is None else options.min_confidence
    if not 0.5 <= min_confidence < 1.0:
        raise InputError(f"--min-confidence must be in [0.5, 1), got {min_confidence}")
    spec = spec or DEFAULT_REAL_CLASSIFIER
    labels = resolve_labels(options.labels_female, options.labels_male, options.labels_none)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if spec.startswith("open_clip:"):
        parts = load_open_clip(spec, device)
        backend = "open_clip"
    else:
        source, backend = builtin_classifier(spec) or (spec, "transformers")
        parts = load_transformers_clip(source, spec, device)
    encode_images, encode_text, preprocess, logit_scale, activation = parts
    with torch.inference_mode():
        feats = _class_features(encode_text, labels)
    return ZeroShotClassifier(backend=backend, model=spec, encode_images=encode_images, preprocess=preprocess,
                              class_features=feats, logit_scale=logit_scale, labels=labels,
                              min_confidence=min_confidence, device=device, batch_size=batch_size,
                              encode_text=encode_text, activation=activation)


# ---------------------------------------------------------------------------------------- a run's choice
def classifier_for(model, spec: Any, options: ClassifierOptions) -> ZeroShotClassifier:
    """A loaded classifier passes through; a spec (or None: the model profile's) loads on the pipeline's device
    with ``options``' labels and abstain rule. ``model`` is a :class:`debias.core.setup.LoadedModel`."""
    if spec is not None and not isinstance(spec, str):
        return spec
    device = getattr(model.pipe, "device", None)
    return load_classifier(spec or model.profile.classifier, options,
                           device=device if isinstance(device, torch.device) else None)


def load_classifiers(model, options: ClassifierOptions) -> tuple[ZeroShotClassifier, list[ZeroShotClassifier]]:
    """The primary classifier and the others (same labels and abstain rule), refusing one listed twice."""
    primary = classifier_for(model, options.primary, options)
    others = [classifier_for(model, spec, options) for spec in options.others]
    seen = {primary.cache_id}
    for other in others:
        if other.cache_id in seen:
            raise InputError(f"--classifier {other.describe().get('model')!r} is given twice; list each classifier "
                             "once (the first is the primary, the others are compared with it).")
        seen.add(other.cache_id)
    return primary, others
