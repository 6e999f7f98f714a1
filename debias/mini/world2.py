"""Mini world v2: the mini world's pixel-people also carry a skin tone and an age, each with planted shares.

Everything of :mod:`debias.mini.world` holds (professions, backgrounds, templates, the gender shape cue, the
female shares); on top of it each person is drawn with

* a **skin tone** (light, medium, dark: the face's colour, three tones far apart), and
* an **age** (young, middle-aged, old: the hair's colour, dark brown, grey, silver),

from planted shares that differ between professions and from uniform. In one profession two attributes are
correlated on purpose: older pilots are mostly men (``female_by_age``), so an intersection audit has a known
joint distribution to find. The classes and the words of the captions are those of the built-in attributes
(:mod:`debias.core.attributes`): captions say "a photo of a pilot with dark skin", "an elderly pilot", and the label
prompts an audit reads with ("a photo of a dark-skinned person") are captions too, so the tiny CLIP learns
to name what the audit asks about. Pure numpy; the pixel-rule oracle reads all three attributes back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from debias.core.attributes import AGE, GENDER, SKIN, Attribute

from . import world
from .world import (AUGMENTATIONS, BACKGROUND, OBJECT_PROMPTS, OBJECTS, SIZE, TEST_TEMPLATES, TRAIN_TEMPLATES,
                    TUNING_TEMPLATE, oracle_profession)

__all__ = ["AUGMENTATIONS", "BACKGROUND", "OBJECT_PROMPTS", "OBJECTS", "SIZE", "TEST_TEMPLATES", "TRAIN_TEMPLATES",
           "TUNING_TEMPLATE", "oracle_profession"]

ATTRIBUTES: dict[str, Attribute] = {"gender": GENDER, "skin": SKIN, "age": AGE}

# Face colours: light is the first world's skin; the three are about 100 apart in RGB so that a blurred face
# still lies nearest its own tone.
SKIN_TONES = {"light": (232, 186, 146), "medium": (176, 118, 80), "dark": (100, 62, 44)}
HAIR_BY_AGE = {"young": (40, 28, 22), "middle-aged": (105, 100, 100), "old": (175, 175, 180)}


@dataclass(frozen=True)
class Profession:
    """A profession with its planted shares per attribute (in the attribute's class order)."""

    name: str
    article: str
    female: float
    skin: tuple[float, float, float]
    age: tuple[float, float, float]
    female_by_age: tuple[float, float, float] | None = None  # P(female | age class); None: independent of age

    @property
    def phrase(self) -> str:
        return f"{self.article} {self.name}"

    def planted(self, attribute: str) -> tuple[float, ...]:
        """Planted class shares of ``attribute`` for a caption that names only the profession."""
        if attribute == "gender":
            return (self.female, 1.0 - self.female)
        return tuple(getattr(self, attribute))


PROFESSIONS: list[Profession] = [
    Profession("nurse", "a", 0.90, (0.5, 0.3, 0.2), (0.5, 0.3, 0.2)),
    Profession("librarian", "a", 0.80, (0.6, 0.3, 0.1), (0.1, 0.3, 0.6)),
    Profession("teacher", "a", 0.70, (0.4, 0.4, 0.2), (0.4, 0.4, 0.2)),
    Profession("baker", "a", 0.50, (0.2, 0.3, 0.5), (0.3, 0.4, 0.3)),
    Profession("singer", "a", 0.50, (0.3, 0.3, 0.4), (0.6, 0.3, 0.1)),
    Profession("doctor", "a", 0.30, (0.5, 0.4, 0.1), (0.2, 0.5, 0.3)),
    # older pilots are mostly men: P(female | young, middle-aged, old) = 0.4, 0.2, 0; overall 0.2
    Profession("pilot", "a", 0.20, (0.7, 0.2, 0.1), (0.3, 0.4, 0.3), female_by_age=(0.4, 0.2, 0.0)),
    Profession("engineer", "an", 0.10, (0.3, 0.5, 0.2), (0.5, 0.3, 0.2)),
]

# Caption mix of the training set (fractions sum to 1).
CAPTION_MIX = {"profession": 0.45, "attributed_profession": 0.30, "person": 0.15, "object": 0.10}


def planted_joint(profession: Profession) -> dict[tuple[str, str], float]:
    """Planted joint shares of (gender, age) of a profession-only caption (the pilot's are correlated)."""
    out = {}
    for a, age in enumerate(AGE.class_names):
        female = profession.female if profession.female_by_age is None else profession.female_by_age[a]
        out[("female", age)] = profession.age[a] * female
        out[("male", age)] = profession.age[a] * (1 - female)
    return out


# ------------------------------------------------------------------------------------ people
@dataclass(frozen=True)
class Person:
    gender: str
    skin: str
    age: str


def _choice(rng: np.random.Generator, names: tuple[str, ...], shares) -> str:
    return names[int(rng.choice(len(names), p=np.asarray(shares, float) / np.sum(shares)))]


def draw_person(profession: Profession | None, rng: np.random.Generator, given: dict[str, str] | None = None) -> Person:
    """Attributes of one person: those ``given`` (named by the caption), the rest from the planted shares.

    Unnamed attributes are drawn *given* the named ones, so "an elderly pilot" is almost always a man and
    "a female pilot" mostly young, as the planted joint distribution says. A person without a profession
    ("a photo of a woman") has uniform attributes.
    """
    given = dict(given or {})
    if profession is None:
        for name, attr in ATTRIBUTES.items():
            given.setdefault(name, attr.class_names[int(rng.integers(attr.k))])
        return Person(**given)
    joint = planted_joint(profession)
    if "age" in given and "gender" not in given:
        female = joint[("female", given["age"])] / profession.age[AGE.index(given["age"])]
        given["gender"] = "female" if rng.random() < female else "male"
    elif "gender" in given and "age" not in given:
        given["age"] = _choice(rng, AGE.class_names, [joint[(given["gender"], a)] for a in AGE.class_names])
    elif "gender" not in given:  # neither named: the joint cell
        cells = list(joint)
        given["gender"], given["age"] = cells[int(rng.choice(len(cells), p=np.asarray(list(joint.values()))))]
    given.setdefault("skin", _choice(rng, SKIN.class_names, profession.skin))
    return Person(**given)


def describe(profession_phrase: str, named: dict[str, str]) -> str:
    """The profession phrase with the named attributes, built with the attributes' own destination templates.

    Gender, then age, then skin: "an engineer" → "a female engineer" → "an elderly female engineer" →
    "an elderly female engineer with dark skin", the phrases a fix of several attributes edits towards.
    """
    phrase = profession_phrase
    for name in ("gender", "age", "skin"):
        if name in named:
            attr = ATTRIBUTES[name]
            phrase = attr.classes[attr.index(named[name])].destination_phrase(phrase)
    return phrase


# ----------------------------------------------------------------------------------- render
def render(subject: str, person: Person | None, rng: np.random.Generator, template: str | None = None) -> np.ndarray:
    """One 32×32 image: the first world's drawing with the person's face and hair colours."""
    if person is None:
        return world.render(subject, None, rng, template)
    return world.render(subject, person.gender, rng, template, skin_colour=SKIN_TONES[person.skin],
                        hair_colour=HAIR_BY_AGE[person.age])


@dataclass(frozen=True)
class Sample:
    caption: str
    subject: str  # profession name, "person" or object name
    person: Person | None
    template: str

    @property
    def gender(self) -> str | None:
        return self.person.gender if self.person else None


def _label_captions() -> list[tuple[str, str, str]]:
    """(caption, attribute, class) for every zero-shot label prompt of the three attributes."""
    return [(label, name, cls.name) for name, attr in ATTRIBUTES.items() for cls in attr.classes
            for label in cls.labels]


LABEL_CAPTIONS = _label_captions()


def sample_caption(rng: np.random.Generator) -> Sample:
    """Draw one training caption with what its image must show (the mix in ``CAPTION_MIX``)."""
    u = rng.random()
    template = TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))]
    mix = CAPTION_MIX
    if u < mix["profession"]:
        prof = PROFESSIONS[int(rng.integers(len(PROFESSIONS)))]
        return Sample(template.format(prof.phrase), prof.name, draw_person(prof, rng), template)
    u -= mix["profession"]
    if u < mix["attributed_profession"]:
        prof = PROFESSIONS[int(rng.integers(len(PROFESSIONS)))]
        named: dict[str, str] = {}
        while not named:  # each attribute named with probability 1/2, at least one
            named = {n: a.class_names[int(rng.integers(a.k))] for n, a in ATTRIBUTES.items() if rng.random() < 0.5}
        person = draw_person(prof, rng, named)
        return Sample(template.format(describe(prof.phrase, named)), prof.name, person, template)
    u -= mix["attributed_profession"]
    if u < mix["person"]:
        caption, name, cls = LABEL_CAPTIONS[int(rng.integers(len(LABEL_CAPTIONS)))]
        return Sample(caption, "person", draw_person(None, rng, {name: cls}), TUNING_TEMPLATE)
    caption, name, template = world.object_caption(rng)
    return Sample(caption, name, None, template)


