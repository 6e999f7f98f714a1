"""What a fix may be told: its defaults (and why they are what they are) and the checks on them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from debias.core.errors import InputError

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
# How strongly the joint edit holds each profession's rows at what its own tuned edit gives them, as λ_rel of a ridge
# (chosen by a check without test prompts, see joint_from_pins and benchmarks/joint_pin.py).
JOINT_PIN_LAMBDA_RELATIVE = 0.3
# The tuning side (tuning audit and rounds) draws its seeds from seed + this, the test audits from seed:
# the strengths are judged on seeds as well as prompts they were not tuned on. A seed's starting noise decides much
# of the perceived gender whatever the prompt says: on the built-in model the per-seed count of "female" images over its
# 8 professions has a variance of about 6 where independent draws would give 1.5, and it correlates 0.92 between
# "a photo of …" and the held-out prompts. Tuning on the test seeds would fit their leaning and flatter the result.
TUNING_SEED_OFFSET = 1_000_000

UNEDITED = "already_within_tolerance"
NOT_TARGETED = "not_targeted"  # gender in an attribute fix that does not edit it: measured before and after only


def check_options(target, tolerance, budget, test_images, check_images, joint_rounds, side_seeds,
                   anchor_strength) -> None:
    if not 0.0 < target < 1.0:
        raise InputError(f"--target must be a share strictly between 0 and 1 (an edit can move a share towards it), "
                         f"got {target}")
    if not 0.0 < tolerance < 0.5:
        raise InputError(f"--tolerance must be in (0, 0.5), got {tolerance}")
    for name, value in (("--test-images", test_images), ("--check-images", check_images)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if joint_rounds < 1:
        raise InputError(f"--joint-rounds must be >= 1 (the rounds that tune the strengths), got {joint_rounds}")
    if budget is not None and budget < check_images + 16 * joint_rounds:
        raise InputError(f"--budget is the images per profession on the tuning side (the tuning audit's "
                         f"--check-images {check_images}, then {joint_rounds} rounds); {budget} leaves fewer than 16 "
                         f"images a round: give at least {check_images + 16 * joint_rounds}, or fewer --joint-rounds")
    if side_seeds < 0:
        raise InputError(f"--side-seeds must be >= 0, got {side_seeds}")
    if anchor_strength is not None and not (math.isfinite(anchor_strength) and anchor_strength >= 0):
        raise InputError(f"--anchor-strength must be a finite number >= 0 (0 turns the anchors off), "
                         f"got {anchor_strength}")


def tuning_templates_for(given: Sequence[str] | None, default: Sequence[str], test: Sequence[str]) -> tuple[str, ...]:
    """The templates λ_p is tuned on (``given``, else the profile's ``default``); a held-out ``test`` template
    among them would let the tuning see the final judge."""
    templates = tuple(given or default)
    test_lower = {t.lower() for t in test}
    shared = [t for t in templates if t.lower() in test_lower]
    if shared:
        raise InputError(f"--tuning-templates: {shared[0]!r} is one of the held-out test templates "
                         f"({', '.join(repr(t) for t in test)}); tuning on it would grade the fix on prompts it "
                         "was tuned on. Choose validation templates that the test set does not contain.")
    return templates


@dataclass(frozen=True)
class FixOptions:
    """Every setting of a fix but the model (see :func:`debias.fix` for what each means)."""

    professions: Any = None
    out: str | os.PathLike = "runs/fix"
    target: float = 0.5
    tolerance: float = 0.05
    budget: Optional[int] = None  # None: DEFAULT_BUDGET_PER_CLASS per class beyond the first
    test_images: int = DEFAULT_TEST_IMAGES
    check_images: int = DEFAULT_CHECK_IMAGES
    joint_rounds: int = DEFAULT_JOINT_ROUNDS
    tuning_templates: Optional[Sequence[str]] = None
    templates: Optional[Sequence[str]] = None  # the held-out test templates (default: the profile's)
    preserve: Any = None
    preserve_strength: float = 1.0
    anchor_strength: Optional[float] = None  # None: the model profile's (DEFAULT_ANCHOR_STRENGTH unless it says)
    side_prompts: Optional[Sequence[str]] = None
    side_seeds: int = DEFAULT_SIDE_SEEDS
    seed: int = 0
    classifier: Any = None
    labels_female: Optional[Sequence[str]] = None
    labels_male: Optional[Sequence[str]] = None
    labels_none: Optional[Sequence[str]] = None
    min_confidence: Optional[float] = None  # 0.6 unless a saved fixed model records another
    steps: Optional[int] = None
    guidance: Optional[float] = None
    height: Optional[int] = None
    width: Optional[int] = None
    device: Optional[str] = None
    dtype: Any = None
    memory: Any = None  # debias.core.memory.MemoryOptions: offload, VAE tiling/slicing, attention slicing, adaptive batch
    batch_size: Optional[int] = None
    threads: Optional[int] = None
    save_pipeline: Optional[str | os.PathLike] = None
    allow_pickle: bool = False
    max_drift: Optional[float] = DEFAULT_MAX_DRIFT
    progress: bool = True

    def run_options(self):
        """The options a fix shares with an audit (classifier, labels, sampler, batch size)."""
        from debias.core.setup import RunOptions

        from debias.verbs.audit import split_classifiers

        return RunOptions(split_classifiers(self.classifier)[0], self.labels_female, self.labels_male, self.labels_none,
                          self.min_confidence, self.steps, self.guidance, self.height, self.width, self.batch_size)

    def with_budget_for(self, k: int) -> "FixOptions":
        """The options with the budget filled in for an attribute of ``k`` classes (checked like a given one)."""
        from dataclasses import replace

        if self.budget is not None:
            return self
        budget = (k - 1) * DEFAULT_BUDGET_PER_CLASS
        if budget < self.check_images + 16 * self.joint_rounds:
            raise InputError(f"the default --budget of {budget} images per profession ({DEFAULT_BUDGET_PER_CLASS} per "
                             f"class beyond the first) leaves fewer than 16 images a round after --check-images "
                             f"{self.check_images} and {self.joint_rounds} rounds: give --budget (at least "
                             f"{self.check_images + 16 * self.joint_rounds}), or fewer --check-images")
        return replace(self, budget=budget)

    @property
    def tuning_seed(self) -> int:
        return self.seed + TUNING_SEED_OFFSET
