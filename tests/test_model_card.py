"""The model card of a saved pipeline (README.md): metadata a hub reads, the edit, and the report's bias section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import runs  # noqa: E402

from debias.report import bias_section, model_card, render_report, twin_paths, write_model_card  # noqa: E402
from debias.report.card import note_saved_pipeline  # noqa: E402

EDIT = {"kind": "edited_pipeline", "debias_version": "0.1.0", "edits": [
    {"source": "a nurse", "destination": "a male nurse", "lambda": 812.5, "lambda_relative": 0.4063}]}


def _metadata(spec: str) -> dict:
    return {**EDIT, "base_model": {"spec": spec, "fingerprint": "sha256:" + "ab" * 32}}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """No base model's card is in the hub cache unless a test puts it there."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_a_built_in_models_card_carries_its_license_and_no_hub_base():
    card = ModelCard(model_card(_metadata("mini"), None))
    assert card.data.to_dict() == {"license": "apache-2.0", "library_name": "diffusers",
                                   "pipeline_tag": "text-to-image",
                                   "tags": ["diffusers", "text-to-image", "debias", "bias-evaluation"]}
    assert "| a nurse | a male nurse | 0.406 |" in card.text
    assert "## Bias evaluation\n\nNot measured yet. `debias audit --model path/to/this/folder`" in card.text


def test_a_fixs_edit_lists_each_destination_it_moved_towards():
    fixed = {**_metadata("mini"), "edits": [{"source": "a pilot", "destinations": ["a female pilot", "a male pilot"],
                                             "lambda_relative": [0.25, None]}]}
    text = model_card(fixed, None)
    assert "| a pilot | a female pilot | 0.25 |" in text and "a male pilot" not in text


def test_a_hub_models_card_names_it_and_asks_for_its_license():
    card = ModelCard(model_card(_metadata("CompVis/stable-diffusion-v1-4"), None))
    assert card.data.base_model == "CompVis/stable-diffusion-v1-4" and card.data.license == "other"
    assert "The license above is a placeholder" in card.text


def test_a_local_base_models_license_is_copied(tmp_path):
    base = tmp_path / "my-model"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: openrail++\ntags:\n- x\n---\n# base\n", encoding="utf-8")
    card = ModelCard(model_card(_metadata(str(base)), None))
    assert card.data.license == "openrail++" and card.data.base_model is None
    assert "placeholder" not in card.text


def test_a_fixed_models_card_holds_the_fix_reports_section(tmp_path):
    fix = runs.make_fix(tmp_path / "fix", evil=True)
    saved = tmp_path / "fixed"
    saved.mkdir()
    (saved / "model_index.json").write_text("{}", encoding="utf-8")
    (saved / "debias_edit.json").write_text(json.dumps(_metadata("mini")), encoding="utf-8")
    note_saved_pipeline(fix, saved)
    html = render_report([fix])
    report = json.loads(twin_paths(html)[0].read_text(encoding="utf-8"))
    card = (saved / "README.md").read_text(encoding="utf-8")
    section = (fix / "report.md").read_text(encoding="utf-8")
    assert card.endswith(section) and section == bias_section(report)
    assert "<script>" not in card and ModelCard(card).data.library_name == "diffusers"

    note_saved_pipeline(fix, None)  # a rerun that saved no pipeline: the report leaves the old folder alone
    write_model_card(saved)
    render_report([fix])
    assert "Not measured yet" in (saved / "README.md").read_text(encoding="utf-8")
