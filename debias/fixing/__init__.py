"""The fix verb: edit a model so that each listed profession reaches its target share on held-out prompts.

Steps (each cached in the run folder, so an interrupted run redoes nothing finished)::

    before   audit every profession on the held-out test prompts (before/) and on the tuning prompts (tuning/:
             validation templates that neither the edit nor the test set contains); the tuning side (this audit,
             the search, the joint rounds) uses seeds disjoint from the test seeds (TUNING_SEED_OFFSET)
    choose   destination towards the side under-represented on the tuning prompts: "a male X" when F > t,
             "a female X" when F < t; a profession already within tolerance there is left unedited
    search   λ_p per profession on the tuning prompts pooled (debias.search), each candidate tried through
             conditioning_transform (no weight written), the same seeds (and prompts) at every λ
    joint    one M for all professions, each pinned to what its own edit gives it (+ anchors and preserve rows,
             c* = c); re-measure every profession under it on the tuning prompts with fresh seeds each round and
             re-tune the strengths against cross-effects from all rounds pooled
    after    audit the test prompts with the same seeds under the final edit as it ships (the edit file loaded
             into the weights; after/); side effects on unrelated prompts (mean absolute pixel change)
    outputs  edit.safetensors (UCE-compatible keys), fix.json, and optionally a full diffusers folder

Images and labels live in one cache (``out/images``, ``out/index``) keyed by model, edit matrix,
sampler, prompt and seed; finished searches are stored in ``out/search/``. Running the same command
twice gives the same λs and numbers.

Modules: :mod:`~debias.fixing.options` (defaults and checks), :mod:`~debias.fixing.plan` (each profession's
state and edit math), :mod:`~debias.fixing.steps` (the steps above), :mod:`~debias.fixing.record` (``fix.json``)
and :mod:`~debias.fixing.verb` (:func:`fix`, which runs the steps in order).
"""

from debias.fixing.options import (
    DEFAULT_ANCHOR_STRENGTH, DEFAULT_BUDGET, DEFAULT_CHECK_IMAGES, DEFAULT_JOINT_ROUNDS, DEFAULT_MAX_DRIFT,
    DEFAULT_SIDE_SEEDS, DEFAULT_TEST_IMAGES, JOINT_PIN_LAMBDA_RELATIVE, TUNING_SEED_OFFSET, FixOptions,
)
from debias.fixing.plan import anchor_prompts_for, destination_phrase
from debias.fixing.record import image_counts
from debias.fixing.verb import fix

__all__ = [
    "DEFAULT_ANCHOR_STRENGTH", "DEFAULT_BUDGET", "DEFAULT_CHECK_IMAGES", "DEFAULT_JOINT_ROUNDS", "DEFAULT_MAX_DRIFT",
    "DEFAULT_SIDE_SEEDS", "DEFAULT_TEST_IMAGES", "JOINT_PIN_LAMBDA_RELATIVE", "TUNING_SEED_OFFSET", "FixOptions",
    "anchor_prompts_for", "destination_phrase", "fix", "image_counts",
]
