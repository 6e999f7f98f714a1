"""Named model profiles: what differs by model family, in one place.

A profile holds the defaults an audit and a fix take when the user says nothing: the sampler (scheduler,
steps, guidance, image size), the batch size, the prompt templates (tuning and held-out test), the default
professions, the side-effect prompts, the edit's augmentation templates, the default classifier, and, for a
synthetic world, oracles that read ground truth from pixels (``oracle`` for gender, ``oracles`` by
attribute name for the others, :meth:`Profile.oracle_for`). The stages ask the profile; none of them
knows which family it is running.

Profiles register themselves with :func:`register_profile`. ``"default"`` (the Stable Diffusion family's
settings, TIMED's professions and templates) is defined here; the built-in mini model's profile lives in
``debias.mini.profile`` and is imported the first time a profile is looked up, so no generic module imports
the mini model. A built-in model's profile names the folder its weights load from (``builtin_folder``): that
is how ``--model mini`` finds its pipeline and how a pipeline loaded from that folder is recognised.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from debias.core.errors import InputError
from debias.core.prompts import TIMED_TEMPLATES, timed_professions

# modules that define built-in profiles; imported on the first lookup (each calls register_profile)
_BUILTIN_MODULES = ("debias.mini.profile",)
_REGISTRY: dict[str, "Profile"] = {}
DEFAULT_MODEL = "mini"  # the model the verbs use when none is named: the built-in one, which works offline
_loaded = False

# TIME's augmentation templates: an edit of "a nurse" also edits it inside these (Orgad et al., 2023)
DEFAULT_AUGMENTATIONS: tuple[str, ...] = ("A photo of {}", "An image of {}", "A picture of {}")
# unrelated prompts whose images the side-effect check compares before and after an edit
DEFAULT_SIDE_PROMPTS = (
    "a photo of an apple", "a photo of a car", "a photo of a tree", "a photo of a house", "a bowl of fruit on a table",
    "a city street at night", "a mountain landscape", "a cup of coffee", "a red bicycle", "a sailing boat on the sea",
)


def _timed_templates():
    return TIMED_TEMPLATES


def _timed_professions() -> list:
    return timed_professions()


@dataclass(frozen=True)
class Sampler:
    """The sampling defaults of a family; ``height``/``width`` None: the pipeline's native size; ``scheduler``
    None: the pipeline's own (SD3's and FLUX's flow-matching Euler scheduler)."""

    scheduler: str | None = "DPMSolverMultistepScheduler"
    steps: int = 25
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int | None = None  # None: chosen from the device and image size (generate.default_batch_size)
    text_length: int | None = None  # T5 tokens (max_sequence_length) where the card names them; None: the pipeline's


@dataclass(frozen=True)
class Profile:
    """The defaults of one model family. Callables are called when needed, so defining a profile loads nothing."""

    name: str
    description: str
    sampler: Sampler = field(default_factory=Sampler)
    classifier: str = "open_clip:ViT-L-14/openai"
    templates: Callable[[], Any] = _timed_templates  # () -> prompts.TemplateSet (tuning, test)
    professions: Callable[[], list] = _timed_professions  # () -> list[prompts.ProfessionEntry]
    side_prompts: tuple[str, ...] = DEFAULT_SIDE_PROMPTS
    augmentations: tuple[str, ...] = DEFAULT_AUGMENTATIONS
    half_precision_on_gpu: bool = True  # half precision by default on a GPU (tiny weights gain nothing from it)
    half_dtype: str = "float16"  # which: FLUX.1 is made and released in bfloat16 (float16 overflows in it)
    # the weight of the fix's anchors (bare templates, empty prompt) against one edit row when --anchor-strength
    # is not given; None: the fix's own default (debias.fixing.DEFAULT_ANCHOR_STRENGTH); MMDiT families take less
    anchor_strength: Optional[float] = None
    oracle: Optional[Callable[[list], list[str]]] = None  # images -> "female" | "male" | "unclear", ground truth
    # more ground truths by attribute name: images -> one of the attribute's classes or "unclear" per image
    # (e.g. {"skin": world.oracle_skin}); an attribute without one simply has no oracle counts
    oracles: Mapping[str, Callable[[list], list[str]]] = field(default_factory=dict, hash=False)
    planted_share: Optional[Callable[[str], Optional[float]]] = None  # phrase -> the share the world planted
    builtin_folder: Optional[Callable[[], Path]] = None  # a built-in model: the folder ``--model NAME`` loads
    classifier_folder: Optional[Callable[[], Path]] = None  # its CLIP: the folder ``--classifier NAME`` loads
    pipeline_classes: tuple[str, ...] = ()  # diffusers pipeline classes the profile is for (chosen for them)
    recognises: Optional[Callable[[Any], bool]] = None  # pipe -> True: tells variants of one class apart

    def template_set(self):
        return self.templates()

    def oracle_for(self, attribute: str) -> Optional[Callable[[list], list[str]]]:
        """The ground truth of ``attribute`` this world can read from pixels, or None (``oracle`` is gender's)."""
        if attribute == "gender" and self.oracle is not None:
            return self.oracle
        return self.oracles.get(attribute)

    def default_professions(self) -> list:
        return self.professions()


