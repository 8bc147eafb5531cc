"""Bootstrap intervals, paired/unpaired tests and Holm adjustment (bench.reporting.stats, §12)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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


def test_replicates_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    same = [rng.normal(0.5, 0.1, 200) for _ in range(3)]
    apart = [rng.normal(mu, 0.1, 200) for mu in (0.3, 0.5, 0.7)]
    w_same = stats.interval(same).high - stats.interval(same).low
    w_apart = stats.interval(apart).high - stats.interval(apart).low
    assert w_apart > 5 * w_same  # the spread between seeds/folds is part of the uncertainty
    assert stats.interval(apart).std == pytest.approx(np.std([a.mean() for a in apart], ddof=1))


def test_interval_is_reproducible_and_ignores_nan():
    x = [0.1, 0.2, float("nan"), 0.4, 0.3]
    assert stats.interval([x]) == stats.interval([x])
    assert stats.interval([x]).mean == pytest.approx(0.25)
    assert stats.interval([[]]) == stats.NAN_INTERVAL


def test_replicate_interval_needs_two_replicates():
    one = stats.replicate_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    two = stats.replicate_interval([0.6, 0.8])
    assert two.low >= 0.6 and two.high <= 0.8 and two.low < two.high


def test_paired_test_finds_a_small_consistent_difference_that_unpaired_misses():
    rng = np.random.default_rng(3)
    base = rng.normal(0.5, 0.2, 100)  # targets differ a lot from each other …
    a, b = base, base + 0.02 + rng.normal(0, 0.01, 100)  # … the defense shifts each a little
    paired = stats.paired_test([a], [b])
    unpaired = stats.unpaired_test([a], [b])
    assert paired.test == "paired bootstrap" and paired.p < 1e-6
    assert unpaired.test == "bootstrap" and unpaired.p > 0.05
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
    assert same[1] == "paired bootstrap" and other[1] == "bootstrap"
    assert same[0].low == pytest.approx(0.1) and same[0].high == pytest.approx(0.1)
    assert other[0].low < 0.05 and other[0].high > 0.15  # unpaired: the target spread shows


def test_overlap():
    a = stats.Interval(0.5, math.nan, 0.4, 0.6, 10)
    assert stats.overlaps(a, stats.Interval(0.65, math.nan, 0.55, 0.75, 10))
    assert not stats.overlaps(a, stats.Interval(0.8, math.nan, 0.7, 0.9, 10))
    assert stats.overlaps(a, stats.NAN_INTERVAL)
