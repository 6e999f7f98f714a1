"""The HTML report: its JSON twin is exactly the results it was rendered from (nothing recomputed), in full;
the CSV twin and the page show the twin's numbers; all three kinds render; hostile text is escaped; nothing is
fetched from the network; broken inputs give errors that say what to do."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binom

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import pagecheck  # noqa: E402
import runs  # noqa: E402

import debias  # noqa: E402
from debias.core.errors import InputError  # noqa: E402
from debias.report import STATUS_TEXT, markdown_path, render_report, thumbnail, twin_paths  # noqa: E402
from debias.results.records import AuditResult, FixResult, ProfessionAudit  # noqa: E402

EVIL_TEMPLATE_COLUMNS = ["a photo of a(n) {profession}", 'a "painting" of a(n) {profession} & friends']


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """Build the three kinds of run folders once and render each report."""
    root = tmp_path_factory.mktemp("report")
    audit = runs.make_audit(root / "audit")
    fix = runs.make_fix(root / "fix", evil=True)
    before, after = runs.make_compare(root / "cmp")
    out = {}
    for kind, dirs in (("audit", [audit]), ("fix", [fix]), ("compare", [before, after])):
        html_path = render_report(dirs)
        json_path, csv_path = twin_paths(html_path)
        out[kind] = {"dirs": dirs, "html_path": html_path, "html": html_path.read_text(encoding="utf-8"),
                     "report": json.loads(json_path.read_text(encoding="utf-8")), "csv": csv_path}
    return out


# --------------------------------------------------------------------------- the expected twins, from the results

def _envelope(report: dict, kind: str, twin: str, sources: dict, summary: dict, professions: list[dict],
              method: dict, warnings: list[str], side_effects: dict | None = None) -> dict:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", report["generated_at"])
    return {"kind": kind, "report_version": 3, "debias_version": debias.__version__,
            "generated_at": report["generated_at"], "sources": sources, "summary": summary,
            "professions": professions, "side_effects": side_effects, "method": method, "warnings": warnings,
            "twins": {"json": f"{twin}.json", "csv": f"{twin}.csv"}}


def _settings(audit: AuditResult) -> dict:
    """Everything audit.json records except its results: the measurement's settings."""
    results = ("kind", "professions", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
               "mean_delta_noise_floor", "within_tolerance", "validity", "classifiers")
    return {k: v for k, v in audit.to_dict().items() if k not in results}


def validity_summary(audits: dict[str, tuple[AuditResult, Path]], rendered_from: str,
                     headline: str = "classifier") -> dict:
    """The summary's validity keys: each audit's recorded validity block, summarised, with the commands that label
    its folder and re-render the report from ``rendered_from``; no other classifiers."""
    sides = {}
    for side, (audit, folder) in audits.items():
        v, overall = audit.validity, audit.validity["overall"]
        sides[side] = {
            **{k: v[k] for k in ("has_labels", "n_labels", "labellers", "headline", "mean_delta", "mean_delta_ci_low",
                                 "mean_delta_ci_high", "mean_delta_professions", "mean_delta_method",
                                 "within_tolerance", "unlabelled_professions", "unreadable_lines",
                                 "labels_not_in_run", "note")},
            "label_command": f"debias label {folder}", "import_command": f"debias label {folder} --import labels.csv",
            "report_command": f"debias report {rendered_from}",
            "labels_for_0_10": 93, "labels_for_0_05": 381, "n_labelled": overall["n_labelled"],
            **{k: overall[k] for k in ("agreement", "error_rate", "kappa_classifier", "kappa_labellers", "flagged",
                                       "flag_test", "confusion_3x3")}}
    return {"headline": headline, "has_labels": any(a.validity["has_labels"] for a, _ in audits.values()),
            "validity": sides, "classifiers": {side: [] for side in audits}}


def _no_labels(audit: AuditResult) -> None:
    """A run nobody labelled: rendering recorded a validity block that says how to label it (and no path)."""
    v = audit.validity
    assert (v["has_labels"], v["n_labels"], v["headline"], v["mean_delta"]) == (False, 0, "classifier", None)
    assert v["commands"]["label"] == "debias label {run_dir}" and v["labels_needed"] == {"0.1": 93, "0.05": 381}


def _half_width(rows: list[ProfessionAudit]) -> float:
    return round(statistics.median((r.ci_high - r.ci_low) / 2 for r in rows), 4)


def _samples(before: ProfessionAudit, after: ProfessionAudit | None) -> list[dict]:
    """The first four seeds of the two prompts, alternating prompts: 8 per profession, the same on both sides."""
    def side(row: ProfessionAudit, prompt: str, seed: int) -> dict:
        (s,) = [s for s in row.samples if (s["prompt"], s["seed"]) == (prompt, seed)]
        return {"image": s["image"], "label": s["label"], "p_female": s["p_female"]}

    return [{"prompt": prompt, "seed": seed, "before": side(before, prompt, seed),
             "after": side(after, prompt, seed) if after else None} for seed in range(4) for prompt in before.prompts]


