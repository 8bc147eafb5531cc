"""Figures of a run, drawn from its cell records and sample arrays with matplotlib (Agg backend).

- ``reconstructions_<attack>.png``: one grid per attack, originals in the first row (and again
  every few rows), then one row per defense (`[H]` Fig. 3 / Fig. 5), each row's SSIM / PSNR at
  its right.
- ``privacy_utility.png``: Score_pp vs Score_cls, one point per defense, one panel per attack (one
  panel per defense family in large matrices).
- ``curves_recognizers.png``, ``curves_<attack>.png``: training curves, when the records have
  them (:mod:`bench.reporting.curve_figures`).
- ``advface_eps.png``: AdvFace's ε sweep as PSNR vs accuracy (`[A]` Fig. 4), when the run has one.
- ``k_share.png``: share of each k chosen by AdaMixUp (`[H]` Table 3), when the run has it.

Each function returns ``False`` (and draws nothing) when the run lacks what it needs.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit, works on headless CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.reporting.cells import base_name, cells_frame, is_stat_column
from bench.reporting.tables import own_k_values, table2, table3
from bench.store import atomic_write_bytes  # noqa: E402

FIGURES = {  # besides the per-attack ones (reconstructions_<attack>.png, curves_<attack>.png)
    "fig_privacy_utility": "privacy_utility.png",
    "fig_advface_eps": "advface_eps.png",
    "fig_k_share": "k_share.png",
    "fig_curves_recognizers": "curves_recognizers.png",
}
FIGURE_CAPTIONS = {
    "fig_privacy_utility": "Privacy–utility trade-off: Score_pp vs Score_cls per defense (mean ± std "
                           "over seeds); the top-right corner is best. When some defenses have no "
                           "image view (feature-domain: no S1/S2, so no raw_pp or Score), a second "
                           "row plots every defense by S3 + S4 of the reconstruction vs accuracy.",
    "fig_advface_eps": "AdvFace ε sweep: reconstruction PSNR vs verification accuracy.",
    "fig_k_share": "Share of each k drawn by the AdaMixUp policy (mean ± std over seeds).",
    "fig_curves_recognizers": "Training of the recognizers (baseline F1, each defense's F2) and of "
                              "the defenses' fitted parts: loss relative to epoch 1 (first seed).",
}
#: [H] Table 3 by the variant's set of k (ALGORITHMS §10), drawn as reference markers
H_TABLE3 = {(2, 3, 4, 5, 6): [.17, .25, .13, .26, .19], (2, 3, 4, 5): [.21, .28, .16, .35],
            (2, 3, 4): [.31, .44, .25]}
DPI = 110


#: applied with rc_context while drawing: a library must not change its caller's rcParams
STYLE = {"figure.dpi": DPI, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "axes.titleweight": "bold",
         "font.size": 9, "legend.fontsize": 8, "legend.frameon": False}


def colors_for(names: list[str]) -> dict[str, Any]:
    """A stable colour per defense *family* (``masking_mixup.k2`` … ``.k6`` share one), so a
    30-defense matrix reads as a dozen families; draw_all passes one map to every figure and
    :func:`markers_for` tells the variants of a family apart."""
    families = sorted({base_name(n) for n in names})
    cmap = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    family_color = {f: cmap(i % cmap.N) for i, f in enumerate(families)}
    return {n: family_color[base_name(n)] for n in sorted(set(names))}


def markers_for(names: list[str]) -> dict[str, str]:
    """A marker per defense: the variants of one family get different markers."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for n in sorted(set(names)):
        i = seen.get(base_name(n), 0)
        seen[base_name(n)] = i + 1
        out[n] = MARKERS[i % len(MARKERS)]
    return out


