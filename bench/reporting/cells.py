"""Cell records of a run: load and check the JSONs, flatten them into one frame, name columns.

Everything in :mod:`bench.reporting` reads records through here (ARCHITECTURE "Results are data":
reports never touch training code).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.environment import environment_key

#: ALGORITHMS §14: reconstructions against *other* photos of the person, and identity linkage
IDENTITY_COLUMNS = ["SRRA_other", "SRRA_other_far1e-3", "link_verif_acc", "link_tar@far1e-3",
                    "link_rank1", "link_rank5"]
PRIVACY_COLUMNS = ["S1", "S2", "S3", "S4", "SSIM", "PSNR", "MSE", "SRRA", "SRRA_far1e-3",
                   *IDENTITY_COLUMNS]
#: chance levels recorded beside the linkage scores (1 / identities; rank-5: 5 / identities)
CHANCE_COLUMNS = ["link_chance", "link_chance5"]
RECON_COLUMNS = ["SSIM", "PSNR", "MSE", "SRRA"]  # [A] Table 1
#: identity scores from the independent pretrained evaluator (``--evaluator dlib``), when run
INDEPENDENT_COLUMNS = ["dlib_similarity", "dlib_SRRA"]


# -- loading ------------------------------------------------------------------------------------
def _check_record(rec: Any) -> None:
    """Raise ValueError unless ``rec`` has the shape every table relies on."""
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    for key in ("defense", "attack"):
        if not isinstance(rec.get(key), str):
            raise ValueError(f"no {key!r} name")
    acc = rec.get("accuracy") or {}
    if not isinstance(acc, dict) or not all(isinstance(v, dict) and "accuracy_mean" in v
                                            for v in acc.values()):
        raise ValueError("malformed 'accuracy'")
    for key in ("privacy", "record", "defense_options", "attack_options"):
        if not isinstance(rec.get(key) or {}, dict):
            raise ValueError(f"malformed {key!r}")


def load_cells_checked(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Readable cell records of a run, and the names of the damaged files that were skipped.

    A corrupt or half-written JSON (a crash outside the atomic writer, a hand edit) is named in a
    warning and left out, so the report of the other cells is still produced.
    """
    cells_dir = Path(run_dir) / "cells"
    if not cells_dir.is_dir():
        raise BenchError(f"{run_dir} has no cells/ folder; is it a run folder under results/runs/?")
    records, skipped = [], []
    for path in sorted(cells_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            _check_record(rec)
            rec.setdefault("_file", path.name)
            records.append(rec)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            warnings.warn(f"skipping damaged cell file {path.name}: {exc}")
            skipped.append(path.name)
    # by name, not file name: "advface" before "advface.eps0.1" ('.' sorts before '_')
    records.sort(key=lambda r: (r["defense"], r["attack"], str(r.get("seed"))))
    return records, skipped


def load_cells(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable cell record of a run; a damaged one is named in a warning and skipped."""
    return load_cells_checked(run_dir)[0]


def base_name(defense: str) -> str:
    """``advface.eps0.1`` → ``advface`` (registry variants are ``<base>.<variant>``)."""
    return defense.split(".")[0]


ITEMS = "_items_"  # hidden column prefix: a cell's per-pair / per-target vector of a metric
DIGEST = "_digest_"  # hidden column prefix: which pairs / targets that vector is about


def cells_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell: identifiers, accuracy (%) per verification set, privacy metrics.

    Hidden columns ``_items_<metric>`` hold the cell's per-item vector of a metric (per pair for
    accuracy, in %; per reconstruction target for SSIM, PSNR, MSE and SRRA) when the record has
    one, and ``_digest_<metric>`` which items they are: intervals and paired tests use them
    (:mod:`bench.reporting.stats`); records written before they existed simply lack them."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {k: rec.get(k) for k in ("dataset", "preset", "defense", "attack", "seed",
                                                       "fold", "status", "protected", "domain",
                                                       "perceptual_metric", "run_id",
                                                       "harness_version")}
        row["environment_key"] = environment_key(rec.get("environment"))
        row["na_reason"] = rec.get("na_reason") if rec.get("status") == "n/a" else None
        dp = rec.get("record") or {}
        row["epsilon"] = _num(dp.get("epsilon")) if "epsilon" in dp else math.nan  # DP-SGD (§4.4)
        row["delta"] = _num(dp.get("delta")) if "delta" in dp else math.nan
        # the unit ε protects (issue 20); records from before the option were image level
        row["dp_level"] = (dp.get("dp_level") or "image") if "epsilon" in dp else None
        row["knowledge"] = (rec.get("attack_options") or {}).get("knowledge")
        # ALGORITHMS §15: the attack's family and, on `none`, whether it fell under its floor
        row["attack_family"] = rec.get("attack_family")
        row["underpowered"] = rec.get("underpowered")
        for vset, acc in (rec.get("accuracy") or {}).items():
            row[f"acc_{vset}"] = 100.0 * acc["accuracy_mean"]
            if isinstance(acc.get("correct"), list):
                row[f"{ITEMS}acc_{vset}"] = [100.0 * c for c in acc["correct"]]
                row[f"{DIGEST}acc_{vset}"] = acc.get("pairs_digest")
        privacy = rec.get("privacy") or {}
        row.update({k: _num(privacy.get(k)) for k in PRIVACY_COLUMNS + ["raw_pp"] + CHANCE_COLUMNS})
        row.update({k: _num(privacy[k]) for k in INDEPENDENT_COLUMNS if k in privacy})
        for k, items in (rec.get("per_target") or {}).items():
            if k in PRIVACY_COLUMNS and isinstance(items, list):
                row[f"{ITEMS}{k}"] = [_num(v) for v in items]
                row[f"{DIGEST}{k}"] = rec.get("targets_digest")
        rows.append(row)
    return pd.DataFrame(rows)


def _num(v: Any) -> float:
    """A metric value as float; None (JSON null, e.g. NaN written by a strict encoder) → NaN."""
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def independent_columns(df: pd.DataFrame) -> list[str]:
    """The independent evaluator's columns, when any cell of ``df`` has them."""
    return [c for c in INDEPENDENT_COLUMNS if c in df and df[c].notna().any()]


def acc_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("acc_") and not is_stat_column(c)]


STAT_SUFFIXES = ("_std", "_ci_low", "_ci_high")


def is_stat_column(col: str) -> bool:
    """A spread or interval column (``<metric>_std``, ``_ci_low``, ``_ci_high``), not a metric."""
    return col.endswith(STAT_SUFFIXES)


def primary_acc_column(acc_cols: list[str]) -> str | None:
    """The accuracy Score_cls normalises: LFW's when supplied (the set [H] Table 2 scores), else
    the first set's, the same rule as :attr:`bench.data.facedata.FaceData.primary_verification`
    that picks the SRRA threshold."""
    for col in acc_cols:
        if col[len("acc_"):].lower().startswith("lfw"):
            return col
    return acc_cols[0] if acc_cols else None
