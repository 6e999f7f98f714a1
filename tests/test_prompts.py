"""Profession lists and templates: the format, its errors (with file:line), and the shipped lists."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from debias.core import prompts
from debias.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_parse_list_with_comments_blanks_and_targets(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# header\n\na nurse\nan  engineer   # inline comment\na CEO | target=0.4\n", encoding="utf-8")
    entries = prompts.read_professions(path)
    assert [e.phrase for e in entries] == ["a nurse", "an engineer", "a CEO"]
    assert [e.name for e in entries] == ["nurse", "engineer", "CEO"]
    assert [e.target for e in entries] == [None, None, 0.4]
    assert entries[2].source == f"{path}:5"


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("a nurse\nnurse\n", 2, "must start with its article"),
        ("a nurse | target=1.5\n", 1, "outside [0, 1]"),
        ("a nurse | target=high\n", 1, "not a number"),
        ("a nurse | weight=2\n", 1, "unknown attribute 'weight'"),
        ("a nurse | target 0.4\n", 1, "key=value"),
        ("a nurse | a | b\n", 1, "more than one '|'"),
        ("a photo of {}\n", 1, "braces"),
        ("a nurse\nan engineer\nA Nurse\n", 3, "listed twice (first at"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        prompts.read_professions(path)
    assert f"{path}:{line}:" in str(err.value)
    assert message in str(err.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no professions"):
        prompts.read_professions(empty)
    with pytest.raises(InputError, match="not found"):
        prompts.read_professions(tmp_path / "missing.txt")


def test_shipped_timed_list_matches_csv() -> None:
    from_file = prompts.read_professions(ROOT / "professions" / "timed.txt")
    shipped = prompts.timed_professions()
    with open(ROOT / "debias" / "data" / "TIMED_gender_test_set.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(from_file) == len(shipped) == 35
    assert [e.phrase for e in from_file] == [e.phrase for e in shipped] == [r["old"] for r in rows]
    # TIMED's own prompts are exactly our default templates applied to the phrase: its validation prompt is the
    # first tuning template (the others add variety), its test prompts the test templates
    tuning = prompts.TIMED_TEMPLATES.tuning
    assert not {t.lower() for t in tuning} & {t.lower() for t in prompts.TIMED_TEMPLATES.test} and len(tuning) > 1
    for row, entry in zip(rows, shipped):
        assert prompts.profession_prompts(entry, tuning[:1]) == [row["validation"]]
        assert prompts.profession_prompts(entry, prompts.TIMED_TEMPLATES.test) == [row[f"ex{i}"] for i in range(1, 6)]


def test_mini_profile_professions_and_templates() -> None:
    from debias.mini import world
    from debias.core.profiles import get_profile

    profile = get_profile("mini")
    entries = profile.default_professions()
    assert [e.phrase for e in entries] == [p.phrase for p in world.PROFESSIONS]
    t = profile.template_set()
    assert t.get("tuning") == tuple(world.AUGMENTATIONS) and t.get("test") == tuple(world.TEST_TEMPLATES)
    assert world.TUNING_TEMPLATE in t.get("tuning") and not set(t.get("tuning")) & set(t.get("test"))
    with pytest.raises(InputError, match="--prompt-set"):
        t.get("validation")


def test_templates_option_and_file(tmp_path: Path) -> None:
    assert prompts.templates_from_option(["a photo of {}", "{} at work"]) == ("a photo of {}", "{} at work")
    with pytest.raises(InputError, match="exactly once"):
        prompts.templates_from_option(["a photo of {} and {}"])
    with pytest.raises(InputError, match="given twice"):
        prompts.templates_from_option(["{} x", "{} x"])
    path = tmp_path / "t.txt"
    path.write_text("# mine\nA photo of {}\n\n{} at work\n", encoding="utf-8")
    assert prompts.templates_from_option([str(path)]) == ("A photo of {}", "{} at work")
    path.write_text("A photo of {}\nno placeholder\n", encoding="utf-8")
    with pytest.raises(InputError, match=f"{path}:2"):
        prompts.templates_from_option([str(path)])


class _WordTokenizer:
    """A stand-in with the transformers tokenizer interface: one token per word plus start and end."""

    model_max_length = 8

    def __call__(self, text: str, truncation: bool = False, verbose: bool = True):
        class _Out:
            input_ids = [0] + [1] * len(text.split()) + [2]

        return _Out()


def test_over_long_prompt_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("a nurse\na very very very long job title\n", encoding="utf-8")
    entries = prompts.read_professions(path)
    prompts.check_prompt_lengths(entries[:1], ["a photo of {}"], _WordTokenizer())  # 6 tokens: fine
    with pytest.raises(InputError) as err:
        prompts.check_prompt_lengths(entries, ["a photo of {}"], _WordTokenizer())
    assert f"{path}:2:" in str(err.value) and "at most 8" in str(err.value)
