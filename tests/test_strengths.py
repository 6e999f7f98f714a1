"""The pooled model of class shares against an edit's reach (debias.fixing.strengths): pure math on simulated worlds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from debias.fixing.strengths import Observation, _softmax, fit_pooled


def _world(seed: int, professions: int, k: int, slope: float = 5.0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    intercepts = rng.normal(0.0, 1.0, (professions, k))
    intercepts[:, 0] = 0.0
    slopes = slope * np.exp(rng.normal(0.0, spread, professions))
    return rng, intercepts, slopes


def _observe(rng, intercepts, slopes, p: int, reach, n: int) -> Observation:
    shares = _softmax(intercepts[p] + slopes[p] * np.asarray(reach, dtype=float))
    return Observation(tuple(float(r) for r in reach), tuple(int(c) for c in rng.multinomial(n, shares)))


def test_the_pooled_fit_recovers_intercepts_and_slopes_of_a_simulated_world() -> None:
    rng, a, kappa = _world(0, professions=8, k=2)
    observations = [[_observe(rng, a, kappa, p, (0.0, r), 2000) for r in (0.0, 0.15, 0.3)] for p in range(8)]
    fit = fit_pooled(observations, k=2)
    assert fit.intercepts[:, 1] == pytest.approx(a[:, 1], abs=0.12)
    assert fit.slopes == pytest.approx(kappa, rel=0.15)
    assert fit.intercepts[:, 0].tolist() == [0.0] * 8


def test_a_profession_with_one_edited_round_borrows_the_shared_slope() -> None:
    """Eight professions pin the slope; one round of 64 images cannot pull a ninth's far from it."""
    rng, a, kappa = _world(1, professions=9, k=2, spread=0.0)
    observations = [[_observe(rng, a, kappa, p, (0.0, 0.0), 128), _observe(rng, a, kappa, p, (0.0, 0.2), 128),
                     _observe(rng, a, kappa, p, (0.0, 0.4), 128)] for p in range(8)]
    observations.append([_observe(rng, a, kappa, 8, (0.0, 0.0), 128), _observe(rng, a, kappa, 8, (0.0, 0.2), 64)])
    fit = fit_pooled(observations, k=2)
    assert fit.shared_slope == pytest.approx(5.0, rel=0.2)
    assert fit.slopes[8] == pytest.approx(fit.shared_slope, rel=0.35)


def test_reach_goals_put_the_model_on_the_target_for_every_class() -> None:
    rng, a, kappa = _world(2, professions=3, k=3)
    observations = [[_observe(rng, a, kappa, p, r, 400) for r in ((0, 0, 0), (0, 0.2, 0.1), (0, 0.1, 0.3))]
                    for p in range(3)]
    fit = fit_pooled(observations, k=3)
    target = np.array([0.5, 0.3, 0.2])
    for p in range(3):
        reference = int(np.argmax(fit.shares(p, np.zeros(3)) / target))
        goals = fit.reach_goals(p, target, reference)
        assert goals[reference] == 0.0
        assert fit.shares(p, goals) == pytest.approx(target, abs=1e-9)  # ρ_ref = 0, ρ_c = goal_c


def test_the_reference_is_the_class_every_pooled_image_puts_in_excess_not_the_tuning_audit_alone() -> None:
    """A tuning audit of 128 images that happened to read "old" most; three rounds of 170 unedited images read
    "middle-aged" most (the pilot of the mini world v2): the pooled model leaves "middle-aged" without a
    destination, so the edit can lift both other classes; every other class's goal is then >= 0."""
    target = (1 / 3, 1 / 3, 1 / 3)
    audit = Observation((0.0, 0.0, 0.0), (36, 42, 50))
    rounds = [Observation((0.0, 0.0, 0.0), counts, block=b + 1)
              for b, counts in enumerate([(59, 72, 39), (51, 68, 51), (46, 72, 52)])]
    assert int(np.argmax(np.array(audit.counts) / np.array(target))) == 2  # the audit alone: old
    fit = fit_pooled([[audit, *rounds]], k=3)
    assert fit.most_over(0, target) == 1
    goals = fit.reach_goals(0, target, fit.most_over(0, target))
    assert goals[1] == 0.0 and goals[0] > 0 and goals[2] > 0
    assert fit.most_over(0, (0.2, 0.6, 0.2)) == 2  # against another target the excess is elsewhere


def _observe_blocks(seed: int, blocks: int, n: int):
    """Four professions measured on ``blocks`` rounds, each round's seeds leaning its own way (δ ~ N(0, 0.3))."""
    rng, a, kappa = _world(seed, professions=4, k=2)
    lean = rng.normal(0.0, 0.3, blocks)
    observations = []
    for p in range(4):
        rows = []
        for b in range(blocks):
            reach = np.array([0.0, 0.1 * b])
            shares = _softmax(a[p] + kappa[p] * reach + np.array([0.0, lean[b]]))
            rows.append(Observation(tuple(reach), tuple(int(c) for c in rng.multinomial(n, shares)), block=b))
        observations.append(rows)
    return observations, _softmax(a[0] + kappa[0] * np.array([0.0, 0.1]))


def test_intervals_cover_the_truth_and_narrow_with_more_blocks_of_seeds() -> None:
    covered, widths = [], {}
    for blocks in (2, 8):
        for seed in range(40):
            observations, truth = _observe_blocks(100 + seed, blocks, 200)
            shares, intervals = fit_pooled(observations, k=2).predict(0, (0.0, 0.1))
            covered.append(intervals[1, 0] <= truth[1] <= intervals[1, 1])
            widths.setdefault(blocks, []).append(intervals[1, 1] - intervals[1, 0])
    assert np.mean(covered) >= 0.88  # 95% nominal, 80 fits
    assert np.mean(widths[8]) < np.mean(widths[2]) / 1.5


def test_a_round_whose_seeds_lean_one_way_is_not_read_as_the_edit() -> None:
    """Every profession of a round shares its seeds: a common move is the block's lean, not a wrong slope."""
    rng, a, kappa = _world(4, professions=8, k=2, spread=0.0)
    observations = []
    for p in range(8):
        push = 0.2 if a[p, 1] > 0 else -0.2  # each profession's edit moves it its own way
        rows = [Observation((0.0, 0.0), tuple(rng.multinomial(4000, _softmax(a[p]))), block=0)]
        for b, lean in ((1, 0.6), (2, -0.6)):
            reach = np.array([0.0, -push * b / 2])
            shares = _softmax(a[p] + kappa[p] * reach + np.array([0.0, lean]))
            rows.append(Observation(tuple(reach), tuple(rng.multinomial(4000, shares)), block=b))
        observations.append(rows)
    fit = fit_pooled(observations, k=2)
    assert fit.block_effects[1:, 1] == pytest.approx([0.6, -0.6], abs=0.1)  # relative to the tuning block's
    assert fit.shared_slope == pytest.approx(5.0, rel=0.1)


def test_the_fit_is_deterministic_and_needs_a_profession() -> None:
    rng, a, kappa = _world(3, professions=2, k=2)
    observations = [[_observe(rng, a, kappa, p, (0.0, r), 50) for r in (0.0, 0.3)] for p in range(2)]
    first, second = fit_pooled(observations, 2), fit_pooled(observations, 2)
    assert np.array_equal(first.intercepts, second.intercepts) and first.slopes.tolist() == second.slopes.tolist()
    with pytest.raises(ValueError, match="at least one profession"):
        fit_pooled([], 2)
    assert math.isfinite(first.shared_slope)
