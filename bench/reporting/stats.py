"""Intervals and tests for the tables, the leaderboard, ``compare`` and ``claims`` (ALGORITHMS §12.1).

A metric of one cell is the mean of a per-item vector: per verification pair, 1 when its held-out
prediction was right (accuracy); per reconstruction target, its SSIM / PSNR / MSE or whether it
was re-identified (SRRA). A *replicate* is one (seed, fold) of a cell: one trained model.

- **Several replicates** (r ≥ 2): each replicate is summarised by its mean and the interval is a
  Student-t interval on the r replicate means (df = r − 1). The replicate means already carry the
  item noise, so no item bootstrap is added on top. A difference (or any linear contrast) of cells
  whose replicates match — the same (seed, fold), hence the same split — is a *paired* t on the r
  per-replicate contrasts; otherwise Welch's t on the replicate means of each side.
- **One replicate**: a percentile bootstrap (:data:`N_BOOT` resamples, seeded) over its items —
  it describes that one trained model only (training noise is invisible), so a verdict resting on
  it is *inconclusive* (:data:`MIN_REPLICATES`). Fewer than :data:`MIN_BOOTSTRAP` items are never
  bootstrapped (a t interval on them instead; none under two).

v2 used a percentile bootstrap over replicates, ≈ [min, max] at r = 2: its nominal 95 % interval
covered the truth 54 % of the time at r = 2, 71 % at r = 3 (§12.1); ``tests/test_calibration.py``
holds this module to its nominal level.

p-values are two-sided: from the t distribution for replicate-level tests; from the bootstrap
standard error under a normal approximation for item-level ones (which, unlike counting resamples,
resolves p below 1/2,000). :func:`holm` adjusts a family of p-values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import stdtr, stdtrit  # Student-t CDF and its inverse (fast ufuncs)

N_BOOT = 2000  # ALGORITHMS §12
LEVEL = 0.95
SEED = 0
MIN_REPLICATES = 3  # §12.1: a verdict (holds / contradicted / significant / ranked apart) needs r ≥ 3
MIN_BOOTSTRAP = 20  # §12.1: never bootstrap fewer values


@dataclass(frozen=True)
class Interval:
    """Point estimate, spread between replicates, and the 95 % interval."""

    mean: float
    std: float  # sample std of the replicate means / contrasts (NaN with one replicate)
    low: float
    high: float
    n_items: int  # items behind the estimate (pairs or targets, over every replicate and side)
    n_replicates: int = 1  # replicates the interval rests on (the smaller side when unpaired)
    method: str = ""  # how the interval was computed, for the reader


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, math.nan, 0, 0, "none")


@dataclass(frozen=True)
class _Estimate:
    """A contrast with its standard error: ``df`` finite for t, ``inf`` for a bootstrap."""

    value: float
    std: float
    se: float
    df: float
    low: float
    high: float
    n_items: int
    n_replicates: int
    method: str

    def interval(self) -> Interval:
        return Interval(self.value, self.std, self.low, self.high, self.n_items, self.n_replicates,
                        self.method)

    def p(self) -> float:
        return _p_value(self.value, self.se, self.df)


_NAN_ESTIMATE = _Estimate(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0, "none")


def _clean(groups: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    out = []
    for g in groups:
        a = np.asarray(g, dtype=np.float64).reshape(-1)
        a = a[np.isfinite(a)]
        if a.size:
            out.append(a)
    return out


def _tq(df: float, level: float) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(stdtrit(df, 0.5 + level / 2))


def t_bounds(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (df = n − 1); NaN under two values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return math.nan, math.nan
    half = _tq(v.size - 1, level) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def _item_means(a: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap means of one vector, ``[n_boot]``; chunked so 6,000 LFW pairs stay small."""
    out = np.empty(n_boot)
    step = max(1, 4_000_000 // max(1, a.size))
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, a.size, size=(stop - start, a.size))
        out[start:stop] = a[idx].mean(axis=1)
    return out


