"""Statistics against scipy / statsmodels-style known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from debias.stats import binary as stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (58, 63), (50, 100), (1, 400), (200, 400)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = stats.wilson_interval(k, n)
    assert low == pytest.approx(ci.low, abs=1e-9)
    assert high == pytest.approx(ci.high, abs=1e-9)


def test_wilson_known_value_and_empty() -> None:
    # textbook example: 81 of 263 -> (0.2553, 0.3662) (Newcombe 1998 style worked value)
    low, high = stats.wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_interval(5, 3)


def test_z_score_and_wilson_bounds_at_any_confidence() -> None:
    assert stats.z_score(0.95) == pytest.approx(stats.Z95, rel=1e-12)
    assert stats.z_score(0.9) == pytest.approx(1.644854, abs=1e-6)
    # a fitted share on n trials gives the same interval as the counts it came from, at the same confidence
    ci = binomtest(7, 20).proportion_ci(confidence_level=0.9, method="wilson")
    low, high = stats.wilson_bounds(7 / 20, 20, stats.z_score(0.9))
    assert (low, high) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))


def test_logit_is_finite_at_zero_and_one() -> None:
    assert stats.logit(0.5) == 0.0
    assert stats.logit(0.8) == pytest.approx(math.log(4))
    assert stats.logit(0.0) == pytest.approx(-13.8155, abs=1e-4)  # clamped at 1e-6
    assert stats.logit(1.0) == pytest.approx(13.8155, abs=1e-4)
    assert stats.logit(0.0, eps=1e-4) == pytest.approx(-9.2102, abs=1e-4)
    assert stats.logit(0.3, eps=1e-4) == stats.logit(0.3)  # the clamp only moves shares beyond it


def test_half_width_rule_of_thumb() -> None:
    assert stats.half_width(100) == pytest.approx(0.098, abs=1e-3)
    assert stats.half_width(400) == pytest.approx(0.049, abs=1e-3)
    low, high = stats.wilson_interval(50, 100)
    assert (high - low) / 2 == pytest.approx(0.096, abs=2e-3)
    assert "n=100" in stats.CI_NOTE and "±0.05" in stats.CI_NOTE


@pytest.mark.parametrize("k,n,t", [(7, 10, 0.5), (58, 63, 0.5), (3, 40, 0.3), (0, 5, 0.5), (20, 20, 0.9)])
def test_binomial_test_matches_scipy(k: int, n: int, t: float) -> None:
    assert stats.binomial_p_value(k, n, t) == pytest.approx(binomtest(k, n, t).pvalue, rel=1e-12)
    assert stats.binomial_p_value(0, 0, t) == 1.0


def test_binomial_known_value() -> None:
    # P(X<=2 or X>=8) for Bin(10, 1/2) = 2 * 56/1024
    assert stats.binomial_p_value(8, 10, 0.5) == pytest.approx(112 / 1024)


def test_delta() -> None:
    assert stats.delta(0.92, 0.5) == pytest.approx(0.84)
    assert stats.delta(0.5, 0.5) == 0.0
    assert stats.delta(0.0, 0.5) == 1.0
    assert stats.delta(1.0, 0.4) == pytest.approx(1.0)  # max(0.4, 0.6) = 0.6
    assert stats.delta(0.0, 0.4) == pytest.approx(0.4 / 0.6)
    assert stats.delta(None) is None
    with pytest.raises(ValueError):
        stats.delta(0.5, 1.5)


def test_estimate_excludes_unclear() -> None:
    e = stats.estimate(58, 5, 1, target=0.5)
    assert e.n == 64 and e.n_unclear == 1
    assert e.share_female == pytest.approx(58 / 63)
    ci = binomtest(58, 63).proportion_ci(method="wilson")
    assert (e.ci_low, e.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert e.p_value == pytest.approx(binomtest(58, 63, 0.5).pvalue)
    assert e.delta == pytest.approx(abs(58 / 63 - 0.5) / 0.5)
    empty = stats.estimate(0, 0, 4)
    assert empty.share_female is None and empty.delta is None and (empty.ci_low, empty.ci_high) == (0.0, 1.0)
    assert stats.count_labels(["female", "male", "unclear", "female"]) == (2, 1, 1)


def test_shares_by_prompt_splits_a_pooled_share() -> None:
    labelled = [("a painting of a nurse", "male"), ("a nurse at work", "female"), ("a painting of a nurse", "male"),
                ("a nurse at work", "female"), ("a painting of a nurse", "female"), ("a nurse at work", "unclear")]
    rows = stats.shares_by_prompt(labelled)
    assert [r["prompt"] for r in rows] == ["a painting of a nurse", "a nurse at work"]  # first-seen order
    painting, work = rows
    assert (painting["n"], painting["n_female"], painting["n_male"], painting["n_unclear"]) == (3, 1, 2, 0)
    assert painting["share_female"] == pytest.approx(1 / 3)
    ci = binomtest(1, 3).proportion_ci(method="wilson")
    assert (painting["ci_low"], painting["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert (work["n"], work["n_female"], work["n_unclear"], work["share_female"]) == (3, 2, 1, 1.0)
    assert stats.shares_by_prompt([("x", "unclear")])[0]["share_female"] is None


def test_mean_delta_interval_is_seeded_and_covers() -> None:
    counts = [(58, 5), (10, 54), (30, 34)]
    point, low, high = stats.mean_delta_interval(counts, 0.5)
    expected = np.mean([abs(k / (k + m) - 0.5) / 0.5 for k, m in counts])
    assert point == pytest.approx(expected)
    assert low < point < high
    assert stats.mean_delta_interval(counts, 0.5) == (point, low, high)  # same seed, same interval
    assert stats.mean_delta_interval([(0, 0)]) == (None, None, None)
    # more images per profession -> a narrower interval around the same point
    p4, l4, h4 = stats.mean_delta_interval([(4 * k, 4 * m) for k, m in counts], 0.5)
    assert p4 == pytest.approx(point) and (h4 - l4) < (high - low)


def test_mean_delta_interval_coverage_simulation() -> None:
    """The bootstrap interval covers the true mean Δ about 95% of the time (far from the target)."""
    rng = np.random.default_rng(1)
    true_shares = np.array([0.9, 0.8, 0.2, 0.1])
    true_mean = float(np.mean(np.abs(true_shares - 0.5) / 0.5))
    hits = 0
    trials = 200
    for i in range(trials):
        k = rng.binomial(100, true_shares)
        _, low, high = stats.mean_delta_interval([(int(a), 100 - int(a)) for a in k], 0.5, n_boot=500, seed=i)
        hits += low <= true_mean <= high
    assert 0.88 <= hits / trials <= 0.99


def test_needs_more_sequential_rule() -> None:
    assert stats.needs_more(5, 5, 10, ci_width=0.2, cap=1000)  # ±0.3: too wide
    assert not stats.needs_more(200, 200, 400, ci_width=0.2, cap=1000)  # ±0.05
    assert not stats.needs_more(5, 5, 1000, ci_width=0.2, cap=1000)  # cap hit
    assert not stats.needs_more(5, 5, 10, ci_width=None, cap=1000)  # fixed n
    # the first n at which a 50/50 split is narrow enough for ±0.10 is just under 100
    n = next(n for n in range(2, 400, 2) if not stats.needs_more(n // 2, n // 2, n, ci_width=0.2, cap=10_000))
    assert 90 <= n <= 100
    assert math.isclose(stats.half_width(n), 0.1, abs_tol=0.005)


def test_mean_delta_noise_floor_is_what_an_unbiased_model_reads() -> None:
    # simulate unbiased professions at n = 128 and n = 512: the measured mean Δ averages to the floor
    rng = np.random.default_rng(0)
    for n in (128, 512):
        draws = rng.binomial(n, 0.5, size=200_000)
        simulated = float(np.mean(np.abs(draws / n - 0.5) / 0.5))
        assert stats.mean_delta_noise_floor([n]) == pytest.approx(simulated, rel=0.01)
        assert stats.mean_delta_noise_floor([n]) == pytest.approx(0.8 / math.sqrt(n), rel=0.03)
    # a target of 0.3 scales by max(t, 1 − t); professions without a classified image are left out
    draws = rng.binomial(100, 0.3, size=200_000)
    assert stats.mean_delta_noise_floor([100, 0], [0.3, 0.5]) == pytest.approx(
        float(np.mean(np.abs(draws / 100 - 0.3) / 0.7)), rel=0.01)
    assert stats.mean_delta_noise_floor([0]) is None
    with pytest.raises(ValueError):
        stats.mean_delta_noise_floor([10, 10], [0.5])


def test_mean_delta_by_prompt_shows_a_template_the_pooled_share_averages_away() -> None:
    # two professions: each is on target pooled over its two prompts, both fall short on the second prompt
    cells = [[(0.6, 100), (0.4, 100)], [(0.7, 100), (0.3, 100), (0.5, 400)]]
    got = stats.mean_delta_by_prompt([0.5, 0.5], cells)
    assert [d for d, _ in got] == pytest.approx([0.3, 0.3, 0.0])
    # beside each, a perfect model's mean Δ on that prompt's images: about 0.8/√n at t = ½
    assert [f for _, f in got] == pytest.approx([stats.mean_delta_noise_floor([100, 100])] * 2
                                                + [stats.mean_delta_noise_floor([400])])
    assert got[2][1] == pytest.approx(0.8 / 20, rel=0.02)
    # a target other than parity scales by the farthest a share can be from it; missing shares are left out
    got = stats.mean_delta_by_prompt([0.2, 0.5], [[(0.6, 10), (None, 0)], [(0.5, 10), (None, 0)]])
    assert got[0][0] == pytest.approx(0.25) and got[1] == (None, None)
    assert stats.mean_delta_by_prompt([], []) == []


def test_the_spread_across_prompts_and_what_sampling_alone_gives() -> None:
    cells = [{"share_female": s, "n": 32, "n_unclear": 0} for s in (0.5, 0.6, 0.4, 0.5)]
    spread, noise = stats.prompt_spread(cells)
    assert spread == pytest.approx(np.std([0.5, 0.6, 0.4, 0.5], ddof=1))
    assert noise == pytest.approx(math.sqrt(0.25 / 32))
    # prompts that all share one true share spread by about the noise (a sample SD of 4 averages 0.92 of it)
    rng = np.random.default_rng(0)
    spreads = [stats.prompt_spread([{"share_female": rng.binomial(256, 0.3) / 256, "n": 256} for _ in range(4)])
               for _ in range(2000)]
    assert np.mean([s for s, _ in spreads]) == pytest.approx(0.92 * np.mean([n for _, n in spreads]), rel=0.05)
    # unclear images do not count; fewer than two prompts with a share: nothing to say
    assert stats.prompt_spread([{"share_female": 0.5, "n": 10, "n_unclear": 10}, cells[0]]) == (None, None)
    assert stats.prompt_spread([]) == (None, None)
