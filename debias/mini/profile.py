"""The built-in mini model's profile: its sampler, world, classifier and pixel oracle (see debias.profiles)."""

from __future__ import annotations

from debias.mini import CLASSIFIER_DIR, PIPELINE_DIR, SAMPLER, world
from debias.profiles import Profile, Sampler, register_profile


def _templates():
    from debias.prompts import TemplateSet

    return TemplateSet(tuning=(world.TUNING_TEMPLATE,), test=tuple(world.TEST_TEMPLATES))


def _professions() -> list:
    from debias.prompts import ProfessionEntry

    return [ProfessionEntry(p.phrase, None, f"debias.mini.world:{p.name}") for p in world.PROFESSIONS]


def _planted_share(phrase: str) -> float | None:
    try:
        return world.planted_share(phrase)
    except KeyError:  # a profession the world does not draw
        return None


MINI = register_profile(Profile(
    name="mini",
    description="the built-in mini model (32×32 procedural world, planted shares, pixel oracle)",
    sampler=Sampler(scheduler=SAMPLER["scheduler"], steps=SAMPLER["steps"], guidance=SAMPLER["guidance"],
                    height=SAMPLER["height"], width=SAMPLER["width"], batch_size=SAMPLER["batch_size"]),
    classifier="mini",
    templates=_templates,
    professions=_professions,
    side_prompts=tuple(world.OBJECT_PROMPTS),
    augmentations=tuple(world.AUGMENTATIONS),
    half_precision_on_gpu=False,
    oracle=world.oracle_gender,
    planted_share=_planted_share,
    builtin_folder=lambda: PIPELINE_DIR,
    classifier_folder=lambda: CLASSIFIER_DIR,
))
