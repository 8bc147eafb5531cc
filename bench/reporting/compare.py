"""``bench compare RUN_A RUN_B``: what changed between two runs, and whether it matters.

Two kinds of differences are reported:

1. **Settings**: the resolved configs (``config.json``, flattened to dotted keys), each defense's
   and attack's options as recorded in its cells, the harness version, cells present in one run
   only, and cells whose status changed (``ok`` ↔ ``n/a``).
2. **Metrics**, per defense × attack × metric, as B − A of the means over seeds. Accuracy does not
   depend on the attack, so it is compared once per defense (attack shown as ``*``).

Significance (the ``flag`` column, ALGORITHMS §12.1), with B − A's 95 % interval beside it:

- with replicates (seeds × folds) on both sides, B − A is tested on the replicate means: a
  **paired t** over the per-replicate differences when both runs have the same (seed, fold)
  replicates (the same splits), else **Welch's t**; metrics without per-item vectors (S1–S4,
  raw_pp) the same way, on their one value per replicate. A flag needs ≥ 3 replicates
  (``MIN_REPLICATES``) per side; with two the p-value and interval are shown, the row says
  *inconclusive* and names ``--seeds 0,1,2``;
- one replicate a side: a bootstrap over one trained model's items cannot see training noise
  (measured on ORL: resrec SSIM on ``none`` .991 vs .936 for seeds 0 and 1). On *different*
  items the row is *untestable*. On the *same* items (same pairs / targets by digest) the paired
  item bootstrap is shown; it decides only when the two runs have the same settings, seed and
  environment key (:mod:`bench.environment`) — a reproduction check (the CI gate re-creating
  ``results/reference``), where the same seeded code must give the same models and a difference
  is the code's — otherwise it is *inconclusive (one replicate)*;
- the p-values of the deciding tests are Holm-adjusted (many metrics are compared at once) and a
  change is *significant* when the adjusted p < ``ALPHA`` (0.05); both p-values are printed;
- old runs without per-item data and one replicate fall back to the seed-spread rule (flagged
  when ``|Δ| > 2 · spread``, the larger seed std of the two runs); with a single seed they are
  *untestable* and not flagged when the runs carry per-item data (their pair/target-level
  companions carry the test); in older runs without any per-item data a change larger than float
  noise is flagged — with one seed we cannot tell noise from effect, so we say so;
- a metric that is a number in one run and missing/NaN in the other is flagged.

When the two runs' environments differ in what can change numbers (library versions, device model,
thread count: :mod:`bench.environment`) the comparison says so next to every number.

Direction (what "worse" means): utility — every ``acc_<set>`` — is better higher. Privacy is
better when the attacker does worse: S1–S4, raw_pp and MSE better higher; SSIM, PSNR, SRRA and
SRRA_far1e-3 better lower, and so the identity-level ones of §14 (SRRA_other, ``link_*``). A
*regression* is a flagged change in the worse direction, except the privacy metrics of
unprotected defenses (``protected: false``, e.g. ``none``): there a "worse" number means a stronger
attacker, which is the attack's business, not a defense regression (still listed and flagged) —
and a flagged change the other way is an *attack-strength* regression (ALGORITHMS §15: a weaker
attack looks like a better defense everywhere else; kind ``attack strength``).
``--fail-on-regression`` exits 1 when there is a regression of either kind.

Rows are sorted flagged first, then by relative size ``|Δ| / max(|A|, |B|)`` so that PSNR's
decibels and SSIM's unit interval rank on one scale.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.environment import environment_diff, environment_key
from bench.reporting.cells import (DIGEST, ITEMS, PRIVACY_COLUMNS, acc_columns, cells_frame,
                                   load_cells)
from bench.reporting.stats import MIN_REPLICATES, TestResult, difference_test, holm
from bench.reporting.tables import per_defense_seed

#: +1: higher is better, −1: lower is better (for the defender)
PRIVACY_DIRECTION = {"S1": 1, "S2": 1, "S3": 1, "S4": 1, "raw_pp": 1, "MSE": 1,
                     "SSIM": -1, "PSNR": -1, "SRRA": -1, "SRRA_far1e-3": -1,
                     # ALGORITHMS §14: identity-level leaks, lower is better for the defender
                     "SRRA_other": -1, "SRRA_other_far1e-3": -1, "link_verif_acc": -1,
                     "link_tar@far1e-3": -1, "link_rank1": -1, "link_rank5": -1}
SPREAD_FACTOR = 2.0
UNTESTABLE_UNPAIRED = "untestable (other items, one replicate: add --seeds/--folds)"
REPRODUCTION = "paired bootstrap over items (same seed and settings: reproduction check)"
MORE_SEEDS = "--seeds 0,1,2"
NOISE = 1e-9
ALPHA = 0.05  # significance level after Holm adjustment


def direction(metric: str) -> tuple[str, int]:
    """(``"utility"`` or ``"privacy"``, +1 if higher is better else −1)."""
    if metric.startswith("acc_"):
        return "utility", 1
    if metric in PRIVACY_DIRECTION:
        return "privacy", PRIVACY_DIRECTION[metric]
    raise KeyError(metric)


@dataclass
class Comparison:
    """The differences between two runs; ``metrics`` has one row per compared metric."""

    run_a: str
    run_b: str
    settings: list[tuple[str, Any, Any]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    environment: list[str] = field(default_factory=list)  # what differs, when it can change numbers

    @property
    def changed(self) -> pd.DataFrame:
        return self.metrics[self.metrics["changed"]] if not self.metrics.empty else self.metrics

    @property
    def regressions(self) -> pd.DataFrame:
        return self.metrics[self.metrics["regression"]] if not self.metrics.empty else self.metrics

    @property
    def identical(self) -> bool:
        return (not self.settings and not self.only_a and not self.only_b and self.changed.empty
                and not self.environment)


def resolve_run(name: str, results_dir: Path = Path("results")) -> Path:
    """A run folder from a path or a run id under ``results_dir/runs``."""
    for cand in (Path(name), Path(results_dir) / "runs" / name):
        if (cand / "cells").is_dir():
            return cand
    raise BenchError(f"run {name!r} not found: give a run folder (with cells/) or a run id under "
                     f"{Path(results_dir) / 'runs'}")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    cfg.pop("run_id", None)  # differs by construction; not a setting
    return _flatten(cfg)


def _per_plugin(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Flattened options of each defense/attack, status of each cell, harness version."""
    out: dict[str, Any] = {}
    for r in records:
        for k, v in _flatten(r.get("defense_options") or {}).items():
            out[f"defense_options[{r['defense']}].{k}"] = v
        for k, v in _flatten(r.get("attack_options") or {}).items():
            out[f"attack_options[{r['attack']}].{k}"] = v
        out[f"status[{r['defense']} × {r['attack']}]"] = r.get("status", "ok")
        out["harness_version"] = r.get("harness_version")
    return out


