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
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.report import PRIVACY_COLUMNS, cells_frame, load_cells

KEY = ["dataset", "preset", "perceptual_metric", "settings", "defense", "attack"]
#: config parts that never change a cell's numbers (the seed is its own column)
IRRELEVANT_CONFIG = ("seeds", "device", "defenses", "attacks")


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
        df["preset"] = df["preset"].fillna(config.get("preset", "?"))
        df["mtime"] = [(run_dir / "cells" / r["_file"]).stat().st_mtime_ns for r in records]
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
    df = (df.sort_values("mtime").drop_duplicates(subset=KEY + ["seed"], keep="last"))
    acc = sorted(c for c in df.columns if c.startswith("acc_"))
    metrics = acc + PRIVACY_COLUMNS + ["raw_pp"]
    g = df.groupby(KEY, sort=True, dropna=False)
    out = g[metrics].mean()
    std = g[metrics].std(ddof=1).add_suffix("_std")
    out = out.join(std)
    out = out[[c for m in metrics for c in (m, f"{m}_std")]]  # mean next to its std
    out["n_seeds"] = g.size()
    out["seeds"] = g["seed"].agg(lambda s: ";".join(str(int(x)) for x in sorted(s)))
    out["runs"] = g["run_id"].agg(lambda s: ";".join(sorted(set(s))))
    out["harness_version"] = g["harness_version"].agg(
        lambda s: ";".join(sorted({str(x) for x in s if x is not None and x == x})))
    out = out.reset_index()
    # readable order: one block per dataset/preset/metric, defenses alphabetically within it
    return out.sort_values(["dataset", "preset", "perceptual_metric", "defense", "attack",
                            "settings"], kind="stable").reset_index(drop=True)


def write_leaderboard(results_dir: Path, path: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Rebuild and write ``results_dir/leaderboard.csv`` (or ``path``); return it and the table."""
    from bench.report import write_csv

    table = build_leaderboard(results_dir)
    path = Path(path) if path else Path(results_dir) / "leaderboard.csv"
    write_csv(table, path)
    return path, table
