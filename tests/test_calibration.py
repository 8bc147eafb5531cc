"""Calibration of the statistics behind tables, compare and claims (ALGORITHMS §12.1).

A seeded simulation with a known truth: each replicate (seed × fold) is one trained model whose
mean is off the truth by its training noise (σ_train), and each of its items (pairs, targets) is
off its model's mean by item noise (σ_item). The 95 % intervals must cover the truth at least 93 %
of the time at r = 3, 5, 10 replicates, and with no true effect a claim may come out holds or
contradicted at most 5 % of the time (plus Monte-Carlo error) at r = 2, 3, 5.

v2's percentile bootstrap over replicates fails these (measured with the functions below on
commit c357fc2's ``bench/reporting/stats.py``: see the docstrings of each test).
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Callable

import numpy as np
import pytest

from bench.reporting import claims, stats

N_SIM = 2000
MU = 0.60  # the truth: the expected metric over trained models and items
SIGMA_TRAIN = 0.03  # between trained models (the training noise an item bootstrap cannot see)
SIGMA_SPLIT = 0.02  # between splits (seed × fold), shared by the defenses of one replicate
SIGMA_ITEM = 0.15  # between items of one model
N_ITEMS = 60
NOMINAL = 0.95
MIN_COVERAGE = 0.93
#: the false-verdict bound: 5 % plus three Monte-Carlo standard errors (a correct 5 % exceeds it
#: in about 1 of 700 seeds)
MAX_FALSE = 0.05 + 3 * math.sqrt(0.05 * 0.95 / N_SIM)


def one_cell(rng: np.random.Generator, n_sim: int, r: int, mu: float = MU) -> np.ndarray:
    """``[n_sim, r, N_ITEMS]``: r trained models of one cell, each judged on its own items."""
    model = rng.normal(0, SIGMA_TRAIN, (n_sim, r, 1))
    return mu + model + rng.normal(0, SIGMA_ITEM, (n_sim, r, N_ITEMS))


def two_cells(rng: np.random.Generator, n_sim: int, r: int, delta: float = 0.0,
              matched: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Two defenses, each with its own training noise; B − A = ``delta``. ``matched``: on the
    same r splits (same seed/fold: a shared split effect, the same items with a shared per-item
    difficulty); else each on splits of its own."""
    split = rng.normal(0, SIGMA_SPLIT, (n_sim, r, 1))
    difficulty = rng.normal(0, SIGMA_ITEM / 2, (n_sim, r, N_ITEMS))
    cells = []
    for shift in (0.0, delta):
        if not matched and cells:  # B's own splits and items
            split = rng.normal(0, SIGMA_SPLIT, (n_sim, r, 1))
            difficulty = rng.normal(0, SIGMA_ITEM / 2, (n_sim, r, N_ITEMS))
        model = rng.normal(0, SIGMA_TRAIN, (n_sim, r, 1))
        noise = rng.normal(0, SIGMA_ITEM / 2, (n_sim, r, N_ITEMS))
        cells.append(MU + shift + split + model + difficulty + noise)
    return cells[0], cells[1]


def _items(x: np.ndarray, keys: list) -> dict:
    """``{(seed, fold): (digest, vector)}`` of one simulated cell (digest = its split)."""
    return {k: (f"split{k[0]}", v) for k, v in zip(keys, x)}


def coverage(mod: ModuleType, r: int, n_sim: int = N_SIM, seed: int = 0) -> float:
    """Share of the simulations whose ``mod.interval`` over r replicates covers the truth."""
    x = one_cell(np.random.default_rng(seed), n_sim, r)
    hits = 0
    for sim in x:
        iv = mod.interval(list(sim))
        hits += iv.low <= MU <= iv.high
    return hits / n_sim


