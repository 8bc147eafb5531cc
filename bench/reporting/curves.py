"""Training curves of cell records: which loss each verdict reads, whether an attack had
converged when it stopped, and the table of verdicts.

A record's ``curves`` (written by the pipeline since training curves were recorded) maps each
stage the cell rests on — ``baseline``, ``defense_fit``, ``defense_recognizer``, ``attack`` — to a
list of training loops, each ``{"name", "loop", "losses": {loss: [per-epoch means]},
"held_out": {loss: [...]}}`` (``held_out`` only for loops that keep a held-out split).

An attack is **not converged** when the loss it is judged on still falls steeply over its last
epochs: by more than :attr:`ConvergenceRule.min_drop` (relative) over the last
:attr:`ConvergenceRule.window` of its epochs. The loss judged: the held-out loss where the loop
has one, else the training loss (the verdict says which); of several losses, the reconstruction
term ``l1`` (a GAN's adversarial terms oscillate by design), else ``loss``, else the first one.
A loop of a single epoch cannot be judged; an attack judged on none of its loops (analytic
attacks train nothing) gets no verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

STAGES = ("baseline", "defense_fit", "defense_recognizer", "attack")
PREFERRED_LOSSES = ("l1", "loss")
NOT_CONVERGED = "not converged"


@dataclass(frozen=True)
class ConvergenceRule:
    """What "still falls steeply" means ([ASSUMP]: no paper defines it; a loss that lost more than
    5 % of its value over the last fifth of training would have gone on improving)."""

    window: float = 0.2  # share of the epochs at the end that is looked at
    min_drop: float = 0.05  # relative drop over that window above which training had not converged

    def __post_init__(self) -> None:
        if not 0 < self.window < 1 or not self.min_drop > 0:
            raise ValueError(f"convergence rule needs 0 < window < 1 and min_drop > 0, got {self}")


DEFAULT_RULE = ConvergenceRule()


def record_curves(rec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A record's curves per stage (empty lists for records written before curves existed)."""
    curves = rec.get("curves") if isinstance(rec.get("curves"), dict) else {}
    return {stage: [c for c in curves.get(stage) or [] if _is_curve(c)] for stage in STAGES}


def _is_curve(c: Any) -> bool:
    return isinstance(c, dict) and isinstance(c.get("losses"), dict) and all(
        isinstance(v, list) for v in c["losses"].values())


def has_curves(records: list[dict[str, Any]]) -> bool:
    return any(any(record_curves(r).values()) for r in records)


def judged_series(curve: dict[str, Any]) -> tuple[list[float], str] | None:
    """The series a loop is judged on and what it is (``held-out l1``, ``training loss``)."""
    for part, label in (("held_out", "held-out"), ("losses", "training")):
        losses = curve.get(part) or {}
        if not losses:
            continue
        key = next((k for k in PREFERRED_LOSSES if k in losses), next(iter(losses)))
        return [float(v) for v in losses[key]], f"{label} {key}"
    return None


def judge_loop(curve: dict[str, Any], rule: ConvergenceRule = DEFAULT_RULE) -> dict[str, Any]:
    """``{"loop", "basis", "epochs", "drop", "converged"}`` of one training loop; ``converged``
    is None when it ran fewer than two epochs (nothing to compare)."""
    picked = judged_series(curve)
    series, basis = picked if picked else ([], "no loss")
    out = {"loop": curve.get("name", "?"), "basis": basis, "epochs": len(series),
           "drop": math.nan, "converged": None}
    if len(series) < 2:
        return out
    window = min(len(series) - 1, max(1, math.ceil(rule.window * len(series))))
    start, end = series[-1 - window], series[-1]
    if not (math.isfinite(start) and math.isfinite(end)):
        return out
    drop = (start - end) / abs(start) if start else 0.0
    out.update(drop=drop, converged=not drop > rule.min_drop)
    return out


def attack_convergence(rec: dict[str, Any], rule: ConvergenceRule = DEFAULT_RULE) -> dict[str, Any]:
    """The verdict on a cell's attack: not converged when any loop it trained still fell steeply,
    converged when every judged loop had flattened, None when no loop could be judged. Reports
    the steepest loop's basis and drop."""
    loops = [judge_loop(c, rule) for c in record_curves(rec)["attack"]]
    judged = [j for j in loops if j["converged"] is not None]
    if not judged:
        return {"converged": None, "basis": loops[0]["basis"] if loops else None,
                "drop": math.nan, "epochs": max((j["epochs"] for j in loops), default=0),
                "loop": loops[0]["loop"] if loops else None}
    worst = max(judged, key=lambda j: j["drop"])
    return {**worst, "converged": all(j["converged"] for j in judged)}


def convergence_table(records: list[dict[str, Any]],
                      rule: ConvergenceRule = DEFAULT_RULE) -> pd.DataFrame:
    """One row per cell whose attack trained: the loss judged, epochs, relative drop over the
    last window of epochs, and the verdict. Empty when no record has curves."""
    rows = []
    for rec in records:
        if rec.get("status", "ok") != "ok" or not record_curves(rec)["attack"]:
            continue
        v = attack_convergence(rec, rule)
        rows.append({"Method": rec["defense"], "Attack": rec["attack"], "seed": rec.get("seed"),
                     "fold": rec.get("fold"), "loop": v["loop"], "judged_on": v["basis"],
                     "epochs": v["epochs"], "last_window_drop": v["drop"],
                     "verdict": verdict_text(v["converged"])})
    df = pd.DataFrame(rows)
    if not df.empty and df["fold"].isna().all():
        df = df.drop(columns=["fold"])
    return df


def verdict_text(converged: bool | None) -> str:
    return {True: "converged", False: NOT_CONVERGED, None: "not judged (< 2 epochs)"}[converged]


def rule_text(rule: ConvergenceRule = DEFAULT_RULE) -> str:
    return (f"its judged loss (held-out where the attack keeps a held-out split, else training) "
            f"fell by more than {rule.min_drop:.0%} over the last {rule.window:.0%} of the epochs")


def cells_not_converged(records: list[dict[str, Any]],
                        rule: ConvergenceRule = DEFAULT_RULE) -> set[tuple[str, str]]:
    """(defense, attack) pairs with at least one cell whose attack had not converged."""
    return {(r["defense"], r["attack"]) for r in records
            if r.get("status", "ok") == "ok" and attack_convergence(r, rule)["converged"] is False}
