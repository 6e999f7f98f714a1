"""Profession lists and prompt templates.

A profession list is a plain text file, one profession per line, written as the phrase a template
takes, article included::

    # TIMED's professions (comments start with '#'; blank lines are ignored)
    a nurse
    an engineer
    a CEO | target=0.4        # optional per-profession target share of "female"

A line is ``PHRASE`` or ``PHRASE | TARGETS``: per-profession target distributions, one per attribute,
separated by ``;``, each ``attribute=share,share,...`` with one share per class in the attribute's
class order, summing to 1 (:func:`debias.core.attributes.parse_targets`)::

    a nurse | target=0.4                            # share of "female" (the audit's --target elsewhere)
    a CEO   | skin=0.5,0.3,0.2; gender=0.5,0.5      # skin: light, medium, dark; gender: female, male
    a pilot | hair=0.5,0.5                          # an attribute file's attribute (given to the audit)

``target=F`` is gender's target written as the share of "female" (``gender=F,1-F``); an attribute
with no target on a line is audited against the uniform distribution. The names a line may use are
the built-in attributes (gender, skin, age) and those the audit reads (``--attribute FILE``). The
phrase must start with the article "a" or "an" because templates are written for a full noun phrase
("A photo of {}" → "A photo of an engineer"). Malformed lines, duplicates (case-insensitive) and
empty files raise an :class:`~debias.core.errors.InputError` naming the file and line;
:func:`check_prompt_lengths` rejects prompts the text encoder would silently truncate, once the
pipeline's tokenizer is known.

Templates contain ``{}`` exactly once. Each profession has a *tuning* set (the prompt a fix tunes
on) and a held-out *test* set (the prompts an audit judges on). The defaults are TIMED's (Orgad et
al., 2023) for the test set: "A painting of {}", "{} working", "{} laughing", "{} in the workplace",
"{} digital art"; a fix tunes on TIMED's "A photo of {}", its augmentations "An image of {}" and "A picture of {}",
and two styles other than photos, "A sketch of {}" and "A 3D render of {}"; a model profile may bring its own
(see :mod:`debias.core.profiles`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from debias.core.attributes import Attribute, builtin_attributes, parse_targets
from debias.core.errors import InputError

ARTICLES = ("a", "an")


@dataclass(frozen=True)
class ProfessionEntry:
    """One profession: its phrase with article ("an engineer"), optional targets, and where it came from."""

    phrase: str
    target: float | None = None  # gender's target: the share of "female"
    source: str | None = None  # "path:line", for error messages
    targets: tuple[tuple[str, tuple[float, ...]], ...] = ()  # other attributes' target distributions, as listed

    @property
    def name(self) -> str:
        """The phrase without its article: "engineer", "construction worker"."""
        return self.phrase.split(" ", 1)[1]

    def target_for(self, attribute: str) -> tuple[float, ...] | None:
        """The listed target distribution of ``attribute`` (gender: (F, 1 − F)), or None when the line gives none."""
        if attribute == "gender":
            return None if self.target is None else (self.target, 1.0 - self.target)
        return dict(self.targets).get(attribute)


@dataclass(frozen=True)
class TemplateSet:
    """Tuning and held-out test templates for one model family."""

    tuning: tuple[str, ...]
    test: tuple[str, ...]

    def get(self, prompt_set: str) -> tuple[str, ...]:
        if prompt_set == "tuning":
            return self.tuning
        if prompt_set == "test":
            return self.test
        raise InputError(f"--prompt-set must be 'tuning' or 'test', got {prompt_set!r}")


# Tuning: TIMED's validation prompt, its two other augmentations, and two styles other than photos, none of them a
# test template, so that a strength is tuned on prompts as varied as the ones it is judged on.
TIMED_TEMPLATES = TemplateSet(
    tuning=("A photo of {}", "An image of {}", "A picture of {}", "A sketch of {}", "A 3D render of {}"),
    test=("A painting of {}", "{} working", "{} laughing", "{} in the workplace", "{} digital art"),
)


# --------------------------------------------------------------------------------- profession lists
def _parse_options(text: str, where: str, attributes: Sequence[Attribute] = ()) -> tuple[float | None, tuple]:
    """Gender's target and the other attributes' targets from the text after ``|`` (format: module docstring)."""
    targets = parse_targets(text, {**builtin_attributes(), **{a.name: a for a in attributes}}, where)
    gender = targets.pop("gender", None)
    return (None if gender is None else gender[0]), tuple(targets.items())


def _parse_line(raw: str, where: str, attributes: Sequence[Attribute] = ()) -> ProfessionEntry | None:
    line = raw.split("#", 1)[0].strip()
    if not line:
        return None
    phrase, sep, options = line.partition("|")
    phrase = " ".join(phrase.split())
    if "|" in options:
        raise InputError(f"{where}: more than one '|' in {raw.strip()!r}; write 'a nurse | target=0.4'")
    if not phrase:
        raise InputError(f"{where}: no profession before '|' in {raw.strip()!r}")
    if "{" in phrase or "}" in phrase:
        raise InputError(f"{where}: {phrase!r} contains braces; a list holds professions, templates go "
                         f"in --templates")
    words = phrase.split(" ")
    if len(words) < 2 or words[0].lower() not in ARTICLES:
        raise InputError(f"{where}: {phrase!r} must start with its article, e.g. 'a nurse' or 'an engineer'")
    target, targets = _parse_options(options, where, attributes) if sep else (None, ())
    return ProfessionEntry(phrase=phrase, target=target, source=where, targets=targets)


def parse_professions(text: str, source: str = "<professions>",
                      attributes: Sequence[Attribute] = ()) -> list[ProfessionEntry]:
    """Parse a profession list (format in the module docstring); ``source`` names it in errors; ``attributes``
    are those beyond the built-ins its targets may name (an audit's ``--attribute FILE``)."""
    entries: list[ProfessionEntry] = []
    seen: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        entry = _parse_line(raw, where, attributes)
        if entry is None:
            continue
        key = entry.phrase.lower()
        if key in seen:
            raise InputError(f"{where}: {entry.phrase!r} is listed twice (first at {seen[key]}); remove one")
        seen[key] = where
        entries.append(entry)
    if not entries:
        raise InputError(f"{source}: no professions in the list; write one per line, e.g. 'a nurse'")
    return entries


def read_professions(path: str | Path, attributes: Sequence[Attribute] = ()) -> list[ProfessionEntry]:
    """Read a profession list file (UTF-8); ``attributes`` as for :func:`parse_professions`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: profession list not found; pass an existing file to --professions") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; --professions takes a text file, one profession per line") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse_professions(text, str(path), attributes)


def timed_professions() -> list[ProfessionEntry]:
    """TIMED's 35 professions (the ``old`` column of the shipped ``TIMED_gender_test_set.csv``)."""
    ref = resources.files("debias") / "data" / "TIMED_gender_test_set.csv"
    rows = list(csv.DictReader(ref.read_text(encoding="utf-8").splitlines()))
    text = "\n".join(row["old"] for row in rows)
    return parse_professions(text, "debias/data/TIMED_gender_test_set.csv")


# ------------------------------------------------------------------------------------- templates
def check_template(template: str, where: str = "--templates") -> str:
    """A template holds ``{}`` exactly once (and no other braces)."""
    if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
        raise InputError(f"{where}: template {template!r} must contain '{{}}' exactly once, where the "
                         f"profession goes, e.g. 'a photo of {{}}'")
    return template


def read_templates(path: str | Path) -> tuple[str, ...]:
    """A template file: one template per line, '#' comments and blank lines ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(f"{path}: template file not found; pass templates or an existing file to --templates") from None
    out: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(check_template(line, f"{path}:{number}"))
    if not out:
        raise InputError(f"{path}: no templates in the file; write one per line, e.g. 'a photo of {{}}'")
    return tuple(out)


def templates_from_option(values: Sequence[str], option: str = "--templates") -> tuple[str, ...]:
    """``--templates`` (or ``option``): either templates ("a photo of {}" ...) or the path of one template file."""
    if len(values) == 1 and "{}" not in values[0]:
        return read_templates(values[0])
    if not values:
        raise InputError(f"{option}: give at least one template, e.g. 'a photo of {{}}'")
    seen: set[str] = set()
    out = []
    for value in values:
        check_template(value, option)
        if value in seen:
            raise InputError(f"{option}: {value!r} is given twice")
        seen.add(value)
        out.append(value)
    return tuple(out)


def profession_prompts(entry: ProfessionEntry, templates: Iterable[str]) -> list[str]:
    """The prompts of one profession: each template with the phrase in place of ``{}``."""
    return [t.replace("{}", entry.phrase) for t in templates]


def check_prompt_lengths(entries: Sequence[ProfessionEntry], templates: Sequence[str], tokenizer) -> None:
    """Reject prompts longer than the text encoder reads (it would silently cut them off).

    ``tokenizer`` is the pipeline's (a transformers tokenizer with ``model_max_length``, counting the
    start and end tokens).
    """
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if limit <= 0 or limit > 100_000:  # tokenizers without a real limit report a huge sentinel
        return
    for entry in entries:
        for template in templates:
            prompt = template.replace("{}", entry.phrase)
            n = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if n > limit:
                raise InputError(f"{entry.source or entry.phrase}: prompt {prompt!r} (template {template!r}) is "
                                 f"{n} tokens but the text encoder reads at most {limit}; shorten the "
                                 f"profession or the template")
