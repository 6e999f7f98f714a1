"""What a fix decides from, what it writes when there is nothing to edit, and how a saved fixed model is audited.

The held-out test audit is a judge only: poisoning its shares must not change the edit. A fix with nothing to edit
says why and writes no edit file. A folder written by ``--save-pipeline`` keeps the profile of the model it was made
from, so auditing it with no options reproduces the fix's own after audit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import debias.fixing.ship
import debias.fixing.steps
import debias.generation.generate
import debias.verbs.audit
from audit_helpers import HalfClassifier, load_tiny, tiny_folders
from debias.verbs.fix import fix

QUICK = dict(budget=48, test_images=8, check_images=8, joint_rounds=1, side_seeds=2, steps=2, progress=False, log=None)


def _list(tmp_path: Path, text: str = "a nurse\na pilot\n") -> Path:
    path = tmp_path / "professions.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _poison_test_audit(monkeypatch, share: float) -> None:
    """Make the before audit on the held-out test prompts report ``share`` for every profession."""
    real = debias.fixing.steps.audit_stage

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        if kwargs.get("stage") == "before":
            for row in result.professions:
                row.share_female = row.ci_low = row.ci_high = share
                row.delta = abs(share - row.target) * 2
        return result

    monkeypatch.setattr(debias.fixing.steps, "audit_stage", poisoned)


def _decisions(record: dict) -> list:
    return [(p["profession"], p["destination"], p["lambda_relative"], p["status"] != "already_within_tolerance")
            for p in record["professions"]]


def test_test_audit_shares_reach_no_decision(tmp_path, monkeypatch):
    pipe, _ = load_tiny()
    professions, out = _list(tmp_path), tmp_path / "run"
    clean = fix(pipe, professions=professions, classifier=HalfClassifier(), out=out, **QUICK).to_dict()
    assert clean["edit_file"] is not None, "the stand-in classifier leaves a profession off target on tuning prompts"
    for share in (0.0, 0.5, 1.0):  # all "female", all on target, all "male" on the test prompts
        with monkeypatch.context() as m:
            _poison_test_audit(m, share)
            poisoned = fix(pipe, professions=professions, classifier=HalfClassifier(), out=out, **QUICK).to_dict()
        assert [p["share_before"] for p in poisoned["professions"]] == [share] * 2  # the poison did arrive
        assert _decisions(poisoned) == _decisions(clean)
        assert poisoned["edit_file"]["matrix_sha256"] == clean["edit_file"]["matrix_sha256"]


class AlwaysUnclear(HalfClassifier):
    cache_id = "always-unclear-v1"

    def classify(self, images):
        n = len(images)
        return ["unclear"] * n, torch.full((n,), 0.5)


@pytest.mark.parametrize("case", ["within_band", "all_unclear"])
def test_nothing_to_edit_writes_no_edit_and_says_why(tmp_path, capsys, case):
    pipe, _ = load_tiny()
    out = tmp_path / "run"
    out.mkdir()
    (out / "edit.safetensors").write_bytes(b"an earlier run's edit")  # must not outlive a run that edits nothing
    options = dict(QUICK, log=print)
    if case == "within_band":
        record = fix(pipe, professions=_list(tmp_path), classifier=HalfClassifier(), out=out, tolerance=0.49,
                     save_pipeline=tmp_path / "fixed", **options).to_dict()
        assert {p["status"] for p in record["professions"]} == {"already_within_tolerance"}
        assert "already lie within the band on the tuning prompts (nurse, pilot)" in record["edit_note"]
    else:
        record = fix(pipe, professions=_list(tmp_path), classifier=AlwaysUnclear(), out=out,
                     save_pipeline=tmp_path / "fixed", **options).to_dict()
        assert {p["status"] for p in record["professions"]} == {"not_reachable"}
        assert "no image the classifier could read" in record["edit_note"]
    said = capsys.readouterr().out
    assert record["edit_file"] is None and not (out / "edit.safetensors").exists()
    assert "No edit file is written and the model is unchanged" in said
    assert f"no pipeline written to {tmp_path / 'fixed'}" in said and not (tmp_path / "fixed").exists()
    after = json.loads((out / "after" / "audit.json").read_text())
    assert after["edit"] is None  # judged on the unchanged model
    assert record["side_effects"]["mean_abs_pixel_change"] is None
    assert json.loads((out / "fix.json").read_text())["edit_note"] == record["edit_note"]


def test_after_audit_judges_the_edit_file_loaded_into_the_weights(tmp_path, monkeypatch):
    """The after audit and the side-effect check run on the weights the edit file holds, not on a transform."""
    from debias import editing

    pipe, _ = load_tiny()
    loaded, transforms = [], []
    real_load, real_transform = editing.load_edit, editing.conditioning_transform
    # the seams: the fix loads its edit file in debias.fixing.ship, generation tries an edit in debias.generation
    monkeypatch.setattr(debias.fixing.ship, "load_edit",
                        lambda p, path, **kw: (loaded.append(Path(path)), real_load(p, path, **kw))[1])

    def counting_transform(p, M):
        transforms.append(len(loaded))
        return real_transform(p, M)

    monkeypatch.setattr(debias.generation.generate, "conditioning_transform", counting_transform)
    record = fix(pipe, professions=_list(tmp_path), classifier=HalfClassifier(), out=tmp_path / "run", **QUICK).to_dict()
    assert loaded == [tmp_path / "run" / "edit.safetensors"]
    assert transforms and max(transforms) == 0  # every transformed candidate came before the edit file was loaded
    after = json.loads((tmp_path / "run" / "after" / "audit.json").read_text())
    assert after["edit"]["applied_as"] == "weights loaded from the edit file"
    assert after["edit"]["matrix_sha256"] == record["edit_file"]["matrix_sha256"]
    assert not editing.is_edited(pipe)  # the pipeline is handed back unedited


def _labels(record: dict) -> dict:
    return {(s["prompt"], s["seed"]): s["label"] for row in record["professions"] for s in row["samples"]}


def test_a_saved_fixed_model_is_audited_with_the_settings_its_fix_used(tmp_path, capsys):
    """Sampler, size, test prompts and classifier of the fix's after audit are the saved folder's defaults."""
    sd, clip = tiny_folders()
    professions, saved = _list(tmp_path), tmp_path / "fixed"
    record = fix(str(sd), professions=professions, classifier=str(clip), min_confidence=0.5, out=tmp_path / "run",
                 steps=3, guidance=2.0, height=24, width=24, save_pipeline=saved,
                 **{k: v for k, v in QUICK.items() if k != "steps"}).to_dict()
    assert record["edit_file"] is not None
    card = (saved / "README.md").read_text(encoding="utf-8")  # its model card holds the fix report's section
    assert card.startswith("---\n") and card.endswith((tmp_path / "run" / "report.md").read_text(encoding="utf-8"))
    capsys.readouterr()
    audited = debias.verbs.audit.audit(str(saved), professions=professions, images_per_profession=QUICK["test_images"],
                                    out=tmp_path / "audit", progress=False).to_dict()
    assert f"using the settings recorded in {saved / 'debias_edit.json'}" in capsys.readouterr().err
    after = json.loads((tmp_path / "run" / "after" / "audit.json").read_text())
    for key in ("scheduler", "steps", "guidance", "height", "width"):
        assert audited["generation"][key] == after["generation"][key], key
    assert audited["templates"] == after["templates"] and audited["prompt_set"] == "test"
    assert audited["classifier"] == after["classifier"]  # the same CLIP folder and abstain rule (0.5)
    assert _labels(audited) == _labels(after)


@pytest.mark.slow
def test_a_saved_fixed_mini_model_audits_like_the_fix_after_audit(tmp_path, capsys):
    """Auditing a --save-pipeline folder with no options reads the same labels at the same seeds."""
    out, saved = tmp_path / "run", tmp_path / "fixed"
    professions = _list(tmp_path, "a nurse\nan engineer\n")
    record = fix("mini", professions=professions, out=out, budget=48, test_images=32, check_images=16,
                 joint_rounds=1, side_seeds=1, save_pipeline=saved, progress=False, log=None).to_dict()
    assert record["edit_file"] is not None
    capsys.readouterr()
    # no sampler, prompt or classifier option: the folder's recorded settings decide them
    audited = debias.verbs.audit.audit(str(saved), professions=professions, out=tmp_path / "audit", progress=False).to_dict()
    assert "(model profile 'mini')" in capsys.readouterr().err
    assert audited["model"]["profile"] == "mini" and audited["classifier"]["backend"] == "mini-clip"
    after = json.loads((out / "after" / "audit.json").read_text())
    assert audited["generation"] == after["generation"] and audited["templates"] == after["templates"]

    theirs, ours = _labels(after), _labels(audited)
    assert len(theirs) == 64 and set(theirs) <= set(ours)  # the audit's default 64 images cover the fix's 32
    assert {k: ours[k] for k in theirs} == theirs
