"""Attributes beyond gender in an audit: the k-class abstain rule, the classifier per attribute on the loaded CLIP,
the sections and intersections an audit writes (JSON and CSV), targets from the profession list, the label cache,
the errors, the CLI options, and a gender-only audit that stays byte for byte what it was."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit_helpers import HalfClassifier, load_tiny, run_cli, tiny_folders
from debias.stats import multiclass
from debias.core.attributes import AGE, GENDER, SKIN
from debias.auditing.attributes import plan_attributes
from debias.verbs.audit import audit
from debias.classify.zero_shot import decide, decide_classes
from debias.core.errors import InputError
from debias.results.records import AuditResult

FIXTURE = Path(__file__).parent / "fixtures" / "audit_gender_only"
VOLATILE = ("started_at", "finished_at", "wall_seconds", "hardware", "versions", "images_generated", "images_reused")


class PixelAttributes(HalfClassifier):
    """The half-brightness gender stand-in, able to read any attribute: the class is the image's pixel sum modulo
    k + 1, and k means "unclear" (deterministic, varied from seed to seed; the CLIP path is tested on its own)."""

    def for_attribute(self, attribute):
        return _PixelAttribute(attribute)


class _PixelAttribute:
    def __init__(self, attribute):
        self.attribute = attribute
        self.cache_id = f"pixel-{attribute.name}"

    def describe(self) -> dict:
        return {"attribute": self.attribute.name, "backend": "test-pixel", "labels": self.attribute.labels()}

    def classify(self, images):
        k = self.attribute.k
        sums = np.asarray(images).reshape(len(images), -1).sum(axis=1)
        labels = [self.attribute.class_names[s % (k + 1)] if s % (k + 1) < k else "unclear" for s in sums.tolist()]
        return labels, torch.zeros(len(images), k)


def _list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "professions.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _without(record: dict, keys=VOLATILE + ("attributes", "intersections")) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def _split_pixel_readings(record, readings: list):
    """The record with each sample's ``p_female`` taken out into ``readings`` (in order). The stand-in classifier
    reads it from pixel brightness, and another CPU's float kernels (seen between machines of one type) move the
    tiny model's pixels in the 4th decimal; counts, labels and statistics must still match exactly."""
    if isinstance(record, dict):
        out = {}
        for k, v in record.items():
            if k == "p_female" and isinstance(v, float):
                readings.append(v)
                v = None
            out[k] = _split_pixel_readings(v, readings)
        return out
    if isinstance(record, list):
        return [_split_pixel_readings(v, readings) for v in record]
    return record


# ------------------------------------------------------------------------------------------ the abstain rule
def test_k_class_abstain_rule():
    classes = ("light", "medium", "dark")
    probs = torch.tensor([[0.70, 0.20, 0.10, 0.0],   # clear top class
                          [0.45, 0.35, 0.20, 0.0],   # top 0.45 < 0.6: unclear
                          [0.10, 0.15, 0.15, 0.60],  # "none" wins: unclear although dark leads within the classes
                          [0.05, 0.05, 0.40, 0.50],  # P(none) = 0.5 exactly: unclear (as gender's >= 0.5)
                          [0.02, 0.02, 0.46, 0.50 - 1e-3]])
    labels, p = decide_classes(probs, classes, 0.6)
    assert labels == ["light", "unclear", "unclear", "unclear", "dark"]
    assert torch.allclose(p.sum(dim=1), torch.ones(5))
    assert p[1].tolist() == pytest.approx([0.45, 0.35, 0.20])
    assert decide_classes(probs[:, :3], classes, 0.6)[0][2] == "unclear"  # no "none" column: 0.4 < 0.6
    # at k = 2 it is gender's rule, on any probabilities
    g = torch.rand(400, 4, generator=torch.Generator().manual_seed(0)).softmax(dim=1)
    for confidence in (0.5, 0.6, 0.8):
        k_labels, k_p = decide_classes(g, ("female", "male"), confidence)
        b_labels, p_female = decide(g, confidence)
        assert k_labels == b_labels
        assert torch.allclose(k_p[:, 0], p_female)
    with pytest.raises(ValueError, match="3 classes"):
        decide_classes(torch.zeros(2, 2), classes, 0.6)


