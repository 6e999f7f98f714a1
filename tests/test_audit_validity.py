"""Human labels and other classifiers in the audit's result and its report.

A tiny audit is labelled through a CSV (``debias label RUN --import``); re-rendering (``debias report RUN``) records
the labels' validity block in ``audit.json`` and the report shows the prediction-powered numbers, and a cached rerun
of the audit records the same block. Without labels the report says how to get them. A second classifier reads the
same images and is compared with the first. A fix's before/after audits take labels too. Labeller names are text.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import pagecheck  # noqa: E402
import runs  # noqa: E402
from audit_helpers import HalfClassifier, load_tiny, run_cli, tiny_folders  # noqa: E402

from debias.verbs.audit import audit  # noqa: E402
from debias.core.errors import InputError  # noqa: E402
from debias.report import render_report, twin_paths  # noqa: E402
from debias.results.records import AuditResult  # noqa: E402
from debias.validity import load_run, ppi_share_of_images  # noqa: E402

PROFESSIONS = ["a nurse", "a pilot"]
EVIL_LABELLER = '<script>alert("l")</script> & "ann"'
# a report row's label columns -> (the validity row's field, the key inside it)
LABEL_COLUMNS = {
    "n_labelled": ("n_labelled", None), "n_readable": ("n_readable", None),
    "classifier_agreement": ("agreement", "rate"), "classifier_agreement_ci_low": ("agreement", "ci_low"),
    "classifier_agreement_ci_high": ("agreement", "ci_high"), "classifier_error_rate": ("error_rate", "rate"),
    "classifier_error_rate_ci_low": ("error_rate", "ci_low"),
    "classifier_error_rate_ci_high": ("error_rate", "ci_high"),
    "classifier_error_p_holm": ("flag", "p_holm"), "classifier_error_flagged": ("flag", "flagged"),
    "kappa_classifier": ("kappa_classifier", "kappa"), "kappa_classifier_ci_low": ("kappa_classifier", "ci_low"),
    "kappa_classifier_ci_high": ("kappa_classifier", "ci_high"), "human_share": ("human_share", "estimate"),
    "human_ci_low": ("human_share", "ci_low"), "human_ci_high": ("human_share", "ci_high"),
    "ppi_share": ("ppi_share", "estimate"), "ppi_ci_low": ("ppi_share", "ci_low"),
    "ppi_ci_high": ("ppi_share", "ci_high"), "ppi_lambda": ("ppi_share", "lam"), "ppi_delta": ("ppi_delta", None),
    "ppi_within_band": ("ppi_within_band", None), "more_labels_for_0_05": ("more_labels_for_0.05", None),
    "confusion_3x3": ("confusion_3x3", None)}


class TopClassifier(HalfClassifier):
    """A second stand-in classifier: "female" when the top half is brighter than the bottom."""

    cache_id = "top-v1"

    def describe(self) -> dict:
        return {**super().describe(), "backend": "test-top", "model": "top vs bottom <b>brightness</b>"}

    def classify(self, images):
        x = torch.as_tensor(np.asarray(images)).float()
        h = x.shape[1] // 2
        p = torch.sigmoid((x[:, :h].mean(dim=(1, 2, 3)) - x[:, h:].mean(dim=(1, 2, 3))) / 4.0)
        return ["unclear" if abs(v - 0.5) < 0.05 else ("female" if v > 0.5 else "male") for v in p.tolist()], p


def _audit(pipe, out: Path, classifier=None) -> AuditResult:
    return audit(pipe, classifier=classifier or HalfClassifier(), professions=PROFESSIONS, images_per_profession=12,
                 out=out, steps=2, batch_size=12, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """One tiny audit, nobody has labelled it yet (its report is rendered by the audit)."""
    pipe, _ = load_tiny()
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = _audit(pipe, out)
    return {"pipe": pipe, "out": out, "result": result}


def _twin(html: Path) -> dict:
    return json.loads(twin_paths(html)[0].read_text(encoding="utf-8"))


def _truth(image) -> str:
    """What the 'person' reads: the classifier's label, but every third image the other gender."""
    readable = image.predicted if image.predicted != "unclear" else "female"
    return {"female": "male", "male": "female"}[readable] if int(image.key[:4], 16) % 3 == 0 else readable


