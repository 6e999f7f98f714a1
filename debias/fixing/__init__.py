"""The fix's library: edit a model so that each listed profession reaches its target shares on held-out prompts.

One path for every attribute: gender is the built-in attribute of two classes, skin tone and age have three, and
two attributes fixed together are one attribute of their cells. Steps (cached in the run folder, so an
interrupted run redoes nothing finished)::

    before   audit every profession on the held-out test prompts (before/) and on the tuning prompts (tuning/:
             templates the test set does not contain; the edit's rows are encoded in them as well as in the
             profile's augmentations); the tuning side (this audit and the rounds) uses seeds disjoint from the
             test seeds (TUNING_SEED_OFFSET)
    plan     per profession, a destination per class ("a male X", "a X with dark skin"); one that lies within the
             band on the tuning prompts is left unedited, the others edit every class they have too little of
    rounds   every strength tuned together inside the joint edit that ships (debias.fixing.engine): each round
             measures every profession under it and refits one pooled model of the shares against the edit's
             reach (debias.fixing.strengths); a profession the others push out of the band joins
    after    audit the test prompts with the same seeds under the final edit as it ships (the edit file loaded
             into the weights; after/); side effects on unrelated prompts (mean absolute pixel change)
    outputs  edit.safetensors (UCE-compatible keys), fix.json, and optionally a full diffusers folder

Images and labels live in one cache (``out/images``, ``out/index``) keyed by model, edit matrix, sampler, prompt
and seed, and the strengths are a deterministic function of the images, so running the same command twice gives
the same strengths and numbers and generates nothing the second time.

Modules: :mod:`~debias.fixing.options` (defaults and checks), :mod:`~debias.fixing.plan` (rows: destinations,
anchors, preserve), :mod:`~debias.fixing.kclass` (a profession's edit and its matrices), :mod:`~debias.fixing.
steps` (setup, audits, plan), :mod:`~debias.fixing.engine` (the rounds), :mod:`~debias.fixing.ship` (the shipped
edit judged), :mod:`~debias.fixing.record` and :mod:`~debias.fixing.kclass_record` (``fix.json``). The verb that runs the steps in order,
:func:`debias.fix`, is :mod:`debias.verbs.fix`.
"""

from debias.fixing.options import (
    DEFAULT_ANCHOR_STRENGTH, DEFAULT_BUDGET_PER_CLASS, DEFAULT_CHECK_IMAGES, DEFAULT_JOINT_ROUNDS, DEFAULT_MAX_DRIFT,
    DEFAULT_SIDE_SEEDS, DEFAULT_TEST_IMAGES, JOINT_PIN_LAMBDA_RELATIVE, TUNING_SEED_OFFSET, FixOptions,
)
from debias.fixing.plan import anchor_prompts_for, destination_phrase, edit_contexts
from debias.fixing.record import image_counts

__all__ = [
    "DEFAULT_ANCHOR_STRENGTH", "DEFAULT_BUDGET_PER_CLASS", "DEFAULT_CHECK_IMAGES", "DEFAULT_JOINT_ROUNDS",
    "DEFAULT_MAX_DRIFT", "DEFAULT_SIDE_SEEDS", "DEFAULT_TEST_IMAGES", "JOINT_PIN_LAMBDA_RELATIVE", "TUNING_SEED_OFFSET",
    "FixOptions", "anchor_prompts_for", "destination_phrase", "edit_contexts", "image_counts",
]
