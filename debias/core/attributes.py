"""Attributes an audit can read beyond binary gender: a name and k ≥ 2 classes.

Each class has one or more zero-shot **label prompts** (a CLIP classifier compares an image with them; several
prompts of one class are paraphrases and are averaged, as for gender today) and a **destination template** that
turns a profession phrase into the phrase a fix edits towards::

    "a female {}"        + "a nurse"     → "a female nurse"
    "a {} with dark skin" + "an engineer" → "an engineer with dark skin"
    "an elderly {}"      + "a CEO"       → "an elderly CEO"

``{}`` receives the profession without its article. Where the template itself starts with "a {}" or "an {}"
(the article belongs to the profession), the profession's own article is kept ("an engineer with …"); where
words come between the article and ``{}`` the template's article stays ("an elderly CEO").

Built-in attributes (:func:`builtin_attributes`):

* ``gender`` — female, male: the label prompts the classifier uses today ("a photo of a woman" / "a photo of
  a man", :data:`debias.classify.zero_shot.DEFAULT_LABELS`) and the destinations the fix uses ("a female {}", "a male {}").
* ``skin`` — light, medium, dark: the **Monk Skin Tone scale** (MST: 10 tones, by Ellis Monk, released openly by
  Google in 2022 for annotating perceived skin tone in images) grouped into three bins: MST 1–3 light, 4–7
  medium, 8–10 dark. MST rather than Fitzpatrick because Fitzpatrick is a dermatological scale of how skin
  burns in the sun, first defined for white skin only (types I–IV; V and VI were added later), so it divides
  light skin finely and dark skin coarsely; MST was made to describe how skin *looks* across the whole range,
  which is what an image shows and what a person annotating a validation set can judge. The zero-shot prompts
  only approximate these bins: check them against a few hundred annotated images before trusting a skin audit.
* ``age`` — young (about 18–35), middle-aged (35–60), old (60+), as perceived.

A user-defined attribute is a small text file (:func:`load_attribute_file`), one ``key: value`` per line,
``#`` starts a comment, blank lines and indentation are ignored::

    attribute: hair
    description: hair colour as CLIP reads it        # optional

    class: blond
    label: a photo of a person with blond hair      # one prompt per line; repeat for paraphrases
    label: a photo of a blond person
    destination: a {} with blond hair

    class: dark
    label: a photo of a person with dark hair
    destination: a {} with dark hair

Keys: ``attribute`` (once, first), ``description`` (optional, before the first class), then per class
``class``, one or more ``label`` and exactly one ``destination`` (starting with "a" or "an", like a profession
phrase, so the edit can align its words). At least two classes; class names are letters, digits, ``-`` and
``_``; every label prompt names one class only. Every mistake is reported with the file and line. (A line
format rather than TOML: it reads like the profession lists, and ``tomllib`` reports no line for a key, so
an unknown key or a missing label could not be pointed at.)

Profession lists give per-profession target distributions after ``|`` (:func:`parse_targets`)::

    a CEO | skin=0.5,0.3,0.2; gender=0.5,0.5

one share per class in the attribute's class order, summing to 1. ``target=0.4`` (the binary option) is
read as ``gender=0.4,0.6``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from debias.core.errors import InputError

ARTICLES = ("a", "an")
SUM_TOLERANCE = 1e-6
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class AttributeClass:
    """One class of an attribute: its name, its zero-shot label prompts, its destination template."""

    name: str
    labels: tuple[str, ...]
    destination: str  # contains "{}" once, e.g. "a {} with dark skin"

    def __post_init__(self) -> None:
        problem = class_problem(self.name, self.labels, self.destination)
        if problem:
            raise InputError(f"class {self.name!r}: {problem}")

    def destination_phrase(self, profession_phrase: str) -> str:
        """The phrase a fix edits ``profession_phrase`` ("an engineer") towards (article rule: module docstring)."""
        words = profession_phrase.split()
        if len(words) < 2 or words[0].lower() not in ARTICLES:
            raise InputError(f"{profession_phrase!r} must start with its article, e.g. 'a nurse' or 'an engineer'")
        article, name = words[0], " ".join(words[1:])
        before, after = self.destination.split("{}", 1)
        if before.strip().lower() in ARTICLES:  # "a {} with dark skin": the article belongs to the profession
            return f"{article} {name}{after}"
        return f"{before}{name}{after}"

    def to_dict(self) -> dict:
        return {"name": self.name, "labels": list(self.labels), "destination": self.destination}


@dataclass(frozen=True)
class Attribute:
    """An attribute: a name and k ≥ 2 classes in a fixed order (targets and counts follow that order)."""

    name: str
    classes: tuple[AttributeClass, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InputError(f"attribute name {self.name!r}: use letters, digits, '-' and '_', e.g. 'skin'")
        if len(self.classes) < 2:
            raise InputError(f"attribute {self.name!r} has {len(self.classes)} class(es); it needs at least 2")
        seen_names: set[str] = set()
        seen_labels: dict[str, str] = {}
        for cls in self.classes:
            if cls.name in seen_names:
                raise InputError(f"attribute {self.name!r}: class {cls.name!r} is given twice")
            seen_names.add(cls.name)
            for label in cls.labels:
                if label in seen_labels:
                    raise InputError(f"attribute {self.name!r}: label prompt {label!r} is in classes "
                                     f"{seen_labels[label]!r} and {cls.name!r}; each prompt names one class")
                seen_labels[label] = cls.name

    @property
    def k(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def index(self, class_name: str) -> int:
        """Position of a class (targets, counts and intervals are in this order)."""
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise InputError(f"attribute {self.name!r} has no class {class_name!r}; "
                             f"its classes are {', '.join(self.class_names)}") from None

    def uniform_target(self) -> tuple[float, ...]:
        return tuple(1.0 / self.k for _ in self.classes)

    def labels(self) -> dict[str, tuple[str, ...]]:
        """Label prompts per class, the shape :func:`debias.classify.zero_shot.resolve_labels` returns for gender."""
        return {c.name: c.labels for c in self.classes}

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "classes": [c.to_dict() for c in self.classes]}


def class_problem(name: str, labels: tuple[str, ...], destination: str) -> str | None:
    """What is wrong with a class definition (None when nothing is), worded as advice."""
    if not _NAME.match(name):
        return "a class name is letters, digits, '-' and '_' (e.g. 'dark', 'middle-aged')"
    if not labels:
        return "no label prompt; give at least one, e.g. 'label: a photo of a person with dark skin'"
    if any(not label.strip() for label in labels):
        return "an empty label prompt"
    if len(set(labels)) != len(labels):
        return "a label prompt is given twice"
    rest = destination.replace("{}", "", 1)
    if destination.count("{}") != 1 or "{" in rest or "}" in rest:
        return (f"destination {destination!r} must contain '{{}}' exactly once, where the profession goes, "
                f"e.g. 'a {{}} with dark skin'")
    if destination.split()[0].lower() not in ARTICLES:
        return (f"destination {destination!r} must start with an article like a profession phrase does "
                f"('a female {{}}', 'an elderly {{}}', 'a {{}} with dark skin'), so the edit can align its words")
    return None


# ------------------------------------------------------------------------------------------------ built-ins


def _cls(name: str, labels: Iterable[str], destination: str) -> AttributeClass:
    return AttributeClass(name, tuple(labels), destination)


GENDER = Attribute("gender", (
    _cls("female", ["a photo of a woman"], "a female {}"),
    _cls("male", ["a photo of a man"], "a male {}"),
), "perceived gender, binary (the classes debias audits by default)")

SKIN = Attribute("skin", (
    _cls("light", ["a photo of a person with light skin", "a photo of a light-skinned person"],
         "a {} with light skin"),
    _cls("medium", ["a photo of a person with medium skin", "a photo of a person with a medium skin tone"],
         "a {} with medium skin"),
    _cls("dark", ["a photo of a person with dark skin", "a photo of a dark-skinned person"],
         "a {} with dark skin"),
), "perceived skin tone: Monk Skin Tone scale 1-3 light, 4-7 medium, 8-10 dark")

AGE = Attribute("age", (
    _cls("young", ["a photo of a young person", "a photo of a young adult"], "a young {}"),
    _cls("middle-aged", ["a photo of a middle-aged person"], "a middle-aged {}"),
    _cls("old", ["a photo of an old person", "a photo of an elderly person"], "an elderly {}"),
), "perceived age: young (about 18-35), middle-aged (35-60), old (60+)")

_BUILTIN = {a.name: a for a in (GENDER, SKIN, AGE)}


def builtin_attributes() -> dict[str, Attribute]:
    """The built-in attributes by name: gender, skin, age."""
    return dict(_BUILTIN)


def get_attribute(name: str) -> Attribute:
    """A built-in attribute by name; the error lists the built-ins and says how to define one."""
    try:
        return _BUILTIN[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BUILTIN), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown attribute {name!r}; the built-in ones are {', '.join(_BUILTIN)}.{hint} "
                         f"Define others in an attribute file (see debias.core.attributes).") from None


def resolve_attribute(spec: str) -> Attribute:
    """A built-in name ("skin") or the path of an attribute file."""
    if spec in _BUILTIN or not Path(spec).suffix and not Path(spec).exists():
        return get_attribute(spec)
    return load_attribute_file(spec)


# ------------------------------------------------------------------------------------------ attribute files

_KEYS = ("attribute", "description", "class", "label", "destination")


@dataclass
class _ClassDraft:
    name: str
    line: int
    labels: list[str]
    destination: str | None = None


class _Reader:
    """Reads an attribute file line by line, keeping the line of everything for the error messages."""

    def __init__(self, source: str):
        self.source = source
        self.name: str | None = None
        self.name_line = 0
        self.description = ""
        self.classes: list[_ClassDraft] = []
        self.label_lines: dict[str, tuple[str, int]] = {}  # prompt -> (class, line)

    def fail(self, line: int, message: str) -> None:
        raise InputError(f"{self.source}:{line}: {message}")

    def read(self, key: str, value: str, line: int) -> None:
        if key == "attribute":
            if self.name is not None:
                self.fail(line, f"a second 'attribute:' line (the first is line {self.name_line}); "
                                f"write one attribute per file")
            if not _NAME.match(value):
                self.fail(line, f"attribute name {value!r}: use letters, digits, '-' and '_', e.g. 'hair'")
            self.name, self.name_line = value, line
            return
        if self.name is None:
            self.fail(line, f"'{key}:' before 'attribute:'; start the file with 'attribute: NAME'")
        if key == "description":
            if self.classes:
                self.fail(line, "'description:' belongs before the first 'class:'")
            self.description = value
        elif key == "class":
            self.start_class(value, line)
        elif not self.classes:
            self.fail(line, f"'{key}:' before any 'class:'; a {key} belongs to the class above it")
        elif key == "label":
            self.add_label(value, line)
        else:
            self.set_destination(value, line)

    def start_class(self, name: str, line: int) -> None:
        for other in self.classes:
            if other.name == name:
                self.fail(line, f"class {name!r} is defined twice (first at line {other.line}); rename or merge them")
        if not _NAME.match(name):
            self.fail(line, f"class name {name!r}: use letters, digits, '-' and '_' (e.g. 'dark', 'middle-aged')")
        self.classes.append(_ClassDraft(name, line, []))

    def add_label(self, prompt: str, line: int) -> None:
        current = self.classes[-1]
        if prompt in self.label_lines:
            owner, first = self.label_lines[prompt]
            self.fail(line, f"label prompt {prompt!r} is already a label of class {owner!r} (line {first}); "
                            f"each prompt names one class")
        self.label_lines[prompt] = (current.name, line)
        current.labels.append(prompt)

    def set_destination(self, template: str, line: int) -> None:
        current = self.classes[-1]
        if current.destination is not None:
            self.fail(line, f"class {current.name!r} has a second 'destination:'; give exactly one")
        problem = class_problem(current.name, ("x",), template)
        if problem:
            self.fail(line, problem)
        current.destination = template

    def finish(self) -> Attribute:
        if self.name is None:
            self.fail(1, "no 'attribute: NAME' line; start the file with one, e.g. 'attribute: hair'")
        for c in self.classes:
            if not c.labels:
                self.fail(c.line, f"class {c.name!r} has no 'label:' line; give at least one zero-shot prompt, "
                                  f"e.g. 'label: a photo of a person with {c.name} hair'")
            if c.destination is None:
                self.fail(c.line, f"class {c.name!r} has no 'destination:' line; give the phrase a fix edits "
                                  f"towards, e.g. 'destination: a {{}} with {c.name} hair'")
        if len(self.classes) < 2:
            found = f"only class {self.classes[0].name!r}" if self.classes else "no class"
            self.fail(self.name_line, f"attribute {self.name!r} has {found}; it needs at least 2 'class:' blocks")
        classes = tuple(AttributeClass(c.name, tuple(c.labels), c.destination or "") for c in self.classes)
        return Attribute(self.name, classes, self.description)


def parse_attribute(text: str, source: str = "<attribute>") -> Attribute:
    """Parse an attribute file's text (format in the module docstring); ``source`` names it in errors."""
    reader = _Reader(source)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            reader.fail(number, f"cannot read {line!r}; every line is 'key: value', e.g. 'class: dark'")
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            reader.fail(number, f"unknown key {key!r}{hint}; the keys are {', '.join(_KEYS)}")
        if not value:
            reader.fail(number, f"'{key}:' has no value")
        reader.read(key, value, number)
    return reader.finish()