def _save(fig: plt.Figure, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# -- reconstruction grid --------------------------------------------------------------------------
def _load_samples(path: Path) -> dict[str, np.ndarray] | None:
    """The sample arrays of one cell; a damaged file is named in a warning and skipped."""
    try:
        with np.load(path, allow_pickle=False) as z:  # no pickles: a results folder may be shared
            out = {k: z[k] for k in z.files}
        if "original" not in out or "reconstruction" not in out:
            raise ValueError("missing 'original' or 'reconstruction'")
        for arr in out.values():
            if arr.dtype != np.uint8 or arr.ndim != 4:
                raise ValueError(f"expected uint8 [n,C,H,W], got {arr.dtype} {arr.shape}")
        return out
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
        warnings.warn(f"skipping damaged sample file {path.name}: {exc}")
        return None


#: a reconstruction grid repeats its row of originals after this many rows, so every row has the
#: faces it reconstructs within sight (a 37-defense grid is otherwise read far from its top row)
ORIGINALS_EVERY = 8


def reconstruction_grid(run_dir: Path, records: list[dict[str, Any]], path: Path,
                        max_cols: int = 8, attack: str | None = None) -> bool:
    """Originals, then one row per defense (× attack) of the lowest seed that has samples; the
    originals again every :data:`ORIGINALS_EVERY` rows. ``attack``: only that attack's cells
    (draw_all draws one grid per attack).

    Rows are grouped by attack, the unprotected defense first, so a column reads as "this face
    under every defense"; each row ends with that cell's SSIM / PSNR.
    """
    cells = []
    for rec in records:
        if attack is not None and rec.get("attack") != attack:
            continue
        npz = Path(run_dir) / "cells" / (Path(rec.get("_file", "")).stem + ".npz")
        if rec.get("status", "ok") == "ok" and npz.is_file():
            cells.append((rec, npz))
    if not cells:
        return False
    seed = min(rec.get("seed", 0) for rec, _ in cells)
    cells.sort(key=lambda c: (c[0]["attack"], bool(c[0].get("protected", True)), c[0]["defense"]))
    rows = [(rec, s) for rec, npz in cells
            if rec.get("seed", 0) == seed and (s := _load_samples(npz)) is not None]
    if not rows:
        return False
    originals = rows[0][1]["original"]
    n = min(max_cols, len(originals), *(len(s["reconstruction"]) for _, s in rows))
    shape = originals.shape[2:]
    keep = [(r, s) for r, s in rows if s["reconstruction"].shape[2:] == shape]
    if len(keep) < len(rows):
        warnings.warn("reconstruction grid: rows whose image size differs from the originals' "
                      "were left out")
    rows = keep
    # originals first and again every ORIGINALS_EVERY rows: (None, None) marks an originals row
    layout: list[tuple[Any, Any]] = []
    for i, row in enumerate(rows):
        if i % ORIGINALS_EVERY == 0:
            layout.append((None, None))
        layout.append(row)
    # One mosaic image, one imshow: hundreds of small axes would take seconds per figure.
    mosaic = _mosaic([originals[:n] if s is None else s["reconstruction"][:n] for _, s in layout])
    cell, left, right, top = 0.85, 1.7, 0.85, 0.5  # inches
    width, height = left + n * cell + right, top + len(layout) * cell + 0.1
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, 0.1 / height, n * cell / width, len(layout) * cell / height))
    ax.imshow(mosaic, interpolation="nearest" if max(shape) < 64 else "antialiased")
    ax.set_axis_off()
    tile = mosaic.shape[0] / len(layout)
    mismatch = False
    for i, (rec, s) in enumerate(layout):
        if rec is None:
            ax.text(-0.02 * mosaic.shape[1], (i + 0.5) * tile, "original", ha="right",
                    va="center", fontweight="bold")
            continue
        label = rec["defense"] if attack is not None else f"{rec['defense']}\n× {rec['attack']}"
        # a row whose targets differ from the first row's originals would be misread: mark it
        if not np.array_equal(s["original"][:n], originals[:n]):
            label += " *"
            mismatch = True
        y = (i + 0.5) * tile
        ax.text(-0.02 * mosaic.shape[1], y, label, ha="right", va="center")
        p = rec.get("privacy") or {}
        ax.text(1.01 * mosaic.shape[1], y, f"SSIM {_fmt(p.get('SSIM'), 2)}\nPSNR {_fmt(p.get('PSNR'), 1)}",
                ha="left", va="center", fontsize=8, color="0.25")
    title = (f"What {attack} reconstructs (seed {seed})" if attack is not None
             else f"What the attacker reconstructs (seed {seed})")
    if mismatch:
        title += "\n* row's targets differ from the originals shown"
    fig.suptitle(title, fontweight="bold", y=1 - 0.08 / height, va="top")
    _save(fig, path)
    return True


