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
from debias.results.records import FixResult, ProfessionAudit
from debias.fixing import TUNING_SEED_OFFSET, anchor_prompts_for, destination_phrase, edit_contexts
from debias.verbs.fix import fix
from debias.core.attributes import GENDER
from debias.fixing.engine import outside_band, reach_of, step_towards
from debias.fixing.kclass import ClassEdit, class_matrix, joint_class_matrix
from debias.fixing.plan import Anchors
from debias.stats import binary

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


def test_edit_contexts_add_the_tuning_templates_the_augmentations_lack():
    augmentations = ("A photo of {}", "An image of {}")
    tuning = ("a photo of {}", "A sketch of {}", "{} smiling", "a sketch of {}")
    assert edit_contexts(augmentations, tuning) == ("A photo of {}", "An image of {}", "A sketch of {}", "{} smiling")
    assert edit_contexts(augmentations, ()) == augmentations


def test_a_tuning_style_among_the_edit_contexts_is_reached_further():
    """Fitted on the photo framings alone, an edit at reach 0.4 on "a photo of a doctor" reaches "a painting of a
    doctor" 0.32 of the way; with the painting among its contexts, 0.37."""
    import math

    from debias.core.setup import load_model
    from debias.editing import lambda_scale
    from debias.fixing.kclass import combined_matrix, reach, strongest_within
    from debias.fixing.plan import Anchors, probe_rows, profession_edit_rows
    from debias.mini import world

    pipe = load_model("mini").pipe
    photos, painting = list(world.AUGMENTATIONS), "a painting of {}"
    bare = profession_edit_rows(pipe, "a doctor", "a female doctor", [])[0].shape[0]

    def rows(template: str):
        C, S = profession_edit_rows(pipe, "a doctor", "a female doctor", [template])
        return C[bare:], S[bare:]

    def painting_reach(contexts: tuple[str, ...]) -> float:
        anchors = Anchors(probe_rows(pipe, anchor_prompts_for(contexts)), 100.0)
        C, S = profession_edit_rows(pipe, "a doctor", "a female doctor", contexts)

        def matrix(x: float):
            return combined_matrix([(C, S, math.exp(x))], lambda_scale(C), anchors)

        M = matrix(math.log(strongest_within(lambda x: reach(matrix(x), [rows(photos[0])])[0], -12.0, 6.0, 0.4)))
        return float(reach(M, [rows(painting)])[0])

    alone, with_style = painting_reach(tuple(photos)), painting_reach(edit_contexts(photos, [*photos, painting]))
    assert 0.25 < alone < 0.34  # measured 0.319
    assert with_style > 0.36 and with_style - alone > 0.04  # measured 0.371