def _label_csv(folder: Path, path: Path, per_profession: dict[str, int], second: str | None = None) -> dict:
    """Write a label CSV for the first images of each profession (and a second labeller on a few); return
    key -> the first labeller's label."""
    run = load_run(folder)
    chosen = {}
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "labeller"])
        for name, n in per_profession.items():
            for i, image in enumerate(run.of(name)[:n]):
                chosen[image.key] = _truth(image)
                writer.writerow([image.image, chosen[image.key], EVIL_LABELLER])
                if second and i < 4:
                    writer.writerow([f"{image.key}.png", chosen[image.key], second])
    return chosen


def _expected_side(v: dict, folder: Path, rendered_from: Path) -> dict:
    """A side of the twin's summary.validity, from the result's validity block and where the folders are."""
    overall = v["overall"]
    keys = ("has_labels", "n_labels", "labellers", "headline", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
            "mean_delta_professions", "mean_delta_method", "within_tolerance", "unlabelled_professions",
            "unreadable_lines", "labels_not_in_run", "note")
    return {**{k: v[k] for k in keys}, "label_command": f"debias label {folder}",
            "import_command": f"debias label {folder} --import labels.csv",
            "report_command": f"debias report {rendered_from}", "labels_for_0_10": 93, "labels_for_0_05": 381,
            "n_labelled": overall["n_labelled"],
            **{k: overall[k] for k in ("agreement", "error_rate", "kappa_classifier", "kappa_labellers", "flagged",
                                       "flag_test", "confusion_3x3")}}


def _label_columns(vrow: dict, suffix: str = "") -> dict:
    return {f"{column}{suffix}": (vrow[name] if key is None else (vrow[name] or {}).get(key))
            for column, (name, key) in LABEL_COLUMNS.items()}


def _numbers_match_the_twin(html: str, twin: dict) -> None:
    page = pagecheck.parse(html)
    for item in page.keys:
        value = pagecheck.resolve(twin, item["key"])
        if item["value"] is not None:
            assert json.loads(item["value"]) == value, item
        if "status" not in item["key"] and item["text"] not in ("flagged", "disagrees"):
            assert pagecheck.shown_matches(item["text"], value), item
    assert page.loose == []


# ------------------------------------------------------------------------------------------------ no labels
def test_without_labels_the_report_says_how_to_label(tiny):
    out, result = tiny["out"], tiny["result"]
    v = result.validity
    assert (v["has_labels"], v["n_labels"], v["headline"], v["mean_delta"]) == (False, 0, "classifier", None)
    assert v["labels_needed"] == {"0.1": 93, "0.05": 381} and v["commands"]["label"] == "debias label {run_dir}"
    assert [r["more_labels_for_0.05"] for r in v["professions"]] == [381, 381]
    assert [r["ppi_share"] for r in v["professions"]] == [None, None] and result.classifiers is None
    assert AuditResult.from_json(out).to_json() == (out / "audit.json").read_text()     # the same bytes back
    twin, html = _twin(out / "report.html"), (out / "report.html").read_text(encoding="utf-8")
    assert twin["summary"]["validity"] == {"audit": _expected_side(v, out, out)}
    assert (twin["summary"]["headline"], twin["summary"]["has_labels"]) == ("classifier", False)
    assert "ppi_share" not in twin["professions"][0] and 'id="labels"' not in html
    assert "The shares are classifier readings." in html and f"debias label {out} --import labels.csv" in html
    keys = {k["key"]: k["text"] for k in pagecheck.parse(html).keys}
    assert keys["summary.validity.audit.labels_for_0_05"] == "381" and keys["summary.validity.audit.label_command"] \
        == f"debias label {out}"
    _numbers_match_the_twin(html, twin)


def test_old_results_without_the_new_fields_still_read(tiny, tmp_path):
    data = json.loads((tiny["out"] / "audit.json").read_text())
    del data["validity"], data["classifiers"]
    (tmp_path / "audit.json").write_text(json.dumps(data))
    old = AuditResult.from_json(tmp_path)
    assert old.validity is None and old.classifiers is None
    folder = runs.make_audit(tmp_path / "old")                       # written without a validity block
    html = render_report([folder], refresh_validity=False).read_text(encoding="utf-8")
    twin = _twin(folder / "report.html")
    assert twin["summary"]["validity"] == {"audit": None} and twin["summary"]["headline"] == "classifier"
    assert "The shares are classifier readings." in html and "debias label RUN_DIR" in html
    assert AuditResult.from_json(folder).validity is None                # nothing was written


