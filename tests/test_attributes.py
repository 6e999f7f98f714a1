"""Attributes: built-ins, destination phrases, attribute files (errors name the line) and per-profession targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from debias.core import attributes as at
from debias.core.errors import InputError

HAIR = """\
# hair colour, as CLIP reads it
attribute: hair
description: hair colour

class: blond
  label: a photo of a person with blond hair
  label: a photo of a blond person      # a paraphrase
  destination: a {} with blond hair

class: dark
  label: a photo of a person with dark hair
  destination: a {} with dark hair
"""


def test_builtins() -> None:
    builtins = at.builtin_attributes()
    assert list(builtins) == ["gender", "skin", "age"]
    assert builtins["gender"].class_names == ("female", "male")
    assert builtins["skin"].class_names == ("light", "medium", "dark")
    assert builtins["age"].class_names == ("young", "middle-aged", "old")
    assert at.get_attribute("skin") is builtins["skin"]
    assert builtins["skin"].uniform_target() == pytest.approx((1 / 3,) * 3)
    assert builtins["age"].index("old") == 2
    with pytest.raises(InputError, match="Did you mean 'skin'"):
        at.get_attribute("skn")
    with pytest.raises(InputError, match="has no class 'elderly'"):
        builtins["age"].index("elderly")


def test_gender_labels_are_the_classifier_defaults() -> None:
    from debias.classify.zero_shot import DEFAULT_LABELS

    assert at.get_attribute("gender").labels() == DEFAULT_LABELS


@pytest.mark.parametrize("attribute,cls,phrase,expected", [
    ("gender", "female", "a nurse", "a female nurse"),
    ("gender", "male", "an engineer", "a male engineer"),  # as the fix writes it today
    ("skin", "dark", "an engineer", "an engineer with dark skin"),  # the profession keeps its own article
    ("skin", "light", "a construction worker", "a construction worker with light skin"),
    ("age", "old", "a CEO", "an elderly CEO"),  # the template's article stays before its own word
    ("age", "young", "an attendant", "a young attendant"),
])
def test_destination_phrases(attribute: str, cls: str, phrase: str, expected: str) -> None:
    attr = at.get_attribute(attribute)
    assert attr.classes[attr.index(cls)].destination_phrase(phrase) == expected


def test_destination_needs_an_article_phrase() -> None:
    with pytest.raises(InputError, match="must start with its article"):
        at.GENDER.classes[0].destination_phrase("nurse")


def test_attribute_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "hair.txt"
    path.write_text(HAIR, encoding="utf-8")
    hair = at.load_attribute_file(path)
    assert hair.name == "hair" and hair.description == "hair colour" and hair.k == 2
    assert hair.classes[0].labels == ("a photo of a person with blond hair", "a photo of a blond person")
    assert hair.classes[1].destination_phrase("an actor") == "an actor with dark hair"
    assert hair.to_dict()["classes"][1] == {"name": "dark", "labels": ["a photo of a person with dark hair"],
                                            "destination": "a {} with dark hair"}
    assert at.resolve_attribute(str(path)) == hair
    assert at.resolve_attribute("age") is at.AGE


@pytest.mark.parametrize("edit,line,words", [
    (("  destination: a {} with dark hair", "  destinaton: a {} with dark hair"), 12,
     ["unknown key 'destinaton'", "did you mean 'destination'"]),
    (("class: dark", "class: blond"), 10, ["class 'blond' is defined twice (first at line 5)"]),
    (("a {} with dark hair", "a dark-haired person"), 12, ["must contain '{}' exactly once"]),
    (("a {} with dark hair", "{} with dark hair"), 12, ["must start with an article"]),
    (("  label: a photo of a person with dark hair\n", ""), 10, ["class 'dark' has no 'label:' line"]),
    (("  destination: a {} with blond hair\n", ""), 5, ["class 'blond' has no 'destination:' line"]),
    (("a photo of a person with dark hair", "a photo of a blond person"), 11,
     ["already a label of class 'blond' (line 7)"]),
    (("attribute: hair", "atribute: hair"), 2, ["unknown key 'atribute'"]),
    (("  label: a photo of a blond person      # a paraphrase", "  label:"), 7, ["'label:' has no value"]),
    (("description: hair colour", "hair colour"), 3, ["every line is 'key: value'"]),
    (("description: hair colour\n", "description: hair colour\nlabel: x\n"), 4, ["before any 'class:'"]),
])
def test_attribute_file_errors_name_the_line(tmp_path: Path, edit, line: int, words) -> None:
    assert edit[0] in HAIR
    path = tmp_path / "hair.txt"
    path.write_text(HAIR.replace(edit[0], edit[1]), encoding="utf-8")
    with pytest.raises(InputError) as err:
        at.load_attribute_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message


def test_attribute_file_needs_two_classes(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("# one class\nattribute: hair\nclass: blond\nlabel: a blond person\ndestination: a {} x\n")
    with pytest.raises(InputError, match=rf"^{path}:2: attribute 'hair' has only class 'blond'; it needs at least 2"):
        at.load_attribute_file(path)
    path.write_text("class: blond\n")
    with pytest.raises(InputError, match=rf"^{path}:1: 'class:' before 'attribute:'"):
        at.load_attribute_file(path)
    with pytest.raises(InputError, match="attribute file not found"):
        at.load_attribute_file(tmp_path / "missing.txt")


def test_attribute_checks_in_code() -> None:
    with pytest.raises(InputError, match="needs at least 2"):
        at.Attribute("x", (at.AttributeClass("a", ("p",), "a {}"),))
    with pytest.raises(InputError, match="is in classes 'a' and 'b'"):
        at.Attribute("x", (at.AttributeClass("a", ("p",), "a {}"), at.AttributeClass("b", ("p",), "a {} b")))
    with pytest.raises(InputError, match="no label prompt"):
        at.AttributeClass("a", (), "a {}")


def test_parse_targets() -> None:
    known = at.builtin_attributes()
    assert at.parse_targets("skin=0.5,0.3,0.2; gender=0.5,0.5", known, "list.txt:3") == {
        "skin": (0.5, 0.3, 0.2), "gender": (0.5, 0.5)}
    assert at.parse_targets(" target=0.4 ", known) == {"gender": (0.4, pytest.approx(0.6))}
    assert at.parse_targets("age = 0.3, 0.4, 0.3;", [at.AGE]) == {"age": (0.3, 0.4, 0.3)}
    assert at.parse_targets("", known) == {}
    assert at.parse_targets("skin=0.3333333,0.3333333,0.3333334", known)["skin"][2] == 0.3333334


@pytest.mark.parametrize("text,words", [
    ("skin=0.5,0.5", ["skin has 3 classes (light, medium, dark) but 2 share(s)"]),
    ("skin=0.5,0.3,0.3", ["shares sum to 1.1", "must sum to 1"]),
    ("skin=0.6,0.5,-0.1", ["share -0.1 is negative"]),
    ("skn=0.5,0.3,0.2", ["unknown attribute 'skn'", "Did you mean 'skin'"]),
    ("skin=a,b,c", ["share 'a' is not a number"]),
    ("skin 0.5", ["cannot read 'skin 0.5'"]),
    ("target=0.4; gender=0.4,0.6", ["a second target for 'gender'"]),
    ("target=0.4,0.6", ["'target' is one share of 'female'"]),
])
def test_parse_targets_errors_name_the_line(text: str, words) -> None:
    with pytest.raises(InputError) as err:
        at.parse_targets(text, at.builtin_attributes(), "professions.txt:7")
    message = str(err.value)
    assert message.startswith("professions.txt:7: ")
    for word in words:
        assert word in message
