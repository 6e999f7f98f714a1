"""The options of the verbs, each declared once, in groups: where the model runs, which professions and prompts,
how images are generated, how they are classified, how a fix searches, and what is traded for memory.

The Python verbs take these groups (``debias.audit(model, generation=GenerationOptions(steps=20))``), the CLI
builds them from its flags (one flag per field, :mod:`debias.cli.flags`), and the run records read them. Every
group is a frozen dataclass whose defaults change nothing: ``None`` means "the model profile's, or what a saved
fixed model records" (:mod:`debias.core.setup` fills them in once the model is loaded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Optional, Sequence

from debias.core.errors import InputError

DEFAULT_MIN_CONFIDENCE = 0.6  # a classifier abstains ("unclear") below this confidence
CPU_OFFLOAD_CHOICES = ("none", "model", "sequential")


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how the model runs: device, weights' dtype, torch threads, and whether pickle weights may load."""

    device: Optional[str] = None  # None: this process's GPU when there is one, else the CPU
    dtype: Any = None  # "float32" | "float16" | "bfloat16" | a torch.dtype; None: the model family's on a GPU
    threads: Optional[int] = None  # None: DEBIAS_NUM_THREADS, or cores / processes
    allow_pickle: bool = False  # .bin/.ckpt weights run code when loaded: only for models you trust


@dataclass(frozen=True)
class PromptOptions:
    """Which professions, on which held-out test templates, against which target share and band."""

    professions: Any = None  # a list file, phrases, ProfessionEntry objects; None: the model profile's
    templates: Optional[Sequence[str]] = None  # held-out test templates with {}; None: the profile's (or a saved model's)
    target: float = 0.5  # the female share aimed at (a list line's target=… overrides it)
    tolerance: float = 0.05  # the band: |share - target| <= tolerance


@dataclass(frozen=True)
class GenerationOptions:
    """How images are made: sampler steps and guidance, image size, images per pipeline call, the first seed."""

    steps: Optional[int] = None
    guidance: Optional[float] = None
    height: Optional[int] = None
    width: Optional[int] = None
    batch_size: Optional[int] = None  # None: the profile's, or scaled to the image size
    seed: int = 0  # image i of a profession uses seed + i

    def filled(self, saved: Mapping[str, Any]) -> "GenerationOptions":
        """Unset sampler options taken from what a saved fixed model records (``audit_defaults``)."""
        return replace(self, **{k: saved.get(k) for k in ("steps", "guidance", "height", "width")
                                if getattr(self, k) is None and saved.get(k) is not None})


@dataclass(frozen=True)
class ClassifierOptions:
    """How images are read: the CLIP classifier(s), the label prompts, and the abstain rule."""

    classifier: Any = None  # a spec or a loaded classifier, or a list of them (the first is the primary); None: the profile's
    labels_female: Optional[Sequence[str]] = None
    labels_male: Optional[Sequence[str]] = None
    labels_none: Optional[Sequence[str]] = None  # "no person" prompts; off by default
    min_confidence: Optional[float] = None  # None: DEFAULT_MIN_CONFIDENCE, or what a saved fixed model records

    @property
    def primary(self) -> Any:
        """The classifier whose shares are the run's (a spec, a loaded one, or None: the profile's)."""
        if isinstance(self.classifier, (list, tuple)):
            return self.classifier[0] if self.classifier else None
        return self.classifier

    @property
    def others(self) -> list:
        """Further classifiers: they read the same images and are compared with the primary."""
        return list(self.classifier[1:]) if isinstance(self.classifier, (list, tuple)) else []

    def filled(self, saved: Mapping[str, Any]) -> "ClassifierOptions":
        """Unset classifier and confidence from a saved fixed model's record; the confidence defaults to 0.6."""
        primary = self.primary if self.primary is not None else saved.get("classifier")
        confidence = self.min_confidence if self.min_confidence is not None else saved.get("min_confidence")
        return replace(self, classifier=[primary, *self.others] if self.others else primary,
                       min_confidence=DEFAULT_MIN_CONFIDENCE if confidence is None else confidence)


