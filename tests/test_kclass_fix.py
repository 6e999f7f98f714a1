"""The attribute fix: the k-class edit's math, its record, and `fix(attributes=...)` end to end on the mini model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from debias.editing import edit_matrix
from debias.core.errors import InputError
from debias.core.attributes import AGE, GENDER, SKIN
from debias.fixing.kclass import (
    ClassEdit, CrossedAttribute, combined_matrix, edit_of, strongest_within, weighted_rows, within_tolerance,
)
from debias.fixing.kclass_record import distribution, moved_beyond_noise
from debias.fixing.plan import Anchors
from debias.verbs.fix import fixed_attributes
from debias.results.records import AttributeFix, FixResult, HeldAttribute


def _rows(seed: int, n: int = 12, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(n, d, generator=g, dtype=torch.float64)
    return C, C + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_one_class_at_strength_w_is_the_binary_edit_at_lambda_one_over_w() -> None:
    (C, S), anchors = _rows(0), Anchors(torch.randn(20, 16, dtype=torch.float64), 100.0)
    scale, w = 3.0, 0.25
    binary = edit_matrix(C, S, scale / w, preserve=anchors.rows, preserve_weight=anchors.strength)
    assert torch.allclose(combined_matrix([(C, S, w)], scale, anchors), binary, atol=1e-10)
    assert torch.allclose(combined_matrix([(C, S, w)], scale, None), edit_matrix(C, S, scale / w), atol=1e-10)


def test_classes_without_strength_add_no_rows_and_none_means_no_edit() -> None:
    a, b = _rows(1), _rows(2)
    assert combined_matrix([(*a, 0.0), (*b, 0.0)], 1.0, None) is None
    assert torch.allclose(combined_matrix([(*a, 0.0), (*b, 2.0)], 1.0, None), combined_matrix([(*b, 2.0)], 1.0, None))
    sources, _, weights = weighted_rows([(*a, 1.0), (*b, 3.0)])
    assert sources.shape[0] == 24 and weights.tolist() == [1.0] * 12 + [3.0] * 12


def test_two_destinations_pull_the_source_between_them_by_their_strengths() -> None:
    C = torch.eye(4, dtype=torch.float64)[:2]
    up, down = C + torch.tensor([0, 0, 1.0, 0]), C + torch.tensor([0, 0, 0, 1.0])
    M = combined_matrix([(C, up, 4.0), (C, down, 1.0)], 1e-6, None)
    moved = C @ M.T - C
    assert torch.all(moved[:, 2] > 3.5 * moved[:, 3])  # the stronger destination takes 4/5 of the pull


def test_two_attributes_cross_into_cells_whose_destinations_name_both() -> None:
    crossed = CrossedAttribute(SKIN, GENDER)  # gender's word goes next to the profession whichever comes first
    assert crossed.name == "skin+gender" and crossed.k == 6
    assert crossed.class_names[:2] == ("light_female", "light_male")
    assert [c.destination_phrase("an engineer") for c in crossed.classes[-2:]] == [
        "a female engineer with dark skin", "a male engineer with dark skin"]
    elderly = CrossedAttribute(GENDER, AGE).classes[AGE.index("old")]  # female_old
    assert elderly.destination_phrase("a pilot") == "an elderly female pilot"
    target = crossed.target((0.5, 0.3, 0.2), (0.4, 0.6))
    assert target == pytest.approx([0.2, 0.3, 0.12, 0.18, 0.08, 0.12])
    skin, gender = crossed.marginals(target)
    assert skin == pytest.approx([0.5, 0.3, 0.2]) and gender == pytest.approx([0.4, 0.6])
    assert crossed.marginals([1, 2, 3, 4, 5, 6]) == ([3, 7, 11], [9, 12])
    assert crossed.joint_labels(["dark", "unclear", "light"], ["male", "female", "unclear"]) == [
        "dark_male", "unclear", "unclear"]


def test_a_crossed_edit_is_reported_per_attribute_with_the_cells_strengths() -> None:
    crossed = CrossedAttribute(GENDER, SKIN)
    pilot = SimpleNamespace(phrase="a pilot", name="pilot")
    strengths = (0.0, 0.5, 2.0, 0.0, 0.0, 1.0)
    edit = ClassEdit(crossed, pilot, crossed.target((0.5, 0.5), (1 / 3,) * 3), (3, 1, 0, 10, 4, 2),
                     strengths=list(strengths))
    skin = edit_of(edit, SKIN)
    assert skin.attribute is SKIN and skin.edited_as is crossed
    assert skin.target == pytest.approx((1 / 3,) * 3) and skin.tuning_counts == (13, 5, 2)
    assert skin.strengths == list(strengths) and skin.destinations()[2] == "a female pilot with dark skin"
    assert edit_of(edit, GENDER).tuning_counts == (4, 16)
    assert edit_of(edit, AGE) is None


def test_the_strongest_strength_within_the_drift_limit() -> None:
    drift = lambda x: math.exp(x) / 10  # noqa: E731 - drift grows with w = exp(x)
    assert strongest_within(drift, -5.0, 5.0, 0.5) == pytest.approx(5.0, rel=1e-6)
    assert strongest_within(drift, -5.0, 1.0, 0.5) == pytest.approx(math.e)  # the limit is never reached
    assert strongest_within(drift, 3.0, 5.0, 0.5) == pytest.approx(math.exp(3.0))  # even the weakest is too strong


def test_the_band_and_the_distribution_of_one_profession() -> None:
    assert within_tolerance([34, 33, 33], [1 / 3] * 3, 0.05) and not within_tolerance([50, 30, 20], [1 / 3] * 3, 0.05)
    assert within_tolerance([0, 0, 0], [1 / 3] * 3, 0.05) is None
    d = distribution([50, 30, 20], 4, [1 / 3] * 3, 0.05)
    assert d.shares == [0.5, 0.3, 0.2] and d.within_band is False and d.n_unclear == 4
    assert all(lo <= s <= hi for lo, s, hi in zip(d.ci_low, d.shares, d.ci_high))
    assert d.delta == pytest.approx((0.5 - 1 / 3) / (2 / 3))


def test_attribute_blocks_are_typed_and_read_back_as_written() -> None:
    from dataclasses import asdict

    from debias.results.records import attribute_block

    shares = {"counts": [50, 30, 20], "n_unclear": 4, "shares": [0.5, 0.3, 0.2], "ci_low": [0.4, 0.2, 0.1],
              "ci_high": [0.6, 0.4, 0.3], "delta": 0.25, "within_band": False}
    row = {"profession": "pilot", "phrase": "a pilot", "target": [1 / 3] * 3, "cells": None,
           "destinations": ["a pilot with light skin", "a pilot with medium skin", "a pilot with dark skin"],
           "status": "budget_exhausted", "tuning_counts": [40, 15, 9], "caps": [9.0, 9.0, 9.0],
           "strengths": [0.0, 0.5, 2.0], "lambda_relative": [None, 2.0, 0.5], "reference_class": "light",
           "joined_round": None, "engine": {"status": "converged"}, "rounds": [{"round": 0}],
           "before": shares, "after": {**shares, "counts": [43, 43, 42]}}
    fixed = {"attribute": "skin", "fixed": True, "classes": ["light", "medium", "dark"], "crossed": None,
             "tolerance": 0.05, "band_rule": "…", "interval_method": "goodman", "mean_delta_before": 0.25,
             "mean_delta_before_ci_low": 0.2, "mean_delta_before_ci_high": 0.3, "mean_delta_after": 0.1,
             "mean_delta_after_ci_low": 0.05, "mean_delta_after_ci_high": 0.2, "within_tolerance_before": 0,
             "within_tolerance_after": 0, "professions": [row],
             "mean_delta_by_template": {"a portrait of {}": {"before": 0.3, "after": 0.1}}}
    block = attribute_block(fixed, "fix.json: attribute_fixes[0]")
    assert isinstance(block, AttributeFix) and block.professions[0].after.counts == [43, 43, 42]
    assert asdict(block) == fixed  # the file's keys, in the file's order
    held = {"attribute": "gender", "fixed": False, "classes": ["female", "male"], "noise_rule": "…",
            "mean_largest_change": 0.02, "moved": 0,
            "professions": [{"profession": "pilot", "phrase": "a pilot", "counts_before": [30, 98],
                             "counts_after": [33, 95], "n_unclear_before": 0, "n_unclear_after": 0,
                             "shares_before": [0.23, 0.77], "shares_after": [0.26, 0.74], "largest_change": 0.02,
                             "noise": 0.1, "moved": False}]}
    assert isinstance(attribute_block(held, "x"), HeldAttribute) and asdict(attribute_block(held, "x")) == held
    with pytest.raises(InputError, match=r"x: professions\[0\]: unknown field\(s\) \['colour'\]"):
        attribute_block({**held, "professions": [{**held["professions"][0], "colour": 1}]}, "x")
    with pytest.raises(InputError, match=r"x: professions\[0\].before: not a ClassShares"):
        attribute_block({**fixed, "professions": [{**row, "before": None}]}, "x")


def test_a_held_attribute_moves_only_beyond_its_noise() -> None:
    change, noise = moved_beyond_noise([60, 40], [58, 42])
    assert change == pytest.approx(0.02) and change < noise
    change, noise = moved_beyond_noise([90, 10], [40, 60])
    assert change == pytest.approx(0.5) and change > noise
    assert moved_beyond_noise([0, 0], [3, 4]) == (None, None)


def test_fix_attribute_values_are_checked_before_anything_loads(tmp_path: Path) -> None:
    assert [a.name for a in fixed_attributes(["gender", "skin"])] == ["gender", "skin"]
    with pytest.raises(InputError, match="3 attributes given.*two crossed"):
        fixed_attributes(["gender", "skin", "age"])
    with pytest.raises(InputError, match="given twice"):
        fixed_attributes(["skin", "skin"])
    with pytest.raises(InputError, match="unknown attribute 'skn'.*Did you mean 'skin'"):
        fixed_attributes(["skn"])
    bad = tmp_path / "hair.txt"
    bad.write_text("attribute: hair\nclass: blond\nlabel: a photo of a blond person\n", encoding="utf-8")
    with pytest.raises(InputError, match="hair.txt"):
        fixed_attributes([str(bad)])


@pytest.mark.slow
def test_fix_attribute_gender_is_the_gender_fix(tmp_path: Path) -> None:
    """Gender is the k = 2 attribute of the one engine: naming it changes nothing, to the last digit."""
    import debias

    options = dict(professions=["a nurse", "an engineer"], test_images=32, check_images=32, budget=96, side_seeds=2,
                   progress=False, log=None, threads=1)
    plain = debias.fix("mini", out=tmp_path / "plain", **options).to_dict()
    named = debias.fix("mini", out=tmp_path / "named", attributes=["gender"], **options).to_dict()
    timing = ("started_at", "finished_at", "wall_seconds", "edit_file")
    assert {k: v for k, v in plain.items() if k not in timing} == {k: v for k, v in named.items() if k not in timing}
    assert "attribute_fixes" not in plain  # gender has the main table
    nurse, engineer = plain["professions"]
    assert nurse["destination"] == "a male nurse" and engineer["destination"] == "a female engineer"
    assert engineer["share_after"] > engineer["share_before"] + 0.2
    assert nurse["share_after"] < nurse["share_before"]
    for row in (nurse, engineer):  # every round recorded with its strength, on the tuning side's budget
        assert [j["round"] for j in row["joint"]] == [0, 1, 2]
        assert row["images_used_in_search"] + 32 <= 96
        assert row["status"] in ("fixed", "budget_exhausted", "not_reachable")


@pytest.mark.slow
def test_fix_skin_measures_gender_before_and_after_as_held(tmp_path: Path) -> None:
    import debias

    result = debias.fix("mini", professions=["a pilot"], attributes=["skin"], out=tmp_path / "run",
                        test_images=24, check_images=24, budget=128, side_seeds=2, progress=False, log=None,
                        threads=1)
    skin, gender = result.attribute_fixes  # typed: a fixed attribute, then one measured only
    assert (type(skin), type(gender)) == (AttributeFix, HeldAttribute)
    assert (skin.attribute, skin.fixed, gender.attribute, gender.fixed) == ("skin", True, "gender", False)
    (row,) = skin.professions
    assert row.target == pytest.approx([1 / 3] * 3) and len(row.destinations) == 3
    assert row.destinations[2] == "a pilot with dark skin"
    (held,) = gender.professions
    assert sum(held.counts_before) + held.n_unclear_before == 24
    assert isinstance(held.moved, bool) and held.noise > 0
    assert np.isfinite(skin.mean_delta_before)
    # skin's mean Δ per held-out template, from the labels of the images of each (image i: template i mod 4)
    for side in ("before", "after"):
        audit = json.loads((tmp_path / "run" / side / "audit.json").read_text())
        (section,) = [a for a in audit["attributes"] if a["attribute"] == "skin"]
        labels, templates = section["professions"][0]["labels"], audit["templates"]
        assert list(skin.mean_delta_by_template) == templates
        for j, template in enumerate(templates):
            counts = [labels[j::len(templates)].count(c) for c in ("light", "medium", "dark")]
            expected = max(abs(c / sum(counts) - 1 / 3) for c in counts) / (2 / 3)
            assert skin.mean_delta_by_template[template][side] == pytest.approx(expected)
    # fix.json holds the same, and reads back into the same typed blocks, byte for byte
    saved = (tmp_path / "run" / "fix.json").read_text()
    assert FixResult.from_json(tmp_path / "run").to_json() == saved == result.to_json()
    # the report shows the fix's status and strengths beside the skin section, each number from its twin
    twin = json.loads((tmp_path / "run" / "report.json").read_text())
    (section,) = twin["attributes"]
    assert section["fixed"] and section["professions"][0]["fix"] == {"status": row.status,
                                                                     "lambda_relative": row.lambda_relative}
    # and skin's mean Δ per held-out template, as fix.json has it, on the page by its key
    assert section["by_template"] == [{"template": t, **d} for t, d in skin.mean_delta_by_template.items()]
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'data-key="attributes.0.professions.0.fix.status"' in html and "λ_rel per class" in html
    assert 'data-key="attributes.0.by_template.3.after"' in html and "<code>a drawing of {}</code>" in html
    # the summary leads with the attribute the fix edited; gender, only measured, comes second and says so
    (lead,) = twin["summary"]["fixed_attributes"]
    assert (lead["attribute"], lead["n_professions"]) == ("skin", 1)
    assert lead["mean_delta_after"] == skin.mean_delta_after and lead["within_tolerance_after"] == \
        skin.within_tolerance_after
    conclusion = twin["summary"]["conclusion"]
    assert conclusion.startswith(f"After the edit, {skin.within_tolerance_after} of 1 professions are within ±0.05 "
                                 "of their skin targets")
    assert conclusion.index("skin mean Δ") < conclusion.index("Gender, which this fix did not edit")
    assert 'data-key="summary.fixed_attributes.0.mean_delta_after"' in html
    assert "Gender: measured, not edited by this fix" in html and "<title>Skin fix: before and after" in html
    assert "Gender, which this fix did not edit: after the edit, " in conclusion
    card = (tmp_path / "run" / "report.md").read_text()
    assert f"**skin mean Δ (edited): {skin.mean_delta_before:.3f} → {skin.mean_delta_after:.3f}**" in card
    assert card.index("skin mean Δ (edited)") < card.index("Gender, measured and not edited: **Mean Δ:")


@pytest.mark.slow
def test_fix_gender_and_skin_crossed_reports_both_on_their_own_shares(tmp_path: Path) -> None:
    import debias

    out = tmp_path / "run"
    result = debias.fix("mini", professions=["a pilot"], attributes=["gender", "skin"], out=out,
                        test_images=24, check_images=24, budget=96, side_seeds=2, progress=False, log=None,
                        threads=1)
    gender, skin = result.attribute_fixes  # both fixed, nothing held
    assert [b.crossed for b in (gender, skin)] == [["gender", "skin"]] * 2
    (g,), (s,) = gender.professions, skin.professions
    assert g.cells == s.cells == ["female_light", "female_medium", "female_dark", "male_light", "male_medium",
                                  "male_dark"]
    assert g.destinations[2] == "a female pilot with dark skin" and len(g.strengths) == 6
    assert g.strengths == s.strengths and g.target == [0.5, 0.5] and s.target == pytest.approx([1 / 3] * 3)
    for row in (g, s):  # each judged on its own shares in the after audit
        assert sum(row.after.counts) + row.after.n_unclear == 24
    # gender's per-template Δ comes from the after audit's per-prompt counts
    after_row = json.loads((out / "after" / "audit.json").read_text())["professions"][0]
    for cell, template in zip(after_row["by_prompt"], gender.mean_delta_by_template):
        assert gender.mean_delta_by_template[template]["after"] == pytest.approx(
            abs(cell["n_female"] / (cell["n_female"] + cell["n_male"]) - 0.5) / 0.5)
    assert [r["round"] for r in g.rounds] == [0, 1, 2] and len(g.rounds[0]["counts"]) == 6
    after = json.loads((out / "after" / "audit.json").read_text())
    assert [section["attributes"] for section in after["intersections"]] == [["gender", "skin"]]
    twin = json.loads((out / "report.json").read_text())
    (section,) = twin["attributes"]  # skin's section (gender has the report's main table)
    assert section["crossed"] == ["gender", "skin"] and section["cells"] == s.cells
    assert "λ_rel per cell" in (out / "report.html").read_text()
    assert twin["summary"]["fixed_attributes"] == []  # gender was edited: it leads, as in a gender fix