def _edit(seed: int, strength: float, reference: int = 0) -> ClassEdit:
    """A gender edit on random rows: class 1 ("male") at ``strength``, class 0 the reference."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(12, 16, generator=g, dtype=torch.float64)
    rows = [(C, C + 0.5 * torch.randn(12, 16, generator=g, dtype=torch.float64)) for _ in range(2)]
    e = ClassEdit(GENDER, None, (0.5, 0.5), (90, 10), rows=rows, scale=16.0, caps=(1e4, 1e4), reference=reference)
    e.strengths[1 - reference] = strength
    return e


def test_anchors_keep_shared_context_fixed_while_the_edit_still_moves_its_rows():
    p = _edit(0, 10.0)
    shared = torch.randn(6, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    anchors = Anchors(shared, 100.0)
    plain, anchored = class_matrix(p, p.strengths, None), class_matrix(p, p.strengths, anchors)

    def moved(M, rows):
        return float((rows @ M.T - rows).norm(dim=1).mean())

    assert moved(anchored, shared) < moved(plain, shared) / 10
    C, C_star = p.rows[1]
    assert float((C @ anchored.T - C_star).norm()) < 0.9 * float((C - C_star).norm())  # still edits
    # two professions: anchors weigh against the median edit strength, the same way for both
    q = _edit(2, 10.0)
    joint = joint_class_matrix([p, q], None, 1.0, anchors, 0.3)
    assert moved(joint, shared) < moved(joint_class_matrix([p, q], None, 1.0, None, 0.3), shared) / 10


def test_joint_edit_gives_each_profession_what_its_own_edit_gives_it():
    """A strong edit must not drag a weakly edited profession whose rows overlap with it (TIME's plain sum does)."""
    from debias.editing import joint_edit_matrix

    strong, weak = _edit(0, 20.0), _edit(1, 0.05)
    mix = torch.Generator().manual_seed(3)
    (Cs, Ss), (Cw, Sw) = strong.rows[1], weak.rows[1]
    Cw2 = 0.6 * Cw + 0.4 * Cs + 0.1 * torch.randn(Cw.shape, generator=mix, dtype=torch.float64)
    weak.rows = [(Cw2, Sw + 0.4 * (Cs - Cw))] * 2

    def drag(M, p):  # how far M moves p's rows from where p's own edit puts them, relative to that edit's move
        C = p.rows[1][0]
        own = C @ class_matrix(p, p.strengths, None).T
        return float((C @ M.T - own).norm() / (own - C).norm())

    plain = joint_edit_matrix([(p.rows[1][0], p.rows[1][1], p.scale / p.strengths[1]) for p in (strong, weak)])
    pinned = joint_class_matrix([strong, weak], None, 1.0, None, 0.3)
    assert drag(pinned, weak) < drag(plain, weak) / 2.5  # rows this entangled conflict in the plain sum
    assert drag(pinned, strong) < 0.5  # the strong edit gives a little of itself up where the two overlap
    # alone, a pin is a second ridge: it gives most of its own edit, and a stronger pin gives more of it
    alone = drag(joint_class_matrix([weak], None, 1.0, None, 0.3), weak)
    assert 0.05 < alone < 0.3
    assert drag(joint_class_matrix([weak], None, 1.0, None, 0.03), weak) < alone / 4


def test_the_solver_finds_strengths_whose_joint_edit_gives_each_profession_its_reach():
    """Matrices only: the reach each profession asks for is met under the joint edit, with the others in it."""
    edits = [_edit(0, 0.0), _edit(1, 0.0), _edit(2, 0.0, reference=1)]
    goals = [np.array([0.0, 0.3]), np.array([0.0, 0.1]), np.array([0.2, 0.0])]
    for _ in range(30):
        M = joint_class_matrix(edits, None, 1.0, None, 0.3)
        moved = [step_towards(e, g, reach_of(M, e), None) for e, g in zip(edits, goals)]
        if not any(moved):
            break
    M = joint_class_matrix(edits, None, 1.0, None, 0.3)
    for e, goal in zip(edits, goals):
        x = reach_of(M, e)
        c = 1 - e.reference
        assert x[c] - x[e.reference] == pytest.approx(goal[c], abs=2e-3)
        assert e.strengths[e.reference] == 0.0  # the over-represented class never gets a destination
    # a stronger push needs a stronger edit
    assert edits[0].strengths[1] > edits[1].strengths[1] > 0


def test_no_push_needed_means_no_destination():
    e = _edit(0, 0.0)
    assert not step_towards(e, np.array([0.0, -0.2]), np.zeros(2), None)
    assert e.strengths == [0.0, 0.0] and not e.edited


def test_a_profession_joins_only_on_evidence_outside_the_band():
    target = (0.5, 0.5)
    assert outside_band(np.array([0.62, 0.38]), np.array([[0.55, 0.69], [0.31, 0.45]]), target, 0.05)
    # outside the band, but the interval still holds the target: noise, not a push
    assert not outside_band(np.array([0.58, 0.42]), np.array([[0.45, 0.7], [0.3, 0.55]]), target, 0.05)
    assert not outside_band(np.array([0.52, 0.48]), np.array([[0.51, 0.53], [0.47, 0.49]]), target, 0.05)


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
        assert p["images_used_in_search"] + record_check(first) <= QUICK["budget"]  # the tuning side, all rounds
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


def record_check(record: dict) -> int:
    return record["check_images"]


def _assert_images_add_up(record: dict, out) -> None:
    """fix.json counts every image in the run folder once, by the stage that made it."""
    images, stages = record["images"], record["images"]["by_stage"]
    pngs = len(list((out / "images").glob("*.png")))
    assert images["generated"] == sum(v["generated"] for v in stages.values()) == images["in_cache"] == pngs
    n = len(record["professions"])
    assert stages["before"]["generated"] == stages["before"]["used"] == n * record["test_images"]
    assert stages["tuning"]["generated"] == n * record["check_images"]
    assert stages["joint"]["used"] == n * record["joint_rounds"] * ((record["budget"] - record["check_images"])
                                                                     // record["joint_rounds"])
    edited = [p for p in record["professions"] if p["search"]]
    assert all(p["images_used_in_search"] == stages["joint"]["used"] // n for p in edited)
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


def test_a_rerun_classifies_nothing(tmp_path):
    """Every round's strengths follow from the cached images, so a rerun regenerates and reclassifies nothing."""
    pipe, _ = load_tiny()
    professions = _list(tmp_path)
    first = fix(pipe, professions=professions, classifier=HalfClassifier(), out=tmp_path / "run", **QUICK).to_dict()
    calls = []
    clf = HalfClassifier()
    original = clf.classify
    clf.classify = lambda images: (calls.append(len(images)), original(images))[1]
    again = fix(pipe, professions=professions, classifier=clf, out=tmp_path / "run", **QUICK).to_dict()
    assert calls == []
    assert _lambdas(again) == _lambdas(first)


def test_not_reachable_is_reported_with_the_closest_share(tmp_path):
    pipe, _ = load_tiny()
    options = {**QUICK, "budget": 72, "joint_rounds": 4}  # the strengths climb to the strongest allowed edit
    record = fix(pipe, professions=_list(tmp_path, "a nurse\n"), classifier=AlwaysFemale(), out=tmp_path / "run",
                 **options).to_dict()
    (row,) = record["professions"]
    assert row["status"] == "not_reachable"
    assert row["destination"] == "a male nurse"
    assert row["closest_share"] == pytest.approx(1.0, abs=0.02)
    assert "not reachable" in row["search_message"]
    assert [j["share_female"] for j in row["joint"]] == [1.0] * 4  # every round measured, none moved it
    # it is still edited, as far as allowed: at the strongest λ the side-effect limit permits
    assert row["lambda_relative"] == pytest.approx(row["lambda_relative_min"], rel=1e-6)
    assert (tmp_path / "run" / "edit.safetensors").exists()


def test_bad_options_are_user_errors(tmp_path):
    from debias.core.errors import InputError

    with pytest.raises(InputError, match="--budget"):
        fix("mini", budget=4, out=tmp_path / "x")
    with pytest.raises(InputError, match="the default --budget of 320 .* give --budget \\(at least 560\\)"):
        fix("mini", check_images=512, out=tmp_path / "x")  # the precise run names its budget
    with pytest.raises(InputError, match="--target"):
        fix("mini", target=1.0, out=tmp_path / "x")
    with pytest.raises(InputError, match="--tuning-templates: template 'a photo' must contain"):
        fix("mini", tuning_templates=["a snapshot of {}", "a photo"], out=tmp_path / "x")
    with pytest.raises(InputError, match="'a painting of {}' is one of the held-out test templates"):
        fix("mini", tuning_templates=["a snapshot of {}", "a painting of {}"], out=tmp_path / "x")
    assert not (tmp_path / "x" / "fix.json").exists()


def test_the_rounds_pool_every_tuning_template(tmp_path):
    pipe, _ = load_tiny()
    templates = ["A photo of {}", "{} smiling"]
    record = fix(pipe, professions=_list(tmp_path), classifier=HalfClassifier(), out=tmp_path / "run",
                 tuning_templates=templates, **QUICK).to_dict()
    assert record["tuning_templates"] == templates
    # the edit's rows and anchors are encoded in the tuning templates too
    assert record["augmentations"] == ["A photo of {}", "An image of {}", "A picture of {}", "{} smiling"]
    assert "smiling" in record["anchors"]["prompts"]
    # gender's mean Δ per held-out template, each side recomputed from its audit's per-prompt shares
    for side in ("before", "after"):
        audit = json.loads((tmp_path / "run" / side / "audit.json").read_text())
        assert list(record["mean_delta_by_template"]) == audit["templates"]
        assert any(d[side] is not None for d in record["mean_delta_by_template"].values())
        for k, template in enumerate(audit["templates"]):
            deltas = [abs(p["by_prompt"][k]["share_female"] - p["target"]) / max(p["target"], 1 - p["target"])
                      for p in audit["professions"] if p["by_prompt"][k]["share_female"] is not None]
            expected = sum(deltas) / len(deltas) if deltas else None
            assert record["mean_delta_by_template"][template][side] == pytest.approx(expected)
            if side == "after":  # a perfect model on the classified images of this template
                classified = [p["by_prompt"][k]["n"] - p["by_prompt"][k]["n_unclear"] for p in audit["professions"]]
                floor = binary.mean_delta_noise_floor(classified, [p["target"] for p in audit["professions"]])
                assert record["mean_delta_by_template"][template]["noise_floor_after"] == pytest.approx(floor)
    # the printed summary gives the spread and each template's mean Δ beside what sampling alone would read
    import io

    printed = io.StringIO()
    FixResult.from_json(tmp_path / "run").print_summary(printed)
    text = " ".join(printed.getvalue().split())
    assert "spread across held-out prompts" in text and "sampling alone gives" in text
    first = next(iter(record["mean_delta_by_template"].items()))
    assert f"mean Δ per held-out template, before → after: {first[0]} " in text
    assert "a perfect model would read about" in text
    edited = [p for p in record["professions"] if p["destination"]]
    assert edited, "the stand-in classifier should leave at least one profession off target"
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
    else:  # joined the edit after a round showed it pushed out of the band
        assert baker["joined_round"] == 0 and baker["status"] == "fixed" and baker["lambda_relative"], baker
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
