"""The HTML report: all three kinds render, hostile text is escaped, nothing is fetched from the
network, and every number on the page equals the one in report.json and in the run files."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import pagecheck  # noqa: E402
import runs  # noqa: E402

from debias.errors import InputError  # noqa: E402
from debias.report import STATUS_TEXT, render_report, thumbnail, twin_paths  # noqa: E402


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


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_three_kinds_render_with_default_outputs(rendered):
    audit, fix, compare = rendered["audit"], rendered["fix"], rendered["compare"]
    assert audit["html_path"] == audit["dirs"][0] / "report.html"
    assert fix["html_path"] == fix["dirs"][0] / "report.html"
    assert compare["html_path"] == compare["dirs"][1] / "compare_report.html"
    assert [r["report"]["kind"] for r in (audit, fix, compare)] == ["audit", "fix", "compare"]
    for r in rendered.values():
        assert r["html"].startswith("<!DOCTYPE html>")
        assert (r["html_path"].parent / r["report"]["twins"]["json"]).is_file()
        names = {row["profession"] for row in r["report"]["professions"]}
        csv_rows = r["csv"].read_text(encoding="utf-8").splitlines()
        assert len(csv_rows) == 1 + len(names)
        header = csv_rows[0].split(",")
        assert set(header) <= set(r["report"]["professions"][0]) and "profession" in header  # same names as JSON
        # nothing half-written is left behind
        assert not list(r["html_path"].parent.glob(".*.tmp"))
    assert set(r["profession"] for r in audit["report"]["professions"]) == set(runs.MINI_PROFESSIONS)
    assert 'id="search"' in fix["html"] and 'id="side-effects"' in fix["html"]
    assert 'id="search"' not in audit["html"] and 'id="search"' not in compare["html"]
    # one λ-search chart per profession that was searched (teacher was already within tolerance)
    assert fix["html"].count('alt="Search chart for') == 3


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
    assert 'a "painting" of a(n) {profession} & friends' in text         # a prompt template with quotes and &
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


@pytest.mark.parametrize("kind", ["audit", "fix", "compare"])
def test_every_shown_number_equals_report_json(rendered, kind):
    r = rendered[kind]
    page = pagecheck.parse(r["html"])
    assert len(page.keys) > 40
    for item in page.keys:
        value = pagecheck.resolve(r["report"], item["key"])
        if item["value"] is not None:
            assert json.loads(item["value"]) == value, item
        shown = {v: k for k, v in STATUS_TEXT.items()}.get(item["text"], item["text"]) if "status" in item["key"] else item["text"]
        assert pagecheck.shown_matches(shown, value), item
    # numbers in table cells and headline cards all carry their data-key
    assert page.loose == []


def test_audit_numbers_equal_audit_json(rendered):
    r = rendered["audit"]
    src = _load(r["dirs"][0] / "audit.json")
    by_name = {p["profession"]: p for p in src["professions"]}
    for row in r["report"]["professions"]:
        for key in ("n", "n_female", "n_male", "n_unclear", "share_female", "ci_low", "ci_high", "p_value", "delta",
                    "planted_share", "oracle_share"):
            assert row[key] == by_name[row["profession"]][key], (row["profession"], key)
    s = r["report"]["summary"]
    assert (s["mean_delta"], s["mean_delta_ci_low"], s["mean_delta_ci_high"]) == (
        src["mean_delta"], src["mean_delta_ci_low"], src["mean_delta_ci_high"])
    # computed: only teacher (20/39 = 0.513) is within ±0.05 of 0.5
    assert [row["within_tolerance"] for row in r["report"]["professions"]].count(True) == 1
    assert s["within_tolerance"] == 1 and s["verdicts"] == [
        {"target": 0.5, "n_professions": 4, "within_tolerance": 1}]
    # ordered by Δ, largest first
    deltas = [row["delta"] for row in r["report"]["professions"]]
    assert deltas == sorted(deltas, reverse=True)
    assert "the most skewed is ceo (8% female)" in s["conclusion"]  # 3 of 39


def test_fix_numbers_equal_fix_and_audit_json(rendered):
    r = rendered["fix"]
    folder = r["dirs"][0]
    fix, before, after = (_load(folder / "fix.json"), _load(folder / "before/audit.json"),
                          _load(folder / "after/audit.json"))
    fx = {p["profession"]: p for p in fix["professions"]}
    b = {p["profession"]: p for p in before["professions"]}
    a = {p["profession"]: p for p in after["professions"]}
    for row in r["report"]["professions"]:
        name = row["profession"]
        for key in ("share_before", "ci_low_before", "ci_high_before", "share_after", "ci_low_after", "ci_high_after",
                    "delta_before", "delta_after", "destination", "status", "lambda", "lambda_relative",
                    "images_used_in_search", "search"):
            assert row[key] == fx[name][key], (name, key)
        for key in ("n", "n_unclear", "p_value", "oracle_share"):
            assert row[f"{key}_before"] == b[name][key] and row[f"{key}_after"] == a[name][key], (name, key)
        assert row["planted_share"] == b[name]["planted_share"]
    s = r["report"]["summary"]
    for key in ("mean_delta_before", "mean_delta_before_ci_low", "mean_delta_before_ci_high", "mean_delta_after",
                "mean_delta_after_ci_low", "mean_delta_after_ci_high", "within_tolerance_before", "within_tolerance_after"):
        assert s[key] == fix[key], key
    assert (s["within_tolerance_before"], s["within_tolerance_after"]) == (1, 3)
    assert s["conclusion"].startswith("After the edit, 3 of 4 professions are within ±0.05 of the target 0.5 "
                                      "on held-out prompts (before: 1), and mean Δ fell from")
    se = r["report"]["side_effects"]
    assert [p["mean_abs_pixel_change"] for p in se["prompts"]] == [
        p["mean_abs_pixel_change"] for p in fix["side_effects"]["prompts"]]
    assert r["report"]["method"]["fix"]["edit_file"]["sha256"] == fix["edit_file"]["sha256"]
    assert r["report"]["warnings"] == []


def test_samples_pair_the_same_prompt_and_seed(rendered):
    r = rendered["fix"]
    folder = r["dirs"][0]
    before = {p["profession"]: p for p in _load(folder / "before/audit.json")["professions"]}
    after = {p["profession"]: p for p in _load(folder / "after/audit.json")["professions"]}
    for row in r["report"]["professions"]:
        assert len(row["samples"]) == 8
        assert len({s["prompt"] for s in row["samples"][:2]}) == 2  # spread over prompts first
        for s in row["samples"]:
            for side, src in (("before", before), ("after", after)):
                match = [x for x in src[row["profession"]]["samples"] if (x["prompt"], x["seed"]) == (s["prompt"], s["seed"])]
                assert len(match) == 1 and match[0]["image"] == s[side]["image"] and match[0]["label"] == s[side]["label"]


def test_shares_per_prompt_come_from_the_audits_and_the_last_joint_round(rendered):
    fix = rendered["fix"]
    folder = fix["dirs"][0]
    sides = {side: {p["profession"]: p for p in _load(folder / f"{side}/audit.json")["professions"]}
             for side in ("before", "after")}
    last = {p["profession"]: p["joint"][-1] for p in _load(folder / "fix.json")["professions"]}
    assert fix["report"]["summary"]["prompt_columns"] == ["a photo of a(n) {profession}",
                                                          'a "painting" of a(n) {profession} & friends']
    for row in fix["report"]["professions"]:
        name = row["profession"]
        assert (row["tuning_share_after"], row["tuning_ci_low_after"], row["tuning_ci_high_after"]) == (
            last[name]["share_female"], last[name]["ci_low"], last[name]["ci_high"])
        assert [c["prompt"] for c in row["by_prompt"]] == sides["before"][name]["prompts"]
        for k, c in enumerate(row["by_prompt"]):
            for side in ("before", "after"):
                src = sides[side][name]["by_prompt"][k]
                assert (c[f"share_{side}"], c[f"ci_low_{side}"], c[f"ci_high_{side}"], c[f"n_{side}"]) == (
                    src["share_female"], src["ci_low"], src["ci_high"], src["n"])
    assert 'id="prompts"' in fix["html"] and "tuning prompts, final edit" in fix["html"]
    # the page shows them under their report.json keys (checked against report.json by the test above)
    assert 'data-key="professions.0.by_prompt.1.share_after"' in fix["html"]

    audit = rendered["audit"]
    src = {p["profession"]: p for p in _load(audit["dirs"][0] / "audit.json")["professions"]}
    for row in audit["report"]["professions"]:
        assert [(c["prompt"], c["share_female"], c["n"]) for c in row["by_prompt"]] == [
            (b["prompt"], b["share_female"], b["n"]) for b in src[row["profession"]]["by_prompt"]]
    assert 'data-key="professions.0.by_prompt.0.share_female"' in audit["html"]
    assert "tuning prompts, final edit" not in audit["html"]


def test_compare_tolerates_null_and_missing_fields_and_warns_on_settings(rendered):
    r = rendered["compare"]
    rows = {row["profession"]: row for row in r["report"]["professions"]}
    life = rows["lifeguard"]
    assert life["share_before"] is None and life["within_tolerance_after"] is None and life["planted_share"] is None
    assert r["report"]["professions"][-1]["profession"] == "lifeguard"  # unmeasured last
    assert "planted</th>" not in r["html"]                             # real model: no planted/oracle columns
    warnings = " ".join(r["report"]["warnings"])
    assert "differ in generation" in warnings                          # steps 10 vs 25
    assert "lifeguard" in warnings and "unclear" in warnings           # 100% unclear
    assert rows["nurse"]["share_before"] == _load(r["dirs"][0] / "audit.json")["professions"][0]["share_female"]


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
    assert any("could not be read" in w for w in report["warnings"])
    assert 'class="missing"' in (folder / "report.html").read_text()


def test_out_option_and_twin_names(rendered, tmp_path):
    out = render_report(rendered["audit"]["dirs"], tmp_path / "sub" / "audit.html")
    assert out == tmp_path / "sub" / "audit.html" and (tmp_path / "sub" / "audit.report.json").is_file()
    sources = json.loads((tmp_path / "sub" / "audit.report.json").read_text())["sources"]
    assert (out.parent / sources["audit"]).resolve() == (rendered["audit"]["dirs"][0] / "audit.json").resolve()
    # the run's own audit.json is never overwritten by a twin
    out2 = render_report(rendered["audit"]["dirs"], rendered["audit"]["dirs"][0] / "audit.html")
    assert json.loads((out2.parent / "audit.json").read_text())["kind"] == "audit"


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
    from debias import charts

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


def test_mixed_targets_get_one_verdict_each(tmp_path):
    folder = runs.make_audit(tmp_path / "a")
    data = json.loads((folder / "audit.json").read_text())
    data["professions"][0]["target"] = 0.9  # nurse at 0.89 is within ±0.05 of its own target
    (folder / "audit.json").write_text(json.dumps(data))
    html_path = render_report([folder])
    report = json.loads(twin_paths(html_path)[0].read_text())
    assert report["summary"]["verdicts"] == [
        {"target": 0.5, "n_professions": 3, "within_tolerance": 1},
        {"target": 0.9, "n_professions": 1, "within_tolerance": 1}]
    assert report["summary"]["within_tolerance"] == 2 and "target 0.5/0.9" in report["summary"]["conclusion"]
    page = pagecheck.parse(html_path.read_text())
    keys = {k["key"] for k in page.keys}
    assert {"summary.verdicts.0.within_tolerance", "summary.verdicts.1.within_tolerance"} <= keys


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
    """reports/ is regenerated by `make sample-report`; this fails when the report's structure moves on without it."""
    import debias

    root = Path(__file__).resolve().parents[1] / "reports"
    sample = json.loads((root / "mini-fix.json").read_text())
    html = (root / "mini-fix.html").read_text(encoding="utf-8")
    assert sample["kind"] == "fix" and sample["debias_version"] == debias.__version__
    fresh = json.loads(twin_paths(render_report([runs.make_fix(tmp_path / "fix")]))[0].read_text())
    assert sample["report_version"] == fresh["report_version"]
    # the synthetic fix has no oracle column for every field; compare the structure both must have
    top = {k for k in _keys(fresh) if k.count(".") <= 1 and "[]" not in k}
    assert top <= _keys(sample), sorted(top - _keys(sample))
    for row in sample["professions"]:  # and the page shows what its twin says
        assert row["profession"] in html
