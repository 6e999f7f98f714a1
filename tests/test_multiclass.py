"""k-class shares: simultaneous intervals (against statsmodels' values and by simulated joint coverage),
the goodness-of-fit test, the k-class Δ (equal to the binary Δ at k = 2) and intersection tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from debias.stats import multiclass as mc
from debias.stats import binary as stats

# statsmodels 0.15 multinomial_proportions_confint(counts, 0.05, method=...), rounded to 1e-10
REFERENCE = {
    ((10, 20, 30), "goodman"): [[0.0819123772, 0.3095480412], [0.2079120147, 0.4878181945],
                                [0.3523597044, 0.6476402956]],
    ((10, 20, 30), "sison-glaz"): [[0.05, 0.3083060383], [0.2166666667, 0.474972705], [0.3833333333, 0.6416393717]],
    ((0, 5, 40), "goodman"): [[0.0, 0.1129708373], [0.0406425924, 0.2694458366], [0.7305541634, 0.9593574076]],
    ((0, 5, 40), "sison-glaz"): [[0.0, 0.0935868419], [0.0444444444, 0.204697953], [0.8222222222, 0.9824757308]],
    ((30, 10, 5, 5), "goodman"): [[0.4253642943, 0.7524497334], [0.0959608354, 0.3705970815],
                                  [0.0350441942, 0.253699695], [0.0350441942, 0.253699695]],
    ((30, 10, 5, 5), "sison-glaz"): [[0.48, 0.7407840228], [0.08, 0.3407840228], [0.0, 0.2407840228],
                                     [0.0, 0.2407840228]],
    ((200, 150, 50), "sison-glaz"): [[0.45, 0.5533407083], [0.325, 0.4283407083], [0.075, 0.1783407083]],
    ((2, 3, 4, 1), "sison-glaz"): [[0.0, 0.5794961962], [0.1, 0.6794961962], [0.2, 0.7794961962],
                                   [0.0, 0.4794961962]],
    ((56, 72, 73, 59, 56, 62, 87, 58), "sison-glaz"): [
        [0.068833652, 0.1463969721], [0.0994263862, 0.1769897063], [0.1013384321, 0.1789017522],
        [0.0745697897, 0.1521331097], [0.068833652, 0.1463969721], [0.0803059273, 0.1578692474],
        [0.1281070746, 0.2056703946], [0.0726577438, 0.1502210638]],
}


@pytest.mark.parametrize("counts,method", list(REFERENCE))
def test_intervals_match_statsmodels(counts, method) -> None:
    ci = mc.simultaneous_intervals(counts, 0.95, method)
    assert ci == pytest.approx(np.array(REFERENCE[(counts, method)]), abs=2e-10)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (58, 63), (50, 100), (1, 400)])
def test_two_classes_give_the_wilson_interval(k: int, n: int) -> None:
    # at k = 2 both rows state one event, so Goodman does not split α: the rows are Wilson intervals of p and 1 − p
    ci = mc.simultaneous_intervals([k, n - k])
    low, high = stats.wilson_interval(k, n)
    assert ci[0] == pytest.approx([low, high], abs=1e-12)
    assert ci[1] == pytest.approx([1 - high, 1 - low], abs=1e-12)


def test_intervals_edge_cases() -> None:
    assert mc.simultaneous_intervals([0, 0, 0]).tolist() == [[0.0, 1.0]] * 3
    ci = mc.simultaneous_intervals([7, 0, 0], method="sison-glaz")
    assert ci[0, 1] == 1.0 and ci[1, 0] == 0.0 and np.all(ci[:, 0] <= ci[:, 1])
    with pytest.raises(ValueError, match="unknown interval method"):
        mc.simultaneous_intervals([1, 2, 3], method="wald")
    with pytest.raises(ValueError, match="non-negative integers"):
        mc.simultaneous_intervals([1, -2, 3])


def _joint_coverage(p: np.ndarray, n: int, draws: int, method: str | None, seed: int) -> float:
    """Share of simulated draws whose k intervals all hold the true shares (method None: per-class Wilson)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for counts in rng.multinomial(n, p, size=draws):
        if method is None:
            ci = np.array([stats.wilson_interval(int(c), n) for c in counts])
        else:
            ci = mc.simultaneous_intervals(counts, 0.95, method)
        hits += bool(np.all((ci[:, 0] <= p) & (p <= ci[:, 1])))
    return hits / draws