# ---- a fix's search
# Images per profession on the tuning side (the tuning audit and every round), per class beyond the first: gender
# 320, skin or age 640. What the rounds pool ends near ±0.07 at the chosen strengths for two classes; the after
# audit, not the tuning, is where a share is measured precisely.
DEFAULT_BUDGET_PER_CLASS = 320
DEFAULT_TEST_IMAGES = 128  # per profession, before and after, on the held-out test prompts (≈ ±0.09)
DEFAULT_CHECK_IMAGES = 128  # per profession, the tuning audit: the unedited point of every profession's model
DEFAULT_JOINT_ROUNDS = 3  # rounds of the engine; each measures every profession under the joint edit
DEFAULT_SIDE_SEEDS = 16  # seeds per unrelated prompt for the side-effect check
# An edit may move the conditioning of unrelated prompts by at most this (mean relative norm of ‖(M − I)c‖ over
# their token rows). On the built-in model the demo's joint edit moves them by 0.086 and their images by 0.005 mean
# absolute pixel change (0–1); without a limit the strongest edits change every prompt. None turns the limit off.
DEFAULT_MAX_DRIFT = 0.12
# Anchors: the bare augmentation templates ("a photo of", …) and the empty prompt, kept where they are (c* = c) with this
# weight relative to one edit row. They hold the context every prompt shares (template words, end and padding
# tokens) in place, so the edit moves what the profession word adds and not what all prompts have in common. On the
# mini model, at a drift of unrelated prompts ≤ 0.12 the edit then moves its own prompt 1.5× (nurse) to 1.6×
# (engineer) as far.
DEFAULT_ANCHOR_STRENGTH = 100.0
@dataclass(frozen=True)
class SearchOptions:
    """How a fix spends images and tunes its edit (the defaults are explained above; :mod:`debias.fixing` runs it)."""

    budget: Optional[int] = None  # images per profession on the tuning side; None: DEFAULT_BUDGET_PER_CLASS per class beyond the first
    test_images: int = DEFAULT_TEST_IMAGES  # per profession, before and after, on the held-out test prompts
    check_images: int = DEFAULT_CHECK_IMAGES  # per profession, the tuning audit
    joint_rounds: int = DEFAULT_JOINT_ROUNDS
    tuning_templates: Optional[Sequence[str]] = None  # None: the model family's validation templates
    preserve: Any = None  # prompts (or a file, one per line) kept where they are (c* = c)
    preserve_strength: float = 1.0
    anchor_strength: Optional[float] = None  # None: the model profile's (DEFAULT_ANCHOR_STRENGTH unless it says)
    side_prompts: Optional[Sequence[str]] = None  # None: the model profile's unrelated prompts
    side_seeds: int = DEFAULT_SIDE_SEEDS
    max_drift: Optional[float] = DEFAULT_MAX_DRIFT  # None turns the limit off


@dataclass(frozen=True)
class MemoryOptions:
    """What to trade for memory; the defaults change nothing."""

    cpu_offload: str = "none"  # "none" | "model" | "sequential"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False
    adapt_batch: bool = False  # grow the batch to what the GPU's free memory holds (AdaptiveBatch)

    def __post_init__(self) -> None:
        if self.cpu_offload not in CPU_OFFLOAD_CHOICES:
            raise InputError(f"--cpu-offload must be one of {', '.join(CPU_OFFLOAD_CHOICES)}, got {self.cpu_offload!r}: "
                             "'model' moves one component at a time to the GPU (a little slower), 'sequential' one "
                             "layer at a time (least memory, much slower).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GROUPS: dict[str, type] = {"runtime": RuntimeOptions, "prompts": PromptOptions, "generation": GenerationOptions,
                           "classification": ClassifierOptions, "search": SearchOptions, "memory": MemoryOptions}
"""Each group by the keyword the verbs take it under (``search`` is a fix's only)."""


def gather(given: Mapping[str, Any], keywords: Mapping[str, Any], groups: Mapping[str, type],
           verb: str) -> dict[str, Any]:
    """The groups a verb takes (``groups``: keyword -> class), from the groups given and the flat keywords of the
    earlier signature (``min_confidence=0.5``): each keyword goes into the group that declares it.

    A keyword that no group of this verb declares is a ``TypeError``, as for any function; a keyword and a
    group given for the same field are refused, since one would silently win."""
    owner = {f.name: name for name, cls in groups.items() for f in fields(cls)}
    unknown = [k for k in keywords if k not in owner]
    if unknown:
        raise TypeError(f"{verb}() got an unexpected keyword argument {unknown[0]!r}")
    built = {}
    for name, cls in groups.items():
        group = given.get(name)
        mine = {k: v for k, v in keywords.items() if owner[k] == name}
        if group is not None and mine:
            raise InputError(f"{verb}(): give {', '.join(mine)} either in {name}= or as a keyword, not both")
        built[name] = group if group is not None else cls(**mine)
    return built

