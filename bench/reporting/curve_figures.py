"""Figures of the training curves a run's records hold (:mod:`bench.reporting.curves`).

- ``curves_recognizers.png``: one small panel per defense (first seed and fold) — the baseline
  recognizer's ArcFace loss, then each defense's own training loops (fit, recognizer).
- ``curves_<attack>.png``: one small panel per defense the attack ran on; the judged loss
  (held-out dashed when the loop keeps one), the last window of epochs the verdict reads shaded,
  and the panel titled in red with ``not converged`` when the loss still fell steeply there.

Every series is drawn relative to its first epoch (loss ÷ epoch-1 loss), so loops with losses of
different scales share an axis and the shape — still falling, or flat — is what reads; the last
absolute value is in the legend. Drawn only when the records have curves.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from bench.reporting.curves import (DEFAULT_RULE, NOT_CONVERGED, attack_convergence, judged_series,
                                    record_curves)
from bench.store import atomic_write_bytes

PANEL = (2.5, 1.9)  # inches per panel
COLUMNS = 6


def _first_replicate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the lowest seed (and fold): one panel per defense, not per replicate."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    if not ok:
        return []
    key = min((r.get("seed") or 0, r.get("fold") or 0) for r in ok)
    return [r for r in ok if (r.get("seed") or 0, r.get("fold") or 0) == key]


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL[0] * cols, PANEL[1] * rows + 0.6),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def _plot_loop(ax: plt.Axes, curve: dict[str, Any], color: Any, label: str) -> bool:
    picked = judged_series(curve)
    if picked is None or not picked[0]:
        return False
    series, basis = picked
    part = "held_out" if basis.startswith("held-out") else "losses"
    key = basis.split(" ", 1)[1]
    train = [float(v) for v in (curve.get("losses") or {}).get(key, [])] if part == "held_out" \
        else series
    for values, style, what in ((train, "-", "train"), (series if part == "held_out" else [], "--",
                                                         "held-out")):
        if not values or not values[0] or not all(math.isfinite(v) for v in values):
            continue
        ax.plot(range(1, len(values) + 1), [v / values[0] for v in values], style, color=color,
                lw=1.4, marker="o" if len(values) < 8 else None, ms=2.5,
                label=f"{label} {what} {key} {values[-1]:.3g}")
    return True


def recognizer_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """The recognizers' (and the defenses' fitted parts') curves, one panel per defense."""
    recs = _first_replicate(records)
    panels: list[tuple[str, list[tuple[str, dict]]]] = []
    base = next((record_curves(r)["baseline"] for r in recs if record_curves(r)["baseline"]), [])
    if base:
        panels.append(("baseline F1", [("F1", c) for c in base]))
    seen: set[str] = set()
    for r in recs:
        if r["defense"] in seen:
            continue
        seen.add(r["defense"])
        cs = record_curves(r)
        loops = [("fit", c) for c in cs["defense_fit"]] + [("F2", c) for c in cs["defense_recognizer"]]
        if loops:
            panels.append((r["defense"], loops))
    if not panels:
        return False
    fig, axes = _grid(len(panels))
    cmap = plt.get_cmap("tab10")
    for ax, (title, loops) in zip(axes, panels):
        for i, (what, curve) in enumerate(loops):
            _plot_loop(ax, curve, cmap(i % 10), what if len(loops) > 1 else "")
        _style(ax, title, "black")
    fig.suptitle("Recognizer and defense training: loss ÷ its epoch-1 value (legend: last value)",
                 fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title
    _save(fig, path)
    return True


def attack_curves(records: list[dict[str, Any]], attack: str, path: Path) -> bool:
    """One attack's training curves, one panel per defense, verdict in each title."""
    recs = [r for r in _first_replicate(records)
            if r["attack"] == attack and record_curves(r)["attack"]]
    if not recs:
        return False
    fig, axes = _grid(len(recs))
    cmap = plt.get_cmap("tab10")
    for ax, r in zip(axes, recs):
        loops = record_curves(r)["attack"]
        for i, curve in enumerate(loops):
            _plot_loop(ax, curve, cmap(i % 10), curve.get("name", "") if len(loops) > 1 else "")
        verdict = attack_convergence(r)
        epochs = verdict["epochs"]
        if epochs >= 2:  # the last window of epochs the verdict reads
            window = min(epochs - 1, max(1, math.ceil(DEFAULT_RULE.window * epochs)))
            ax.axvspan(epochs - window, epochs, color="0.85", zorder=0)
        bad = verdict["converged"] is False
        title = r["defense"] + (f"\n{NOT_CONVERGED} (−{verdict['drop']:.0%})" if bad else "")
        _style(ax, title, "#b00020" if bad else "black")
    fig.suptitle(f"Attack {attack}: judged loss ÷ its epoch-1 value; shaded: the last "
                 f"{DEFAULT_RULE.window:.0%} of epochs the verdict reads", fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title
    _save(fig, path)
    return True


def _style(ax: plt.Axes, title: str, color: str) -> None:
    ax.set_title(title, fontsize=8, color=color)
    ax.set_xlabel("epoch", fontsize=7)
    ax.tick_params(labelsize=6)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5.5, loc="upper right")


def _save(fig: plt.Figure, path: Path) -> None:
    """PNG at the figure's dpi (draw_all's style sets it), written atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def attacks_with_curves(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["attack"] for r in records
                              if r.get("status", "ok") == "ok" and record_curves(r)["attack"]))