def _one_model(vectors: list[np.ndarray], weights: np.ndarray, paired: bool, n_boot: int,
               level: float, seed: int, n_items: int) -> _Estimate:
    """``Σ w_g · mean(x_g)`` for one trained model per group, from its items only: a bootstrap of
    the per-item contrast when every group was judged on the same items (``paired``: item i of
    every vector is the same item; an item NaN in any vector is left out), else of each group's
    mean on its own; a t interval on fewer than :data:`MIN_BOOTSTRAP` items."""
    alpha = (1 - level) / 2
    if paired:
        d = np.sum([w * v for w, v in zip(weights, vectors)], axis=0)
        d = d[np.isfinite(d)]
        value = float(d.mean()) if d.size else math.nan
        if d.size >= MIN_BOOTSTRAP:
            boot = _item_means(d, np.random.default_rng(seed), n_boot)
            lo, hi = np.quantile(boot, [alpha, 1 - alpha])
            return _Estimate(value, math.nan, float(boot.std(ddof=1)), math.inf, float(lo),
                             float(hi), n_items, 1, f"paired bootstrap over {d.size} items "
                             "(one replicate)")
        if d.size >= 2:
            lo, hi = t_bounds(d, level)
            return _Estimate(value, math.nan, float(d.std(ddof=1) / math.sqrt(d.size)),
                             d.size - 1, lo, hi, n_items, 1,
                             f"paired t over {d.size} items (one replicate)")
        return _Estimate(value, math.nan, math.nan, math.nan, math.nan, math.nan, n_items, 1,
                         "one value: no interval")
    vectors = _clean(vectors)
    value = float(sum(w * v.mean() for w, v in zip(weights, vectors)))
    if min(v.size for v in vectors) < MIN_BOOTSTRAP:
        return _Estimate(value, math.nan, math.nan, math.nan, math.nan, math.nan, n_items, 1,
                         f"under {MIN_BOOTSTRAP} items: no interval (one replicate)")
    rng = np.random.default_rng(seed)
    boot = sum(w * _item_means(v, rng, n_boot) for w, v in zip(weights, vectors))
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return _Estimate(value, math.nan, float(np.std(boot, ddof=1)), math.inf, float(lo), float(hi),
                     n_items, 1, "bootstrap over items (one replicate)")


def _replicate_level(means: list[np.ndarray], weights: np.ndarray, level: float,
                     n_items: int) -> _Estimate:
    """``Σ w_g · mean_g`` from unmatched replicate means: Welch–Satterthwaite t when every group has
    two or more; a pooled between-replicate variance (from the groups that have two or more) when
    some group has one."""
    r = np.array([m.size for m in means], dtype=float)
    value = float(sum(w * m.mean() for w, m in zip(weights, means)))
    var = np.array([m.var(ddof=1) if m.size > 1 else math.nan for m in means])
    if (r >= 2).all():
        parts = weights ** 2 * var / r
        se2 = float(parts.sum())
        denom = float(np.sum(parts ** 2 / (r - 1)))
        df = se2 ** 2 / denom if denom > 0 else float(r.min() - 1)
        span = f"{int(r.min())}" if r.min() == r.max() else f"{int(r.min())}–{int(r.max())}"
        how = f"Welch t over {span} replicates"
    else:
        dof = float(np.sum((r - 1)[r >= 2]))
        pooled = float(np.sum(((r - 1) * np.nan_to_num(var))[r >= 2]) / dof)
        se2, df = pooled * float(np.sum(weights ** 2 / r)), dof
        how = "t over replicates (between-replicate variance pooled from the other side)"
    se = math.sqrt(se2)
    half = _tq(df, level) * se
    return _Estimate(value, math.nan, se, df, value - half, value + half, n_items, int(r.min()),
                     how)


