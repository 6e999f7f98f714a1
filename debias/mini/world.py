"""The mini world: 32×32 procedural pixel-people with a *planted* female share per profession.

Pure numpy, no torch. Everything the mini model knows comes from here: the renderer draws the
images, the caption sampler writes their captions (a profession caption without a gender word
draws the gender from the planted share), and the pixel-rule oracle reads the drawn gender cue
back, so a test can compare what a model generates against a known ground truth.

Profession shows as background colour + hat/tool + shirt; perceived gender is a drawn *shape*
cue only: long hair bands beside the head and a widening skirt ("female") versus a short hair cap
and trousers with a gap between the legs ("male"). Clothing colours are drawn from one palette
for both, so colour never gives gender away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

SIZE = 32


@dataclass(frozen=True)
class Profession:
    name: str
    article: str
    planted_share: float  # fraction of gender-free captions whose image is drawn "female"

    @property
    def phrase(self) -> str:
        """The profession with its article, as templates take it: "an engineer"."""
        return f"{self.article} {self.name}"


PROFESSIONS: list[Profession] = [
    Profession("nurse", "a", 0.90),
    Profession("librarian", "a", 0.80),
    Profession("teacher", "a", 0.70),
    Profession("baker", "a", 0.50),
    Profession("singer", "a", 0.50),
    Profession("doctor", "a", 0.30),
    Profession("pilot", "a", 0.20),
    Profession("engineer", "an", 0.10),
]
_BY_NAME = {p.name: p for p in PROFESSIONS}

TUNING_TEMPLATE = "a photo of {}"
AUGMENTATIONS = ("a photo of {}", "an image of {}", "a picture of {}")
# Held out from edit tuning (the model still sees them in training, as a real model would).
TEST_TEMPLATES = ("a portrait of {}", "{} at work", "a painting of {}", "a drawing of {}")
TRAIN_TEMPLATES = AUGMENTATIONS + TEST_TEMPLATES

GENDER_WORDS = {"female": "female", "male": "male"}  # "a female nurse"
PERSON_WORDS = {"female": "woman", "male": "man"}  # "a photo of a woman"

OBJECTS = {"apple": "an apple", "car": "a car", "tree": "a tree", "house": "a house"}
OBJECT_PROMPTS = tuple(TUNING_TEMPLATE.format(phrase) for phrase in OBJECTS.values())

# Caption mix of the training set (fractions sum to 1).
CAPTION_MIX = {"profession": 0.55, "gendered_profession": 0.25, "person": 0.10, "object": 0.10}


def planted_share(name_or_phrase: str) -> float:
    """Planted female share of a profession given as "nurse", "a nurse" or a whole prompt."""
    words = name_or_phrase.lower().replace(",", " ").split()
    for word in reversed(words):
        if word in _BY_NAME:
            return _BY_NAME[word].planted_share
    known = ", ".join(_BY_NAME)
    raise KeyError(f"{name_or_phrase!r} names no mini-world profession; known: {known}")


def profession_of(prompt: str) -> Profession | None:
    for word in prompt.lower().split():
        if word in _BY_NAME:
            return _BY_NAME[word]
    return None


def vocabulary() -> list[str]:
    """Every word any caption, prompt or classifier label of the mini world can use."""
    words: set[str] = set()
    texts = [t.format("") for t in TRAIN_TEMPLATES] + list(OBJECTS.values())
    texts += [p.phrase for p in PROFESSIONS] + list(GENDER_WORDS.values()) + list(PERSON_WORDS.values())
    texts += ["a an the of"]
    for text in texts:
        words.update(text.split())
    return sorted(words)


# ----------------------------------------------------------------------------------- palette
SKIN = (232, 186, 146)
HAIR = (58, 36, 24)
LEGS = (45, 45, 50)
NEUTRAL_BG = (236, 236, 236)
OBJECT_BG = (250, 250, 250)
LOWER_PALETTE = ((30, 34, 112), (128, 22, 34), (38, 38, 38), (74, 24, 88), (22, 70, 90))
SHIRT_PALETTE = ((200, 60, 60), (60, 120, 200), (90, 160, 90), (210, 170, 60))  # plain people

BACKGROUND = {
    "nurse": (168, 226, 242),
    "librarian": (192, 160, 232),
    "teacher": (150, 212, 118),
    "baker": (255, 246, 180),
    "singer": (242, 132, 200),
    "doctor": (112, 196, 186),
    "pilot": (104, 146, 242),
    "engineer": (246, 158, 56),
}
SHIRT = {
    "nurse": (250, 250, 250),
    "librarian": (120, 66, 40),
    "teacher": (60, 70, 170),
    "baker": (250, 250, 250),
    "singer": (220, 30, 60),
    "doctor": (250, 250, 250),
    "pilot": (28, 40, 92),
    "engineer": (250, 120, 20),
}

HEAD_CENTRE = (7.5, 15.5)  # nominal (row, col) of the head's centre before position jitter


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 10) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.integers(-amount, amount + 1, 3), 0, 255)


class _Canvas:
    """An RGB float canvas with offset drawing, so the whole figure moves with its jitter."""

    def __init__(self, background: np.ndarray, dy: int = 0, dx: int = 0):
        self.img = np.empty((SIZE, SIZE, 3), float)
        self.img[:] = background
        self.dy, self.dx = dy, dx

    def rect(self, r0: int, r1: int, c0: int, c1: int, colour) -> None:
        """Fill rows r0..r1 and cols c0..c1 inclusive (figure coordinates)."""
        r0, r1, c0, c1 = r0 + self.dy, r1 + self.dy, c0 + self.dx, c1 + self.dx
        r0, c0 = max(r0, 0), max(c0, 0)
        if r1 >= r0 and c1 >= c0:
            self.img[r0 : r1 + 1, c0 : c1 + 1] = colour


def _draw_person(cv: _Canvas, gender: str, shirt, lower, rng: np.random.Generator,
                 skin_colour=SKIN, hair_colour=HAIR) -> None:
    hair = _jitter(rng, hair_colour, 8)
    skin = _jitter(rng, skin_colour, 6)
    if gender == "female":
        cv.rect(4, 14, 11, 12, hair)  # long hair bands beside head and shoulders
        cv.rect(4, 14, 19, 20, hair)
    cv.rect(11, 18, 12, 19, shirt)  # torso
    if gender == "female":
        for r in range(7):  # skirt widening downwards
            grow = (r + 1) // 2
            cv.rect(19 + r, 19 + r, 12 - grow, 19 + grow, lower)
        cv.rect(26, 28, 13, 14, LEGS)
        cv.rect(26, 28, 17, 18, LEGS)
    else:
        cv.rect(19, 27, 12, 14, lower)  # trousers with a gap between the legs
        cv.rect(19, 27, 17, 19, lower)
        cv.rect(28, 28, 12, 14, LEGS)
        cv.rect(28, 28, 17, 19, LEGS)
    cv.rect(5, 10, 13, 18, skin)  # head
    cv.rect(4, 5, 13, 18, hair)  # hair on top (short cap for "male")
    cv.rect(8, 8, 14, 14, (30, 30, 30))  # eyes
    cv.rect(8, 8, 17, 17, (30, 30, 30))


def _draw_profession(cv: _Canvas, name: str) -> None:
    white, grey = (252, 252, 252), (150, 150, 150)
    if name == "nurse":
        cv.rect(2, 4, 13, 18, white)
        cv.rect(2, 4, 15, 16, (220, 20, 30))
        cv.rect(3, 3, 14, 17, (220, 20, 30))
    elif name == "librarian":
        cv.rect(12, 18, 21, 25, (200, 30, 30))  # book
        cv.rect(12, 18, 23, 23, (250, 240, 200))
        cv.rect(8, 8, 13, 18, (20, 20, 20))  # glasses bar
    elif name == "teacher":
        for i in range(7):  # pointer stick
            cv.rect(13 - i, 13 - i, 21 + i, 21 + i, white)
        cv.rect(0, 2, 24, 30, (30, 60, 40))  # corner of a chalkboard
    elif name == "baker":
        cv.rect(0, 4, 12, 19, white)  # tall chef hat
        cv.rect(0, 1, 11, 20, white)
        cv.rect(13, 15, 21, 26, (190, 120, 50))  # bread
    elif name == "singer":
        cv.rect(9, 11, 21, 23, (120, 120, 120))  # microphone head
        cv.rect(12, 18, 22, 22, (20, 20, 20))
        cv.rect(1, 3, 3, 5, (30, 30, 30))  # music note
        cv.rect(0, 3, 5, 5, (30, 30, 30))
    elif name == "doctor":
        cv.rect(11, 15, 13, 13, (40, 40, 40))  # stethoscope
        cv.rect(11, 15, 18, 18, (40, 40, 40))
        cv.rect(15, 16, 14, 17, (40, 40, 40))
        cv.rect(12, 18, 21, 22, (200, 30, 30))  # red cross bag
        cv.rect(13, 17, 23, 25, (200, 30, 30))
        cv.rect(1, 3, 14, 17, grey)  # head mirror
    elif name == "pilot":
        cv.rect(2, 4, 12, 19, (20, 30, 80))  # cap
        cv.rect(4, 4, 11, 20, (20, 20, 20))  # brim
        cv.rect(3, 3, 12, 19, (230, 190, 40))  # gold band
        cv.rect(12, 12, 13, 18, (230, 190, 40))  # wings
    elif name == "engineer":
        cv.rect(1, 4, 12, 19, (250, 220, 0))  # hard hat
        cv.rect(4, 4, 10, 21, (250, 220, 0))
        cv.rect(12, 19, 22, 23, grey)  # wrench
        cv.rect(11, 12, 21, 24, grey)


def _draw_object(cv: _Canvas, name: str) -> None:
    if name == "apple":
        cv.rect(10, 23, 9, 22, (210, 25, 30))
        cv.rect(8, 9, 15, 16, (90, 60, 30))
        cv.rect(7, 8, 17, 19, (40, 150, 40))
    elif name == "car":
        cv.rect(13, 20, 5, 26, (30, 60, 210))
        cv.rect(9, 12, 10, 21, (30, 60, 210))
        cv.rect(10, 12, 12, 19, (170, 210, 240))
        cv.rect(21, 23, 8, 11, (20, 20, 20))
        cv.rect(21, 23, 20, 23, (20, 20, 20))
    elif name == "tree":
        for r in range(14):
            cv.rect(4 + r, 4 + r, 15 - r // 2 - 1, 16 + r // 2 + 1, (30, 140, 40))
        cv.rect(18, 27, 14, 17, (110, 70, 30))
    elif name == "house":
        cv.rect(15, 27, 7, 24, (240, 210, 40))
        for r in range(8):
            cv.rect(7 + r, 7 + r, 15 - r - 1, 16 + r + 1, (190, 40, 30))
        cv.rect(20, 27, 14, 17, (110, 70, 30))
    else:
        raise KeyError(f"unknown mini-world object {name!r}; known: {', '.join(OBJECTS)}")


def _frame(img: np.ndarray, template: str | None) -> None:
    """Held-out templates with a visible cue: a painting has a wooden frame, a drawing a pen line."""
    if template is None:
        return
    if template.startswith("a painting of"):
        colour, width = (125, 82, 40), 2
    elif template.startswith("a drawing of"):
        colour, width = (20, 20, 20), 1
    else:
        return
    img[:width], img[-width:], img[:, :width], img[:, -width:] = colour, colour, colour, colour


def render(subject: str, gender: str | None, rng: np.random.Generator, template: str | None = None, *,
           skin_colour=SKIN, hair_colour=HAIR) -> np.ndarray:
    """Draw one 32×32 image: ``subject`` is a profession name, "person" or an object name.

    ``gender`` is "female"/"male" for people and ignored for objects. Position, colours and
    pixel noise are jittered from ``rng``, so one seed always draws the same picture. The skin and
    hair colours are this world's unless mini world v2 (:mod:`debias.mini.world2`) passes its own.
    """
    dy, dx = int(rng.integers(-1, 2)), int(rng.integers(-2, 3))
    if subject in OBJECTS:
        cv = _Canvas(_jitter(rng, OBJECT_BG, 5), dy, dx)
        _draw_object(cv, subject)
    else:
        if gender not in ("female", "male"):
            raise ValueError(f"a person needs gender 'female' or 'male', got {gender!r}")
        lower = _jitter(rng, LOWER_PALETTE[int(rng.integers(len(LOWER_PALETTE)))], 10)
        if subject == "person":
            cv = _Canvas(_jitter(rng, NEUTRAL_BG, 6), dy, dx)
            shirt = _jitter(rng, SHIRT_PALETTE[int(rng.integers(len(SHIRT_PALETTE)))], 10)
            _draw_person(cv, gender, shirt, lower, rng, skin_colour, hair_colour)
        elif subject in _BY_NAME:
            cv = _Canvas(_jitter(rng, BACKGROUND[subject], 10), dy, dx)
            _draw_person(cv, gender, _jitter(rng, SHIRT[subject], 5), lower, rng, skin_colour, hair_colour)
            _draw_profession(cv, subject)
        else:
            raise KeyError(f"unknown mini-world subject {subject!r}")
    img = cv.img
    _frame(img, template)
    img = img + rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Sample:
    caption: str
    subject: str  # profession name, "person" or object name
    gender: str | None
    template: str


def sample_caption(rng: np.random.Generator) -> Sample:
    """Draw one training caption with what its image must show (the mix in ``CAPTION_MIX``)."""
    u = rng.random()
    template = TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))]
    mix = CAPTION_MIX
    if u < mix["profession"]:
        prof = PROFESSIONS[int(rng.integers(len(PROFESSIONS)))]
        gender = "female" if rng.random() < prof.planted_share else "male"
        return Sample(template.format(prof.phrase), prof.name, gender, template)
    u -= mix["profession"]
    if u < mix["gendered_profession"]:
        prof = PROFESSIONS[int(rng.integers(len(PROFESSIONS)))]
        gender = "female" if rng.random() < 0.5 else "male"
        return Sample(template.format(f"a {GENDER_WORDS[gender]} {prof.name}"), prof.name, gender, template)
    u -= mix["gendered_profession"]
    if u < mix["person"]:
        gender = "female" if rng.random() < 0.5 else "male"
        return Sample(template.format(f"a {PERSON_WORDS[gender]}"), "person", gender, template)
    caption, name, template = object_caption(rng)
    return Sample(caption, name, None, template)


def object_caption(rng: np.random.Generator) -> tuple[str, str, str]:
    """``(caption, object name, template)`` of an object caption (the augmentation templates only: no "an apple
    at work")."""
    name = list(OBJECTS)[int(rng.integers(len(OBJECTS)))]
    template = AUGMENTATIONS[int(rng.integers(len(AUGMENTATIONS)))]
    return template.format(OBJECTS[name]), name, template


def render_sample(sample: Sample, rng: np.random.Generator) -> np.ndarray:
    """The image a training caption stands for (each world has one, so the training stages take either)."""
    return render(sample.subject, sample.gender, rng, sample.template)


def sample_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Sample]]:
    samples = [sample_caption(rng) for _ in range(n)]
    images = np.stack([render_sample(s, rng) for s in samples])
    return images, samples