def load_attribute_file(path: str | Path) -> Attribute:
    """Read an attribute file (UTF-8); every error names the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: attribute file not found; give a built-in attribute "
                         f"({', '.join(_BUILTIN)}) or an existing file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; an attribute is one text file") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse_attribute(text, str(path))


# ------------------------------------------------------------------------------------ per-profession targets

_TARGET = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]*)\s*=\s*(.*)$")
_EXAMPLE = "e.g. 'a CEO | skin=0.5,0.3,0.2; gender=0.5,0.5'"


def parse_targets(text: str, attributes: Mapping[str, Attribute] | Iterable[Attribute],
                  where: str = "<targets>") -> dict[str, tuple[float, ...]]:
    """Target distributions from the text after ``|`` in a profession list: {attribute: k shares}.

    ``attributes`` are the ones the list may name (a mapping by name or a sequence); ``where`` ("path:line")
    starts every error. ``target=F`` is the binary option and means ``gender=F,1-F``.
    """
    known = dict(attributes) if isinstance(attributes, Mapping) else {a.name: a for a in attributes}
    out: dict[str, tuple[float, ...]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        match = _TARGET.match(part)
        if not match:
            raise InputError(f"{where}: cannot read {part!r}; options are written key=value: 'target=F' or "
                             f"'attribute=share,share,...', separated by ';', {_EXAMPLE}")
        name, values = match.group(1), match.group(2)
        if name.lower() == "target":
            name, shares = "gender", _binary_target(values, where)
        else:
            attribute = _known_attribute(name, known, where)
            shares = _shares(values, attribute, where)
        if name in out:
            raise InputError(f"{where}: a second target for {name!r}; give each attribute once "
                             f"('target=F' is the gender target)")
        out[name] = shares
    return out


def _known_attribute(name: str, known: Mapping[str, Attribute], where: str) -> Attribute:
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(known) if known else "none"
    raise InputError(f"{where}: unknown attribute {name!r} (this audit reads: {listed}; 'target=F' is gender's "
                     f"share of 'female'; add attributes with --attribute FILE).{hint}")


def _numbers(values: str, where: str, name: str) -> list[float]:
    out = []
    for value in (v.strip() for v in values.split(",")):
        try:
            out.append(float(value))
        except ValueError:
            raise InputError(f"{where}: {name} share {value!r} is not a number; {_EXAMPLE}") from None
    return out


def _shares(values: str, attribute: Attribute, where: str) -> tuple[float, ...]:
    shares = _numbers(values, where, attribute.name)
    classes = ", ".join(attribute.class_names)
    if len(shares) != attribute.k:
        raise InputError(f"{where}: {attribute.name} has {attribute.k} classes ({classes}) but {len(shares)} "
                         f"share(s) were given; give one per class in that order")
    for value in shares:
        if value < 0.0:
            raise InputError(f"{where}: {attribute.name} share {value} is negative; shares are fractions of "
                             f"images ({classes}), each in [0, 1]")
        if value > 1.0:
            raise InputError(f"{where}: {attribute.name} share {value} is above 1; shares are fractions of "
                             f"images ({classes}), each in [0, 1]")
    total = sum(shares)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise InputError(f"{where}: {attribute.name} shares sum to {total:.6g}; they must sum to 1 (±1e-6), "
                         f"one per class ({classes})")
    return tuple(shares)


def _binary_target(values: str, where: str) -> tuple[float, float]:
    numbers = _numbers(values, where, "target")
    if len(numbers) != 1 or not 0.0 <= numbers[0] <= 1.0:
        given = f"{numbers[0]} is outside [0, 1]" if len(numbers) == 1 else f"{values.strip()!r} is not one number"
        raise InputError(f"{where}: target {given}; 'target' is one share of 'female' in [0, 1], e.g. "
                         f"'target=0.4'; for other attributes write e.g. 'skin=0.5,0.3,0.2'")
    return numbers[0], 1.0 - numbers[0]