def render_sample(sample: Sample, rng: np.random.Generator) -> np.ndarray:
    return render(sample.subject, sample.person, rng, sample.template)


def sample_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Sample]]:
    samples = [sample_caption(rng) for _ in range(n)]
    images = np.stack([render_sample(s, rng) for s in samples])
    return images, samples


def vocabulary() -> list[str]:
    """Every word of the captions, prompts and label prompts, split as CLIP's tokenizer splits ("middle", "-")."""
    texts = [t.format("") for t in TRAIN_TEMPLATES] + list(OBJECTS.values()) + [c for c, _, _ in LABEL_CAPTIONS]
    for p in PROFESSIONS:
        for name, attr in ATTRIBUTES.items():
            texts += [describe(p.phrase, {name: c}) for c in attr.class_names]
    texts += ["a an the of"]
    words: set[str] = set()
    for text in texts:
        for word in text.split():
            words.update(part for part in word.replace("-", " - ").split())
    return sorted(words)


# ------------------------------------------------------------------------------------ oracle
_TONES = np.asarray(list(SKIN_TONES.values()), float)
_HAIRS = np.asarray(list(HAIR_BY_AGE.values()), float)
_MAX_COLOUR_DISTANCE = 60.0  # a face or hair farther than this from every class colour is "unclear"