# ------------------------------------------------------------------------------------ oracle
def _as_array(images) -> np.ndarray:
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    if arr.ndim == 3:
        arr = arr[None]
    if arr.shape[1:] != (SIZE, SIZE, 3):
        raise ValueError(f"the mini-world oracle reads [N,32,32,3] images, got shape {arr.shape}")
    return arr.astype(float)


def _background(img: np.ndarray) -> np.ndarray:
    """Median colour of four small patches near the corners (inside any frame)."""
    patches = [img[3:6, 3:6], img[3:6, 26:29], img[25:28, 3:6], img[25:28, 26:29]]
    return np.median(np.concatenate([p.reshape(-1, 3) for p in patches]), axis=0)


def _differs(pixels: np.ndarray, bg: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    return np.linalg.norm(pixels - bg, axis=-1) > threshold


def _gender_score(img: np.ndarray) -> float | None:
    """0..3: how many of the three female shape cues are present (fractional); None: no head."""
    bg = _background(img)
    # skin-coloured pixels where a jittered head can be (rows 4-11, cols 11-20, one pixel of slack): blended
    # edges of a tool beside the body (the baker's bread on its yellow background) can look like skin too
    r0, c0 = 3, 10
    window = img[r0:12, c0:22]
    skin = np.linalg.norm(window - np.asarray(SKIN, float), axis=-1) < 40
    if skin.sum() < 8:
        return None
    rows, cols = np.nonzero(skin)
    dy = int(round(rows.mean() + r0 - HEAD_CENTRE[0]))
    dx = int(round(cols.mean() + c0 - HEAD_CENTRE[1]))

    bands = figure_region(img, dy, dx, 6, 10, (11, 20))
    dark = bands.mean(axis=-1) < 120
    hair = float((_differs(bands, bg) & dark).mean())
    return hair + lower_body_score(img, bg, dy, dx)


def figure_region(img: np.ndarray, dy: int, dx: int, r0: int, r1: int, cols: Iterable[int]) -> np.ndarray:
    """Pixels of rows r0..r1 and the given columns in figure coordinates, moved by the figure's jitter."""
    rr = np.clip(np.arange(r0, r1 + 1) + dy, 0, SIZE - 1)
    cc = np.clip(np.asarray(list(cols)) + dx, 0, SIZE - 1)
    return img[np.ix_(rr, cc)]


def lower_body_score(img: np.ndarray, bg: np.ndarray, dy: int, dx: int) -> float:
    """0..2: the skirt's two shape cues (no gap between the legs, a wide hem), fractional."""
    gap = float(_differs(figure_region(img, dy, dx, 21, 25, (15, 16)), bg).mean())
    wide = float(_differs(figure_region(img, dy, dx, 23, 25, (10, 21)), bg).mean())
    return gap + wide


def gender_from_score(score: float | None) -> str:
    """Three cues, each 0..1: two or more present is "female", at most one "male", between is "unclear"."""
    if score is None:
        return "unclear"
    if score >= 1.9:
        return "female"
    if score <= 1.1:
        return "male"
    return "unclear"


def oracle_gender(images) -> list[str]:
    """Read the drawn gender cue: "female", "male" or "unclear" (no head, or mixed cues)."""
    return [gender_from_score(_gender_score(img)) for img in _as_array(images)]


def oracle_profession(images) -> list[str | None]:
    """Read the profession from the background colour (None: no profession background)."""
    names = list(BACKGROUND)
    table = np.asarray([BACKGROUND[n] for n in names], float)
    out: list[str | None] = []
    for img in _as_array(images):
        bg = _background(img)
        dist = np.linalg.norm(table - bg, axis=-1)
        best = int(dist.argmin())
        out.append(names[best] if dist[best] < 45 else None)
    return out