def register_profile(profile: Profile) -> Profile:
    """Make ``profile`` available by name (a later registration of the same name replaces it)."""
    _REGISTRY[profile.name] = profile
    return profile


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def get_profile(name: str) -> Profile:
    """The profile registered as ``name``; the error lists the names there are."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown model profile {name!r}; known profiles: {', '.join(profile_names())}") from None


def profile_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def builtin_model(spec: str) -> Profile | None:
    """The profile of a built-in model named ``spec`` (e.g. ``"mini"``), or None when ``spec`` names none."""
    _load_builtins()
    profile = _REGISTRY.get(spec)
    return profile if profile is not None and profile.builtin_folder is not None else None


def builtin_names() -> list[str]:
    """The names of the built-in models (``--model NAME`` loads them offline)."""
    _load_builtins()
    return sorted(name for name, p in _REGISTRY.items() if p.builtin_folder is not None)


def profile_of_folder(folder: str | os.PathLike) -> Profile | None:
    """The built-in model whose weights are in ``folder``, or None."""
    _load_builtins()
    path = Path(os.path.expanduser(str(folder))).resolve()
    for profile in _REGISTRY.values():
        if profile.builtin_folder is not None and profile.builtin_folder().resolve() == path:
            return profile
    return None


def profiles_of_class(class_name: str) -> list[Profile]:
    """The profiles made for a diffusers pipeline class (before a pipeline is loaded, only its class is known)."""
    _load_builtins()
    return [p for p in _REGISTRY.values() if class_name in p.pipeline_classes]


def profile_of_pipeline(pipe) -> Profile | None:
    """The first registered profile made for ``pipe``'s class (``pipeline_classes``) that recognises it
    (``recognises``, e.g. FLUX.1-dev by its embedded guidance), or None: ``--model
    stabilityai/stable-diffusion-3.5-large`` takes its family's sampler without naming a profile."""
    _load_builtins()
    name = type(pipe).__name__
    for profile in _REGISTRY.values():
        if name in profile.pipeline_classes and (profile.recognises is None or profile.recognises(pipe)):
            return profile
    return None


register_profile(Profile(
    name="default",
    description="Stable Diffusion family (SD 1.x, 2.x, SDXL, PixArt-α): DPM-Solver++ 25 steps, guidance 7.5, "
                "native size; TIMED's professions and templates; OpenAI CLIP ViT-L/14",
))


# ------------------------------------------------------------------------------------------------------------
# MMDiT families: each keeps its pipeline's flow-matching scheduler (scheduler None) and takes the steps and
# guidance of its model card; the first profile of a class that recognises a pipeline is chosen for it.
# ------------------------------------------------------------------------------------------------------------


# Anchors at 100 pin an MMDiT edit: T5 is bidirectional and its padding rows, which SD3 and FLUX read unmasked,
# lie close to a prompt's own rows. On the tiny SD3 and FLUX pipelines (benchmarks/mmdit_anchors.py: 4 professions,
# 3 held-out templates, 6 unrelated prompts), anchors at 100 let an edit at λ_rel 0.01 move held-out prompts 5%
# (SD3) of the way to their destination; at 10, 32% (SD3) and 73% (FLUX), with the best ratio of that move to
# the move of unrelated prompts of all the weights tried (SD3 1.2–1.5 against 0.9 without anchors, FLUX 0.6–0.9
# against 0.6). Random tiny weights say how the rows interact, not how a real model responds: the side-effect
# check of every fix is what judges a real one.
MMDIT_ANCHOR_STRENGTH = 10.0