def test_classifier_per_attribute_shares_the_loaded_clip():
    _, clip = load_tiny()
    images = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    gender_before, probs_before = clip.describe(), clip.probabilities(images)
    skin, age = clip.for_attribute(SKIN), clip.for_attribute(AGE)
    assert skin.parent is clip and age.parent is clip  # the CLIP loaded once
    assert skin.class_features.shape == (3, clip.class_features.shape[1])
    # a class's prompts are averaged as normalised embeddings (as gender's): one unit row per class
    assert torch.allclose(skin.class_features.norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.inference_mode():
        feats = clip.encode_text(list(SKIN.classes[0].labels)).float()
    mean = (feats / feats.norm(dim=-1, keepdim=True)).mean(0)
    assert torch.allclose(skin.class_features[0], mean / mean.norm(), atol=1e-5)
    ids = {clip.cache_id, skin.cache_id, age.cache_id}
    assert len(ids) == 3  # the label cache keeps gender, skin and age apart
    described = skin.describe()
    assert described["attribute"] == "skin" and described["labels"]["dark"] == list(SKIN.classes[2].labels)
    assert "max_c p_c < min_confidence" in described["abstain"]["rule"]
    labels, p = skin.classify(images)
    assert len(labels) == 5 and set(labels) <= {"light", "medium", "dark", "unclear"} and p.shape == (5, 3)
    assert labels == skin.classify_features(clip.image_features(images))[0]
    assert clip.describe() == gender_before  # gender's classifier is untouched
    assert torch.equal(clip.probabilities(images), probs_before)


# ------------------------------------------------------------------------------------------ the audit
def test_audit_with_attributes_and_an_intersection(tmp_path: Path) -> None:
    pipe, _ = load_tiny()
    listed = _list(tmp_path, "a nurse\nan engineer | skin=0.5,0.3,0.2; target=0.3\na pilot | age=0.2,0.3,0.5\n")
    common = dict(professions=listed, images_per_profession=12, steps=2, batch_size=4, progress=False,
                  write_report=False)
    gender_only = audit(pipe, classifier=PixelAttributes(), out=tmp_path / "g", **common)
    result = audit(pipe, classifier=PixelAttributes(), out=tmp_path / "a", attributes=["skin", "age", "gender"],
                   intersect=["gender,skin", ("skin", "age")], **common)
    record = result.to_dict()
    # gender is audited exactly as without attributes
    assert _without(record) == _without(gender_only.to_dict())
    assert "attributes" not in gender_only.to_dict() and not (tmp_path / "g" / "audit_attributes.csv").exists()
    assert [s["attribute"] for s in record["attributes"]] == ["skin", "age"]  # gender adds nothing
    assert result.attribute("age") is result.attributes[1]
    with pytest.raises(InputError, match="no section for attribute 'hair' \\(it has: skin, age\\)"):
        result.attribute("hair")
    samples = {r["phrase"]: r["samples"] for r in record["professions"]}
    for section, attribute in zip(record["attributes"], (SKIN, AGE)):
        assert section["classes"] == list(attribute.class_names)
        assert section["classifier"]["labels"] == {c.name: list(c.labels) for c in attribute.classes}
        for row in section["professions"]:
            # the labels are the stand-in's reading of exactly the gender rows' images, in the same order
            images = np.stack([np.asarray(Image.open(tmp_path / "a" / s["image"]).convert("RGB"))
                               for s in samples[row["phrase"]]])
            assert row["labels"] == PixelAttributes().for_attribute(attribute).classify(images)[0]
            assert sum(row["counts"]) + row["n_unclear"] == row["n"] == 12
            assert row["counts"] == [row["labels"].count(c) for c in attribute.class_names]
            if row["shares"] is not None:
                assert sum(row["shares"]) == pytest.approx(1.0)
                for share, low, high in zip(row["shares"], row["ci_low"], row["ci_high"]):
                    assert low <= share <= high
            est = multiclass.estimate(row["counts"], row["target"], attribute.class_names, n_unclear=row["n_unclear"])
            assert (row["delta"], row["p_value"]) == (est.delta, est.p_value)
            deviation = max(abs(p - t) for p, t in zip(row["shares"], row["target"])) if row["shares"] else None
            assert row["max_deviation"] == deviation
            assert row["within_band"] == (deviation is not None and deviation <= 0.05)
            assert row["oracle_counts"] is None  # the tiny model's profile has no oracle
        point, low, high = multiclass.mean_delta_interval([(r["counts"], r["target"]) for r in section["professions"]])
        assert (section["mean_delta"], section["mean_delta_ci_low"], section["mean_delta_ci_high"]) == (point, low, high)
        assert section["within_tolerance"] == sum(r["within_band"] for r in section["professions"])
    skin_rows = {r["phrase"]: r for r in record["attributes"][0]["professions"]}
    age_rows = {r["phrase"]: r for r in record["attributes"][1]["professions"]}
    assert skin_rows["an engineer"]["target"] == [0.5, 0.3, 0.2] and skin_rows["an engineer"]["target_source"] == "list"
    assert skin_rows["a nurse"]["target"] == pytest.approx([1 / 3] * 3) and skin_rows["a nurse"]["target_source"] == "uniform"
    assert age_rows["a pilot"]["target"] == [0.2, 0.3, 0.5] and age_rows["an engineer"]["target_source"] == "uniform"
    assert result.row("an engineer").target == 0.3

    gender_skin, skin_age = record["intersections"]
    assert gender_skin["attributes"] == ["gender", "skin"] and gender_skin["rows"] == ["female", "male"]
    for row in gender_skin["professions"]:
        gender = [s["label"] for s in samples[row["phrase"]]]
        skin = skin_rows[row["phrase"]]["labels"]
        both = [(g, s) for g, s in zip(gender, skin) if g != "unclear" and s != "unclear"]
        assert row["n"] == len(both) and row["n_unclear"] == 12 - len(both)
        assert [c["count"] for c in row["cells"]] == [both.count((g, s)) for g in ("female", "male")
                                                      for s in SKIN.class_names]
        # 12 images over 6 cells: every cell expects < 5 images, so all are tiny and show no share
        assert all(c["flag"] == "tiny" and c["share"] is None for c in row["cells"]) and row["tiny_cells"] == 6
    assert skin_age["attributes"] == ["skin", "age"] and len(skin_age["professions"][0]["cells"]) == 9

    # the files: the JSON reads back to the same bytes; every number is in a CSV too
    out = tmp_path / "a"
    assert AuditResult.from_json(out).to_json() == (out / "audit.json").read_text()
    with open(out / "audit_attributes.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 * 3 * 3  # attribute × profession × class
    first = table[3]  # skin, engineer, light
    assert (first["attribute"], first["phrase"], first["class"], float(first["target"])) == ("skin", "an engineer", "light", 0.5)
    assert int(first["count"]) == skin_rows["an engineer"]["counts"][0]
    with open(out / "audit_intersections.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    assert len(cells) == 3 * 6 + 3 * 9 and {c["flag"] for c in cells} == {"tiny"}
    assert (out / "audit.csv").read_text() == (tmp_path / "g" / "audit.csv").read_text()


def test_intersection_flags_readable_empty_and_tiny_cells(tmp_path: Path) -> None:
    """At 40 images, a 2 × 3 table expects 6.7 per cell: readable, and 0 where 6.7 were expected is "empty"."""
    from debias.auditing.attributes import AttributePlan, intersection_section
    from debias.core.prompts import ProfessionEntry

    entry = ProfessionEntry("a nurse")
    gender = ["female"] * 30 + ["male"] * 10
    skin = ["light"] * 20 + ["dark"] * 10 + ["light"] * 9 + ["medium"]
    plan = AttributePlan((SKIN,), (("gender", "skin"),))
    section = intersection_section(("gender", "skin"), plan, [entry], {"gender": {"a nurse": gender},
                                   "skin": {"a nurse": skin}}, {"gender": {"a nurse": (0.5, 0.5)},
                                   "skin": {"a nurse": SKIN.uniform_target()}})
    cells = {(c["row"], c["col"]): c for c in section["professions"][0]["cells"]}
    assert cells[("female", "light")]["count"] == 20 and cells[("female", "light")]["flag"] == "ok"
    assert cells[("female", "medium")]["flag"] == "empty" and cells[("female", "medium")]["share"] == 0.0
    assert cells[("male", "medium")]["count"] == 1 and cells[("male", "medium")]["flag"] == "ok"
    assert section["professions"][0]["empty_cells"] == 2 and section["professions"][0]["tiny_cells"] == 0
    ok = cells[("female", "light")]
    assert ok["ci_low"] <= ok["share"] == 0.5 <= ok["ci_high"]
    # with an uneven target a cell can be thin even where the others are readable
    thin = intersection_section(("gender", "skin"), plan, [entry], {"gender": {"a nurse": gender},
                                "skin": {"a nurse": skin}}, {"gender": {"a nurse": (0.9, 0.1)},
                                "skin": {"a nurse": (0.8, 0.1, 0.1)}})
    flags = {(c["row"], c["col"]): c["flag"] for c in thin["professions"][0]["cells"]}
    assert flags[("female", "light")] == "ok" and flags[("male", "dark")] == "tiny"


def test_label_cache_keeps_attributes_apart(tmp_path: Path) -> None:
    pipe, clip = load_tiny()
    listed = _list(tmp_path, "a nurse\na pilot\n")
    common = dict(professions=listed, images_per_profession=4, steps=2, batch_size=4, progress=False,
                  write_report=False, out=tmp_path / "run")
    skin = audit(pipe, classifier=clip, attributes=["skin"], **common)
    age = audit(pipe, classifier=clip, attributes=["age"], **common)
    again = audit(pipe, classifier=clip, attributes=["skin"], **common)
    assert again.images_generated == 0 and age.images_generated == 0
    records = [json.loads(line) for f in (tmp_path / "run" / "index").glob("*.jsonl") for line in f.read_text().splitlines()]
    labels = [r for r in records if r["type"] == "label"]
    by_id: dict[str, list] = {}
    for r in labels:
        by_id.setdefault(r["classifier"], []).append(r)
    skin_id, age_id = clip.for_attribute(SKIN).cache_id, clip.for_attribute(AGE).cache_id
    assert {r["attribute"] for r in by_id[skin_id]} == {"skin"} and {r["attribute"] for r in by_id[age_id]} == {"age"}
    assert len(by_id[skin_id]) == 8 and len(by_id[age_id]) == 8  # the rerun labelled nothing again
    assert {r["label"] for r in by_id[skin_id]} <= {"light", "medium", "dark", "unclear"}
    assert again.attributes == skin.attributes and age.attributes[0]["classes"] == ["young", "middle-aged", "old"]
    # an edited attribute file is another classifier: its labels are not taken from the built-in's
    edited = tmp_path / "skin.txt"
    edited.write_text("attribute: skin\n" + "".join(f"class: {c.name}\nlabel: a photo, {c.name}\ndestination: {c.destination}\n"
                                                    for c in SKIN.classes), encoding="utf-8")
    from debias.core.attributes import load_attribute_file

    assert clip.for_attribute(load_attribute_file(edited)).cache_id != skin_id


def test_oracle_per_attribute_from_the_profile(tmp_path: Path) -> None:
    """The mini model's profile: gender keeps its oracle; an attribute oracle registered on a profile is recorded."""
    from debias.core.setup import load_model

    loaded = load_model("mini")
    assert loaded.profile.oracle_for("gender") is loaded.profile.oracle
    assert loaded.profile.oracle_for("hair") is None
    if loaded.profile.oracle_for("skin") is None:  # until the mini world reads skin, a stand-in oracle
        loaded.profile = replace(loaded.profile, oracles={"skin": lambda images: ["light"] * (len(images) - 1) + ["unclear"]})
    listed = _list(tmp_path, "a nurse\na teacher\n")
    result = audit(loaded, professions=listed, images_per_profession=6, out=tmp_path / "mini", progress=False,
                   write_report=False, attributes=["skin", "age"], threads=1)
    skin, age = result.attributes
    assert skin["has_oracle"] and (age["has_oracle"] == (loaded.profile.oracle_for("age") is not None))
    for row in skin["professions"]:
        assert sum(row["oracle_counts"]) + row["oracle_unclear"] == 6
        labelled = [lab for lab in row["labels"] if lab != "unclear"]
        assert row["agreement"] is None or 0.0 <= row["agreement"] <= 1.0
        assert len(labelled) + row["n_unclear"] == 6


# ------------------------------------------------------------------------------------------ gender-only, unchanged
def test_gender_only_audit_is_what_it_was(tmp_path: Path) -> None:
    """Audits written before attributes existed (tests/fixtures/audit_gender_only): they read back to the same bytes,
    and the same tiny-model audit run now writes the same record (less timing, versions and the temporary model
    folder) and the same CSV, byte for byte."""
    for folder in (FIXTURE / "mini", FIXTURE / "tiny"):
        assert AuditResult.from_json(folder).to_json() == (folder / "audit.json").read_text()
    pipe, _ = load_tiny()
    result = audit(pipe, classifier=HalfClassifier(), professions=FIXTURE / "professions.txt", images_per_profession=6,
                   out=tmp_path / "tiny", steps=2, batch_size=4, progress=False, write_report=False)
    old, now = (json.loads((folder / "audit.json").read_text()) for folder in (FIXTURE / "tiny", tmp_path / "tiny"))
    assert list(now) == list(old)  # the same keys in the same order
    for record in (old, now):
        record["model"]["spec"] = "tiny"  # a temporary folder, another each run
    readings_now, readings_old = [], []
    assert _split_pixel_readings(_without(now, VOLATILE), readings_now) == _split_pixel_readings(
        _without(old, VOLATILE), readings_old)
    assert readings_now == pytest.approx(readings_old, abs=2e-3) and len(readings_now) == len(readings_old) > 0
    assert (tmp_path / "tiny" / "audit.csv").read_text() == (FIXTURE / "tiny" / "audit.csv").read_text()
    assert result.attributes is None and not (tmp_path / "tiny" / "audit_attributes.csv").exists()


# ------------------------------------------------------------------------------------------ errors and the CLI
def test_plans_and_their_errors(tmp_path: Path) -> None:
    plan = plan_attributes(["gender", "skin"], ["gender,skin"])
    assert plan.attributes == (SKIN,) and plan.intersections == (("gender", "skin"),) and plan.get("gender") is GENDER
    assert plan_attributes().empty
    with pytest.raises(InputError, match=r"unknown attribute 'skn'.*Did you mean 'skin'"):
        plan_attributes(["skn"])
    bad = tmp_path / "hair.txt"
    bad.write_text("attribute: hair\nclass: blond\nlabel: a blond person\ndestinaton: a {} with blond hair\n")
    with pytest.raises(InputError, match=r"hair.txt:4: unknown key 'destinaton' \(did you mean 'destination'\?\)"):
        plan_attributes([str(bad)])
    with pytest.raises(InputError, match=r"missing.txt: attribute file not found"):
        plan_attributes([str(tmp_path / "missing.txt")])
    with pytest.raises(InputError, match="'age' is not audited.*add --attribute age"):
        plan_attributes(["skin"], ["gender,age"])
    with pytest.raises(InputError, match="two attribute names separated by a comma"):
        plan_attributes(["skin"], ["gender"])
    with pytest.raises(InputError, match="crossed with itself"):
        plan_attributes(["skin"], ["skin,skin"])
    with pytest.raises(InputError, match="given twice"):
        plan_attributes(["skin", "skin"])
    with pytest.raises(InputError, match="given twice"):
        plan_attributes(["skin"], ["gender,skin", "skin,gender"])
    gender_file = tmp_path / "g.txt"
    gender_file.write_text("attribute: gender\nclass: f\nlabel: a lady\ndestination: a female {}\n"
                           "class: m\nlabel: a gent\ndestination: a male {}\n")
    with pytest.raises(InputError, match="--labels-female"):
        plan_attributes([str(gender_file)])


def test_bad_target_lines_name_the_file_and_line(tmp_path: Path) -> None:
    pipe, _ = load_tiny()
    for text, message in [("a nurse\na pilot | skin=0.5,0.5\n", r"professions.txt:2: skin has 3 classes"),
                          ("a nurse | skin=0.5,0.3,0.3\n", r"professions.txt:1: skin shares sum to 1.1"),
                          ("a nurse | hair=0.5,0.5\n", r"professions.txt:1: unknown attribute 'hair'"),
                          ("a nurse | target=0.3; gender=0.3,0.7\n", r"professions.txt:1: a second target for 'gender'")]:
        with pytest.raises(InputError, match=message):
            audit(pipe, classifier=PixelAttributes(), professions=_list(tmp_path, text), attributes=["skin"],
                  out=tmp_path / "x", progress=False)
    # an attribute file's attribute may have targets once the audit reads it
    hair = tmp_path / "hair.txt"
    hair.write_text("attribute: hair\nclass: blond\nlabel: a blond person\ndestination: a {} with blond hair\n"
                    "class: dark\nlabel: a dark-haired person\ndestination: a {} with dark hair\n")
    result = audit(pipe, classifier=PixelAttributes(), professions=_list(tmp_path, "a nurse | hair=0.7,0.3\n"),
                   attributes=[str(hair)], images_per_profession=2, steps=2, out=tmp_path / "h", progress=False,
                   write_report=False)
    assert result.attributes[0]["professions"][0]["target"] == [0.7, 0.3]
    with pytest.raises(InputError, match="reads gender only.*needs a CLIP classifier"):
        audit(pipe, classifier=HalfClassifier(), professions=_list(tmp_path, "a nurse\n"), attributes=["skin"],
              images_per_profession=2, steps=2, out=tmp_path / "h", progress=False, write_report=False)


def test_cli_attribute_and_intersect_options(tmp_path: Path, capsys) -> None:
    sd, clip = tiny_folders()
    base = ["audit", "--model", str(sd), "--classifier", str(clip), "--professions",
            str(_list(tmp_path, "a nurse\na pilot | skin=0.2,0.3,0.5\n")), "--steps", "2", "-n", "3",
            "--threads", "1", "--out", str(tmp_path / "cli")]
    code, out, err = run_cli(base + ["--attribute", "skin", "--attribute", "age", "--intersect", "gender,skin"], capsys)
    assert code == 0, err
    assert "audit_attributes.csv" in out and "audit_intersections.csv" in out and "skin: mean Δ" in out
    record = json.loads((tmp_path / "cli" / "audit.json").read_text())
    assert [s["attribute"] for s in record["attributes"]] == ["skin", "age"]
    assert record["intersections"][0]["attributes"] == ["gender", "skin"]
    assert record["attributes"][0]["professions"][1]["target"] == [0.2, 0.3, 0.5]
    assert "skin" in (tmp_path / "cli" / "report.html").read_text()
    code, out, err = run_cli(base + ["--attribute", "skn"], capsys)
    assert code == 2 and "unknown attribute 'skn'" in err and "Did you mean 'skin'" in err
    code, out, err = run_cli(base + ["--attribute", "skin", "--intersect", "gender;skin"], capsys)
    assert code == 2 and "--intersect 'gender;skin'" in err
