"""``results/leaderboard.csv``: every run under ``results/runs`` folded into one row per
(dataset, defense, attack) and comparable setting, with mean ± std over seeds.

Rows are keyed by ``dataset, preset, perceptual_metric, settings, defense, attack``. Numbers from
incomparable settings are never averaged together: ``perceptual_metric`` separates LPIPS from its
1 − SSIM substitute, ``preset`` the CPU recipe from the paper's, and ``settings`` is a short hash of
everything else a cell's numbers depend on (the run's resolved config without its seed list,
device and other plugins' options, plus this cell's own defense and attack options) — so a run
with ``--set recognizer.epochs=3`` gets its own row next to the preset's.

The same (row key, seed) found in several runs is counted once (the most recently written cell):
re-running a matrix must not shrink the std by duplicating seeds. Scores (Score_pp, Score_cls) are
not listed: they are min-max normalised over the defenses *of one run* and mean nothing across runs.

Each metric has its mean, ``_std`` over seeds (and folds) and a 95 % interval ``_ci_low`` /
``_ci_high`` (ALGORITHMS §12.1): Student-t over the replicate means (seeds × folds,
``n_replicates``) with two or more, a bootstrap over the verification pairs / reconstruction
targets of the one trained model with one. Rows are ranked within each comparable block (same
dataset, preset, perceptual metric, environment and attack): ``rank_utility`` by the primary
verification accuracy (higher is better) and ``rank_privacy`` by the defense's *worst case*
over every attack run on it (ALGORITHMS §15: the highest SRRA — the share of reconstructions
re-identified, lower is better — of its rows, :func:`add_worst_case_rank`; the attack that
reached it, the families covered and which were not run are columns beside it;
``rank_privacy_attack`` keeps the per-attack rank). A row's rank is 1 + the number of rows whose
interval lies entirely on the better side of its own, counting only pairs of rows that both rest
on ≥ 3 replicates (``MIN_REPLICATES``: one trained model's item interval cannot see training
noise, §12.1); rows that are not separated share a rank (``tied_*`` says so): the table never
orders defenses on noise. ``environment`` (:mod:`bench.environment`) and the attacker ``knowledge`` are
part of the key: rows computed with different library versions, devices or thread counts are never
pooled. ``bench leaderboard`` also writes ``leaderboard.html`` (:mod:`bench.reporting.leaderboard_html`).
``bundles`` names where each row's cells came from: ``local``, or the results bundle a run was
merged from (``leaderboard --add FILE``, :func:`bench.bundle.submit`; its records are checked
against the schema first, and its settings and environment keep it in rows of its own unless
they are truly the same).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.reporting.cells import (PRIVACY_COLUMNS, cells_frame, is_stat_column, load_cells,
                                   primary_acc_column)
from bench.reporting.stats import MIN_REPLICATES
from bench.reporting.tables import mean_std, replicate_columns

KEY = ["dataset", "preset", "perceptual_metric", "environment", "settings", "defense", "attack",
       "knowledge"]
#: rows ranked against each other: everything in KEY but the defense's own identity and settings
BLOCK = ["dataset", "preset", "perceptual_metric", "environment", "attack", "knowledge"]
#: config parts that never change a cell's numbers (the seed is its own column)
IRRELEVANT_CONFIG = ("seeds", "device", "defenses", "attacks")
#: a run folder merged from a results bundle (``leaderboard --add``) holds its origin here
SUBMISSION = "submission.json"


def run_origin(run_dir: Path) -> str:
    """Where a run's cells came from: ``<bundle file> (sha256 <12 digits>)`` for a submission
    merged with ``leaderboard --add``, ``local`` for a run computed here."""
    try:
        origin = json.loads((Path(run_dir) / SUBMISSION).read_text())
        return f"{origin['bundle']} (sha256 {str(origin['sha256'])[:12]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "local"


def settings_hash(config: dict[str, Any], record: dict[str, Any]) -> str:
    """8 hex digits identifying what a cell's numbers depend on, beyond dataset/preset/seed."""
    relevant = {k: v for k, v in config.items() if k not in IRRELEVANT_CONFIG}
    blob = json.dumps({"config": relevant, "defense_options": record.get("defense_options") or {},
                       "attack_options": record.get("attack_options") or {}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def collect(runs_dir: Path) -> pd.DataFrame:
    """One row per measured cell of every run folder, with its settings hash and file time."""
    frames = []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if (p / "cells").is_dir()):
        try:
            config = json.loads((run_dir / "config.json").read_text()).get("config", {})
        except (OSError, ValueError) as exc:
            # without its config a run's settings are unknown: mixing it in could corrupt a row
            warnings.warn(f"skipping run {run_dir.name}: unreadable config.json ({exc})")
            continue
        records = [r for r in load_cells(run_dir) if r.get("status", "ok") == "ok"]
        if not records:
            continue
        df = cells_frame(records)
        df["run_id"] = [r.get("run_id") or run_dir.name for r in records]
        df["settings"] = [settings_hash(config, r) for r in records]
        df["bundle"] = run_origin(run_dir)
        # the defense's own settings (no attack options): its worst case pools its attacks (§15)
        df["defense_settings"] = [settings_hash(config, {**r, "attack_options": {}}) for r in records]
        df["preset"] = df["preset"].fillna(config.get("preset", "?"))
        df["mtime"] = [(run_dir / "cells" / r["_file"]).stat().st_mtime_ns for r in records]
        df["environment"] = df["environment_key"]
        df["knowledge"] = df["knowledge"].fillna("-")
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def build_leaderboard(results_dir: Path) -> pd.DataFrame:
    """The leaderboard table from every run under ``results_dir/runs``."""
    runs_dir = Path(results_dir) / "runs"
    if not runs_dir.is_dir():
        raise BenchError(f"{runs_dir} does not exist; run `python -m bench run --results "
                         f"{results_dir}` first")
    df = collect(runs_dir)
    if df.empty:
        raise BenchError(f"no readable measured cells under {runs_dir}")
    df["perceptual_metric"] = df["perceptual_metric"].fillna("unknown")
    if "fold" not in df:
        df["fold"] = None
    df["_fold"] = df["fold"].fillna(-1)
    df = (df.sort_values("mtime").drop_duplicates(subset=KEY + ["seed", "_fold"], keep="last"))
    acc = sorted(c for c in df.columns if c.startswith("acc_") and not is_stat_column(c)
                 and not c.startswith("_"))
    metrics = acc + PRIVACY_COLUMNS + ["raw_pp"]
    out = mean_std(df, KEY, metrics)
    out = out[KEY + [c for m in metrics for c in (m, f"{m}_std", f"{m}_ci_low", f"{m}_ci_high")]
              + replicate_columns(out)]
    g = df.groupby(KEY, sort=False, dropna=False)
    extra = pd.DataFrame({
        "seeds": g["seed"].agg(lambda s: ";".join(str(int(x)) for x in sorted(set(s)))),
        "n_replicates": g.apply(lambda sub: len(set(zip(sub["seed"], sub["_fold"]))),
                                include_groups=False),
        "runs": g["run_id"].agg(lambda s: ";".join(sorted(set(s)))),
        "bundles": g["bundle"].agg(lambda s: ";".join(sorted(set(s)))),
        "defense_settings": g["defense_settings"].first(),
        "harness_version": g["harness_version"].agg(
            lambda s: ";".join(sorted({str(x) for x in s if x is not None and x == x}))),
    }).reset_index()
    out = out.merge(extra, on=KEY, how="left")
    out = add_ranks(out, primary_acc_column(acc))
    families = dict(zip(df["attack"], df["attack_family"].fillna("other")))
    out = add_worst_case_rank(out, families)
    # readable order: one block per dataset/preset/metric, defenses alphabetically within it
    return out.sort_values(["dataset", "preset", "perceptual_metric", "environment", "defense",
                            "attack", "knowledge", "settings"], kind="stable").reset_index(drop=True)


def tie_ranks(mean: list[float], low: list[float], high: list[float],
              higher_is_better: bool, replicates: list[int] | None = None) -> list[float]:
    """1 + the number of rows whose interval lies entirely on the better side of each row's
    (rows with overlapping intervals can share a rank); NaN for rows without a value. Without
    intervals (NaN bounds), or with fewer than MIN_REPLICATES ``replicates`` (when given), a row
    is separated from no one."""
    reps = replicates if replicates is not None else [MIN_REPLICATES] * len(mean)
    out = []
    for i in range(len(mean)):
        if not math.isfinite(mean[i]):
            out.append(math.nan)
            continue
        better = 0
        for j in range(len(mean)):
            if j == i or not math.isfinite(mean[j]):
                continue
            if not all(map(math.isfinite, (low[i], high[i], low[j], high[j]))):
                continue
            if min(reps[i], reps[j]) < MIN_REPLICATES:
                continue
            better += (low[j] > high[i]) if higher_is_better else (high[j] < low[i])
        out.append(float(1 + better))
    return out


def add_ranks(table: pd.DataFrame, acc_col: str | None) -> pd.DataFrame:
    """``rank_utility`` / ``rank_privacy`` with ties (:func:`tie_ranks`) within each block."""
    table = table.copy()
    specs = [("utility", acc_col, True), ("privacy", "SRRA", False)]
    for name, col, higher in specs:
        table[f"rank_{name}"] = math.nan
        table[f"tied_{name}"] = False
        if col is None or col not in table:
            continue
        for _, idx in table.groupby(BLOCK, sort=False, dropna=False).groups.items():
            sub = table.loc[idx]
            reps = list(sub["n_replicates"]) if "n_replicates" in sub else None
            ranks = tie_ranks(list(sub[col]), list(sub[f"{col}_ci_low"]),
                              list(sub[f"{col}_ci_high"]), higher, reps)
            table.loc[idx, f"rank_{name}"] = ranks
            counts = pd.Series(ranks).value_counts()
            table.loc[idx, f"tied_{name}"] = [bool(r == r and counts.get(r, 0) > 1) for r in ranks]
    return table


#: a defense's worst case is taken over its rows in one such block (every attack, ALGORITHMS §15)
WORST_BLOCK = ["dataset", "preset", "perceptual_metric", "environment", "knowledge"]


def add_worst_case_rank(table: pd.DataFrame, families: dict[str, str]) -> pd.DataFrame:
    """ALGORITHMS §15: a defense's privacy is its worst case over the attacks run on it. Per
    defense (and its own settings, ``defense_settings``) within a :data:`WORST_BLOCK` block:
    ``worst_SRRA`` (the highest SRRA of its rows, with that row's interval and
    ``worst_SRRA_attack``), ``worst_link_rank1`` (+ ``_attack``), the attack ``families``
    covered and ``families_note`` when fewer than all of
    :data:`~bench.reporting.worst_case.FAMILIES` produced numbers. ``rank_privacy`` ranks the defenses
    by ``worst_SRRA`` (ties as :func:`tie_ranks`); the per-attack rank stays as
    ``rank_privacy_attack``."""
    from bench.reporting.worst_case import FAMILIES

    table = table.copy()
    table["rank_privacy_attack"] = table["rank_privacy"]
    table["tied_privacy_attack"] = table["tied_privacy"]
    for c in ("worst_SRRA", "worst_SRRA_ci_low", "worst_SRRA_ci_high", "worst_link_rank1"):
        table[c] = math.nan
    for c in ("worst_SRRA_attack", "worst_link_rank1_attack", "families", "families_note"):
        table[c] = ""
    keys = WORST_BLOCK + ["defense"] + (["defense_settings"] if "defense_settings" in table else [])
    gid = table.groupby(keys, sort=False, dropna=False).ngroup()
    top_srra: dict[int, Any] = {}
    for g, idx in table.groupby(gid, sort=False).groups.items():
        sub = table.loc[idx]
        fams = sorted({families.get(a, "other") for a in sub["attack"]})
        missing = [f for f in FAMILIES if f not in fams]
        table.loc[idx, "families"] = ";".join(fams)
        if missing:
            table.loc[idx, "families_note"] = (
                f"attacked by {len(FAMILIES) - len(missing)} of {len(FAMILIES)} families; none "
                f"from {', '.join(missing)} (not run, or not applicable)")
        for metric in ("SRRA", "link_rank1"):
            col = sub[metric].dropna() if metric in sub else pd.Series(dtype=float)
            if col.empty:
                continue
            top = col.idxmax()
            table.loc[idx, f"worst_{metric}"] = float(col[top])
            table.loc[idx, f"worst_{metric}_attack"] = sub.loc[top, "attack"]
            if metric == "SRRA":
                table.loc[idx, "worst_SRRA_ci_low"] = sub.loc[top, "SRRA_ci_low"]
                table.loc[idx, "worst_SRRA_ci_high"] = sub.loc[top, "SRRA_ci_high"]
                top_srra[g] = top
    rank_of: dict[int, float] = {}
    tied_of: dict[int, bool] = {}
    worst = table.loc[list(top_srra.values())].assign(_gid=list(top_srra))
    for _, idx in worst.groupby(WORST_BLOCK, sort=False, dropna=False).groups.items():
        sub = worst.loc[idx]
        reps = list(sub["n_replicates"]) if "n_replicates" in sub else None
        ranks = tie_ranks(list(sub["worst_SRRA"]), list(sub["worst_SRRA_ci_low"]),
                          list(sub["worst_SRRA_ci_high"]), False, reps)
        counts = pd.Series(ranks).value_counts()
        for g, rank in zip(sub["_gid"], ranks):
            rank_of[g], tied_of[g] = rank, bool(rank == rank and counts.get(rank, 0) > 1)
    table["rank_privacy"] = gid.map(rank_of).astype(float)
    table["tied_privacy"] = gid.map(tied_of).fillna(False).astype(bool)
    return table


def write_leaderboard(results_dir: Path, path: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Rebuild and write ``results_dir/leaderboard.csv`` (or ``path``) and the HTML page next to
    it (same name, ``.html``); return the CSV's path and the table."""
    from bench.reporting.leaderboard_html import write_leaderboard_html
    from bench.reporting.tables import write_csv

    table = build_leaderboard(results_dir)
    path = Path(path) if path else Path(results_dir) / "leaderboard.csv"
    write_csv(table, path)
    write_leaderboard_html(table, path.with_suffix(".html"))
    return path, table