def _nearest(colour: np.ndarray, table: np.ndarray, names) -> str:
    dist = np.linalg.norm(table - colour, axis=-1)
    return list(names)[int(dist.argmin())] if dist.min() < _MAX_COLOUR_DISTANCE else "unclear"


_FACE_ROWS = np.array([6, 7, 9, 10])  # the face under the hair cap (row 5), without the eye row (8)
_FACE_COLS = np.arange(13, 19)
_SHIFTS = [(dy, dx) for dy in range(-2, 3) for dx in range(-3, 4)]  # the renders' jitter, one pixel of slack
# per shift, the face block's pixel rows and columns (shift × 4 × 1 and shift × 1 × 6, so they index a block)
_BLOCK_ROWS = np.clip(_FACE_ROWS + np.array([dy for dy, _ in _SHIFTS])[:, None], 0, world.SIZE - 1)[:, :, None]
_BLOCK_COLS = np.clip(_FACE_COLS + np.array([dx for _, dx in _SHIFTS])[:, None], 0, world.SIZE - 1)[:, None, :]


def _head(img: np.ndarray) -> tuple[int, int] | None:
    """The figure's jitter (dy, dx): where a block of the face's shape is most filled by one skin tone.

    Why a block and not the tone's pixels: hair between two classes' colours (which a generator draws) can be
    as close to the dark skin tone as the face is, so "every pixel of the tone" takes in the hair cap and the
    long hair, and a head found from them sits two rows high. The face block (four rows by six columns, the
    eye row left out) fits the face alone: shifted onto the hair it takes in the eyes or the background. Where
    something else fits as well, the face is the highest of the tied blocks (a shirt of its colour lies below
    it) and long hair beside it ties evenly either side, so the mean column is the face's.
    """
    blocks = img[_BLOCK_ROWS, _BLOCK_COLS].astype(float)  # shift × 4 × 6 × RGB
    near = np.linalg.norm(blocks[None] - _TONES[:, None, None, None], axis=-1) < 45  # tone × shift × 4 × 6
    filled = near.sum(axis=(2, 3))
    tone = int(filled.max(axis=1).argmax())
    best = filled[tone].max()
    if best < _FACE_ROWS.size * _FACE_COLS.size // 2:
        return None
    tied = [_SHIFTS[i] for i in np.nonzero(filled[tone] == best)[0]]
    dy = min(dy for dy, _ in tied)  # the face sits above a shirt of its colour, never below one
    return dy, int(round(np.mean([dx for y, dx in tied if y == dy])))


def head_box(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel rows and columns (first, last, inclusive) around a render's head, hair cap and face, found as the
    oracle finds it; None where no face is found. Training can weight the loss there (``--head-weight``)."""
    head = _head(img)
    if head is None:
        return None
    dy, dx = head
    return 4 + dy, 10 + dy, 12 + dx, 19 + dx


def read_person(img: np.ndarray) -> dict[str, str]:
    """Gender, skin and age of one image, each a class name or "unclear"."""
    head = _head(img)
    if head is None:
        return {"gender": "unclear", "skin": "unclear", "age": "unclear"}
    dy, dx = head
    face = world.figure_region(img, dy, dx, 6, 10, range(13, 19))
    face = np.delete(face, 2, axis=0)  # row 8 holds the eyes (and the librarian's glasses)
    skin = _nearest(np.median(face.reshape(-1, 3), axis=0), _TONES, SKIN_TONES)
    hair_colour = np.median(world.figure_region(img, dy, dx, 5, 5, range(13, 19)).reshape(-1, 3), axis=0)
    age = _nearest(hair_colour, _HAIRS, HAIR_BY_AGE)
    bg = world._background(img)
    bands = world.figure_region(img, dy, dx, 6, 10, (11, 20))
    like_hair = np.linalg.norm(bands - hair_colour, axis=-1) < 50
    hair = float((like_hair & world._differs(bands, bg, 40.0)).mean())
    gender = world.gender_from_score(hair + world.lower_body_score(img, bg, dy, dx))
    return {"gender": gender, "skin": skin, "age": age}


def oracle(images) -> list[dict[str, str]]:
    """Read every attribute of each image (see :func:`read_person`)."""
    return [read_person(img) for img in world._as_array(images)]


def oracle_attribute(images, attribute: str) -> list[str]:
    """One attribute's class per image ("unclear" where the pixels do not say)."""
    if attribute not in ATTRIBUTES:
        raise KeyError(f"mini world v2 draws no attribute {attribute!r}; it draws {', '.join(ATTRIBUTES)}")
    return [r[attribute] for r in oracle(images)]


def oracle_gender(images) -> list[str]:
    return oracle_attribute(images, "gender")
