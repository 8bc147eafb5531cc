"""The one entry that builds a run's report: tables, figures and ``report.html`` from its cells."""
from __future__ import annotations

from pathlib import Path

from bench.core.errors import BenchError
from bench.reporting.cells import load_cells_checked
from bench.reporting.tables import TABLES, all_tables, table1_gaps, write_csv


def build_report(run_dir: Path, figures: bool = True, html: bool = True) -> dict[str, Path]:
    """(Re)generate every table, figure and ``report.html`` of a run from its cell JSONs.

    Returns ``{name: path}`` of what was written, tables first. Stale tables or figures of a
    previous report whose cells are gone are removed, so the folder never shows numbers the
    records no longer support.
    """
    run_dir = Path(run_dir)
    records, skipped = load_cells_checked(run_dir)
    if not records:
        raise BenchError(f"{run_dir} has no readable cell records; run `python -m bench run` first")
    tables = all_tables(records)
    out: dict[str, Path] = {}
    for name in TABLES:
        path = run_dir / f"{name}.csv"
        if name in tables:
            write_csv(tables[name], path)
            out[name] = path
        elif name != "table2":
            path.unlink(missing_ok=True)
    figs: dict[str, Path] = {}
    if figures:
        from bench.reporting.figures import draw_all  # matplotlib only when figures are asked for

        figs = draw_all(run_dir, records)
        out.update(figs)
    if html:
        from bench.reporting.html import write_html

        out["report_html"] = write_html(run_dir, tables, figs, skipped, table1_gaps(records))
    return out