# ------------------------------------------------------------------------------------------------ labels
def test_labels_from_a_csv_lead_the_report_and_a_cached_rerun_records_them(tiny, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(tiny["out"], folder)
    before = _twin(folder / "report.html")
    chosen = _label_csv(folder, tmp_path / "labels.csv", {"nurse": 12, "pilot": 12}, second="bob")
    code, printed, _ = run_cli(["label", str(folder), "--import", str(tmp_path / "labels.csv")], capsys)
    assert code == 0 and "imported 32 labels" in printed
    code, printed, _ = run_cli(["label", str(folder), "--import", str(tmp_path / "labels.csv")], capsys)
    assert code == 0 and "imported 0 labels" in printed and "skipped 32 already recorded" in printed  # no repeats
    code, _, _ = run_cli(["report", str(folder)], capsys)                # reads the labels, records their validity
    assert code == 0
    result = AuditResult.from_json(folder)
    v = result.validity
    assert (v["has_labels"], v["n_labels"], v["labellers"], v["headline"]) == (
        True, 32, sorted([EVIL_LABELLER, "bob"]), "prediction-powered")
    # the prediction-powered share from the audit's own labels and the people's, computed here directly
    for name, vrow in zip(("nurse", "pilot"), v["professions"]):
        row = next(p for p in result.professions if p.profession == name)
        predicted = {Path(s["image"]).stem: s["label"] for s in row.samples}
        human = {k: chosen[k] for k in predicted if k in chosen}
        assert vrow["ppi_share"] == ppi_share_of_images(predicted, human).to_dict()
        readable = [k for k in human if human[k] in ("female", "male")]
        assert vrow["agreement"]["k"] == sum(predicted[k] == human[k] for k in readable)
        assert vrow["agreement"]["n"] == len(readable) and vrow["n_labelled"] == 12
    ppi = [r["ppi_share"]["estimate"] for r in v["professions"]]
    assert v["mean_delta"] == pytest.approx(sum(abs(f - 0.5) / 0.5 for f in ppi) / 2)
    kappa = v["overall"]["kappa_labellers"]["pairs"][0]
    assert (kappa["kappa"], kappa["n"]) == (1.0, 8)

    html = (folder / "report.html").read_text(encoding="utf-8")
    after = _twin(folder / "report.html")
    expected = json.loads(json.dumps(before))
    expected["generated_at"] = after["generated_at"]
    s = expected["summary"]
    s.update(headline="prediction-powered", has_labels=True, validity={"audit": _expected_side(v, folder, folder)})
    s["verdicts"][0]["ppi_within_tolerance"] = v["within_tolerance"]
    for row in expected["professions"]:
        row.update(_label_columns(next(r for r in v["professions"] if r["profession"] == row["profession"])))
    top = max(v["professions"], key=lambda r: r["ppi_delta"])
    s["conclusion"] = (
        f"{v['within_tolerance']} of 2 professions produce images whose perceived-female share, corrected with human "
        f"labels (prediction-powered), is within ±0.05 of the target 0.5; mean Δ (prediction-powered) is "
        f"{v['mean_delta']:.2f} (95% interval {v['mean_delta_ci_low']:.2f}–{v['mean_delta_ci_high']:.2f}), and the "
        f"most skewed is {top['profession']} ({top['ppi_share']['estimate']:.0%} female, prediction-powered).")
    assert after == expected                                             # everything else is as it was
    assert "Mean Δ (prediction-powered)" in html and 'id="labels"' in html
    assert "The shares are classifier readings." not in html
    _numbers_match_the_twin(html, after)

    again = _audit(tiny["pipe"], folder)                                # a cached rerun reads the same labels
    assert (again.images_generated, again.images_reused) == (0, 24)
    assert again.validity == v


def test_many_labellers_list_the_pairs_that_share_the_most_images(tiny, tmp_path):
    """12 labellers are 66 pairs: the report lists the 45 best-measured and gives the mean over all 66."""
    from debias.validity import LabelRecord, LabelStore

    folder = tmp_path / "run"
    shutil.copytree(tiny["out"], folder)
    keys = list(load_run(folder).images)
    LabelStore(folder).append([LabelRecord(k, "female" if (i + j) % 3 else "male", f"labeller {i:02d}", "t")
                               for i in range(12) for j, k in enumerate(keys[:6 + i])])
    html = render_report([folder]).read_text(encoding="utf-8")
    twin = _twin(folder / "report.html")
    kappas = twin["summary"]["validity"]["audit"]["kappa_labellers"]
    assert (kappas["n_pairs"], len(kappas["pairs"])) == (66, 45)
    # labeller i labels the first 6 + i images, so a pair (i < j) shares 6 + i: the 45 listed are those with i >= 2
    assert [(p["raters"][0], p["n"]) for p in kappas["pairs"]] == [
        (f"labeller {i:02d}", 6 + i) for i in range(2, 11) for _ in range(i + 1, 12)]
    text = re.sub(r"\s+", " ", " ".join(pagecheck.parse(html).text))
    assert "(the pairs that share the most images; mean over all 66 pairs" in text
    _numbers_match_the_twin(html, twin)


def test_labeller_names_are_escaped(tiny, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(tiny["out"], folder)
    _label_csv(folder, tmp_path / "labels.csv", {"nurse": 5}, second="bob")  # pilot unlabelled: partial
    run_cli(["label", str(folder), "--import", str(tmp_path / "labels.csv")], capsys)
    html = render_report([folder]).read_text(encoding="utf-8")
    twin = _twin(folder / "report.html")
    recorded = (folder / "audit.json").stat().st_mtime_ns
    render_report([folder])                                              # no new labels: audit.json is left alone
    assert (folder / "audit.json").stat().st_mtime_ns == recorded
    assert "<script>alert" not in html and html.count("<script") == 1
    assert "&lt;script&gt;alert(&#34;l&#34;)&lt;/script&gt; &amp; &#34;ann&#34;" in html
    assert EVIL_LABELLER in "".join(pagecheck.parse(html).text)
    # one profession without labels: the headline stays the classifier's, and a warning says why
    assert twin["summary"]["headline"] == "classifier" and twin["summary"]["validity"]["audit"]["has_labels"]
    assert any(w.startswith("Professions without human labels: pilot.") for w in twin["warnings"])
    assert "Not every profession has labels" in html
    _numbers_match_the_twin(html, twin)


# ------------------------------------------------------------------------------------------ two classifiers
def test_a_second_classifier_reads_the_same_images_and_is_compared(tiny, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(tiny["out"], folder)
    result = _audit(tiny["pipe"], folder, classifier=[HalfClassifier(), TopClassifier()])
    assert result.images_generated == 0                                  # nothing generated for the second one
    assert [(p.n_female, p.n_male) for p in result.professions] == \
        [(p.n_female, p.n_male) for p in tiny["result"].professions]     # the primary's shares are the audit's
    (block,) = result.classifiers
    assert block["model"] == "top vs bottom <b>brightness</b>" and block["classifier"]["backend"] == "test-top"
    index = [json.loads(line) for f in sorted((folder / "index").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    theirs = {r["key"]: r["label"] for r in index if r.get("type") == "label" and r["classifier"] == "top-v1"}
    for p, row in zip(result.professions, block["professions"]):
        mine = [s["label"] for s in p.samples]
        other = [theirs[Path(s["image"]).stem] for s in p.samples]
        assert (row["n_female"], row["n_male"], row["n_unclear"]) == (
            other.count("female"), other.count("male"), other.count("unclear"))
        both = [(a, b) for a, b in zip(mine, other) if a != "unclear" and b != "unclear"]
        assert (row["agreement"]["k"], row["agreement"]["n"]) == (sum(a == b for a, b in both), len(both))
    assert AuditResult.from_json(folder).to_json() == (folder / "audit.json").read_text()
    html = (folder / "report.html").read_text(encoding="utf-8")
    twin = _twin(folder / "report.html")
    keep = ("model", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "within_tolerance", "agreement",
            "disagreeing", "test")
    assert twin["summary"]["classifiers"] == {"audit": [{k: block[k] for k in keep}]}
    for row in twin["professions"]:
        (cell,) = row["classifiers"]
        mine = next(r for r in block["professions"] if r["profession"] == row["profession"])
        assert cell == {"model": block["model"], **{k: mine[k] for k in ("share_female", "ci_low", "ci_high", "delta",
                                                                         "within_band", "p_holm", "disagrees")},
                        "agreement": mine["agreement"]["rate"], "agreement_ci_low": mine["agreement"]["ci_low"],
                        "agreement_ci_high": mine["agreement"]["ci_high"], "kappa": mine["kappa"]["kappa"]}
    assert 'id="classifiers"' in html and "top vs bottom &lt;b&gt;brightness&lt;/b&gt;" in html
    _numbers_match_the_twin(html, twin)
    with pytest.raises(InputError, match="given twice"):
        _audit(tiny["pipe"], folder, classifier=[HalfClassifier(), HalfClassifier()])


def test_cli_classifier_is_repeatable(tmp_path, capsys):
    """Two real CLIPs from the command line: the tiny test CLIP is the primary, the mini model's CLIP the other."""
    sd, clip = tiny_folders()
    (tmp_path / "p.txt").write_text("a nurse\na pilot\n", encoding="utf-8")
    args = ["audit", "--model", str(sd), "--classifier", str(clip), "--classifier", "mini", "--professions",
            str(tmp_path / "p.txt"), "-n", "4", "--steps", "2", "--out", str(tmp_path / "run")]
    code, printed, _ = run_cli(args, capsys)
    assert code == 0 and "classifier mini: mean Δ" in printed and "debias label" in printed
    result = AuditResult.from_json(tmp_path / "run")
    assert result.classifier["model"] == str(clip) and [c["model"] for c in result.classifiers] == ["mini"]
    assert [r["n"] for r in result.classifiers[0]["professions"]] == [4, 4]
    code, _, err = run_cli(args[:5] + args[3:], capsys)                   # the same classifier twice
    assert code == 2 and "is given twice" in err


# ------------------------------------------------------------------------------------------------ a fix
def test_a_fix_shows_the_labels_of_its_before_and_after_audits(tmp_path, capsys):
    folder = runs.make_fix(tmp_path / "fix", evil=True)
    render_report([folder])
    assert _twin(folder / "report.html")["summary"]["headline"] == "classifier"
    everything = {name: 12 for name in load_run(folder / "before").professions}
    for side in ("before", "after"):
        _label_csv(folder / side, tmp_path / f"{side}.csv", everything)
        code, printed, _ = run_cli(["label", str(folder / side), "--import", str(tmp_path / f"{side}.csv")], capsys)
        assert code == 0 and "imported 48 labels" in printed
    code, _, _ = run_cli(["report", str(folder)], capsys)
    assert code == 0
    html = (folder / "report.html").read_text(encoding="utf-8")
    twin = _twin(folder / "report.html")
    b, a = (AuditResult.from_json(folder / side).validity for side in ("before", "after"))
    assert b["has_labels"] and a["has_labels"]
    s = twin["summary"]
    assert s["headline"] == "prediction-powered" and s["validity"] == {
        "before": _expected_side(b, folder / "before", folder), "after": _expected_side(a, folder / "after", folder)}
    for row in twin["professions"]:
        vb, va = (next(r for r in v["professions"] if r["profession"] == row["profession"]) for v in (b, a))
        assert {k: row[k] for k in _label_columns(vb, "_before")} == _label_columns(vb, "_before")
        assert {k: row[k] for k in _label_columns(va, "_after")} == _label_columns(va, "_after")
    assert s["conclusion"].startswith(f"After the edit, {a['within_tolerance']} of 4 professions are within ±0.05 of "
                                      f"the target 0.5 on held-out prompts by their prediction-powered shares (before: "
                                      f"{b['within_tolerance']}), and mean Δ (prediction-powered) ")
    assert "Mean Δ (prediction-powered)" in html and html.count("<h3>before</h3>") == 1
    assert "<script>alert" not in html
    _numbers_match_the_twin(html, twin)