def _contrast(groups: Sequence[dict], weights: Sequence[float], n_boot: int = N_BOOT,
              level: float = LEVEL, seed: int = SEED) -> _Estimate:
    """See :func:`contrast`."""
    parts = []
    for g in groups:
        part = {}
        for key, (digest, vec) in g.items():
            v = np.asarray(vec, dtype=np.float64).reshape(-1)  # NaN kept: item i stays item i
            if np.isfinite(v).any():
                part[key] = (digest, v)
        if not part:
            return _NAN_ESTIMATE
        parts.append(part)
    w = np.asarray(weights, dtype=np.float64)
    n_items = int(sum(np.isfinite(v).sum() for p in parts for _, v in p.values()))
    keysets = [set(p) for p in parts]
    matched = all(k == keysets[0] for k in keysets)
    if matched and len(keysets[0]) >= 2:
        keys = sorted(keysets[0], key=str)
        per = np.array([[np.nanmean(p[k][1]) for k in keys] for p in parts])  # [groups, r]
        c = w @ per  # one contrast per replicate
        lo, hi = t_bounds(c, level)
        return _Estimate(float(c.mean()), float(c.std(ddof=1)),
                         float(c.std(ddof=1) / math.sqrt(c.size)), c.size - 1, lo, hi, n_items,
                         c.size, f"paired t over {c.size} replicates")
    if all(len(p) == 1 for p in parts):
        items = [next(iter(p.values())) for p in parts]
        digests = {d for d, _ in items}
        paired = (matched and len(digests) == 1 and None not in digests
                  and len({v.size for _, v in items}) == 1)
        return _one_model([v for _, v in items], w, paired, n_boot, level, seed, n_items)
    means = [np.array([np.nanmean(v) for _, v in p.values()]) for p in parts]
    return _replicate_level(means, w, level, n_items)


Items = dict  # {(seed, fold): (digest | None, per-item vector)} of one cell's metric


def contrast(groups: Sequence[Items], weights: Sequence[float], n_boot: int = N_BOOT,
             level: float = LEVEL, seed: int = SEED) -> Interval:
    """Interval of ``Σ_g w_g · μ_g`` over cells ``g`` (a difference B − A is weights ``(−1, 1)``;
    a least-squares slope over k or a step between two k are other weights; §12.1).

    Replicates matched in every group (the same (seed, fold) keys, r ≥ 2): paired t on the r
    per-replicate contrasts. One replicate per group: the items of those trained models (paired
    per item when all were judged on the same items: one digest, one length). Otherwise Welch's t
    on the replicate means. ``n_replicates`` is r for the paired design, else the smallest
    group's; a metric with no items passes one value per replicate."""
    return _contrast(groups, weights, n_boot, level, seed).interval()


def difference(items_a: Items, items_b: Items, n_boot: int = N_BOOT, level: float = LEVEL,
               seed: int = SEED) -> tuple[Interval, str]:
    """Interval of B − A (:func:`contrast` with weights ``(−1, 1)``) and how it was computed."""
    if not items_a or not items_b:
        return NAN_INTERVAL, "none"
    iv = contrast([items_a, items_b], [-1.0, 1.0], n_boot, level, seed)
    return iv, iv.method


def _single_model(a: np.ndarray, n_boot: int, level: float, seed: int) -> Interval:
    """One trained model: percentile bootstrap over its items (t on under MIN_BOOTSTRAP)."""
    if a.size >= MIN_BOOTSTRAP:
        boot = _item_means(a, np.random.default_rng(seed), n_boot)
        alpha = (1 - level) / 2
        lo, hi = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
        how = f"bootstrap over {a.size} items (one replicate)"
    else:
        lo, hi = t_bounds(a, level)
        how = (f"t over {a.size} items (one replicate)" if a.size > 1
               else "one value: no interval")
    return Interval(float(a.mean()), math.nan, lo, hi, int(a.size), 1, how)


def interval(groups: Sequence[Sequence[float] | np.ndarray], n_boot: int = N_BOOT,
             level: float = LEVEL, seed: int = SEED) -> Interval:
    """Mean of the replicate means, with a t interval over them (r ≥ 2) or an item bootstrap of
    the one replicate (see the module doc); ``groups`` holds one per-item vector per replicate."""
    gs = _clean(groups)
    if not gs:
        return NAN_INTERVAL
    if len(gs) == 1:
        return _single_model(gs[0], n_boot, level, seed)
    means = np.array([g.mean() for g in gs])
    lo, hi = t_bounds(means, level)
    return Interval(float(means.mean()), float(means.std(ddof=1)), lo, hi,
                    int(sum(g.size for g in gs)), len(gs), f"t over {len(gs)} replicates")