def _stats(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table: defense, attack, metric, mean, std (NaN under two seeds), n, and ``items``:
    ``{(seed, fold): (digest, vector)}`` of the replicates that kept per-item vectors."""
    df = cells_frame(records)
    cols = ["defense", "attack", "metric", "mean", "std", "n", "items", "values", "replicates"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    if "fold" not in df:
        df["fold"] = None
    acc = per_defense_seed(df).assign(attack="*")
    ok = df[df["status"].fillna("ok") == "ok"]
    rows = []
    for frame, metrics in ((acc, acc_columns(df)), (ok, PRIVACY_COLUMNS + ["raw_pp"])):
        for (defense, attack), sub in frame.groupby(["defense", "attack"], sort=False):
            for m in metrics:
                vals = sub[m].dropna()
                items, replicates = {}, {}
                for _, r in sub.iterrows():
                    key = (r["seed"], r["fold"] if r["fold"] == r["fold"] else None)  # NaN → None
                    if r[m] == r[m] and r[m] is not None:
                        replicates[key] = (None, [float(r[m])])
                    v = r[f"{ITEMS}{m}"] if f"{ITEMS}{m}" in sub else None
                    if isinstance(v, list):
                        items[key] = (r[f"{DIGEST}{m}"], v)
                rows.append({"defense": defense, "attack": attack, "metric": m,
                             "mean": vals.mean() if len(vals) else math.nan,
                             "std": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                             "n": int(len(vals)), "items": items,
                             "values": vals.astype(float).tolist(), "replicates": replicates})
    return pd.DataFrame(rows, columns=cols)


def _inconclusive(t: TestResult) -> TestResult:
    r = t.n_replicates
    return TestResult(t.delta, t.p, f"{t.test}: inconclusive ({r} replicate{'s' if r != 1 else ''}"
                      f"; add {MORE_SEEDS})", t.low, t.high, r)


def _test(items_a: dict, items_b: dict, reproduction: bool) -> tuple[TestResult | None, bool]:
    """(test of B − A on per-item vectors, whether it may flag), or (None, False) when a side has
    no vectors (see the module doc: replicate-level t; one replicate only as a reproduction
    check)."""
    if not items_a or not items_b:
        return None, False
    t = difference_test(items_a, items_b)
    if t.n_replicates >= MIN_REPLICATES:
        return t, True
    if t.n_replicates == 1 and not t.test.startswith("paired bootstrap"):
        # Different items and one trained model on a side: a bootstrap over the items sees the
        # sampling of pairs/targets but not the training noise between seeds, which on ORL is as
        # large (measured: resrec SSIM on `none` .991 vs .936 for seeds 0 and 1, p = 5e-39 if
        # tested this way). Only replicates on both sides measure it.
        return TestResult(math.nan, math.nan, UNTESTABLE_UNPAIRED), False
    if t.n_replicates == 1 and reproduction:
        return TestResult(t.delta, t.p, REPRODUCTION, t.low, t.high, 1), True
    return _inconclusive(t), False


def _replicate_test(reps_a: dict, reps_b: dict) -> tuple[TestResult | None, bool]:
    """t over replicate values (paired when the replicates match, else Welch) for a metric
    without per-item vectors, or (None, False) with fewer than two replicates on a side."""
    if len(reps_a) < 2 or len(reps_b) < 2:
        return None, False
    t = difference_test(reps_a, reps_b)
    if t.n_replicates >= MIN_REPLICATES:
        return t, True
    return _inconclusive(t), False


def _flag(a: float, b: float, sa: float, sb: float) -> tuple[bool, bool, float]:
    """(changed, beyond spread, spread) under the module's rule."""
    if math.isnan(a) and math.isnan(b):
        return False, False, math.nan
    if math.isnan(a) or math.isnan(b):
        return True, True, math.nan
    delta = abs(b - a)
    changed = delta > NOISE * max(1.0, abs(a), abs(b))
    stds = [s for s in (sa, sb) if not math.isnan(s)]
    spread = max(stds) if stds else math.nan
    if not stds or spread == 0.0:
        return changed, changed, spread
    return changed, changed and delta > SPREAD_FACTOR * spread, spread


def _same(a: Any, b: Any) -> bool:
    """Equal settings; 1 == 1.0, and NaN equals NaN (an unset float option is not a change)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def compare_runs(run_a: Path, run_b: Path) -> Comparison:
    """Every setting and metric difference between two run folders."""
    rec_a, rec_b = load_cells(run_a), load_cells(run_b)
    comp = Comparison(str(run_a), str(run_b))
    sa = {**_config(Path(run_a)), **_per_plugin(rec_a)}
    sb = {**_config(Path(run_b)), **_per_plugin(rec_b)}
    cells_a = {f"{r['defense']} × {r['attack']}" for r in rec_a}
    cells_b = {f"{r['defense']} × {r['attack']}" for r in rec_b}
    comp.only_a, comp.only_b = sorted(cells_a - cells_b), sorted(cells_b - cells_a)
    for key in sorted(set(sa) | set(sb)):
        if key.startswith("status[") and (key[7:-1] not in cells_a or key[7:-1] not in cells_b):
            continue  # already listed as a cell in one run only
        va, vb = sa.get(key, "—"), sb.get(key, "—")
        if not _same(va, vb):
            comp.settings.append((key, va, vb))

    st = _stats(rec_a).merge(_stats(rec_b), on=["defense", "attack", "metric"], how="inner",
                             suffixes=("_a", "_b"))
    protected = {r["defense"]: bool(r.get("protected", True)) for r in rec_a + rec_b}
    env_a = {environment_key(r.get("environment")): r.get("environment") for r in rec_a}
    env_b = {environment_key(r.get("environment")): r.get("environment") for r in rec_b}
    # same settings, seeds and environment: B re-creates A float for float, so one replicate's
    # paired items may decide. Another environment (thread count, CPU model, library versions)
    # moves the floats by itself (measured: 2 → 1 torch threads moved the reference run's MSE by
    # 1e-5, "significant" on the same targets), which one replicate cannot tell from the code's
    reproduction = not comp.settings and set(env_a) == set(env_b)
    judged = [_test(ia, ib, reproduction) if ia and ib else _replicate_test(ra, rb)
              for ia, ib, ra, rb in zip(st["items_a"], st["items_b"], st["replicates_a"],
                                        st["replicates_b"])]
    # only the tests that may flag form the Holm family
    p_holm = holm([t.p if t is not None and decides else math.nan for t, decides in judged])
    # runs that kept per-item vectors: a metric without them (S1–S4, raw_pp) is only judged by
    # the seed spread when both runs measured one; with a single replicate it is untestable and
    # not flagged (its pair/target-level companions — SSIM, SRRA, accuracy — carry the test)
    itemized = any(bool(ia) and bool(ib) for ia, ib in zip(st["items_a"], st["items_b"]))
    rows = []
    for r, (t, decides), ph in zip(st.itertuples(index=False), judged, p_holm):
        kind, sign = direction(r.metric)
        changed, flagged, spread = _flag(r.mean_a, r.mean_b, r.std_a, r.std_b)
        label = t.test if t is not None else "seed spread"
        both = not (math.isnan(r.mean_a) or math.isnan(r.mean_b))
        if t is not None and t.test != "none" and both:
            # a deciding test decides, not the spread; an inconclusive one never flags
            flagged = changed and decides and ph < ALPHA
        elif itemized and both and (math.isnan(r.std_a) or math.isnan(r.std_b)):
            flagged, label = False, "untestable (one replicate, no per-item data)"
        delta = r.mean_b - r.mean_a
        worse = changed and not math.isnan(delta) and sign * delta < 0
        counts = kind == "utility" or protected.get(r.defense, True)
        # ALGORITHMS §15: on an unprotected defense a privacy number that got better for the
        # defender is an attack that got weaker — the attack's regression (measured: every
        # reconstruction blanked passed the gate as "0 regressions" before this rule)
        weaker = (kind == "privacy" and not protected.get(r.defense, True) and flagged
                  and not math.isnan(delta) and sign * delta > 0)
        if weaker:
            kind = "attack strength"
        scale = max(abs(r.mean_a), abs(r.mean_b)) if not math.isnan(delta) else math.nan
        rows.append({"defense": r.defense, "attack": r.attack, "metric": r.metric, "kind": kind,
                     "mean_a": r.mean_a, "std_a": r.std_a, "n_a": r.n_a,
                     "mean_b": r.mean_b, "std_b": r.std_b, "n_b": r.n_b, "delta": delta,
                     "rel": abs(delta) / scale if scale else (0.0 if delta == 0 else math.inf),
                     "spread": spread,
                     "test": label,
                     "delta_low": t.low if t is not None else math.nan,
                     "delta_high": t.high if t is not None else math.nan,
                     "p": t.p if t is not None else math.nan, "p_holm": ph,
                     "changed": changed, "flagged": flagged,
                     "worse": worse, "regression": (flagged and worse and counts) or weaker})
    m = pd.DataFrame(rows)
    if not m.empty:
        m["_nan"] = m["rel"].isna()  # appeared / vanished metrics first among the flagged
        m = (m.sort_values(["flagged", "_nan", "rel"], ascending=[False, False, False],
                           kind="stable").drop(columns="_nan").reset_index(drop=True))
    if set(env_a) != set(env_b):
        first_a, first_b = next(iter(env_a.values()), None), next(iter(env_b.values()), None)
        comp.environment = environment_diff(first_a, first_b) or [
            f"environment keys {sorted(env_a)} → {sorted(env_b)}"]
    comp.metrics = m
    return comp


def _num(v: float, digits: int = 4) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _p(p: float, p_holm: float) -> str:
    if p is None or math.isnan(p):
        return ""
    return f"{p:.2g} ({p_holm:.2g})"


def _ci(low: float, high: float) -> str:
    if not all(isinstance(v, float) and math.isfinite(v) for v in (low, high)):
        return ""
    return f"[{_num(low, 3)}, {_num(high, 3)}]"


def _cell(mean: float, std: float, n: int) -> str:
    spread = "" if math.isnan(std) else f" ±{_num(std, 2)}"
    return f"{_num(mean)}{spread} (n={n})"


def format_comparison(comp: Comparison, show_all: bool = False) -> str:
    """Human-readable report; unchanged metrics are only counted unless ``show_all``."""
    lines = [f"A: {comp.run_a}", f"B: {comp.run_b}"]
    if comp.identical:
        lines.append("no differences: same settings, same cells, every metric equal")
        return "\n".join(lines)
    if comp.environment:
        lines.append("\nenvironments differ in what can change numbers (differences below may "
                     "be the environment's, not the settings'):")
        lines += [f"  {d}" for d in comp.environment]
    if comp.settings:
        lines.append(f"\nsettings that differ ({len(comp.settings)}):")
        lines += [f"  {k}: {a!r} → {b!r}" for k, a, b in comp.settings]
    for label, cells in (("only in A", comp.only_a), ("only in B", comp.only_b)):
        if cells:
            lines.append(f"\ncells {label}: " + ", ".join(cells))
    m = comp.metrics
    shown = m if show_all else comp.changed
    if not shown.empty:
        lines.append(f"\nmetric differences (B − A with its 95 % interval; ! = significant: "
                     f"Holm-adjusted p < {ALPHA} in a t-test over replicates (paired when both "
                     f"runs have the same seeds/folds, else Welch), which needs ≥ {MIN_REPLICATES} "
                     "replicates a side; with one replicate only a reproduction check (same "
                     "settings, same items) decides; old runs without per-item data and one seed: "
                     "beyond 2×seed spread; "
                     "▼ = worse for the defender; * = counts as a regression):")
        table = pd.DataFrame({
            "defense": shown["defense"], "attack": shown["attack"], "metric": shown["metric"],
            "A": [_cell(a, s, n) for a, s, n in zip(shown["mean_a"], shown["std_a"], shown["n_a"])],
            "B": [_cell(b, s, n) for b, s, n in zip(shown["mean_b"], shown["std_b"], shown["n_b"])],
            "Δ": [_num(d) for d in shown["delta"]],
            "95 %": [_ci(lo, hi) for lo, hi in zip(shown["delta_low"], shown["delta_high"])],
            "rel": ["" if math.isnan(x) or math.isinf(x) else f"{100 * x:.1f}%" for x in shown["rel"]],
            "p (Holm)": [_p(p, ph) for p, ph in zip(shown["p"], shown["p_holm"])],
            "test": shown["test"],
            "": [("!" if f else " ") + ("▼" if w else " ") + ("*" if r else " ") for f, w, r in
                 zip(shown["flagged"], shown["worse"], shown["regression"])],
        })
        lines.append(table.to_string(index=False))
    unchanged = len(m) - len(comp.changed) if not m.empty else 0
    reg = comp.regressions
    lines.append(f"\n{len(comp.changed)} metric(s) changed ({int(m['flagged'].sum()) if not m.empty else 0}"
                 f" significantly), {unchanged} unchanged; {len(reg)} regression(s)")
    for r in reg.itertuples(index=False):
        lines.append(f"  regression: {r.defense} × {r.attack} {r.metric} ({r.kind}) "
                     f"{_num(r.mean_a)} → {_num(r.mean_b)}")
    return "\n".join(lines)
