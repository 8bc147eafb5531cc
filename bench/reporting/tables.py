"""The tables of a run, derived from its cell records alone (ARCHITECTURE "Results are data").

Every table reports the mean over seeds and, in a ``<col>_std`` column next to the means, the
sample standard deviation (ddof = 1; empty with a single seed: no spread was measured).

- ``table2.csv``: `[H]` Table 2 (Score, Score_pp, Score_cls, accuracy per verification set) plus
  S1–S4, SSIM/PSNR/MSE and SRRA. Scores are min-max normalised over the *protected* defenses of
  the same attack (ALGORITHMS §8), computed from the seed means, so the unprotected row has none.
- ``table1.csv``: `[H]` Table 1, MixUp / InstaHide accuracy in RGB vs the frequency domain.
- ``table3.csv``: `[H]` Table 3, the share of each k chosen by each AdaMixUp variant.
- ``advface_table1.csv`` / ``advface_table2.csv``: `[A]` Tables 1 and 2 for the feature-domain
  defenses and DuetFace (reconstruction quality; accuracy).
- ``table4.csv``: `[A]` Table 4, SSIM for AdvFace's shadow decoder × the attacker's decoder.
- ``table5.csv``: SSIM and SRRA per kind of attacker (decoder, CGAN, Carlini learned / oracle,
  white-box), ``n/a`` where an attack does not apply.
- ``worst_case.csv``: per defense and knowledge, the strongest attack on each leak metric and the
  attack families covered (ALGORITHMS §15, :mod:`bench.reporting.worst_case`).
- ``convergence.csv``: per cell, whether its attack's loss had stopped falling
  (:mod:`bench.reporting.curves`); a (defense, attack) row of ``table2.csv`` with a cell that had
  not says ``not converged`` in its ``note``. Records without training curves give no table.

Cells where an attack does not apply (``status: n/a``) keep their row in ``table2.csv`` with the
reason in its ``note`` column and no privacy numbers.

A table is only written when the run has the cells it needs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.reporting.cells import (ITEMS, PRIVACY_COLUMNS, RECON_COLUMNS, _num, acc_columns,
                                   base_name, cells_frame, independent_columns, is_stat_column,
                                   primary_acc_column)
from bench.reporting.curves import NOT_CONVERGED, cells_not_converged, convergence_table, rule_text
from bench.reporting.stats import interval, replicate_interval
from bench.reporting.worst_case import underpowered_attacks, worst_case
from bench.store import atomic_write_text


def mean_std(df: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """Group by ``keys``: per column the mean over replicates (seeds × folds), ``<col>_std``
    (ddof 1 over replicates; NaN with one: a spread of 0 would claim a precision we lack), the
    95 % interval ``<col>_ci_low`` / ``<col>_ci_high`` (ALGORITHMS §12.1,
    :mod:`bench.reporting.stats`: Student-t on the replicate means with two or more replicates;
    with one, a bootstrap over its pairs or targets, which describes that one trained model only),
    then ``n_seeds`` and, when the run has identity folds, ``n_folds``."""
    rows = []
    for key, sub in df.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        for c in cols:
            items = sub[f"{ITEMS}{c}"] if f"{ITEMS}{c}" in sub else None
            if items is not None and items.map(lambda v: isinstance(v, list)).all():
                iv = interval(list(items))
            else:
                iv = replicate_interval(list(sub[c]))
            row[c] = sub[c].mean()  # the table's number is the mean of the cells' own means
            row[f"{c}_std"] = sub[c].std(ddof=1)
            row[f"{c}_ci_low"], row[f"{c}_ci_high"] = iv.low, iv.high
        row["n_seeds"] = sub["seed"].nunique() if "seed" in sub else len(sub)
        if "fold" in sub and sub["fold"].notna().any():
            row["n_folds"] = int(sub["fold"].nunique())
        rows.append(row)
    out = pd.DataFrame(rows)
    ordered = (keys + cols + [f"{c}_std" for c in cols] + [f"{c}_ci_{e}" for c in cols
                                                            for e in ("low", "high")])
    extra = [c for c in ("n_seeds", "n_folds") if c in out]
    return out[ordered + extra] if not out.empty else pd.DataFrame(columns=ordered + extra)


def with_privacy_budget(out: pd.DataFrame, cells: pd.DataFrame, key: str) -> pd.DataFrame:
    """Add ``epsilon`` / ``delta`` (DP-SGD's accounted budget, mean over replicates) and
    ``dp_level`` (the unit ε protects: ``image`` or ``identity``, issue 20) to every row of a
    defense that has one, when any cell of the run does (ALGORITHMS §4.4)."""
    if "epsilon" not in cells or not cells["epsilon"].notna().any():
        return out
    budget = cells.groupby("defense")[["epsilon", "delta"]].mean()
    levels = (cells.dropna(subset=["epsilon"]).groupby("defense")["dp_level"].first()
              if "dp_level" in cells else pd.Series(dtype=object))
    return out.assign(epsilon=out[key].map(budget["epsilon"]), delta=out[key].map(budget["delta"]),
                      dp_level=out[key].map(levels))


def budget_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in ("epsilon", "delta", "dp_level") if c in df]


def ci_columns(cols: list[str]) -> list[str]:
    """``<col>_ci_low``, ``<col>_ci_high`` of each column, in order."""
    return [f"{c}_ci_{end}" for c in cols for end in ("low", "high")]


def replicate_columns(df: pd.DataFrame) -> list[str]:
    """``n_seeds`` and, for runs with identity folds, ``n_folds``."""
    return [c for c in ("n_seeds", "n_folds") if c in df]


def per_defense_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (defense, seed): accuracy does not depend on the attack, so each attack's cell
    repeats it; counting it once per attack would weight defenses by their number of attacks."""
    subset = ["dataset", "defense", "seed"] + (["fold"] if "fold" in df else [])
    return df.drop_duplicates(subset=subset, keep="first")


# -- [H] tables -----------------------------------------------------------------------------------
def table2(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[H] Table 2 layout, one row per (defense, attack): means over seeds, then ``_std`` columns."""
    from metrics.scores import score, score_cls, score_pp

    df = cells_frame(records)
    if df.empty:
        return df
    acc_cols = acc_columns(df)
    num_cols = acc_cols + PRIVACY_COLUMNS + ["raw_pp"] + independent_columns(df)
    grouped = mean_std(df, ["defense", "attack"], num_cols)
    df["note"] = df["na_reason"].map(lambda r: f"n/a: {r}" if isinstance(r, str) else
                                     "") if "na_reason" in df else ""
    df.loc[(df["status"] == "n/a") & (df["note"] == ""), "note"] = "n/a"
    if "knowledge" not in df:
        df["knowledge"] = None
    firsts = df.groupby(["defense", "attack"], sort=False).agg(
        {"protected": "first", "perceptual_metric": "first", "note": "first",
         "knowledge": "first"}).reset_index()
    grouped = grouped.merge(firsts, on=["defense", "attack"], how="left")
    first_acc = primary_acc_column(acc_cols)
    parts = []
    for _, sub in grouped.groupby("attack", sort=False):
        sub = sub.copy()
        prot = sub[sub["protected"].fillna(True).astype(bool)]
        cls = score_cls(dict(zip(prot["defense"], prot[first_acc]))) if first_acc else {}
        pp = score_pp(dict(zip(prot["defense"], prot["raw_pp"])))
        sub["Score_cls"] = sub["defense"].map(cls)
        sub["Score_pp"] = sub["defense"].map(pp)
        sub["Score"] = [score(p, c) for p, c in zip(sub["Score_pp"], sub["Score_cls"])]
        parts.append(sub)
    out = with_privacy_budget(pd.concat(parts), df, "defense")
    lagging = cells_not_converged(records)  # attacks still improving when they stopped
    if lagging:
        out["note"] = ["; ".join(x for x in (n, NOT_CONVERGED if (d, a) in lagging else "") if x)
                       for d, a, n in zip(out["defense"], out["attack"], out["note"].fillna(""))]
    weak = underpowered_attacks(records)  # ALGORITHMS §15: under its floor on `none` in this run
    if weak:
        out["note"] = ["; ".join(x for x in (n, "underpowered on none" if a in weak else "") if x)
                       for a, n in zip(out["attack"], out["note"].fillna(""))]
    cols = (["defense", "attack", "knowledge", "Score", "Score_pp", "Score_cls"] + num_cols
            + [f"{c}_std" for c in num_cols] + ci_columns(num_cols)
            + ["perceptual_metric"] + replicate_columns(out) + budget_columns(out) + ["note"])
    out["knowledge"] = out["knowledge"].fillna("")  # n/a cells and pre-option records: blank
    table = out[cols].rename(columns={"defense": "Method", "attack": "Attack",
                                      "knowledge": "Knowledge"}).reset_index(drop=True)
    table.attrs["undefined"] = undefined_notes(out, first_acc)
    table.attrs["explained"] = ["Score", "Score_pp", "Score_cls", "S1", "S2", "raw_pp"]
    return table


def undefined_notes(out: pd.DataFrame, acc_col: str | None) -> list[str]:
    """Why Table 2 has no value in a cell (printed under the console table, where it reads "–"):
    scores need two protected defenses per attack that differ (min-max, ALGORITHMS §8), rank
    protected defenses only, and S1/S2 (hence raw_pp and the scores) need an image view."""
    notes = []
    prot = out["protected"].fillna(True).astype(bool)
    for attack, sub in out[prot].groupby("attack", sort=False):
        n = int(sub[acc_col].notna().sum()) if acc_col else 0
        if sub["Score_cls"].isna().all():
            notes.append(f"Score, Score_pp, Score_cls ({attack}): min-max over the protected "
                         f"defenses needs ≥ 2 that differ, this run has {n}; add another defense "
                         "to --defenses")
    unprotected = sorted(set(out.loc[~prot, "defense"]))
    if unprotected:
        notes.append(f"Score, Score_pp, Score_cls of {', '.join(unprotected)}: not scored — "
                     "unprotected rows are the reference; scores rank the protected defenses")
    no_view = sorted(set(out.loc[prot & out["S1"].isna() & out["S3"].notna(), "defense"]))
    if no_view:
        notes.append(f"S1, S2, raw_pp, Score_pp, Score of {', '.join(no_view)}: undefined — "
                     "the defense publishes no image view of the protected data (a feature map), "
                     "and S1/S2 compare one with the original")
    return notes


TABLE1_BASES = {"mixup_rgb": ("MixUp", "RGB"), "mixup_fd": ("MixUp", "FD"),
                "instahide_rgb": ("InstaHide", "RGB"), "instahide_fd": ("InstaHide", "FD")}


def table1(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[H] Table 1: accuracy (%) of MixUp and InstaHide mixing pixels (RGB) vs BDCT maps (FD).

    One row per (method, verification set); a variant (``mixup_fd.k3``) is its own method, paired
    with the RGB variant of the same suffix.
    """
    df = cells_frame(records)
    if df.empty:
        return pd.DataFrame()
    df = per_defense_seed(df[df["defense"].map(lambda d: base_name(d) in TABLE1_BASES)])
    if df.empty:
        return pd.DataFrame()
    rows = []
    for _, r in df.iterrows():
        family, domain = TABLE1_BASES[base_name(r["defense"])]
        variant = r["defense"].partition(".")[2]
        method = f"{family} ({variant})" if variant else family
        for col in acc_columns(df):
            if not math.isnan(r[col]):
                rows.append({"Method": method, "verification_set": col[4:], "domain": domain,
                             "seed": r["seed"], "acc": r[col]})
    long = pd.DataFrame(rows)
    if long.empty:
        return long
    agg = mean_std(long, ["Method", "verification_set", "domain"], ["acc"])
    wide = agg.set_index(["Method", "verification_set", "domain"]).unstack("domain")
    out = pd.DataFrame(index=wide.index)
    for domain in ("RGB", "FD"):
        for stat, suffix in (("acc", ""), ("acc_std", "_std"), ("n_seeds", "_n_seeds")):
            out[f"{domain}{suffix}"] = wide[(stat, domain)] if (stat, domain) in wide else math.nan
        for end in ("low", "high"):
            stat = f"acc_ci_{end}"
            out[f"{domain}_ci_{end}"] = wide[(stat, domain)] if (stat, domain) in wide else math.nan
    for domain in ("RGB", "FD"):  # a missing side has no seeds, not NaN seeds
        out[f"{domain}_n_seeds"] = out[f"{domain}_n_seeds"].fillna(0).astype(int)
    return out.reset_index()


def table1_gaps(records: list[dict[str, Any]]) -> list[str]:
    """Defenses a run lacks for a two-sided Table 1: the RGB (or FD) partner of each MixUp /
    InstaHide defense it has."""
    have = {r["defense"] for r in records}
    partner = {"_rgb": "_fd", "_fd": "_rgb"}
    missing = []
    for name in sorted(have):
        base, _, variant = name.partition(".")
        if base not in TABLE1_BASES:
            continue
        stem, _, side = base.rpartition("_")
        other = f"{stem}{partner['_' + side]}" + (f".{variant}" if variant else "")
        if other not in have and other not in missing:
            missing.append(other)
    return missing


def report_notes(records: list[dict[str, Any]]) -> list[str]:
    """One-line notes a reader of the tables needs: substitutes used, half-empty tables."""
    notes = []
    metric = records[0].get("perceptual_metric") if records else None
    if metric and metric != "lpips":
        notes.append(f"S1/S3 use {metric}; set metrics.lpips_weights to the AlexNet weights for LPIPS")
    gaps = table1_gaps(records)
    if gaps:
        notes.append(f"table1.csv is one-sided; add {','.join(gaps)} to --defenses for the other column")
    lagging = cells_not_converged(records)
    if lagging:
        notes.append(f"{len(lagging)} defense × attack row(s) marked '{NOT_CONVERGED}': "
                     f"{rule_text()}; see convergence.csv, or train the attack longer")
    return notes


def own_k_values(rec: dict[str, Any]) -> list[int]:
    """The k an AdaMixUp variant may choose: ``record.k_values`` (or the option of that name),
    else the k its ``record.k_share`` mentions."""
    r = rec.get("record") or {}
    ks = r.get("k_values") or (rec.get("defense_options") or {}).get("k_values") or r.get("k_share") or []
    try:
        return sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        return []


def table3(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[H] Table 3: share of each k drawn by each AdaMixUp variant (``record.k_share``).

    Only AdaMixUp: fixed-k mixing defenses record a k_share too (all mass on their k), which says
    nothing about a policy.
    """
    rows = []
    seen = set()
    for rec in records:
        shares = (rec.get("record") or {}).get("k_share")
        key = (rec.get("dataset"), rec["defense"], rec.get("seed"))
        if (base_name(rec["defense"]) != "adamixup" or not isinstance(shares, dict) or not shares
                or key in seen):
            continue
        seen.add(key)
        row = {"Method": rec["defense"], "seed": rec.get("seed")}
        # within the variant's own k set a k it never drew has share 0; outside it (k = 6 for
        # AdaMixUp 2–4) the share is not applicable and stays empty
        row.update({f"k={k}": 0.0 for k in own_k_values(rec)})
        row.update({f"k={int(k)}": _num(v) for k, v in shares.items()})
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    ks = sorted((c for c in df.columns if c.startswith("k=")), key=lambda c: int(c[2:]))
    out = mean_std(df, ["Method"], ks)
    return out[["Method"] + ks + [f"{k}_std" for k in ks] + ci_columns(ks) + replicate_columns(out)]


# -- [A] tables -----------------------------------------------------------------------------------
#: compared in [A]'s tables although they publish frequency channels rather than feature maps
ADVFACE_BASELINES = {"duetface"}


def _feature_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Cells of the defenses [A]'s tables compare: feature-domain ones, plus DuetFace."""
    if df.empty:
        return df
    keep = (df["domain"] == "feature") if "domain" in df else pd.Series(False, index=df.index)
    return df[keep | df["defense"].map(lambda d: base_name(d) in ADVFACE_BASELINES)]


def advface_table1(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[A] Table 1: SSIM / PSNR / MSE / SRRA of the reconstructions of each feature-domain defense,
    one column group per dataset; for the ResRec attacker when the run has it (as the paper),
    else one row per (defense, attack)."""
    df = _feature_cells(cells_frame(records))
    if df.empty:
        return pd.DataFrame()
    df = df[df["status"].fillna("ok") == "ok"]
    if (df["attack"] == "resrec").any():
        df = df[df["attack"] == "resrec"]
    if df.empty:
        return pd.DataFrame()
    recon = RECON_COLUMNS + independent_columns(df)
    agg = mean_std(df, ["defense", "attack", "dataset"], recon)
    out = None
    for dataset, sub in agg.groupby("dataset", sort=False):
        cols = recon + [f"{c}_std" for c in recon] + ci_columns(recon) + replicate_columns(sub)
        sub = sub.set_index(["defense", "attack"])[cols]
        sub.columns = [f"{dataset}_{c}" for c in cols]
        out = sub if out is None else out.join(sub, how="outer")
    out = with_privacy_budget(out.reset_index(), df, "defense")
    return out.rename(columns={"defense": "Method", "attack": "Attack"})


def advface_table2(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[A] Table 2: verification accuracy (%) of each feature-domain defense (advface online and
    ``advface.offline`` included), one column per verification set."""
    df = _feature_cells(cells_frame(records))
    if df.empty:
        return pd.DataFrame()
    df = per_defense_seed(df)
    cols = [c for c in acc_columns(df) if df[c].notna().any()]
    if not cols:
        return pd.DataFrame()
    out = with_privacy_budget(mean_std(df, ["defense"], cols), df, "defense")
    return out[["defense"] + cols + [f"{c}_std" for c in cols] + ci_columns(cols)
               + replicate_columns(out) + budget_columns(out)].rename(
        columns={"defense": "Method"})


def table4(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[A] Table 4: SSIM of the reconstruction for AdvFace's shadow decoder (rows, from
    ``defense_options.shadow``) × the attacker's decoder (columns)."""
    rows = [{"defense": r["defense"], "shadow": str(r["defense_options"]["shadow"]),
             "attack": r["attack"], "seed": r.get("seed"),
             "SSIM": _num((r.get("privacy") or {}).get("SSIM")),
             f"{ITEMS}SSIM": (r.get("per_target") or {}).get("SSIM")}
            for r in records
            if base_name(r["defense"]) == "advface" and "shadow" in (r.get("defense_options") or {})
            and r.get("status", "ok") == "ok"]
    if not rows:
        return pd.DataFrame()
    agg = mean_std(pd.DataFrame(rows), ["shadow", "defense", "attack"], ["SSIM"])
    stats = ["SSIM", "SSIM_std", "SSIM_ci_low", "SSIM_ci_high"]
    wide = agg.set_index(["shadow", "defense", "attack"])[stats].unstack("attack")
    attacks = list(dict.fromkeys(agg["attack"]))
    out = pd.DataFrame(index=wide.index)
    for stat, suffix in zip(stats, ("", "_std", "_ci_low", "_ci_high")):
        for a in attacks:
            out[f"{a}{suffix}"] = wide[(stat, a)]
    out["n_seeds"] = agg.groupby(["shadow", "defense"], sort=False)["n_seeds"].max()
    return out.sort_index().reset_index()


#: Table 5 columns → the attacks that fill them, first present wins (issue 11, part 5)
TABLE5_COLUMNS = {
    "decoder": ("resrec", "urec", "transrec"),
    "CGAN": ("cgan",),
    "Carlini learned": ("carlini",),
    "Carlini oracle (upper bound)": ("carlini.oracle",),
    "white-box": ("ppfr_whitebox", "ppfr_whitebox.simulated"),
}


def table5(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Table 5: per defense, SSIM and SRRA of each kind of attack — black-box decoder, CGAN,
    Carlini decoupling with learned and with oracle assignment (an upper bound), the white-box
    attack. A cell where the attack does not apply reads ``n/a``; one not run stays empty. Written
    only when the run has a decoupling or white-box attack."""
    attacks = {r["attack"] for r in records}
    if not attacks & {"carlini", "carlini.oracle", "ppfr_whitebox", "ppfr_whitebox.simulated"}:
        return pd.DataFrame()
    df = cells_frame(records)
    rows = []
    for defense, sub in df.groupby("defense", sort=True):
        row: dict[str, Any] = {"Method": defense}
        for col, names in TABLE5_COLUMNS.items():
            hit = next((a for a in names if a in set(sub["attack"])), None)
            for metric in ("SSIM", "SRRA"):
                if hit is None:
                    row[f"{col} {metric}"] = math.nan
                    continue
                cells = sub[sub["attack"] == hit]
                ok = cells[cells["status"].fillna("ok") == "ok"]
                # rounded here: the n/a strings make the column non-numeric for the CSV writer
                row[f"{col} {metric}"] = "n/a" if ok.empty else round(float(ok[metric].mean()), 4)
            if hit is not None and len(names) > 1:
                row[f"{col} attack"] = hit
        rows.append(row)
    # DP-SGD's ε, δ and the unit ε protects, as in Table 2 (issue 20)
    return with_privacy_budget(pd.DataFrame(rows), df, "Method")


#: file stem → builder; build_report writes each non-empty one as ``<stem>.csv``.
TABLES: dict[str, Callable[[list[dict[str, Any]]], pd.DataFrame]] = {
    "table2": table2, "table1": table1, "table3": table3,
    "advface_table1": advface_table1, "advface_table2": advface_table2, "table4": table4,
    "table5": table5, "convergence": convergence_table, "worst_case": worst_case,
}

TABLE_TITLES = {
    "table2": "[H] Table 2 — privacy and utility per defense × attack",
    "table1": "[H] Table 1 — MixUp / InstaHide accuracy (%), RGB vs frequency domain",
    "table3": "[H] Table 3 — share of each k chosen by AdaMixUp",
    "advface_table1": "[A] Table 1 — reconstruction of feature-domain defenses",
    "advface_table2": "[A] Table 2 — accuracy (%) of feature-domain defenses",
    "table4": "[A] Table 4 — SSIM, AdvFace shadow decoder × attacker decoder",
    "table5": "Table 5 — SSIM / SRRA per kind of attacker (decoder, CGAN, Carlini learned / oracle, white-box)",
    "convergence": "Training convergence of each cell's attack (judged loss over its last epochs)",
    "worst_case": "Worst case per defense and knowledge: the strongest attack on each leak metric, "
                  "families covered (ALGORITHMS §15)",
}


def all_tables(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Every table the records support, in reading order; empty ones are left out."""
    return {name: df for name, fn in TABLES.items() if not (df := fn(records)).empty}


# -- writing --------------------------------------------------------------------------------------
def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4f"))


UNDEFINED = "–"
#: columns the console shows with their interval (besides every accuracy column)
HEADLINE = ("SSIM", "SRRA")


def _bound(v: float) -> str:
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def _with_interval(mean: Any, low: Any, high: Any) -> str:
    if not isinstance(mean, (int, float)) or not math.isfinite(mean):
        return UNDEFINED
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return f"{mean:.3f} [{_bound(low)}, {_bound(high)}]"
    return f"{mean:.3f}"


def interval_legend(df: pd.DataFrame) -> str:
    """What the ``[low, high]`` of the console table are, for the replicates the table has."""
    seeds = df["n_seeds"] if "n_seeds" in df else pd.Series([1])
    folds = df["n_folds"].fillna(1) if "n_folds" in df else pd.Series(1, index=seeds.index)
    reps = (seeds.fillna(1) * folds).astype(int)
    lo, hi = int(reps.min()), int(reps.max())
    if hi <= 1:
        return ("[low, high]: 95 % interval over the pairs / targets of one trained model per "
                "row — training noise is not in it; compare defenses with --seeds 0,1,2 "
                "(≥ 3 replicates)")
    span = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return (f"[low, high]: 95 % Student-t interval over {span} replicates (seeds × folds)"
            + ("; rows with one replicate: over its pairs / targets only" if lo == 1 else ""))


def format_table(df: pd.DataFrame) -> str:
    """A compact console rendering of a table: means (3 decimals), ``mean [low, high]`` for the
    headline columns (accuracy, SSIM, SRRA) when the table has their intervals, ``–`` where a
    value is undefined, and under the table what the intervals are and why values are missing
    (``df.attrs["undefined"]``, set by :func:`table2`)."""
    headline = [c for c in df.columns if (c.startswith("acc_") or c in HEADLINE)
                and not is_stat_column(c) and f"{c}_ci_low" in df]
    drop = [c for c in df.columns if c in ("perceptual_metric", "n_seeds", "n_folds")
            or is_stat_column(c)]
    shown = df.drop(columns=drop).copy()
    for c in shown.columns:
        if c in headline:
            shown[c] = [_with_interval(m, lo, hi) for m, lo, hi in
                        zip(df[c], df[f"{c}_ci_low"], df[f"{c}_ci_high"])]
        elif pd.api.types.is_float_dtype(shown[c]):
            shown[c] = [UNDEFINED if not math.isfinite(v) else f"{v:.3f}" for v in shown[c]]
        elif shown[c].dtype == object:
            shown[c] = [UNDEFINED if v is None or (isinstance(v, float) and math.isnan(v)) else v
                        for v in shown[c]]
    explained = set(df.attrs.get("explained", []))
    # a column no row has a value for (e.g. linkage scores in a run without linkage) stays in the
    # CSV but would only widen the console table
    empty = [c for c in shown.columns if c not in explained and len(shown)
             and (shown[c] == UNDEFINED).all()]
    shown = shown.drop(columns=empty)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        lines = [shown.to_string(index=False)]
    if headline:
        lines.append(interval_legend(df))
    lines += [f"{UNDEFINED} {n}" for n in df.attrs.get("undefined", [])]
    rest = [c for c in shown.columns if c not in explained and (shown[c] == UNDEFINED).any()]
    if rest:
        lines.append(f"{UNDEFINED} in {', '.join(rest)}: not measured for that row (no attack in "
                     "the run computes it, or the cell is n/a: see its note)")
    if empty:
        lines.append(f"not shown (no attack of the run measures them): {', '.join(empty)}")
    return "\n".join(lines)