COVERAGE_CASES = [(1 / 3, 1 / 3, 1 / 3), (0.6, 0.3, 0.1), (0.25, 0.25, 0.25, 0.25), (0.4, 0.3, 0.2, 0.1)]


@pytest.mark.parametrize("p", COVERAGE_CASES)
def test_simultaneous_intervals_keep_joint_coverage(p) -> None:
    p = np.array(p)
    draws = 600
    goodman = _joint_coverage(p, 100, draws, "goodman", seed=1)
    wilson = _joint_coverage(p, 100, draws, None, seed=1)  # the same draws
    # 3 standard errors of a 95% coverage estimated from 600 draws: 0.027
    margin = 3 * math.sqrt(0.95 * 0.05 / draws)
    assert goodman >= 0.95 - margin, f"joint coverage {goodman:.3f} for p={p.tolist()}"
    # k separate 95% intervals cover jointly far less (about 0.80-0.88 here)
    assert wilson <= 0.95 - margin
    assert goodman - wilson >= 0.04


def test_sison_glaz_undercovers_at_few_classes() -> None:
    # why Goodman is the default: Sison–Glaz's Edgeworth expansion is in the number of classes; at k = 3 its
    # joint coverage is about 0.90 (measured 0.894 on 2,000 draws), well below 95%
    p = np.array([0.6, 0.3, 0.1])
    coverage = _joint_coverage(p, 100, 600, "sison-glaz", seed=2)
    assert coverage <= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 600)


@pytest.mark.parametrize("share,target", [(0.92, 0.5), (0.1, 0.5), (0.5, 0.5), (0.3, 0.4), (0.95, 0.2), (0.0, 1.0)])
def test_delta_equals_binary_delta_at_two_classes(share: float, target: float) -> None:
    assert mc.delta([share, 1 - share], [target, 1 - target]) == pytest.approx(stats.delta(share, target), abs=1e-12)


def test_delta_values() -> None:
    third = [1 / 3] * 3
    assert mc.delta(third, third) == 0.0
    assert mc.delta([1.0, 0.0, 0.0], third) == pytest.approx(1.0)  # every image in a smallest-target class
    assert mc.delta([0.5, 0.3, 0.2], third) == pytest.approx((0.5 - 1 / 3) / (2 / 3))
    assert mc.delta([0.1, 0.1, 0.8], [0.5, 0.3, 0.2]) == pytest.approx(0.6 / 0.8)
    assert mc.delta(None, third) is None
    with pytest.raises(ValueError, match="sum to 1"):
        mc.delta([0.5, 0.5, 0.0], [0.5, 0.3, 0.3])


@pytest.mark.parametrize("k,n,t", [(7, 10, 0.5), (58, 63, 0.5), (3, 40, 0.3), (0, 5, 0.5), (20, 20, 0.9)])
def test_exact_test_equals_binomial_test_at_two_classes(k: int, n: int, t: float) -> None:
    result = mc.goodness_of_fit([k, n - k], [t, 1 - t])
    assert result.method == "exact"
    assert result.p_value == pytest.approx(binomtest(k, n, t).pvalue, rel=1e-9)


def test_goodness_of_fit_methods() -> None:
    # exact: brute force over every outcome of 6 images in 3 classes
    exact = mc.goodness_of_fit([4, 1, 1], [0.5, 0.3, 0.2])
    assert exact.method == "exact"
    from itertools import product
    from scipy.stats import multinomial

    dist = multinomial(6, [0.5, 0.3, 0.2])
    seen = dist.pmf([4, 1, 1])
    brute = sum(dist.pmf([a, b, 6 - a - b]) for a, b in product(range(7), range(7))
                if a + b <= 6 and dist.pmf([a, b, 6 - a - b]) <= seen * (1 + 1e-7))
    assert exact.p_value == pytest.approx(brute, rel=1e-9)
    # too many outcomes to enumerate: Pearson's χ² when every class expects ≥ 5 images
    chi2 = mc.goodness_of_fit([300, 300, 200, 200], [0.25] * 4)
    assert chi2.method == "chi2" and chi2.statistic == pytest.approx(40.0) and chi2.p_value < 1e-7
    # ... and a seeded Monte Carlo p-value when some class expects fewer
    rare = mc.goodness_of_fit([2000, 5, 5], [0.998, 0.001, 0.001])
    assert rare.method == "monte_carlo" and 0.0 < rare.p_value < 0.05
    assert mc.goodness_of_fit([2000, 5, 5], [0.998, 0.001, 0.001]) == rare
    # an image in a class the target rules out is impossible under the target
    assert mc.goodness_of_fit([5, 1], [1.0, 0.0]).p_value == 0.0
    assert mc.goodness_of_fit([0, 0, 0], [0.5, 0.3, 0.2]).p_value == 1.0