def replicate_interval(values: Sequence[float], level: float = LEVEL, **_: object) -> Interval:
    """For a metric without per-item vectors: t interval over the replicate values (NaN bounds
    under two replicates)."""
    v = _clean([values])
    if not v:
        return NAN_INTERVAL
    a = v[0]
    std = float(a.std(ddof=1)) if a.size > 1 else math.nan
    lo, hi = t_bounds(a, level)
    how = f"t over {a.size} replicates" if a.size > 1 else "one replicate: no interval"
    return Interval(float(a.mean()), std, lo, hi, int(a.size), int(a.size), how)


# -- tests -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestResult:
    """A two-sided test of B − A, with its 95 % interval and the replicates it rests on."""

    delta: float
    p: float
    test: str  # how it was computed; "none" when it could not be
    low: float = math.nan
    high: float = math.nan
    n_replicates: int = 0


def _p_value(value: float, se: float, df: float) -> float:
    if not (math.isfinite(value) and math.isfinite(se)) or math.isnan(df):
        return math.nan
    if se == 0.0:
        return 1.0 if value == 0.0 else 0.0
    z = abs(value) / se
    if math.isinf(df):
        return math.erfc(z / math.sqrt(2.0))
    return float(2 * stdtr(df, -z))


def _result(est: _Estimate) -> TestResult:
    return TestResult(est.value, est.p(), est.method, est.low, est.high, est.n_replicates)


def difference_test(items_a: Items, items_b: Items, n_boot: int = N_BOOT,
                    seed: int = SEED) -> TestResult:
    """B − A tested as :func:`difference` computes its interval (paired t over matched
    replicates, Welch t over unmatched ones, items of one trained model per side)."""
    if not items_a or not items_b:
        return TestResult(math.nan, math.nan, "none")
    return _result(_contrast([items_a, items_b], [-1.0, 1.0], n_boot, LEVEL, seed))


def _as_items(vectors: Sequence[np.ndarray], digest: str | None) -> Items:
    return {i: (digest, np.asarray(v, float)) for i, v in enumerate(vectors)}


def paired_test(a: Sequence[np.ndarray], b: Sequence[np.ndarray], n_boot: int = N_BOOT,
                seed: int = SEED) -> TestResult:
    """Replicate ``i`` of A and of B share a split (and, with one replicate, the same items in the
    same order): paired t over the replicate differences, or the per-item differences of the one
    replicate."""
    for x, y in zip(a, b):
        if np.shape(x) != np.shape(y):
            raise ValueError(f"paired vectors differ in length: {np.shape(x)} vs {np.shape(y)}")
    return difference_test(_as_items(a, "same"), _as_items(b, "same"), n_boot, seed)


def unpaired_test(a: Sequence[np.ndarray], b: Sequence[np.ndarray], n_boot: int = N_BOOT,
                  seed: int = SEED) -> TestResult:
    """Different items and splits on the two sides: Welch t over replicate means, or each side's
    items on their own with one replicate a side."""
    ia = {("a", i): (None, v) for i, v in enumerate(a)}
    ib = {("b", i): (None, v) for i, v in enumerate(b)}
    return difference_test(ia, ib, n_boot, seed)


def welch_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's t-test of B − A on replicate values (seeds × folds) — for metrics with no per-item
    values (S1–S4, raw_pp); needs two replicates on each side."""
    va = np.asarray([x for x in a if np.isfinite(x)], float)
    vb = np.asarray([x for x in b if np.isfinite(x)], float)
    if va.size < 2 or vb.size < 2:
        return TestResult(math.nan, math.nan, "none")
    est = _replicate_level([va, vb], np.array([-1.0, 1.0]), LEVEL, int(va.size + vb.size))
    return TestResult(est.value, est.p(), "Welch t over replicates", est.low, est.high,
                      est.n_replicates)


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
