"""The fix verb: plumbing on a tiny random pipeline (quick), and the real thing on the mini model (slow).

The tiny pipeline's images mean nothing, so its tests use stand-in classifiers and check what the fix
does with what it measures (determinism, resume, not-reachable, the record). The mini model has planted
shares, so its test checks that the fix actually moves every profession to the target on held-out prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audit_helpers import HalfClassifier, load_tiny
from debias.results import FixResult, ProfessionAudit
from debias.fixing import TUNING_SEED_OFFSET, anchor_prompts_for, destination_phrase, fix
from debias.fixing import plan
from debias.fixing.plan import Anchors, ProfessionState, edit_reach, join_edit, joint_matrix, pooled_correction, single_matrix

TIMING = ("started_at", "finished_at", "wall_seconds", "images", "hardware")
QUICK = dict(budget=48, test_images=8, check_images=8, joint_rounds=1, side_seeds=2, steps=2, progress=False, log=None)


def _list(tmp_path: Path, text: str = "a nurse\na pilot\n") -> Path:
    path = tmp_path / "professions.txt"
    path.write_text(text, encoding="utf-8")
    return path


class AlwaysFemale(HalfClassifier):
    """Reads every image as female: no edit can move the share, so the target is not reachable."""

    cache_id = "always-female-v1"

    def classify(self, images):
        n = len(images)
        return ["female"] * n, torch.ones(n)


class Interrupting(HalfClassifier):
    """HalfClassifier that raises KeyboardInterrupt (like Ctrl-C) on its ``stop_after``-th call."""

    def __init__(self, stop_after: int):
        self.calls, self.stop_after = 0, stop_after

    def classify(self, images):
        self.calls += 1
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        return super().classify(images)


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def _lambdas(record: dict) -> list:
    return [(p["profession"], p["lambda_relative"], p["status"]) for p in record["professions"]]


def test_destination_phrase_follows_the_article():
    assert destination_phrase("a nurse", "male") == "a male nurse"
    assert destination_phrase("an engineer", "female") == "a female engineer"


def test_anchor_prompts_are_the_bare_templates_and_the_empty_prompt():
    templates = ("a photo of {}", "an image of {}", "{} at work", "a photo of  {}")
    assert anchor_prompts_for(templates) == ["a photo of", "an image of", "at work", ""]


def _row(share: float | None) -> ProfessionAudit:
    """An audit row with only the share filled in (what the joint edit's reach reads)."""
    return ProfessionAudit(profession="x", phrase="an x", prompts=[], target=0.5, n=0, n_female=0, n_male=0,
                           n_unclear=0, share_female=share, ci_low=None, ci_high=None, p_value=1.0, delta=None,
                           within_band=False)


def _profession_with_rows(seed: int, log_lambda: float) -> ProfessionState:
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(12, 16, generator=g, dtype=torch.float64)
    p = ProfessionState(entry=None, target=0.5, before=_row(None), tuning_before=_row(None), side="male")
    p.rows, p.scale, p.log_lambda = (C, C + 0.5 * torch.randn(12, 16, generator=g, dtype=torch.float64)), 16.0, log_lambda
    return p


def test_anchors_keep_shared_context_fixed_while_the_edit_still_moves_its_rows():
    p = _profession_with_rows(0, math.log(0.1))
    shared = torch.randn(6, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    anchors = Anchors(shared, 100.0)
    plain, anchored = single_matrix(p, p.log_lambda, None), single_matrix(p, p.log_lambda, anchors)

    def moved(M, rows):
        return float((rows @ M.T - rows).norm(dim=1).mean())

    assert moved(anchored, shared) < moved(plain, shared) / 10
    C, C_star = p.rows
    assert float((C @ anchored.T - C_star).norm()) < 0.9 * float((C - C_star).norm())  # still edits
    # two professions: anchors weigh against the median edit strength, the same way for both
    q = _profession_with_rows(2, math.log(0.1))
    joint = joint_matrix([p, q], None, 1.0, anchors)
    assert moved(joint, shared) < moved(joint_matrix([p, q], None, 1.0, None), shared) / 10


def test_joint_edit_gives_each_profession_what_its_own_edit_gives_it():
    """A strong edit must not drag a weakly edited profession whose rows overlap with it (TIME's plain sum does)."""
    from debias.editing import joint_edit_matrix

    strong, weak = _profession_with_rows(0, math.log(0.05)), _profession_with_rows(1, math.log(20.0))
    mix = torch.Generator().manual_seed(3)
    weak.rows = (0.6 * weak.rows[0] + 0.4 * strong.rows[0], weak.rows[1] + 0.4 * (strong.rows[0] - weak.rows[0]))
    weak.rows = (weak.rows[0] + 0.1 * torch.randn(weak.rows[0].shape, generator=mix, dtype=torch.float64), weak.rows[1])

    def drag(M, p):  # how far M moves p's rows from where p's own edit puts them, relative to that edit's move
        C = p.rows[0]
        own = C @ single_matrix(p, p.log_lambda, None).T
        return float((C @ M.T - own).norm() / (own - C).norm())

    plain = joint_edit_matrix([(p.rows[0], p.rows[1], math.exp(p.log_lambda) * p.scale) for p in (strong, weak)])
    pinned = joint_matrix([strong, weak], None, 1.0, None)
    assert drag(pinned, weak) < drag(plain, weak) / 2.5  # 5.3 against 15.8 here: rows this entangled conflict
    assert drag(pinned, strong) < 0.5  # the strong edit gives a little of itself up where the two overlap
    # alone, a pin is a second ridge: it gives most of what the search tuned (the joint rounds correct the rest),
    # and a stronger pin gives more of it (0.20 of the move lost at the default λ_rel 0.3, 0.03 at λ_rel 0.03)
    alone = drag(joint_matrix([weak], None, 1.0, None), weak)
    assert 0.05 < alone < 0.3
    assert drag(joint_matrix([weak], None, 1.0, None, pin=0.03), weak) < alone / 4


def test_joint_rounds_correct_from_every_round_pooled_not_from_the_last_alone():
    """Cross-effects shift a curve; rounds at different λ on fresh seeds are one curve with the search's slope."""
    p = _profession_with_rows(0, 0.0)
    p.slope, p.bounds = 1.5, (-5.0, 5.0)  # share rises with log λ (edit towards "male")

    def row(x, share, n):
        return {"lambda_relative": math.exp(x), "n_female": round(share * n), "n_male": n - round(share * n)}

    def shifted(x):  # the joint edit's true curve: the search's slope, crossing 0.5 at x = -0.4
        return 1 / (1 + math.exp(-1.5 * (x + 0.4)))

    p.joint = [row(0.0, shifted(0.0), 400), row(-0.2, shifted(-0.2), 400)]
    p.log_lambda = -0.2
    assert pooled_correction(p) == pytest.approx(-0.4, abs=0.02)
    # a round in which the profession was not edited yet (a joiner) says nothing about its curve
    p.joint.insert(0, {"lambda_relative": None, "n_female": 90, "n_male": 10})
    assert pooled_correction(p) == pytest.approx(-0.4, abs=0.02)
    # far off: one decade at most per round, and never past the allowed range
    p.joint = [row(0.0, 0.999, 400)]
    p.log_lambda = 0.0
    assert pooled_correction(p) == pytest.approx(-math.log(10))
    p.bounds = (-1.0, 5.0)
    assert pooled_correction(p) == pytest.approx(-1.0)


def test_a_profession_pushed_out_of_the_band_joins_with_a_calibrated_strength(monkeypatch):
    """The joiner's edit must carry it as far (in reach per logit) as the tuned professions' edits carried them."""
    q = _profession_with_rows(0, math.log(0.3))
    q.tuning_before, q.slope = _row(0.8), 1.5  # the tuned edit moved 0.8 → 0.5: logit shift 1.386
    joiner = _profession_with_rows(1, 0.0)
    joiner.side, joiner.log_lambda, joiner.status = None, None, "already_within_tolerance"
    joiner.entry = type("Entry", (), {"phrase": "a singer", "name": "singer"})()
    monkeypatch.setattr(plan, "profession_edit_rows", lambda pipe, src, dst, aug: _profession_with_rows(1, 0.0).rows)
    join_edit(joiner, 0.62, 2, [q], None, (), None, None, (math.log(1e-4), math.log(1e4)), None)
    assert joiner.edited and joiner.side == "male" and joiner.destination == "a male singer"
    assert joiner.joined_round == 2 and joiner.status == "" and joiner.slope == pytest.approx(1.5)
    per_reach = math.log(0.8 / 0.2) / edit_reach(q, q.log_lambda, None)
    needed = math.log(0.62 / 0.38) / per_reach
    assert edit_reach(joiner, joiner.log_lambda, None) == pytest.approx(needed, rel=1e-3)
    assert 0 < needed < edit_reach(q, q.log_lambda, None)  # a smaller push needs a weaker edit


def test_fix_is_deterministic_and_a_rerun_redoes_nothing(tmp_path):
    pipe, _ = load_tiny()
    professions = _list(tmp_path)
    first = fix(pipe, professions=professions, classifier=HalfClassifier(), out=tmp_path / "run", **QUICK).to_dict()
    out = tmp_path / "run"
    assert (out / "fix.json").is_file() and (out / "before" / "audit.json").is_file()
    assert (out / "after" / "audit.json").is_file()
    assert json.loads((out / "fix.json").read_text()) == first
    assert FixResult.from_json(out).to_json() == (out / "fix.json").read_text()  # the same bytes, read and written
    for p in first["professions"]:
        # the status says what the after audit shows: an edited profession is fixed exactly when it is in the band
        if p["status"] in ("fixed", "budget_exhausted"):
            assert (p["status"] == "fixed") == p["within_band_after"] and p["destination"]
        assert p["images_used_in_search"] <= QUICK["budget"]
        if p["destination"]:
            side = "male" if p["tuning_share_before"] > 0.5 else "female"  # decided on the tuning prompts
            assert p["destination"] == destination_phrase(p["phrase"], side)
            assert p["search"], "an edited profession has a search trace"
            for row in p["search"]:
                assert row["lambda"] == pytest.approx(row["lambda_relative"] * p["lambda_scale"])
    _assert_tuning_seeds_are_not_test_seeds(first, out)
    _assert_images_add_up(first, out)
    pngs = len(list((out / "images").glob("*.png")))
    second = fix(pipe, professions=professions, classifier=HalfClassifier(), out=out, **QUICK).to_dict()
    assert second["edit_file"] == first["edit_file"]  # the edit file is left alone when it holds the same edit
    assert _strip(second) == _strip(first)
    assert second["images"] == first["images"]  # counted from the cache: a rerun counts the same
    assert len(list((out / "images").glob("*.png"))) == pngs  # and generates nothing


def _assert_images_add_up(record: dict, out) -> None:
    """fix.json counts every image in the run folder once, by the stage that made it."""
    images, stages = record["images"], record["images"]["by_stage"]
    pngs = len(list((out / "images").glob("*.png")))
    assert images["generated"] == sum(v["generated"] for v in stages.values()) == images["in_cache"] == pngs
    n = len(record["professions"])
    assert stages["before"]["generated"] == stages["before"]["used"] == n * record["test_images"]
    assert stages["tuning"]["generated"] == n * record["check_images"]
    assert stages["search"]["used"] == sum(p["images_used_in_search"] for p in record["professions"])
    assert stages["search"]["reused"] > 0  # the unedited search point is the tuning audit's images
    side = record["side_effects"]
    assert stages["side_effects"]["generated"] == 2 * side["seeds"] * len(side["prompts"])
    assert stages["after"]["generated"] == n * record["test_images"]  # the shipped edit is a different model


def _assert_tuning_seeds_are_not_test_seeds(record: dict, out) -> None:
    """Strengths are judged on seeds, as well as prompts, that the tuning never used."""
    def sample_seeds(audit: str) -> set[int]:
        rows = json.loads((out / audit / "audit.json").read_text())["professions"]
        return {s["seed"] for row in rows for s in row["samples"]}

    test = sample_seeds("before") | sample_seeds("after")
    tuning = sample_seeds("tuning")
    for p in record["professions"]:
        tuning |= {seed for row in p["search"] for seed in row["seeds"]}
        tuning |= {j["first_seed"] for j in p["joint"]}
    assert record["tuning_seed"] == record["seed"] + TUNING_SEED_OFFSET
    assert test and tuning and max(test) < record["seed"] + QUICK["test_images"] <= min(tuning)
    assert min(tuning) == record["tuning_seed"]


def test_interrupted_fix_resumes_with_the_same_result(tmp_path):
    pipe, _ = load_tiny()
    professions = _list(tmp_path)
    reference = fix(pipe, professions=professions, classifier=HalfClassifier(), out=tmp_path / "ref", **QUICK).to_dict()
    edited = [p for p in reference["professions"] if p["destination"]]
    assert edited, "the stand-in classifier should leave at least one profession off target"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of the λ search
        fix(pipe, professions=professions, classifier=Interrupting(stop_after=6), out=tmp_path / "run", **QUICK)
    assert not (tmp_path / "run" / "fix.json").exists()
    cached = len(list((tmp_path / "run" / "images").glob("*.png")))
    assert cached > 0
    resumed = fix(pipe, professions=professions, classifier=HalfClassifier(), out=tmp_path / "run", **QUICK).to_dict()
    assert _lambdas(resumed) == _lambdas(reference)
    assert resumed["mean_delta_after"] == reference["mean_delta_after"]
    assert resumed["images"] == reference["images"]  # the interrupted run's images count once, by their stage
    before = json.loads((tmp_path / "run" / "before" / "audit.json").read_text())
    assert before["images_generated"] == 0  # the before audit finished before the interruption


def test_finished_searches_are_reused_from_the_run_folder(tmp_path):
    pipe, _ = load_tiny()
    professions = _list(tmp_path)
    fix(pipe, professions=professions, classifier=HalfClassifier(), out=tmp_path / "run", **QUICK)
    saved = sorted((tmp_path / "run" / "search").glob("*.json"))
    assert saved
    # a changed budget is a different search: the stored one must not be reused
    data = json.loads(saved[0].read_text())
    assert data["inputs"]["budget"] == QUICK["budget"]
    calls = []
    clf = HalfClassifier()
    original = clf.classify
    clf.classify = lambda images: (calls.append(len(images)), original(images))[1]
    fix(pipe, professions=professions, classifier=clf, out=tmp_path / "run", **QUICK)
    assert calls == []  # everything came from the cache and the stored searches


def test_not_reachable_is_reported_with_the_closest_share(tmp_path):
    pipe, _ = load_tiny()
    options = {**QUICK, "budget": 96}  # the walk down to the strongest allowed edit takes 7 evaluations of 8 seeds
    record = fix(pipe, professions=_list(tmp_path, "a nurse\n"), classifier=AlwaysFemale(), out=tmp_path / "run",
                 **options).to_dict()
    (row,) = record["professions"]
    assert row["status"] == "not_reachable"
    assert row["destination"] == "a male nurse"
    assert row["closest_share"] == pytest.approx(1.0, abs=0.02)
    assert "does not reach" in row["search_message"]
    # it is still edited, as far as allowed: at the strongest λ the side-effect limit permits
    assert row["lambda_relative"] == pytest.approx(row["lambda_relative_min"], rel=1e-6)
    assert (tmp_path / "run" / "edit.safetensors").exists()


def test_bad_options_are_user_errors(tmp_path):
    from debias.errors import InputError

    with pytest.raises(InputError, match="--budget"):
        fix("mini", budget=4, out=tmp_path / "x")
    with pytest.raises(InputError, match="--target"):
        fix("mini", target=1.0, out=tmp_path / "x")
    with pytest.raises(InputError, match="--tuning-templates: template 'a photo' must contain"):
        fix("mini", tuning_templates=["a snapshot of {}", "a photo"], out=tmp_path / "x")
    with pytest.raises(InputError, match="'a painting of {}' is one of the held-out test templates"):
        fix("mini", tuning_templates=["a snapshot of {}", "a painting of {}"], out=tmp_path / "x")
    assert not (tmp_path / "x" / "fix.json").exists()


def test_search_and_joint_rounds_pool_every_tuning_template(tmp_path):
    pipe, _ = load_tiny()
    templates = ["A photo of {}", "{} smiling"]
    record = fix(pipe, professions=_list(tmp_path), classifier=HalfClassifier(), out=tmp_path / "run",
                 tuning_templates=templates, **QUICK).to_dict()
    assert record["tuning_templates"] == templates
    edited = [p for p in record["professions"] if p["destination"]]
    assert edited, "the stand-in classifier should leave at least one profession off target"
    for row in edited:
        search = json.loads((tmp_path / "run" / "search" / f"{row['profession']}.json").read_text())
        assert search["inputs"]["prompts"] == [f"A photo of {row['phrase']}", f"{row['phrase']} smiling"]
    index = [json.loads(line) for line in (tmp_path / "run" / "index" / "rank0.jsonl").read_text().splitlines()]
    used = {r["prompt"] for r in index if r["type"] == "image"}
    assert {f"A photo of {p['phrase']}" for p in record["professions"]} <= used
    assert {f"{p['phrase']} smiling" for p in record["professions"]} <= used
    tuning = json.loads((tmp_path / "run" / "tuning" / "audit.json").read_text())
    assert tuning["templates"] == templates


# ------------------------------------------------------------------------------------------- mini model
def _mini_available() -> bool:
    from debias.mini import PIPELINE_DIR

    return (Path(PIPELINE_DIR) / "model_index.json").is_file()


@pytest.mark.slow
def test_mini_fix_moves_every_profession_to_the_target_on_held_out_prompts(tmp_path):
    """Nurse (0.70 on held-out prompts), pilot (0.17) and engineer (0.06) are fixed, baker (0.44) ends in the band;
    judged on 192 held-out images each (±0.07) with the same seeds before and after; unrelated prompts barely move."""
    assert _mini_available(), "the mini model's weights are part of the package"
    professions = _list(tmp_path, "a nurse\na baker\na pilot\nan engineer\n")
    out = tmp_path / "run"
    options = dict(target=0.5, tolerance=0.1, budget=192, test_images=192, check_images=64, joint_rounds=1,
                   side_seeds=8, progress=False, log=None)
    record = fix("mini", professions=professions, out=out, **options).to_dict()
    rows = {r["profession"]: r for r in record["professions"]}
    baker = rows["baker"]  # near parity: left alone when inside the band, unless the others' edits push it out
    if abs(baker["share_before"] - 0.5) > 0.1:
        assert baker["status"] == "fixed" and baker["joined_round"] is None, baker
    elif baker["destination"] is None:
        assert baker["status"] == "already_within_tolerance", baker
    else:  # joined the edit after a joint round showed it pushed out of the band
        assert baker["joined_round"] == 0 and baker["status"] == "fixed" and baker["images_used_in_search"] == 0
    assert abs(baker["share_after"] - 0.5) <= 0.1
    for name in ("nurse", "engineer", "pilot"):
        r = rows[name]
        assert r["destination"] == destination_phrase(r["phrase"], "male" if r["share_before"] > 0.5 else "female")
        assert abs(r["share_before"] - 0.5) > 0.15, r  # clearly biased before
        assert abs(r["share_after"] - 0.5) <= 0.1 and r["status"] == "fixed", r
        assert r["after_interval_overlaps_band"]
    assert record["mean_delta_after"] < record["mean_delta_before"] / 3
    side = record["side_effects"]
    assert side["mean_abs_pixel_change"] <= 0.02
    assert abs(side["clip_score_after"] - side["clip_score_before"]) < 2.0  # objects still look like their prompts
    assert (out / "edit.safetensors").is_file() and (out / "after" / "audit.json").is_file()
    # the same command again: the same λs and numbers, nothing regenerated
    again = fix("mini", professions=professions, out=out, **options).to_dict()
    assert _lambdas(again) == _lambdas(record) and again["mean_delta_after"] == record["mean_delta_after"]
    assert again["images"] == record["images"]
    after = json.loads((out / "after" / "audit.json").read_text())
    assert after["images_generated"] == 0
