"""What a fix may be told: its options (the search group and its defaults are in :mod:`debias.core.options`), the
constants of its method, and the checks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from debias.core.errors import InputError
from debias.core.options import (  # noqa: F401 - the search defaults are declared with their group
    DEFAULT_ANCHOR_STRENGTH, DEFAULT_BUDGET_PER_CLASS, DEFAULT_CHECK_IMAGES, DEFAULT_JOINT_ROUNDS, DEFAULT_MAX_DRIFT,
    DEFAULT_SIDE_SEEDS, DEFAULT_TEST_IMAGES, ClassifierOptions, GenerationOptions, MemoryOptions, PromptOptions,
    RuntimeOptions, SearchOptions,
)

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


def check_options(prompts: PromptOptions, search: SearchOptions) -> None:
    """Refuse settings a fix cannot run with, before anything loads."""
    target, tolerance, budget = prompts.target, prompts.tolerance, search.budget
    test_images, check_images, joint_rounds = search.test_images, search.check_images, search.joint_rounds
    side_seeds, anchor_strength = search.side_seeds, search.anchor_strength
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
    """Every setting of a fix but the model: its option groups, where it writes, and whether it shows progress.

    The read-only properties below are the fields the engine and the record read most, by their short names."""

    prompts: PromptOptions = PromptOptions()
    generation: GenerationOptions = GenerationOptions()
    classification: ClassifierOptions = ClassifierOptions()
    search: SearchOptions = SearchOptions()
    memory: MemoryOptions = MemoryOptions()
    runtime: RuntimeOptions = RuntimeOptions()
    out: str | os.PathLike = "runs/fix"
    save_pipeline: Optional[str | os.PathLike] = None
    progress: bool = True

    def with_budget_for(self, k: int) -> "FixOptions":
        """The options with the budget filled in for an attribute of ``k`` classes (checked like a given one)."""
        if self.budget is not None:
            return self
        budget = (k - 1) * DEFAULT_BUDGET_PER_CLASS
        if budget < self.check_images + 16 * self.joint_rounds:
            raise InputError(f"the default --budget of {budget} images per profession ({DEFAULT_BUDGET_PER_CLASS} per "
                             f"class beyond the first) leaves fewer than 16 images a round after --check-images "
                             f"{self.check_images} and {self.joint_rounds} rounds: give --budget (at least "
                             f"{self.check_images + 16 * self.joint_rounds}), or fewer --check-images")
        return replace(self, search=replace(self.search, budget=budget))

    @property
    def target(self) -> float:
        return self.prompts.target

    @property
    def tolerance(self) -> float:
        return self.prompts.tolerance

    @property
    def seed(self) -> int:
        return self.generation.seed

    @property
    def tuning_seed(self) -> int:
        return self.seed + TUNING_SEED_OFFSET

    @property
    def budget(self) -> Optional[int]:
        return self.search.budget

    @property
    def test_images(self) -> int:
        return self.search.test_images

    @property
    def check_images(self) -> int:
        return self.search.check_images

    @property
    def joint_rounds(self) -> int:
        return self.search.joint_rounds

    @property
    def preserve(self) -> Any:
        return self.search.preserve

    @property
    def preserve_strength(self) -> float:
        return self.search.preserve_strength

    @property
    def anchor_strength(self) -> Optional[float]:
        return self.search.anchor_strength

    @property
    def max_drift(self) -> Optional[float]:
        return self.search.max_drift
