"""CI's result regression gate: re-create the committed reference run and compare (part 4)."""
from __future__ import annotations

from bench.cli import main
from bench.reporting.compare import compare_runs
from tests.reference_run import REFERENCE, run_reference


def test_reference_run_has_not_regressed(tmp_path, capsys):
    assert (REFERENCE / "cells").is_dir(), "results/reference/ is missing: python -m tests.reference_run"
    run = run_reference(tmp_path, "candidate")
    rc = main(["compare", str(REFERENCE), str(run), "--fail-on-regression"])
    out = capsys.readouterr().out
    print(out)  # the comparison shows in the CI log
    assert rc == 0, out
    comp = compare_runs(REFERENCE, run)
    assert not comp.only_a and not comp.only_b  # the same cells
    tested = comp.metrics[comp.metrics["test"].str.contains("bootstrap")]
    assert len(tested) >= 9  # accuracy, SSIM, SRRA … of each defense were actually tested
