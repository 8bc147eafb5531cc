"""``report.html``: one self-contained file with a run's tables, figures and resolved config.

Figures are embedded as base64 ``data:`` URIs and the style sheet (``templates/report.css``) is inline, so the file opens in
any browser from disk, with no server and no network, and can be mailed or attached to a CI job
as it is. No scripts: nothing in it executes.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.reporting.figures import figure_caption
from bench.reporting.tables import TABLE_TITLES
from bench.reporting.templates import page
from bench.store import atomic_write_text

KEY_COLUMNS = {"Method", "Attack", "verification_set", "shadow", "defense", "attack"}


def fmt_number(v: Any) -> str:
    """Enough digits to compare rows: 4 below 0.01 (MSE), 3 below 10, else 2 (PSNR, accuracy %)."""
    if v is None:
        return ""
    if isinstance(v, (bool, str)):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "–"
    if isinstance(v, int) or (hasattr(v, "dtype") and v.dtype.kind in "iu"):
        return str(int(v))
    return f"{f:.4f}" if abs(f) < 0.01 and f != 0 else f"{f:.3f}" if abs(f) < 10 else f"{f:.2f}"


def table_html(df: pd.DataFrame) -> str:
    """An HTML table where each ``col`` with companions reads ``mean ± std [ci_low, ci_high]``
    (the 95 % interval, ALGORITHMS §12.1: Student-t over replicates, or the items of one)."""
    def companion(c: str) -> bool:
        return any(c.endswith(suf) and c[:-len(suf)] in df.columns
                   for suf in ("_std", "_ci_low", "_ci_high"))

    cols = [c for c in df.columns if not companion(c)]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for i in range(len(df)):
        cells = []
        for c in cols:
            v = df[c].iloc[i]  # column-wise access keeps each column's dtype (ints stay ints)
            text = (str(int(v)) if c.endswith(("n_seeds", "n_folds")) and _finite(v) else fmt_number(v))
            std = df[f"{c}_std"].iloc[i] if f"{c}_std" in df.columns else None
            if _finite(std):
                text += f" ± {fmt_number(std)}"
            lo, hi = (df[f"{c}_ci_{e}"].iloc[i] if f"{c}_ci_{e}" in df.columns else None
                      for e in ("low", "high"))
            if _finite(lo) and _finite(hi):
                text += f" [{fmt_number(lo)}, {fmt_number(hi)}]"
            klass = ' class="key"' if c in KEY_COLUMNS else ""
            cells.append(f"<td{klass}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render(run_dir: Path, tables: dict[str, pd.DataFrame], figures: dict[str, Path],
           skipped: list[str], gaps: list[str] = ()) -> str:
    """The report's HTML text."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
        cfg_text = json.dumps(cfg, indent=2)
    except (OSError, ValueError) as exc:  # the report of the cells is still worth having
        cfg, cfg_text = {}, f"config.json unreadable: {exc}"
    run_id = cfg.get("run_id", run_dir.name)
    c = cfg.get("config", {})
    t2 = tables.get("table2", pd.DataFrame())
    metric = set(t2["perceptual_metric"].dropna()) if "perceptual_metric" in t2 else set()
    title = f"faceprivbench report — {html.escape(run_id)}"
    parts = [f"<h1>{title}</h1>",
             "<p class='meta'>"
             + " · ".join(html.escape(str(x)) for x in (
                 f"dataset {c.get('data', {}).get('name', '?')}", f"preset {c.get('preset', '?')}",
                 f"seeds {c.get('seeds', '?')}", f"defenses {', '.join(cfg.get('defenses', []))}",
                 f"attacks {', '.join(cfg.get('attacks', []))}"))
             + "</p>"]
    if metric and metric != {"lpips"}:
        parts.append(f"<p class='warn'>S1/S3 use <b>{html.escape(', '.join(sorted(metric)))}</b>, "
                     "not LPIPS (no AlexNet weights given): compare them only with runs that say "
                     "the same.</p>")
    if gaps:
        parts.append("<p class='warn'>Table 1 is one-sided: run "
                     + ", ".join(f"<code>{html.escape(g)}</code>" for g in gaps)
                     + " too for the other column.</p>")
    if skipped:
        parts.append("<p class='warn'>Damaged cell files, skipped: "
                     + ", ".join(f"<code>{html.escape(s)}</code>" for s in skipped) + "</p>")
    parts.append("<h2>Tables</h2><p class='meta'>mean ± std over seeds (std: sample, ddof 1; "
                 "absent with one seed). Scores are min-max normalised over the protected defenses "
                 "of the same attack. Each table is also a CSV next to this file.</p>")
    for name, df in tables.items():
        parts.append(f"<h3 id='{name}'>{html.escape(TABLE_TITLES.get(name, name))} "
                     f"<small class='meta'>({name}.csv)</small></h3>{table_html(df)}")
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, path in figures.items():
            cap = figure_caption(name)
            parts.append(f"<figure id='{name}'><img src='{png_data_uri(path)}' "
                         f"alt='{html.escape(cap, quote=True)}'><figcaption>{html.escape(cap)}"
                         f"</figcaption></figure>")
    parts.append("<h2>Resolved configuration</h2><details open><summary>config.json</summary>"
                 f"<pre>{html.escape(cfg_text)}</pre></details>")
    return page(title, "\n".join(parts))


def write_html(run_dir: Path, tables: dict[str, pd.DataFrame], figures: dict[str, Path],
               skipped: list[str], gaps: list[str] = ()) -> Path:
    """Write ``run_dir/report.html`` atomically; return its path."""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, render(run_dir, tables, figures, skipped, gaps))
    return path