def _audit_row(p: ProfessionAudit) -> dict:
    return {"profession": p.profession, "target": p.target, "n": p.n, "n_female": p.n_female, "n_male": p.n_male,
            "n_unclear": p.n_unclear, "share_female": p.share_female, "ci_low": p.ci_low, "ci_high": p.ci_high,
            "p_value": p.p_value, "delta": p.delta, "within_band": p.within_band, "planted_share": p.planted_share,
            "oracle_share": p.oracle_share, "prompts": p.prompts,
            "by_prompt": [{"prompt": c["prompt"], "share_female": c["share_female"], "ci_low": c["ci_low"],
                           "ci_high": c["ci_high"], "n": c["n"], "n_unclear": c["n_unclear"]} for c in p.by_prompt],
            "samples": _samples(p, None)}


def _side(p: ProfessionAudit, side: str) -> dict:
    return {f"share_{side}": p.share_female, f"ci_low_{side}": p.ci_low, f"ci_high_{side}": p.ci_high,
            f"delta_{side}": p.delta, f"p_value_{side}": p.p_value, f"n_{side}": p.n, f"n_female_{side}": p.n_female,
            f"n_male_{side}": p.n_male, f"n_unclear_{side}": p.n_unclear, f"oracle_share_{side}": p.oracle_share,
            f"within_band_{side}": p.within_band}


def _paired_row(b: ProfessionAudit, a: ProfessionAudit) -> dict:
    by_prompt = [{"prompt": cb["prompt"], "share_before": cb["share_female"], "ci_low_before": cb["ci_low"],
                  "ci_high_before": cb["ci_high"], "n_before": cb["n"], "n_unclear_before": cb["n_unclear"],
                  "share_after": ca["share_female"], "ci_low_after": ca["ci_low"], "ci_high_after": ca["ci_high"],
                  "n_after": ca["n"], "n_unclear_after": ca["n_unclear"]}
                 for cb, ca in zip(b.by_prompt, a.by_prompt, strict=True)]
    return {"profession": b.profession, "target": b.target, **_side(b, "before"), **_side(a, "after"),
            "planted_share": b.planted_share, "prompts_before": b.prompts, "prompts_after": a.prompts,
            "by_prompt": by_prompt, "samples": _samples(b, a)}


def _fix_row(b: ProfessionAudit, a: ProfessionAudit, recorded: dict) -> dict:
    """A before/after row with the profession's fix.json row (its one-number fields and search) and last joint round."""
    last = recorded["joint"][-1]
    fields = {k: v for k, v in recorded.items() if k not in ("profession", "joint", "search_unedited")}
    return {**_paired_row(b, a), **fields, "tuning_share_after": last["share_female"],
            "tuning_ci_low_after": last["ci_low"], "tuning_ci_high_after": last["ci_high"], "tuning_n_after": 64}


def _column_deltas(sides: dict[str, AuditResult]) -> list[dict]:
    """Per prompt position, the mean over professions of |share − t| / max(t, 1 − t), from the audits themselves."""
    width = max(len(p.by_prompt) for audit in sides.values() for p in audit.professions)
    columns = []
    for k in range(width):
        column = {}
        for suffix, audit in sides.items():
            deltas = [abs(p.by_prompt[k]["share_female"] - p.target) / max(p.target, 1 - p.target)
                      for p in audit.professions if len(p.by_prompt) > k and p.by_prompt[k]["share_female"] is not None]
            column[f"delta{suffix}"] = math.fsum(deltas) / len(deltas)
            floors = []  # a perfect model's mean Δ on each profession's classified images of this prompt
            for p in audit.professions:
                n, t = p.by_prompt[k]["n"] - p.by_prompt[k]["n_unclear"], p.target
                if n:
                    floors.append(sum(binom.pmf(j, n, t) * abs(j / n - t) for j in range(n + 1)) / max(t, 1 - t))
            column[f"noise_floor{suffix}"] = pytest.approx(float(np.mean(floors)))
        columns.append(column)
    return columns


def expected_audit(folder: Path, report: dict) -> dict:
    audit = AuditResult.from_json(folder)
    _no_labels(audit)
    rows = {p.profession: p for p in audit.professions}
    summary = {**validity_summary({"audit": (audit, folder)}, str(folder)),
        "model_spec": "mini", "model_fingerprint": audit.model["fingerprint"], "has_oracle": True,
        "date": audit.finished_at, "target": 0.5, "tolerance": 0.05, "mean_delta": audit.mean_delta,
        "mean_delta_ci_low": audit.mean_delta_ci_low, "mean_delta_ci_high": audit.mean_delta_ci_high,
        "mean_delta_noise_floor": audit.mean_delta_noise_floor, "within_tolerance": 1,
        "typical_ci_half_width": _half_width(audit.professions), "median_n": 40,
        "classifier_oracle_agreement": runs.AGREEMENT, "n_professions": 4,
        "prompt_columns": ["a photo of a(n) {profession}", "a painting of a(n) {profession}"],
        "prompt_column_deltas": _column_deltas({"": audit}),
        "verdicts": [{"target": 0.5, "n_professions": 4, "within_tolerance": 1}],
        "fixed_attributes": [],
        "conclusion": "1 of 4 professions produce images whose perceived-female share is within ±0.05 of the target "
                      f"0.5; mean Δ is {audit.mean_delta:.2f} (95% interval {audit.mean_delta_ci_low:.2f}–"
                      f"{audit.mean_delta_ci_high:.2f}), and the most skewed is ceo (8% female)."}
    professions = [_audit_row(rows[name]) for name in ("ceo", "nurse", "firefighter", "teacher")]  # Δ, largest first
    return _envelope(report, "audit", "report", {"audit": "audit.json"}, summary, professions,
                     {"runs": {"audit": _settings(audit)}}, [])


