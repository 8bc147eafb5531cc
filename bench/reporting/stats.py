"""Bootstrap intervals and tests over verification pairs and reconstruction targets (ALGORITHMS §12).

A metric of one cell is the mean of a per-item vector: per verification pair, 1 when its held-out
prediction was right (accuracy); per reconstruction target, its SSIM / PSNR / MSE or whether it
was re-identified (SRRA). A *replicate* is one (seed, fold) of a cell. Intervals:

- one replicate: percentile bootstrap of the mean over its items;
- several: the point estimate is the mean of the replicate means and the interval comes from the
  resampled grand mean — replicates are resampled, then items within each chosen replicate, so
  both the training noise between seeds/folds and the sampling of pairs/targets widen it.

Metrics without items (S1–S4, raw_pp, Scores) get an interval only from several replicates
(bootstrap of their means). Resampling is seeded (:data:`SEED`): a report is reproducible.

Tests between two cells (``bench compare``): *paired* when both were judged on the same items (the
same pairs / targets, checked by digest), resampling the per-item differences; otherwise an
unpaired bootstrap of the difference of the two (grand) means. The p-value is two-sided, from the
bootstrap standard error of the difference under a normal approximation (which, unlike counting
resamples, resolves p below 1/2,000). :func:`holm` adjusts a family of p-values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

N_BOOT = 2000  # ALGORITHMS §12
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """Point estimate, spread between replicates, and the bootstrap interval."""

    mean: float
    std: float  # sample std of the replicate means (NaN with one replicate)
    low: float
    high: float
    n_items: int  # items behind the estimate (pairs or targets; replicates when there are none)


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, math.nan, 0)


def _clean(groups: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    out = []
    for g in groups:
        a = np.asarray(g, dtype=np.float64).reshape(-1)
        a = a[np.isfinite(a)]
        if a.size:
            out.append(a)
    return out


def _item_means(a: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap means of one vector, ``[n_boot]``; chunked so 6,000 LFW pairs stay small."""
    out = np.empty(n_boot)
    step = max(1, 4_000_000 // max(1, a.size))
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, a.size, size=(stop - start, a.size))
        out[start:stop] = a[idx].mean(axis=1)
    return out


def resampled_grand_means(groups: Sequence[np.ndarray], rng: np.random.Generator,
                          n_boot: int = N_BOOT) -> np.ndarray:
    """``[n_boot]`` resampled grand means: items within a replicate; replicates too when several."""
    per = np.stack([_item_means(g, rng, n_boot) for g in groups])  # [R, B]
    r = len(groups)
    if r == 1:
        return per[0]
    pick = rng.integers(0, r, size=(n_boot, r))  # replicates drawn with replacement
    # a replicate drawn twice in one resample takes two different item resamples (shifted column)
    cols = (np.arange(n_boot)[:, None] + 7919 * np.arange(r)[None, :]) % n_boot
    return per[pick, cols].mean(axis=1)


def interval(groups: Sequence[Sequence[float] | np.ndarray], n_boot: int = N_BOOT,
             level: float = LEVEL, seed: int = SEED) -> Interval:
    """Mean of replicate means with its percentile bootstrap interval (see the module doc)."""
    gs = _clean(groups)
    if not gs:
        return NAN_INTERVAL
    means = np.array([g.mean() for g in gs])
    std = float(means.std(ddof=1)) if len(gs) > 1 else math.nan
    rng = np.random.default_rng(seed)
    boot = resampled_grand_means(gs, rng, n_boot)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return Interval(float(means.mean()), std, float(lo), float(hi), int(sum(g.size for g in gs)))


def replicate_interval(values: Sequence[float], n_boot: int = N_BOOT, level: float = LEVEL,
                       seed: int = SEED) -> Interval:
    """For a metric without per-item vectors: bootstrap over replicates (NaN bounds under two)."""
    v = _clean([values])
    if not v:
        return NAN_INTERVAL
    a = v[0]
    std = float(a.std(ddof=1)) if a.size > 1 else math.nan
    if a.size < 2:
        return Interval(float(a.mean()), std, math.nan, math.nan, int(a.size))
    rng = np.random.default_rng(seed)
    boot = _item_means(a, rng, n_boot)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return Interval(float(a.mean()), std, float(lo), float(hi), int(a.size))


@dataclass(frozen=True)
class TestResult:
    """A two-sided test of B − A."""

    delta: float
    p: float
    test: str  # "paired bootstrap" | "bootstrap" | "none"


def _p_from_se(delta: float, se: float) -> float:
    if not math.isfinite(delta) or not math.isfinite(se):
        return math.nan
    if se == 0.0:
        return 1.0 if delta == 0.0 else 0.0
    return math.erfc(abs(delta) / se / math.sqrt(2.0))