def _mosaic(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """uint8 [n,C,H,W] rows → one RGB [rows·(H+pad), n·(W+pad), 3] image on a white background."""
    n, _, h, w = rows[0].shape
    out = np.full((len(rows) * (h + pad), n * (w + pad), 3), 255, dtype=np.uint8)
    for i, imgs in enumerate(rows):
        for j, img in enumerate(imgs[:n]):
            rgb = np.repeat(img[:1], 3, axis=0) if img.shape[0] == 1 else img[:3]
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = rgb.transpose(1, 2, 0)
    return out


def _fmt(v: Any, digits: int) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(f) else f"{f:.{digits}f}"


# -- privacy–utility scatter ----------------------------------------------------------------------
MARKERS = "osD^vP*Xph<>"


def _span(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.max() - s.min()) if len(s) and s.max() > s.min() else math.nan


def _err(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _bars(pts: pd.DataFrame, col: str, scale: float = 1.0) -> dict[Any, Any]:
    """Error bar of each point: the 95 % interval (§12.1; asymmetric) when the table has it,
    else ± the seed std, else none; ``scale`` maps it like the point (Scores are linear)."""
    out: dict[Any, Any] = {}
    for idx in pts.index:
        mean = pts.at[idx, col]
        lo, hi = (pts.at[idx, f"{col}_ci_{e}"] if f"{col}_ci_{e}" in pts else math.nan
                  for e in ("low", "high"))
        if all(map(math.isfinite, (mean, lo, hi))) and math.isfinite(scale):
            out[idx] = [[max(0.0, (mean - lo) * scale)], [max(0.0, (hi - mean) * scale)]]
        else:
            std = pts.at[idx, f"{col}_std"] if f"{col}_std" in pts else math.nan
            out[idx] = _err(std * scale if math.isfinite(scale) else math.nan)
    return out


def _iso_score_lines(ax: plt.Axes) -> None:
    """Dotted lines of equal Score = (Score_pp + Score_cls) / 2, labelled where they leave the box."""
    lo, hi = 0.45, 1.05
    for level in (0.6, 0.7, 0.8, 0.9):
        xs = np.array([lo, hi])
        ax.plot(xs, 2 * level - xs, ls=":", lw=0.8, color="0.6", zorder=0)
        x_top = 2 * level - hi  # where the line meets the top edge, else the left edge
        xy = (x_top, hi) if x_top >= lo else (lo, 2 * level - lo)
        ax.annotate(f"Score {level:.1f}", xy, xytext=(3, -3), textcoords="offset points",
                    fontsize=7, color="0.5", rotation=-45, ha="left", va="top")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")


def _panel_modes(sub: pd.DataFrame, acc_col: str | None) -> list[str]:
    """Which axes an attack's panels can honestly use, in the order they are drawn.

    ``scores``: Score_pp vs Score_cls, when at least two protected defenses have Scores.
    ``raw``: raw_pp vs accuracy instead, when fewer do (the Scores are undefined).
    ``recon``: S3 + S4 (the reconstruction half of raw_pp) vs accuracy, added when it covers more
    protected defenses than raw_pp — feature-domain defenses have no image view, hence no S1/S2
    and no raw_pp, and would otherwise be missing from the picture.
    """
    prot = sub[sub["protected"].fillna(True).astype(bool)]
    n_pp, n_rec = int(prot["raw_pp"].notna().sum()), int(prot["S34"].notna().sum())
    modes = []
    if acc_col and sub["Score_pp"].notna().sum() >= 2 and sub["Score_cls"].notna().sum() >= 2:
        modes.append("scores")
    elif sub["raw_pp"].notna().any():
        modes.append("raw")
    if n_rec > n_pp:
        modes.append("recon")
    return modes


def _points(sub: pd.DataFrame, acc_col: str | None, mode: str) -> tuple[pd.DataFrame, pd.Series,
                                                                        pd.Series, dict, dict]:
    """One attack's drawable points in one mode: ``(rows, x, y, xerr, yerr)``. Error bars are the
    95 % interval (else the seed std), mapped through the same min-max as the point in Score mode
    (a Score is linear in the mean)."""
    acc_ok = sub[acc_col].notna() if acc_col else pd.Series(True, index=sub.index)
    if mode == "scores":
        pts = sub[sub["Score_pp"].notna() & sub["Score_cls"].notna()]
        pp_rng = _span(sub.loc[sub["Score_pp"].notna(), "raw_pp"])
        cls_rng = _span(sub.loc[sub["Score_cls"].notna(), acc_col])
        return (pts, pts["Score_pp"], pts["Score_cls"], _bars(pts, "raw_pp", 0.5 / pp_rng),
                _bars(pts, acc_col, 0.5 / cls_rng))
    col = "raw_pp" if mode == "raw" else "S34"
    pts = sub[sub[col].notna() & acc_ok]
    y = pts[acc_col] if acc_col else pd.Series(0.0, index=pts.index)
    yerr = _bars(pts, acc_col) if acc_col else {i: None for i in pts.index}
    return pts, pts[col], y, _bars(pts, col), yerr


def _axes_for(ax: plt.Axes, acc_col: str | None, mode: str) -> None:
    """Labels (and the iso-Score lines of Score mode) of a panel in ``mode``."""
    if mode == "scores":
        _iso_score_lines(ax)
        ax.set_xlabel("Score_pp  (privacy →)")
        ax.set_ylabel("Score_cls  (utility →)")
        return
    ax.set_xlabel("raw_pp = 0.4(S1+S2) + 0.6(S3+S4)  (privacy →)" if mode == "raw" else
                  "S3 + S4 of the reconstruction  (privacy →)")
    ax.set_ylabel(f"accuracy on {acc_col[4:]} (%)  (utility →)" if acc_col else "")


def _panel(ax: plt.Axes, sub: pd.DataFrame, acc_col: str | None, style: dict[str, tuple],
           mode: str) -> set[str]:
    """One attack's points in one mode (see :func:`_panel_modes`); returns the defenses drawn."""
    pts, x, y, xerr, yerr = _points(sub, acc_col, mode)
    _axes_for(ax, acc_col, mode)
    for idx in pts.index:
        name = pts.at[idx, "Method"]
        color, marker = style[name]
        ax.errorbar(x[idx], y[idx], xerr=xerr[idx], yerr=yerr[idx], fmt=marker, ms=8,
                    capsize=3, color=color, ecolor=color, elinewidth=1, label=name, mec="white",
                    mew=0.8, alpha=0.95)
    # every point labelled (a 30-defense matrix is unreadable from a legend alone); small text,
    # offsets alternating around the point so neighbours rarely print on top of each other
    small = len(pts) > 8
    for j, idx in enumerate(pts.index):
        label = pts.at[idx, "Method"]
        dx, dy = [(7, 4), (7, -9), (-7, 4), (-7, -9)][j % 4] if small else (7, 4)
        ax.annotate(label, (x[idx], y[idx]), textcoords="offset points", xytext=(dx, dy),
                    fontsize=6 if small else 8, ha="left" if dx > 0 else "right")
    note = {"scores": "", "raw": "\nraw values: Scores need ≥ 2 protected defenses",
            "recon": "\nevery defense: S3 + S4 (no raw_pp without an image view)"}[mode]
    ax.set_title(f"attack: {sub['Attack'].iloc[0]}{note}", fontsize=9.5)
    return set(pts["Method"])


def _with_recon_privacy(t2: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Add S34 = S3 + S4 per cell, mean and std over seeds (a sum's std needs the cells)."""
    df = cells_frame(records)
    df["S34"] = df["S3"] + df["S4"]
    g = df.groupby(["defense", "attack"])["S34"]
    agg = pd.DataFrame({"S34": g.mean(), "S34_std": g.std(ddof=1)}).reset_index()
    return t2.merge(agg.rename(columns={"defense": "Method", "attack": "Attack"}),
                    on=["Method", "Attack"], how="left")


#: above this many defenses the privacy–utility figure gets one panel per defense family
#: instead of one per attack (37 defenses in one panel: labels overlap, the legend hides a panel)
FAMILY_PANELS_ABOVE = 10
FAMILY_COLUMNS = 4


def _family_figure(t2: pd.DataFrame, attacks: list[str], subs: dict[str, pd.DataFrame],
                   modes_of: dict[str, list[str]], rows: list[str], acc_col: str | None,
                   names: list[str]) -> tuple[plt.Figure, set[str]]:
    """One panel per defense family and mode: the family's variants in colour (a legend of its
    variants under the panel), the attack as the marker (one legend for the figure), every other
    defense as grey context; the panels of a mode share their axes' limits."""
    from matplotlib.lines import Line2D

    points_of = {mode: {a: _points(subs[a], acc_col, mode) for a in attacks if mode in modes_of[a]}
                 for mode in rows}
    # per mode, the families with a point in it (feature-domain defenses have no Score)
    fams_of = {mode: list(dict.fromkeys(base_name(n) for p in points_of[mode].values()
                                        for n in p[0]["Method"])) for mode in rows}
    cols = min(FAMILY_COLUMNS, max(len(f) for f in fams_of.values()))
    offsets, n_rows = {}, 0
    for mode in rows:
        offsets[mode] = n_rows
        n_rows += math.ceil(len(fams_of[mode]) / cols)
    fig, axes = plt.subplots(n_rows, cols, squeeze=False, figsize=(4.0 * cols, 5.0 * n_rows + 0.8))
    for ax in axes.ravel():
        ax.set_axis_off()  # switched back on for the panels drawn
    attack_marker = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(attacks)}
    cmap = plt.get_cmap("tab10")
    drawn: set[str] = set()
    for mode in rows:
        points = points_of[mode]
        xs = pd.concat([p[1] for p in points.values()] or [pd.Series(dtype=float)]).dropna()
        ys = pd.concat([p[2] for p in points.values()] or [pd.Series(dtype=float)]).dropna()
        for f, family in enumerate(fams_of[mode]):
            ax = axes[offsets[mode] + f // cols, f % cols]
            ax.set_axis_on()
            _axes_for(ax, acc_col, mode)
            variants = sorted({n for n in names if base_name(n) == family})
            color = {v: cmap(i % 10) for i, v in enumerate(variants)}
            for attack, (pts, x, y, xerr, yerr) in points.items():
                other = ~pts["Method"].map(base_name).eq(family)
                ax.scatter(x[other], y[other], s=10, color="0.8", zorder=1, linewidths=0)
                for idx in pts.index[~other]:
                    name = pts.at[idx, "Method"]
                    ax.errorbar(x[idx], y[idx], xerr=xerr[idx], yerr=yerr[idx],
                                fmt=attack_marker[attack], ms=7, capsize=2, color=color[name],
                                ecolor=color[name], elinewidth=1, mec="white", mew=0.6, zorder=3)
                    drawn.add(name)
            if mode != "scores" and len(xs) and len(ys):  # shared limits: panels compare
                ax.set_xlim(*_padded(xs))
                ax.set_ylim(*_padded(ys))
            note = {"scores": "", "raw": " (raw_pp)", "recon": " (S3 + S4)"}[mode]
            ax.set_title(f"{family}{note}", fontsize=9.5)
            shown = [v for v in variants if v in drawn]
            if len(shown) > 1 or (shown and shown[0] != family):
                ax.legend([Line2D([], [], color=color[v], marker="o", ls="") for v in shown], shown,
                          loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7,
                          handletextpad=0.2, columnspacing=0.8)
    if len(attacks) > 1:
        fig.legend([Line2D([], [], color="0.3", marker=attack_marker[a], ls="") for a in attacks],
                   [f"attack {a}" for a in attacks], loc="upper center", ncol=len(attacks),
                   bbox_to_anchor=(0.5, 1 - 0.38 / fig.get_figheight()))
    return fig, drawn


def _padded(values: pd.Series, pad: float = 0.08) -> tuple[float, float]:
    """Axis limits around ``values`` (points, not error bars: one wide interval must not squeeze
    every panel), with a margin."""
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span


def privacy_utility(records: list[dict[str, Any]], path: Path,
                    colors: dict[str, Any] | None = None) -> bool:
    """Score_pp vs Score_cls, one point per defense (error bars over seeds), a panel per attack;
    a second row with S3 + S4 when feature-domain defenses have no Score (see _panel_modes).
    With more than :data:`FAMILY_PANELS_ABOVE` defenses, one panel per defense family instead
    (:func:`_family_figure`)."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    t2 = table2(ok)
    if t2.empty:
        return False
    t2 = _with_recon_privacy(t2, ok)
    protected = {r["defense"]: bool(r.get("protected", True)) for r in ok}
    t2["protected"] = t2["Method"].map(protected)
    if t2["S34"].notna().sum() == 0:
        return False
    acc_cols = [c for c in t2.columns if c.startswith("acc_") and not is_stat_column(c)]
    acc_col = acc_cols[0] if acc_cols else None
    attacks = list(dict.fromkeys(t2["Attack"]))
    names = sorted(set(t2["Method"]))
    colors = colors or colors_for(names)
    markers = markers_for(names)
    style = {n: (colors[n], markers[n]) for n in names}
    subs = {a: t2[t2["Attack"] == a].reset_index(drop=True) for a in attacks}
    modes_of = {a: _panel_modes(subs[a], acc_col) for a in attacks}
    # one row per kind of panel any attack needs (Scores for image-domain defenses, S3+S4 for all)
    rows = [m for m in ("scores", "raw", "recon") if any(m in ms for ms in modes_of.values())]
    if not rows:
        return False
    if len(names) > FAMILY_PANELS_ABOVE:
        fig, drawn = _family_figure(t2, attacks, subs, modes_of, rows, acc_col, names)
        height = fig.get_figheight()
        fig.suptitle("Privacy vs utility per defense family (top right is best; grey: every other "
                     "defense; marker: the attack; bars: 95 % interval)",
                     fontweight="bold", y=1 - 0.12 / height, va="top")
        _note_missing(fig, [n for n in names if n not in drawn], 4)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))  # room for the title and attack legend
        _save(fig, path)
        return True
    fig, axes = plt.subplots(len(rows), len(attacks), figsize=(4.4 * len(attacks) + 2.2,
                                                                4.7 * len(rows) + 0.3), squeeze=False)
    drawn: set[str] = set()
    handles: dict[str, Any] = {}
    for i, mode in enumerate(rows):
        for ax, attack in zip(axes[i], attacks):
            if mode not in modes_of[attack]:
                ax.set_axis_off()
                continue
            drawn |= _panel(ax, subs[attack], acc_col, style, mode)
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
    # attached to a panel, not the figure: equal-aspect panels leave the figure's edge far off
    axes[0, -1].legend([handles[k] for k in sorted(handles)], sorted(handles), loc="upper left",
                       bbox_to_anchor=(1.03, 1.0), title="defense")
    fig.suptitle("Privacy vs utility (top right is best; bars: 95 % interval)",
                 fontweight="bold")
    _note_missing(fig, [n for n in names if n not in drawn], len(attacks))
    fig.tight_layout()
    _save(fig, path)
    return True


def _note_missing(fig: plt.Figure, missing: list[str], panels_wide: int) -> None:
    """Say who is absent rather than let a missing point pass unnoticed."""
    import textwrap

    if missing:
        note = ("Not shown — the panel's privacy measure is undefined for them (raw_pp needs an "
                "image view for S1/S2; Scores exist only for protected defenses): "
                + ", ".join(missing))
        fig.text(0.01, -0.02, textwrap.fill(note, 40 * panels_wide + 30), fontsize=7.5,
                 color="0.35", va="top")


# -- AdvFace ε curve ------------------------------------------------------------------------------
def advface_eps(records: list[dict[str, Any]], path: Path) -> bool:
    """PSNR vs accuracy across AdvFace cells that differ in ``defense_options.eps`` (`[A]` Fig. 4)."""
    rows = []
    for r in records:
        eps = (r.get("defense_options") or {}).get("eps")
        if base_name(r["defense"]) != "advface" or eps is None or r.get("status", "ok") != "ok":
            continue
        others = {k: v for k, v in sorted((r.get("defense_options") or {}).items())
                  if k not in ("eps", "alpha")}  # the sweep variants move α with ε
        rows.append({"rec": r, "eps": float(eps), "line": (r["attack"], repr(others))})
    if len({row["eps"] for row in rows}) < 2:
        return False
    df = cells_frame([row["rec"] for row in rows])
    df["eps"] = [row["eps"] for row in rows]
    df["line"] = [row["line"] for row in rows]
    acc_cols = [c for c in df.columns if c.startswith("acc_")]
    if not acc_cols:
        return False
    acc = acc_cols[0]
    g = df.groupby(["line", "eps"])
    agg = pd.concat([g[["PSNR", acc]].mean(), g[["PSNR", acc]].std(ddof=1).add_suffix("_std")],
                    axis=1).reset_index()
    # a line is a sweep: the same attack and non-ε options at ≥ 2 values of ε; a lone variant
    # (advface.offline at the default ε) is a point of the tables, not of this curve
    counts = agg.groupby("line")["eps"].nunique()
    lines = [ln for ln in dict.fromkeys(agg["line"]) if counts[ln] >= 2]
    if not lines:
        return False
    varying = _varying_options(lines)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, line in enumerate(lines):
        sub = agg[agg["line"] == line].sort_values("eps")
        label = f"attack {line[0]}" + (f" ({varying[line]})" if varying[line] else "")
        ax.errorbar(sub["PSNR"], sub[acc], xerr=sub["PSNR_std"].fillna(0), yerr=sub[f"{acc}_std"].fillna(0),
                    fmt="-" + MARKERS[i % len(MARKERS)], capsize=2, color=cmap(i % 10), label=label,
                    ms=6, elinewidth=0.8, alpha=0.9)
    # one ε label per cluster of nearby points with the same ε (lines often pass close together)
    xr = float(agg["PSNR"].max() - agg["PSNR"].min()) or 1.0
    yr = float(agg[acc].max() - agg[acc].min()) or 1.0
    placed: list[tuple[float, float, float]] = []
    for _, r in agg[agg["line"].isin(lines)].iterrows():
        if any(e == r["eps"] and abs(x - r["PSNR"]) < 0.06 * xr and abs(y - r[acc]) < 0.06 * yr
               for e, x, y in placed):
            continue
        placed.append((r["eps"], r["PSNR"], r[acc]))
        ax.annotate(f"ε={r['eps']:g}", (r["PSNR"], r[acc]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, color="0.2")
    ax.set_xlabel("reconstruction PSNR (dB)   ← more private")
    ax.set_ylabel(f"verification accuracy on {acc[4:]} (%)")
    ax.set_title("AdvFace: privacy–utility over ε (mean ± std over seeds)")
    ax.legend(loc="best")
    _save(fig, path)
    return True


def _varying_options(lines: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Per line, only the non-ε options that differ between lines (shown in the legend)."""
    import ast

    opts = {line: ast.literal_eval(line[1]) if line[1].startswith("{") else {} for line in lines}
    keys = {k for o in opts.values() for k in o}
    differ = sorted(k for k in keys if len({repr(o.get(k)) for o in opts.values()}) > 1)
    return {line: ", ".join(f"{k}={opts[line].get(k)}" for k in differ) for line in lines}


# -- AdaMixUp k shares ----------------------------------------------------------------------------
def k_share(records: list[dict[str, Any]], path: Path, colors: dict[str, Any] | None = None) -> bool:
    """Grouped bars: the share of each k per AdaMixUp variant, with [H] Table 3 as markers."""
    t3 = table3(records)
    if t3.empty:
        return False
    ks = [c for c in t3.columns if c.startswith("k=") and not is_stat_column(c)]
    kvals = [int(c[2:]) for c in ks]
    variant_ks: dict[str, set[int]] = {}
    for r in records:
        variant_ks.setdefault(r["defense"], set()).update(own_k_values(r))
    width = 0.8 / len(t3)
    colors = colors or colors_for(list(t3["Method"]))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(ks) + 2.5), 4.2))
    paper_shown = False
    for i, (_, row) in enumerate(t3.iterrows()):
        xs = np.arange(len(ks)) + (i - (len(t3) - 1) / 2) * width
        stds = [row[f"{c}_std"] for c in ks]
        ax.bar(xs, [row[c] for c in ks], width * 0.92,
               yerr=[_nz(v) for v in stds] if any(_finite(v) for v in stds) else None,
               color=colors[row["Method"]], label=row["Method"],
               error_kw={"ecolor": "0.3", "elinewidth": 1, "capsize": 2})
        own = tuple(sorted(variant_ks.get(row["Method"], ())))
        ref = H_TABLE3.get(own)
        if ref is not None:
            ax.scatter([xs[kvals.index(k)] for k in own], ref, marker="D", s=28, facecolor="white",
                       edgecolor="black", zorder=3, label=None if paper_shown else "paper ([H] Table 3)")
            paper_shown = True
    ax.set_xticks(np.arange(len(ks)), [f"k = {k}" for k in kvals])
    ax.set_ylabel("share of training batches")
    ax.set_title("AdaMixUp: how often the policy picks each k")
    tops = t3[ks].to_numpy() + np.nan_to_num(t3[[f"{c}_std" for c in ks]].to_numpy())
    ax.set_ylim(0, min(1.0, max(0.5, float(np.nanmax(tops)) * 1.15)))
    ax.legend(loc="upper right")
    _save(fig, path)
    return True


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def _nz(v: Any) -> float:
    return float(v) if _finite(v) else 0.0


# -- all of them ----------------------------------------------------------------------------------
def figure_caption(name: str) -> str:
    """The caption of figure ``name`` (per-attack figures carry the attack in their name)."""
    if name in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[name]
    for prefix, caption in PER_ATTACK_CAPTIONS.items():
        if name.startswith(prefix):
            return caption.format(attack=name[len(prefix):])
    return name


#: per-attack figures: ``<prefix><attack>`` → caption
PER_ATTACK_CAPTIONS = {
    "fig_reconstructions_": "Reconstructions by {attack}: originals (repeated every few rows), then "
                            "what the attack recovers from each defense (first seed). Right: that "
                            "cell's SSIM / PSNR.",
    "fig_curves_": "Training of attack {attack} per defense (first seed): the loss its convergence "
                   "is judged on, relative to epoch 1 (held-out dashed where the attack keeps a "
                   "held-out split); red title: still falling steeply over the shaded last epochs.",
}


def draw_all(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Draw every figure the records support into ``run_dir/figures/``; remove stale ones."""
    from bench.reporting import curve_figures

    fig_dir = Path(run_dir) / "figures"
    colors = colors_for([r["defense"] for r in records])  # one defense, one colour, every figure
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    drawers = {  # name → (file, draw)
        **{f"fig_reconstructions_{a}": (f"reconstructions_{a}.png", lambda p, a=a: reconstruction_grid(
            run_dir, records, p, attack=a)) for a in attacks},
        "fig_privacy_utility": (FIGURES["fig_privacy_utility"],
                                lambda p: privacy_utility(records, p, colors)),
        "fig_advface_eps": (FIGURES["fig_advface_eps"], lambda p: advface_eps(records, p)),
        "fig_k_share": (FIGURES["fig_k_share"], lambda p: k_share(records, p, colors)),
        "fig_curves_recognizers": (FIGURES["fig_curves_recognizers"],
                                   lambda p: curve_figures.recognizer_curves(records, p)),
        **{f"fig_curves_{a}": (f"curves_{a}.png", lambda p, a=a: curve_figures.attack_curves(
            records, a, p)) for a in curve_figures.attacks_with_curves(records)},
    }
    out = {}
    with plt.rc_context(STYLE):
        for name, (file, draw) in drawers.items():
            path = fig_dir / file
            try:
                drawn = draw(path)
            except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished run
                warnings.warn(f"figure {file} could not be drawn ({type(exc).__name__}: "
                              f"{exc}); the tables and cell records are unaffected")
                plt.close("all")
                drawn = False
            if drawn:
                out[name] = path
            else:
                path.unlink(missing_ok=True)
    _remove_stale(fig_dir, {p.name for p in out.values()})
    return out


def _remove_stale(fig_dir: Path, keep: set[str]) -> None:
    """Per-attack figures of attacks the records no longer have (a report never shows numbers
    its records do not support)."""
    if fig_dir.is_dir():
        for path in fig_dir.glob("*.png"):
            if path.name not in keep and path.name.startswith(("reconstructions", "curves_")):
                path.unlink(missing_ok=True)