def _transformer_config(pipe, key: str, default: Any = None) -> Any:
    return getattr(getattr(getattr(pipe, "transformer", None), "config", None), key, default)


def _mmdit_profile(name: str, description: str, steps: int, guidance: float, pipeline_class: str,
                   recognises: Optional[Callable[[Any], bool]] = None, half_dtype: str = "float16",
                   text_length: Optional[int] = None) -> Profile:
    return register_profile(Profile(
        name=name, description=f"{description}: its flow-matching scheduler, {steps} steps, guidance {guidance:g}, "
                               "native size; TIMED's professions and templates; OpenAI CLIP ViT-L/14",
        sampler=Sampler(scheduler=None, steps=steps, guidance=guidance, text_length=text_length),
        pipeline_classes=(pipeline_class,),
        recognises=recognises, anchor_strength=MMDIT_ANCHOR_STRENGTH, half_dtype=half_dtype,
    ))


# https://huggingface.co/stabilityai/stable-diffusion-3.5-large-turbo (model card, diffusers example):
# num_inference_steps=4, guidance_scale=0.0. Its weights' config equals 3.5 Large's, so only the name tells.
_mmdit_profile("sd3.5-large-turbo", "Stable Diffusion 3.5 Large Turbo", 4, 0.0, "StableDiffusion3Pipeline",
               lambda pipe: "turbo" in str(getattr(pipe, "name_or_path", "") or "").lower())
# https://huggingface.co/stabilityai/stable-diffusion-3.5-medium (model card, diffusers example):
# num_inference_steps=40, guidance_scale=4.5. MMDiT-X: self-attention in its first layers (dual_attention_layers).
_mmdit_profile("sd3.5-medium", "Stable Diffusion 3.5 Medium", 40, 4.5, "StableDiffusion3Pipeline",
               lambda pipe: bool(_transformer_config(pipe, "dual_attention_layers", ())))
# https://huggingface.co/docs/diffusers/api/pipelines/stable_diffusion/stable_diffusion_3 (usage example for
# stabilityai/stable-diffusion-3-medium-diffusers): num_inference_steps=28, guidance_scale=7.0. No QK norm (3.5 has).
_mmdit_profile("sd3-medium", "Stable Diffusion 3 Medium", 28, 7.0, "StableDiffusion3Pipeline",
               lambda pipe: _transformer_config(pipe, "qk_norm") is None)
# https://huggingface.co/stabilityai/stable-diffusion-3.5-large (model card, diffusers example):
# num_inference_steps=28, guidance_scale=3.5. Any other SD3-class pipeline takes these.
_mmdit_profile("sd3.5-large", "Stable Diffusion 3.5 Large (and other SD3 pipelines)", 28, 3.5,
               "StableDiffusion3Pipeline")
# https://huggingface.co/black-forest-labs/FLUX.1-schnell and diffusers' Flux docs (timestep-distilled):
# guidance_scale=0.0, num_inference_steps=4 (max_sequence_length=256). No guidance embedding.
# Both FLUX.1 cards load it with torch_dtype=torch.bfloat16.
_mmdit_profile("flux.1-schnell", "FLUX.1 [schnell]", 4, 0.0, "FluxPipeline",
               lambda pipe: not _transformer_config(pipe, "guidance_embeds", False), half_dtype="bfloat16",
               text_length=256)
# https://huggingface.co/black-forest-labs/FLUX.1-dev and diffusers' Flux docs (guidance-distilled):
# guidance_scale=3.5 (embedded guidance, not classifier-free), num_inference_steps=50.
_mmdit_profile("flux.1-dev", "FLUX.1 [dev] (and other guidance-distilled FLUX.1 pipelines)", 50, 3.5, "FluxPipeline",
               half_dtype="bfloat16")