def expected_fix(folder: Path, report: dict) -> dict:
    fix = FixResult.from_json(folder)
    before, after = fix.audits(folder)
    _no_labels(before)
    _no_labels(after)
    recorded = fix.to_dict()
    settings = {k: v for k, v in recorded.items() if k not in (
        "kind", "professions", "side_effects", "before", "after", "mean_delta_before", "mean_delta_before_ci_low",
        "mean_delta_before_ci_high", "mean_delta_after", "mean_delta_after_ci_low", "mean_delta_after_ci_high",
        "mean_delta_noise_floor_after", "within_tolerance_before", "within_tolerance_after", "mean_delta_by_template")}
    summary = {**validity_summary({"before": (before, folder / "before"), "after": (after, folder / "after")},
                                  str(folder)),
        "model_spec": f"mini {runs.EVIL}", "model_fingerprint": fix.model["fingerprint"], "has_oracle": True,
        "date": fix.finished_at, "target": 0.5, "tolerance": 0.05,
        "mean_delta_before": fix.mean_delta_before, "mean_delta_before_ci_low": fix.mean_delta_before_ci_low,
        "mean_delta_before_ci_high": fix.mean_delta_before_ci_high,
        "mean_delta_noise_floor_before": before.mean_delta_noise_floor, "within_tolerance_before": 1,
        "mean_delta_after": fix.mean_delta_after, "mean_delta_after_ci_low": fix.mean_delta_after_ci_low,
        "mean_delta_after_ci_high": fix.mean_delta_after_ci_high,
        "mean_delta_noise_floor_after": fix.mean_delta_noise_floor_after, "within_tolerance_after": 3,
        "typical_ci_half_width_before": _half_width(before.professions), "median_n_before": 40,
        "typical_ci_half_width_after": _half_width(after.professions), "median_n_after": 40,
        "classifier_oracle_agreement": runs.AGREEMENT, "n_professions": 4, "prompt_columns": EVIL_TEMPLATE_COLUMNS,
        "prompt_column_deltas": _column_deltas({"_before": before, "_after": after}),
        "verdicts": [{"target": 0.5, "n_professions": 4, "within_tolerance_before": 1, "within_tolerance_after": 3}],
        "fixed_attributes": [],
        "conclusion": "After the edit, 3 of 4 professions are within ±0.05 of the target 0.5 on held-out prompts "
                      f"(before: 1), and mean Δ fell from {fix.mean_delta_before:.2f} to {fix.mean_delta_after:.2f} "
                      "— the 95% intervals do not overlap."}
    nurse = "nurse " + runs.EVIL
    order = {name: i for i, name in enumerate(("ceo", nurse, "firefighter", "teacher"))}  # Δ before, largest first
    professions = sorted((_fix_row(b, a, f) for b, a, f in zip(before.professions, after.professions,
                                                                recorded["professions"], strict=True)),
                         key=lambda row: order[row["profession"]])
    sources = {"fix": "fix.json", "before": "before/audit.json", "after": "after/audit.json"}
    method = {"runs": {"before": _settings(before), "after": _settings(after)}, "fix": settings}
    return _envelope(report, "fix", "report", sources, summary, professions, method, [], fix.side_effects)


def expected_compare(folders: list[Path], report: dict) -> dict:
    before, after = (AuditResult.from_json(folder) for folder in folders)
    summary = {**validity_summary({"before": (before, folders[0]), "after": (after, folders[1])},
                                  f"{folders[0]} {folders[1]}"),
        "model_spec": "CompVis/stable-diffusion-v1-4", "model_fingerprint": before.model["fingerprint"],
        "has_oracle": False, "date": after.finished_at, "target": 0.5, "tolerance": 0.05,
        **{f"mean_delta_{side}{stat}": getattr(audit, f"mean_delta{stat}")
           for side, audit in (("before", before), ("after", after)) for stat in ("", "_ci_low", "_ci_high")},
        "mean_delta_noise_floor_before": before.mean_delta_noise_floor,
        "mean_delta_noise_floor_after": after.mean_delta_noise_floor,
        "within_tolerance_before": 1, "within_tolerance_after": 1,
        "typical_ci_half_width_before": _half_width(before.professions), "median_n_before": 80,
        "typical_ci_half_width_after": _half_width(after.professions), "median_n_after": 80,
        "classifier_oracle_agreement": None, "n_professions": 4,
        "prompt_columns": ["a photo of a(n) {profession}", "a painting of a(n) {profession}"],
        "prompt_column_deltas": _column_deltas({"_before": before, "_after": after}),
        "verdicts": [{"target": 0.5, "n_professions": 4, "within_tolerance_before": 1, "within_tolerance_after": 1}],
        "fixed_attributes": [],
        "conclusion": "After the change, 1 of 4 professions are within ±0.05 of the target 0.5 (before: 1), and mean "
                      f"Δ fell from {before.mean_delta:.2f} to {after.mean_delta:.2f} — the 95% intervals do not "
                      "overlap."}
    rows = [_paired_row(b, a) for b, a in zip(before.professions, after.professions, strict=True)]
    warnings = [
        "The two runs differ in generation; a before/after difference may come from these settings and not only "
        "from the edit. Compare runs made with the same settings.",
        "More than 20% of the images were unclear (no person found or low classifier confidence) for: lifeguard. "
        "Their shares rest on fewer images and may be biased by what the classifier abstains on; look at the "
        "sample images."]
    sources = {"before": "../base/audit.json", "after": "audit.json"}
    method = {"runs": {"before": _settings(before), "after": _settings(after)}}
    # ordered by Δ before; lifeguard (every image unclear: no share, no Δ) last
    return _envelope(report, "compare", "compare_report", sources, summary, rows, method, warnings)


