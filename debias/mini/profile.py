"""The built-in mini models' profiles: their sampler, world, classifier and pixel oracles (see debias.core.profiles).

``mini`` is the first world (gender only); ``mini-v2`` the world whose people also carry a skin tone and an age,
with an oracle for each (:mod:`debias.mini.world2`).
"""

from __future__ import annotations

from functools import partial

from debias.core.profiles import Profile, Sampler, register_profile
from debias.core.prompts import ProfessionEntry, TemplateSet
from debias.mini import CLASSIFIER_DIR, PIPELINE_DIR, SAMPLER, V2_CLASSIFIER_DIR, V2_PIPELINE_DIR, world, world2


def _templates():
    """Tune on every photo template the world knows (its augmentations); its other templates are the test set."""
    return TemplateSet(tuning=tuple(world.AUGMENTATIONS), test=tuple(world.TEST_TEMPLATES))


def _professions(w=world) -> list:
    return [ProfessionEntry(p.phrase, None, f"{w.__name__}:{p.name}") for p in w.PROFESSIONS]


def _planted_share(phrase: str) -> float | None:
    try:
        return world.planted_share(phrase)
    except KeyError:  # a profession the world does not draw
        return None


_SAMPLER = Sampler(scheduler=SAMPLER["scheduler"], steps=SAMPLER["steps"], guidance=SAMPLER["guidance"],
                   height=SAMPLER["height"], width=SAMPLER["width"], batch_size=SAMPLER["batch_size"])

MINI = register_profile(Profile(
    name="mini",
    description="the built-in mini model (32×32 procedural world, planted shares, pixel oracle)",
    sampler=_SAMPLER,
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

MINI_V2 = register_profile(Profile(
    name="mini-v2",
    description="the built-in mini model v2 (the mini world with skin tones and ages: planted shares and a pixel "
                "oracle for gender, skin and age)",
    sampler=_SAMPLER,
    classifier="mini-v2",
    templates=_templates,
    professions=partial(_professions, world2),
    side_prompts=tuple(world2.OBJECT_PROMPTS),
    augmentations=tuple(world2.AUGMENTATIONS),
    half_precision_on_gpu=False,
    oracle=world2.oracle_gender,
    oracles={name: partial(world2.oracle_attribute, attribute=name) for name in ("skin", "age")},
    planted_share=_planted_share,
    builtin_folder=lambda: V2_PIPELINE_DIR,
    classifier_folder=lambda: V2_CLASSIFIER_DIR,
))
