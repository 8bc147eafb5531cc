"""Worst case per defense and attack strength (ALGORITHMS §15), from cell records alone.

A defense's privacy is its worst case over the attacks run against it (RobustBench's principle:
robust accuracy under the strongest ensemble). ``worst_case.csv`` has one row per defense and
attacker knowledge level: for each of :data:`WORST_METRICS` (all "higher = the attacker does
better") the maximum over the attacks of the attack's mean over seeds/folds, and in
``<metric>_attack`` the attack that reached it (``link_chance`` of that linkage cell beside
``link_rank1``); then the attack families that produced numbers (``families``), those that were
run but do not apply (``families_na``) and those not run at all (``families_missing``) — a
defense attacked by fewer families says so in ``note``. An attack's family and strength floor are
metadata recorded in each cell (``attack_family``, ``attack_floor``); an attack whose cell on
``none`` fell under its floor is ``underpowered`` (recorded by the pipeline), listed in the rows
its numbers reach and in :func:`underpowered_notes` — its numbers under-state the leak.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.reporting.cells import base_name, cells_frame

#: ALGORITHMS §15: the metrics a defense's worst case is taken over (higher = more leaked)
WORST_METRICS = ["SRRA", "SRRA_other", "link_rank1", "link_tar@far1e-3", "SSIM"]
#: ALGORITHMS §15: the attack families (``Attack.family`` of the plugins)
FAMILIES = ("decoder", "cgan", "decoupling", "analytic", "linkage", "template")


def underpowered_attacks(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{attack: {metric: [value, floor]}}`` for every attack whose measured cell on ``none``
    in these records is ``underpowered`` (the first such cell's shortfall)."""
    out: dict[str, dict[str, list[float]]] = {}
    for rec in records:
        if rec.get("underpowered") is True and base_name(rec.get("defense", "")) == "none":
            out.setdefault(rec["attack"], dict(rec.get("floor_shortfall") or {}))
    return out


def underpowered_notes(records: list[dict[str, Any]]) -> list[str]:
    """One line per underpowered attack (what it reached on ``none`` against its floor)."""
    lines = []
    for attack, short in sorted(underpowered_attacks(records).items()):
        what = ", ".join(f"{m} {_fmt(v)} < floor {_fmt(f)}" for m, (v, f) in sorted(short.items()))
        lines.append(f"attack {attack} is underpowered on none ({what}): its numbers on the "
                     "protected defenses under-state the leak (ALGORITHMS §15)")
    return lines


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def worst_case(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The worst-case table (module docstring); empty when no cell was measured."""
    df = cells_frame(records)
    if df.empty:
        return pd.DataFrame()
    df["knowledge"] = df["knowledge"].fillna("white_box")
    df["status"] = df["status"].fillna("ok")
    df["attack_family"] = df["attack_family"].fillna("other")
    weak = underpowered_attacks(records)
    metrics = [m for m in WORST_METRICS if m in df]
    rows = []
    # whether an attack applies does not depend on the knowledge level: a defense's n/a cells
    # count for each of its rows, and a knowledge level with no measured cell gets no row
    na_families = df[df["status"] == "n/a"].groupby("defense")["attack_family"].agg(set)
    measured = set(df.loc[df["status"] == "ok", "defense"])
    df.loc[~df["defense"].isin(measured), "knowledge"] = "-"
    for (defense, knowledge), sub in df.groupby(["defense", "knowledge"], sort=True):
        ok = sub[sub["status"] == "ok"]
        if ok.empty and defense in measured:
            continue
        means = ok.groupby("attack", sort=True)[metrics + ["link_chance"]].mean()
        row: dict[str, Any] = {"defense": defense, "knowledge": knowledge,
                               "protected": bool(sub["protected"].fillna(True).iloc[0])}
        reached = set()
        for m in metrics:
            col = means[m].dropna() if m in means else pd.Series(dtype=float)
            if col.empty:
                row[m], row[f"{m}_attack"] = math.nan, ""
                continue
            top = col.idxmax()  # ties: the first attack by name
            row[m], row[f"{m}_attack"] = float(col[top]), top
            reached.add(top)
            if m == "link_rank1":
                row["link_chance"] = float(means.loc[top, "link_chance"])
        covered = sorted(set(ok["attack_family"]))
        na = sorted(na_families.get(defense, set()) - set(covered))
        missing = [f for f in FAMILIES if f not in covered and f not in na]
        row.update({"families": ";".join(covered), "n_families": len(covered),
                    "families_na": ";".join(na), "families_missing": ";".join(missing),
                    "attacks": ";".join(sorted(set(ok["attack"]))),
                    "underpowered": ";".join(sorted(reached & set(weak)))})
        notes = []
        if missing:
            notes.append(f"attacked by {len(covered)} of {len(FAMILIES)} families; no cell of "
                         f"{', '.join(missing)} in the run (`--attacks strongest` leaves out the "
                         "families that do not apply)")
        if row["underpowered"]:
            notes.append(f"reached by underpowered attack(s) {row['underpowered'].replace(';', ', ')}: "
                         "a lower bound")
        row["note"] = "; ".join(notes)
        rows.append(row)
    cols = (["defense", "knowledge", "protected"]
            + [c for m in metrics for c in (m, f"{m}_attack") + (("link_chance",) if m == "link_rank1" else ())]
            + ["families", "n_families", "families_na", "families_missing", "attacks",
               "underpowered", "note"])
    out = pd.DataFrame(rows)
    if "link_chance" not in out:
        out["link_chance"] = math.nan
    return out[[c for c in cols if c in out]]