def paired_test(a: Sequence[np.ndarray], b: Sequence[np.ndarray], n_boot: int = N_BOOT,
                seed: int = SEED) -> TestResult:
    """Replicate ``i`` of A and of B were judged on the same items (same order): resample the
    per-item differences (and the replicates when several)."""
    diffs = []
    for x, y in zip(a, b):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape:
            raise ValueError(f"paired vectors differ in length: {x.shape} vs {y.shape}")
        d = y - x
        diffs.append(d[np.isfinite(d)])
    diffs = [d for d in diffs if d.size]
    if not diffs:
        return TestResult(math.nan, math.nan, "none")
    delta = float(np.mean([d.mean() for d in diffs]))
    boot = resampled_grand_means(diffs, np.random.default_rng(seed), n_boot)
    return TestResult(delta, _p_from_se(delta, float(boot.std(ddof=1))), "paired bootstrap")


def unpaired_test(a: Sequence[np.ndarray], b: Sequence[np.ndarray], n_boot: int = N_BOOT,
                  seed: int = SEED) -> TestResult:
    """Different items on the two sides: resample each side on its own."""
    ga, gb = _clean(a), _clean(b)
    if not ga or not gb:
        return TestResult(math.nan, math.nan, "none")
    rng = np.random.default_rng(seed)
    ma, mb = resampled_grand_means(ga, rng, n_boot), resampled_grand_means(gb, rng, n_boot)
    delta = float(np.mean([g.mean() for g in gb]) - np.mean([g.mean() for g in ga]))
    return TestResult(delta, _p_from_se(delta, float((mb - ma).std(ddof=1))), "bootstrap")


def welch_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's t-test of B − A on replicate values (seeds × folds) — for metrics with no per-item
    values (S1–S4, raw_pp); needs two replicates on each side."""
    from scipy.stats import ttest_ind

    va = np.asarray([x for x in a if np.isfinite(x)], float)
    vb = np.asarray([x for x in b if np.isfinite(x)], float)
    if va.size < 2 or vb.size < 2:
        return TestResult(math.nan, math.nan, "none")
    delta = float(vb.mean() - va.mean())
    if va.std() == 0 and vb.std() == 0:
        return TestResult(delta, 1.0 if delta == 0 else 0.0, "Welch t over replicates")
    return TestResult(delta, float(ttest_ind(vb, va, equal_var=False).pvalue),
                      "Welch t over replicates")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN); controls the family-wise error rate."""
    p = np.asarray(pvalues, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, math.nan)
    if finite.size == 0:
        return out.tolist()
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def overlaps(a: Interval, b: Interval) -> bool:
    """Whether two intervals overlap (an interval with NaN bounds overlaps everything: no
    evidence of a difference)."""
    if not all(map(math.isfinite, (a.low, a.high, b.low, b.high))):
        return True
    return a.low <= b.high and b.low <= a.high


Items = dict  # {(seed, fold): (digest | None, per-item vector)} of one cell's metric


def difference(items_a: Items, items_b: Items, n_boot: int = N_BOOT, level: float = LEVEL,
               seed: int = SEED) -> tuple[Interval, str]:
    """Interval of B − A from two cells' per-item vectors, and how it was computed: paired over
    items when every replicate of both was judged on the same items, else each side resampled on
    its own."""
    if not items_a or not items_b:
        return NAN_INTERVAL, "none"
    keys = sorted(items_a, key=str)
    paired = set(keys) == set(items_b) and all(
        items_a[k][0] is not None and items_a[k][0] == items_b[k][0]
        and len(items_a[k][1]) == len(items_b[k][1]) for k in keys)
    alpha = (1 - level) / 2
    rng = np.random.default_rng(seed)
    if paired:
        diffs = _clean([np.asarray(items_b[k][1], float) - np.asarray(items_a[k][1], float)
                        for k in keys])
        if not diffs:
            return NAN_INTERVAL, "none"
        boot = resampled_grand_means(diffs, rng, n_boot)
        means = np.array([d.mean() for d in diffs])
        how = "paired bootstrap"
    else:
        ga = _clean([v for _, v in items_a.values()])
        gb = _clean([v for _, v in items_b.values()])
        if not ga or not gb:
            return NAN_INTERVAL, "none"
        boot = resampled_grand_means(gb, rng, n_boot) - resampled_grand_means(ga, rng, n_boot)
        means = np.array([np.mean([g.mean() for g in gb]) - np.mean([g.mean() for g in ga])])
        how = "bootstrap"
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    std = float(means.std(ddof=1)) if means.size > 1 else math.nan
    return Interval(float(means.mean()), std, float(lo), float(hi), int(boot.size)), how
