"""``leaderboard.html``: the leaderboard as one self-contained page (no network, no files beside it).

Every metric cell reads ``mean [ci_low, ci_high]`` (its 95 % interval, §12.1) with the seed std
on hover; the comparable-settings key columns come first and are always visible; a click on any
column header sorts by it (numbers numerically, by the mean; a second click reverses). Ranks carry
``=`` when tied (overlapping intervals or under 3 replicates, :func:`bench.reporting.leaderboard.tie_ranks`). The one inline script
only sorts rows: it reads nothing and fetches nothing.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.reporting.cells import is_stat_column
from bench.reporting.html import fmt_number
from bench.reporting.templates import page
from bench.store import atomic_write_text

KEY_HELP = {
    "dataset": "dataset the cells ran on",
    "preset": "recipe (quick: CPU minutes; paper: the papers' recipe)",
    "perceptual_metric": "what S1/S3 measure (LPIPS or its stated substitute)",
    "environment": "hash of the library versions, device model and thread count (bench.environment)",
    "settings": "hash of the resolved config and this cell's defense and attack options",
    "knowledge": "what the attacker knows (white_box / black_box; - when the attack simulates nothing)",
}
def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _cell(df: pd.DataFrame, i: int, col: str) -> str:
    v = df[col].iloc[i]
    key = col in KEY_HELP or col in ("defense", "attack")
    if col.startswith("rank_"):
        tied = bool(df.get(f"tied_{col[5:]}", pd.Series([False] * len(df))).iloc[i])
        text = "" if not _finite(v) else ("=" if tied else "") + str(int(v))
        klass = ' class="tie"' if tied else ""
        return f'<td{klass} data-v="{v if _finite(v) else ""}">{html.escape(text)}</td>'
    if key or isinstance(v, str):
        return f'<td class="k" data-v="{html.escape(str(v))}">{html.escape(str(v))}</td>'
    text = fmt_number(v)
    lo, hi = (df[f"{col}_ci_{e}"].iloc[i] if f"{col}_ci_{e}" in df else None for e in ("low", "high"))
    if _finite(lo) and _finite(hi):
        text += f" [{fmt_number(lo)}, {fmt_number(hi)}]"
    std = df[f"{col}_std"].iloc[i] if f"{col}_std" in df else None
    title = f' title="std over seeds/folds {fmt_number(std)}"' if _finite(std) else ""
    return f'<td data-v="{v if _finite(v) else ""}"{title}>{html.escape(text)}</td>'


def leaderboard_html(table: pd.DataFrame) -> str:
    """The page's HTML (see the module docstring)."""
    hidden = {c for c in table.columns if is_stat_column(c) or c.startswith("tied_")}
    keys = [c for c in ("dataset", "preset", "perceptual_metric", "environment", "settings",
                        "knowledge") if c in table]
    first = ["defense", "attack"] + [c for c in ("rank_utility", "rank_privacy", "worst_SRRA",
                                                 "worst_SRRA_attack", "families_note") if c in table]
    rest = [c for c in table.columns if c not in hidden and c not in keys and c not in first]
    cols = first + keys + rest
    head = "".join(
        f'<th class="k" title="{html.escape(KEY_HELP.get(c, ""))}">{html.escape(c)}</th>'
        if c in keys or c in ("defense", "attack") else f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(table, i, c) for c in cols) + "</tr>"
                   for i in range(len(table)))
    legend = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in KEY_HELP.items())
    return page("faceprivbench leaderboard", (
        "<h1>Leaderboard</h1>"
        f"<p class='meta'>{len(table)} rows. Each metric: mean [95 % interval: Student-t over "
        "the replicate means (seeds × folds, n_replicates) with two or more; with one, over the "
        "verification pairs / reconstruction targets of that one trained model]; hover for the "
        "std. Ranks compare rows of one block (same dataset, preset, perceptual metric, "
        "environment, attack and knowledge): rank_utility by accuracy; rank_privacy by the "
        "defense's worst case over every attack run on it (worst_SRRA, reached by "
        "worst_SRRA_attack; lower leaks less; families_note says which attack families were not "
        "run — ALGORITHMS §15); <b>=</b> marks a tie — intervals overlap, or a row rests on fewer "
        "than 3 replicates (one model's items cannot show training noise). Click a header to "
        "sort.</p>"
        f"<ul class='legend'>{legend}</ul>"
        f"<div class='scroll'><table class='lb'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    ), styles=("report.css", "leaderboard.css"), script="leaderboard.js")


def write_leaderboard_html(table: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(Path(path), leaderboard_html(table))
    return Path(path)
