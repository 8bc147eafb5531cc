"""Tables derived from a run's cell JSONs — never written by training code.

``table2.csv`` follows the hybrid paper's Table 2 (Score, Score_pp, Score_cls, accuracy per
verification set) plus S1–S4, SSIM/PSNR/MSE and SRRA. Scores are min-max normalised over the
*protected* defenses of the same attack (ALGORITHMS §8), so the unprotected row has none.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.store import atomic_write_text

PRIVACY_COLUMNS = ["S1", "S2", "S3", "S4", "SSIM", "PSNR", "MSE", "SRRA", "SRRA_far1e-3"]


def load_cells(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable cell record of a run; a damaged one is named in a warning and skipped."""
    cells_dir = Path(run_dir) / "cells"
    if not cells_dir.is_dir():
        raise BenchError(f"{run_dir} has no cells/ folder; is it a run folder under results/runs/?")
    records = []
    for path in sorted(cells_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or "defense" not in rec or "attack" not in rec:
                raise ValueError("not a cell record")
            records.append(rec)
        except (ValueError, OSError) as exc:
            warnings.warn(f"skipping damaged cell file {path.name}: {exc}")
    return records


def cells_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell: identifiers, accuracy per verification set, privacy metrics."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {k: rec.get(k) for k in ("dataset", "defense", "attack", "seed", "status",
                                                       "protected", "perceptual_metric")}
        for vset, acc in (rec.get("accuracy") or {}).items():
            row[f"acc_{vset}"] = 100.0 * acc["accuracy_mean"]
        row.update({k: (rec.get("privacy") or {}).get(k, math.nan) for k in PRIVACY_COLUMNS})
        row["raw_pp"] = (rec.get("privacy") or {}).get("raw_pp", math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def table2(records: list[dict[str, Any]]) -> pd.DataFrame:
    """[H] Table 2 layout, one row per (defense, attack), means over seeds."""
    from metrics.scores import score, score_cls, score_pp

    df = cells_frame(records)
    if df.empty:
        return df
    acc_cols = [c for c in df.columns if c.startswith("acc_")]
    num_cols = acc_cols + PRIVACY_COLUMNS + ["raw_pp"]
    grouped = (df.groupby(["defense", "attack"], sort=False)
                 .agg({**{c: "mean" for c in num_cols}, "protected": "first",
                       "perceptual_metric": "first", "seed": "count"})
                 .rename(columns={"seed": "n_seeds"}).reset_index())
    first_acc = acc_cols[0] if acc_cols else None
    parts = []
    for _, sub in grouped.groupby("attack", sort=False):
        sub = sub.copy()
        prot = sub[sub["protected"].astype(bool)]
        cls = score_cls(dict(zip(prot["defense"], prot[first_acc]))) if first_acc else {}
        pp = score_pp(dict(zip(prot["defense"], prot["raw_pp"])))
        sub["Score_cls"] = sub["defense"].map(cls)
        sub["Score_pp"] = sub["defense"].map(pp)
        sub["Score"] = [score(p, c) for p, c in zip(sub["Score_pp"], sub["Score_cls"])]
        parts.append(sub)
    out = pd.concat(parts)
    cols = (["defense", "attack", "Score", "Score_pp", "Score_cls"] + acc_cols + PRIVACY_COLUMNS
            + ["raw_pp", "perceptual_metric", "n_seeds"])
    return out[cols].rename(columns={"defense": "Method", "attack": "Attack"})


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4f"))


def build_report(run_dir: Path) -> dict[str, Path]:
    """(Re)generate every table of a run from its cell JSONs; returns what was written."""
    run_dir = Path(run_dir)
    records = load_cells(run_dir)
    if not records:
        raise BenchError(f"{run_dir} has no readable cell records; run `python -m bench run` first")
    out = {"table2": run_dir / "table2.csv"}
    write_csv(table2(records), out["table2"])
    return out


def format_table(df: pd.DataFrame) -> str:
    """A compact console rendering of a table."""
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.3f}".format):
        return df.drop(columns=[c for c in ("perceptual_metric", "n_seeds") if c in df]).to_string(index=False)