def test_estimate_and_to_dict() -> None:
    est = mc.estimate([10, 20, 30], [1 / 3] * 3, ["light", "medium", "dark"], n_unclear=4)
    d = est.to_dict()
    assert d["n"] == 64 and d["counts"] == (10, 20, 30) and d["shares"] == pytest.approx((1 / 6, 1 / 3, 1 / 2))
    assert d["delta"] == pytest.approx(0.25) and d["interval_method"] == "goodman" and d["test"] == "exact"
    assert d["ci_low"] == pytest.approx(tuple(r[0] for r in REFERENCE[((10, 20, 30), "goodman")]), abs=1e-9)
    assert 0.0 < d["p_value"] < 0.01
    unclear = mc.estimate([0, 0, 0], [1 / 3] * 3, n_unclear=5)
    assert unclear.shares is None and unclear.delta is None and unclear.ci_high == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="class names"):
        mc.estimate([1, 2], [0.5, 0.5], ["a", "b", "c"])


def test_mean_delta_and_interval() -> None:
    rows = [([10, 20, 30], [1 / 3] * 3), ([50, 0], [0.5, 0.5]), ([0, 0], [0.5, 0.5])]
    assert mc.mean_delta(rows) == pytest.approx((0.25 + 1.0) / 2)
    point, low, high = mc.mean_delta_interval(rows)
    assert point == pytest.approx(0.625) and low <= point <= high and high - low < 0.3
    assert mc.mean_delta_interval(rows) == (point, low, high)  # seeded
    assert mc.mean_delta_interval([([0, 0], [0.5, 0.5])]) == (None, None, None)


def test_intersection_table_flags_thin_cells() -> None:
    gender = ["female"] * 40 + ["male"] * 56 + ["unclear"] * 4
    skin = (["light"] * 30 + ["medium"] * 10) + (["light"] * 40 + ["medium"] * 15 + ["dark"]) + ["dark"] * 4
    counts, unclear = mc.joint_counts(gender, skin, ["female", "male"], ["light", "medium", "dark"])
    assert counts.tolist() == [[30, 10, 0], [40, 15, 1]] and unclear == 4
    table = mc.intersection_table(counts, ["female", "male"], ["light", "medium", "dark"], row_attribute="gender",
                                  col_attribute="skin", col_target=[0.45, 0.45, 0.1], n_unclear=unclear)
    # expected under the target: 96 · 0.5 · 0.1 = 4.8 < 5 → the dark cells are too thin to read
    dark = table.cell("female", "dark")
    assert dark.flag == "tiny" and dark.share is None and dark.ci_low is None and dark.count == 0
    assert table.cell("male", "dark").flag == "tiny"
    light = table.cell("male", "light")
    assert light.flag == "ok" and light.share == pytest.approx(40 / 96) and light.ci_low < light.share < light.ci_high
    # with a target that expects 9.6 dark women, their absence is a finding: "empty", share 0 with its interval
    table = mc.intersection_table(counts, ["female", "male"], ["light", "medium", "dark"], col_target=[0.4, 0.4, 0.2])
    empty = table.cell("female", "dark")
    assert empty.flag == "empty" and empty.share == 0.0 and empty.ci_low == 0.0 and 0 < empty.ci_high < 0.1
    assert table.delta == pytest.approx(mc.delta(counts.reshape(-1) / 96, np.outer([0.5, 0.5], [0.4, 0.4, 0.2])
                                                 .reshape(-1)))
    assert table.to_dict()["cells"][2]["flag"] == "empty"
    with pytest.raises(ValueError, match="shape"):
        mc.intersection_table(counts, ["female", "male"], ["light", "dark"])