def difference_coverage(mod: ModuleType, r: int, matched: bool, n_sim: int = N_SIM,
                        seed: int = 1, delta: float = 0.05) -> float:
    """Share of the simulations whose ``mod.difference`` B − A covers the true ``delta``: the
    two defenses on the same splits (``matched``) or on different ones."""
    a, b = two_cells(np.random.default_rng(seed), n_sim, r, delta, matched)
    keys_a = [(s, None) for s in range(r)]
    keys_b = keys_a if matched else [(s + 100, None) for s in range(r)]
    hits = 0
    for xa, xb in zip(a, b):
        iv, _ = mod.difference(_items(xa, keys_a), _items(xb, keys_b))
        hits += iv.low <= delta <= iv.high
    return hits / n_sim


def false_verdicts(mod: ModuleType, judge: Callable, r: int, matched: bool, n_sim: int = N_SIM,
                   seed: int = 2) -> tuple[float, float]:
    """(holds, contradicted) rates of a direction claim "B − A > 0" when B and A do not differ."""
    a, b = two_cells(np.random.default_rng(seed), n_sim, r, 0.0, matched)
    keys_a = [(s, None) for s in range(r)]
    keys_b = keys_a if matched else [(s + 100, None) for s in range(r)]
    holds = contradicted = 0
    for xa, xb in zip(a, b):
        iv, _ = mod.difference(_items(xa, keys_a), _items(xb, keys_b))
        v = judge(iv, +1, 0.0)
        holds += v == "holds"
        contradicted += v == "contradicted"
    return holds / n_sim, contradicted / n_sim


@pytest.mark.parametrize("r", [3, 5, 10])
def test_intervals_over_replicates_cover_the_truth(r):
    """v2 (c357fc2), measured with this simulation: 0.885, 0.918, 0.953 at r = 3, 5, 10 (its
    item resampling inside each replicate widens it a little; on replicate values alone §12.1
    measured 0.71 and 0.86 at r = 3, 5)."""
    cov = coverage(stats, r)
    assert MIN_COVERAGE <= cov <= 0.98, cov  # and not by being absurdly wide


@pytest.mark.parametrize("r", [3, 5, 10])
@pytest.mark.parametrize("matched", [True, False], ids=["paired", "unpaired"])
def test_differences_cover_the_true_effect(r, matched):
    """v2 (c357fc2): paired 0.820, 0.874, 0.916; unpaired 0.868, 0.905, 0.947 at r = 3, 5, 10.
    (Welch's t is slightly conservative at r = 3: 0.97.)"""
    cov = difference_coverage(stats, r, matched)
    assert MIN_COVERAGE <= cov <= 0.98, cov


@pytest.mark.parametrize("r", [2, 3, 5])
@pytest.mark.parametrize("matched", [True, False], ids=["paired", "unpaired"])
def test_no_effect_rarely_gets_a_verdict(r, matched):
    """v2 (c357fc2), holds + contradicted: paired 0.296, 0.209, 0.136; unpaired 0.206, 0.133,
    0.089 at r = 2, 3, 5."""
    holds, contradicted = false_verdicts(stats, claims.judge, r, matched)
    assert holds + contradicted <= MAX_FALSE, (holds, contradicted)
    if r >= stats.MIN_REPLICATES:  # the t interval errs on both sides about equally
        assert holds <= MAX_FALSE / 2 + 0.01 and contradicted <= MAX_FALSE / 2 + 0.01


def test_a_real_effect_is_found_with_replicates():
    """The other side of the bargain: a true effect of 3 σ_train is established (holds) in most
    paired runs of r = 5, so the rules above are not met by never deciding."""
    a, b = two_cells(np.random.default_rng(3), 500, 5, delta=3 * SIGMA_TRAIN)
    keys = [(s, None) for s in range(5)]
    found = np.mean([claims.judge(stats.difference(_items(xa, keys), _items(xb, keys))[0], +1, 0.0)
                     == "holds" for xa, xb in zip(a, b)])
    assert found >= 0.6, found


def test_one_replicate_is_never_a_verdict():
    a, b = two_cells(np.random.default_rng(4), 200, 1, delta=0.0)
    keys = [(0, None)]
    verdicts = {claims.judge(stats.difference(_items(xa, keys), _items(xb, keys))[0], +1, 0.0)
                for xa, xb in zip(a, b)}
    assert verdicts == {"inconclusive (1 replicate)"}