# --------------------------------------------------------------------------- the twins

def test_audit_twin_is_the_audit(rendered):
    r = rendered["audit"]
    assert r["html_path"] == r["dirs"][0] / "report.html"
    assert r["report"] == expected_audit(r["dirs"][0], r["report"])


def test_fix_twin_is_the_fix_and_its_audits(rendered):
    r = rendered["fix"]
    assert r["html_path"] == r["dirs"][0] / "report.html"
    assert r["report"] == expected_fix(r["dirs"][0], r["report"])


def test_compare_twin_is_the_two_audits_with_warnings(rendered):
    r = rendered["compare"]
    assert r["html_path"] == r["dirs"][1] / "compare_report.html"
    assert r["report"] == expected_compare(r["dirs"], r["report"])


@pytest.mark.parametrize("kind", ["audit", "fix", "compare"])
def test_csv_twin_is_the_json_twins_scalar_columns(rendered, kind):
    r = rendered[kind]
    rows = r["report"]["professions"]
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, (list, dict))))
    expected = [{k: "" if row.get(k) is None else str(row[k]) for k in columns} for row in rows]
    with open(r["csv"], newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == expected
    assert not list(r["html_path"].parent.glob(".*.tmp"))  # nothing half-written is left behind


# --------------------------------------------------------------------------- the page

def _check_shown_numbers(r: dict):
    """Every number on the page equals its twin's value and carries its data-key; returns the parsed page."""
    page = pagecheck.parse(r["html"])
    status = {text: key for key, text in STATUS_TEXT.items()}  # a status is shown in words
    for item in page.keys:
        value = pagecheck.resolve(r["report"], item["key"])
        if item["value"] is not None:
            assert json.loads(item["value"]) == value, item
        shown = status.get(item["text"], item["text"]) if "status" in item["key"] else item["text"]
        assert pagecheck.shown_matches(shown, value), item
    assert page.loose == []  # numbers in table cells and headline cards all carry their data-key
    return page


@pytest.mark.parametrize("kind", ["audit", "fix", "compare"])
def test_every_shown_number_equals_the_twin(rendered, kind):
    page = _check_shown_numbers(rendered[kind])
    assert len(page.keys) > 40


def test_sections_follow_the_kind(rendered):
    audit, fix, compare = (rendered[k]["html"] for k in ("audit", "fix", "compare"))
    assert all(html.startswith("<!DOCTYPE html>") for html in (audit, fix, compare))
    assert 'id="search"' in fix and 'id="side-effects"' in fix and "tuning prompts, last round" in fix
    assert 'id="search"' not in audit and 'id="search"' not in compare and "tuning prompts, last round" not in audit
    # one λ-search chart per searched profession (teacher was already within tolerance)
    assert fix.count('alt="Search chart for') == 3
    # a synthetic world has planted and oracle columns and says so; a real model has neither
    assert "planted</th>" in audit and "synthetic world: planted shares known" in fix
    assert "planted</th>" not in compare and "Synthetic world." not in compare


def test_hostile_text_is_escaped(rendered):
    html, report = rendered["fix"]["html"], rendered["fix"]["report"]
    assert "<script>alert" not in html
    assert html.count("<script") == 1  # only the report's own sorting script
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;co&#34;" in html
    evil_name = "nurse " + runs.EVIL
    page = pagecheck.parse(html)
    # attribute values survive intact (quotes did not end the attribute early)
    assert ("tr", evil_name) in [(t, a.get("data-profession")) for t, a in page.attrs_seen if "data-profession" in a]
    text = "".join(page.text)
    assert evil_name in text and f"mini {runs.EVIL}" in text            # profession and model spec as text
    assert EVIL_TEMPLATE_COLUMNS[1] in text                              # a prompt template with quotes and &
    assert f"a photo of a car {runs.EVIL}" in text                       # a side-effect prompt
    assert report["summary"]["model_spec"] == f"mini {runs.EVIL}"


def test_no_network_resources(rendered):
    for r in rendered.values():
        html = r["html"]
        assert not re.search(r"""(?:src|href|action|poster)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
        assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", html, re.I)
        assert "@import" not in html and "<link" not in html.lower() and "<iframe" not in html.lower()
        page = pagecheck.parse(html)
        srcs = [a["src"] for t, a in page.attrs_seen if "src" in a]
        assert srcs and all(s.startswith("data:image/") for s in srcs)
        hrefs = [a["href"] for t, a in page.attrs_seen if "href" in a]
        assert all(h.startswith("#") for h in hrefs)


def test_mixed_targets_get_one_verdict_each(tmp_path):
    rows = [runs.profession_audit(name, (nf, nm, nu), planted, target=0.9 if name == "nurse" else 0.5)
            for name, (nf, nm, nu, planted) in runs.MINI_PROFESSIONS.items()]
    folder = runs.save_audit(tmp_path / "a", runs.audit_result(rows))  # nurse at 0.89 is within ±0.05 of 0.9
    html_path = render_report([folder])
    summary = json.loads(twin_paths(html_path)[0].read_text())["summary"]
    assert (summary["within_tolerance"], summary["verdicts"]) == (2, [
        {"target": 0.5, "n_professions": 3, "within_tolerance": 1},
        {"target": 0.9, "n_professions": 1, "within_tolerance": 1}])
    assert "of the target 0.5/0.9;" in summary["conclusion"]
    keys = {k["key"] for k in pagecheck.parse(html_path.read_text()).keys}
    assert {"summary.verdicts.0.within_tolerance", "summary.verdicts.1.within_tolerance"} <= keys


# --------------------------------------------------------------------------- images, files, errors

def test_thumbnails_upscale_tiny_images_and_shrink_large_ones(tmp_path):
    small = Image.new("RGB", (32, 32), "white")
    small.putpixel((0, 0), (255, 0, 0))
    small.save(tmp_path / "s.png")
    Image.new("RGB", (512, 512), (10, 200, 30)).save(tmp_path / "l.png")

    def decode(uri: str) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))

    up = decode(thumbnail(tmp_path / "s.png"))
    assert up.size == (96, 96) and up.format == "PNG"
    assert up.convert("RGB").getpixel((2, 2)) == (255, 0, 0) and up.convert("RGB").getpixel((3, 3)) == (255, 255, 255)
    down = decode(thumbnail(tmp_path / "l.png"))
    assert down.size == (96, 96) and down.format == "JPEG"
    assert thumbnail(tmp_path / "missing.png") is None


def test_missing_images_render_with_a_warning(tmp_path):
    folder = runs.make_audit(tmp_path / "a", with_images=False)
    report = json.loads(twin_paths(render_report([folder]))[0].read_text())
    (warning,) = report["warnings"]
    assert warning.startswith("32 sample image(s) could not be read and are shown as empty boxes (")
    assert 'class="missing"' in (folder / "report.html").read_text()


def test_out_option_and_twin_names(rendered, tmp_path):
    out = render_report(rendered["audit"]["dirs"], tmp_path / "sub" / "audit.html")
    assert out == tmp_path / "sub" / "audit.html" and (tmp_path / "sub" / "audit.report.json").is_file()
    sources = json.loads((tmp_path / "sub" / "audit.report.json").read_text())["sources"]
    assert (out.parent / sources["audit"]).resolve() == (rendered["audit"]["dirs"][0] / "audit.json").resolve()
    # the run's own audit.json is never overwritten by a twin
    out2 = render_report(rendered["audit"]["dirs"], rendered["audit"]["dirs"][0] / "audit.html")
    assert AuditResult.from_json(out2.parent).kind == "audit"


def test_clear_errors(tmp_path, rendered):
    with pytest.raises(InputError, match="no such folder"):
        render_report([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither audit.json nor fix.json"):
        render_report([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "audit.json").write_text('{"kind": "audit",\n "professions": [', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad/audit.json:2:\d+: not valid JSON .*rerun"):
        render_report([bad])
    (bad / "audit.json").write_text('{"kind": "audit"}', encoding="utf-8")
    with pytest.raises(InputError, match="no 'professions' list"):
        render_report([bad])
    (bad / "audit.json").write_text('{"kind": "fix", "professions": []}', encoding="utf-8")
    with pytest.raises(InputError, match=r"expected a debias audit record .*found 'fix'"):
        render_report([bad])
    with pytest.raises(InputError, match="two audit folders"):
        render_report([rendered["fix"]["dirs"][0], rendered["audit"]["dirs"][0]])
    broken_fix = tmp_path / "fix"
    shutil.copytree(rendered["fix"]["dirs"][0], broken_fix)
    shutil.rmtree(broken_fix / "after")
    with pytest.raises(InputError, match="after audit 'after/audit.json', which is missing"):
        render_report([broken_fix])
    audit_dir = rendered["audit"]["dirs"][0]
    with pytest.raises(InputError, match="cannot write the report .*--out"):
        render_report([audit_dir], audit_dir / "audit.json" / "r.html")  # a file where a folder should be


def test_files_of_another_version_say_to_rerun(tmp_path, rendered):
    """A record without the fields this version writes (here an audit row's within_band) is refused, not guessed."""
    folder = tmp_path / "old"
    shutil.copytree(rendered["audit"]["dirs"][0], folder)
    data = json.loads((folder / "audit.json").read_text())
    for row in data["professions"]:
        del row["within_band"]
    (folder / "audit.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"not a complete ProfessionAudit .*within_band.*re-run"):
        render_report([folder])
    (folder / "audit.json").write_text(json.dumps({**data, "mean_delta": float("nan")}))
    with pytest.raises(InputError, match="NaN is not a number in strict JSON"):
        render_report([folder])


def test_cli_report(rendered, tmp_path, capsys):
    from debias.cli import main

    main(["report", str(rendered["audit"]["dirs"][0]), "--out", str(tmp_path / "r.html")])
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r.json").is_file()
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "nope")])
    assert exc.value.code == 2
    assert "no such folder" in capsys.readouterr().err


def test_charts_are_inline_pngs_and_skip_empty_searches():
    from debias.report import charts

    def png_size(uri: str) -> tuple[int, int]:
        assert uri.startswith("data:image/png;base64,")
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size

    w, h = png_size(charts.share_chart(["a $x$", "b"], [(0.2, 0.1, 0.3), (None, None, None)],
                                       [(0.5, 0.4, 0.6), (0.45, 0.3, 0.6)], 0.5, 0.05, planted=[0.2, None]))
    w2, h2 = png_size(charts.share_chart([f"p{i}" for i in range(30)], [(0.5, 0.4, 0.6)] * 30, None, 0.5, 0.05))
    assert w == w2 and h2 > 2 * h  # taller with more professions, same width
    pts = [{"x": 10.0, "n_female": 5, "n_male": 5}, {"x": 100.0, "n_female": 9, "n_male": 1}]
    assert png_size(charts.search_chart("nurse", pts, 30.0, 0.5, 0.05, 0.9))[0] > 300
    assert charts.search_chart("nurse", [], None, 0.5, 0.05) is None
    assert charts.search_chart("nurse", [{"x": 0.0, "n_female": 1, "n_male": 1},
                                         {"x": 5.0, "n_female": 0, "n_male": 0}], None, 0.5, 0.05) is None


def _keys(obj, prefix=""):
    """Every key path of a JSON document (lists contribute their first item's keys)."""
    if isinstance(obj, dict):
        out = set()
        for k, v in obj.items():
            out |= {f"{prefix}{k}"} | _keys(v, f"{prefix}{k}.")
        return out
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return _keys(obj[0], f"{prefix}[].")
    return set()


def test_sample_report_in_reports_is_current_with_the_code(tmp_path):
    """reports/ is regenerated by `make sample-report`; this fails when the report's layout moves on without it."""
    root = Path(__file__).resolve().parents[1] / "reports"
    sample = json.loads((root / "mini-fix.json").read_text())
    html = (root / "mini-fix.html").read_text(encoding="utf-8")
    fresh = json.loads(twin_paths(render_report([runs.make_fix(tmp_path / "fix")]))[0].read_text())
    stale = "reports/mini-fix.* are from another version of the report: run `make sample-report`"
    assert (sample["kind"], sample["debias_version"], sample["report_version"]) == (
        "fix", debias.__version__, fresh["report_version"]), stale
    top = {k for k in _keys(fresh) if k.count(".") <= 1 and "[]" not in k}
    assert top <= _keys(sample), (stale, sorted(top - _keys(sample)))
    for row in sample["professions"]:  # and the page shows what its twin says
        assert row["profession"] in html


# --------------------------------------------------------------------------- the Markdown twin (a model card's section)

def _markdown(r: dict) -> str:
    return markdown_path(r["html_path"]).read_text(encoding="utf-8")


def _table_cells(md: str, first_header: str = "profession") -> list[list[str]]:
    """The rows of the Markdown table whose first header is ``first_header``, as unescaped cells (an escaped bar
    inside a name is text, not a cell break)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([re.sub(r"\\(.)", r"\1", c.strip()) for c in cells])
    return rows


def _two(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def _share_cell(share, low, high) -> str:
    return "—" if share is None else f"{share:.2f} [{low:.2f}, {high:.2f}]"


def _expected_cells(kind: str, row: dict) -> list[str]:
    """A profession's row of report.md as the JSON twin's numbers give it (shares and Δ to two decimals)."""
    head = [row["profession"], f"{row['target']:g}"]
    if kind == "audit":
        share = _share_cell(row["share_female"], row["ci_low"], row["ci_high"])
        return [*head, str(row["n"]), str(row["n_unclear"]), share, _two(row["delta"]),
                "yes" if row["within_band"] else "no"]
    shares = [_share_cell(row[f"share_{s}"], row[f"ci_low_{s}"], row[f"ci_high_{s}"]) for s in ("before", "after")]
    cells = [*head, *shares, _two(row["delta_before"]), _two(row["delta_after"]),
             f"{row['n_before']} / {row['n_after']}"]
    return cells + ([STATUS_TEXT[row["status"]]] if kind == "fix" else [])


@pytest.mark.parametrize("kind", ["audit", "fix", "compare"])
def test_markdown_table_is_the_json_twins_rows(rendered, kind):
    r = rendered[kind]
    assert _table_cells(_markdown(r)) == [_expected_cells(kind, row) for row in r["report"]["professions"]]


@pytest.mark.parametrize("kind", ["audit", "fix", "compare"])
def test_markdown_headline_is_the_json_twins(rendered, kind):
    s, md = rendered[kind]["report"]["summary"], _markdown(rendered[kind])
    if kind == "audit":
        expected = (f"**Mean Δ: {s['mean_delta']:.3f}** (95% interval {s['mean_delta_ci_low']:.3f}–"
                    f"{s['mean_delta_ci_high']:.3f}; noise floor {s['mean_delta_noise_floor']:.3f}); "
                    f"{s['within_tolerance']} of {s['n_professions']} professions within the band.")
    else:
        expected = (f"**Mean Δ: {s['mean_delta_before']:.3f} → {s['mean_delta_after']:.3f}** (95% intervals "
                    f"{s['mean_delta_before_ci_low']:.3f}–{s['mean_delta_before_ci_high']:.3f} before, "
                    f"{s['mean_delta_after_ci_low']:.3f}–{s['mean_delta_after_ci_high']:.3f} after; noise floor "
                    f"{s['mean_delta_noise_floor_after']:.3f}); professions within the band: "
                    f"{s['within_tolerance_before']} → {s['within_tolerance_after']} of {s['n_professions']}.")
    assert expected in md.splitlines()
    assert md.startswith("## Bias evaluation\n") and "### Method" in md and "### Limitations" in md
    assert s["model_fingerprint"] in md


def _json_numbers(obj) -> set[str]:
    """Every number of a JSON document as it may be written (0 to 3 decimals), and every list's length."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for v in obj.values():
            out |= _json_numbers(v)
    elif isinstance(obj, list):
        out.add(str(len(obj)))
        for v in obj:
            out |= _json_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out |= {f"{obj:g}", str(round(obj))} | {f"{obj:.{d}f}" for d in (1, 2, 3)}
    return out


@pytest.mark.parametrize("kind", ["audit", "fix", "compare"])
def test_every_number_in_the_markdown_is_in_the_json_twin(rendered, kind):
    r = rendered[kind]
    text = re.sub(r"`[^`]*`", "", _markdown(r))  # code spans: hashes
    text = text.replace(r["report"]["summary"]["date"], "")
    numbers = re.findall(r"(?<![\w.\-])\d+(?:\.\d+)?(?![\w.\-]*\d)", text)
    constants = {"0", "1", "95"}  # Δ's definition (0 on target, 1 − t) and the intervals' level
    assert numbers and set(numbers) - constants <= _json_numbers(r["report"])


def test_markdown_escapes_names(rendered, tmp_path):
    fix = rendered["fix"]
    md = _markdown(fix)
    assert "<script>" not in md and runs.EVIL not in md  # every name is text, never markup
    report = json.loads(json.dumps(fix["report"]))
    report["professions"][0]["profession"] = "a | b `c` *d* [e](f) <i>"
    from debias.report import bias_section

    assert _table_cells(bias_section(report))[0][0] == "a | b `c` *d* [e](f) <i>"


def test_markdown_twin_sits_beside_the_page(rendered, tmp_path):
    assert markdown_path(rendered["compare"]["html_path"]).name == "compare_report.md"
    render_report(rendered["audit"]["dirs"], tmp_path / "audit.html")
    md = (tmp_path / "audit.report.md").read_text(encoding="utf-8")  # never over a run's own files
    assert md == _markdown(rendered["audit"]).replace("(report.json)", "(audit.report.json)")


# --------------------------------------------------------------------------- attributes beyond gender

def _add_attributes(audit_dir: Path, shift: int, evil: bool = False) -> AuditResult:
    """Give a saved audit a skin section and a gender × skin intersection, built by the audit's own functions from
    labels made up per image (``shift`` moves them, so before and after differ)."""
    from debias.core.attributes import SKIN, Attribute, AttributeClass
    from debias.auditing.attributes import AttributePlan, attribute_section, intersection_section, profession_section
    from debias.core.prompts import ProfessionEntry

    skin = SKIN
    if evil:  # free text of an attribute file: its description and prompts
        skin = Attribute("skin", tuple(AttributeClass(c.name, (c.labels[0] + " " + runs.EVIL,), c.destination)
                                       for c in SKIN.classes), "skin " + runs.EVIL)
    audit = AuditResult.from_json(audit_dir)
    entries = [ProfessionEntry(r.phrase) for r in audit.professions]
    gender = {r.phrase: runs._labels(r.n_female, r.n_male, r.n_unclear) for r in audit.professions}  # every image
    labels = {phrase: [("light", "medium", "dark", "unclear")[(i * i + shift * (j + 1)) % 4] if i % 5 else "light"
                       for i in range(len(gender[phrase]))] for j, phrase in enumerate(gender)}
    targets = {phrase: ((0.6, 0.3, 0.1) if j == 0 else skin.uniform_target()) for j, phrase in enumerate(gender)}
    rows = [profession_section(e, skin, labels[e.phrase], targets[e.phrase], "list" if j == 0 else "uniform",
                               audit.tolerance, ["light"] * len(labels[e.phrase]) if j == 1 else None)
            for j, e in enumerate(entries)]
    audit.attributes = [attribute_section(skin, {"labels": {k: list(v) for k, v in skin.labels().items()}}, rows,
                                          audit.tolerance, True)]
    plan = AttributePlan((skin,), (("gender", "skin"),))
    audit.intersections = [intersection_section(
        ("gender", "skin"), plan, entries, {"gender": gender, "skin": labels},
        {"gender": {e.phrase: (0.5, 0.5) for e in entries}, "skin": targets})]
    audit.save(audit_dir)
    return audit


@pytest.fixture(scope="module")
def attribute_reports(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("attributes")
    audit_dir = runs.make_audit(root / "audit")
    fix_dir = runs.make_fix(root / "fix", evil=True)
    audits = {"audit": {"audit": _add_attributes(audit_dir, 0)},
              "fix": {"before": _add_attributes(fix_dir / "before", 0, evil=True),
                      "after": _add_attributes(fix_dir / "after", 3, evil=True)}}
    out = {}
    for kind, folder in (("audit", audit_dir), ("fix", fix_dir)):
        html_path = render_report([folder])
        out[kind] = {"html": html_path.read_text(encoding="utf-8"), "audits": audits[kind],
                     "report": json.loads(twin_paths(html_path)[0].read_text(encoding="utf-8"))}
    return out


@pytest.mark.parametrize("kind", ["audit", "fix"])
def test_attribute_twin_is_the_audits_sections(attribute_reports, kind):
    r = attribute_reports[kind]
    (block,), (crossed,) = r["report"]["attributes"], r["report"]["intersections"]
    sides = list(r["audits"])
    assert block["attribute"] == "skin" and block["sides"] == sides and block["classes"] == ["light", "medium", "dark"]
    for side, audit in r["audits"].items():
        section = audit.attributes[0]
        assert block["headline"][side] == {"mean_delta": section["mean_delta"],
                                           "mean_delta_ci_low": section["mean_delta_ci_low"],
                                           "mean_delta_ci_high": section["mean_delta_ci_high"],
                                           "within_tolerance": section["within_tolerance"],
                                           "n_professions": len(section["professions"])}
        for row, recorded in zip(block["professions"], section["professions"]):
            assert row["phrase"] == recorded["phrase"]
            assert row[side] == {k: v for k, v in recorded.items() if k not in ("profession", "phrase", "labels")}
        for row, recorded in zip(crossed["professions"], audit.intersections[0]["professions"]):
            assert row[side] == {k: v for k, v in recorded.items() if k not in ("profession", "phrase")}
    assert crossed["attributes"] == ["gender", "skin"] and crossed["rows"] == ["female", "male"]


@pytest.mark.parametrize("kind", ["audit", "fix"])
def test_attribute_sections_show_the_twins_numbers(attribute_reports, kind):
    r = attribute_reports[kind]
    page = _check_shown_numbers(r)
    keys = [item for item in page.keys if item["key"].startswith(("attributes.", "intersections."))]
    crossed = r["report"]["intersections"][0]
    sides = crossed["sides"]
    cells = [c for row in crossed["professions"] for side in sides for c in row[side]["cells"]]
    # each class share, its interval and target, Δ, p, n, unclear and the band per profession and side
    n_rows = len(r["report"]["attributes"][0]["professions"]) * len(sides)
    shown = {k["key"] for k in keys}
    assert sum(".shares." in k and k.startswith("attributes.") for k in shown) == 3 * n_rows
    assert sum(k.endswith(".within_band") for k in shown) == n_rows
    # the heatmap: a count for every cell, a share only where the cell is readable; tiny cells greyed and named
    assert sum(k.endswith(".count") for k in shown) == len(cells)
    assert sum(k.startswith("intersections.") and k.endswith(".share") for k in shown) == \
        sum(c["flag"] != "tiny" for c in cells)
    assert r["html"].count("hm flag-tiny") == sum(c["flag"] == "tiny" for c in cells) > 0
    assert r["html"].count("hm flag-ok") == sum(c["flag"] == "ok" for c in cells) > 0
    assert r["html"].count('<span class="flag-word">empty</span>') == sum(c["flag"] == "empty" for c in cells)
    assert r["html"].count('alt="Chart: share of each skin class') == 1
    assert 'href="#attribute-0"' in r["html"] and 'href="#intersection-0"' in r["html"]
    assert "oracle shares</th>" in r["html"]  # one profession had an oracle


def test_attribute_text_is_escaped_and_gender_only_reports_have_no_sections(attribute_reports, rendered):
    html = attribute_reports["fix"]["html"]
    assert "<script>alert" not in html and html.count("<script") == 1
    text = "".join(pagecheck.parse(html).text)
    assert "skin " + runs.EVIL in text and "a photo of a person with light skin " + runs.EVIL in text
    for kind in ("audit", "fix", "compare"):
        assert "attributes" not in rendered[kind]["report"] and "intersections" not in rendered[kind]["report"]
        assert 'id="attribute-' not in rendered[kind]["html"] and "heatmap" not in rendered[kind]["html"]
        assert "flag-tiny" in attribute_reports["audit"]["html"]  # its styles come only with its sections


def test_class_share_chart_draws_sides_and_targets():
    from debias.report import charts

    uri = charts.class_share_chart(["nurse", "ceo $x"], ["light", "medium", "dark"],
                                   [("before", [[0.2, 0.3, 0.5], None]), ("after", [[0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])],
                                   [[1 / 3] * 3, [0.5, 0.3, 0.2]])
    assert uri.startswith("data:image/png;base64,")
    w, h = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size
    assert w > 300 and h > 100
    more = charts.class_share_chart([f"p{i}" for i in range(12)], ["a", "b"], [("audit", [[0.5, 0.5]] * 12)],
                                    [[0.5, 0.5]] * 12)
    assert Image.open(io.BytesIO(base64.b64decode(more.split(",", 1)[1]))).size[1] > h  # taller with more rows
