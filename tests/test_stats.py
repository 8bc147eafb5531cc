"""Replicate-level t intervals, item bootstraps of one model, tests and Holm (bench.reporting.stats, §12.1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import t as t_dist, ttest_ind, ttest_rel

from bench.reporting import stats


def test_interval_of_one_replicate_matches_the_binomial_width():
    rng = np.random.default_rng(1)
    x = (rng.random(300) < 0.8).astype(float)
    iv = stats.interval([x])
    assert iv.mean == pytest.approx(x.mean())
    assert iv.low < iv.mean < iv.high
    half = 1.96 * math.sqrt(x.mean() * (1 - x.mean()) / x.size)  # the normal approximation
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.15)
    assert math.isnan(iv.std) and iv.n_items == 300


def test_several_replicates_get_a_student_t_interval_on_their_means():
    rng = np.random.default_rng(2)
    groups = [rng.normal(mu, 0.1, 200) for mu in (0.3, 0.5, 0.7)]
    means = np.array([g.mean() for g in groups])
    iv = stats.interval(groups)
    half = t_dist.ppf(0.975, 2) * means.std(ddof=1) / math.sqrt(3)  # df = r − 1
    assert iv.mean == pytest.approx(means.mean())
    assert (iv.low, iv.high) == pytest.approx((means.mean() - half, means.mean() + half))
    assert iv.std == pytest.approx(means.std(ddof=1))
    assert iv.n_items == 600 and iv.n_replicates == 3 and iv.method == "t over 3 replicates"


def test_two_replicates_are_not_min_max():
    # v2's percentile bootstrap of two values was about [min, max] (54 % coverage, §12.1)
    iv = stats.interval([np.full(50, 0.6), np.full(50, 0.8)])
    assert iv.low < 0.6 - 0.5 and iv.high > 0.8 + 0.5  # t with one degree of freedom: 12.7 · se


def test_interval_is_reproducible_and_ignores_nan():
    x = [0.1, 0.2, float("nan"), 0.4, 0.3]
    assert stats.interval([x]) == stats.interval([x])
    assert stats.interval([x]).mean == pytest.approx(0.25)
    assert stats.interval([[]]) == stats.NAN_INTERVAL


def test_few_items_are_never_bootstrapped():
    x = [0.1, 0.2, 0.4, 0.3]  # one replicate of 4 items: a t interval, not a bootstrap
    iv = stats.interval([x])
    assert (iv.low, iv.high) == pytest.approx(stats.t_bounds(np.array(x)))
    assert "t over 4 items" in iv.method
    assert math.isnan(stats.interval([[0.7]]).low)


def test_replicate_interval_is_a_t_interval():
    one = stats.replicate_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    two = stats.replicate_interval([0.6, 0.8])
    half = t_dist.ppf(0.975, 1) * np.std([0.6, 0.8], ddof=1) / math.sqrt(2)
    assert (two.low, two.high) == pytest.approx((0.7 - half, 0.7 + half))
    assert two.n_replicates == 2 and two.n_items == 2


def test_paired_test_finds_a_small_consistent_difference_that_unpaired_misses():
    rng = np.random.default_rng(3)
    base = rng.normal(0.5, 0.2, 100)  # targets differ a lot from each other …
    a, b = base, base + 0.02 + rng.normal(0, 0.01, 100)  # … the defense shifts each a little
    paired = stats.paired_test([a], [b])
    unpaired = stats.unpaired_test([a], [b])
    assert paired.test.startswith("paired bootstrap") and paired.p < 1e-6
    assert unpaired.test.startswith("bootstrap") and unpaired.p > 0.05
    assert paired.delta == pytest.approx(np.mean(b - a))


def test_same_distribution_is_not_significant():
    rng = np.random.default_rng(4)
    a = (rng.random(300) < 0.8).astype(float)
    b = (rng.random(300) < 0.8).astype(float)
    assert stats.unpaired_test([a], [b]).p > 0.05


def test_paired_vectors_of_different_length_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_test([np.zeros(3)], [np.zeros(4)])


def test_holm_matches_hand_computed_values():
    adj = stats.holm([0.01, 0.04, 0.03, float("nan")])
    assert adj[0] == pytest.approx(0.03)  # 3 × 0.01
    assert adj[2] == pytest.approx(0.06)  # 2 × 0.03
    assert adj[1] == pytest.approx(0.06)  # max(1 × 0.04, previous 0.06): monotone
    assert math.isnan(adj[3])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_holm_never_lowers_a_p_value_and_stays_at_most_one(ps):
    adj = stats.holm(ps)
    assert all(a >= p - 1e-12 and a <= 1.0 for a, p in zip(adj, ps))


def test_difference_pairs_only_matching_items():
    rng = np.random.default_rng(5)
    v = rng.normal(0.5, 0.2, 50).tolist()
    w = [x + 0.1 for x in v]
    same = stats.difference({(0, None): ("d", v)}, {(0, None): ("d", w)})
    other = stats.difference({(0, None): ("d", v)}, {(0, None): ("e", w)})
    assert same[1].startswith("paired bootstrap") and other[1].startswith("bootstrap")
    assert same[0].low == pytest.approx(0.1) and same[0].high == pytest.approx(0.1)
    assert other[0].low < 0.05 and other[0].high > 0.15  # unpaired: the target spread shows
    assert same[0].n_items == 100 and same[0].n_replicates == 1  # items of both sides, not resamples


def _replicates(offsets, n=40, seed=0, digest="d"):
    rng = np.random.default_rng(seed)
    return {(s, None): (f"{digest}{s}", rng.normal(0.5 + o, 0.1, n)) for s, o in enumerate(offsets)}


def test_matched_replicates_get_a_paired_t_on_their_differences():
    a = _replicates([0.0, 0.05, -0.03, 0.02], seed=1)
    b = {k: (d, v + 0.02 + 0.01 * k[0]) for k, (d, v) in a.items()}  # shift 0.02, 0.03, …
    iv, how = stats.difference(a, b)
    ma, mb = ([x[1].mean() for x in side.values()] for side in (a, b))
    ref = ttest_rel(mb, ma)
    assert how == "paired t over 4 replicates" and iv.n_replicates == 4 and iv.n_items == 320
    assert iv.mean == pytest.approx(np.mean(np.subtract(mb, ma)))
    ci = ref.confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high))
    assert stats.difference_test(a, b).p == pytest.approx(ref.pvalue)


def test_unmatched_replicates_get_welch_t():
    a = _replicates([0.0, 0.05, -0.03], seed=2)
    b = {(s + 10, None): v for s, v in enumerate(_replicates([0.1, 0.02, 0.08, 0.05], seed=3).values())}
    ma = [v.mean() for _, v in a.values()]
    mb = [v.mean() for _, v in b.values()]
    ref = ttest_ind(mb, ma, equal_var=False)
    t = stats.difference_test(a, b)
    assert t.test.startswith("Welch t") and t.n_replicates == 3
    assert t.p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (t.low, t.high) == pytest.approx((ci.low, ci.high))
    assert stats.welch_test(ma, mb).p == pytest.approx(ref.pvalue)


def test_contrast_of_a_slope_over_k():
    # replicate means m_k = 80 − 3k + seed noise, matched seeds: the slope is −3 per unit k
    rng = np.random.default_rng(6)
    seeds_noise = rng.normal(0, 1, 3)
    groups = [{(s, None): ("p", np.full(10, 80 - 3 * k + seeds_noise[s] + 0.1 * k * s))
               for s in range(3)} for k in (2, 3, 4, 5)]
    x = np.array([2, 3, 4, 5.0])
    w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    iv = stats.contrast(groups, w)
    slopes = [np.polyfit(x, [80 - 3 * k + seeds_noise[s] + 0.1 * k * s for k in x], 1)[0]
              for s in range(3)]
    assert iv.mean == pytest.approx(np.mean(slopes))
    assert (iv.low, iv.high) == pytest.approx(stats.t_bounds(np.array(slopes)))


def test_one_replicate_against_several_pools_the_replicate_variance():
    a = {(0, None): (None, np.full(30, 0.5))}
    b = _replicates([0.1, 0.12, 0.08], seed=4)
    iv, how = stats.difference(a, b)
    assert iv.n_replicates == 1 and "pooled" in how and iv.low < iv.mean < iv.high


def test_overlap():
    a = stats.Interval(0.5, math.nan, 0.4, 0.6, 10)
    assert stats.overlaps(a, stats.Interval(0.65, math.nan, 0.55, 0.75, 10))
    assert not stats.overlaps(a, stats.Interval(0.8, math.nan, 0.7, 0.9, 10))
    assert stats.overlaps(a, stats.NAN_INTERVAL)


def test_paired_items_stay_aligned_when_one_side_has_a_nan():
    a = [0.1, float("nan"), 0.3] + [0.5] * 30
    b = [0.2, 0.9, 0.4] + [0.6] * 30  # item 1 has no value in A: left out of the pairs, not shifted
    iv, how = stats.difference({(0, None): ("d", a)}, {(0, None): ("d", b)})
    assert how.startswith("paired bootstrap over 32 items")
    assert iv.mean == pytest.approx(0.1) and iv.low == pytest.approx(0.1)
    assert iv.n_items == 65
