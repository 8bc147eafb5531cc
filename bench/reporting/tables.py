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
from bench.reporting.stats import interval, replicate_interval
from bench.store import atomic_write_text


def mean_std(df: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """Group by ``keys``: per column the mean over replicates (seeds × folds), ``<col>_std``
    (ddof 1 over replicates; NaN with one: a spread of 0 would claim a precision we lack), the
    95 % bootstrap interval ``<col>_ci_low`` / ``<col>_ci_high`` (over pairs or targets and
    replicates; over replicates alone for metrics without per-item vectors — ALGORITHMS §12,
    :mod:`bench.reporting.stats`), then ``n_seeds`` and, when the run has identity folds,
    ``n_folds``."""
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
    """Add ``epsilon`` / ``delta`` (DP-SGD's accounted budget, mean over replicates) to every row
    of a defense that has one, when any cell of the run does (ALGORITHMS §4.4)."""
    if "epsilon" not in cells or not cells["epsilon"].notna().any():
        return out
    budget = cells.groupby("defense")[["epsilon", "delta"]].mean()
    return out.assign(epsilon=out[key].map(budget["epsilon"]), delta=out[key].map(budget["delta"]))


def budget_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in ("epsilon", "delta") if c in df]


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
    cols = (["defense", "attack", "knowledge", "Score", "Score_pp", "Score_cls"] + num_cols
            + [f"{c}_std" for c in num_cols] + ci_columns(num_cols)
            + ["perceptual_metric"] + replicate_columns(out) + budget_columns(out) + ["note"])
    out["knowledge"] = out["knowledge"].fillna("")  # n/a cells and pre-option records: blank
    return out[cols].rename(columns={"defense": "Method", "attack": "Attack",
                                     "knowledge": "Knowledge"}).reset_index(drop=True)


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
    return pd.DataFrame(rows)


#: file stem → builder; build_report writes each non-empty one as ``<stem>.csv``.
TABLES: dict[str, Callable[[list[dict[str, Any]]], pd.DataFrame]] = {
    "table2": table2, "table1": table1, "table3": table3,
    "advface_table1": advface_table1, "advface_table2": advface_table2, "table4": table4,
    "table5": table5,
}

TABLE_TITLES = {
    "table2": "[H] Table 2 — privacy and utility per defense × attack",
    "table1": "[H] Table 1 — MixUp / InstaHide accuracy (%), RGB vs frequency domain",
    "table3": "[H] Table 3 — share of each k chosen by AdaMixUp",
    "advface_table1": "[A] Table 1 — reconstruction of feature-domain defenses",
    "advface_table2": "[A] Table 2 — accuracy (%) of feature-domain defenses",
    "table4": "[A] Table 4 — SSIM, AdvFace shadow decoder × attacker decoder",
    "table5": "Table 5 — SSIM / SRRA per kind of attacker (decoder, CGAN, Carlini learned / oracle, white-box)",
}


def all_tables(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Every table the records support, in reading order; empty ones are left out."""
    return {name: df for name, fn in TABLES.items() if not (df := fn(records)).empty}


# -- writing --------------------------------------------------------------------------------------
def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4f"))


def format_table(df: pd.DataFrame) -> str:
    """A compact console rendering of a table (means only; the CSV has the spreads)."""
    drop = [c for c in df.columns if c in ("perceptual_metric", "n_seeds", "n_folds")
            or is_stat_column(c)]
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.3f}".format):
        return df.drop(columns=drop).to_string(index=False)
